"""Bad input on every verb ends as one line `budgetlm VERB: error: ...`, exit code 2, quickly.

Cases run in-process through cli.main (fast); a few through `python -m budgetlm` to prove the
real entry point behaves the same. Each case names a piece of the message it must contain, so a
case passing for the wrong reason (another check firing first) shows up.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from budgetlm import cli

CASE_SECONDS = 20  # a hang (e.g. --shard-tokens 0 writing empty shards forever) fails, not blocks


@pytest.fixture(scope="module")
def world(tmp_path_factory, synth_data):
    """Folders and files the cases point at: a BPE and a char data folder, a tiny run, a char n-gram."""
    from budgetlm.data.prepare import prepare

    root = tmp_path_factory.mktemp("bad_input")
    char_data = root / "char_data"
    prepare("synth", "char", char_data, max_tokens=20_000, log=lambda *_: None)
    run = root / "run"
    assert cli.main(["train", "--data", str(synth_data), "--budget", "2-steps", "--out", str(run), "--n-layer", "1",
                     "--n-head", "2", "--n-embd", "16", "--seq-len", "32", "--batch-size", "2", "--no-progress",
                     "--recipe", "plain"]) == 0  # plain: the export cases need a model HF computes
    assert cli.main(["ngram", "build", "--data", str(char_data), "--order", "2", "--out", str(root / "char.npz")]) == 0
    (root / "afile").write_text("not a folder\n")
    (root / "adir").mkdir()
    full = root / "full"
    full.mkdir()
    (full / "keep.txt").write_text("precious\n")
    story = "Once upon a time there was a cat who liked to sit in the sun.\n"
    late = story * (1_600_000 // len(story))  # ~1.6 MB: past the first 1 MB chunk and the 4 KB sniff
    (root / "late_bad.txt").write_bytes(late.encode() + b"\xff\xfe bad bytes\n" + story.encode())
    lines = [json.dumps({"text": story})] * 30000  # ~2 MB before the bad line
    (root / "late_bad.jsonl").write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "\xff\xfe"}\n')
    (root / "int_text.jsonl").write_text(json.dumps({"text": story}) + "\n" + json.dumps({"text": 42}) + "\n")
    (root / "unknown_key.toml").write_text("[model]\nn_layer = 1\nn_heads = 2\n")
    (root / "wrong_type.toml").write_text('[model]\nn_layer = "3"\n')
    (root / "bad_table.toml").write_text("[trian]\nlr = 0.001\n")
    (root / "bad_train_value.toml").write_text("[train]\nlr = nan\n")
    (root / "sweep_fails.toml").write_text(
        f'[sweep]\nbudget = "2-steps"\ndata = "{synth_data}"\nseeds = [1, 2]\nout = "{root / "sweep_out"}"\n'
        '[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\n[train]\nseq_len = 16\nbatch_size = 2\n'
        'teacher = "ngram:9"\n[grid]\nlr = [0.001]\n')
    (root / "sweep_type.toml").write_text(
        f'[sweep]\nbudget = "2-steps"\ndata = "{synth_data}"\nseeds = [1]\n[grid]\nlr = ["fast"]\n')
    return {"data": str(synth_data), "char_data": str(char_data), "run": str(run), "root": root}


# (verb argv with {placeholders}, piece of the error line). Placeholders: {data} {char_data} {run} and
# {root} (the fixture folder: afile, adir, full, ...).
CASES = [
    # prepare
    ("prepare --data synth --tokenizer char --out {root}/afile", "exists and is a file"),
    ("prepare --data synth --tokenizer char --out {root}/afile/sub", "is a file, not a folder"),
    ("prepare --data synth --tokenizer char --out /proc/budgetlm_out", "not writable"),
    ("prepare --data synth --tokenizer char --out {root}/p0 --max-tokens 5000 --shard-tokens 0", "--shard-tokens"),
    ("prepare --data synth --tokenizer char --out {root}/p1 --shard-tokens inf", "--shard-tokens"),
    ("prepare --data synth --tokenizer char --out {root}/p2 --val-frac nan", "--val-frac"),
    ("prepare --data {root}/late_bad.txt --tokenizer char --out {root}/p3", "not UTF-8"),
    ("prepare --data {root}/late_bad.jsonl --tokenizer char --out {root}/p4", "late_bad.jsonl:30001: not UTF-8"),
    ("prepare --data {root}/int_text.jsonl --tokenizer char --out {root}/p5", "int_text.jsonl:2"),
    # train
    ("train --data {data} --budget 1..2m --out {root}/t", "--budget"),
    ("train --data {data} --lr nan --out {root}/t", "--lr"),
    ("train --data {data} --log-every 0 --out {root}/t", "--log-every"),
    ("train --data {data} --n-head 0 --out {root}/t", "--n-head"),
    ("train --data {data} --n-head 3 --n-embd 64 --out {root}/t", "divisible"),
    ("train --data {data} --batch-size abc --out {root}/t", "--batch-size"),
    ("train --data {data} --bogus-flag --out {root}/t", "unrecognized"),
    ("train --data {root}/afile --out {root}/t", "is a file, expected a prepared data folder"),
    ("train --data {data} --out {root}/afile", "exists and is a file"),
    ("train --data {data} --config {root}/unknown_key.toml --out {root}/t", "model.n_heads in"),
    ("train --data {data} --config {root}/wrong_type.toml --out {root}/t", "model.n_layer in"),
    ("train --data {data} --config {root}/bad_table.toml --out {root}/t", "unknown table [trian]"),
    ("train --data {data} --config {root}/bad_train_value.toml --out {root}/t", "train.lr in"),
    ("train --data {data} --warmup-frac 2 --out {root}/t", "--warmup-frac"),
    # eval
    ("eval {run} --data {data} --batch-size -1", "--batch-size"),
    ("eval {run} --data {data} --judge-cache {root}/adir --judge --stories 1", "--judge-cache"),
    ("eval {run} --data {data} --out {root}/adir", "is a folder, expected a file"),
    ("eval {run} --data {root}/afile", "is a file"),
    ("eval {run} --data {data} --fuse ngram:0.2@{root}/char.npz --max-tokens 64", "does not match the n-gram"),
    # sample
    ("sample {run} --top-k -3", "--top-k"),
    ("sample {run} --temperature nan", "--temperature"),
    ("sample {run} --top-p 1.5", "--top-p"),
    ("sample {run} --fuse ngram:0.2 --data {char_data} --max-tokens 4", "not the model's tokenizer"),
    # speedrun
    ("speedrun --data synth --n-head 3 --n-embd 64 --out {root}/s --budget 10s", "divisible"),
    ("speedrun --data synth --budget 1..2m --out {root}/s", "--budget"),
    ("speedrun --data synth --lr nan --out {root}/s", "--lr"),
    ("speedrun --data synth --n-head 0 --out {root}/s", "--n-head"),
    ("speedrun --data synth --out {root}/afile", "exists and is a file"),
    # plan
    ("plan --tflops nan", "--tflops"),
    ("plan --mfu nan", "--mfu"),
    ("plan --gpu custom --tflops 100 --mem-gb -1", "--mem-gb"),
    ("plan --out {root}/adir", "is a folder"),
    # export
    ("export {run} --out {root}/full", "not empty"),
    ("export {run} --out {run}", "not empty"),
    ("export {run} --out {root}/afile", "exists and is a file"),
    # bench
    ("bench --steps 0 --no-record", "--steps"),
    ("bench --warmup -1 --no-record", "--warmup"),
    ("bench --model nano --results {root}/adir", "is a folder"),
    # ngram
    ("ngram build --data {data} --order 5..2", "--order"),
    ("ngram build --data {data} --order 0", "--order"),
    ("ngram build --data {data} --order 2..9", "--order"),
    ("ngram build --data {root}/afile", "is a file"),
    ("ngram build --data {data} --out {root}/adir", "is a folder"),
    ("ngram sample --data {data} --model {root}/char.npz", "does not match the n-gram"),
    ("ngram sample --data {data} --model {root}/char.npz --temperature nan", "--temperature"),
    # sweep
    ("sweep {root}/sweep_fails.toml", "all 2 of 2 runs failed"),
    ("sweep {root}/sweep_fails.toml --out {root}/afile", "exists and is a file"),
    ("sweep {root}/sweep_type.toml", "lr in"),
    # more flag rules, one per verb family
    ("train --data {data} --threads 0 --out {root}/t", "--threads"),
    ("train --data {data} --max-steps 0 --out {root}/t", "--max-steps"),
    ("sample {run} --max-tokens 0", "--max-tokens"),
    ("sample {run} -n 0", "-n"),
    ("speedrun --probe-seconds nan --out {root}/s", "--probe-seconds"),
    ("speedrun --data synth --batch-size 0 --out {root}/s", "--batch-size"),
    ("plan --gpus 0", "--gpus"),
    ("plan --out {root}/afile/x.toml", "is a file, not a folder"),
    ("ngram build --data {data} --json {root}/adir", "--json"),
    ("ngram build --data {data} --max-tokens 0", "--max-tokens"),
    # plot
    ("plot {run} --out {root}/adir", "is a folder"),
    ("plot {run} --summary {root}/afile/x.png", "is a file, not a folder"),
]


def _argv(case: str, world: dict) -> list[str]:
    return [part.format(**world) for part in case.split()]


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ANN001 - signal handler signature
    raise _Timeout


@pytest.mark.parametrize("case,needle", CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_line(case, needle, world, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(world["root"])
    verb = case.split()[0]
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        code = cli.main(_argv(case, world))
    except _Timeout:
        pytest.fail(f"{case}: still running after {CASE_SECONDS}s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"budgetlm {verb}: error:"), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err


def test_export_force_writes_into_a_non_empty_folder(world, capsys):
    out = world["root"] / "full_forced"
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert cli.main(["export", world["run"], "--out", str(out), "--force"]) == 0
    assert (out / "config.json").is_file()


SUBPROCESS_CASES = ["train --data {data} --lr nan --out {root}/t", "sample {run} --top-k -3",
                    "prepare --data synth --out {root}/afile", "plan --tflops nan"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_real_entry_point(case, world):
    res = subprocess.run([sys.executable, "-m", "budgetlm", *_argv(case, world)], capture_output=True, text=True,
                         timeout=60, cwd=world["root"], env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"budgetlm {case.split()[0]}: error:") and "Traceback" not in res.stderr


def test_config_fields_all_carry_rules():
    """Every field of the run configs has help text, so flags built from them are documented."""
    import dataclasses

    from budgetlm.config import ModelConfig, TrainConfig
    for cls in (ModelConfig, TrainConfig):
        missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
        assert not missing, f"{cls.__name__}: {missing}"

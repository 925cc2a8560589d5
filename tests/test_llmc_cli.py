"""llm.c-style `train` flags, --max-steps / sampling / HellaSwag in the trainer, `budgetlm plot`,
and a real torchrun launch of the CLI."""

import json
import os
import subprocess
import sys

import pytest

from budgetlm.cli import build_parser, main
from budgetlm.cli.flags import picked as _picked
from budgetlm.cli.train import TRAIN_FLAGS, resolve_llmc as _resolve_llmc
from budgetlm.config import EvalConfig, TrainConfig, from_dict
from budgetlm.errors import BudgetLMError

LLMC_RUN = ["-i", "dev/data/edu_fineweb10B/edu_fineweb_train_*.bin", "-j", "dev/data/edu_fineweb10B/edu_fineweb_val_*.bin",
            "-o", "log124M", "-e", "d12", "-b", "64", "-t", "1024", "-d", "524288", "-r", "1", "-z", "1", "-c", "0.1",
            "-l", "0.0006", "-q", "0.0", "-u", "700", "-n", "5000", "-v", "250", "-s", "20000", "-h", "1", "-x", "19560",
            "-y", "1", "-k", "cosine", "-g", "64"]  # llm.c's GPT-2 124M command (README), all flags


def test_llmc_command_line_maps_to_our_config():
    args = build_parser().parse_args(["train", *LLMC_RUN])
    _resolve_llmc(args)
    assert args.data == "dev/data/edu_fineweb10B" and args.out == "log124M" and args.model == "d12"
    assert args.resume == ""  # -y 1: the latest checkpoint in -o
    t = _picked(args, TRAIN_FLAGS)
    assert t == {"batch_size": 64, "seq_len": 1024, "total_batch_tokens": 524288, "recompute": 1, "zero_stage": 1,
                 "weight_decay": 0.1, "lr": 0.0006, "min_lr_frac": 0.0, "warmup_steps": 700, "checkpoint_every": 5000,
                 "eval_every": 250, "sample_every": 20000, "hellaswag_every": 250, "max_steps": 19560,
                 "schedule": "cosine", "sample_tokens": 64,
                 "train_shards": "dev/data/edu_fineweb10B/edu_fineweb_train_*.bin",
                 "val_shards": "dev/data/edu_fineweb10B/edu_fineweb_val_*.bin"}
    from_dict(TrainConfig, t)  # every picked flag is a TrainConfig field


def test_help_is_long_only_and_h_needs_eval_every(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "--help"])
    assert e.value.code == 0 and "llm.c" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "-h"])  # -h takes 0/1, as in llm.c
    args = build_parser().parse_args(["train", "-h", "1"])
    with pytest.raises(BudgetLMError, match="-v N"):
        _resolve_llmc(args)
    args = build_parser().parse_args(["train", "--zero1", "-i", "somewhere/"])
    assert args.zero_stage == 1 and args.out == "runs/latest"


def run_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "budgetlm", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})})


def test_llmc_flags_train_end_to_end(synth_data, tmp_path):
    """-i/-j globs, -x without a budget, -s/-g samples, -h 1 with -v: HellaSwag rows in metrics.jsonl."""
    from test_hellaswag import write_fixture
    write_fixture(tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl", n=6)
    out = tmp_path / "run"
    res = run_cli("train", "-i", str(synth_data / "train_*.bin"), "-j", str(synth_data / "val_*.bin"), "-o", str(out),
                  "-e", "nano", "-b", "4", "-t", "32", "-x", "4", "-v", "2", "-h", "1", "-s", "2", "-g", "8",
                  "-l", "0.003", "-u", "2", "-q", "0.0", "-c", "0.0", "-k", "linear", "--threads", "1", "--no-progress",
                  env={"BUDGETLM_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count(" sample: ") == 2  # steps 2 and 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["budget"] == "4 steps" and summary["hellaswag_n"] == 6
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "hellaswag_acc_norm" in r] == [2, 4, 4]  # every -v, and the final eval
    assert summary["train"]["lr"] == 0.003 and summary["train"]["schedule"] == "linear"


def test_max_steps_stops_before_the_budget(synth_data, tmp_path):
    from budgetlm.config import model_config
    from budgetlm.train.trainer import train
    info = train(model_config(n_layer=1, n_head=2, n_embd=16),
                 TrainConfig(budget="50-steps", max_steps=3, batch_size=2, seq_len=32, out_dir=str(tmp_path),
                             progress=False, threads=1, eval=EvalConfig(final_eval_tokens=512)), synth_data, log=lambda *_: None)
    assert info.steps == 3


def _fake_run(path, name_loss, hs, gpt2=False):
    path.mkdir(parents=True)
    rows = [{"step": s, "tokens": s * 1000, "loss": 5 - s * 0.1} for s in range(1, 11)]
    rows += [{"step": s, "tokens": s * 1000, "val_loss": name_loss - s * 0.05} for s in (5, 10)]
    rows += [{"step": s, "tokens": s * 1000, "hellaswag_acc_norm": v} for s, v in hs]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"tokenizer": "gpt2", "source": "fineweb-edu:10BT"} if gpt2 else {"tokenizer": "bpe:512", "source": "synth"}
    (path / "summary.json").write_text(json.dumps({"params": 1234, "steps": 10, "tokens_seen": 10000, "val_loss": 4.1,
                                                   "val_bpb": 1.5, "tokens_per_s": 900.0, "train_seconds": 11.0,
                                                   "world": 2, "data": data}))


def test_plot_runs_and_summary_page(tmp_path):
    _fake_run(tmp_path / "a", 4.5, [(5, 0.26), (10, 0.28)], gpt2=True)
    _fake_run(tmp_path / "b", 4.7, [])
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 20_000 and (tmp_path / "p_summary.png").stat().st_size > 20_000
    from budgetlm.report.plot import load_run
    assert load_run(tmp_path / "a")["hs"] == [(5, 5000, 0.26), (10, 10000, 0.28)]
    assert main(["plot", str(tmp_path / "nowhere"), "--out", str(tmp_path / "q.png")]) == 2


def test_torchrun_launches_the_cli_on_two_ranks(synth_data, tmp_path):
    """The real launcher: env:// rendezvous, gloo, the process group made and ended by train()."""
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          "-m", "budgetlm", "train", "--data", str(synth_data), "-o", str(out), "-e", "nano",
                          "-b", "2", "-t", "32", "-d", "256", "-x", "3", "-n", "2", "--device", "cpu", "--threads", "1",
                          "--no-progress"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("val bits/byte") == 1  # only rank 0 prints and writes
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world"] == 2 and summary["accum"] == 2 and summary["tokens_seen"] == 3 * 256

"""`budgetlm eval RUN --text FILE` scores a text exactly as `eval --data` scores the same documents
prepared with the same tokenizer; `eval --hellaswag N` on a local file."""

import json
import lzma

import pytest

from budgetlm.cli import main
from budgetlm.config import EvalConfig, FastConfig, TrainConfig, model_config
from budgetlm.data.prepare import prepare
from budgetlm.data.sources import EOT
from budgetlm.data.synth import generate_stories
from budgetlm.train.trainer import train

VAL_KEYS = ("val_loss", "val_ppl", "val_bpb", "val_tokens", "val_bytes")


def write_docs(path, docs):
    text = f"\n{EOT}\n".join(docs) + "\n"
    if path.suffix == ".xz":
        path.write_bytes(lzma.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A folder prepared from 120 stories (the last 30 held out as val) and a checkpoint trained on it."""
    root = tmp_path_factory.mktemp("text_eval")
    docs = generate_stories(120, seed=3)
    meta = prepare(str(write_docs(root / "all.txt", docs)), "bpe:400", root / "data", val_frac=0.25,
                   log=lambda *_: None)
    assert meta["val_docs"] == 30
    train(model_config(n_layer=1, n_head=2, n_embd=32),
          TrainConfig(budget="3-steps", batch_size=4, seq_len=32, out_dir=str(root / "run"), progress=False, threads=1,
                      log_to="jsonl", eval=EvalConfig(final_eval_tokens=512), fast=FastConfig(compile="off")),
          root / "data", log=lambda *_: None)
    return root, docs[-30:]


def eval_json(capsys, *argv):
    assert main(["eval", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out)


def test_text_equals_the_same_text_prepared(text_run, capsys):
    root, val_docs = text_run
    by_data = eval_json(capsys, root / "run", "--data", root / "data", "--seq-len", 32)
    by_text = eval_json(capsys, root / "run", "--text", write_docs(root / "val.txt", val_docs), "--seq-len", 32)
    assert {k: by_text[k] for k in VAL_KEYS} == {k: by_data[k] for k in VAL_KEYS}
    assert by_text["val_tokens"] > 1000 and by_text["text"].endswith("val.txt")
    capped = eval_json(capsys, root / "run", "--text", root / "val.txt", "--seq-len", 32, "--max-tokens", 256)
    assert capped["val_tokens"] == 256 and capped["val_loss"] != by_text["val_loss"]


def test_compressed_text_scores_like_plain(text_run, capsys):
    from budgetlm.data import sources
    if not hasattr(sources, "open_text"):
        pytest.skip("data.sources has no compressed readers yet (.xz support lands with them)")
    root, val_docs = text_run
    plain = eval_json(capsys, root / "run", "--text", write_docs(root / "v.txt", val_docs), "--seq-len", 32)
    packed = eval_json(capsys, root / "run", "--text", write_docs(root / "v.txt.xz", val_docs), "--seq-len", 32)
    assert {k: packed[k] for k in VAL_KEYS} == {k: plain[k] for k in VAL_KEYS}


def test_text_and_data_are_exclusive_and_errors_are_one_line(text_run, capsys, tmp_path):
    root, _ = text_run
    assert main(["eval", str(root / "run"), "--text", str(root / "all.txt"), "--data", str(root / "data")]) == 2
    assert "error: --text and --data: give one" in capsys.readouterr().err
    assert main(["eval", str(root / "run"), "--text", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert "--text" in err and "missing.txt: file not found" in err
    (tmp_path / "short.txt").write_text("a b\n")
    assert main(["eval", str(root / "run"), "--text", str(tmp_path / "short.txt"), "--seq-len", "32"]) == 2
    assert "need at least --seq-len + 1" in capsys.readouterr().err
    assert main(["eval", str(root / "run")]) == 2
    assert "give --data DIR" in capsys.readouterr().err


def test_eval_hellaswag_on_a_local_file(text_run, capsys, tmp_path):
    from test_hellaswag import write_fixture
    root, _ = text_run
    items = write_fixture(tmp_path / "h.jsonl", n=6)
    alone = eval_json(capsys, root / "run", "--hellaswag", "--hellaswag-file", items)
    assert alone["hellaswag"]["n"] == 6 and 0 <= alone["hellaswag"]["acc_norm"] <= 1 and "val_loss" not in alone
    some = eval_json(capsys, root / "run", "--data", root / "data", "--hellaswag", 4, "--hellaswag-file", items)
    assert some["hellaswag"]["n"] == 4 and "val_loss" in some
    assert main(["eval", str(root / "run"), "--hellaswag", "--hellaswag-file", str(tmp_path / "nope.jsonl")]) == 2
    assert "--hellaswag-file" in capsys.readouterr().err

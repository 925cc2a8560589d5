"""The CLI as a user meets it: real subprocesses, exit codes and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest


def run(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "budgetlm", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def one_line_error(res, *needles):
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "error:" in lines[0], res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_source_and_tokenizer(tmp_path):
    one_line_error(run("prepare", "--data", "nowhere.txt", "--out", str(tmp_path)), "--data nowhere.txt")
    one_line_error(run("prepare", "--data", "synth", "--tokenizer", "sentencepiece", "--out", str(tmp_path)),
                   "--tokenizer", "sentencepiece")


def test_empty_and_binary_input(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    one_line_error(run("prepare", "--data", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "o")), "empty.txt", "empty")
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)) * 4)
    one_line_error(run("prepare", "--data", str(tmp_path / "bin.txt"), "--out", str(tmp_path / "o")), "bin.txt", "binary")


def test_bad_budget_and_tiny_budget(synth_data, tmp_path):
    one_line_error(run("train", "--data", str(synth_data), "--budget", "soon", "--out", str(tmp_path)), "--budget")
    one_line_error(run("train", "--data", str(synth_data), "--budget", "0.001s", "--n-layer", "1", "--n-embd", "16",
                       "--n-head", "2", "--out", str(tmp_path)), "too small to take one training step")


def test_bad_shard_header(synth_data, tmp_path):
    import shutil
    d = tmp_path / "data"
    shutil.copytree(synth_data, d)
    raw = bytearray((d / "train_000000.bin").read_bytes())
    raw[:4] = b"\x00\x00\x00\x00"
    (d / "train_000000.bin").write_bytes(bytes(raw))
    one_line_error(run("train", "--data", str(d), "--budget", "2-steps", "--out", str(tmp_path / "r")),
                   "train_000000.bin", "bad shard header")


def test_resume_mismatch_names_field(synth_data, tmp_path):
    common = ["train", "--data", str(synth_data), "--budget", "2-steps", "--out", str(tmp_path), "--n-head", "2",
              "--n-embd", "16", "--seq-len", "32", "--batch-size", "2", "--no-progress"]
    assert run(*common, "--n-layer", "1").returncode == 0
    one_line_error(run(*common, "--n-layer", "2", "--resume"), "--resume", "n_layer")


def test_train_eval_sample_round_trip(synth_data, tmp_path):
    out = tmp_path / "run"
    res = run("train", "--data", str(synth_data), "--budget", "30-steps", "--out", str(out), "--n-layer", "1",
              "--n-head", "2", "--n-embd", "32", "--seq-len", "64", "--batch-size", "8", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "val bits/byte" in res.stdout
    ev = run("eval", str(out), "--data", str(synth_data), "--out", str(tmp_path / "ev.json"))
    assert ev.returncode == 0, ev.stderr
    result = json.loads((tmp_path / "ev.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    # eval reproduces training's number: the same windows (the trained seq len 64, not block_size 256)
    assert result["val_bpb"] == pytest.approx(summary["val_bpb"], rel=1e-6)
    sm = run("sample", str(out), "--prompt", "Once upon a time", "--max-tokens", "20", "-n", "2")
    assert sm.returncode == 0 and sm.stdout.count("Once upon a time") == 2
    assert "tokens/s" in sm.stderr


def test_speedrun_offline_falls_back_to_synth(tmp_path):
    """The main job as the README runs it (default --data tinystories) with the hub unreachable."""
    res = run("speedrun", "--budget", "25s", "--out", str(tmp_path / "run"), "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "training on the built-in synthetic stories" in res.stdout + res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # the CPU default is the 5-minute study's best setting (benchmarks/HISTORY.md §6)
    # the sized CPU shape (3x96, SwiGLU) under --recipe auto = modern, whose ReLU² replaces the SwiGLU
    assert (summary["model"]["n_layer"], summary["model"]["n_embd"], summary["model"]["mlp"]) == (3, 96, "relu2")
    assert summary["train"]["recipe"] == "modern" and summary["train"]["optimizer"] == "muon"
    # ... chosen by the default sizing from a calibration of this CPU, which says so
    assert summary["sizing"]["choice"]["name"] == "3x96" and "size: 3x96 (" in res.stdout
    assert summary["elapsed"] <= 25 + 1.0
    assert summary["val_bpb"] < 4.0  # learned something: a uniform 2048-way guess is ~3.3 bits per ~1 byte token
    samples = json.loads((tmp_path / "run" / "samples.json").read_text())
    assert len(samples) == 3 and all(s["tokens"] > 0 for s in samples)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert "val bits/byte" in res.stdout


def test_speedrun_on_shared_tinystories(stories_path, tmp_path):
    res = run("speedrun", "--budget", "25s", "--data", str(stories_path), "--out", str(tmp_path / "run"),
              "--no-progress", "--mlp", "gelu", "--pos", "rope", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["model"]["mlp"], summary["model"]["pos"]) == ("gelu", "rope")  # flags reach the model
    assert summary["data"]["val_split"].startswith("whole documents held out: every 10th document")
    assert summary["data"]["val_docs"] > 400 and summary["data"]["val_doc_indices"][:2] == [9, 19]
    assert np.isfinite(summary["val_bpb"]) and summary["val_bpb"] < 3.0
    samples = json.loads((tmp_path / "run" / "samples.json").read_text())
    assert samples[0]["prompt"] == "once upon a time"  # the shared copy is lower-cased, so are the prompts


def test_ngram_build_and_fused_eval(synth_data, tmp_path):
    res = run("ngram", "build", "--data", str(synth_data), "--order", "2..3", "--json", str(tmp_path / "ng.json"))
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "ng.json").read_text())
    assert [r["order"] for r in rows] == [2, 3] and rows[1]["val_bpb"] < rows[0]["val_bpb"]
    one_line_error(run("ngram", "build", "--data", str(synth_data), "--order", "two"), "--order")
    out = tmp_path / "run"
    assert run("train", "--data", str(synth_data), "--budget", "5-steps", "--out", str(out), "--n-layer", "1",
               "--n-head", "2", "--n-embd", "16", "--seq-len", "32", "--no-progress").returncode == 0
    ev = run("eval", str(out), "--data", str(synth_data), "--fuse", "ngram:0.5,cache:0.1", "--max-tokens", "2000",
             "--stories", "2", "--out", str(tmp_path / "ev.json"))
    assert ev.returncode == 0, ev.stderr
    result = json.loads((tmp_path / "ev.json").read_text())
    # a 5-step transformer is near uniform; half an n-gram must lower its loss a lot
    assert result["fused"]["val_loss"] < result["val_loss"] - 0.5
    assert len(result["stories"]["stories"]) == 2 and "rep_ngram_3" in result["stories"]["story_metrics"]
    one_line_error(run("eval", str(out), "--data", str(synth_data), "--fuse", "magic:0.5"), "--fuse")


@pytest.mark.slow
def test_speedrun_auto_size(tmp_path):
    res = run("speedrun", "--budget", "40s", "--data", "synth", "--out", str(tmp_path / "run"), "--no-progress",
              "--auto-size", "--probe-seconds", "0.5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert out.count("auto-size: ") >= 6 and "<- chosen" in out and "probes took" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["elapsed"] <= 41.0

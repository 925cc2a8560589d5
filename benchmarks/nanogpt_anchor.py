"""nanoGPT's own train.py as the anchor, on exactly the tokens a budgetlm run trained on.

nanoGPT (karpathy/nanoGPT) is run as its README says (`python train.py config/train_gpt2.py`
with command-line overrides) from a snapshot the caller provides; nothing of it is copied
into budgetlm. Three steps:

  bins  DATA_DIR WORK      budgetlm shards -> WORK/data/budgetlm/{train,val}.bin + meta.pkl
  run   NANOGPT WORK       calibrate the iteration time (a 20-iteration run), then train for
                           --seconds of wall clock in total (compile included), with max_iters
                           chosen so the cosine schedule ends inside the budget
  score WORK DATA_DIR      val loss and bits per byte of WORK/out/ckpt.pt on DATA_DIR's val split,
                           with budgetlm's evaluate() and the data's tokenizer byte counts

Usage on the device: see benchmarks/gpu_speedrun_evidence.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATASET = "budgetlm"  # nanoGPT reads data/<dataset>/train.bin relative to its working folder
GPT2_CONFIG = {"batch_size": 12, "block_size": 1024, "gradient_accumulation_steps": 40}  # config/train_gpt2.py, one GPU


def write_bins(data_dir: str, work: str) -> dict:
    """nanoGPT's data format: flat uint16 token files and meta.pkl with the vocabulary size."""
    from budgetlm.data.prepare import load_meta
    from budgetlm.data.shards import load_split
    out = Path(work) / "data" / DATASET
    out.mkdir(parents=True, exist_ok=True)
    meta = load_meta(data_dir)
    sizes = {}
    for split in ("train", "val"):
        tokens = np.asarray(load_split(data_dir, split)).astype(np.uint16)
        tokens.tofile(out / f"{split}.bin")
        sizes[split] = int(tokens.size)
    with open(out / "meta.pkl", "wb") as f:  # our own file, read by nanoGPT's train.py
        pickle.dump({"vocab_size": int(meta["vocab_size"])}, f)
    return {"vocab_size": int(meta["vocab_size"]), **{f"{k}_tokens": v for k, v in sizes.items()}}


# nanoGPT-style GPT-2 124M (vocab 50304) trained at ~440k tokens/s on the H200 here (budgetlm's
# nanoGPT-style anchor: 452,851 in HISTORY.md §2's ninth pass; nanoGPT's own micro-batch is 12, not 16).
H200_GPT2_TOKENS_PER_S = 440_000


def predicted_tokens_per_s(vocab_size: int, n_layer: int = 12, n_embd: int = 768, block: int = 1024) -> float:
    """The anchor's rate scaled by FLOPs per token (nanoGPT's own 6N + 12LHQT count) for another vocabulary."""
    def flops(v: int) -> float:
        n = 12 * n_layer * n_embd ** 2 + v * n_embd  # blocks + tied embedding/head
        return 6 * n + 12 * n_layer * n_embd * block
    return H200_GPT2_TOKENS_PER_S * flops(50304) / flops(vocab_size)


def _train(nanogpt: Path, work: Path, overrides: dict, timeout: float, log: Path) -> tuple[int, float, str]:
    for name in ("train.py", "model.py", "configurator.py"):
        shutil.copy(nanogpt / name, work / name)
    (work / "config").mkdir(exist_ok=True)
    shutil.copy(nanogpt / "config" / "train_gpt2.py", work / "config" / "train_gpt2.py")
    args = [sys.executable, "train.py", "config/train_gpt2.py", f"--dataset={DATASET}", "--wandb_log=False",
            *[f"--{k}={v}" for k, v in overrides.items()]]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(args, cwd=work, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = -9
    return rc, time.perf_counter() - t0, log.read_text()


def _iter_ms(text: str, skip: int = 3) -> float:
    times = [float(m) for m in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", text)]
    if len(times) <= skip:
        raise SystemExit(f"nanoGPT printed too few iterations to time:\n{text[-2000:]}")
    return statistics.median(times[skip:])


def run(nanogpt: str, work: str, seconds: float, extra: dict | None = None, reserve_frac: float = 0.12,
        tok_per_s: float | str | None = None, overhead_s: float = 75.0) -> dict:
    """One run whose schedule (warmup 5%, cosine to 10%) ends inside `seconds`, its iteration
    time calibrated by a 20-iteration run first, or, to save device time, predicted from
    `tok_per_s` (then `overhead_s` stands for start-up + compile).
    extra: more overrides (e.g. a tiny model on CPU for the test of this script)."""
    nanogpt_dir, work_dir = Path(nanogpt), Path(work)
    extra = extra or {}
    shape = {**GPT2_CONFIG, **{k: int(v) for k, v in extra.items() if k in GPT2_CONFIG}}
    tokens_per_iter = shape["batch_size"] * shape["block_size"] * shape["gradient_accumulation_steps"]
    calib = {**extra, "max_iters": 20, "lr_decay_iters": 20, "warmup_iters": 2, "eval_interval": 1000, "eval_iters": 2,
             "log_interval": 1, "out_dir": "calib", "always_save_checkpoint": False}
    if tok_per_s == "auto":
        with open(work_dir / "data" / DATASET / "meta.pkl", "rb") as f:
            tok_per_s = predicted_tokens_per_s(pickle.load(f)["vocab_size"])
    tok_per_s = float(tok_per_s) if tok_per_s else None
    if tok_per_s:
        calib_s, ms = None, 1000 * tokens_per_iter / tok_per_s
    else:
        rc, calib_s, text = _train(nanogpt_dir, work_dir, calib, 300, work_dir / "calib.log")
        ms = _iter_ms(text)
    # The calibration's wall time beyond its iterations is start-up + compile + one eval; the real
    # run pays it again (inside the budget, as budgetlm's runs do), and reserve_frac covers its four
    # evals and checkpoints, so the schedule ends before the wall-clock limit.
    overhead = overhead_s if calib_s is None else max(0.0, calib_s - calib["max_iters"] * ms / 1000)
    iters = max(20, int((seconds - overhead) * (1 - reserve_frac) / (ms / 1000)))
    iters -= iters % 4  # nanoGPT checkpoints at multiples of eval_interval: the last one at max_iters
    real = {**extra, "max_iters": iters, "lr_decay_iters": iters, "warmup_iters": max(1, iters // 20),
            "eval_interval": iters // 4, "eval_iters": 20, "log_interval": 10, "out_dir": "out",
            "always_save_checkpoint": True}
    rc, wall, text = _train(nanogpt_dir, work_dir, real, seconds, work_dir / "train.log")
    done = re.findall(r"iter (\d+): loss", text)
    return {"predicted_tokens_per_s": tok_per_s, "calib_seconds": calib_s, "calib_iter_ms": ms, "overhead_seconds": overhead,
            "measured_iter_ms": _iter_ms(text) if len(re.findall(r"iter \d+: loss", text)) > 4 else None, "max_iters": iters, "wall_seconds": wall, "rc": rc,
            "last_iter": int(done[-1]) if done else 0, "tokens_per_iter": tokens_per_iter,
            "tokens_seen": (int(done[-1]) + 1) * tokens_per_iter if done else 0, "overrides": real,
            "tail": text[-1500:]}


class _FullLogits:
    """nanoGPT's forward returns every position's logits only when given targets."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, x, y=None):
        import torch
        return self.model(x, torch.zeros_like(x) if y is None else y)

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    @property
    def training(self) -> bool:
        return self.model.training


def score(work: str, data_dir: str, batch_size: int = 16, max_tokens: int = 0) -> dict:
    import torch
    from budgetlm.data.prepare import data_tokenizer
    from budgetlm.data.shards import load_split
    from budgetlm.eval.perplexity import evaluate
    sys.path.insert(0, str(Path(work)))
    from model import GPT, GPTConfig  # nanoGPT's model.py, copied into WORK by `run`
    ckpt = torch.load(Path(work) / "out" / "ckpt.pt", map_location="cpu", weights_only=False)  # our own run's file
    model = GPT(GPTConfig(**ckpt["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    tok = data_tokenizer(data_dir)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    r = evaluate(_FullLogits(model), load_split(data_dir, "val"), tok.token_bytes(), ckpt["model_args"]["block_size"],
                 batch_size, device, max_tokens=max_tokens, autocast=autocast)
    return {**r, "iter_num": int(ckpt["iter_num"]), "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bins")
    b.add_argument("data_dir")
    b.add_argument("work")
    r = sub.add_parser("run")
    r.add_argument("nanogpt")
    r.add_argument("work")
    r.add_argument("--seconds", type=float, default=600)
    r.add_argument("--tok-per-s", help="predicted tokens/s instead of a calibration run ('auto': the H200 "
                                       "anchor's rate scaled to this vocabulary)")
    r.add_argument("--overhead-s", type=float, default=75.0, help="with --tok-per-s: start-up + compile seconds")
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more nanoGPT overrides")
    s = sub.add_parser("score")
    s.add_argument("work")
    s.add_argument("data_dir")
    s.add_argument("--max-tokens", type=int, default=0)
    a = ap.parse_args()
    if a.cmd == "bins":
        out = write_bins(a.data_dir, a.work)
    elif a.cmd == "run":
        out = run(a.nanogpt, a.work, a.seconds, dict(kv.split("=", 1) for kv in a.set), tok_per_s=a.tok_per_s,
                  overhead_s=a.overhead_s)
    else:
        out = score(a.work, a.data_dir, max_tokens=a.max_tokens)
    print(json.dumps(out, indent=2))
    Path(a.work, f"{a.cmd}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

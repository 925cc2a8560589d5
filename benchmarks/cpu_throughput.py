"""Training throughput (tokens/s) of model/batch/vocab/compile/thread choices on this CPU.

Each setting trains on real batches for a few seconds after warm-up; the plain nanoGPT-style
anchor (4x128, vocab 4096, seq 256, batch 32) runs in the same invocation so ratios compare
like with like. Usage: python benchmarks/cpu_throughput.py [--seconds 10] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SHARED_STORIES, print_table, record  # noqa: E402
from budgetlm.config import ModelConfig, TrainConfig  # noqa: E402
from budgetlm.data.loader import BatchLoader  # noqa: E402
from budgetlm.data.prepare import prepare  # noqa: E402
from budgetlm.data.shards import load_split  # noqa: E402
from budgetlm.device import autocast_ctx  # noqa: E402
from budgetlm.models import build_model  # noqa: E402
from budgetlm.train.trainer import make_optimizer  # noqa: E402

ANCHOR = dict(n_layer=4, n_embd=128, n_head=4, vocab=4096, seq=256, batch=32)
SETTINGS = {
    "anchor": dict(ANCHOR),
    "anchor+compile": dict(ANCHOR, compile=True),
    "anchor threads=1": dict(ANCHOR, threads=1),
    "anchor bf16": dict(ANCHOR, dtype="bf16"),
    "seq128": dict(ANCHOR, seq=128),
    "seq64 b64": dict(ANCHOR, seq=64, batch=64),
    "v2048 seq128": dict(ANCHOR, vocab=2048, seq=128),
    "v2048 seq128 b64": dict(ANCHOR, vocab=2048, seq=128, batch=64),
    "v2048 seq64 b64": dict(ANCHOR, vocab=2048, seq=64, batch=64),
    "v2048 seq128 +compile": dict(ANCHOR, vocab=2048, seq=128, compile=True),
    "v1024 seq128": dict(ANCHOR, vocab=1024, seq=128),
    "v1024 seq64 b64": dict(ANCHOR, vocab=1024, seq=64, batch=64),
    "v2048 seq128 4x160": dict(ANCHOR, vocab=2048, seq=128, n_embd=160),
    "v2048 seq128 6x128": dict(ANCHOR, vocab=2048, seq=128, n_layer=6),
}


def data_for(vocab: int, cache: Path) -> np.ndarray:
    d = cache / f"bpe{vocab}"
    if not (d / "meta.json").is_file():
        src = str(SHARED_STORIES) if SHARED_STORIES.is_file() else "synth"
        prepare(src, f"bpe:{vocab}", d, max_tokens=None if src != "synth" else 2_000_000, log=lambda *_: None)
    return load_split(d, "train")


def measure(name: str, s: dict, seconds: float, cache: Path) -> dict:
    torch.set_num_threads(s.get("threads", len(__import__("os").sched_getaffinity(0))))
    torch.manual_seed(0)
    tokens = data_for(s["vocab"], cache)
    cfg = ModelConfig(n_layer=s["n_layer"], n_embd=s["n_embd"], n_head=s["n_head"], vocab_size=s["vocab"],
                      block_size=s["seq"])
    model = build_model(cfg)
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    run = torch.compile(model) if s.get("compile") else model
    loader = BatchLoader(tokens, s["seq"], s["batch"])
    amp = autocast_ctx(torch.device("cpu"), torch.bfloat16 if s.get("dtype") == "bf16" else torch.float32)

    def step():
        x, y = loader.next_batch()
        with amp:
            _, loss = run(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    t0 = time.perf_counter()
    for _ in range(3):
        step()
    warm = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    dt = time.perf_counter() - t0
    tps = n * s["batch"] * s["seq"] / dt
    return {"setting": name, "params": model.num_params(), "tok_per_s": tps, "warmup_s": warm, "steps": n,
            "threads": torch.get_num_threads(), **{k: v for k, v in s.items() if k != "threads"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--cache", default="data_cache/bench")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    names = args.only or list(SETTINGS)
    if "anchor" not in names:
        names = ["anchor", *names]
    rows = [measure(n, SETTINGS[n], args.seconds, Path(args.cache)) for n in names]
    base = rows[0]["tok_per_s"]
    for r in rows:
        r["vs_anchor"] = r["tok_per_s"] / base
    print_table(rows, ["setting", "params", "tok_per_s", "vs_anchor", "warmup_s", "steps", "threads"])
    if not args.no_record:
        record("cpu_throughput", rows, seconds=args.seconds)


if __name__ == "__main__":
    main()

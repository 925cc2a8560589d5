"""Data-parallel scaling on one host (issue 6): `budgetlm bench` on one GPU, then under torchrun on
N GPUs with DDP, DDP + ZeRO-1 (sharded AdamW state) and FSDP2, each GPU doing the same work (same
micro-batch and accumulation per GPU: llm.c's convention, the global batch grows with N).

Scaling efficiency = tokens/s per GPU on N GPUs / tokens/s on one GPU. Peak memory is the fullest
GPU's. Every setting is a fresh process (compile included, untimed), so one's caches never help
the next.

    python benchmarks/dist_scaling.py --runs gpt2-124m:32:2 gpt2-350m:16:4 [--gpus 2] [--steps 10]

Each run is MODEL:MICRO_BATCH:ACCUM. Rows `dist-scaling` append to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import RESULTS, print_table, record  # noqa: E402

MODES = {"1 GPU": [], "DDP": ["--parallel", "ddp"], "DDP + ZeRO-1": ["--parallel", "ddp", "--zero-stage", "1"],
         "FSDP2": ["--parallel", "fsdp"]}


def bench_row(model: str, micro: int, accum: int, gpus: int, mode_args: list[str], steps: int, warmup: int,
              extra: list[str], timeout: int) -> dict | None:
    """One `budgetlm bench` process (under torchrun when gpus > 1); its results row, or None if it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.jsonl"
        args = ["-m", "budgetlm", "bench", "--model", model, "--micro-batch", str(micro), "--accum", str(accum),
                "--steps", str(steps), "--warmup", str(warmup), "--results", str(out), *mode_args, *extra]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus)] \
            if gpus > 1 else [sys.executable]
        res = subprocess.run(launcher + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if res.returncode or not out.exists():
            print(f"{model} {mode_args or '1 GPU'}: rc {res.returncode}\n{res.stderr[-3000:]}", flush=True)
            return None
        return json.loads(out.read_text().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", default=["gpt2-124m:32:2", "gpt2-350m:16:4"], help="MODEL:MICRO:ACCUM")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs for the parallel runs (default: all visible)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=300, help="seconds per bench process")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: more `budgetlm bench` flags")
    args = ap.parse_args()
    import torch
    gpus = args.gpus or torch.cuda.device_count()
    if gpus < 2 and any(m != "1 GPU" for m in args.modes):
        sys.exit(f"dist_scaling.py needs 2+ CUDA GPUs for the parallel modes; {gpus} visible")
    extra = [a for a in args.bench_args if a != "--"]
    rows = []
    for run in args.runs:
        try:
            model, micro, accum = run.split(":")
            micro, accum = int(micro), int(accum)
        except ValueError:
            sys.exit(f"--runs {run!r}: expected MODEL:MICRO_BATCH:ACCUM, e.g. gpt2-124m:32:2")
        single = None
        for mode in args.modes:
            n = 1 if mode == "1 GPU" else gpus
            r = bench_row(model, micro, accum, n, MODES[mode], args.steps, args.warmup, extra, args.timeout)
            if r is None:
                continue
            if mode == "1 GPU":
                single = r["tokens_per_s_per_gpu"] if "tokens_per_s_per_gpu" in r else r["tokens_per_s"]
            row = {"model": model, "mode": mode, "gpus": n, "micro_batch": micro, "accum": accum,
                   "ms_per_step": r["ms_per_step"], "tokens_per_s": r["tokens_per_s"],
                   "tokens_per_s_per_gpu": r.get("tokens_per_s_per_gpu", r["tokens_per_s"]),
                   "efficiency": r.get("tokens_per_s_per_gpu", r["tokens_per_s"]) / single if single else None,
                   "mfu": r["mfu"], "peak_mem_gb": r["peak_mem_gb"], "device": r["device"], "torch": r["torch"]}
            rows.append(row)
            print_table(rows[-1:], list(row)[:11])
    print()
    print_table(rows, ["model", "mode", "gpus", "ms_per_step", "tokens_per_s", "tokens_per_s_per_gpu",
                       "efficiency", "mfu", "peak_mem_gb"])
    if rows:
        record("dist-scaling", rows, Path(args.results), steps=args.steps, extra_flags=extra)


if __name__ == "__main__":
    main()

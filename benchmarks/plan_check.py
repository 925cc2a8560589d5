"""Check the planner's memory and step-time model against real training steps on CUDA.

For gpt2-124m, gpt2-350m and the tinyllama-1.1b shape at seq 1024 and micro-batch 8 and 16 it
runs a few real steps of --accum micro-batches (fp32 params, bf16 autocast, fused AdamW: what the trainer does), and
prints memory_estimate()['allocated'] against torch.cuda.max_memory_allocated and the predicted
step time (FLOPs / (peak x MFU)) against the measured one. Rows are appended to
benchmarks/results.jsonl. On a machine without CUDA it says so and exits with status 1.

  python benchmarks/plan_check.py [--micro 8 16] [--seq-len 1024] [--steps 5] [--mfu 0.4] [--compile]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from budgetlm.config import model_config  # noqa: E402
from budgetlm.plan.hardware import peak_flops  # noqa: E402
from budgetlm.train.fastpath import resolve_ce_kernel  # noqa: E402
from budgetlm.plan.memory import GB, flops_per_token, measure_peak_memory, measure_throughput, memory_estimate  # noqa: E402

CASES = ("gpt2-124m", "gpt2-350m", "tinyllama-1.1b")


def _commit() -> str:
    if os.environ.get("BUDGETLM_COMMIT"):  # the device machine's copy of the tree carries a stale .git
        return os.environ["BUDGETLM_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micro", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--accum", type=int, default=2, help="micro-batches per step (grads stay resident from the 2nd)")
    ap.add_argument("--mfu", type=float, default=0.40)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (the trainer's CUDA default)")
    ap.add_argument("--fused-loss", choices=["on", "off"], default="off", help="chunked loss head (TrainConfig.fused_loss)")
    ap.add_argument("--recompute", type=int, choices=(0, 1, 2), default=0, help="1 MLPs, 2 whole blocks")
    ap.add_argument("--models", nargs="+", default=list(CASES))
    ap.add_argument("--measure-seconds", type=float, default=0.0,
                    help="also predict the step time the way `plan --measure` does (this many seconds of "
                         "micro-steps, compiled as --compile says) and report its error")
    ap.add_argument("--pairs", nargs="+", metavar="MODEL:MICRO",
                    help="explicit (model, micro-batch) cases instead of --models x --micro")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.jsonl"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("plan_check: needs CUDA (a GPU) to measure memory and step time; nothing was run.", file=sys.stderr)
        return 1
    device = torch.cuda.get_device_name()
    peak = peak_flops(device)
    base = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": _commit(),
            "device": device, "torch": torch.__version__, "benchmark": "plan_check", "seq_len": args.seq_len,
            "mfu_assumed": args.mfu, "compile": args.compile, "accum": args.accum, "fused_loss": args.fused_loss,
            "recompute": args.recompute}
    fused = args.fused_loss == "on"
    rows = []
    cases = [(p.split(":")[0], int(p.split(":")[1])) for p in args.pairs] if args.pairs else \
        [(name, micro) for name in args.models for micro in args.micro]
    for name, micro in cases:
        cfg = model_config(name, block_size=args.seq_len)
        est = memory_estimate(cfg, micro, args.seq_len, "bfloat16", recompute=args.recompute, fused_loss=fused,
                              ce_kernel=resolve_ce_kernel("auto", torch.device("cuda"), fused))
        row = dict(base, model=name, micro_batch=micro, est_allocated_gb=est["allocated"] / GB,
                   est_parts_gb={k: round(v / GB, 3) for k, v in est.items()})
        try:
            m = measure_peak_memory(cfg, micro, args.seq_len, steps=args.steps, compile=args.compile,
                                    accum=args.accum, fused_loss=fused, recompute=args.recompute)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append(dict(row, error="out of memory"))
            continue
        flops = flops_per_token(cfg, args.seq_len, args.recompute) * micro * args.seq_len * args.accum
        row.update(params=m["params"], measured_allocated_gb=m["max_allocated"] / GB,
                   measured_reserved_gb=m["max_reserved"] / GB,
                   mem_error=est["allocated"] / m["max_allocated"] - 1, measured_step_s=m["step_s"],
                   first_step_s=m["first_step_s"], measured_tok_s=m["tokens_per_s"])
        if peak:
            row.update(peak_flops=peak, predicted_step_s=flops / (peak * args.mfu),
                       time_error=flops / (peak * args.mfu) / m["step_s"] - 1,
                       measured_mfu=flops / m["step_s"] / peak)
        if args.measure_seconds > 0:  # what `plan --measure` would have predicted for this step
            q = measure_throughput(cfg, micro, args.seq_len, args.measure_seconds,
                                   compile="on" if args.compile else "off")
            pred = args.accum * micro * args.seq_len / q["tokens_per_s"]
            row.update(measure_seconds=args.measure_seconds, measured_pred_step_s=pred,
                       time_error_after_measure=pred / m["step_s"] - 1, measure_first_step_s=q["first_step_s"])
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "est_parts_gb"}), flush=True)
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"plan_check on {device} (torch {torch.__version__}, seq {args.seq_len}, "
                    f"compile {'on' if args.compile else 'off'}, fused loss {args.fused_loss}, "
                    f"recompute {args.recompute}, accum {args.accum}, assumed MFU {args.mfu:.0%})")
    for col in ("model", "ubatch", "est GB", "measured GB", "mem err", "pred step s", "measured step s",
                "time err", "measured MFU", "err after --measure"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        if "error" in r:
            t.add_row(r["model"], str(r["micro_batch"]), f"{r['est_allocated_gb']:.2f}", r["error"], *[""] * 6)
            continue
        t.add_row(r["model"], str(r["micro_batch"]), f"{r['est_allocated_gb']:.2f}", f"{r['measured_allocated_gb']:.2f}",
                  f"{r['mem_error']:+.1%}", f"{r.get('predicted_step_s', float('nan')):.3f}", f"{r['measured_step_s']:.3f}",
                  f"{r['time_error']:+.1%}" if "time_error" in r else "-",
                  f"{r['measured_mfu']:.1%}" if "measured_mfu" in r else "-",
                  f"{r['time_error_after_measure']:+.1%}" if "time_error_after_measure" in r else "-")
    Console(width=160).print(t)
    with open(args.out, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"appended {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

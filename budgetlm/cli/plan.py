"""`budgetlm plan`: what a budget buys on given hardware: model size, memory, speed, tokens, a config."""

from __future__ import annotations

import argparse

from budgetlm.checks import number
from budgetlm.cli.flags import field_flag


def register(sub) -> None:
    from budgetlm.plan.memory import SHARDINGS
    from budgetlm.plan.planner import GOALS, LADDERS
    sp = sub.add_parser("plan", help="what a budget buys: model size, memory, speed, tokens, a config")
    sp.add_argument("--gpu", default="h100", help="a100-40gb, a100-80gb, h100, h100-pcie, h200, mi300x, rtx3090, "
                    "rtx4090, m1..m4, cpu or custom (with --tflops and --mem-gb)")
    sp.add_argument("--gpus", type=number(int, min=1), default=1, help="number of GPUs")
    sp.add_argument("--tokens", help="tokens of data available, e.g. 14.6B (default: unlimited)")
    sp.add_argument("--time", default="24h", help="wall-clock budget: 24h, 90m, 1h30m")
    sp.add_argument("--goal", choices=GOALS, default="compute-optimal",
                    help="compute-optimal (best loss in the time), inference-optimal (smallest near it), fixed-params")
    sp.add_argument("--params", help="model size for --goal fixed-params, e.g. 1.5B")
    sp.add_argument("--family", choices=sorted(LADDERS), default="gpt2", help="the ladder of shapes to choose from")
    field_flag(sp, "seq_len", default=1024)
    sp.add_argument("--vocab", type=number(int, min=1), help="vocabulary size (default: 50257 gpt2, 32000 llama)")
    sp.add_argument("--mfu", type=number(float, positive=True, max=1.0), default=0.40,
                    help="assumed model FLOPs utilization")
    sp.add_argument("--tflops", type=number(float, positive=True), help="peak dense bf16 TFLOP/s (custom GPU, or override)")
    sp.add_argument("--mem-gb", type=number(float, positive=True), help="memory per GPU in GB (custom GPU, or override)")
    sp.add_argument("--sharding", choices=SHARDINGS, default="none", help="how weights and optimizer state are split")
    field_flag(sp, "recompute", nargs="?", const=2, default=0)  # bare --recompute: 2, whole blocks
    field_flag(sp, "fused_loss", nargs="?", const="on", default="off")  # bare --fused-loss: on
    sp.add_argument("--loss-tolerance", type=number(float, min=0.0), default=0.02,
                    help="inference-optimal: loss allowed above the best")
    sp.add_argument("--measure", action="store_true", help="time real steps of the small candidates here")
    field_flag(sp, "compile", default="auto")  # with --measure: as the trainer would (auto: on CUDA only)
    sp.add_argument("--explain", action="store_true", help="print every formula with its numbers")
    sp.add_argument("--out", help="write the recommended config as TOML here")
    sp.add_argument("--data", help="prepared data folder to name in the config's [data] table")
    sp.set_defaults(fn=run)


def run(args: argparse.Namespace) -> None:
    """The table, the recommendation, optional formulas, measurements and config file."""
    from budgetlm.plan.planner import explain, make_plan, measure, render, write_config
    plan = make_plan(args.gpu, args.gpus, args.tokens, args.time, args.goal, args.params, args.family, args.seq_len,
                     args.mfu, args.tflops, args.mem_gb, args.sharding, args.recompute, args.vocab,
                     loss_tolerance=args.loss_tolerance, data_dir=args.data,
                     fused_loss=True if args.fused_loss == "on" else None)
    print(render(plan))
    if args.explain:
        print("\nFormulas:\n" + explain(plan))
    if args.measure:
        print("\nMeasured on this machine as the trainer runs (compiled on CUDA, eager elsewhere); the estimate "
              "uses this device's peak and --mfu:")
        measure(plan, compile=args.compile)
    if args.out:
        print(f"\nwrote {write_config(plan, args.out)}: budgetlm train --config {args.out}"
              + ("" if args.data else " --data DIR"))

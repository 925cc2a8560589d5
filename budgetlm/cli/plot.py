"""`budgetlm plot RUN_DIR... --out PNG`: val loss and HellaSwag curves with GPT-2/GPT-3 references."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    sp = sub.add_parser("plot", help="val loss and HellaSwag curves of runs, with GPT-2/GPT-3 references")
    sp.add_argument("runs", nargs="+", help="run folders (with metrics.jsonl)")
    sp.add_argument("--out", default="runs.png", help="curves PNG (default runs.png)")
    sp.add_argument("--summary", help="summary-page PNG (default: OUT with _summary)")
    sp.add_argument("--no-refs", action="store_true", help="leave out the reference lines")
    sp.set_defaults(fn=run)


def run(args: argparse.Namespace) -> None:
    from budgetlm.report.plot import plot_runs
    curves, page = plot_runs(args.runs, args.out, args.summary, refs=not args.no_refs)
    print(f"wrote {curves} and {page}")

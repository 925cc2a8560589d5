"""`budgetlm sweep FILE.toml`: grid or random search over settings x seeds, with a noise-aware leaderboard."""

from __future__ import annotations

import argparse

from budgetlm.errors import BudgetLMError


def register(sub) -> None:
    sp = sub.add_parser("sweep", help="grid/random search over settings x seeds, with a noise-aware leaderboard")
    sp.add_argument("config", help="TOML file with [sweep], [grid] (and optional [model], [train]) tables")
    # --workers, not --parallel first: train's --parallel is ddp/fsdp; --parallel stays as users wrote it
    sp.add_argument("--workers", "--parallel", dest="workers", type=int,
                    help="worker processes (overrides [sweep] parallel)")
    sp.add_argument("--out", help="sweep folder (overrides [sweep] out)")
    sp.add_argument("--dry-run", action="store_true", help="list the runs and which are done; train nothing")
    sp.set_defaults(fn=run)


def run(args: argparse.Namespace) -> None:
    from budgetlm.checks import out_dir
    from budgetlm.sweep.runner import check_spec, load_sweep, run_sweep
    spec = load_sweep(args.config)
    if args.workers is not None:
        spec.parallel = args.workers
        check_spec(spec)
    if args.out:
        spec.out = args.out
    out_dir(spec.out, "--out" if args.out else f"[sweep] out in {args.config}")
    result = run_sweep(spec, dry_run=args.dry_run)
    if result.rows and result.failed == len(result.rows):  # nothing to compare: the sweep itself failed
        first = next((str(r["error"]).splitlines()[0] for r in result.rows if r.get("error")), "see the run logs")
        raise BudgetLMError(f"all {result.failed} of {len(result.rows)} runs failed; first error: {first}")
    if result.failed:
        print(f"note: {result.failed} of {len(result.rows)} runs failed (see results.csv)")

"""`budgetlm VERB ...`: one module per verb, each with `register(sub)` (its flags, generated from the
config fields it exposes) and `run(args)` (parse into config objects, call one library function).
Problems with input end as one line naming the file or flag, and exit code 2."""

from __future__ import annotations

import argparse
import sys

from budgetlm.cli import bench, export, ngram, plan, plot, prepare, sample, speedrun, sweep, train
from budgetlm.cli import eval as eval_verb  # the module is named for its verb
from budgetlm.cli.flags import OneLineParser, UsageError
from budgetlm.cli.paths import check_paths
from budgetlm.errors import BudgetLMError
from budgetlm.train.interrupt import RunStopped

VERBS = (prepare, train, eval_verb, sample, speedrun, plan, export, bench, ngram, sweep, plot)  # --help order


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="budgetlm", description="Train the strongest language model a budget allows.")
    sub = p.add_subparsers(dest="verb", required=True)
    for verb in VERBS:
        verb.register(sub)
    return p


def _verb_of(argv: list[str] | None, parser: argparse.ArgumentParser) -> str | None:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next((a for a in (sys.argv[1:] if argv is None else argv) if a in sub.choices), None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        verb = _verb_of(argv, parser)
        print(f"budgetlm{' ' + verb if verb else ''}: error: {e.message}", file=sys.stderr)
        return 2
    try:
        check_paths(args)
        args.fn(args)
    except BudgetLMError as e:
        print(f"budgetlm {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:  # stopped by a signal after a checkpoint; the trainer logged how to resume
        return e.exit_code
    except KeyboardInterrupt:
        print(f"budgetlm {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

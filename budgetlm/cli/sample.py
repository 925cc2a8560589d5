"""`budgetlm sample`: generate text from a checkpoint (optionally with shallow fusion)."""

from __future__ import annotations

import argparse
import sys

from budgetlm import checks
from budgetlm.cli.flags import field_flag
from budgetlm.errors import BudgetLMError


def register(sub) -> None:
    sp = sub.add_parser("sample", help="generate text from a checkpoint")
    sp.add_argument("checkpoint", nargs="?", default="runs/speedrun", help="run or checkpoint folder")
    sp.add_argument("--prompt", default="Once upon a time", help="text to continue")
    sp.add_argument("--max-tokens", type=checks.number(int, min=1), default=256, help="tokens to generate")
    sp.add_argument("--temperature", type=checks.number(float, positive=True), default=0.8,
                    help="sampling temperature")
    sp.add_argument("--top-k", type=checks.number(int, min=0), default=0, help="keep the k likeliest tokens (0 = all)")
    sp.add_argument("--top-p", type=checks.number(float, positive=True, max=1.0), default=0.95,
                    help="nucleus sampling: keep the likeliest tokens up to this probability mass")
    sp.add_argument("--greedy", action="store_true", help="always the likeliest token (no temperature)")
    sp.add_argument("-n", type=checks.number(int, min=1), default=1, help="number of samples")
    sp.add_argument("--fuse", help="shallow fusion, e.g. ngram:0.2,cache:0.1,knn:0.1")
    sp.add_argument("--data", help="prepared data folder (for --fuse ngram/knn heads)")
    field_flag(sp, "seed", default=0)
    field_flag(sp, "device")
    sp.set_defaults(fn=run)


def run(args: argparse.Namespace) -> None:
    from budgetlm.sample.generate import sample_text
    from budgetlm.report.summary import load_model

    model, tok, _ = load_model(args.checkpoint, args.device or "auto")
    temp = None if args.greedy else args.temperature
    hook = None
    if args.fuse:
        from budgetlm.sample.fusion import Fuser
        if not args.data and any(h in args.fuse for h in ("knn", "ngram:")) and "@" not in args.fuse:
            raise BudgetLMError("--fuse with ngram or knn heads needs --data (the prepared folder they are built from)")
        fuser = Fuser.build(model, args.data, args.fuse, tok, log=lambda m: print(m, file=sys.stderr))
        hook = fuser.logits_hook
    for i in range(args.n):
        s = sample_text(model, tok, args.prompt, args.max_tokens, temp, args.top_k, args.top_p, args.seed + i,
                        logits_hook=hook)
        print(s.text)
        print(f"[{len(s.tokens)} tokens, {s.tokens_per_s:,.0f} tokens/s]", file=sys.stderr)
        if i + 1 < args.n:
            print("-" * 40)

"""`budgetlm prepare`: text -> tokenizer -> token shards (llm.c format)."""

from __future__ import annotations

import argparse

from budgetlm import checks
from budgetlm.cli.flags import field_flag


def register(sub) -> None:
    sp = sub.add_parser("prepare", help="text -> tokenizer -> token shards (llm.c format)")
    sp.add_argument("--data", required=True,
                    help="tinystories, synth, fineweb-edu, FILE.txt|.jsonl|.parquet, DIR, hf:OWNER/NAME")
    sp.add_argument("--tokenizer", help="bpe:N, gpt2 or char (default bpe:4096; fineweb-edu is always gpt2)")
    sp.add_argument("--sample", help="with --data fineweb-edu: 10BT (default), 100BT or 350BT")
    sp.add_argument("--out", required=True, help="the prepared folder to write")
    sp.add_argument("--max-tokens", help="train tokens to keep, e.g. 20M (default: all)")
    sp.add_argument("--val-frac", type=checks.number(float, min=0.0, max=0.99), default=0.1,
                    help="held-out share for sources without a val split")
    sp.add_argument("--shard-tokens", default="100M", help="tokens per shard file, e.g. 100M (default)")
    field_flag(sp, "seed", default=0)
    sp.set_defaults(fn=run)


def run(args: argparse.Namespace) -> None:
    from budgetlm.data.prepare import prepare
    prepare(args.data, args.tokenizer, args.out, max_tokens=count(args.max_tokens, "--max-tokens"),
            val_frac=args.val_frac, shard_tokens=count(args.shard_tokens, "--shard-tokens"), seed=args.seed,
            sample=args.sample)


def count(text: str | None, flag: str) -> int | None:
    """'50M', '2.5k', '1000' -> int (train/budget.py's parse_count, the one count parser)."""
    from budgetlm.train.budget import parse_count
    value = parse_count(text, flag)
    return None if value is None else int(value)

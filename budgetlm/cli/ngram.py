"""`budgetlm ngram build|sample`: build n-gram models (with val BPB) or sample from a saved one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from budgetlm.checks import number
from budgetlm.cli.flags import field_flag
from budgetlm.errors import BudgetLMError
from budgetlm.models.ngram_build import build_and_score, check_tokenizer, save_for, tok_fingerprint


def register(sub) -> None:
    p = sub.add_parser("ngram", help="Kneser-Ney n-gram models: build (with val BPB) or sample")
    p.add_argument("action", choices=["build", "sample"], help="build: fit and score; sample: generate from --model")
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--order", default="4", help="N or a range LO..HI (build)")
    p.add_argument("--max-tokens", type=number(int, min=1), help="build from at most this many train tokens")
    p.add_argument("--out", help="save the model(s) as .npz")
    p.add_argument("--json", help="write build/eval numbers as JSON")
    p.add_argument("--model", help="a saved .npz (sample)")
    p.add_argument("--prompt", default="Once upon a time", help="text to continue (sample)")
    p.add_argument("--max-tokens-out", dest="max_tokens_out", type=number(int, min=1), default=200,
                   help="tokens to generate (sample)")
    p.add_argument("--temperature", type=number(float, positive=True), default=1.0, help="sampling temperature")
    field_flag(p, "seed", default=0)
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> None:
    if args.action == "build":
        orders = parse_orders(args.order)
        rows = []
        for order in orders:
            lm, res = build_and_score(args.data, order, args.max_tokens or 0)
            rows.append(res)
            print(f"order {order}: built in {res['build_seconds']:.2f}s from {res['train_tokens']:,} tokens; "
                  f"val loss {res['val_loss']:.4f}, ppl {res['val_ppl']:.2f}, bits/byte {res['val_bpb']:.4f}")
            if args.out:
                out = Path(args.out)
                path = out if len(orders) == 1 else out.with_name(f"{out.stem}.{order}{out.suffix or '.npz'}")
                save_for(lm, path, tok_fingerprint(args.data))
                print(f"saved {path}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    else:
        from budgetlm.data.prepare import data_tokenizer
        from budgetlm.models.ngram import KneserNeyLM
        if not args.model:
            raise BudgetLMError("ngram sample: --model FILE.npz is required")
        lm = KneserNeyLM.load(args.model)
        tok = data_tokenizer(args.data)
        check_tokenizer(lm, args.model, tok, f"--data {args.data}")
        prompt = [tok.eot_id] + tok.encode(args.prompt)
        ids = lm.sample(args.max_tokens_out, prompt, temperature=args.temperature, seed=args.seed)
        text = tok.decode(ids).split("<|endoftext|>")[0]
        print(args.prompt + text)


def parse_orders(text: str) -> list[int]:
    from budgetlm.models.ngram import MAX_ORDER
    try:
        if ".." in text:
            lo, hi = (int(x) for x in text.split(".."))
        else:
            lo = hi = int(text)
    except ValueError:
        raise BudgetLMError(f"--order {text!r}: expected N or LO..HI, e.g. 4 or 2..5") from None
    if not 1 <= lo <= hi <= MAX_ORDER:
        raise BudgetLMError(f"--order {text!r}: orders must run upwards within 1..{MAX_ORDER}, e.g. 4 or 2..5")
    return list(range(lo, hi + 1))

"""`budgetlm eval`: flags -> EvalRequest -> eval.run_eval; prints the numbers as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from budgetlm import checks
from budgetlm.cli.flags import field_flag


def register(sub) -> None:
    sp = sub.add_parser("eval", help="validation loss, perplexity, bits per byte (and story metrics)")
    sp.add_argument("checkpoint", help="run or checkpoint folder")
    sp.add_argument("--data", help="prepared data folder (same tokenizer)")
    sp.add_argument("--text", help="score a text file instead (.txt/.jsonl/.parquet, or a folder), tokenized with "
                                   "the checkpoint's tokenizer exactly as 'prepare' would")
    sp.add_argument("--hellaswag", type=int, nargs="?", const=0, metavar="N",
                    help="also HellaSwag acc / acc_norm on the first N items (default all 10,042)")
    field_flag(sp, "hellaswag_file")
    sp.add_argument("--split", default="val", help="the prepared folder's split to score (default val)")
    field_flag(sp, "seq_len", help="tokens per scored window (default: the seq len it was trained with, else its block size)")
    field_flag(sp, "batch_size", default=16, help="windows per forward pass (default 16)")
    sp.add_argument("--max-tokens", type=checks.number(int, min=1), help="score at most this many tokens")
    sp.add_argument("--stories", type=checks.number(int, min=0), default=0,
                    help="also generate N stories and score their quality")
    sp.add_argument("--fuse", help="also score with shallow fusion, e.g. ngram:0.2,cache:0.1,knn:0.1")
    sp.add_argument("--judge", action="store_true", help="score the stories with an LLM judge (BUDGETLM_JUDGE_*)")
    sp.add_argument("--judge-cache", help="JSONL cache of judge replies")
    field_flag(sp, "seed", default=0)
    field_flag(sp, "device")
    sp.add_argument("--out", help="write the results as JSON here")
    sp.set_defaults(fn=run)


def run(args: argparse.Namespace) -> None:
    from budgetlm.eval.run_eval import EvalRequest, printed, run_eval
    req = EvalRequest(checkpoint=args.checkpoint, data=args.data, text=args.text, split=args.split,
                      seq_len=args.seq_len, batch_size=args.batch_size, max_tokens=args.max_tokens,
                      hellaswag=args.hellaswag, hellaswag_file=args.hellaswag_file, stories=args.stories,
                      fuse=args.fuse, judge=args.judge, judge_cache=args.judge_cache, seed=args.seed,
                      device=args.device or "auto")
    result = run_eval(req)
    print(json.dumps(printed(result), indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

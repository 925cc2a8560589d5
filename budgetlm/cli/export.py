"""`budgetlm export CHECKPOINT --format hf --out OUT`: a checkpoint as a transformers folder."""

from __future__ import annotations

import argparse

from budgetlm.errors import BudgetLMError


def register(sub) -> None:
    sp = sub.add_parser("export", help="write a checkpoint as a Hugging Face transformers folder")
    sp.add_argument("checkpoint", help="run or checkpoint folder")
    sp.add_argument("--format", default="hf", help="hf (transformers: GPT2LMHeadModel or LlamaForCausalLM)")
    sp.add_argument("--out", required=True, help="output folder (new or empty, unless --force)")
    sp.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing its files")
    sp.set_defaults(fn=run)


def run(args: argparse.Namespace) -> None:
    if args.format != "hf":
        raise BudgetLMError(f"--format: unknown format {args.format!r}; supported: hf")
    from budgetlm.checks import out_dir
    from budgetlm.export import export_hf
    out_dir(args.out, "--out", empty=not getattr(args, "force", False))  # never overwrite files silently
    out = export_hf(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} -> {out} (load with AutoModelForCausalLM.from_pretrained({str(out)!r}))")

"""`budgetlm bench`: time training steps of a named model (or a finished run's step), with each
fast-path piece switchable and an ablation; rows append to benchmarks/results.jsonl. The fast-path
flags are the trainer's (same names, choices and help); bench's defaults are the GPU fast path."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from budgetlm.plan.bench import RESULTS, ablation_settings, bench_one, max_micro_batch, print_rows, record
from budgetlm.checks import number
from budgetlm.cli.flags import field_flag
from budgetlm.device import pick_device, pick_dtype, set_inductor_options
from budgetlm.errors import BudgetLMError
from budgetlm.train.distributed import DistContext, setup
from budgetlm.train.fastpath import resolve_ce_kernel, resolve_half_residual, should_compile


def register(sub) -> None:
    p = sub.add_parser("bench", help="time training steps: ms/step, tokens/s, MFU, peak memory")
    p.add_argument("--model", default="gpt2-124m", help="named size or shape (as train --model)")
    field_flag(p, "seq_len", default=1024)
    field_flag(p, "batch_size", nargs="+", default=[16], help="sequences per micro-batch: one or more sizes to time")
    p.add_argument("--accum", type=number(int, min=1), default=1, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=number(int, min=1), default=20, help="timed steps")
    p.add_argument("--warmup", type=number(int, min=0), default=5, help="untimed steps first (compilation)")
    field_flag(p, "compile", default="on")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode ('reduce-overhead': CUDA graphs)",
                   choices=["default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"])
    p.add_argument("--inductor", nargs="+", metavar="KEY=VALUE",
                   help="torch._inductor.config options for this run, e.g. max_autotune_gemm=True combo_kernels=True")
    field_flag(p, "fused_loss", default="off")
    field_flag(p, "ce_kernel", default="auto")
    field_flag(p, "fp8_head", default="off")
    p.add_argument("--fused-adam", choices=["on", "off"], default="on", help="fused AdamW on CUDA (off: foreach)")
    field_flag(p, "vocab_multiple")
    field_flag(p, "attn", default="auto")
    field_flag(p, "fp8", default="off")
    field_flag(p, "fp8_modules", default="all")
    p.add_argument("--gqa", choices=["native", "repeat"], default="native",
                   help="grouped-query attention: SDPA's enable_gqa, or kv heads repeated before it")
    field_flag(p, "half_residual", default="on")
    field_flag(p, "dtype", default="bfloat16")
    field_flag(p, "recompute", default=0)
    field_flag(p, "device")
    field_flag(p, "parallel", default="auto")
    field_flag(p, "zero_stage", default=0)
    p.add_argument("--ablation", action="store_true", help="run the fast path and each piece switched off")
    p.add_argument("--results", default=str(RESULTS), help="JSONL file the rows are appended to")
    p.add_argument("--no-record", action="store_true", help="print the rows only")
    p.add_argument("--from-run", metavar="RUN", help="time the step a finished run trained: its model, "
                   "seq len, micro-batch, accumulation and CUDA graphs (from RUN/summary.json)")
    p.add_argument("--max-micro-batch", action="store_true",
                   help="search the largest micro-batch that fits (doubling from --batch-size, then bisect)")
    p.set_defaults(fn=run)


def resolved_switches(args: argparse.Namespace, device: torch.device) -> tuple[bool, str, bool]:
    """compile, dtype and half_residual as bench_one takes them; 'auto' decided as the trainer decides."""
    compile_on = args.compile == "on" or (args.compile == "auto" and should_compile("auto", device))
    dtype = args.dtype if args.dtype != "auto" else str(pick_dtype("auto", device)).removeprefix("torch.")
    half = resolve_half_residual(args.half_residual, device, getattr(torch, dtype), args.fp8) \
        if args.half_residual == "auto" else args.half_residual == "on"
    return compile_on, dtype, half


def from_run(args: argparse.Namespace) -> dict:
    """--from-run RUN: the model, sequence length, micro-batch, accumulation and CUDA-graph choice the
    run trained with (its summary.json), so bench times the same step the trainer ran."""
    path = Path(args.from_run) / "summary.json"
    try:
        summary = json.loads(path.read_text())
        model, train = dict(summary["model"]), summary["train"]
        args.seq_len, args.batch_size, args.accum = train["seq_len"], [train["batch_size"]], summary.get("accum", 1)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BudgetLMError(f"--from-run {args.from_run}: no readable summary.json of a finished run ({e})") from None
    if summary.get("cuda_graphs") and args.compile_mode == "default":
        args.compile_mode = "reduce-overhead"  # the trainer's CUDA graphs
    args.model = None  # every shape field comes from the run's config
    model.pop("block_size", None)  # bench sets it from --seq-len
    return model


def run(args: argparse.Namespace) -> None:
    model_fields = from_run(args) if args.from_run else {}
    if args.seq_len < 1 or min(args.batch_size) < 1 or args.steps < 1 or args.accum < 1:
        raise BudgetLMError("--seq-len, --batch-size, --accum and --steps must be positive")
    inductor = set_inductor_options(args.inductor)  # before any compile; checked before a GPU is touched
    with setup(pick_device(args.device or "auto"), args.parallel, args.zero_stage) as ctx:
        bench_settings(args, ctx, inductor, model_fields)


def bench_settings(args: argparse.Namespace, ctx: DistContext, inductor: dict | None = None,
                   model_fields: dict | None = None) -> None:
    """Time each setting (the one given, or the ablation) at each micro-batch; or --max-micro-batch."""
    compile_on, dtype, half_residual = resolved_switches(args, ctx.device)
    base = dict(**(model_fields or {}), **dict(model_name=args.model, seq=args.seq_len, steps=args.steps,
                warmup=args.warmup, compile=compile_on, fused_loss=args.fused_loss == "on", attn=args.attn,
                fused_adam=args.fused_adam == "on", dtype=dtype, recompute=args.recompute, fp8=args.fp8,
                native_gqa=args.gqa == "native", half_residual=half_residual, ce_kernel=args.ce_kernel,
                fp8_head=args.fp8_head, fp8_modules=args.fp8_modules, device=args.device or "auto", accum=args.accum,
                compile_mode=args.compile_mode, ctx=ctx))
    if args.vocab_multiple is not None:
        base["vocab_multiple"] = args.vocab_multiple
    if args.max_micro_batch:
        return largest_micro_batch(args, ctx, base)
    if args.ablation:
        kernel = resolve_ce_kernel(args.ce_kernel, ctx.device, args.fused_loss == "on")
        settings = ablation_settings(args.model, args.attn, args.fp8, half_residual, kernel, args.fp8_head == "on")
    else:
        settings = {"as given": {}}
    rows = []
    for mb in args.batch_size:
        for name, change in settings.items():
            r = _time_one(args, ctx, {**base, "micro_batch": mb, **change}, f"{name} (micro-batch {mb})",
                          reset=base["compile"])
            if r is None:
                continue
            r["setting"] = name if len(args.batch_size) == 1 else f"{name} mb{mb}"
            if args.from_run:
                r.update(model=f"{model_fields['n_layer']}x{model_fields['n_embd']} v{model_fields['vocab_size']}",
                         from_run=str(args.from_run))
            if inductor:
                r["inductor"] = inductor
            if ctx.is_main:
                print_rows([r], header=not rows)
            rows.append(r)
    if rows and not args.no_record and ctx.is_main:
        record(rows, "bench-ablation" if args.ablation else "bench", Path(args.results))


def _time_one(args: argparse.Namespace, ctx: DistContext, settings: dict, label: str,
              reset: bool) -> dict | None:
    """One bench_one row; None when it ran out of memory (one process) or, in an ablation, cannot run here."""
    say = print if ctx.is_main else (lambda *a, **k: None)
    try:
        return bench_one(**settings)
    except torch.OutOfMemoryError:
        if ctx.enabled:
            raise  # the other ranks cannot carry on alone
        say(f"{label}: out of memory")
        torch.cuda.empty_cache()
    except BudgetLMError as e:
        if not args.ablation:
            raise
        say(f"{label}: skipped, {e}")  # e.g. fp8 rows on a GPU without FP8
    finally:
        if reset:
            torch._dynamo.reset()  # each setting compiles afresh; don't let caches pile up
    return None


def largest_micro_batch(args: argparse.Namespace, ctx: DistContext, base: dict) -> None:
    """--max-micro-batch: the out-of-memory edge, doubling from --batch-size then bisecting."""
    if not torch.cuda.is_available():
        raise BudgetLMError("--max-micro-batch needs CUDA (it searches for the out-of-memory edge)")
    if ctx.enabled:  # an out-of-memory error on one rank would leave the others waiting in a collective
        raise BudgetLMError("--max-micro-batch runs in one process; launch it without torchrun")
    mb, row = max_micro_batch(start=args.batch_size[0], **base)
    print(f"largest micro-batch that fits: {mb}")
    if row and not args.no_record:
        row.update(setting="largest micro-batch", largest_micro_batch=mb)
        record([row], "bench-max-micro-batch", Path(args.results))

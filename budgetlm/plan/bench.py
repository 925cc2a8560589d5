"""`budgetlm bench`: time training steps of a named model, with each fast-path piece switchable,
so every speed claim comes with its ablation. Results append to benchmarks/results.jsonl.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import torch

from budgetlm.config import TrainConfig, model_config
from budgetlm.device import autocast_ctx, pick_device, synchronize
from budgetlm.errors import BudgetLMError
from budgetlm.models import build_model
from budgetlm.models.transformer import gqa_mode
from budgetlm.train.distributed import DistContext
from budgetlm.train.fastpath import resolve_fast_path
from budgetlm.train.optim import make_optimizer
from budgetlm.train.step import CycleBatches, train_step

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results.jsonl"

# One setting per row of the ablation: the fast path as given on the command line, then each
# piece changed alone. The chunked loss is a row of its own, not part of the fast path: it saves
# memory but measured slower on an H100 than the compiled plain loss and the CE kernel.
ABLATION = {
    "fast (as given)": {},
    "no compile": {"compile": False},
    "chunked fused loss": {"fused_loss": True},
    "compiled plain loss (no CE kernel)": {"ce_kernel": "off"},
    "no vocab padding": {"vocab_multiple": 1},
    "attention: FlashAttention-2": {"attn": "flash"},
    "attention: math kernel": {"attn": "math"},
    "GQA: repeated kv heads": {"native_gqa": False},  # only for models with grouped-query attention
    "fp32 residual stream": {"half_residual": False},
    "AdamW foreach (not fused)": {"fused_adam": False},
    "fp32 (no bf16 autocast)": {"dtype": "float32", "compile": False},
    "+ fp8 tensorwise": {"fp8": "tensorwise"},  # opt-in pieces: added to the fast path, not taken away
    "+ fp8 rowwise": {"fp8": "rowwise"},
    "+ fp8 head (CE kernel)": {"fp8_head": "on"},
}


def ablation_settings(model_name: str, attn: str = "auto", fp8: str = "off",
                      half_residual: bool = True, ce_kernel: bool = True, fp8_head: bool = False) -> dict[str, dict]:
    """ABLATION without the rows that would change nothing for this model or this fast path."""
    shape = model_config(model_name)
    return {k: v for k, v in ABLATION.items()
            if (shape.kv_heads != shape.n_head or "native_gqa" not in v)
            and ("fp8" not in v or fp8 == "off") and v.get("attn", "-") != attn
            and (half_residual or "half_residual" not in v) and (ce_kernel or "ce_kernel" not in v)
            and ("fp8_head" not in v or (ce_kernel and not fp8_head))}


def bench_one(model_name: str, seq: int, micro_batch: int, steps: int = 20, warmup: int = 5,
              compile: bool = True, fused_loss: bool = True, vocab_multiple: int | None = None, attn: str = "auto",
              fused_adam: bool = True, dtype: str = "bfloat16", recompute: int = 0, device: str = "auto",
              accum: int = 1, compile_mode: str = "default", fp8: str = "off", native_gqa: bool = True,
              half_residual: bool = True, ce_kernel: str = "auto", fp8_head: str = "off",
              fp8_modules: str = "all", ctx: DistContext | None = None,
              **model_overrides) -> dict:
    """ms/step, tokens/s, MFU and peak memory of `steps` timed AdamW steps on random tokens; each
    step is `accum` micro-batches (the optimizer step is amortized over them, as in real training).

    Under torchrun, `ctx` (from distributed.setup) wraps the model as the trainer does (DDP, DDP with
    ZeRO-1 optimizer sharding, or FSDP2): every rank times its own steps; the row has the slowest
    rank's step time, the whole job's tokens/s, tokens/s per GPU and the largest peak memory."""
    ctx = ctx or DistContext(device=pick_device(device))
    dev = ctx.device
    torch.manual_seed(0)  # same initial weights on every rank, as in the trainer
    overrides = dict(block_size=seq, **model_overrides)
    if vocab_multiple is not None:
        overrides["vocab_multiple"] = vocab_multiple
    cfg = model_config(model_name, **overrides)
    model = build_model(cfg).to(dev)
    torch_dtype = torch.bfloat16 if dtype in ("bf16", "bfloat16") else torch.float32
    onoff = lambda flag: "on" if flag else "off"  # noqa: E731
    tc = dataclasses.replace(TrainConfig(),
                             fast=dataclasses.replace(TrainConfig().fast, compile=onoff(compile), attn=attn, fused_loss=onoff(fused_loss), ce_kernel=ce_kernel, fp8_head=fp8_head, fp8=fp8, fp8_modules=fp8_modules, half_residual=onoff(half_residual), recompute=recompute))
    fast = resolve_fast_path(tc, dev, torch_dtype, model, accum=accum, distributed=ctx.enabled,
                             compile_mode=compile_mode)
    fp8_layers = fast.apply(model)
    wrapped = ctx.wrap(model, torch_dtype)
    if dev.type == "cuda" and not fused_adam:
        foreach = lambda m, c, d: torch.optim.AdamW(make_optimizer(m, c, d).param_groups, lr=1e-4,
                                                     betas=(0.9, 0.95), foreach=True)
        opt = ctx.make_optimizer(model, foreach, tc, dev)
    else:
        opt = ctx.make_optimizer(model, make_optimizer, tc, dev)
    run = fast.compile_model(wrapped)
    amp = autocast_ctx(dev, torch_dtype)
    gen = torch.Generator().manual_seed(ctx.rank)  # each rank its own tokens
    data = torch.randint(0, cfg.vocab_size, (min(warmup + steps, 8), accum, micro_batch, seq + 1), generator=gen)
    if dev.type == "cuda":  # pageable copies would block the host until the GPU is idle
        data = data.pin_memory()
    batches = CycleBatches([(data[i, a, :, :-1], data[i, a, :, 1:]) for i in range(len(data)) for a in range(accum)])

    def step(i: int) -> torch.Tensor:
        """The trainer's optimizer step (train/step.py); returns its loss (a copy: a CUDA-graph
        replay would overwrite the original)."""
        with gqa_mode(native_gqa):
            result = train_step(run, model, opt, batches, ctx, accum=accum, device=dev, autocast=amp,
                                cuda_graphs=fast.cuda_graphs, graph_grads=fast.graph_grads, grad_clip=1.0)
        return result.loss.clone()

    t0 = time.perf_counter()
    first_loss = None
    for i in range(warmup):
        loss = step(i)
        first_loss = loss if first_loss is None else first_loss
    synchronize(dev)
    warmup_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        last_loss = step(i)
        first_loss = last_loss if first_loss is None else first_loss
    if dev.type == "cuda":
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / steps
    else:
        ms = (time.perf_counter() - t0) * 1000 / steps
    peak_mem = torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None
    loss_first, loss_last = first_loss.item(), last_loss.item()
    check_training(loss_first, loss_last)
    ms_rank = ms
    if ctx.enabled:  # the job runs at its slowest rank's pace; memory is what the fullest GPU needs
        worst = torch.tensor([ms, peak_mem or 0.0], dtype=torch.float64, device=dev)
        torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX)
        ms, peak_mem = worst[0].item(), (worst[1].item() if dev.type == "cuda" else None)
    tokens = micro_batch * seq * accum
    fpt = model.flops_per_token(seq)
    fpt_full = model.flops_per_token_full_attention(seq)
    from budgetlm.plan.hardware import peak_flops
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = peak_flops(name) if dev.type == "cuda" else None
    tps = tokens / (ms / 1000)  # per GPU; MFU is per GPU too
    return {"model": model_name, "params": model.num_params(), "seq": seq, "micro_batch": micro_batch,
            "ms_per_step": ms, "tokens_per_s": tps * ctx.world, "tokens_per_s_per_gpu": tps,
            "world": ctx.world, "parallel": ctx.parallel + ("+zero1" if ctx.zero_stage else ""),
            "ms_per_step_rank0": ms_rank if ctx.enabled else ms,
            "mfu": tps * fpt / peak if peak else None,
            "mfu_full_attn": tps * fpt_full / peak if peak else None,
            "tflops": tps * fpt / 1e12, "peak_mem_gb": peak_mem,
            "warmup_s": warmup_s, "device": name, "compile": compile, "fused_loss": fused_loss,
            "vocab_multiple": cfg.vocab_multiple, "attn": attn, "fused_adam": fused_adam, "dtype": dtype,
            "recompute": recompute, "steps": steps, "accum": accum, "compile_mode": compile_mode if compile else None,
            "fp8": fp8, "fp8_layers": len(fp8_layers), "fp8_modules": fp8_modules if fp8 != "off" else None, "native_gqa": native_gqa,
            "half_residual": half_residual, "ce_kernel": fast.ce_kernel, "fp8_head": fast.fp8_head,
            "loss_first": loss_first, "loss_last": loss_last}


# How far the loss may rise over the timed steps before the run counts as diverged. On random
# tokens a sound step keeps it near ln(vocab); a broken kernel sends it up or to nan, and its
# timings mean nothing: a broken FP8 gradient once "ran" 14% faster on an H200, whose clock,
# held down by the 700 W power cap, rises when the matmuls multiply garbage (HISTORY.md §2).
DIVERGED_NATS = 1.0


def check_training(loss_first: float, loss_last: float) -> None:
    """Refuse to report the speed of steps that did not train."""
    if not math.isfinite(loss_last) or loss_last > loss_first + DIVERGED_NATS:
        raise BudgetLMError(f"the loss went from {loss_first:.4f} to {loss_last:.4f} over the benchmark's steps: "
                            "these steps do not train (a broken kernel or setting), so their speed is not reported")


def max_micro_batch(start: int = 1, limit: int = 1024, **kw) -> tuple[int, dict | None]:
    """The largest micro-batch whose training steps run without CUDA running out of memory:
    double from `start` until one fails, then bisect. Each try is a short bench_one (2 steps)."""
    def fits(mb: int) -> dict | None:
        try:
            return bench_one(micro_batch=mb, **{**kw, "steps": 2, "warmup": 1})
        except torch.OutOfMemoryError:
            return None
        finally:
            import gc
            gc.collect()
            torch.cuda.empty_cache()
            torch._dynamo.reset()
    ok, bad, row = 0, None, None
    mb = start
    while mb <= limit:
        r = fits(mb)
        print(f"  micro-batch {mb}: {'fits, peak %.1f GB' % r['peak_mem_gb'] if r else 'out of memory'}", flush=True)
        if r is None:
            bad = mb
            break
        ok, row, mb = mb, r, mb * 2
    while bad is not None and bad - ok > 1:
        mid = (ok + bad) // 2
        r = fits(mid)
        print(f"  micro-batch {mid}: {'fits, peak %.1f GB' % r['peak_mem_gb'] if r else 'out of memory'}", flush=True)
        if r is None:
            bad = mid
        else:
            ok, row = mid, r
    return ok, row


def _stamp() -> dict:
    import os
    sha = os.environ.get("BUDGETLM_COMMIT", "")  # the device machine's copy of the tree carries a stale .git
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).parent).stdout.strip()
        except OSError:
            sha = ""
    sha = sha or "unknown"
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": sha,
            "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node()}


def record(rows: list[dict], benchmark: str, path: Path = RESULTS) -> None:
    stamp = _stamp()
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps({**stamp, "benchmark": benchmark, **r}) + "\n")


def print_rows(rows: list[dict], header: bool = True) -> None:
    """MFU counts causal attention as the kernels run it (half the T x T square); MFU-full counts
    the whole square, the convention of nanoGPT's, PaLM's and TinyLlama's published MFU."""
    if header:
        print(f"{'setting':<30}{'ms/step':>9}{'tok/s':>11}{'MFU':>7}{'MFU-full':>9}{'TFLOP/s':>9}{'mem GB':>8}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        full = f"{r['mfu_full_attn']:.1%}" if r.get("mfu_full_attn") else "-"
        mem = f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") else "-"
        print(f"{r.get('setting', r['model']):<30}{r['ms_per_step']:>9.1f}{r['tokens_per_s']:>11,.0f}{mfu:>7}"
              f"{full:>9}{r['tflops']:>9.1f}{mem:>8}", flush=True)


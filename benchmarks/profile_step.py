"""Where a compiled training step spends its GPU time: kernels from the PyTorch profiler, grouped
into matmuls, attention, compiler-fused elementwise/reduction kernels (Triton), the optimizer and
the rest. Tells which lever is left for a model (benchmarks/HISTORY.md §2). The same steps are
also timed without the profiler (CUDA events): what the kernels do not fill is idle GPU time.

    python benchmarks/profile_step.py --model gpt2-124m --seq 1024 --micro-batch 32 [--fp8 tensorwise]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import record  # noqa: E402
from budgetlm.config import TrainConfig, model_config  # noqa: E402
from budgetlm.train.fastpath import resolve_attention, resolve_ce_kernel, resolve_fp8_head  # noqa: E402
from budgetlm.models import build_model  # noqa: E402
from budgetlm.models.fp8 import enable_fp8  # noqa: E402
from budgetlm.models.transformer import set_attention_kernel  # noqa: E402
from budgetlm.train.trainer import make_optimizer  # noqa: E402


def group(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("sdpa", "flash", "fmha", "attention")):
        return "attention"
    if any(s in n for s in ("gemm", "nvjet", "xmma", "cutlass", "matmul", "_mm_", "scaled_mm")):
        return "matmul"
    if "loss_and_grad" in n or "lse_kernel" in n or "grad_fp8" in n:
        return "cross-entropy kernel (models/ce_kernel.py)"
    if "adam" in n or "multi_tensor" in n:
        return "optimizer (AdamW, grad clip)"
    if n.startswith("triton"):
        return "fused elementwise/reductions (Triton)"
    return "other (copies, casts, embedding, ...)"


GAP_BUCKETS = ((0, 5), (5, 50), (50, 500), (500, float("inf")))  # microseconds


def idle_gaps(prof, steps: int) -> dict:
    """Where the GPU waits between kernels in the profiled steps: each gap is a kernel's start minus
    the latest end before it. Many small gaps mean launch-bound runs of short kernels (fusion or
    CUDA graphs help); a few large ones mean the GPU waits on the host (a sync, Python work)."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type.name == "CUDA")
    buckets = {f"{lo:g}-{hi:g} us": {"count": 0.0, "ms": 0.0} for lo, hi in GAP_BUCKETS}
    largest, end, prev = [], None, ""
    for start, stop, name in spans:
        if end is not None and start > end:
            gap = start - end
            for (lo, hi), b in zip(GAP_BUCKETS, buckets.values()):
                if lo <= gap < hi:
                    b["count"] += 1 / steps
                    b["ms"] += gap / 1000 / steps
            largest.append((gap, prev, name))
        if end is None or stop > end:
            end, prev = stop, name
    largest = sorted(largest, reverse=True)[:10]
    return {"total_ms": sum(b["ms"] for b in buckets.values()), "buckets": buckets,
            "largest": [(round(g), a[:100], b[:100]) for g, a, b in largest]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2-124m")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--attn", default="auto")
    ap.add_argument("--fp8", default="off")
    ap.add_argument("--half-residual", choices=["on", "off"], default="on")
    ap.add_argument("--ce-kernel", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--fp8-head", choices=["on", "off"], default="off")
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    dev = torch.device("cuda")
    cfg = model_config(args.model, block_size=args.seq)
    model = build_model(cfg).to(dev)
    enable_fp8(model, args.fp8)
    set_attention_kernel(model, resolve_attention(args.attn, dev))
    model.half_residual = args.half_residual == "on"
    model.ce_kernel = resolve_ce_kernel(args.ce_kernel, dev)
    model.fp8_head = resolve_fp8_head(args.fp8_head, dev, model.ce_kernel)
    opt = make_optimizer(model, TrainConfig(), dev)
    run = torch.compile(model)
    x = torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq + 1), device=dev)

    def step():
        for _ in range(args.accum):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = run(x[:, :-1], x[:, 1:])
            (loss / args.accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(args.steps):
        step()
    end.record()
    torch.cuda.synchronize()
    wall_ms = start.elapsed_time(end) / args.steps
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    groups: dict[str, float] = defaultdict(float)
    top = []
    for e in prof.key_averages():
        if e.device_type.name != "CUDA":
            continue
        us = e.self_device_time_total if hasattr(e, "self_device_time_total") else e.self_cuda_time_total
        groups[group(e.key)] += us
        top.append((us, e.key))
    total = sum(groups.values())
    ms = total / 1000 / args.steps
    print(f"{args.model} seq {args.seq} micro-batch {args.micro_batch} x {args.accum} attn {args.attn} fp8 {args.fp8} "
          f"fp8-head {args.fp8_head}: {ms:.1f} ms of GPU kernels per step; {wall_ms:.1f} ms per step unprofiled, "
          f"so the GPU idles {max(wall_ms - ms, 0.0):.1f} ms ({max(wall_ms - ms, 0.0) / wall_ms:.1%})")
    rows = []
    for g, us in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {g:<40}{us / 1000 / args.steps:>8.1f} ms {us / total:>7.1%}")
        rows.append({"group": g, "ms_per_step": us / 1000 / args.steps, "share": us / total})
    print("  top kernels:")
    for us, k in sorted(top, reverse=True)[:20]:
        print(f"    {us / 1000 / args.steps:>7.2f} ms  {group(k)[:10]:<10} {k[:100]}")
    gaps = idle_gaps(prof, args.steps)
    print(f"  gaps between kernels (profiled, per step): {gaps['total_ms']:.1f} ms in all; "
          + ", ".join(f"{k}: {v['count']:.0f} gaps, {v['ms']:.2f} ms" for k, v in gaps["buckets"].items()))
    for g_us, before, after in gaps["largest"]:
        print(f"    {g_us:>8.0f} us after {before[:60]} before {after[:60]}")
    record("profile-step", rows, idle_gaps=gaps, model=args.model, seq=args.seq, micro_batch=args.micro_batch, attn=args.attn,
           fp8=args.fp8, fp8_head=model.fp8_head, accum=args.accum, wall_ms_per_step=wall_ms,
           half_residual=args.half_residual, ce_kernel=model.ce_kernel, device=torch.cuda.get_device_name(), torch_version=torch.__version__,
           kernel_ms_per_step=ms, top_kernels=[(round(us / 1000 / args.steps, 3), k[:120])
                                               for us, k in sorted(top, reverse=True)[:20]])


if __name__ == "__main__":
    main()

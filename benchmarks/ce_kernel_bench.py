"""The LM head + cross-entropy alone: the compiled plain loss against models/ce_kernel.py.

For the GPT-2 124M head (32x1024 tokens, 768 -> 50,304 padded / 50,257 real) and the TinyLlama
head (16x2048 tokens, 2048 -> 32,000), forward + backward of the head and loss under bf16
autocast, CUDA events, median of 20 after warm-up:
- `compiled plain`: torch.compile of F.linear + padded_cross_entropy (the path before the kernel);
- `ce kernel`: torch.compile of linear_cross_entropy (the kernel inside the compiled graph);
- `ce kernel, fp8 head`: torch.compile of linear_cross_entropy_fp8 (models/ce_kernel_fp8.py);
- the head's three matmuls alone, bf16 against FP8 (torch._scaled_mm);
- the kernel alone for several block sizes / warp counts and both row reductions (block-wide
  or per lane), with its effective bandwidth (it reads each row twice and writes it once);
- the FP8 path's two kernels alone (row log-sum-exp, then G and G^T in e5m2 over tiles).
Correctness: loss and gradients of both against an fp32 reference (fp32 matmuls and loss).

    python benchmarks/ce_kernel_bench.py [gpt2]   # CUDA only; optional shape-name filter; appends rows to results.jsonl
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import cuda_median_ms, print_table, record  # noqa: E402
from budgetlm.models import ce_kernel_fp8 as f8  # noqa: E402
from budgetlm.models.ce_kernel import linear_cross_entropy, loss_and_grad_triton_  # noqa: E402
from budgetlm.models.transformer import padded_cross_entropy  # noqa: E402

SHAPES = {  # name: (tokens, width, padded vocab, vocab)
    "gpt2-124m 32x1024": (32 * 1024, 768, 50304, 50257),
    "tinyllama-1.1b 16x2048": (16 * 2048, 2048, 32000, 32000),
}
CONFIGS = [(2048, 8), (4096, 8), (4096, 16), (8192, 16), (8192, 32), (16384, 32)]
FP8_TILES = [(64, 64, 4), (64, 64, 2), (64, 64, 8), (32, 64, 2), (32, 128, 4), (64, 128, 8), (128, 64, 4)]
LSE_CONFIGS = [(1024, 2), (1024, 4), (2048, 4), (2048, 8), (4096, 8)]  # block, warps


def plain_loss(h, w, t, vocab):
    return padded_cross_entropy(F.linear(h, w), t, vocab)


def fwd_bwd(loss_fn, h, w, t, vocab, amp: bool = True):
    h.grad = w.grad = None
    with torch.autocast("cuda", torch.bfloat16, enabled=amp):
        loss = loss_fn(h, w, t, vocab)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("ce_kernel_bench.py needs CUDA")
    rows = []
    only = sys.argv[1:]
    for name, (n, d, vp, v) in SHAPES.items():
        if only and not any(s in name for s in only):
            continue
        g = torch.Generator(device="cuda").manual_seed(0)
        h = (torch.randn(n, d, device="cuda", generator=g)).requires_grad_()
        w = (torch.randn(vp, d, device="cuda", generator=g) * d ** -0.5).requires_grad_()
        t = torch.randint(0, v, (n,), device="cuda", generator=g)
        t[::97] = -1  # a few ignored positions, as padding would give
        ref = fwd_bwd(plain_loss, h, w, t, v, amp=False)  # fp32 matmuls (TF32 off by default) and loss
        for label, fn in (("compiled plain", torch.compile(plain_loss)),
                          ("ce kernel (compiled)", torch.compile(linear_cross_entropy)),
                          ("ce kernel, fp8 head (compiled)", torch.compile(f8.linear_cross_entropy_fp8))):
            out = fwd_bwd(fn, h, w, t, v)
            ms = cuda_median_ms(lambda: fwd_bwd(fn, h, w, t, v))
            peak0 = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fwd_bwd(fn, h, w, t, v)
            rows.append({"shape": name, "variant": label, "ms": ms,
                         "extra_peak_gb": (torch.cuda.max_memory_allocated() - peak0) / 1e9,
                         "loss_rel_err": abs(out[0].item() - ref[0].item()) / ref[0].item(),
                         "grad_h_rel_err": rel(out[1], ref[1]), "grad_w_rel_err": rel(out[2], ref[2])})
            print_table(rows[-1:], list(rows[-1]))
        hb, wb = h.detach().bfloat16(), w.detach().bfloat16()
        logits = hb @ wb.t()
        x8, sx = f8.quantize_e4m3(hb)
        w8, sw = f8.quantize_e4m3(wb)
        g8, x8t, w8t = logits.to(f8.G_DTYPE), x8.t().contiguous(), w8.t().contiguous()
        g8t, one = g8.t().contiguous(), torch.ones((), device="cuda")
        flop = 2 * n * d * vp
        for label, fn in (("matmul bf16: logits", lambda: hb @ wb.t()), ("matmul bf16: d(hidden)", lambda: logits @ wb),
                          ("matmul bf16: d(W)", lambda: logits.t() @ hb),
                          ("matmul fp8: logits", lambda: f8.fp8_mm(x8, w8.t(), sx, sw, torch.bfloat16, True)),
                          ("matmul fp8: d(hidden)", lambda: f8.fp8_mm(g8, w8t.t(), one, sw, torch.bfloat16)),
                          ("matmul fp8: d(W)", lambda: f8.fp8_mm(g8t, x8t.t(), one, sx, torch.float32))):
            ms = cuda_median_ms(fn)
            rows.append({"shape": name, "variant": label, "ms": ms, "tflops": flop / ms / 1e9})
            print_table(rows[-1:], list(rows[-1]))
        del g8, g8t
        for per_lane in (False, True):
            for block, warps in CONFIGS:
                buf = logits.clone()
                ms = cuda_median_ms(lambda: loss_and_grad_triton_(buf, t, v, block=block, num_warps=warps,
                                                                  per_lane=per_lane))
                rows.append({"shape": name, "variant": f"kernel alone, block {block}, {warps} warps"
                             + (", per-lane reduction" if per_lane else ""), "ms": ms,
                             "gb_per_s": 3 * logits.numel() * logits.element_size() / ms / 1e6})
                print_table(rows[-1:], list(rows[-1]))
                del buf
        for block, warps in LSE_CONFIGS:  # reads the rows once
            ms = cuda_median_ms(lambda: f8.row_lse_triton(logits, t, v, block, warps))
            rows.append({"shape": name, "variant": f"fp8 path: row log-sum-exp kernel alone, block {block}, "
                         f"{warps} warps", "ms": ms, "gb_per_s": logits.numel() * logits.element_size() / ms / 1e6})
            print_table(rows[-1:], list(rows[-1]))
        lse = f8.row_lse_triton(logits, t, v)[0]
        for bm, bv, warps in FP8_TILES:  # reads the rows once (bf16), writes G and G^T (e5m2)
            ms = cuda_median_ms(lambda: f8.grad_fp8_triton(logits, lse, t, v, bm, bv, warps))
            rows.append({"shape": name, "variant": f"fp8 path: gradient kernel alone, tile {bm}x{bv}, {warps} warps",
                         "ms": ms, "gb_per_s": 2 * logits.numel() * logits.element_size() / ms / 1e6})
            print_table(rows[-1:], list(rows[-1]))
        del h, w, logits, hb, wb
        torch.cuda.empty_cache()
    record("ce-kernel", rows)


if __name__ == "__main__":
    main()

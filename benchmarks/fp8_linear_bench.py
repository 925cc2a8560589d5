"""Would FP8 pay in the body of GPT-2 124M? The matmuls and the casts, timed apart.

torchao's FP8 Linears (all three matmuls in FP8, casts and transposed copies as separate kernels)
measured 0.93-0.96x at 768 wide (HISTORY.md §2, seventh pass). This script measures the pieces of
a leaner recipe before building it: FP8 only for the forward and the input-gradient matmuls
(the weight gradient stays bf16, so no transposed copy of an activation is needed), with each
activation's scale per row and its cast fused into the kernel that produces it.

For the body's matmul shapes at 32x1024 tokens (forward of qkv, attention proj, fc, mlp proj; the
input-gradient matmuls have the same shapes with K and N swapped), median of 20, CUDA events:
- bf16 `x @ W.t()` (cuBLAS, what the fast path runs);
- FP8 e4m3 with one scale per tensor (`torch._scaled_mm`, cuBLAS);
- FP8 e4m3 with one scale per row of x and per column of W (`_scaled_mm` rowwise);
with the error of each against an fp32 matmul of the same (bf16) inputs. Then the producers
alone, compiled: LayerNorm and GELU writing bf16, against the same writing bf16 + e4m3 + row scales.

    python benchmarks/fp8_linear_bench.py     # CUDA (Ada/Hopper) only; appends rows to results.jsonl
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import cuda_median_ms, print_table, record  # noqa: E402

TOKENS = 32 * 1024
SHAPES = {"qkv 768->2304": (768, 2304), "attn proj 768->768": (768, 768), "fc 768->3072": (768, 3072),
          "mlp proj 3072->768": (3072, 768)}
E4M3_MAX = 448.0


def row_cast(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x in e4m3 with one scale per row; returns (x8, inverse scale as an (M, 1) fp32 column)."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = E4M3_MAX / amax
    return (x.float() * scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale.reciprocal()


def tensor_cast(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = x.abs().amax().float().clamp(min=1e-12)
    scale = E4M3_MAX / amax
    return (x.float() * scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale.reciprocal()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def matmul_rows() -> list[dict]:
    rows = []
    for name, (k, n) in SHAPES.items():
        x = torch.randn(TOKENS, k, device="cuda", dtype=torch.bfloat16)
        w = (torch.randn(n, k, device="cuda") * k ** -0.5).to(torch.bfloat16)
        ref = x.float() @ w.float().t()
        flops = 2 * TOKENS * k * n
        x8t, sxt = tensor_cast(x)
        w8t, swt = tensor_cast(w)
        x8r, sxr = row_cast(x)
        w8r, swr = row_cast(w)  # one scale per output column of the product
        variants = {
            "bf16 cuBLAS": lambda: x @ w.t(),
            "fp8 tensorwise": lambda: torch._scaled_mm(x8t, w8t.t(), scale_a=sxt, scale_b=swt, out_dtype=torch.bfloat16),
            "fp8 rowwise": lambda: torch._scaled_mm(x8r, w8r.t(), scale_a=sxr, scale_b=swr.t().contiguous(),
                                                    out_dtype=torch.bfloat16),
        }
        base = None
        for vname, fn in variants.items():
            try:
                out = fn()
            except RuntimeError as e:  # e.g. a layout or scale form this build does not serve
                rows.append({"shape": name, "variant": vname, "error": str(e).splitlines()[0][:160]})
                continue
            ms = cuda_median_ms(fn)
            base = base or ms
            rows.append({"shape": name, "variant": vname, "ms": ms, "tflops": flops / ms / 1e9,
                         "vs_bf16": base / ms, "rel_err": rel(out, ref)})
    return rows


def producer_rows() -> list[dict]:
    """The cast fused into its producer: does writing e4m3 + row scales beside the bf16 output cost
    more than the bytes (1 B/element) it adds?"""
    rows = []
    ln = torch.nn.LayerNorm(768, device="cuda")
    h = torch.randn(TOKENS, 768, device="cuda", dtype=torch.bfloat16)
    pre = torch.randn(TOKENS, 3072, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(3072, device="cuda", dtype=torch.bfloat16)

    def ln_only(x):
        return F.layer_norm(x, (768,), ln.weight.to(x.dtype), ln.bias.to(x.dtype))

    def ln_cast(x):
        y = ln_only(x)
        return (y, *row_cast(y))

    def gelu_only(p):
        return F.gelu(p + bias, approximate="tanh")

    def gelu_cast(p):
        y = gelu_only(p)
        return (y, *row_cast(y))

    for name, fn, arg, elems in (("layernorm 768", ln_only, h, h.numel()), ("layernorm 768 + e4m3 rows", ln_cast, h, h.numel()),
                                 ("bias+gelu 3072", gelu_only, pre, pre.numel()),
                                 ("bias+gelu 3072 + e4m3 rows", gelu_cast, pre, pre.numel())):
        compiled = torch.compile(fn)
        with torch.no_grad():
            ms = cuda_median_ms(lambda: compiled(arg))
        extra = 1 if "e4m3" in name else 0
        rows.append({"shape": name, "variant": "compiled", "ms": ms, "gb_s": elems * (4 + extra) / ms / 1e6})
    return rows


def main() -> None:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        sys.exit("fp8_linear_bench.py needs a CUDA GPU with FP8 (Ada or Hopper)")
    rows = matmul_rows() + producer_rows()
    print_table(rows, ["shape", "variant", "ms", "tflops", "vs_bf16", "rel_err", "gb_s", "error"])
    record("fp8-linear", rows, tokens=TOKENS)


if __name__ == "__main__":
    main()

"""Which scaled_dot_product_attention kernel to prefer on this GPU, for our training shapes.

For each shape (GPT-2 124M at micro-batch 32, TinyLlama-1.1B at micro-batch 14) and each kernel
(FlashAttention-2, cuDNN, memory-efficient; GQA shapes also with the kv heads repeated):
- the kernel that really ran (from the profiler's kernel names: a preference can fall back);
- forward + backward time (CUDA events, median of 20 after warm-up) and its TFLOP/s;
- output and gradient error against fp32 math attention on fresh random inputs.
Then a compiled GPT step under each preference, to show the preference reaches torch.compile.

    python benchmarks/attention_kernels.py        # CUDA only; appends rows to results.jsonl
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import cuda_median_ms, record  # noqa: E402
from budgetlm.models.transformer import sdpa_backend, set_attention_kernel  # noqa: E402

SHAPES = {  # name: (batch, query heads, kv heads, seq, head dim)
    "gpt2-124m mb32": (32, 12, 12, 1024, 64),
    "tinyllama-1.1b mb14": (14, 32, 4, 2048, 64),
}


def attend(q, k, v, gqa: str):
    if k.size(1) == q.size(1):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if gqa == "native":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    rep = q.size(1) // k.size(1)
    return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=True)


def only(kernel: str):
    """Eager runs: restrict SDPA to one kernel (an unservable shape raises, and is reported)."""
    from torch.nn.attention import sdpa_kernel
    return sdpa_kernel([sdpa_backend(kernel)])


def inputs(B, H, K, T, D, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, h, T, D, device="cuda", dtype=dtype, generator=g).requires_grad_() for h in (H, K, K)]


def kernel_names(fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages() if e.device_type.name == "CUDA"}
    keep = ("attn", "fmha", "flash", "cudnn", "sdpa", "attention", "mha")
    return sorted(n[:90] for n in names if any(s in n.lower() for s in keep))


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    dev = torch.device("cuda")
    rows = []
    compiled_only = "--compiled-only" in sys.argv
    print(f"{'shape':<22}{'kernel':<11}{'gqa':<8}{'ms fwd+bwd':>11}{'TFLOP/s':>9}{'out err':>9}{'grad err':>9}  ran")
    for shape, (B, H, K, T, D) in ({} if compiled_only else SHAPES).items():
        flops = 4 * B * H * T * T * D / 2 * 3.5  # causal: half; backward 2.5x forward
        for backend in ("flash", "cudnn", "efficient"):
            for gqa in (("native", "repeat") if H != K else ("-",)):
                q, k, v = inputs(B, H, K, T, D, torch.bfloat16, seed=1)
                dout = torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16)

                def step():
                    with only(backend):
                        attend(q, k, v, gqa).backward(dout)
                try:
                    ran = kernel_names(step)
                    ms = cuda_median_ms(step)
                    # accuracy on fresh small inputs vs fp32 math
                    qs, ks, vs = inputs(2, H, K, T, D, torch.bfloat16, seed=7)
                    with only(backend):
                        out = attend(qs, ks, vs, gqa)
                    g = torch.randn_like(out)
                    grads = torch.autograd.grad(out, (qs, ks, vs), g)
                    ref_in = [t.detach().double().requires_grad_() for t in (qs, ks, vs)]
                    with only("math"):
                        ref = attend(*ref_in, "repeat")
                    ref_grads = torch.autograd.grad(ref, ref_in, g.double())
                    out_err = rel(out, ref)
                    grad_err = max(rel(a, b) for a, b in zip(grads, ref_grads))
                except RuntimeError as e:
                    print(f"{shape:<22}{backend:<11}{gqa:<8} failed: {str(e)[:100]}")
                    continue
                row = {"shape": shape, "kernel": backend, "gqa": gqa, "ms_fwd_bwd": ms,
                       "tflops": flops / ms / 1e9, "out_rel_err": out_err, "grad_rel_err": grad_err, "kernels_ran": ran}
                rows.append(row)
                print(f"{shape:<22}{backend:<11}{gqa:<8}{ms:>11.2f}{row['tflops']:>9.0f}{out_err:>9.1e}"
                      f"{grad_err:>9.1e}  {'; '.join(ran)[:120]}", flush=True)

    # Does the model's kernel choice reach a compiled step? Profile one under each.
    from budgetlm.config import model_config
    from budgetlm.models import build_model
    cfg = model_config("gpt2-124m", block_size=1024)
    model = build_model(cfg).to(dev)
    x = torch.randint(0, cfg.vocab_size, (8, 1025), device=dev)
    for backend in ("flash", "cudnn"):
        torch._dynamo.reset()
        set_attention_kernel(model, backend)
        run = torch.compile(model)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = run(x[:, :-1], x[:, 1:])
            loss.backward()
        step()
        ran = kernel_names(step)
        rows.append({"shape": "compiled gpt2-124m step", "kernel": backend, "kernels_ran": ran})
        print(f"compiled step, prefer {backend}: {'; '.join(ran)[:200]}")
    record("attention-kernels", rows, device=torch.cuda.get_device_name(), torch_version=torch.__version__)


if __name__ == "__main__":
    main()

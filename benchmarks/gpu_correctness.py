"""On CUDA: the fast path (bf16 autocast + torch.compile + fused AdamW + the preferred attention
kernel, bf16 residual stream), and each variant of it (fp32 residual, FlashAttention-2, the fused
chunked loss, FP8 matmuls, the CE kernel with its FP8 head), trained
50 steps on the same batches as the plain fp32 eager path with the math attention kernel; the
losses must agree within bf16 tolerance. Appends rows to benchmarks/results.jsonl.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import record  # noqa: E402
from budgetlm.config import OptimConfig, TrainConfig, model_config  # noqa: E402
from budgetlm.data.synth import generate_stories  # noqa: E402
from budgetlm.data.tokenizers import build_tokenizer  # noqa: E402
from budgetlm.train.fastpath import resolve_attention  # noqa: E402
from budgetlm.models import build_model  # noqa: E402
from budgetlm.models.fp8 import enable_fp8  # noqa: E402
from budgetlm.models.transformer import set_attention_kernel  # noqa: E402
from budgetlm.train.trainer import make_optimizer  # noqa: E402


def run(batches, vocab, fast: bool, fused_loss: bool, steps: int, attn: str = "auto", fp8: str = "off",
        half_residual: bool = True, ce_kernel: bool = False, fp8_head: bool = False) -> list[float]:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    cfg = model_config(n_layer=4, n_head=8, n_embd=256, vocab_size=vocab, block_size=256, vocab_multiple=64,
                       pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=4, bias=False, tie_embeddings=False)
    model = build_model(cfg).to(dev)
    enable_fp8(model, fp8)
    set_attention_kernel(model, resolve_attention(attn, dev) if fast else "math")  # plain: fp32 math reference
    model.fused_loss = fused_loss
    model.ce_kernel = ce_kernel and fast
    model.fp8_head = fp8_head and model.ce_kernel
    model.half_residual = half_residual and fast  # the plain path stays fp32 throughout
    opt = make_optimizer(model, TrainConfig(optim=OptimConfig(lr=1e-3)), dev) if fast else torch.optim.AdamW(
        make_optimizer(model, TrainConfig(optim=OptimConfig(lr=1e-3)), torch.device("cpu")).param_groups, lr=1e-3, betas=(0.9, 0.95))
    runner = torch.compile(model) if fast else model
    losses = []
    for x, y in batches[:steps]:
        x, y = x.to(dev), y.to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fast):
            _, loss = runner(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def main() -> None:
    only = sys.argv[1:]  # optional substrings: run only the variants whose names contain one
    if not torch.cuda.is_available():
        sys.exit("needs CUDA: the fast path is a CUDA path")
    texts = generate_stories(3000, seed=0)
    tok = build_tokenizer("bpe:2048", iter(texts))
    ids = torch.tensor([i for t in texts for i in [tok.eot_id, *tok.encode(t)]])
    n, B, steps = ids.numel() // 257, 16, 50
    rows = ids[: n * 257].view(n, 257)
    batches = [(rows[i * B:(i + 1) * B, :-1], rows[i * B:(i + 1) * B, 1:]) for i in range(steps)]
    plain = run(batches, tok.vocab_size, fast=False, fused_loss=False, steps=steps)
    variants = {"fast (compiled loss, attn auto)": {}, "fast + CE kernel": {"ce_kernel": True},
                "fast, fp32 residual stream": {"half_residual": False},
                "fast, FlashAttention-2": {"attn": "flash"},
                "fast + fused chunked loss": {"fused_loss": True}, "fast + fp8 tensorwise": {"fp8": "tensorwise"},
                "fast + fp8 rowwise": {"fp8": "rowwise"},
                "fast + CE kernel + fp8 head": {"ce_kernel": True, "fp8_head": True}}
    if only:
        variants = {k: v for k, v in variants.items() if any(s in k for s in only)}
    results = {}
    for name, kw in variants.items():
        try:
            results[name] = run(batches, tok.vocab_size, fast=True, steps=steps, **{"fused_loss": False, **kw})
        except Exception as e:  # e.g. no torchao here: say so and go on with the others
            print(f"{name}: could not run ({type(e).__name__}: {e})")
        finally:
            torch._dynamo.reset()
    out = []
    for name, ls in results.items():
        rel = abs(ls[-1] - plain[-1]) / plain[-1]
        worst = max(abs(a - b) / b for a, b in zip(ls, plain))
        out.append({"variant": name, "plain_fp32_loss_50": plain[-1], "loss_50": ls[-1], "rel_diff_50": rel,
                    "max_rel_diff_any_step": worst, "first_loss": ls[0], "pass": rel < 2e-2})
        print(f"{name:28s} loss@50 {ls[-1]:.4f} vs plain fp32 {plain[-1]:.4f}: rel diff {rel:.2e} "
              f"(worst step {worst:.2e}) {'PASS' if rel < 2e-2 else 'FAIL'}")
    record("gpu_correctness", out, device=torch.cuda.get_device_name(), torch_version=torch.__version__)


if __name__ == "__main__":
    main()

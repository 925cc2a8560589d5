"""LM head + cross-entropy in row chunks, with the gradients computed during the forward pass.

The plain path materializes (tokens x vocab) logits, their fp32 copy and the softmax for the
backward pass: for GPT-2 124M at 16x1024 tokens that is ~3 GB. Here each chunk of rows
computes logits, loss and d(logits) at once, turns d(logits) into d(hidden) and d(weight)
with two matmuls, and drops the chunk — the same FLOPs as the plain path, with memory for
one chunk. (The idea of Liger-Kernel's fused linear cross-entropy, written in plain PyTorch.)
"""

from __future__ import annotations

import torch


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                chunk_rows: int, compute_dtype: torch.dtype) -> torch.Tensor:
        w = weight.to(compute_dtype)
        h_all = hidden.to(compute_dtype)
        grad_h = torch.empty_like(hidden)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        valid = targets != -1
        n_valid = valid.sum().clamp(min=1).float()
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), chunk_rows):
            h = h_all[start:start + chunk_rows]
            t = targets[start:start + chunk_rows]
            keep = valid[start:start + chunk_rows]
            logits = (h @ w.t()).float()
            if logits.size(1) > vocab_size:  # padded rows of the table are never predicted
                logits[:, vocab_size:] = float("-inf")
            lse = torch.logsumexp(logits, dim=-1)
            t0 = t.clamp(min=0).unsqueeze(1)
            loss += ((lse - logits.gather(1, t0).squeeze(1)) * keep).sum()
            # d loss / d logits = (softmax - onehot) / n_valid, for kept rows only
            g = torch.exp(logits.sub_(lse.unsqueeze(1)))
            g.scatter_add_(1, t0, -torch.ones_like(t0, dtype=g.dtype))
            g.mul_((keep.float() / n_valid).unsqueeze(1))
            g = g.to(compute_dtype)
            grad_h[start:start + chunk_rows] = (g @ w).to(hidden.dtype)
            if compute_dtype == torch.float32:
                grad_w.addmm_(g.t(), h)
            else:  # each chunk's product in bf16, the running sum in fp32
                grad_w.add_((g.t() @ h).float())
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None, None


@torch.compiler.disable  # a Python loop of large matmuls: nothing for the compiler to fuse
def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               vocab_size: int, chunk_rows: int = 4096) -> torch.Tensor:
    """Mean cross-entropy of softmax(hidden @ weight.T)[:, :vocab_size] against targets (-1 = ignore).

    hidden (N, d), weight (V_padded, d), targets (N,). Under autocast the matmuls run in the
    autocast dtype; logits, log-sum-exp and the loss are always fp32.
    """
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
    else:
        dtype = hidden.dtype
    with torch.autocast(device_type=dev, enabled=False):
        return _FusedLinearCrossEntropy.apply(hidden, weight, targets.reshape(-1), vocab_size, chunk_rows, dtype)

"""LM head + cross-entropy whose gradient is written over the logits by one Triton kernel.

The compiled plain loss reads the (tokens x vocab) logits in the forward pass and again in the
backward pass, through fp32 temporaries: for GPT-2 124M at 32x1024 tokens that is ~8 ms of an
H100's ~65 ms micro-step (benchmarks/RESULTS.md §2). Here, as in llm.c's fused classifier and
Liger-Kernel's cross-entropy, the forward pass computes each row's loss *and* its gradient
softmax - onehot in one kernel (two reads of the row, one write over it), so the backward pass
is only the two matmuls d(hidden) = dlogits @ W and d(W) = dlogits^T @ hidden, scaled by the
incoming gradient. The logits are never kept beside their gradient, nor upcast to fp32.

On CUDA with Triton the kernel runs on the GPU; elsewhere the same op runs in PyTorch (tests,
CPU), so the model's code path is one. The kernel also runs under TRITON_INTERPRET=1 on CPU,
which is how tests/test_ce_kernel.py checks it without a GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU wheels ship without Triton: the PyTorch version of the op serves
    triton = None

IGNORE_INDEX = -1
# From a sweep on an H100 (benchmarks/ce_kernel_bench.py): for 32,000-wide rows 16384/32 took
# 1.66 ms against 2.18 ms at 4096/8; for 50,304-wide rows all settings were within 8% (3.46-3.72 ms).
BLOCK = 16384
NUM_WARPS = 32


def triton_ready(device: torch.device) -> bool:
    """Whether the Triton kernel can run for tensors on `device`."""
    return triton is not None and device.type == "cuda"


if triton is not None:
    @triton.jit
    def _loss_and_grad_kernel(logits_ptr, targets_ptr, loss_ptr, stride, vocab, width,
                              BLOCK: tl.constexpr):
        """One program per row: loss = logsumexp - x[target]; the row becomes softmax - onehot.
        Columns from `vocab` to `width` (the table's padding) get probability 0 and gradient 0;
        rows whose target is IGNORE_INDEX get loss 0 and gradient 0."""
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * stride
        target = tl.load(targets_ptr + row).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        m = float("-inf")  # online softmax: running max and sum of exp(x - max)
        s = 0.0
        for start in range(0, vocab, BLOCK):
            offs = start + cols
            x = tl.load(base + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, 0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
            m = m_new
        lse = m + tl.log(s)
        valid = target != -1
        x_target = tl.load(base + tl.maximum(target, 0)).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(valid, lse - x_target, 0.0))
        keep = valid.to(tl.float32)
        for start in range(0, width, BLOCK):
            offs = start + cols
            x = tl.load(base + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
            grad = (tl.exp(x - lse) - (offs == target).to(tl.float32)) * keep
            tl.store(base + offs, grad.to(logits_ptr.dtype.element_ty), mask=offs < width)


def loss_and_grad_triton_(logits: Tensor, targets: Tensor, vocab: int, block: int = BLOCK,
                          num_warps: int = NUM_WARPS) -> Tensor:
    """Per-row losses (fp32); overwrites `logits` (rows x width, unit column stride) with
    d(sum of row losses)/d(logits)."""
    rows, width = logits.shape
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    _loss_and_grad_kernel[(rows,)](logits, targets, losses, logits.stride(0), vocab, width,
                                   BLOCK=block, num_warps=num_warps)
    return losses


def loss_and_grad_torch_(logits: Tensor, targets: Tensor, vocab: int) -> Tensor:
    """The kernel's contract in PyTorch (fp32 math): per-row losses, gradient over `logits`."""
    x = logits.float()
    if x.size(1) > vocab:
        x[:, vocab:] = float("-inf")
    valid = targets != IGNORE_INDEX
    t = targets.clamp(min=0).unsqueeze(1)
    lse = torch.logsumexp(x, dim=1)
    losses = (lse - x.gather(1, t).squeeze(1)) * valid
    grad = torch.exp(x.sub_(lse.unsqueeze(1)))
    grad.scatter_add_(1, t, -torch.ones_like(t, dtype=grad.dtype))
    logits.copy_(grad * valid.unsqueeze(1))
    return losses


@torch.library.custom_op("budgetlm::linear_ce_forward", mutates_args=())
def linear_ce_forward(hidden: Tensor, weight: Tensor, targets: Tensor, vocab: int) -> tuple[Tensor, Tensor]:
    """(sum of the rows' losses, d(that sum)/d(logits)) for logits = hidden @ weight.T.
    An opaque op to torch.compile: the gradient reuses the logits' buffer, which a traced
    in-place kernel could not promise."""
    logits = hidden @ weight.t()
    if triton_ready(logits.device):
        losses = loss_and_grad_triton_(logits, targets, vocab)
    else:
        losses = loss_and_grad_torch_(logits, targets, vocab)
    return losses.sum(), logits


@linear_ce_forward.register_fake
def _(hidden: Tensor, weight: Tensor, targets: Tensor, vocab: int) -> tuple[Tensor, Tensor]:
    return hidden.new_empty((), dtype=torch.float32), hidden.new_empty(hidden.size(0), weight.size(0))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, vocab: int) -> Tensor:
        loss_sum, dlogits = linear_ce_forward(hidden, weight, targets, vocab)
        ctx.save_for_backward(hidden, weight, dlogits)
        return loss_sum

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, dlogits = ctx.saved_tensors
        # The scalar is applied to the matmuls' small outputs, not to the large dlogits.
        return (dlogits @ weight) * grad_out, (dlogits.t() @ hidden) * grad_out, None, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, vocab: int) -> Tensor:
    """Mean cross-entropy of softmax(hidden @ weight.T)[:, :vocab] against targets (-1 = ignore).

    hidden (N, d), weight (V_padded, d), targets (N,) or any shape with N elements. Under
    autocast the matmuls and the gradient run in the autocast dtype (as the plain path's would);
    the loss itself is accumulated in fp32.
    """
    dev = hidden.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
    targets = targets.reshape(-1)
    with torch.autocast(device_type=dev, enabled=False):
        loss_sum = _LinearCrossEntropy.apply(hidden.to(dtype), weight.to(dtype), targets, vocab)
        return loss_sum / (targets != IGNORE_INDEX).sum().clamp(min=1)

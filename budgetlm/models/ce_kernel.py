"""LM head + cross-entropy whose gradient is written over the logits by one Triton kernel.

The compiled plain loss reads the (tokens x vocab) logits in the forward pass and again in the
backward pass, through fp32 temporaries: for GPT-2 124M at 32x1024 tokens that is ~8 ms of an
H100's ~65 ms micro-step (benchmarks/HISTORY.md §2). Here, as in llm.c's fused classifier and
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
# From sweeps (benchmarks/ce_kernel_bench.py): on an H200, 50,304-wide rows (GPT-2 32x1024) took
# 2.45 ms with the per-lane reduction at 2048/8 and 2.65 at 4096/16, against 3.47 ms at 16384/32
# block-wide, the H100's choice; 32,000-wide rows (TinyLlama) 1.55-1.58 ms at either per-lane setting.
BLOCK = 2048
NUM_WARPS = 8
PER_LANE = True  # the row reduction's variant (see _row_lse)


def triton_ready(device: torch.device) -> bool:
    """Whether the Triton kernel can run for tensors on `device`."""
    return triton is not None and device.type == "cuda"


if triton is not None:
    @triton.jit
    def _row_lse(base, vocab, width, BLOCK: tl.constexpr, PER_LANE: tl.constexpr = False):
        """log-sum-exp of the first `vocab` of the `width` entries of the row at `base` (online
        softmax). Loads are masked at the padded width, a multiple of 16 that keeps them vectorized
        (an odd vocabulary would not); columns past `vocab` are then set aside.
        PER_LANE=False: a block-wide max and sum every BLOCK columns. PER_LANE=True: each lane keeps
        its own running max and sum, reduced once at the end, with one exp per element (of the two
        exps of the update, one is exp(0)); masked lanes read -1e30, which adds 0 to any real row."""
        cols = tl.arange(0, BLOCK)
        if PER_LANE:
            m = tl.full([BLOCK], -1e30, tl.float32)
            s = tl.zeros([BLOCK], tl.float32)
            for start in range(0, width, BLOCK):
                offs = start + cols
                x = tl.load(base + offs, mask=offs < width, other=-1e30).to(tl.float32)
                x = tl.where(offs < vocab, x, -1e30)
                e = tl.exp(-tl.abs(x - m))
                s = tl.where(x > m, s * e + 1.0, s + e)
                m = tl.maximum(m, x)
            m_row = tl.max(m, 0)
            return m_row + tl.log(tl.sum(s * tl.exp(m - m_row), 0))
        else:
            m_row = float("-inf")
            s_row = 0.0
            for start in range(0, width, BLOCK):
                offs = start + cols
                x = tl.load(base + offs, mask=offs < width, other=float("-inf")).to(tl.float32)
                x = tl.where(offs < vocab, x, float("-inf"))
                m_new = tl.maximum(m_row, tl.max(x, 0))
                s_row = s_row * tl.exp(m_row - m_new) + tl.sum(tl.exp(x - m_new), 0)
                m_row = m_new
            return m_row + tl.log(s_row)

    @triton.jit
    def _loss_and_grad_kernel(logits_ptr, targets_ptr, loss_ptr, stride, vocab, width,
                              BLOCK: tl.constexpr, PER_LANE: tl.constexpr):
        """One program per row: loss = logsumexp - x[target]; the row becomes softmax - onehot.
        Columns from `vocab` to `width` (the table's padding) get probability 0 and gradient 0;
        rows whose target is IGNORE_INDEX get loss 0 and gradient 0."""
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * stride
        target = tl.load(targets_ptr + row).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        lse = _row_lse(base, vocab, width, BLOCK, PER_LANE)
        valid = target != -1
        x_target = tl.load(base + tl.maximum(target, 0)).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(valid, lse - x_target, 0.0))
        keep = valid.to(tl.float32)
        for start in range(0, width, BLOCK):
            offs = start + cols
            x = tl.load(base + offs, mask=offs < width, other=float("-inf")).to(tl.float32)
            x = tl.where(offs < vocab, x, float("-inf"))
            grad = (tl.exp(x - lse) - (offs == target).to(tl.float32)) * keep
            tl.store(base + offs, grad.to(logits_ptr.dtype.element_ty), mask=offs < width)


def loss_and_grad_triton_(logits: Tensor, targets: Tensor, vocab: int, block: int = BLOCK,
                          num_warps: int = NUM_WARPS, per_lane: bool = PER_LANE) -> Tensor:
    """Per-row losses (fp32); overwrites `logits` (rows x width, unit column stride) with
    d(sum of row losses)/d(logits)."""
    rows, width = logits.shape
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    _loss_and_grad_kernel[(rows,)](logits, targets, losses, logits.stride(0), vocab, width,
                                   BLOCK=block, PER_LANE=per_lane, num_warps=num_warps)
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

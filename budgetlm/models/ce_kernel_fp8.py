"""The LM head + cross-entropy with its three matmuls in FP8 (opt-in: `--fp8-head on`).

For GPT-2 124M the head's matmuls (logits = x W^T, d(x) = G W, d(W) = G^T x, each 2 N d V
FLOPs with V = 50,304) are about a third of all matmul time, and the vocabulary makes them
large enough for FP8 tensor cores to pay, which the model's 768-wide Linears were not
(torchao's FP8 measured 0.91x for the whole model, benchmarks/HISTORY.md §2).

- Forward: x and W are cast to e4m3 with one dynamic scale each (amax / 448, as torchao's
  tensorwise recipe), logits come out of `torch._scaled_mm` in bf16.
- One Triton kernel finds each row's log-sum-exp and loss (models/ce_kernel.py's row reduction);
  a second, over (row, column) tiles, forms G = softmax - onehot and stores it in e5m2 twice: as
  G (N x V) for d(x) and as G^T (V x N) for d(W), because Hopper's FP8 matmuls read both
  operands along the contracted dimension. G needs no dynamic scale: every entry lies in
  [-1, 1], so a fixed 2^15 uses e5m2's range down to 2^-31.
- Backward: the two FP8 matmuls, scaled by the incoming gradient after them.

Eval never comes here (the model's forward without targets runs the bf16 head), so validation
losses stay exact. Off CUDA the same algorithm runs with the FP8 values upcast to fp32 (tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

from budgetlm.models import ce_kernel
from budgetlm.models.ce_kernel import IGNORE_INDEX, linear_cross_entropy, loss_and_grad_torch_, triton, triton_ready

E4M3_MAX = 448.0
G_SCALE = 2.0 ** 15  # |softmax - onehot| <= 1, e5m2 tops out at 57,344
G_DTYPE = torch.float8_e5m2
X_DTYPE = torch.float8_e4m3fn
# Tile of the gradient kernel (rows, columns, warps): the fastest of seven on an H200 for the GPT-2
# head, 2.91 ms against 3.14-3.51 (benchmarks/HISTORY.md §2, sixth pass).
BLOCK_ROWS, BLOCK_COLS, NUM_WARPS = 64, 64, 4
# The row log-sum-exp kernel (one read of each row): 1.21 ms there, 1.17-1.41 over five settings.
LSE_BLOCK, LSE_WARPS = 2048, 8


def fp8_head_fits(rows: int, width: int, vocab_padded: int) -> bool:
    """FP8 matmuls need every dimension a multiple of 16."""
    return rows % 16 == 0 and width % 16 == 0 and vocab_padded % 16 == 0


if triton is not None:
    import triton.language as tl

    from budgetlm.models.ce_kernel import _row_lse

    @triton.jit
    def _lse_kernel(logits_ptr, targets_ptr, lse_ptr, loss_ptr, stride, vocab, width, BLOCK: tl.constexpr,
                    PER_LANE: tl.constexpr):
        """One program per row: its log-sum-exp and loss (0 for ignored targets)."""
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * stride
        lse = _row_lse(base, vocab, width, BLOCK, PER_LANE)
        target = tl.load(targets_ptr + row).to(tl.int64)
        x_target = tl.load(base + tl.maximum(target, 0)).to(tl.float32)
        tl.store(lse_ptr + row, lse)
        tl.store(loss_ptr + row, tl.where(target != -1, lse - x_target, 0.0))

    @triton.jit
    def _grad_fp8_kernel(logits_ptr, lse_ptr, targets_ptr, g_ptr, gt_ptr, rows, vocab, width, stride, scale,
                         BM: tl.constexpr, BV: tl.constexpr):
        """G = (softmax - onehot) * scale over a (BM rows, BV columns) tile, stored as G and G^T;
        zero on padding columns and ignored rows."""
        r = tl.program_id(0) * BM + tl.arange(0, BM)
        c = tl.program_id(1) * BV + tl.arange(0, BV)
        r_ok, c_ok = r < rows, c < width
        r64 = r.to(tl.int64)
        # masked at the padded width (vectorized loads), then the padding columns set aside
        x = tl.load(logits_ptr + r64[:, None] * stride + c[None, :], mask=r_ok[:, None] & c_ok[None, :],
                    other=float("-inf")).to(tl.float32)
        x = tl.where(c[None, :] < vocab, x, float("-inf"))
        lse = tl.load(lse_ptr + r, mask=r_ok, other=0.0)
        t = tl.load(targets_ptr + r, mask=r_ok, other=-1)
        keep = (t != -1).to(tl.float32) * scale
        g = (tl.exp(x - lse[:, None]) - (c[None, :] == t[:, None]).to(tl.float32)) * keep[:, None]
        g8 = g.to(g_ptr.dtype.element_ty)
        tl.store(g_ptr + r64[:, None] * width + c[None, :], g8, mask=r_ok[:, None] & c_ok[None, :])
        tl.store(gt_ptr + c.to(tl.int64)[:, None] * rows + r[None, :], tl.trans(g8),
                 mask=c_ok[:, None] & r_ok[None, :])


def row_lse_triton(logits: Tensor, targets: Tensor, vocab: int, block: int | None = None,
                   num_warps: int | None = None) -> tuple[Tensor, Tensor]:
    """(log-sum-exp, loss) of every row, with the CE kernel's row reduction."""
    lse = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)
    losses = torch.empty_like(lse)
    _lse_kernel[(logits.size(0),)](logits, targets, lse, losses, logits.stride(0), vocab, logits.size(1),
                                   BLOCK=block or LSE_BLOCK, PER_LANE=ce_kernel.PER_LANE,
                                   num_warps=num_warps or LSE_WARPS)
    return lse, losses


def grad_fp8_triton(logits: Tensor, lse: Tensor, targets: Tensor, vocab: int, block_rows: int = BLOCK_ROWS,
                    block_cols: int = BLOCK_COLS, num_warps: int = NUM_WARPS) -> tuple[Tensor, Tensor]:
    """G in e5m2 (N x W) and G^T in e5m2 (W x N), G = (softmax - onehot) * G_SCALE."""
    rows, width = logits.shape
    g = torch.empty(rows, width, dtype=G_DTYPE, device=logits.device)
    gt = torch.empty(width, rows, dtype=G_DTYPE, device=logits.device)
    grid = (triton.cdiv(rows, block_rows), triton.cdiv(width, block_cols))
    _grad_fp8_kernel[grid](logits, lse, targets, g, gt, rows, vocab, width, logits.stride(0), G_SCALE,
                           BM=block_rows, BV=block_cols, num_warps=num_warps)
    return g, gt


def grads_fp8_triton(logits: Tensor, targets: Tensor, vocab: int, block_rows: int = BLOCK_ROWS,
                     block_cols: int = BLOCK_COLS, num_warps: int = NUM_WARPS) -> tuple[Tensor, Tensor, Tensor]:
    """(per-row losses, G, G^T): the two kernels one after the other."""
    lse, losses = row_lse_triton(logits, targets, vocab)
    return (losses, *grad_fp8_triton(logits, lse, targets, vocab, block_rows, block_cols, num_warps))


def grads_fp8_torch(logits: Tensor, targets: Tensor, vocab: int) -> tuple[Tensor, Tensor, Tensor]:
    """The kernels' contract in PyTorch (fp32 math), for CPU and tests: the bf16 kernel's PyTorch
    version on an fp32 copy, then scaled and cast."""
    g = logits.float().clone()
    losses = loss_and_grad_torch_(g, targets, vocab)
    g8 = (g * G_SCALE).to(G_DTYPE)
    return losses, g8, g8.t().contiguous()


def quantize_e4m3(x: Tensor) -> tuple[Tensor, Tensor]:
    """x ~ x8 * scale with one scale for the tensor (amax / 448)."""
    scale = (x.detach().abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
    return (x.detach().float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(X_DTYPE), scale


def fp8_mm(a: Tensor, b: Tensor, scale_a: Tensor, scale_b: Tensor, out_dtype: torch.dtype,
           fast_accum: bool = False) -> Tensor:
    """(a * scale_a) @ (b * scale_b) for FP8 a (row-major) and b (column-major). On CUDA the FP8
    tensor cores; elsewhere the FP8 values upcast to fp32, the same numbers up to summation order."""
    if a.is_cuda:
        return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype,
                                use_fast_accum=fast_accum)
    return ((a.float() @ b.float()) * (scale_a * scale_b)).to(out_dtype)


@torch.library.custom_op("budgetlm::linear_ce_forward_fp8", mutates_args=())
def linear_ce_forward_fp8(x8: Tensor, w8: Tensor, scale_x: Tensor, scale_w: Tensor, targets: Tensor,
                          vocab: int) -> tuple[Tensor, Tensor, Tensor]:
    """(sum of the rows' losses, G, G^T) for logits = (x8 sx) (w8 sw)^T; G in e5m2 scaled by G_SCALE.
    Opaque to torch.compile, like the bf16 op: the logits live only inside it."""
    logits = fp8_mm(x8, w8.t(), scale_x, scale_w, torch.bfloat16, fast_accum=True)
    if triton_ready(logits.device):
        losses, g, gt = grads_fp8_triton(logits, targets, vocab)
    else:
        losses, g, gt = grads_fp8_torch(logits, targets, vocab)
    return losses.sum(), g, gt


@linear_ce_forward_fp8.register_fake
def _(x8, w8, scale_x, scale_w, targets, vocab):
    rows, width = x8.size(0), w8.size(0)
    return (x8.new_empty((), dtype=torch.float32), x8.new_empty((rows, width), dtype=G_DTYPE),
            x8.new_empty((width, rows), dtype=G_DTYPE))


class _LinearCrossEntropyFP8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, vocab: int) -> Tensor:
        x8, sx = quantize_e4m3(hidden)
        w8, sw = quantize_e4m3(weight)
        loss_sum, g, gt = linear_ce_forward_fp8(x8, w8, sx, sw, targets, vocab)
        # The backward matmuls contract over the vocabulary (G W) and over the tokens (G^T x):
        # each needs its second operand stored along that dimension.
        ctx.save_for_backward(g, gt, w8.t().contiguous(), x8.t().contiguous(), sx, sw)
        ctx.dtypes = hidden.dtype, weight.dtype
        return loss_sum

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        g, gt, w8t, x8t, sx, sw = ctx.saved_tensors
        inv = torch.full((), 1.0 / G_SCALE, dtype=torch.float32, device=g.device)
        d_hidden = fp8_mm(g, w8t.t(), inv, sw, ctx.dtypes[0]) * grad_out
        d_weight = fp8_mm(gt, x8t.t(), inv, sx, ctx.dtypes[1]) * grad_out
        return d_hidden, d_weight, None, None


def linear_cross_entropy_fp8(hidden: Tensor, weight: Tensor, targets: Tensor, vocab: int) -> Tensor:
    """Mean cross-entropy of softmax(hidden @ weight.T)[:, :vocab] against targets (-1 = ignore),
    the head's matmuls in FP8. hidden (N, d) as the stream gives it (bf16 under autocast), weight
    (V_padded, d) the fp32 master: both are quantized directly, and their gradients come back in
    their own dtypes. Shapes FP8 cannot take (a dimension not a multiple of 16) run the bf16 head."""
    targets = targets.reshape(-1)
    if not fp8_head_fits(hidden.size(0), hidden.size(1), weight.size(0)):
        return linear_cross_entropy(hidden, weight, targets, vocab)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        loss_sum = _LinearCrossEntropyFP8.apply(hidden, weight, targets, vocab)
        return loss_sum / (targets != IGNORE_INDEX).sum().clamp(min=1)

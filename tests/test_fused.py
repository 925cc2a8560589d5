"""The fast paths compute the same function as the plain ones (CPU here; CUDA on the device machine)."""

import pytest
import torch
import torch.nn.functional as F

from budgetlm.config import model_config
from budgetlm.models.fused_ce import fused_linear_cross_entropy
from budgetlm.models.transformer import GPT


def _ref(h, w, t, V):
    logits = (h.double() @ w.double().t())[:, :V]
    return F.cross_entropy(logits, t, ignore_index=-1)


@pytest.mark.parametrize("padded", [False, True])
def test_fused_ce_matches_reference_fp32(padded):
    torch.manual_seed(0)
    N, d, V = 300, 24, 77
    Vp = 128 if padded else V
    h = torch.randn(N, d, requires_grad=True)
    w = torch.randn(Vp, d, requires_grad=True)
    t = torch.randint(0, V, (N,))
    t[::7] = -1  # ignored positions
    loss = fused_linear_cross_entropy(h, w, t, V, chunk_rows=64)
    loss.backward()
    hr, wr = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = _ref(hr, wr, t, V)
    ref.backward()
    assert abs(loss.item() - ref.item()) / ref.item() < 1e-6
    for got, want in ((h.grad, hr.grad), (w.grad, wr.grad)):
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-5
    if padded:
        assert w.grad[V:].abs().max() == 0  # padding rows get no gradient


def test_fused_loss_in_model_matches_plain():
    torch.manual_seed(0)
    cfg = model_config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, vocab_multiple=64, block_size=16)
    m = GPT(cfg)
    assert m.lm_head.weight.shape[0] == 128
    x, y = torch.randint(0, 100, (3, 16)), torch.randint(0, 100, (3, 16))
    logits, plain = m(x, y)
    assert logits.shape == (3, 16, 100)
    plain.backward()
    g_plain = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.fused_loss = True
    _, fused = m(x, y)
    fused.backward()
    assert abs(fused.item() - plain.item()) < 1e-5
    for a, p in zip(g_plain, m.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("level", [1, 2])
def test_recompute_same_gradients(level):
    torch.manual_seed(0)
    m = GPT(model_config(n_layer=2, n_head=2, n_embd=32, vocab_size=50, block_size=16, pos="rope"))
    x, y = torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16))
    m(x, y)[1].backward()
    ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_recompute(level)
    m(x, y)[1].backward()
    for a, p in zip(ref, m.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-7)


@pytest.mark.gpu
def test_fused_ce_bf16_on_cuda():
    torch.manual_seed(0)
    N, d, V = 4096, 256, 50257
    h = torch.randn(N, d, device="cuda", requires_grad=True)
    w = (torch.randn(50304, d, device="cuda") * 0.02).requires_grad_()
    t = torch.randint(0, V, (N,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = fused_linear_cross_entropy(h, w, t, V, chunk_rows=1024)
    loss.backward()
    hr, wr = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = _ref(hr, wr, t, V)
    ref.backward()
    assert abs(loss.item() - ref.item()) / ref.item() < 1e-2
    for got, want in ((h.grad, hr.grad), (w.grad, wr.grad)):
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-2

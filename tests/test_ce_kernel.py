"""The head + cross-entropy whose gradient is computed in the forward pass (models/ce_kernel.py).

On CPU the op runs its PyTorch version; the Triton kernel itself is checked under Triton's
interpreter when Triton is installed (CPU CI has none: skipped) and on a GPU (`gpu` tests)."""

import os
import textwrap

import pytest
import torch

from budgetlm.plan.bench import ablation_settings
from budgetlm.config import model_config
from budgetlm.train.fastpath import resolve_ce_kernel
from budgetlm.errors import BudgetLMError
from budgetlm.models import build_model
from budgetlm.models.ce_kernel import linear_cross_entropy, loss_and_grad_torch_
from budgetlm.models.transformer import padded_cross_entropy
from conftest import end_spawned_rank


def _problem(n=48, d=16, vp=80, v=70, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype).to(device).requires_grad_()
    w = torch.randn(vp, d, generator=g, dtype=dtype).to(device).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    t[::5] = -1
    return h, w, t.to(device), v


def _loss_and_grads(fn, h, w, t, v, scale=3.0):
    h.grad = w.grad = None
    loss = fn(h, w, t, v)
    (loss * scale).backward()  # a non-unit incoming gradient, as loss / accumulation gives
    return loss.detach(), h.grad.clone(), w.grad.clone()


def _plain(h, w, t, v):
    return padded_cross_entropy(h @ w.t(), t, v)


def _assert_close(a, b, rtol):
    for x, y in zip(a, b):
        assert ((x.double() - y.double()).norm() / y.double().norm()).item() < rtol


def test_loss_and_gradients_equal_the_plain_loss_with_padding_and_ignored_targets():
    h, w, t, v = _problem()
    ours = _loss_and_grads(linear_cross_entropy, h, w, t, v)
    plain = _loss_and_grads(_plain, h, w, t, v)
    _assert_close(ours, plain, 1e-5)
    assert w.grad[v:].abs().max() == 0  # padding rows of the table get no gradient
    # The check can fail: a wrong target column moves the loss and the gradient.
    wrong = _loss_and_grads(linear_cross_entropy, h, w, (t + 1) % v * (t >= 0) - (t < 0).long(), v)
    assert abs(wrong[0] - plain[0]) > 1e-3


def test_all_targets_ignored_gives_zero_loss_and_zero_gradient():
    h, w, t, v = _problem()
    loss, gh, gw = _loss_and_grads(linear_cross_entropy, h, w, torch.full_like(t, -1), v)
    assert loss.item() == 0 and gh.abs().max() == 0 and gw.abs().max() == 0


def test_under_autocast_the_matmuls_run_in_the_autocast_dtype():
    h, w, t, v = _problem(n=64, d=32)
    with torch.autocast("cpu", torch.bfloat16):
        ours = _loss_and_grads(linear_cross_entropy, h, w, t, v)
        plain = _loss_and_grads(_plain, h, w, t, v)
    assert ours[1].dtype == torch.float32 and ours[2].dtype == torch.float32  # grads of fp32 leaves
    _assert_close(ours, plain, 2e-2)


def test_compiled_op_matches_eager():
    h, w, t, v = _problem()
    eager = _loss_and_grads(linear_cross_entropy, h, w, t, v)
    compiled = _loss_and_grads(torch.compile(linear_cross_entropy), h, w, t, v)
    _assert_close(compiled, eager, 1e-6)


@pytest.mark.parametrize("llama", [False, True])
def test_model_loss_and_gradients_with_the_kernel_head_equal_the_plain_head(llama):
    extra = dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False, tie_embeddings=False) if llama else {}
    cfg = model_config(n_layer=2, n_head=4, n_embd=32, vocab_size=100, block_size=16, vocab_multiple=64, **extra)
    torch.manual_seed(0)
    model = build_model(cfg)
    x, y = torch.randint(0, 100, (3, 16)), torch.randint(0, 100, (3, 16))
    results = []
    for kernel in (False, True):
        model.zero_grad(set_to_none=True)
        model.ce_kernel = kernel
        logits, loss = model(x, y)
        assert (logits is None) == kernel
        loss.backward()
        results.append((loss.detach(), *[p.grad.clone() for p in model.parameters()]))
    _assert_close(results[1], results[0], 1e-5)


def test_resolve_ce_kernel():
    cpu = torch.device("cpu")
    assert resolve_ce_kernel("auto", cpu) is False and resolve_ce_kernel("off", cpu) is False
    with pytest.raises(BudgetLMError, match="--ce-kernel on needs a CUDA device"):
        resolve_ce_kernel("on", cpu)
    with pytest.raises(BudgetLMError, match="pick one"):
        resolve_ce_kernel("on", cpu, fused_loss=True)
    with pytest.raises(BudgetLMError, match="--ce-kernel: unknown"):
        resolve_ce_kernel("yes", cpu)
    assert "compiled plain loss (no CE kernel)" in ablation_settings("gpt2-124m", ce_kernel=True)
    assert "compiled plain loss (no CE kernel)" not in ablation_settings("gpt2-124m", ce_kernel=False)


def test_torch_version_of_the_op_writes_softmax_minus_onehot():
    logits = torch.tensor([[0.0, 1.0, 2.0, 5.0], [1.0, 1.0, 1.0, 9.0]])
    targets = torch.tensor([2, -1])
    losses = loss_and_grad_torch_(logits, targets, vocab=3)  # column 3 is padding
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    assert torch.allclose(losses, torch.tensor([-torch.log(p[2]), 0.0]))
    assert torch.allclose(logits[0], torch.tensor([p[0], p[1], p[2] - 1, 0.0]))
    assert logits[1].abs().max() == 0


INTERPRETED = textwrap.dedent("""
    import sys, torch
    import triton.runtime.errors
    from budgetlm.models import ce_kernel as ck
    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        x = (torch.randn(7, 320) * 3).to(dtype)
        t = torch.randint(0, 300, (7,))
        t[3] = -1
        a, b = x.clone(), x.clone()
        try:
            la = ck.loss_and_grad_triton_(a, t, 300, block=64, num_warps=4)
        except triton.runtime.errors.InterpreterError as e:
            print("interpreter cannot run here:", e)
            sys.exit(77)
        lb = ck.loss_and_grad_torch_(b, t, 300)
        assert torch.allclose(la, lb, rtol=1e-5, atol=1e-5), (la, lb)
        assert ((a.float() - b.float()).norm() / b.float().norm()) < tol
        assert a[:, 300:].abs().max() == 0 and a[3].abs().max() == 0
    print("ok")
""")


def test_triton_kernel_under_the_interpreter_matches_the_torch_version(run_interpreted):
    run_interpreted(INTERPRETED)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_cuda_kernel_matches_the_torch_version(dtype, tol):
    from budgetlm.models.ce_kernel import loss_and_grad_triton_
    torch.manual_seed(0)
    x = (torch.randn(256, 50304, device="cuda") * 3).to(dtype)
    t = torch.randint(0, 50257, (256,), device="cuda")
    t[::9] = -1
    a, b = x.clone(), x.clone()
    la, lb = loss_and_grad_triton_(a, t, 50257), loss_and_grad_torch_(b, t, 50257)
    assert torch.allclose(la, lb, rtol=1e-5, atol=1e-4)
    assert ((a.float() - b.float()).norm() / b.float().norm()).item() < tol
    assert a[:, 50257:].abs().max() == 0


@pytest.mark.gpu
def test_cuda_bf16_gradients_match_an_fp32_reference():
    h, w, t, v = _problem(n=2048, d=256, vp=32064, v=32000, device="cuda")
    with torch.no_grad():
        w.mul_(256 ** -0.5)  # initialized-model scale: logits of order 1, as in training
    ref = _loss_and_grads(_plain, h, w, t, v)  # fp32 throughout
    with torch.autocast("cuda", torch.bfloat16):
        ours = _loss_and_grads(torch.compile(linear_cross_entropy), h, w, t, v)
        plain = _loss_and_grads(torch.compile(_plain), h, w, t, v)
    for x, p, r in zip(ours, plain, ref):  # within bf16 tolerance, and no worse than the plain bf16 path
        err, err_plain = (((y.double() - r.double()).norm() / r.double().norm()).item() for y in (x, p))
        assert err < 1e-2 and err < 1.5 * err_plain + 1e-6, (err, err_plain)


def _fsdp_worker(rank: int, world: int, port: int, result_path: str) -> None:
    """Two ranks, FSDP2 (per block, then the root): the kernel head reads lm_head.weight in the
    root's forward, where FSDP2 has gathered it. Gradients must equal one process's plain head."""
    import copy

    from torch.distributed.fsdp import fully_shard
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    ok = False
    try:
        torch.manual_seed(0)
        model = build_model(model_config(n_layer=2, n_head=2, n_embd=16, vocab_size=90, block_size=8))
        ref = copy.deepcopy(model)
        x, y = torch.randint(0, 90, (2 * world, 8)), torch.randint(0, 90, (2 * world, 8))
        _, ref_loss = ref(x, y)
        ref_loss.backward()
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        model.ce_kernel = True
        _, loss = model(x[2 * rank:2 * rank + 2], y[2 * rank:2 * rank + 2])
        loss.backward()
        errs = [((p.grad.full_tensor() - r.grad).norm() / r.grad.norm()).item()
                for p, r in zip(model.parameters(), ref.parameters())]
        if rank == 0:
            with open(result_path, "w") as f:
                f.write(repr(max(errs)))
        ok = True
    finally:
        end_spawned_rank(rank, world, ok)


def test_kernel_head_under_fsdp2_matches_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "err.txt"
    mp.spawn(_fsdp_worker, args=(2, port, str(out)), nprocs=2, join=True)
    assert float(out.read_text()) < 1e-5


def test_trainer_rejects_the_kernel_where_it_cannot_run(synth_data, tmp_path):
    from budgetlm.config import FastConfig, TrainConfig
    from budgetlm.train.trainer import train
    cfg = TrainConfig(budget="2-steps", batch_size=2, seq_len=16, out_dir=str(tmp_path), progress=False, device="cpu",
                      fast=FastConfig(compile="off", ce_kernel="on"))
    with pytest.raises(BudgetLMError, match="--ce-kernel on needs a CUDA device and Triton"):
        train(model_config(n_layer=1, n_head=2, n_embd=16), cfg, synth_data, log=lambda *_: None)

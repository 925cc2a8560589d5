"""The CE kernel's head with its matmuls in FP8 (models/ce_kernel_fp8.py).

On CPU the FP8 values are upcast to fp32 for the matmuls: the algorithm (scales, layouts, the
gradient's fixed scale) is checked here; the Triton kernels under Triton's interpreter when it is
installed, and on a GPU (`gpu` tests) with the FP8 tensor cores."""

import subprocess
import sys
import textwrap

import pytest
import torch

from budgetlm.plan.bench import ablation_settings
from budgetlm.config import model_config
from budgetlm.train.fastpath import resolve_fp8_head
from budgetlm.errors import BudgetLMError
from budgetlm.models import build_model
from budgetlm.models import ce_kernel_fp8 as f8
from budgetlm.models.ce_kernel import linear_cross_entropy
from test_ce_kernel import _loss_and_grads, _plain  # the bf16 kernel's tests: same harness


def _problem(n=256, d=64, vp=1024, v=1000, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(device).requires_grad_()
    w = (torch.randn(vp, d, generator=g) * d ** -0.5).to(device).requires_grad_()  # logits of order 1
    t = torch.randint(0, v, (n,), generator=g)
    t[::7] = -1
    return h, w, t.to(device), v


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_fp8_head_matches_the_fp32_loss_within_fp8_precision():
    h, w, t, v = _problem()
    ref = _loss_and_grads(_plain, h, w, t, v)
    ours = _loss_and_grads(f8.linear_cross_entropy_fp8, h, w, t, v)
    assert _rel(ours[0], ref[0]) < 2e-3
    for a, b in zip(ours[1:], ref[1:]):  # e4m3 inputs: a few percent per element, unbiased
        assert _rel(a, b) < 6e-2
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0) > 0.998
    assert w.grad[v:].abs().max() == 0  # padding rows of the table get no gradient
    assert ours[1].dtype == ours[2].dtype == torch.float32  # gradients in their leaves' dtypes
    # The check can fail: a head that read the wrong target column moves loss and gradients.
    shifted = (t + 1) % v * (t >= 0) - (t < 0).long()
    wrong = _loss_and_grads(f8.linear_cross_entropy_fp8, h, w, shifted, v)
    assert _rel(wrong[0], ref[0]) > 2e-3 and _rel(wrong[1], ref[1]) > 6e-2  # outside both tolerances


def test_compiled_fp8_head_matches_eager():
    h, w, t, v = _problem()
    eager = _loss_and_grads(f8.linear_cross_entropy_fp8, h, w, t, v)
    compiled = _loss_and_grads(torch.compile(f8.linear_cross_entropy_fp8), h, w, t, v)
    for a, b in zip(compiled, eager):
        assert _rel(a, b) < 1e-5


def test_gradient_contract_softmax_minus_onehot_in_e5m2_both_layouts():
    logits = torch.tensor([[0.0, 1.0, 2.0, 5.0], [1.0, 1.0, 1.0, 9.0]]).bfloat16()
    targets = torch.tensor([2, -1])
    losses, g, gt = f8.grads_fp8_torch(logits, targets, vocab=3)  # column 3 is padding
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    assert torch.allclose(losses, torch.tensor([-torch.log(p[2]), 0.0]))
    want = (torch.tensor([p[0], p[1], p[2] - 1, 0.0]) * f8.G_SCALE).to(f8.G_DTYPE).float()
    assert g.dtype == gt.dtype == torch.float8_e5m2
    assert torch.equal(g[0].float(), want) and g[1].float().abs().max() == 0
    assert torch.equal(gt.float(), g.float().t())


def test_shapes_fp8_cannot_take_run_the_bf16_head():
    h, w, t, v = _problem(n=250)  # 250 rows: not a multiple of 16
    assert not f8.fp8_head_fits(250, 64, 1024) and f8.fp8_head_fits(256, 64, 1024)
    a = _loss_and_grads(f8.linear_cross_entropy_fp8, h, w, t, v)
    b = _loss_and_grads(linear_cross_entropy, h, w, t, v)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_model_with_the_fp8_head_trains_like_the_plain_head():
    torch.manual_seed(0)
    cfg = model_config(n_layer=2, n_head=2, n_embd=32, vocab_size=200, block_size=16)
    plain = build_model(cfg)
    fp8 = build_model(cfg)
    fp8.load_state_dict(plain.state_dict())
    fp8.ce_kernel = fp8.fp8_head = True
    x = torch.randint(0, 200, (4, 17))
    _, a = plain(x[:, :-1], x[:, 1:])
    _, b = fp8(x[:, :-1], x[:, 1:])
    a.backward()
    b.backward()
    assert _rel(b.detach(), a.detach()) < 5e-3
    for p, q in zip(plain.parameters(), fp8.parameters()):
        assert torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), 0) > 0.99
    logits, _ = fp8(x[:, :-1])  # no targets (eval, sampling): the bf16/fp32 head, exact
    assert torch.equal(logits, plain(x[:, :-1])[0])


def test_resolve_fp8_head():
    cpu = torch.device("cpu")
    assert resolve_fp8_head("off", cpu, ce_kernel=False) is False
    with pytest.raises(BudgetLMError, match="--fp8-head on runs inside the CE kernel"):
        resolve_fp8_head("on", cpu, ce_kernel=False)
    with pytest.raises(BudgetLMError, match="--fp8-head on needs an NVIDIA GPU with FP8"):
        resolve_fp8_head("on", cpu, ce_kernel=True)
    with pytest.raises(BudgetLMError, match="--fp8-head: unknown"):
        resolve_fp8_head("auto", cpu, ce_kernel=True)
    assert "+ fp8 head (CE kernel)" in ablation_settings("gpt2-124m", ce_kernel=True)
    assert "+ fp8 head (CE kernel)" not in ablation_settings("gpt2-124m", ce_kernel=False)
    assert "+ fp8 head (CE kernel)" not in ablation_settings("gpt2-124m", ce_kernel=True, fp8_head=True)


def test_train_cli_rejects_the_fp8_head_on_cpu(synth_data, tmp_path):
    r = subprocess.run([sys.executable, "-m", "budgetlm", "train", "--data", str(synth_data), "--budget", "2-steps",
                        "--model", "nano", "--device", "cpu", "--fp8-head", "on", "--out", str(tmp_path / "r"),
                        "--no-progress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--fp8-head on" in r.stderr, r.stderr


INTERPRETED = textwrap.dedent("""
    import sys, torch
    import triton.runtime.errors
    from budgetlm.models import ce_kernel as ck, ce_kernel_fp8 as f8
    torch.manual_seed(0)
    f8.LSE_BLOCK, f8.LSE_WARPS = 64, 4  # small blocks: several loop trips per row
    for per_lane in (False, True):
        ck.PER_LANE = per_lane
        x = (torch.randn(48, 320) * 3).bfloat16()
        t = torch.randint(0, 300, (48,))
        t[5] = -1
        try:
            la, ga, gta = f8.grads_fp8_triton(x.clone(), t, 300, block_rows=16, block_cols=32, num_warps=4)
        except triton.runtime.errors.InterpreterError as e:
            print("interpreter cannot run here:", e)
            sys.exit(77)
        lb, gb, gtb = f8.grads_fp8_torch(x.clone(), t, 300)
        assert torch.allclose(la, lb, rtol=1e-5, atol=1e-5), (la, lb)
        a, b = ga.float(), gb.float()
        # The interpreter's e5m2 rounding loses the carry into the exponent (a value that rounds up
        # to a power of two comes out half as large, the smallest subnormal 2^-16 as 0); layout and
        # masking must still be exact.
        assert ((a - b).abs() <= 0.5 * b.abs() + 2.0 ** -16).all() and ((a != b).float().mean() < 0.1)
        assert torch.equal(gta.float(), a.t())
        assert a[:, 300:].abs().max() == 0 and a[5].abs().max() == 0
    print("ok")
""")


def test_fp8_kernels_under_the_interpreter_match_the_torch_version(run_interpreted):
    run_interpreted(INTERPRETED)


@pytest.mark.gpu
def test_cuda_fp8_kernels_match_the_torch_version():
    torch.manual_seed(0)
    x = (torch.randn(512, 50304, device="cuda") * 3).bfloat16()
    t = torch.randint(0, 50257, (512,), device="cuda")
    t[::9] = -1
    la, ga, gta = f8.grads_fp8_triton(x, t, 50257)
    lb, gb, gtb = f8.grads_fp8_torch(x, t, 50257)
    assert torch.allclose(la, lb, rtol=1e-5, atol=1e-4)
    a, b = ga.float(), gb.float()
    # exp differs in its last bits between Triton and PyTorch: at most a rounding boundary apart
    assert (a != b).float().mean() < 1e-3 and ((a - b).abs() <= 0.25 * b.abs() + 1e-30).all()
    assert torch.equal(gta.float(), a.t()) and a[:, 50257:].abs().max() == 0


@pytest.mark.gpu
def test_cuda_fp8_head_matches_an_fp32_reference():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("no FP8 tensor cores on this GPU")
    h, w, t, v = _problem(n=2048, d=256, vp=32064, v=32000, device="cuda")
    ref = _loss_and_grads(_plain, h, w, t, v)  # fp32 throughout
    with torch.autocast("cuda", torch.bfloat16):
        ours = _loss_and_grads(torch.compile(f8.linear_cross_entropy_fp8), h, w, t, v)
    assert _rel(ours[0], ref[0]) < 2e-3
    for a, b in zip(ours[1:], ref[1:]):
        assert _rel(a, b) < 6e-2


def test_memory_model_counts_the_fp8_heads_extra_logit_bytes():
    from budgetlm.plan.memory import loss_head_bytes
    cfg = model_config("gpt2-124m")
    tokens = 32 * 1024
    bf16 = loss_head_bytes(cfg, tokens, ce_kernel=True)
    fp8 = loss_head_bytes(cfg, tokens, ce_kernel=True, fp8_head=True)
    # Measured on an H200 (bench, 32x1024x4): peak 15.5 GB with the bf16 head, 18.7 GB with the FP8 head.
    assert 2.8e9 < fp8 - bf16 < 3.6e9
    assert loss_head_bytes(cfg, tokens, fp8_head=True) == loss_head_bytes(cfg, tokens)  # only with the kernel


def test_trainer_rejects_the_fp8_head_for_a_model_without_the_kernel_head(synth_data, tmp_path):
    from budgetlm.config import FastConfig, TrainConfig
    from budgetlm.train.trainer import train
    cfg = TrainConfig(budget="2-steps", batch_size=2, seq_len=16, out_dir=str(tmp_path), progress=False, device="cpu",
                      fast=FastConfig(compile="off", fp8_head="on"))
    with pytest.raises(BudgetLMError, match="the lstm model has no CE-kernel head"):
        train(model_config(arch="lstm", n_layer=1, n_embd=16), cfg, synth_data, log=lambda *_: None)

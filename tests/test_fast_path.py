"""The fast path's switches: attention-kernel preference, native grouped-query attention, FP8
matmuls (emulated on CPU), the bf16 residual stream, RoPE on the unpermuted layout, the
full-attention FLOP convention and the bench's ablation rows."""

from __future__ import annotations

import copy

import pytest
import torch

from budgetlm.plan.bench import ablation_settings
from budgetlm.config import model_config
from budgetlm.train.fastpath import resolve_attention, resolve_half_residual
from budgetlm.errors import BudgetLMError
from budgetlm.models import build_model
from budgetlm.models import transformer
from budgetlm.models.transformer import apply_rope, gqa_mode, rope_tables, set_attention_kernel

CUDA = pytest.mark.gpu  # conftest skips these without CUDA; `pytest -m gpu` selects them on the GPU machine


def tiny(**kw):
    base = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=300, block_size=32)
    return model_config(**{**base, **kw})


def test_attention_choice_rejects_unknown_kernel():
    with pytest.raises(BudgetLMError, match="--attn"):
        resolve_attention("flashy", torch.device("cpu"))
    assert resolve_attention("auto", torch.device("cpu")) is None  # PyTorch's own order off Hopper
    assert resolve_attention("math", torch.device("cpu")) == "math"


@pytest.mark.parametrize("kernel", ["auto", "flash", "cudnn", "efficient", "math"])
def test_attention_kernel_choice_keeps_the_function(kernel):
    # A kernel that cannot serve the inputs (cuDNN on CPU) is not forced; every choice computes
    # the same loss and gradients.
    torch.manual_seed(0)
    model = build_model(tiny(n_head=4, n_kv_head=2))
    x = torch.randint(0, 300, (2, 33))
    _, ref = model(x[:, :-1], x[:, 1:])
    ref.backward()
    ref_grad = model.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    set_attention_kernel(model, resolve_attention(kernel, torch.device("cpu")))
    assert model.blocks[1].attn.kernel == resolve_attention(kernel, torch.device("cpu"))
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    assert abs(loss.item() - ref.item()) < 1e-5
    assert torch.allclose(model.blocks[0].attn.qkv.weight.grad, ref_grad, atol=1e-6)


def test_gqa_mode_restores_the_switch():
    before = transformer.NATIVE_GQA
    with gqa_mode(False):
        assert transformer.NATIVE_GQA is False
    assert transformer.NATIVE_GQA == before


@CUDA
def test_native_gqa_matches_repeated_heads_on_cuda():
    torch.manual_seed(0)
    model = build_model(tiny(n_head=8, n_kv_head=2, pos="rope", norm="rmsnorm", mlp="swiglu")).cuda()
    x = torch.randint(0, 300, (4, 33), device="cuda")
    outs = []
    for native in (True, False):
        with gqa_mode(native), torch.autocast("cuda", dtype=torch.bfloat16):
            outs.append(model(x[:, :-1], x[:, 1:])[1].item())
    assert abs(outs[0] - outs[1]) < 1e-2 * outs[1]


@CUDA
def test_cudnn_attention_matches_flash_on_cuda():
    torch.manual_seed(0)
    model = build_model(tiny(n_head=8, n_kv_head=2, n_embd=256, pos="rope", norm="rmsnorm", mlp="swiglu")).cuda()
    x = torch.randint(0, 300, (4, 33), device="cuda")
    losses = []
    for kernel in ("flash", "cudnn", "math"):
        set_attention_kernel(model, kernel)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses.append(model(x[:, :-1], x[:, 1:])[1].item())
    assert max(losses) - min(losses) < 1e-2 * losses[-1]


def test_full_attention_flops_add_the_masked_half():
    cfg = tiny()
    model = build_model(cfg)
    T = 32
    extra = model.flops_per_token_full_attention(T) - model.flops_per_token(T)
    assert extra == 6 * cfg.n_layer * cfg.n_embd * T
    # nanoGPT's convention for GPT-2 124M at T=1024: ~0.86 GFLOP/token (433k tok/s ~ 37% of 989 TFLOP/s)
    with torch.device("meta"):
        gpt2 = build_model(model_config("gpt2-124m", block_size=1024, vocab_multiple=1))
    assert 0.84e9 < gpt2.flops_per_token_full_attention(1024) < 0.87e9


def test_ablation_rows_fit_the_model():
    gpt2 = ablation_settings("gpt2-124m")
    llama = ablation_settings("tinyllama-1.1b")
    assert "GQA: repeated kv heads" not in gpt2 and "GQA: repeated kv heads" in llama
    assert "+ fp8 tensorwise" in gpt2 and "+ fp8 tensorwise" not in ablation_settings("gpt2-124m", fp8="rowwise")
    assert "attention: FlashAttention-2" not in ablation_settings("gpt2-124m", attn="flash")
    assert all(v != {} for k, v in gpt2.items() if k != "fast (as given)")
    assert "fp32 residual stream" in gpt2 and "fp32 residual stream" not in ablation_settings(
        "gpt2-124m", half_residual=False)


def test_fp8_needs_a_gpu_with_fp8_cores():
    pytest.importorskip("torchao")
    from budgetlm.models.fp8 import enable_fp8
    model = build_model(tiny())
    with pytest.raises(BudgetLMError, match="--fp8 needs an NVIDIA GPU"):
        enable_fp8(model, "tensorwise")
    with pytest.raises(BudgetLMError, match="--fp8: unknown recipe"):
        enable_fp8(model, "blockwise")
    assert enable_fp8(model, "off") == []


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_fp8_emulated_trains_like_the_plain_model(recipe):
    pytest.importorskip("torchao")
    from budgetlm.models.fp8 import enable_fp8
    torch.manual_seed(0)
    plain = build_model(tiny(n_embd=128, vocab_size=1024))
    fp8 = copy.deepcopy(plain)
    swapped = enable_fp8(fp8, recipe, emulate=True)
    assert "lm_head" in swapped and "blocks.1.mlp.down" in swapped and len(swapped) == 2 * 4 + 1
    assert fp8.lm_head.weight is fp8.wte.weight  # tying survives the swap
    assert list(fp8.state_dict()) == list(plain.state_dict())  # checkpoints and export unchanged
    x = torch.randint(0, 1024, (4, 33))
    _, a = plain(x[:, :-1], x[:, 1:])
    _, b = fp8(x[:, :-1], x[:, 1:])
    a.backward()
    b.backward()
    assert abs(a.item() - b.item()) < 1e-2 * a.item()
    g_plain, g_fp8 = plain.blocks[0].mlp.up.weight.grad, fp8.blocks[0].mlp.up.weight.grad
    # e5m2 gradients carry 2 mantissa bits: close in direction, not bit-equal
    assert ((g_plain - g_fp8).norm() / g_plain.norm()).item() < 0.3
    assert torch.nn.functional.cosine_similarity(g_plain.flatten(), g_fp8.flatten(), dim=0) > 0.95


def test_fp8_can_leave_the_head_alone():
    pytest.importorskip("torchao")
    from budgetlm.models.fp8 import enable_fp8
    model = build_model(tiny(n_embd=128))
    swapped = enable_fp8(model, "tensorwise", include_head=False, emulate=True)
    assert "lm_head" not in swapped and type(model.lm_head) is torch.nn.Linear


def test_fp8_modules_picks_linears_by_name():
    pytest.importorskip("torchao")
    from budgetlm.models.fp8 import enable_fp8
    swapped = enable_fp8(build_model(tiny(n_embd=128)), "tensorwise", emulate=True, modules="mlp")
    assert swapped == [f"blocks.{i}.mlp.{n}" for i in range(2) for n in ("up", "down")]
    swapped = enable_fp8(build_model(tiny(n_embd=128)), "tensorwise", emulate=True, modules="mlp.down, attn.qkv")
    assert sorted(swapped) == sorted([f"blocks.{i}.{n}" for i in range(2) for n in ("mlp.down", "attn.qkv")])
    with pytest.raises(BudgetLMError, match="--fp8-modules 'mpl' matches no Linear"):
        enable_fp8(build_model(tiny(n_embd=128)), "tensorwise", emulate=True, modules="mpl")


def test_train_cli_passes_fp8_modules_to_the_swap(synth_data, tmp_path, monkeypatch):
    from budgetlm import cli
    from budgetlm.train import fastpath
    seen = {}

    def fake_enable_fp8(model, recipe, modules="all"):
        seen.update(recipe=recipe, modules=modules)
        raise BudgetLMError("stop here")
    monkeypatch.setattr(fastpath, "enable_fp8", fake_enable_fp8)
    code = cli.main(["train", "--data", str(synth_data), "--budget", "2-steps", "--model", "nano", "--device", "cpu",
                     "--fp8", "tensorwise", "--fp8-modules", "mlp.down", "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and seen == {"recipe": "tensorwise", "modules": "mlp.down"}


def test_half_residual_setting():
    cpu = torch.device("cpu")
    assert resolve_half_residual("auto", cpu, torch.bfloat16) is False  # CPU keeps the fp32 stream
    assert resolve_half_residual("on", cpu, torch.bfloat16) is True
    assert resolve_half_residual("off", cpu, torch.bfloat16) is False
    gpu = torch.device("cuda")  # a device object only: nothing runs on it
    assert resolve_half_residual("auto", gpu, torch.bfloat16) is True
    assert resolve_half_residual("auto", gpu, torch.float32) is False
    assert resolve_half_residual("auto", gpu, torch.bfloat16, fp8="rowwise") is False
    assert resolve_half_residual("auto", gpu, torch.bfloat16, fp8="tensorwise") is True
    with pytest.raises(BudgetLMError, match="--half-residual"):
        resolve_half_residual("bf16", cpu, torch.bfloat16)


@pytest.mark.parametrize("arch", [dict(), dict(n_kv_head=2, pos="rope", norm="rmsnorm", mlp="swiglu")])
def test_half_residual_keeps_the_stream_in_bf16_and_the_function(arch):
    torch.manual_seed(0)
    model = build_model(tiny(n_embd=128, **arch))
    x = torch.randint(0, 300, (4, 33))
    seen = []
    hook = model.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append((inp[0].dtype, out.dtype)))
    results = []
    for half in (False, True):
        model.half_residual = half
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        results.append((loss.item(), model.blocks[0].mlp.up.weight.grad.clone()))
    hook.remove()
    assert seen == [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)]
    (a, ga), (b, gb) = results
    assert abs(a - b) < 1e-2 * a  # bf16 rounding of the stream, not a different function
    assert torch.nn.functional.cosine_similarity(ga.flatten(), gb.flatten(), dim=0) > 0.99
    model.half_residual = True  # no autocast: nothing to be half of, the stream stays fp32
    _, loss = model(x[:, :-1], x[:, 1:])
    assert loss.dtype == torch.float32 and abs(loss.item() - a) < 2e-2 * a


def test_rope_on_the_token_major_layout_is_the_head_major_rotation():
    # The model rotates (B, T, H, hd) before transposing; the same numbers as rotating each head's
    # (T, hd) plane, written out for one head with complex multiplication (rotate-half pairing).
    torch.manual_seed(0)
    B, T, H, hd = 2, 7, 3, 8
    cos, sin = rope_tables(hd, T, 10000.0)
    x = torch.randn(B, T, H, hd, dtype=torch.float64)
    out = apply_rope(x, cos.double(), sin.double())
    pairs = torch.complex(x[..., : hd // 2], x[..., hd // 2:])  # (B, T, H, hd/2)
    rot = pairs * torch.polar(torch.ones_like(cos.double()), torch.atan2(sin.double(), cos.double()))[None, :, None]
    assert torch.allclose(out, torch.cat((rot.real, rot.imag), dim=-1), atol=1e-12)


@CUDA
def test_half_residual_matches_fp32_stream_on_cuda():
    torch.manual_seed(0)
    model = build_model(tiny(n_head=8, n_kv_head=2, n_embd=256, pos="rope", norm="rmsnorm", mlp="swiglu")).cuda()
    x = torch.randint(0, 300, (4, 33), device="cuda")
    losses = []
    for half in (False, True):
        model.half_residual = half
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses.append(model(x[:, :-1], x[:, 1:])[1].item())
    assert abs(losses[0] - losses[1]) < 1e-2 * losses[0]


def test_cuda_graphs_setting():
    from budgetlm.train.fastpath import resolve_cuda_graphs
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_cuda_graphs("auto", gpu, True, 2_000_000, False) is True  # small, compiled, one GPU
    assert resolve_cuda_graphs("auto", gpu, True, 124_000_000, False) is False  # step not launch-bound
    assert resolve_cuda_graphs("auto", gpu, True, 2_000_000, True) is False  # DDP/FSDP: not graphed
    assert resolve_cuda_graphs("auto", gpu, False, 2_000_000, False) is False  # graphs come with compile
    assert resolve_cuda_graphs("auto", cpu, True, 2_000_000, False) is False
    assert resolve_cuda_graphs("off", gpu, True, 2_000_000, False) is False
    with pytest.raises(BudgetLMError, match="--cuda-graphs on needs a CUDA device"):
        resolve_cuda_graphs("on", cpu, True, 2_000_000, False)
    with pytest.raises(BudgetLMError, match="not supported with DDP/FSDP"):
        resolve_cuda_graphs("on", gpu, True, 2_000_000, True)
    with pytest.raises(BudgetLMError, match="--cuda-graphs: unknown"):
        resolve_cuda_graphs("yes", gpu, True, 2_000_000, False)


def test_padded_cross_entropy_is_the_sliced_loss():
    from budgetlm.models.transformer import padded_cross_entropy
    torch.manual_seed(0)
    V, Vp = 300, 320  # 20 padding columns
    logits = torch.randn(2, 5, Vp, dtype=torch.float64) * 3
    targets = torch.randint(0, V, (2, 5))
    targets[0, 1] = -1  # ignored position
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    la = padded_cross_entropy(a, targets, V)
    lb = torch.nn.functional.cross_entropy(b[..., :V].reshape(-1, V), targets.reshape(-1), ignore_index=-1)
    la.backward()
    lb.backward()
    assert la.dtype == torch.float32 and abs(la.item() - lb.item()) < 1e-6  # fp32 inside, like the model's loss
    assert torch.allclose(a.grad, b.grad, atol=1e-6) and a.grad[..., V:].abs().max() == 0
    unpadded = logits[..., :V].clone()
    assert abs(padded_cross_entropy(unpadded, targets, V).item() - lb.item()) < 1e-6


def test_kept_gradients_train_exactly_like_dropped_ones():
    """keep_grads_allocated + zeroing in place (what CUDA graphs with accumulation need) is the same
    arithmetic as set_to_none, and each .grad stays the same tensor from step to step."""
    from budgetlm.train.fastpath import keep_grads_allocated
    torch.manual_seed(0)
    base = build_model(tiny())
    data = torch.randint(0, 300, (3, 2, 4, 33))  # steps x micro-batches x batch x tokens
    final = {}
    for keep in (False, True):
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        if keep:
            keep_grads_allocated(model.parameters())
            assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
            ptrs = [p.grad.data_ptr() for p in model.parameters()]
        for step in data:
            for micro in step:
                (model(micro[:, :-1], micro[:, 1:])[1] / len(step)).backward()
            opt.step()
            opt.zero_grad(set_to_none=not keep)
            if keep:
                assert [p.grad.data_ptr() for p in model.parameters()] == ptrs  # added into, never replaced
        final[keep] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(final[False], final[True]))


@CUDA
def test_cuda_graphs_with_accumulation_train_like_plain_compile():
    """CUDA graphs with gradient accumulation: the second micro-step's replay once overwrote the
    first one's gradients (a RuntimeError); now it must run and match the compiled step without graphs."""
    from budgetlm.plan.bench import bench_one
    rows = {mode: bench_one("nano", seq=64, micro_batch=4, steps=4, warmup=3, device="cuda", accum=3,
                            compile_mode=mode, fused_loss=False)
            for mode in ("default", "reduce-overhead")}
    a, b = rows["default"], rows["reduce-overhead"]
    print({m: (r["loss_first"], r["loss_last"]) for m, r in rows.items()})
    # On random tokens the step's loss (the mean over its micro-batches) barely moves: 2.6e-4 over
    # these steps on an H200 (torch 2.11), where both modes agreed to every digit. The match must be
    # much tighter than that move: a graphed run whose gradients were lost would stay at its first loss.
    for r in (a, b):
        assert abs(r["loss_last"] - r["loss_first"]) > 1e-4  # the weights moved
    assert a["loss_first"] == pytest.approx(b["loss_first"], abs=2e-5)
    assert a["loss_last"] == pytest.approx(b["loss_last"], abs=2e-5)

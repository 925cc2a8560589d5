"""Tests for the budget planner (budgetlm.plan.planner, budgetlm.plan.memory, budgetlm.plan.hardware).

Fast and CPU-only: models are built on the meta device except for the small configs whose
parameter counts are checked against real builds. GPU memory checks live in
benchmarks/plan_check.py.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from budgetlm.config import ModelConfig, TrainConfig, from_dict, model_config
from budgetlm.errors import BudgetLMError
from budgetlm.plan.hardware import get_gpu, peak_flops
from budgetlm.plan.memory import flops_per_token, layer_activation_bytes, measure_throughput, pick_micro_batch
from budgetlm.models import build_model
from budgetlm.plan.planner import (Plan, count_params, estimate, explain, ladder, make_plan, measure, measure_peak_memory,
                                   memory_estimate, render, write_config)
from budgetlm.cli.plan import register

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "nano": model_config("nano"),
    "gpt-untied-nobias": ModelConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=300, block_size=48, bias=False,
                                     tie_embeddings=False),
    "llama-gqa": ModelConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, vocab_size=257, block_size=32,
                             mlp="swiglu", norm="rmsnorm", pos="rope", bias=False, tie_embeddings=False),
    "llama-gqa-padded": ModelConfig(n_layer=3, n_head=6, n_kv_head=3, n_embd=96, vocab_size=1000, block_size=16,
                                    mlp="swiglu", mlp_hidden=200, norm="rmsnorm", pos="rope", vocab_multiple=64),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_param_count_equals_real_build(name: str) -> None:
    cfg = SMALL[name]
    real = build_model(cfg)
    assert count_params(cfg) == sum(p.numel() for p in real.parameters())
    assert flops_per_token(cfg, 32) == real.flops_per_token(32)


def test_ladder_has_the_named_sizes_and_exact_counts() -> None:
    names = dict(ladder("gpt2", 1024))
    assert count_params(names["gpt2-124m"]) == 124_475_904  # 124.44M + vocab padded 50257 -> 50304
    big = names["gpt2-48x2560"]
    assert (big.n_layer, big.n_embd, big.n_head) == (48, 2560, 32)
    assert 3.8e9 < count_params(big) < 4.0e9  # the hand answer's "3B": 48 layers make it 3.9B
    llama = dict(ladder("llama", 1024))
    assert 6.5e9 < count_params(llama["llama2-7b"]) < 6.8e9
    assert llama["tinyllama-1.1b"].kv_heads == 4


def test_memory_states_are_16_bytes_per_param_in_bf16_amp() -> None:
    cfg = SMALL["llama-gqa"]
    P = count_params(cfg)
    for dtype in ("bfloat16", "float32"):
        m = memory_estimate(cfg, 2, 32, dtype, "none", 1, False)
        assert m["weights"] + m["grads"] + m["optimizer"] == 16 * P
        assert (m["weights"], m["grads"], m["optimizer"]) == (4 * P, 4 * P, 8 * P)


def test_sharding_divides_the_right_parts() -> None:
    cfg = SMALL["nano"]
    P = count_params(cfg)
    z = memory_estimate(cfg, 2, 32, "bfloat16", "zero1", 4, False)
    assert (z["weights"], z["grads"], z["optimizer"]) == (4 * P, 4 * P, 8 * P / 4)
    f = memory_estimate(cfg, 2, 32, "bfloat16", "fsdp", 4, False)
    assert (f["weights"], f["grads"], f["optimizer"]) == (P, P, 2 * P)
    one = memory_estimate(cfg, 2, 32, "bfloat16", "fsdp", 1, False)
    assert one["weights"] + one["grads"] + one["optimizer"] == 16 * P
    with pytest.raises(BudgetLMError, match="--sharding"):
        memory_estimate(cfg, 2, 32, "bfloat16", "zero3", 4, False)


def test_native_gqa_saves_the_repeated_kv_heads() -> None:
    # Llama style, 4 query heads sharing 2 kv heads of 16 dims, RoPE, bf16 (a=2): with SDPA's
    # enable_gqa the saved k is the rotated one (a*K*hd); repeated heads save 2*a*H*hd instead.
    cfg = SMALL["llama-gqa"]
    native = layer_activation_bytes(cfg, 32)["attention"]
    repeated = layer_activation_bytes(cfg, 32, native_gqa=False)["attention"]
    assert repeated - native == 2 * 2 * 4 * 16 - 2 * 2 * 16
    assert layer_activation_bytes(cfg, 32, "float32")["attention"] == \
        layer_activation_bytes(cfg, 32, "float32", native_gqa=False)["attention"]  # fp32: always repeated


def test_activation_and_logit_bytes_hand_computed() -> None:
    # GPT-2 style, d=64, 4 heads, 2 layers, V=100, B=2, T=32, bf16 autocast (a=2), fp32 residual (r=4).
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=100, block_size=32)
    d = 64
    # attention: norm1 in 4d + cast 2d + qkv out 6d + 8 (mean/rstd) + sdpa out 2d + lse 4*4 + proj copy 2d
    attn = 4 * d + 2 * d + 6 * d + 8 + 2 * d + 16 + 2 * d
    # mlp: norm2 in 4d + cast 2d + 8 + up out 2*4d + gelu out 2*4d
    mlp = 4 * d + 2 * d + 8 + 8 * d + 8 * d
    assert layer_activation_bytes(cfg, 32) == {"attention": attn, "mlp": mlp, "total": attn + mlp} \
        == {"attention": 1048, "mlp": 1416, "total": 2464}
    head = 4 * d + 4 * d + 2 * d
    m = memory_estimate(cfg, 2, 32, "bfloat16", "none", 1, False)
    assert m["activations"] == 64 * (2 * 2464 + head) == 356_352
    assert m["logits"] == 64 * 100 * 14 == 89_600
    rc = memory_estimate(cfg, 2, 32, "bfloat16", "none", 1, True)  # keep 4d per layer + one layer rebuilt
    assert rc["activations"] == 64 * (2 * 4 * d + 2464 + head) == 231_424
    assert m["allocated"] == sum(v for k, v in m.items() if k not in ("allocated", "total", "overhead"))
    assert m["total"] == m["allocated"] + m["overhead"]


def test_recompute_reduces_activations_and_math_attention_costs_t_squared() -> None:
    cfg = model_config("gpt2-124m")
    full = memory_estimate(cfg, 8, 1024, recompute=0)["activations"]
    mlp_only = memory_estimate(cfg, 8, 1024, recompute=1)["activations"]
    blocks = memory_estimate(cfg, 8, 1024, recompute=2)["activations"]
    assert blocks < mlp_only < full and blocks < full / 3
    assert memory_estimate(cfg, 8, 1024, recompute=True)["activations"] == blocks
    assert flops_per_token(cfg, 1024, 2) > flops_per_token(cfg, 1024, 1) > flops_per_token(cfg, 1024)
    flash = layer_activation_bytes(cfg, 1024)["total"]
    assert layer_activation_bytes(cfg, 1024, attention="math")["total"] == flash + 2 * 2 * 12 * 1024


def test_fused_loss_head_is_smaller_than_full_logits(tmp_path: Path) -> None:
    cfg = model_config("gpt2-124m")
    plain = memory_estimate(cfg, 16, 1024)["logits"]
    fused = memory_estimate(cfg, 16, 1024, fused_loss=True)["logits"]
    assert plain == 16 * 1024 * (2 * 50304 + 12 * 50257)
    assert fused < plain / 3
    # the plan follows the trainer: plain loss unless asked; with --fused-loss it says so in the config
    assert "fused_loss" not in make_plan("h100").train
    plan = make_plan("h100", fused_loss=True)
    values = tomllib.loads(write_config(plan, tmp_path / "f.toml").read_text())
    assert from_dict(TrainConfig, values["train"]).fast.fused_loss == "on"
    assert plan.choice.memory["logits"] < make_plan("h100").choice.memory["logits"]


def test_micro_batch_is_monotone_in_memory() -> None:
    cfg = model_config("gpt2-124m")
    totals = [memory_estimate(cfg, b, 1024)["total"] for b in (1, 2, 4, 8, 16, 32)]
    assert all(a < b for a, b in zip(totals, totals[1:]))
    picks = [pick_micro_batch(cfg, 1024, gb * 1e9) for gb in (1, 4, 8, 16, 24, 40, 80, 192, 1000)]
    assert picks == sorted(picks) and picks[0] == 0 and picks[-1] == 64
    for gb, b in zip((4, 8, 16, 24, 40, 80, 192), picks[1:-1]):
        if b:  # the pick fits with 10% headroom and twice the pick does not
            assert memory_estimate(cfg, b, 1024)["total"] <= 0.9 * gb * 1e9
            assert b == 64 or memory_estimate(cfg, 2 * b, 1024)["total"] > 0.9 * gb * 1e9


def test_tokens_per_second_formula() -> None:
    cfg = model_config("gpt2-124m")
    gpu = get_gpu("h100")
    one = estimate(cfg, gpu, 1, 1024, 0.4, time_s=3600)
    assert one.tokens_per_s == pytest.approx(989e12 * 0.4 / flops_per_token(cfg, 1024))
    assert one.tokens_in_time == pytest.approx(one.tokens_per_s * 3600)
    assert estimate(cfg, gpu, 8, 1024, 0.4, time_s=3600).tokens_per_s == pytest.approx(8 * one.tokens_per_s)


def test_compute_optimal_gives_about_20_tokens_per_param() -> None:
    gpu = get_gpu("h100")
    cfg = dict(ladder("gpt2", 1024))["gpt2-124m"]
    # the time in which an H100 at 40% MFU trains gpt2-124m on exactly 20 tokens per parameter
    seconds = 20 * count_params(cfg) * flops_per_token(cfg, 1024) / (989e12 * 0.4)
    plan = make_plan("h100", 1, None, seconds, "compute-optimal")
    assert plan.choice.name == "gpt2-124m"
    assert plan.choice.tokens_in_time / plan.choice.params == pytest.approx(20, rel=1e-6)
    # a 4x longer budget moves to a bigger model, whose tokens/param is again the nearest to 20
    longer = make_plan(gpu, 1, None, 4 * seconds, "compute-optimal")
    assert longer.choice.params > plan.choice.params
    fitting = [c for c in longer.candidates if c.fits]
    assert longer.choice == min(fitting, key=lambda c: abs(math.log(c.tokens_per_param / 20)))


def test_mi300x_reference_case() -> None:
    """plan --gpu mi300x --gpus 1 --tokens 14.6B --time 24h, and the hand answer beside it."""
    co = make_plan("mi300x", 1, "14.6B", "24h", "compute-optimal")
    io = make_plan("mi300x", 1, "14.6B", "24h", "inference-optimal")
    assert co.choice.name == "gpt2-774m" and 10 < co.choice.tokens_per_param < 14
    assert io.choice.params < co.choice.params and io.choice.tokens_in_time > co.choice.tokens_in_time
    assert io.choice.epochs <= 4 and io.choice.tokens_per_param > 20
    assert co.train["total_batch_tokens"] == 2 ** 19 and co.train["dtype"] == "bfloat16"
    # Hand answer: 3B (48 x 2560) on 2M tokens x 11,500 steps = 24.1B tokens in 24h. One MI300X at 40%
    # MFU trains that model on < 2B tokens a day, so the hand answer needs > 12x the compute.
    three_b = make_plan("mi300x", 1, "14.6B", "24h", "fixed-params", params="3B")
    assert three_b.choice.name == "gpt2-48x2560"
    assert any("under-trained" in w for w in three_b.warnings) and not co.warnings
    assert 2 ** 21 * 11_500 / three_b.choice.tokens_in_time > 12
    # its 32 x 1024 micro-batch does not fit in 192 GB without recompute (eager loss head); with it, it does
    big = three_b.choice.cfg
    assert memory_estimate(big, 32, 1024)["total"] > 192e9
    assert memory_estimate(big, 32, 1024, recompute=2)["total"] < 0.9 * 192e9
    text = render(co)
    assert "gpt2-774m <" in text and "Recommendation (compute-optimal)" in text
    assert "C = gpus * peak * MFU * time" in explain(co)


def test_data_limit_warns_beyond_four_epochs() -> None:
    plan = make_plan("h100", 1, "1B", "24h", "fixed-params", params="124M")
    assert plan.choice.epochs > 4
    assert any("epochs" in w for w in plan.warnings)
    inf = make_plan("h100", 1, "1B", "24h", "inference-optimal")
    assert inf.choice.epochs <= 4 or not [c for c in inf.candidates if c.fits and c.epochs <= 4]


def test_config_round_trip(tmp_path: Path) -> None:
    plan = make_plan("mi300x", 1, "14.6B", "24h", "inference-optimal", family="llama", recompute=2, data_dir="data/x")
    path = write_config(plan, tmp_path / "plan.toml")
    values = tomllib.loads(path.read_text())
    mcfg = from_dict(ModelConfig, values["model"], str(path))
    assert mcfg == plan.choice.cfg
    tcfg = from_dict(TrainConfig, values["train"], str(path))
    assert tcfg.total_batch_tokens % (tcfg.batch_size * tcfg.seq_len) == 0
    assert tcfg.fast.recompute == 2 and tcfg.schedule.warmup_steps >= 1 and tcfg.budget == "24h"
    assert values["data"]["dir"] == "data/x"
    for key in ("budget", "batch_size", "total_batch_tokens", "seq_len", "lr", "min_lr_frac", "warmup_steps",
                "schedule", "weight_decay", "beta2", "grad_clip", "dtype", "compile"):
        assert key in values["train"]


def test_config_runs_with_budgetlm_train(tmp_path: Path, synth_data: Path) -> None:
    """The written file goes through `budgetlm train --config` unchanged (one step, tiny shape)."""
    from budgetlm.cli import main
    plan = make_plan("cpu", 1, None, "2m", tflops=0.05, mem_gb=2, seq_len=32, vocab_size=512)
    path = write_config(plan, tmp_path / "plan.toml")
    rc = main(["train", "--config", str(path), "--data", str(synth_data), "--out", str(tmp_path / "run"),
               "--stop-after-steps", "1", "--no-progress"])
    assert rc == 0 and (tmp_path / "run" / "summary.json").is_file()


@pytest.mark.parametrize("kwargs, flag", [
    ({"gpu": "v100"}, "--gpu"),
    ({"gpu": "custom"}, "--tflops"),
    ({"tokens": "lots"}, "--tokens"),
    ({"tokens": "-5B"}, "--tokens"),
    ({"time_budget": "tomorrow"}, "--time"),
    ({"time_budget": "1000-steps"}, "--time"),
    ({"goal": "fixed-params"}, "--params"),
    ({"goal": "fixed-params", "params": "big"}, "--params"),
    ({"goal": "cheapest"}, "--goal"),
    ({"n_gpus": 0}, "--gpus"),
    ({"mfu": 1.5}, "--mfu"),
    ({"recompute": 3}, "--recompute"),
    ({"family": "t5"}, "--family"),
])
def test_bad_input_names_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(BudgetLMError, match=flag):
        make_plan(**kwargs)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="budgetlm")
    register(parser.add_subparsers(dest="verb"))
    return parser.parse_args(argv)


def test_cli_verb_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = _cli(["plan", "--gpu", "mi300x", "--gpus", "1", "--tokens", "14.6B", "--time", "24h", "--explain",
                 "--out", str(tmp_path / "p.toml")])
    args.fn(args)
    out = capsys.readouterr().out
    assert "gpt2-774m <" in out and "Formulas:" in out and (tmp_path / "p.toml").is_file()
    bad = _cli(["plan", "--gpu", "tpu-v9"])
    with pytest.raises(BudgetLMError, match="--gpu"):
        bad.fn(bad)
    bad = _cli(["plan", "--tokens", "14.6Q"])
    with pytest.raises(BudgetLMError, match="--tokens"):
        bad.fn(bad)


def test_peak_flops_table() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("AMD Instinct MI300X") == pytest.approx(1307.4e12)
    assert peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA GeForce RTX 4090") == pytest.approx(165.2e12)
    assert peak_flops("h100") == 989e12
    assert peak_flops("Some Future Chip") is None
    assert get_gpu("custom", tflops=100, mem_gb=40).mem_bytes == 40e9
    assert get_gpu("h100", mem_gb=94).mem_gb == 94  # override a table entry


def test_measure_tiny_on_cpu() -> None:
    r = measure_throughput(SMALL["nano"], 2, 16, seconds=0.05, device=torch.device("cpu"))
    assert r["tokens_per_s"] > 0 and r["steps"] >= 1
    plan = make_plan("custom", 1, None, "1h", tflops=1, mem_gb=2, seq_len=16, vocab_size=256)
    rows = measure(plan, seconds=0.05, max_step_s=0.5, log=lambda *_: None, limit=1)
    assert len(rows) == 1 and rows[0]["model"] == "gpt2-4x256" and rows[0]["measured_tok_s"] > 0
    assert rows[0]["error"] == pytest.approx(rows[0]["estimated_tok_s"] / rows[0]["measured_tok_s"] - 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_checks_say_they_need_cuda() -> None:
    with pytest.raises(BudgetLMError, match="CUDA"):
        measure_peak_memory(SMALL["nano"], 2, 16)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plan_check.py")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "needs CUDA" in proc.stderr


def test_plan_is_a_dataclass_with_the_choice_among_candidates() -> None:
    plan = make_plan("rtx4090", 1, "2B", "12h", "compute-optimal", family="llama")
    assert isinstance(plan, Plan) and plan.choice in plan.candidates and plan.choice.fits
    assert plan.train["batch_size"] == plan.choice.micro_batch

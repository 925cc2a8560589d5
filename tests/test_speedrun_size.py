"""Speedrun sizing from measured throughput (budgetlm.speedrun.sizing): fast, CPU only, on fake calibrations
except the one test that times the real CPU calibration."""

from __future__ import annotations

import json
import lzma
import time

import pytest
import torch

from budgetlm.errors import BudgetLMError
from budgetlm.plan.hardware import peak_flops
from budgetlm.plan.memory import OVERHEAD_BYTES, flops_per_token, memory_estimate
from budgetlm.plan.planner import chinchilla_loss
from budgetlm.speedrun.pipeline import _apply_overrides, _sized_setup, choose_setup
from budgetlm.speedrun.sizing import (GPU_REF_EAGER_MFU, Calibration, calibrate, calibration_seconds,
                                      estimate_unique_tokens, size_model)
from budgetlm.train.trainer import Clock

# The CPU study's machine: 3x96 SwiGLU trained at ~36k tokens/s (benchmarks/HISTORY.md section 6).
STUDY_CPU = Calibration("cpu", "cpu", 36_000 * 2_716_992, 12e9, 1.0, "3x96 eager fp32 64x64", 36_000)
H200 = Calibration("cuda", "NVIDIA H200", peak_flops("NVIDIA H200") * GPU_REF_EAGER_MFU, 141e9, 3.0,
                   "12x768 eager bf16 16x1024", 0.0)
TINYSTORIES_SHARED = 1.07e6  # unique bpe:1024 tokens of ../shared's stories.txt (research_study.md)


def test_sizing_grows_with_the_budget():
    for cal, budgets in ((STUDY_CPU, (300, 1800, 3600)), (H200, (120, 600, 3600))):
        params = [size_model(s, cal).choice.params for s in budgets]
        assert params[0] < params[1] < params[2], (cal.device, params)


def test_gpu_sizes_for_an_h200_are_in_a_sane_range():
    ranges = {120: (4e6, 30e6), 600: (10e6, 70e6), 3600: (40e6, 130e6)}
    for seconds, (lo, hi) in ranges.items():
        for unique in (None, 50e6):  # hub-sized data, or a few Gutenberg parts
            s = size_model(seconds, H200, unique)
            c = s.choice
            assert lo <= c.params <= hi, (seconds, unique, c.name, c.params)
            assert s.tokenizer.startswith("bpe:") and int(s.tokenizer[4:]) >= 8192
            assert c.seq_len in (512, 1024) and 1e-4 < c.lr <= 3e-3
            # the predicted speed follows the measured MFU curve: between the tiny model's and GPT-2's
            assert 0.5e6 < c.tokens_per_s < 5e6
            assert c.cfg.n_embd % c.cfg.n_head == 0 and c.cfg.n_embd // c.cfg.n_head == 64
    # compile time comes out of the training time on CUDA, not on CPU
    gpu = size_model(120, H200)
    assert gpu.facts["compile_seconds_estimate"] >= 30
    assert gpu.facts["train_seconds"] < 0.9 * (120 - 30) + 1


def test_sizing_respects_a_memory_limit():
    small = Calibration("cuda", "small GPU", H200.flops_per_s, 4e9)
    s = size_model(3600, small)
    for c in s.candidates:
        est = memory_estimate(c.cfg, c.micro_batch, c.seq_len, "bfloat16", overhead=OVERHEAD_BYTES,
                              ce_kernel=True)["total"]
        assert est <= 0.9 * small.mem_bytes
    big = {c.name: c.micro_batch for c in size_model(3600, H200).candidates}
    assert any(c.micro_batch < big[c.name] for c in s.candidates)  # the limit cut some batches
    assert all(c.micro_batch * c.seq_len * c.accum == big[c.name] * c.seq_len *
               next(b for b in size_model(3600, H200).candidates if b.name == c.name).accum for c in s.candidates)
    with pytest.raises(BudgetLMError, match="no model of the ladder fits"):
        size_model(600, Calibration("cuda", "tiny GPU", H200.flops_per_s, 0.5e9))


def test_few_unique_tokens_prefer_smaller_models():
    assert size_model(600, H200, 20e6).choice.params < size_model(600, H200, None).choice.params
    assert size_model(3600, STUDY_CPU, TINYSTORIES_SHARED).choice.params < size_model(3600, STUDY_CPU).choice.params
    # the parameter discount is what does it: without it, scarce data pushes towards bigger models
    big, small, unique = 60e6, 14e6, 20e6
    plain = (chinchilla_loss(big, 0.4e9, unique, fit="besiroglu")
             - chinchilla_loss(small, 1.1e9, unique, fit="besiroglu"))
    disc = (chinchilla_loss(big, 0.4e9, unique, fit="besiroglu", repeated_params=True)
            - chinchilla_loss(small, 1.1e9, unique, fit="besiroglu", repeated_params=True))
    assert disc > plain


def test_chinchilla_loss_default_is_unchanged():
    # the planner's default: Hoffmann's fit with the data discount only
    assert chinchilla_loss(1e8, 2e9) == pytest.approx(1.69 + 406.4 / 1e8 ** 0.34 + 410.7 / 2e9 ** 0.28)
    assert chinchilla_loss(1e8, 2e9, 1e9) > chinchilla_loss(1e8, 2e9)


@pytest.mark.parametrize("unique", [None, TINYSTORIES_SHARED, 20e6])
def test_cpu_5m_choice_is_todays_default(unique):
    """The measured best 5-minute CPU setup (HISTORY.md sections 1 and 6) is what the sizing picks."""
    static = choose_setup("5m", "cpu")
    sized = choose_setup("5m", "cpu", calibration=STUDY_CPU, unique_tokens=unique, seconds_left=290,
                         log=lambda *_: None)
    keys = ("n_layer", "n_head", "n_embd", "mlp", "norm", "pos", "block_size", "n_kv_head")
    assert {k: getattr(sized.model, k) for k in keys} == {k: getattr(static.model, k) for k in keys}
    assert (sized.train.batch_size, sized.train.seq_len, sized.train.optim.lr, sized.train.total_batch_tokens) == \
           (static.train.batch_size, static.train.seq_len, static.train.optim.lr, static.train.total_batch_tokens) == \
           (64, 64, 3e-3, None)
    assert sized.tokenizer == static.tokenizer == "bpe:1024"
    assert sized.sizing["choice"]["name"] == "3x96" and static.sizing is None


def test_the_explanation_names_the_choice_and_is_json():
    lines = []
    setup = choose_setup("30m", "cpu", calibration=STUDY_CPU, unique_tokens=5e6, log=lines.append)
    facts = json.loads(json.dumps(setup.sizing))  # goes into summary.json as is
    name = facts["choice"]["name"]
    assert name != "3x96" and f"{setup.model.n_layer}x{setup.model.n_embd}" == name
    size_line = next(line for line in lines if line.startswith("size: "))
    assert size_line.startswith(f"size: {name} (") and "tok/s x" in size_line and "epochs" in size_line
    assert "Chinchilla loss" in size_line and "3x96" in size_line  # the runner-up sizes are named
    assert facts["unique_tokens"] == 5e6 and len(facts["candidates"]) >= 6
    assert any(line.startswith("sizing: calibrated") for line in lines)


def test_flags_win_over_the_sizing():
    setup = choose_setup("10m", "cpu", calibration=STUDY_CPU, log=lambda *_: None)
    setup.train.total_batch_tokens = 8192  # as a sized accumulation would set it
    _apply_overrides(setup, {"n_layer": 2, "batch_size": 16, "lr": None})
    assert setup.model.n_layer == 2 and setup.train.batch_size == 16
    assert setup.train.total_batch_tokens is None  # no stale accumulation for a changed batch
    assert setup.sizing["overridden_by_flags"] == {"batch_size": 16, "n_layer": 2}
    with pytest.raises(BudgetLMError, match="unknown override"):
        _apply_overrides(setup, {"colour": 1})


def test_static_sizing_and_bad_mode():
    clock = Clock()
    assert _sized_setup("5m", "cpu", None, "static", "synth", None, clock, print).sizing is None
    assert _sized_setup("100-steps", "cpu", None, "measured", "synth", None, clock, print).sizing is None
    with pytest.raises(BudgetLMError, match="--sizing"):
        _sized_setup("5m", "cpu", None, "bogus", "synth", None, clock, print)


def test_unique_token_estimate(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x" * 4000)
    assert estimate_unique_tokens(str(tmp_path / "a.txt")) == 1000
    with lzma.open(tmp_path / "b.txt.xz", "wb") as f:
        f.write(b"y" * 1000)
    xz = (tmp_path / "b.txt.xz").stat().st_size
    assert estimate_unique_tokens(str(tmp_path)) == pytest.approx(1000 + xz * 3.2 / 4)
    assert estimate_unique_tokens("synth") is None and estimate_unique_tokens(str(tmp_path / "missing")) is None


def test_cpu_calibration_is_a_small_share_of_the_budget():
    budget = 300.0
    assert calibration_seconds(budget) <= 0.01 * budget
    t = time.perf_counter()
    cal = calibrate(torch.device("cpu"), calibration_seconds(budget))
    wall = time.perf_counter() - t
    assert wall < 0.03 * budget and cal.seconds == pytest.approx(wall, abs=0.5)
    from budgetlm.config import ModelConfig
    ref = ModelConfig(n_layer=3, n_head=3, n_embd=96, mlp="swiglu", vocab_size=1024, block_size=64)
    assert cal.flops_per_s == pytest.approx(cal.ref_tokens_per_s * flops_per_token(ref, 64))
    assert cal.flops_per_s > 0 and cal.mem_bytes > 0


def test_gpu_setup_takes_the_sized_shape_batch_and_tokenizer(monkeypatch):
    import budgetlm.speedrun.pipeline as sr
    monkeypatch.setattr(sr, "pick_device", lambda name="auto": torch.device("cuda"))  # no GPU needed: arithmetic only
    for budget, unique in (("2m", 50e6), ("10m", 50e6), ("1h", None)):
        setup = sr.choose_setup(budget, "cuda", calibration=H200, unique_tokens=unique, log=lambda *_: None)
        c = setup.sizing["choice"]
        m, t = setup.model, setup.train
        assert f"{m.n_layer}x{m.n_embd}" == c["name"] and m.n_embd // m.n_head == 64 and m.vocab_multiple == 64
        assert (t.batch_size, t.seq_len, t.optim.lr) == (c["micro_batch"], c["seq_len"], c["lr"])
        assert (t.total_batch_tokens or t.batch_size * t.seq_len) == c["micro_batch"] * c["seq_len"] * c["accum"]
        assert m.block_size >= t.seq_len and setup.tokenizer == setup.sizing["tokenizer"]
    static = sr.choose_setup("2m", "cuda")
    assert static.sizing is None and static.tokenizer == "bpe:8192"  # --sizing static: the old preset


def test_a_given_tokenizer_is_kept_and_sizes_the_head():
    s = size_model(300, STUDY_CPU, tokenizer="bpe:4096")
    assert s.tokenizer == "bpe:4096" and {c.cfg.vocab_size for c in s.candidates} == {4096}
    # a 4x larger head costs tokens/s: every candidate is predicted slower than with bpe:1024
    default = {c.name: c.tokens_per_s for c in size_model(300, STUDY_CPU).candidates}
    assert all(c.tokens_per_s < default[c.name] for c in s.candidates)


def test_short_cpu_budgets_skip_the_calibration(monkeypatch):
    from budgetlm.speedrun.sizing import calibration_pays
    assert not calibration_pays(25) and not calibration_pays(60, 1e6)
    assert calibration_pays(300) and calibration_pays(1800, 1e6)
    import budgetlm.speedrun.pipeline as sr
    monkeypatch.setattr(sr, "calibrate", lambda *a: pytest.fail("a 25 s CPU budget must not calibrate"))
    lines = []
    setup = _sized_setup("25s", "cpu", None, "measured", "synth", None, Clock(), lines.append)
    static = choose_setup("25s", "cpu")
    assert (setup.model, setup.train, setup.tokenizer) == (static.model, static.train, static.tokenizer)
    assert setup.sizing["choice"]["name"] == "3x96" and "no calibration" in setup.sizing["method"]
    assert lines[0].startswith("size: 3x96 (") and "too short" in lines[0]


def test_timed_steps_stop_at_the_wall_clock_cap():
    from budgetlm.config import ModelConfig
    from budgetlm.plan.memory import _train_steps
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16)
    t = time.perf_counter()
    r = _train_steps(cfg, 2, 16, torch.device("cpu"), None, 60.0, torch.float32, max_wall_s=0.2)
    assert time.perf_counter() - t < 10 and r["steps"] >= 1  # not the 60 s asked for

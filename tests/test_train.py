import json

import pytest
import torch

from budgetlm.config import TrainConfig, model_config
from budgetlm.errors import BudgetLMError
from budgetlm.train import checkpoint as ckpt_mod
from budgetlm.train.checkpoint import resolve_checkpoint
from budgetlm.train.trainer import train

QUIET = dict(log=lambda *_: None)


def tiny_model():
    return model_config(n_layer=2, n_head=2, n_embd=32)


def cfg(out, **kw):
    base = dict(budget="12-steps", batch_size=4, seq_len=32, lr=3e-3, out_dir=str(out), progress=False,
                log_every=1, final_eval_tokens=2048, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def test_exact_resume(synth_data, tmp_path):
    """N steps straight == N/2 steps, stop, resume, N/2 more: identical losses and weights."""
    straight = train(tiny_model(), cfg(tmp_path / "a", total_batch_tokens=256), synth_data, **QUIET)
    train(tiny_model(), cfg(tmp_path / "b", total_batch_tokens=256), synth_data, stop_after_steps=6, **QUIET)
    resumed = train(tiny_model(), cfg(tmp_path / "b", total_batch_tokens=256), synth_data,
                    resume=str(tmp_path / "b"), **QUIET)
    assert resumed.steps == straight.steps == 12
    assert resumed.extra["losses"] == straight.extra["losses"]  # bit-for-bit, fp32 on CPU
    assert resumed.val_loss == straight.val_loss
    wa = ckpt_mod.load_checkpoint(tmp_path / "a")[2]
    wb = ckpt_mod.load_checkpoint(tmp_path / "b")[2]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_lowers_loss(synth_data, tmp_path):
    info = train(tiny_model(), cfg(tmp_path, budget="60-steps", lr=1e-2), synth_data, **QUIET)
    losses = info.extra["losses"]
    assert sum(losses[-5:]) / 5 < losses[0] - 0.7
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["val_bpb"] == pytest.approx(info.val_bpb)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["final"] and len([r for r in rows if "loss" in r]) == 60


def test_time_budget_ends_inside_budget(synth_data, tmp_path):
    info = train(tiny_model(), cfg(tmp_path, budget="4s"), synth_data, **QUIET)
    assert info.steps > 5
    assert info.extra["elapsed"] <= 4.0 + 0.75  # final eval + checkpoint are inside the accounting


def test_token_budget(synth_data, tmp_path):
    info = train(tiny_model(), cfg(tmp_path, budget="1280-tokens"), synth_data, **QUIET)
    assert info.tokens_seen == 1280 and info.steps == 10


def test_interrupted_checkpoint_is_atomic(synth_data, tmp_path, monkeypatch):
    """A crash while writing a checkpoint leaves the previous one intact and loadable."""
    train(tiny_model(), cfg(tmp_path, budget="4-steps"), synth_data, **QUIET)
    before = resolve_checkpoint(tmp_path)

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ckpt_mod, "save_file", boom)  # the state is safetensors + JSON now, no torch.save
    with pytest.raises(BudgetLMError, match="could not write the checkpoint"):
        train(tiny_model(), cfg(tmp_path, budget="8-steps", checkpoint_every=2), synth_data, **QUIET)
    assert resolve_checkpoint(tmp_path) == before
    ckpt_mod.load_checkpoint(tmp_path)  # still complete


def test_keep_last_checkpoints(synth_data, tmp_path):
    train(tiny_model(), cfg(tmp_path, budget="8-steps", checkpoint_every=2), synth_data, **QUIET)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_00000006", "step_00000008"]
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))


def test_resume_with_mismatched_model(synth_data, tmp_path):
    train(tiny_model(), cfg(tmp_path, budget="4-steps"), synth_data, **QUIET)
    other = model_config(n_layer=3, n_head=2, n_embd=32)
    with pytest.raises(BudgetLMError, match="differs in n_layer"):
        train(other, cfg(tmp_path, budget="4-steps"), synth_data, resume=str(tmp_path), **QUIET)


def test_resume_with_mismatched_tokenizer(synth_data, tmp_path):
    from budgetlm.data.prepare import prepare
    train(tiny_model(), cfg(tmp_path / "run", budget="4-steps"), synth_data, **QUIET)
    other = tmp_path / "other"
    prepare("synth", "bpe:512", other, max_tokens=20_000, seed=5, log=lambda *_: None)
    with pytest.raises(BudgetLMError, match="tokenizer .* does not match"):
        train(tiny_model(), cfg(tmp_path / "run", budget="4-steps"), other, resume=str(tmp_path / "run"), **QUIET)


def test_budget_too_small(synth_data, tmp_path):
    with pytest.raises(BudgetLMError, match="too small to take one training step"):
        train(tiny_model(), cfg(tmp_path, budget="0.01s"), synth_data, **QUIET)


def test_resume_without_checkpoint(synth_data, tmp_path):
    with pytest.raises(BudgetLMError, match="no checkpoint found"):
        train(tiny_model(), cfg(tmp_path, budget="4-steps"), synth_data, resume=str(tmp_path), **QUIET)


def test_context_windows_left_pad():
    from budgetlm.train.distill import context_windows
    x = torch.tensor([[5, 6, 7]])
    assert context_windows(x, 3, 0).tolist() == [[0, 0, 5], [0, 5, 6], [5, 6, 7]]


def test_distillation_pulls_student_toward_teacher(synth_data, tmp_path):
    """With alpha=1 the student learns only from the n-gram: its loss must still fall (the
    teacher knows the data), and the KL hook must actually be called for `distill_steps` steps."""
    from budgetlm.train import distill
    calls = []
    orig = distill.NgramDistillation.__call__

    def spy(self, step, *a):
        out = orig(self, step, *a)
        calls.append(out is not None)
        return out
    distill.NgramDistillation.__call__ = spy
    try:
        info = train(tiny_model(), cfg(tmp_path, budget="30-steps", lr=1e-2, teacher="ngram:3", distill_steps=20,
                                       distill_alpha=1.0), synth_data, **QUIET)
    finally:
        distill.NgramDistillation.__call__ = orig
    assert calls[:20] == [True] * 20 and calls[20:] == [False] * 10
    losses = info.extra["losses"]
    assert sum(losses[15:20]) / 5 < losses[0] - 0.5


def test_bad_teacher_spec(synth_data, tmp_path):
    with pytest.raises(BudgetLMError, match="--teacher 'kenlm:4'"):
        train(tiny_model(), cfg(tmp_path, teacher="kenlm:4"), synth_data, **QUIET)


def test_mfu_logged_in_both_conventions(synth_data, tmp_path, monkeypatch):
    # On a device with a known peak the metrics carry MFU with causal attention FLOPs and with the
    # whole T x T square (nanoGPT's/TinyLlama's convention), which must be larger by 6*L*d*T/token.
    from budgetlm.train import trainer
    monkeypatch.setattr(trainer, "_device_peak", lambda device: 1e12)
    info = train(tiny_model(), cfg(tmp_path, budget="3-steps"), synth_data, **QUIET)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"mfu"' in x]
    assert rows and all(r["mfu_full_attn"] > r["mfu"] > 0 for r in rows)
    m = tiny_model()
    extra = 6 * m.n_layer * m.n_embd * 32
    fpt = info.extra["flops_per_token"]
    assert info.extra["mfu_full_attn"] / info.extra["mfu"] == pytest.approx((fpt + extra) / fpt)


@pytest.mark.gpu
def test_small_model_trains_with_cuda_graphs_and_accumulation(synth_data, tmp_path):
    """auto picks CUDA graphs for a small model on one GPU, with 2 micro-batches per step too
    (their replays once overwrote each other's gradients); the run matches one without graphs."""
    runs = {g: train(tiny_model(), cfg(tmp_path / g, budget="30-steps", total_batch_tokens=256, cuda_graphs=g,
                                     device="cuda"), synth_data, **QUIET) for g in ("auto", "off")}
    on, off = runs["auto"], runs["off"]
    assert on.extra["cuda_graphs"] is True and off.extra["cuda_graphs"] is False
    assert on.extra["accum"] == 2
    assert on.extra["losses"][-1] < on.extra["losses"][0]
    assert on.val_loss == pytest.approx(off.val_loss, rel=2e-2)

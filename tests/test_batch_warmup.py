"""--batch-warmup-frac: gradient accumulation ramps from one micro-batch to the full batch over the
first fraction of the budget; off, the step is today's; resume stays exact; a run without
accumulation is told why the switch cannot act."""

import pytest
import torch

from budgetlm.config import TrainConfig, model_config
from budgetlm.errors import BudgetLMError
from budgetlm.train import checkpoint as ckpt_mod
from budgetlm.train.budget import accum_at
from budgetlm.train.trainer import train

QUIET = dict(log=lambda *_: None)
MICRO = 4 * 32  # batch_size x seq_len below


def test_accum_ramps_linearly_then_holds():
    assert [accum_at(f, 4, 0.5) for f in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.9)] == [1, 1, 2, 3, 4, 4, 4]
    assert [accum_at(f, 4, 0.0) for f in (0.0, 0.5)] == [4, 4]  # off: always the full batch
    assert accum_at(0.99, 8, 1.0) == 8


def cfg(out, **kw):
    base = dict(budget="12-steps", batch_size=4, seq_len=32, lr=3e-3, out_dir=str(out), progress=False,
                log_every=1, final_eval_tokens=2048, seed=7, total_batch_tokens=4 * MICRO, batch_warmup_frac=0.5)
    base.update(kw)
    return TrainConfig(**base)


def model():
    return model_config(n_layer=2, n_head=2, n_embd=32)


def test_tokens_follow_the_ramp(synth_data, tmp_path):
    info = train(model(), cfg(tmp_path / "a"), synth_data, **QUIET)
    # steps at fractions 0, 1/12, ..., 11/12 of a 12-step budget: accum 1,1,2,2,3,4 then 4 x 6
    assert info.tokens_seen == MICRO * (1 + 1 + 2 + 2 + 3 + 4 + 4 * 6)
    off = train(model(), cfg(tmp_path / "b", batch_warmup_frac=0.0), synth_data, **QUIET)
    assert off.tokens_seen == MICRO * 4 * 12
    assert info.extra["losses"][0] != off.extra["losses"][0]  # the first step saw one micro-batch, not four


def test_exact_resume_inside_the_ramp(synth_data, tmp_path):
    straight = train(model(), cfg(tmp_path / "a"), synth_data, **QUIET)
    train(model(), cfg(tmp_path / "b"), synth_data, stop_after_steps=3, **QUIET)  # stops mid-ramp
    resumed = train(model(), cfg(tmp_path / "b"), synth_data, resume=str(tmp_path / "b"), **QUIET)
    assert resumed.tokens_seen == straight.tokens_seen
    assert resumed.extra["losses"] == straight.extra["losses"]
    wa, wb = ckpt_mod.load_checkpoint(tmp_path / "a")[2], ckpt_mod.load_checkpoint(tmp_path / "b")[2]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_refused_without_accumulation(synth_data, tmp_path):
    with pytest.raises(BudgetLMError, match="--batch-warmup-frac.*--total-batch"):
        train(model(), cfg(tmp_path / "a", total_batch_tokens=MICRO), synth_data, **QUIET)

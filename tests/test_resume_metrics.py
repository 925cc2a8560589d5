"""metrics.jsonl after a resume holds each step once; data without a validation split is
refused before training, not after it."""

import json

import pytest

from budgetlm.config import TrainConfig, model_config
from budgetlm.errors import BudgetLMError
from budgetlm.train.trainer import train

QUIET = dict(log=lambda *_: None)


def tiny_model():
    return model_config(n_layer=2, n_head=2, n_embd=32)


def cfg(out, **kw):
    return TrainConfig(**{**dict(budget="10-steps", batch_size=4, seq_len=32, lr=3e-3, out_dir=str(out),
                                 progress=False, log_every=1, final_eval_tokens=1024, seed=7), **kw})


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_a_crash_logs_each_step_once(synth_data, tmp_path):
    """A crash at step 7 with the last checkpoint at step 4: the resumed run redoes steps 5-7,
    and their rows from the crashed run (and a torn last line) must not stay beside the new ones."""
    def crash_in_step_7(step, *_):
        if step == 6:
            raise RuntimeError("node lost")
        return None
    with pytest.raises(RuntimeError, match="node lost"):
        train(tiny_model(), cfg(tmp_path, checkpoint_every=4, eval_every=2, eval_tokens=256), synth_data,
              loss_hook=crash_in_step_7, **QUIET)
    assert [r["step"] for r in _rows(tmp_path) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "tok')  # killed mid-write
    train(tiny_model(), cfg(tmp_path, checkpoint_every=4, eval_every=2, eval_tokens=256), synth_data,
          resume=str(tmp_path), **QUIET)
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 11))
    assert [r["step"] for r in rows if "val_loss" in r and not r.get("final")] == [2, 4, 6, 8, 10]
    assert rows[-1]["final"] and rows[-1]["step"] == 10
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_no_validation_split_is_refused_before_training(tmp_path):
    from budgetlm.data.prepare import prepare
    from budgetlm.data.synth import iter_stories
    stories = tmp_path / "stories.jsonl"  # a source without its own val split: --val-frac decides
    with open(stories, "w") as f:
        for _, text in zip(range(300), iter_stories(0)):
            f.write(json.dumps({"text": text}) + "\n")
    data = tmp_path / "data"
    prepare(str(stories), "bpe:512", data, val_frac=0.0, log=lambda *_: None)
    out = tmp_path / "run"
    with pytest.raises(BudgetLMError, match=rf"{data}: the val split has 0 tokens; .* --val-frac above 0"):
        train(tiny_model(), cfg(out), data, **QUIET)
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()  # nothing trained, nothing lost


@pytest.mark.gpu
def test_losses_read_back_late_are_counted_once(synth_data, tmp_path):
    """On CUDA the losses of steps after the last log line are read back at the end; they were
    added twice (after the loop and again in the final checkpoint)."""
    info = train(tiny_model(), cfg(tmp_path, budget="7-steps", log_every=4, device="cuda"), synth_data, **QUIET)
    assert len(info.extra["losses"]) == 7

"""Metric sinks (metrics.jsonl, TensorBoard, W&B offline), periodic validation over a time budget,
and the compile / first-step timings in summary.json."""

import importlib.machinery
import json
import sys
import types

import pytest

from budgetlm.cli import main
from budgetlm.config import TrainConfig, model_config
from budgetlm.errors import BudgetLMError
from budgetlm.train import sinks as sinks_mod
from budgetlm.train.sinks import open_sinks, parse_log_to, scalars
from budgetlm.train.throughput import measured_compile_seconds
from budgetlm.train.trainer import train

QUIET = dict(log=lambda *_: None)


def tiny_cfg(out, **kw):
    base = dict(budget="3s", batch_size=4, seq_len=32, lr=3e-3, out_dir=str(out), progress=False, log_every=1,
                final_eval_tokens=2048, seed=7, compile="off", threads=1)
    base.update(kw)
    return TrainConfig(**base)


def rows_of(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def time_run(synth_data, tmp_path_factory):
    """One 3-second run with 5 eval points, shared by the tests below (each would otherwise pay 3 s)."""
    out = tmp_path_factory.mktemp("time_run")
    info = train(model_config(n_layer=2, n_head=2, n_embd=32), tiny_cfg(out, eval_points=5), synth_data, **QUIET)
    return out, info


def test_time_budget_gets_periodic_bounded_evals_and_ends_on_time(time_run):
    out, info = time_run
    rows = rows_of(out)
    val = [r for r in rows if "val_loss" in r and not r.get("final")]
    # eval points at 20/40/60/80% of the budget; the 100% point is the final eval
    assert 2 <= len(val) <= 4, [r["frac"] for r in rows if "frac" in r][-3:]  # fewer only if evals run slow
    assert [r["step"] for r in val] == sorted({r["step"] for r in val})
    assert all(r["val_tokens"] < TrainConfig().eval.eval_tokens for r in val)  # sized to a small share of 3 s
    assert all(r["val_tokens"] % 32 == 0 for r in val)  # whole sequences (whole micro-batches when compiled)
    assert rows[-1]["final"] and rows[-1]["val_tokens"] == 2048
    assert info.extra["elapsed"] <= 3.0 + 0.75


def test_slow_evals_mean_fewer_points_not_a_late_run(synth_data, tmp_path, monkeypatch):
    """Evals that cost more than the periodic share (here: 0.2 s each, 1% of 2 s is 0.02 s) are skipped."""
    import time
    from budgetlm.train import evaluator

    def slow(*a, **k):
        time.sleep(0.2)
        return real(*a, **k)
    real = evaluator.evaluate
    monkeypatch.setattr(evaluator, "evaluate", slow)
    info = train(model_config(n_layer=1, n_head=2, n_embd=16), tiny_cfg(tmp_path, budget="2s", log_to="jsonl"),
                 synth_data, **QUIET)
    assert [r["step"] for r in rows_of(tmp_path) if "val_loss" in r] == [info.steps]  # the final eval only
    assert info.extra["elapsed"] <= 2.0 + 0.75


def test_tensorboard_scalars_match_metrics_jsonl(time_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, _ = time_run
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    expected: dict[str, list] = {}
    for r in rows_of(out):
        for k, v in scalars(r).items():
            expected.setdefault(k, []).append((r["step"], v))
            if k in sinks_mod.TOKEN_CURVES:
                expected.setdefault(f"by_tokens/{k}", []).append((r["tokens"], v))
    assert {"loss", "lr", "tok_per_s", "grad_norm", "val_loss", "val_bpb", "by_tokens/val_bpb"} <= set(expected)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), tag  # float32 in events


def test_first_step_time_in_summary(time_run):
    out, info = time_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile_s"] is None  # compile off
    assert 0 < summary["first_step_s"] < min(info.train_seconds, 3.0)
    # The steady rate leaves out evals (this run has periodic ones) and data waits: at least the
    # end-to-end rate, and not above what the step times alone allow.
    assert summary["steady_tokens_per_s"] >= summary["tokens_per_s"] * 0.98


def test_plot_reads_the_richer_metrics(time_run, tmp_path):
    out, _ = time_run
    assert main(["plot", str(out), "--out", str(tmp_path / "p.png")]) == 0
    from budgetlm.report.plot import load_run
    assert len(load_run(out)["val"]) >= 3 and (tmp_path / "p.png").stat().st_size > 10_000


def test_step_budget_keeps_its_single_final_eval(synth_data, tmp_path):
    info = train(model_config(n_layer=1, n_head=2, n_embd=16), tiny_cfg(tmp_path, budget="4-steps", log_to="jsonl"),
                 synth_data, **QUIET)
    rows = rows_of(tmp_path)
    assert info.steps == 4 and [r["step"] for r in rows if "val_loss" in r] == [4] and rows[-1]["final"]
    assert not (tmp_path / "tensorboard").exists()  # --log-to jsonl: no event files
    assert json.loads((tmp_path / "summary.json").read_text())["first_step_s"] > 0


def test_compile_seconds_is_warmup_beyond_a_steady_step():
    times = [9.0, 2.5, 1.5] + [1.0, 1.0, 1.2, 0.8, 1.0]
    assert measured_compile_seconds(times, True) == pytest.approx(8.0 + 1.5 + 0.5)
    assert measured_compile_seconds(times, False) is None
    assert measured_compile_seconds([9.0, 2.0], True) == 9.0  # no steady steps: the first step's whole time
    assert measured_compile_seconds([], True) is None


def test_log_to_parsing_and_missing_packages(tmp_path, monkeypatch):
    assert parse_log_to(None) == (["jsonl", "tensorboard"], False)
    assert parse_log_to("wandb,tensorboard") == (["jsonl", "wandb", "tensorboard"], True)
    with pytest.raises(BudgetLMError, match="--log-to: unknown sink.*mlflow"):
        parse_log_to("jsonl,mlflow")
    monkeypatch.setattr(sinks_mod, "_available", lambda name: False)
    notes = []
    s = open_sinks(tmp_path, "tensorboard,wandb", log=notes.append)
    s.log({"step": 1, "tokens": 8, "loss": 2.0})
    s.close()
    assert len(notes) == 2 and "'tensorboard' package is not installed" in notes[0]
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "tokens": 8, "loss": 2.0}
    notes.clear()
    (tmp_path / "b").mkdir()
    open_sinks(tmp_path / "b", None, log=notes.append).close()
    assert notes == ["note: --log-to auto: the 'tensorboard' package is not installed; no tensorboard logs "
                     "(metrics.jsonl is written as always)"]


def test_wandb_sink_is_offline_and_resumes_the_same_run(tmp_path, monkeypatch):
    calls = []

    class Run:
        def define_metric(self, *a, **k):
            pass

        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.util = types.SimpleNamespace(generate_id=lambda: "abc123")
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    s = open_sinks(tmp_path, "wandb")
    s.log({"step": 3, "tokens": 96, "loss": 2.5, "final": True, "val_bpb": 1.25})
    s.close()
    init = calls[0][1]
    assert init["mode"] == "offline" and init["id"] == "abc123" and init["dir"] == str(tmp_path)
    assert calls[1] == ("log", {"tokens": 96, "loss": 2.5, "val_bpb": 1.25, "by_tokens/loss": 2.5,
                                "by_tokens/val_bpb": 1.25}, 3)
    fake.util.generate_id = lambda: "other"
    open_sinks(tmp_path, "wandb").close()
    assert calls[-2][1]["id"] == "abc123"  # the id file in the run folder: a resumed run continues


def test_eval_points_schedule_and_share():
    from budgetlm.train.budget import parse_budget
    from budgetlm.train.eval_points import EvalPoints
    assert EvalPoints.for_run(parse_budget("100-steps"), 10, 0, 32, 65536, 0.0) is None  # step budgets: as before
    assert EvalPoints.for_run(parse_budget("60s"), 10, 50, 32, 65536, 0.0) is None  # --eval-every wins
    p = EvalPoints.for_run(parse_budget("100s"), 10, 0, 32, 65536, 0.0)
    assert not p.due(0.05) and p.due(0.1)
    # 1% of 100 s over 10 points = 0.1 s each; at 10k tokens/s that is 1,000 tokens, in whole sequences
    assert p.tokens(10_000, 0.1) == 992
    p.spent_s = 0.1
    assert p.tokens(10_000, 0.15) == 0  # 0.2 s would exceed 1% of the 15 s spent
    p.advance(0.37)
    assert p.next_frac == pytest.approx(0.4)
    p.advance(0.95)
    assert p.next_frac == pytest.approx(1.0) and p.tokens(10_000, 1.0) == 0  # the final eval is the last point
    resumed = EvalPoints.for_run(parse_budget("100s"), 10, 0, 32, 65536, 0.52)
    assert resumed.next_frac == pytest.approx(0.6)


def test_resumed_run_continues_the_tensorboard_curves(synth_data, tmp_path):
    """Stop at step 6, resume to 12: the loss curve has each step once, as metrics.jsonl does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = tiny_cfg(tmp_path, budget="12-steps")
    train(model_config(n_layer=1, n_head=2, n_embd=16), cfg, synth_data, stop_after_steps=6, **QUIET)
    train(model_config(n_layer=1, n_head=2, n_embd=16), cfg, synth_data, resume=str(tmp_path), **QUIET)
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    rows = rows_of(tmp_path)
    assert [e.step for e in acc.Scalars("loss")] == [r["step"] for r in rows if "loss" in r] == list(range(1, 13))
    assert [e.step for e in acc.Scalars("val_loss")] == [6, 12]

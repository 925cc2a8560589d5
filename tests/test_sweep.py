"""Sweeps: grid x seeds through the real trainer, resumability, and the noise-aware leaderboard."""

import json
import math

import pytest

from budgetlm.errors import BudgetLMError
from budgetlm.sweep.runner import load_sweep, run_sweep, settings
from budgetlm.sweep.report import betainc, compare, leaderboard, mean_std, welch_p


def write_config(path, data, out, extra=""):
    path.write_text(f"""
[sweep]
budget = "4-steps"
data = "{data}"
seeds = [1, 2]
out = "{out}"
{extra}
[model]
n_head = 2
[train]
batch_size = 4
seq_len = 32
final_eval_tokens = 512
threads = 1
log_every = 1
[grid]
n_layer = [1, 2]
n_embd = [16, 32]
""")
    return path


def test_grid_runs_every_setting_and_seed_then_resumes(synth_data, tmp_path):
    spec = load_sweep(write_config(tmp_path / "sweep.toml", synth_data, tmp_path / "out"))
    quiet = lambda *_: None
    res = run_sweep(spec, log=quiet)
    assert (res.ran, res.skipped, res.failed) == (8, 0, 0)
    out = tmp_path / "out"
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {(r["n_layer"], r["n_embd"], r["seed"]) for r in rows} == {
        (l, e, s) for l in (1, 2) for e in (16, 32) for s in (1, 2)}
    assert all(r["status"] == "ok" and r["steps"] == 4 and r["val_bpb"] > 0 and r["params"] > 0 for r in rows)
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 9 and "val_bpb" in csv_lines[0] and "tokens_per_s" in csv_lines[0]
    for png in ("bpb_vs_params.png", "best_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert len(res.board) == 4 and res.board[0]["verdict"] == "best" and "leaderboard" in res.table
    assert (out / "n_layer=2_n_embd=32" / "seed1" / "summary.json").is_file()

    again = run_sweep(load_sweep(tmp_path / "sweep.toml"), log=quiet)
    assert (again.ran, again.skipped) == (0, 8)
    assert [r["val_bpb"] for r in again.rows] == [r["val_bpb"] for r in rows]


def test_incomplete_run_is_redone(synth_data, tmp_path):
    cfg = write_config(tmp_path / "s.toml", synth_data, tmp_path / "out").read_text()
    cfg = cfg.replace("n_layer = [1, 2]", "n_layer = [1]").replace("n_embd = [16, 32]", "n_embd = [16]")
    (tmp_path / "s.toml").write_text(cfg.replace("seeds = [1, 2]", "seeds = [1]"))
    stale = tmp_path / "out" / "n_layer=1_n_embd=16" / "seed1"
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text('{"junk": 1}\n')  # crashed run, no checkpoint
    res = run_sweep(load_sweep(tmp_path / "s.toml"), log=lambda *_: None)
    assert res.ran == 1 and "junk" not in (stale / "metrics.jsonl").read_text()
    assert res.board[0]["verdict"] == "best"


def test_random_mode_samples_without_replacement(tmp_path):
    p = write_config(tmp_path / "r.toml", tmp_path, tmp_path / "o", extra='mode = "random"\nn = 3\nsample_seed = 4')
    spec = load_sweep(p)
    picked = settings(spec)
    assert len(picked) == 3 and len({tuple(s.items()) for s in picked}) == 3
    assert picked == settings(load_sweep(p))  # seeded


@pytest.mark.parametrize("extra, grid_line, match", [
    ('mode = "bayes"', "", "mode must be grid or random"),
    ("", "seed = [1, 2]", r"\[grid\] cannot set seed"),
    ("", "n_lyer = [1]", r"unknown field\(s\) n_lyer"),
    ("", 'arch = ["gpt", "rnn"]', "arch=rnn: --arch must be one of"),
])
def test_bad_configs_name_the_problem(tmp_path, extra, grid_line, match):
    p = write_config(tmp_path / "b.toml", tmp_path, tmp_path / "o", extra=extra)
    p.write_text(p.read_text() + grid_line + "\n")
    with pytest.raises(BudgetLMError, match=match):
        from budgetlm.sweep.runner import plan_runs
        plan_runs(load_sweep(p))


def test_welch_matches_reference_values():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-4)  # I_0.4(2,3) = 0.5248
    # means 3 and 5, variances 2.5 each, n = 5: t = -2 / sqrt(0.5 + 0.5) = -2, df = 8; two-sided p = 0.0805
    assert welch_p([1, 2, 3, 4, 5], [3, 4, 5, 6, 7]) == pytest.approx(0.0805, abs=1e-4)
    try:
        from scipy import stats
    except ImportError:
        return
    a, b = [1.02, 1.05, 1.01], [1.10, 1.30, 1.21, 1.15]
    assert welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-6)


def test_within_noise_verdicts_by_hand():
    # Seeds overlap: a 0.01 gap against a spread of ~0.02 cannot be told from noise.
    assert compare([1.00, 1.02, 0.98], [1.01, 1.03, 0.99])[0] == "within noise"
    # A 0.2 gap against a spread of 0.01 is real.
    verdict, p = compare([1.00, 1.01, 0.99], [1.20, 1.21, 1.19])
    assert verdict == "worse" and p < 1e-4
    assert compare([1.0], [1.1]) == ("1 seed", None)

    def rows(name, bpbs):
        return [{"setting": name, "seed": i, "status": "ok", "val_bpb": v, "params": 10, "tokens_seen": 100,
                 "tokens_per_s": 1.0} for i, v in enumerate(bpbs)]
    board = leaderboard(rows("far", [1.20, 1.21, 1.19]) + rows("best", [1.00, 1.02, 0.98])
                        + rows("close", [1.01, 1.03, 0.99]) + [{"setting": "broken", "status": "failed",
                                                                "val_bpb": math.nan}])
    assert [(e["setting"], e["verdict"]) for e in board] == [("best", "best"), ("close", "within noise"),
                                                            ("far", "worse")]
    assert board[1]["delta"] == pytest.approx(0.01)


@pytest.mark.slow
def test_short_time_budget_study_across_architectures(synth_data, tmp_path):
    """The study's machinery at 15-second budgets: three architectures x 2 seeds on the clock,
    each run inside its budget, a diffusion row flagged as a bound, and a complete leaderboard."""
    path = tmp_path / "study.toml"
    path.write_text(f"""
[sweep]
budget = "15s"
data = "{synth_data}"
seeds = [1, 2]
out = "{tmp_path / 'out'}"
preset = "2x32"
[train]
batch_size = 8
seq_len = 32
threads = 1
[grid]
arch = ["gpt", "lstm", "d3pm"]
""")
    res = run_sweep(load_sweep(path), log=lambda *_: None)
    assert (res.ran, res.failed) == (6, 0)
    for r in res.rows:
        assert r["status"] == "ok" and r["steps"] > 1 and math.isfinite(r["val_bpb"])
        summary = json.loads((tmp_path / "out" / r["run_dir"] / "summary.json").read_text())
        assert 10.0 < summary["elapsed"] <= 15.0  # the clock ended each run, final eval included
        assert r["bound"] == (r["arch"] == "d3pm")
    assert {b["setting"] for b in res.board} == {"arch=gpt", "arch=lstm", "arch=d3pm"}
    assert sum(b["verdict"] == "best" for b in res.board) == 1
    assert [b["bound"] for b in res.board if b["setting"] == "arch=d3pm"] == [True]

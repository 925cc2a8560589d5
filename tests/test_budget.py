import math

import pytest

from budgetlm.errors import BudgetLMError
from budgetlm.train.budget import Budget, lr_at, parse_budget


@pytest.mark.parametrize("text,kind,amount", [
    ("5m", "time", 300), ("300s", "time", 300), ("2h", "time", 7200), ("1h30m", "time", 5400),
    ("50M-tokens", "tokens", 50e6), ("2.5k-steps", "steps", 2500), ("1000-steps", "steps", 1000),
    ("10k tokens", "tokens", 1e4), ("90sec", "time", 90),
])
def test_parse_budget(text, kind, amount):
    b = parse_budget(text)
    assert (b.kind, b.amount) == (kind, amount)


@pytest.mark.parametrize("text,msg", [("5", "add a unit"), ("fast", "expected a time"), ("0s", "positive"),
                                      ("1.5-steps", "whole number"), ("5m3x", "expected a time")])
def test_parse_budget_errors(text, msg):
    with pytest.raises(BudgetLMError, match=msg):
        parse_budget(text)


def test_fraction():
    assert Budget("time", 300).fraction(150, 0, 0) == 0.5
    assert Budget("tokens", 1000).fraction(99, 250, 3) == 0.25
    assert Budget("steps", 10).fraction(99, 250, 3) == 0.3


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
def test_schedule_shape(schedule):
    lr, floor = 1e-3, 0.1
    f = lambda x: lr_at(x, lr, schedule, warmup_frac=0.1, min_lr_frac=floor)  # noqa: E731
    assert 0 < f(0.0) < f(0.05) < f(0.099)  # warmup rises from (nearly) zero
    assert math.isclose(f(0.1), lr, rel_tol=1e-6)  # peak right after warmup
    assert math.isclose(f(1.0), lr * floor, rel_tol=1e-9)  # ends exactly at the floor
    assert f(2.0) == f(1.0)  # overshoot stays at the floor
    xs = [0.1 + i * 0.009 for i in range(101)]
    assert all(f(a) >= f(b) - 1e-15 for a, b in zip(xs, xs[1:]))  # never rises after warmup


def test_cosine_midpoint_and_wsd_plateau():
    mid = lr_at(0.55, 1.0, "cosine", warmup_frac=0.1, min_lr_frac=0.0)
    assert math.isclose(mid, 0.5, abs_tol=1e-9)
    assert lr_at(0.7, 1.0, "wsd", warmup_frac=0.1, min_lr_frac=0.0) == 1.0
    assert math.isclose(lr_at(0.9, 1.0, "wsd", warmup_frac=0.1, min_lr_frac=0.0), 0.5)

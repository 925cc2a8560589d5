"""BudgetClock without a model: the reserve, the eval-speed re-estimate, the warmup override and
the monotone fraction; and the one count parser."""

import signal

import pytest

from budgetlm.errors import BudgetLMError
from budgetlm.train.budget import Budget, BudgetClock, lr_at, parse_budget, parse_count


class FakeClock:
    def __init__(self, t=0.0):
        self.t, self.before = t, 0.0

    def elapsed(self):
        return self.t


class FakeStop:
    """StopSignals.poll of one process: (the value given, its signal); counts the polls."""

    def __init__(self, signum=0):
        self.signum, self.polls = signum, 0

    def poll(self, ctx, rank0_value=0.0):
        self.polls += 1
        return rank0_value, self.signum


def clock(budget="100s", t=0.0, **kw):
    return BudgetClock(parse_budget(budget), FakeClock(t), final_eval_tokens=kw.pop("final", 1000), **kw)


def test_time_fraction_keeps_the_reserve_back():
    bc = clock(t=45.0, reserve_s=9.0)  # reserve = 9 s of the caller + 1 s for the checkpoint
    assert bc.reserve == 10.0
    assert bc.poll(0, 0, FakeStop(), None) == 0
    assert bc.max_frac == pytest.approx(45.0 / 90.0)
    bc.hs_seconds = 30.0  # the last HellaSwag eval's duration is kept back too
    bc.poll(0, 0, FakeStop(), None)
    assert bc.max_frac == pytest.approx(45.0 / 60.0)


def test_max_frac_is_monotone_when_the_reserve_estimate_shrinks():
    bc = clock(t=50.0, reserve_s=40.0)
    bc.poll(0, 0, FakeStop(), None)
    high = bc.max_frac
    assert high == pytest.approx(50.0 / 59.0)
    bc.reserve = 1.0  # a faster measured eval: the same elapsed time is now a smaller fraction
    bc.poll(0, 0, FakeStop(), None)
    assert bc.max_frac == high
    bc.clock.t = 99.0
    bc.poll(0, 0, FakeStop(), None)
    assert bc.max_frac == pytest.approx(1.0) and bc.spent


def test_a_stop_signal_leaves_the_fraction_as_it_was():
    bc = clock(t=50.0)
    assert bc.poll(0, 0, FakeStop(signal.SIGTERM), None) == signal.SIGTERM
    assert bc.max_frac == 0.0  # the checkpoint written on the stop saves the last step's fraction


def test_token_budget_polls_the_ranks_only_when_asked():
    bc = clock("1000-tokens", t=1e9)  # time does not count for a token budget
    stop = FakeStop(signal.SIGINT)
    assert bc.poll(3, 250, stop, None, sync=False) == 0 and stop.polls == 0
    assert bc.max_frac == 0.25
    assert bc.poll(3, 500, stop, None, sync=True) == signal.SIGINT and stop.polls == 1
    assert bc.max_frac == 0.25


def test_measured_eval_speed_shrinks_the_final_eval_to_a_tenth_of_the_budget():
    notes = []
    bc = clock(final=1_000_000, min_eval_tokens=64, reserve_s=2.0, log=notes.append)
    bc.measured_eval_speed(10_000.0)  # 100 s to score them all: more than 10% of 100 s
    assert bc.final_eval_tokens == 100_000 // 64 * 64  # whole micro-batches: no new shape to compile
    assert bc.reserve == pytest.approx(2.0 + 1.0 + 1.1 * 99_968 / 10_000.0)
    assert len(notes) == 1 and "final eval limited to 99,968" in notes[0]
    bc.measured_eval_speed(5_000.0)  # re-estimated: smaller again, but the note is said once
    assert bc.final_eval_tokens == 50_000 // 64 * 64 and len(notes) == 1
    bc.measured_eval_speed(1.0)  # never below one micro-batch
    assert bc.final_eval_tokens == 64


def test_eval_speed_does_not_shrink_a_token_budgets_final_eval():
    bc = clock("1000-steps", final=1_000_000)
    bc.measured_eval_speed(10.0)
    assert bc.final_eval_tokens == 1_000_000 and bc.reserve == pytest.approx(1.0 + 1.1 * 100_000)


def test_guessed_reserve_before_an_eval_speed_is_measured():
    bc = clock(final=10_000, reserve_s=0.5)
    bc.guess_reserve(1_000.0)  # eval assumed 2x the training rate: 5 s
    assert bc.reserve == pytest.approx(0.5 + 1.0 + 5.0)
    bc.guess_reserve(1.0)  # capped at a tenth of the budget
    assert bc.reserve == pytest.approx(0.5 + 1.0 + 10.0)


def test_warmup_steps_override_the_warmup_fraction():
    bc = clock()
    bc.max_frac = 0.02
    assert bc.lr(0, 1e-3, "cosine", 0.05, 0.1) == lr_at(0.02, 1e-3, "cosine", 0.05, 0.1)
    no_warmup = lr_at(0.02, 1e-3, "cosine", 0.0, 0.1)
    assert bc.lr(0, 1e-3, "cosine", 0.05, 0.1, warmup_steps=10) == pytest.approx(no_warmup * 0.1)
    assert bc.lr(9, 1e-3, "cosine", 0.05, 0.1, warmup_steps=10) == pytest.approx(no_warmup)
    assert bc.lr(50, 1e-3, "cosine", 0.05, 0.1, warmup_steps=10) == pytest.approx(no_warmup)


def test_budget_fraction_reserve():
    assert Budget("time", 100).fraction(45, 0, 0, reserve_s=10) == 0.5
    assert Budget("tokens", 100).fraction(45, 50, 0, reserve_s=10) == 0.5  # only time keeps a reserve


@pytest.mark.parametrize("text,value", [("50M", 50e6), ("2.5k", 2500), ("14.6B", 14.6e9), ("1,000,000", 1e6),
                                        ("2e9", 2e9), ("1000", 1000), ("1T", 1e12), (" 20m ", 20e6), (7, 7.0)])
def test_parse_count(text, value):
    assert parse_count(text, "--tokens") == pytest.approx(value)


@pytest.mark.parametrize("text", ["lots", "-5B", "0", "inf", "1..2k", "5x", ""])
def test_parse_count_errors_name_the_flag(text):
    with pytest.raises(BudgetLMError, match="^--shard-tokens: expected a positive count"):
        parse_count(text, "--shard-tokens")


def test_parse_budget_counts_use_parse_count():
    assert parse_budget("1.5M-tokens").amount == 1.5e6
    with pytest.raises(BudgetLMError, match="--budget '1..2-tokens'"):
        parse_budget("1..2-tokens")
    assert parse_count(None, "--max-tokens") is None


def test_a_parsed_budget_keeps_its_text_and_is_not_parsed_again(monkeypatch):
    from budgetlm.speedrun import pipeline as speedrun
    from budgetlm.train.budget import Clock, as_budget
    b, steps = parse_budget("1h30m"), parse_budget("100-steps")
    assert (b.text, b.amount) == ("1h30m", 5400) and b == Budget("time", 5400)
    assert as_budget(b) is b and as_budget("5m") == Budget("time", 300)

    def no_parse(text):
        raise AssertionError(f"parsed {text!r} again")
    monkeypatch.setattr(speedrun, "parse_budget", no_parse)  # (TrainConfig still checks its text)
    setup = speedrun._sized_setup(steps, "cpu", None, "measured", "synth", None, Clock(), print)
    assert setup.train.budget == "100-steps"  # the user's text, for the checkpoint's resume check

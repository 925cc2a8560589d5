"""Budgets (wall-clock time, tokens or steps) and the learning-rate schedule as a function of
the fraction of budget spent — so a 5-minute run warms up and decays exactly like a
5-hour one, and ends at the floor when the clock runs out.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from budgetlm.errors import BudgetLMError

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_SCALE = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


@dataclass(frozen=True)
class Budget:
    kind: str  # time | tokens | steps
    amount: float  # seconds, tokens or steps
    text: str = field(default="", compare=False, repr=False)  # as the user wrote it (TrainConfig.budget)

    def __str__(self) -> str:
        if self.kind == "time":
            return f"{self.amount:g}s"
        return f"{self.amount:,.0f} {self.kind}"

    def fraction(self, seconds: float, tokens: int, steps: int, reserve_s: float = 0.0) -> float:
        """How much of the budget is spent, in [0, inf). A time budget keeps `reserve_s` seconds
        back (the final eval and checkpoint): it is spent when seconds reach amount - reserve_s."""
        if self.kind == "time":
            return seconds / max(self.amount - reserve_s, 1e-9)
        return (tokens if self.kind == "tokens" else steps) / self.amount


def parse_count(text: str | float | int | None, flag: str) -> float | None:
    """A positive count: '50M', '2.5k', '14.6B', '1T', '2e9', '1,000,000', '1000' -> float (None
    stays None; a number passes through). The one parser of counts: --budget's N-tokens/N-steps,
    prepare's --max-tokens/--shard-tokens, plan's --tokens/--params. Errors name the flag."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    s = str(text).strip().lower().replace(",", "").replace("_", "")
    m = re.fullmatch(r"([\d.]+(?:e[+-]?\d+)?)\s*([kmbgt]?)", s)
    try:
        value = float(m.group(1)) * _SCALE[m.group(2)] if m else None
    except ValueError:  # "1..2" matches the digit class but is no number
        value = None
    if value is None or not value > 0 or math.isinf(value):
        raise BudgetLMError(f"{flag}: expected a positive count like 1000, 50k, 500M, 14.6B or 2e9, got {text!r}")
    return value


def _number(digits: str, text: str) -> float:
    try:  # "1..2" matches the digit class but is no number
        return float(digits)
    except ValueError:
        raise BudgetLMError(f"--budget {text!r}: {digits!r} is not a number") from None


def parse_budget(text: str) -> Budget:
    """'5m', '2h', '300s', '1h30m', '50M-tokens', '1000-steps', '2.5k-steps'."""
    s = str(text).strip().lower().replace("_", "").replace(",", "")
    m = re.fullmatch(r"([\d.]+\s*[kmbg]?)[- ]?(tokens?|steps?)", s)
    if m:
        kind = "tokens" if m.group(2).startswith("token") else "steps"
        amount = parse_count(m.group(1), f"--budget {text!r}")
    else:
        parts = re.findall(r"([\d.]+)\s*(sec|min|s|m|h|d)", s)
        if not parts or "".join(f"{a}{u}" for a, u in parts) != s.replace(" ", ""):
            if re.fullmatch(r"[\d.]+", s):
                raise BudgetLMError(f"--budget {text!r}: add a unit: 300s, 5m, 2h, 50M-tokens or 1000-steps")
            raise BudgetLMError(f"--budget {text!r}: expected a time (300s, 5m, 2h, 1h30m), "
                                f"N-tokens (50M-tokens) or N-steps (1000-steps)")
        kind, amount = "time", sum(_number(a, text) * _UNITS[u] for a, u in parts)
    if not amount > 0 or math.isinf(amount):
        raise BudgetLMError(f"--budget {text!r}: must be positive")
    if kind == "steps" and amount != int(amount):
        raise BudgetLMError(f"--budget {text!r}: steps must be a whole number")
    return Budget(kind, amount, str(text))


def as_budget(budget: "str | Budget") -> Budget:
    """A budget parsed once and passed on as the object, or its text parsed here."""
    return budget if isinstance(budget, Budget) else parse_budget(budget)


def lr_at(frac: float, lr: float, schedule: str = "cosine", warmup_frac: float = 0.05,
          min_lr_frac: float = 0.1, decay_frac: float = 0.2) -> float:
    """Learning rate when `frac` of the budget is spent.

    Linear warmup over the first `warmup_frac`, then cosine or linear decay that reaches
    min_lr_frac * lr exactly at frac = 1. `wsd` holds lr flat and decays linearly over the
    last `decay_frac` (warmup-stable-decay, as in MiniCPM).
    """
    frac = min(max(frac, 0.0), 1.0)
    floor = lr * min_lr_frac
    if warmup_frac > 0 and frac < warmup_frac:
        return lr * (frac + 1e-3) / (warmup_frac + 1e-3)  # never exactly 0: the first step still learns
    if schedule == "constant":
        return lr
    if schedule == "wsd":
        start = 1.0 - decay_frac
        if frac < start:
            return lr
        return floor + (lr - floor) * (1.0 - (frac - start) / decay_frac)
    progress = (frac - warmup_frac) / max(1e-12, 1.0 - warmup_frac)
    if schedule == "linear":
        return floor + (lr - floor) * (1.0 - progress)
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def whole_batch_tokens(tokens: int, val_tokens: int, seq_len: int, batch_tokens: int) -> int:
    """An eval's token count rounded down to whole batches of the split (one batch at least): under
    torch.compile a partial last batch is a new shape, compiled inside the budget (9 s of a 45 s
    run on an H200, which ended 8 s over its budget)."""
    scorable = (val_tokens - 1) // seq_len * seq_len
    return max(batch_tokens, min(tokens, scorable) // batch_tokens * batch_tokens)


def accum_at(frac: float, accum: int, batch_warmup_frac: float) -> int:
    """Micro-batches in the step taken at budget fraction `frac`: with a batch-size warmup, a linear
    ramp from 1 to `accum` over the first `batch_warmup_frac` (small early batches: the gradient
    noise is small next to how far the weights have to go). Every rank reads the same max_frac
    (rank 0's clock, or tokens/steps), so all ranks take the same number of micro-steps."""
    if batch_warmup_frac <= 0 or frac >= batch_warmup_frac:
        return accum
    return max(1, min(accum, math.ceil(accum * frac / batch_warmup_frac)))


@dataclass
class Clock:
    """Wall-clock seconds spent on this run, carried across resumes."""

    before: float = 0.0  # seconds spent in earlier sessions (resume) or before training (speedrun)
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start


class StopPoll(Protocol):
    def poll(self, ctx: Any, rank0_value: float = 0.0) -> tuple[float, int]: ...


@dataclass
class BudgetClock:
    """How much of the budget a run has spent, and what that means for its learning rate.

    A time budget keeps back a reserve for what follows training (the final eval and checkpoint,
    the caller's reserve_s, the last HellaSwag eval's duration); the final eval is sized from the
    measured eval speed so that it fits. `max_frac` only grows, even when the reserve estimate
    moves, so the schedule never steps back. Under several ranks rank 0's clock decides, so all
    ranks stop on the same step.
    """

    budget: Budget
    clock: Clock
    final_eval_tokens: int  # validation tokens the final eval scores (shrunk to fit a time budget)
    min_eval_tokens: int = 1  # the final eval never shrinks below this (one micro-batch)
    reserve_s: float = 0.0  # seconds the caller needs after training (e.g. sampling)
    max_frac: float = 0.0
    log: Callable[[str], None] = print
    eval_speed: float | None = None  # tokens/s of forward-only passes, once measured
    hs_seconds: float = 0.0  # the last HellaSwag eval's duration, kept for the final one
    reserve: float = field(init=False)

    def __post_init__(self) -> None:
        self.reserve = self.reserve_s + 1.0  # the checkpoint's second, until an eval speed is known
        self._first_final = self.final_eval_tokens

    def poll(self, step: int, tokens: int, stop: StopPoll, ctx: Any, sync: bool = True) -> int:
        """Advance max_frac to the budget spent now; returns the agreed stop signal (0: none), in
        which case max_frac stays as it was. sync: whether a token/step budget polls the other
        ranks this step (it costs a collective; a time budget polls every step)."""
        elapsed = self.clock.elapsed()
        frac = self.budget.fraction(elapsed, tokens, step, self.reserve + self.hs_seconds)
        if self.budget.kind == "time":
            frac, signum = stop.poll(ctx, frac)  # rank 0's clock decides; a stop request rides along
        else:
            signum = stop.poll(ctx)[1] if sync else 0
        if not signum:
            self.max_frac = max(self.max_frac, frac)  # monotone even when the reserve estimate moves
        return signum

    @property
    def spent(self) -> bool:
        return self.max_frac >= 1.0

    def lr(self, step: int, lr: float, schedule: str, warmup_frac: float, min_lr_frac: float,
           warmup_steps: int | None = None, decay_frac: float = 0.2) -> float:
        """The learning rate at max_frac; an explicit warmup in steps overrides the fraction's."""
        if warmup_steps is None:
            return lr_at(self.max_frac, lr, schedule, warmup_frac, min_lr_frac, decay_frac)
        return lr_at(self.max_frac, lr, schedule, 0.0, min_lr_frac, decay_frac) * min(1.0, (step + 1) / max(1, warmup_steps))

    def measured_eval_speed(self, speed: float) -> None:
        """Size the final eval and its reserve from a measured eval speed (tokens/s, rank 0's)."""
        self.eval_speed = speed
        if self.budget.kind == "time" and self.final_eval_tokens / speed > 0.1 * self.budget.amount:
            # Keep the final eval within a tenth of a time budget; score fewer tokens instead.
            first = self.final_eval_tokens == self._first_final
            fit = int(0.1 * self.budget.amount * speed)
            self.final_eval_tokens = max(self.min_eval_tokens, fit // self.min_eval_tokens * self.min_eval_tokens)
            if first:
                self.log(f"note: final eval limited to {self.final_eval_tokens:,} validation tokens to fit the budget")
        self.reserve = self.reserve_s + 1.0 + 1.1 * self.final_eval_tokens / speed

    def guess_reserve(self, train_tokens_per_s: float) -> None:
        """Until an eval speed is measured: forward-only is ~3x a training step; assume 2x."""
        self.reserve = self.reserve_s + 1.0 + min(self.final_eval_tokens / max(2 * train_tokens_per_s, 1.0),
                                                  0.1 * self.budget.amount)

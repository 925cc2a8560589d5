"""Budgets (wall-clock time, tokens or steps) and the learning-rate schedule as a function of
the fraction of budget spent — so a 5-minute run warms up and decays exactly like a
5-hour one, and ends at the floor when the clock runs out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from budgetlm.errors import BudgetLMError

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_SCALE = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


@dataclass(frozen=True)
class Budget:
    kind: str  # time | tokens | steps
    amount: float  # seconds, tokens or steps

    def __str__(self) -> str:
        if self.kind == "time":
            return f"{self.amount:g}s"
        return f"{self.amount:,.0f} {self.kind}"

    def fraction(self, seconds: float, tokens: int, steps: int) -> float:
        """How much of the budget is spent, in [0, inf)."""
        spent = {"time": seconds, "tokens": tokens, "steps": steps}[self.kind]
        return spent / self.amount


def _number(digits: str, text: str) -> float:
    try:  # "1..2" matches the digit class but is no number
        return float(digits)
    except ValueError:
        raise BudgetLMError(f"--budget {text!r}: {digits!r} is not a number") from None


def parse_budget(text: str) -> Budget:
    """'5m', '2h', '300s', '1h30m', '50M-tokens', '1000-steps', '2.5k-steps'."""
    s = str(text).strip().lower().replace("_", "").replace(",", "")
    m = re.fullmatch(r"([\d.]+)\s*([kmbg]?)[- ]?(tokens?|steps?)", s)
    if m:
        kind = "tokens" if m.group(3).startswith("token") else "steps"
        amount = _number(m.group(1), text) * _SCALE[m.group(2)]
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
    return Budget(kind, amount)


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

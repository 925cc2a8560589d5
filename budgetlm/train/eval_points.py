"""Validation during a time budget with no --eval-every: an eval at each 1/N of the budget, so a
run's curves have points, sized so that all of them together cost a small, fixed share of it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from budgetlm.train.budget import Budget

# Of a time budget, for all its periodic evals together. 2% cost the CPU 5-minute speedrun 2% of its
# tokens and 0.5% of its BPB against the run without points (RESULTS.md, issue 20); 1% halves that,
# and the points, spread over the whole split (data.loader.eval_windows), stay representative.
EVAL_SHARE = 0.01


@dataclass
class EvalPoints:
    """Points at fractions k/points of the budget (k < points: the last one is the final eval).

    Each point may take share/points of the budget at the measured eval speed; a point is skipped
    when even the smallest eval (`unit` tokens) would lift the evals' total above `share` of the
    budget spent so far, so slow evals mean fewer points, never a late run.
    """

    points: int
    budget_s: float
    unit: int  # smallest eval: one sequence, or one micro-batch when compiled (no new shape to compile)
    max_tokens: int  # --eval-tokens
    next_frac: float = 0.0
    spent_s: float = 0.0
    share: float = EVAL_SHARE

    @classmethod
    def for_run(cls, budget: Budget, points: int, eval_every: int, unit: int, max_tokens: int,
                frac: float) -> "EvalPoints | None":
        """The schedule for a time budget without --eval-every (None otherwise), from `frac` (resume)."""
        if budget.kind != "time" or eval_every or points <= 0:
            return None
        p = cls(points, budget.amount, unit, max_tokens)
        p.advance(frac)
        return p

    def due(self, frac: float) -> bool:
        return frac >= self.next_frac

    def advance(self, frac: float) -> None:
        self.next_frac = (math.floor(frac * self.points) + 1) / self.points

    def tokens(self, speed: float, frac: float) -> int:
        """Tokens the point due at `frac` scores at `speed` tokens/s, or 0 to skip it."""
        if self.next_frac >= 1.0:
            return 0
        per_point = self.share * self.budget_s / self.points
        n = max(1, int(min(self.max_tokens, per_point * speed)) // self.unit) * self.unit
        fits = self.spent_s + n / speed <= 1.05 * self.share * self.budget_s * frac
        return n if fits else 0

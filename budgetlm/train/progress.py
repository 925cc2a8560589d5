"""A live progress bar (rich) driven by the fraction of budget spent."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

from budgetlm.train.budget import Budget


class Progress:
    def __init__(self, budget: Budget, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.budget = budget
        self.console = Console(stderr=True)
        self.bar = None
        if self.enabled:
            self.bar = RichProgress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
                                    transient=False)
            self.task = self.bar.add_task("train", total=1.0, info="")
            self.bar.start()

    def update(self, frac: float, step: int, loss: float, tok_s: float, lr: float) -> None:
        if self.bar is not None:
            left = max(0.0, 1.0 - frac)
            budget_left = f"{left * self.budget.amount:.0f}s left" if self.budget.kind == "time" else f"{left:.0%} left"
            self.bar.update(self.task, completed=min(frac, 1.0),
                            info=f"step {step} loss {loss:.3f} {tok_s:,.0f} tok/s lr {lr:.2e} {budget_left}")

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

"""Training batches from a token stream: every window of the data once per epoch, in a
seeded order, with the position a plain integer — so a checkpoint resumes the exact batch
sequence and several ranks can read disjoint slices.
"""

from __future__ import annotations

import numpy as np
import torch

from budgetlm.errors import BudgetLMError


class BatchLoader:
    """Windows of seq_len+1 tokens at stride seq_len; epoch e shuffles them with seed+e and
    shifts all window starts by a seeded offset, so boundaries differ between epochs."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        if tokens.size < seq_len + 2:
            raise BudgetLMError(f"training data has {tokens.size} tokens; need more than seq_len+1 = {seq_len + 1}")
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.position = 0  # windows consumed by all ranks together
        self._epoch, self._order, self._offset = -1, np.zeros(0, dtype=np.int64), 0

    @property
    def windows_per_epoch(self) -> int:
        return (self.tokens.size - 1 - self.seq_len) // self.seq_len

    def _epoch_plan(self, epoch: int) -> None:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._offset = int(rng.integers(0, self.seq_len))
            self._order = rng.permutation(self.windows_per_epoch)
            self._epoch = epoch

    def _window(self, index: int) -> np.ndarray:
        n = self.windows_per_epoch
        self._epoch_plan(index // n)
        start = self._offset + int(self._order[index % n]) * self.seq_len
        return self.tokens[start:start + self.seq_len + 1]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) as int64 CPU tensors of shape (batch_size, seq_len)."""
        base = self.position + self.rank * self.batch_size
        rows = np.stack([self._window(base + i) for i in range(self.batch_size)]).astype(np.int64)
        self.position += self.batch_size * self.world
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    @property
    def epoch(self) -> float:
        return self.position / self.windows_per_epoch

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        if state["seq_len"] != self.seq_len:
            raise BudgetLMError(f"resume: checkpoint used seq_len {state['seq_len']}, this run {self.seq_len}")
        self.position, self.seed = state["position"], state["seed"]


def eval_windows(n_tokens: int, seq_len: int, max_tokens: int = 0) -> np.ndarray:
    """Start indices (in windows of seq_len) of the validation windows an eval scores: all of them, or,
    capped by max_tokens, that many spread evenly over the whole split, so a short eval samples
    every held-out book rather than the first one, and every capped eval scores the same text."""
    total = (n_tokens - 1) // seq_len
    if total == 0:
        raise BudgetLMError(f"validation split has {n_tokens} tokens; need more than seq_len+1 = {seq_len + 1}")
    n = min(total, max(1, max_tokens // seq_len)) if max_tokens else total
    return (np.arange(n, dtype=np.int64) * total) // n


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, max_tokens: int = 0,
                 windows: np.ndarray | None = None):
    """Non-overlapping windows over the validation tokens (eval_windows, or the given ones), in order."""
    if windows is None:
        windows = eval_windows(tokens.size, seq_len, max_tokens)
    for i in range(0, len(windows), batch_size):
        rows = [tokens[j * seq_len:j * seq_len + seq_len + 1] for j in windows[i:i + batch_size]]
        t = torch.from_numpy(np.stack(rows).astype(np.int64))
        yield t[:, :-1], t[:, 1:]

"""Distillation from an n-gram teacher into the first steps of a transformer.

A Kneser-Ney model built in seconds already knows local grammar; mixing KL(teacher || student)
into the loss for the first few hundred steps lets the transformer skip the minutes it would
spend learning it from one-hot targets. After `steps`, training is plain next-token loss.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from budgetlm.errors import BudgetLMError


def parse_teacher(spec: str) -> int:
    """'ngram:4' -> 4."""
    kind, _, order = spec.partition(":")
    if kind != "ngram" or not order.isdigit() or not 1 <= int(order) <= 6:
        raise BudgetLMError(f"--teacher {spec!r}: expected ngram:N with N in 1..6 (e.g. ngram:4)")
    return int(order)


def context_windows(x: torch.Tensor, k: int, pad_id: int) -> np.ndarray:
    """For every position t of x (B, T): the last k tokens up to and including t, left-padded
    with pad_id (end-of-text, i.e. 'start of a story') -> (B*T, k) int64."""
    if k == 0:
        return np.zeros((x.numel(), 0), dtype=np.int64)
    padded = F.pad(x, (k - 1, 0), value=pad_id)
    return padded.unfold(1, k, 1).reshape(-1, k).cpu().numpy().astype(np.int64)


class NgramDistillation:
    """A trainer loss hook: (1-alpha)*CE + alpha*tau^2*KL(teacher_tau || student_tau) for `steps` steps."""

    def __init__(self, teacher, steps: int, alpha: float, temperature: float, pad_id: int) -> None:
        if not 0 <= alpha <= 1:
            raise BudgetLMError(f"--distill-alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise BudgetLMError(f"--distill-temp must be positive, got {temperature}")
        self.teacher, self.steps, self.alpha, self.tau, self.pad_id = teacher, steps, alpha, temperature, pad_id
        self.seconds = 0.0  # time spent computing teacher distributions

    def __call__(self, step: int, frac: float, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                 loss: torch.Tensor) -> torch.Tensor | None:
        if step >= self.steps or self.alpha == 0:
            return None
        t = time.perf_counter()
        probs = self.teacher.next_token_probs(context_windows(x, self.teacher.order - 1, self.pad_id))
        target = torch.from_numpy(probs).to(logits.device)
        if self.tau != 1.0:
            target = target.pow(1.0 / self.tau)
            target = target / target.sum(-1, keepdim=True)
        self.seconds += time.perf_counter() - t
        logp = F.log_softmax(logits.float().view(-1, logits.size(-1)) / self.tau, dim=-1)
        kl = F.kl_div(logp, target, reduction="batchmean")  # sum_w p_t (log p_t - log p_s), mean over positions
        return (1 - self.alpha) * loss + self.alpha * self.tau ** 2 * kl


def make_teacher_hook(spec: str, train_tokens: np.ndarray, vocab_size: int, pad_id: int, steps: int,
                      alpha: float, temperature: float, max_tokens: int = 5_000_000,
                      log: Callable[[str], None] = print) -> NgramDistillation:
    """Build the n-gram teacher from (the start of) the training tokens; its build time is
    spent inside the caller's budget clock."""
    from budgetlm.models.ngram import KneserNeyLM

    order = parse_teacher(spec)
    t = time.perf_counter()
    teacher = KneserNeyLM.build(np.asarray(train_tokens[:max_tokens]), vocab_size, order)
    log(f"teacher {spec} built from {min(len(train_tokens), max_tokens):,} tokens in "
        f"{time.perf_counter() - t:.1f}s (inside the budget); distilling for {steps} steps, alpha {alpha}")
    return NgramDistillation(teacher, steps, alpha, temperature, pad_id)

"""Where a run's time goes: tokens/s of this session, the steady rate to compare with `bench`,
compile time, data waits and the side activities (evals, samples, checkpoints) kept out of it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from budgetlm.device import synchronize
from budgetlm.train.budget import Clock
from budgetlm.train.step import StepResult

WARM_STEPS, TIMED_STEPS = 3, 11  # steps 1-3 compile / record CUDA graphs; 4-11 give the steady step time


def measured_compile_seconds(step_times: list[float], compiled: bool) -> float | None:
    """Seconds the warm-up steps (1-3: compile, CUDA-graph recording) took beyond a steady step, the
    median of steps 4-11; with fewer steps than that, the first step's whole duration. None uncompiled."""
    if not compiled or not step_times:
        return None
    warm, steady = step_times[:WARM_STEPS], sorted(step_times[WARM_STEPS:])
    if not steady:
        return step_times[0]
    base = steady[len(steady) // 2]
    return sum(max(0.0, t - base) for t in warm)


@dataclass
class Throughput:
    clock: Clock
    session_before: float = 0.0  # seconds of earlier sessions: first_step_s counts from this session's start
    train_start: float = 0.0  # the clock's elapsed when the loop began
    session_start: float = field(default_factory=time.perf_counter)
    session_tokens: int = 0
    tok_rate: float = 0.0
    # Data wait: seconds blocked on shards not yet tokenized (the stream loader's own count). Building
    # batches from tokens on hand (batch_s) is host work of the step itself: on a 10M model on an H200
    # it was 1.8 ms of a 16 ms step, which the first version wrongly reported as 8-10% "data wait".
    data_wait: float = 0.0
    batch_s: float = 0.0
    # The steady training rate, to compare with `bench` of the same step: tokens after the timed
    # warm-up steps over the loop's time less its evals, samples, checkpoints and data waits.
    side_s: float = 0.0  # seconds of those side activities
    steady0: tuple[float, int, float, float] | None = None  # (time, tokens, wait, side) at the steady start
    step_times: list[float] = field(default_factory=list)  # wall seconds of the first TIMED_STEPS steps
    first_step_s: float | None = None

    @classmethod
    def start(cls, clock: Clock) -> "Throughput":
        return cls(clock, session_before=clock.before, train_start=clock.elapsed())

    def add_step(self, tokens: int, result: StepResult) -> None:
        self.session_tokens += tokens
        self.batch_s += result.batch_s
        self.data_wait += result.wait_s

    def time_step(self, t_step: float, device: torch.device) -> None:
        """After a step begun at t_step: the first steps' exact times (waiting for the device), then the rate."""
        if len(self.step_times) < TIMED_STEPS:
            synchronize(device)
            self.step_times.append(time.perf_counter() - t_step)
            if self.first_step_s is None:
                self.first_step_s = self.clock.elapsed() - self.session_before
            if len(self.step_times) == TIMED_STEPS:  # synchronized just above: an exact start
                self.steady0 = (time.perf_counter(), self.session_tokens, self.data_wait, self.side_s)
        self.tok_rate = self.session_tokens / max(time.perf_counter() - self.session_start, 1e-9)

    def data_wait_frac(self, seconds: float) -> float:
        return self.data_wait / max(seconds, 1e-9)

    def steady_rate(self) -> float | None:
        if self.steady0 is None or self.session_tokens <= self.steady0[1]:
            return None
        t0, tok0, wait0, side0 = self.steady0
        busy = time.perf_counter() - t0 - (self.side_s - side0) - (self.data_wait - wait0)
        return (self.session_tokens - tok0) / max(busy, 1e-9)

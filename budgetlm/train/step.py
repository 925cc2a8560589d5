"""One optimizer step, as the trainer, `bench` and the memory probe all take it: `accum`
micro-batches (each under autocast, with an optional loss hook, its backward under the
distributed context's micro-step), the loss averaged over micro-steps and ranks, the gradient
clipped, the optimizer stepped and the gradients zeroed.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from budgetlm.train.distributed import DistContext

# (x, y, logits, loss) -> the loss to minimize instead, or None to keep `loss` (the trainer binds step and frac)
StepHook = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Tensor], "torch.Tensor | None"]


class Batches(Protocol):
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class StepResult:
    loss: torch.Tensor  # the plain next-token loss of the whole global batch, still on the device
    grad_norm: torch.Tensor | None  # before clipping; None when clipping is off
    batch_s: float  # seconds spent building batches (host work of the step)
    wait_s: float  # seconds blocked on data not yet tokenized (a streaming loader's wait_s)


def train_step(run_model: Callable[..., Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               loader: Batches, ctx: DistContext, *, accum: int, device: torch.device,
               autocast: AbstractContextManager, cuda_graphs: bool, graph_grads: bool, grad_clip: float,
               loss_hook: StepHook | None = None) -> StepResult:
    """One step over `accum` batches from `loader`. `run_model` is FastPath.compile_model's callable
    (maybe DDP/FSDP-wrapped); `model` the bare one whose parameters are clipped."""
    loss_sum = torch.zeros((), device=device)
    batch_s = wait_s = 0.0
    for micro in range(accum):
        t_data, waited = time.perf_counter(), getattr(loader, "wait_s", 0.0)
        x, y = loader.next_batch()
        batch_s += time.perf_counter() - t_data
        wait_s += getattr(loader, "wait_s", 0.0) - waited
        if device.type == "cuda" and x.device.type == "cpu":  # pinned host memory: a truly asynchronous copy
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cuda_graphs:  # a new replay: outputs of the last one (read below, never kept) may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with ctx.micro_step(last=micro == accum - 1):  # gradients sync on the last micro-step only
            with autocast:
                logits, loss = run_model(x, y)
                objective = loss_hook(x, y, logits, loss) if loss_hook else None
                if objective is None:
                    objective = loss
            (objective / accum).backward()
        loss_sum += loss.detach() / accum  # the plain next-token loss, comparable across runs
    ctx.mean_(loss_sum)  # averaged over ranks: the loss of the whole global batch
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=not graph_grads)
    return StepResult(loss_sum, norm, batch_s, wait_s)


class CycleBatches:
    """Fixed (x, y) batches handed out in turn: bench's and the memory probe's random tokens."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches, self.i = batches, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        return batch

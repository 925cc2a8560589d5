"""What a training run saves and restores: weights, optimizer, loader position, step counts,
losses, RNG states and the budget spent. One path for one process and for N ranks (collectives
first on every rank, then rank 0 writes; rank 0's failure reaches every rank).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from budgetlm.config import ModelConfig, TrainConfig, to_dict
from budgetlm.errors import BudgetLMError
from budgetlm.train.budget import BudgetClock
from budgetlm.train.checkpoint import load_checkpoint, save_checkpoint
from budgetlm.train.distributed import DistContext


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class RunState:
    """The counters a checkpoint carries (with BudgetClock.max_frac and the clock's elapsed)."""

    step: int = 0
    tokens_seen: int = 0
    losses: list[float] = field(default_factory=list)
    pending: list[torch.Tensor] = field(default_factory=list)  # per-step losses not yet read back from the device

    def read_losses(self) -> None:
        """Read the pending losses back from the device (a wait for the GPU)."""
        if self.pending:
            self.losses.extend(torch.stack(self.pending).tolist())
            self.pending.clear()


@dataclass
class Checkpointer:
    ctx: DistContext
    cfg: TrainConfig
    model_cfg: ModelConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: Any
    tokenizer: Any
    state: RunState
    budget: BudgetClock
    root: Path
    saved_step: int = -1  # the newest checkpoint's step: not rewritten on a stop

    def save(self) -> float:
        """Write a checkpoint of the current step; returns its seconds."""
        t = time.perf_counter()
        ctx, run = self.ctx, self.state
        run.read_losses()
        # collectives first (every rank), then rank 0 writes
        weights, opt_state = ctx.full_model_state(self.model), ctx.optimizer_state(self.model, self.optimizer)
        rngs = ctx.gather_objects(rng_state())
        error = None
        if ctx.is_main:
            state = {"optimizer": opt_state, "loader": self.loader.state_dict(), "step": run.step,
                     "tokens": run.tokens_seen, "max_frac": self.budget.max_frac, "losses": run.losses,
                     "elapsed": self.budget.clock.elapsed(), "rng": rngs[0]}
            if ctx.enabled:
                state.update(rng_ranks=rngs, world=ctx.world)
            state.update(budget=self.cfg.budget, train_config=to_dict(self.cfg))
            try:
                save_checkpoint(self.root, run.step, self.model, self.model_cfg, self.tokenizer, state, weights=weights)
            except BudgetLMError as e:  # NaN weights, a full disk: every rank stops with rank 0's message
                error = str(e)
        error = ctx.gather_objects(error)[0]  # also the barrier: no rank goes on before the save ends
        if error:
            raise BudgetLMError(error)
        self.saved_step = run.step
        return time.perf_counter() - t

    def restore(self, saved: dict[str, Any], source: str) -> None:
        """Continue from a checkpoint's state.pt (weights are loaded before the model is wrapped)."""
        ctx, run = self.ctx, self.state
        ctx.load_optimizer_state(self.model, self.optimizer, saved["optimizer"], source)  # plain: load_state_dict
        self.loader.load_state_dict(saved["loader"])
        run.step, run.tokens_seen, run.losses = saved["step"], saved["tokens"], saved["losses"]
        self.budget.max_frac = saved["max_frac"]
        self.budget.clock.before += saved["elapsed"]
        set_rng_state(ctx.rank_rng(saved) if ctx.enabled else saved["rng"])
        self.saved_step = run.step


def check_resume(resume: str, model_cfg: ModelConfig, cfg: TrainConfig, tokenizer: Any, data_dir: str | Path):
    """(checkpoint path, weights, state.pt) of a checkpoint this run can continue, or a one-line error."""
    ckpt, ck_cfg, weights, ck_tok, state = load_checkpoint(resume)
    if ck_cfg != model_cfg:
        diff = [k for k, v in to_dict(ck_cfg).items() if to_dict(model_cfg)[k] != v]
        raise BudgetLMError(f"--resume {ckpt}: checkpoint model config differs in {', '.join(diff)}")
    if ck_tok.fingerprint() != tokenizer.fingerprint():
        raise BudgetLMError(f"--resume {ckpt}: checkpoint tokenizer ({ck_tok.spec}) does not match "
                            f"the data's tokenizer ({tokenizer.spec}) in {data_dir}")
    if state is None:
        raise BudgetLMError(f"--resume {ckpt}: no state.pt (weights-only checkpoint cannot resume)")
    if state["budget"] != cfg.budget:
        raise BudgetLMError(f"--resume {ckpt}: checkpoint was trained with --budget {state['budget']}, "
                            f"this run asks for {cfg.budget}")
    return ckpt, weights, state

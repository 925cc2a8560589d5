"""The evaluations a training run makes on its way: validation loss/BPB (sharded over ranks),
HellaSwag, and text samples. Each is timed, so the trainer can keep it out of its throughput
and the budget clock can size the final eval from the measured speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from budgetlm.config import TrainConfig
from budgetlm.eval.perplexity import evaluate
from budgetlm.train.distributed import DistContext, maybe_main_first


def sample_text_from(model: torch.nn.Module, tokenizer: Any, n_tokens: int, seed: int) -> str | None:
    """A sample from end-of-text with its own generator, so training's RNG stream is untouched."""
    from budgetlm.sample.generate import sample_text
    if not (hasattr(model, "new_cache") or hasattr(model, "sample")):  # generate's own test of a sampler
        return None
    was_training = model.training
    text = sample_text(model, tokenizer, "", n_tokens, temperature=1.0, top_p=1.0, seed=seed).text
    model.train(was_training)
    return text


@dataclass
class Evaluator:
    ctx: DistContext
    cfg: TrainConfig
    model: torch.nn.Module  # the bare (or FSDP-sharded) module
    run_model: Any  # what the step calls: one process evaluates through it (compiled)
    tokenizer: Any
    val_tokens: np.ndarray
    device: torch.device
    autocast: Any
    token_bytes: np.ndarray = field(init=False)
    hs_examples: list | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.token_bytes = self.tokenizer.token_bytes()
        if self.cfg.eval.hellaswag_every:
            from budgetlm.eval import hellaswag
            with maybe_main_first(self.ctx):  # rank 0 downloads, the others then read the cached file
                self.hs_examples = hellaswag.load_examples(hellaswag.locate(self.cfg.eval.hellaswag_file),
                                                           self.cfg.eval.hellaswag_items)

    def validation(self, max_tokens: int) -> dict[str, float]:
        cfg, ctx = self.cfg, self.ctx
        if ctx.enabled:  # sharded over ranks, on the bare (or FSDP) module: DDP's forward would sync buffers
            return ctx.evaluate(lambda m, toks, **kw: evaluate(m, toks, self.token_bytes, batch_size=cfg.batch_size,
                                                               device=self.device, autocast=self.autocast, **kw),
                                self.model, self.val_tokens, cfg.seq_len, max_tokens)
        return evaluate(self.run_model, self.val_tokens, self.token_bytes, cfg.seq_len, cfg.batch_size, self.device,
                        max_tokens=max_tokens, autocast=self.autocast)

    def timed_validation(self, max_tokens: int) -> tuple[dict[str, float], float]:
        """(the eval, its seconds as rank 0 measured them: every rank then sizes the same)."""
        t = time.perf_counter()
        ev = self.validation(max_tokens)
        return ev, self.ctx.broadcast_float(time.perf_counter() - t)

    def speed(self) -> float:
        """Tokens/s of one eval batch (rank 0's), to size the final eval and the eval points.
        The batch is scored twice and the second timed: a compiled model's first forward-only pass
        compiles the eval graph (~12 s for 124M on an H200), which once read as a 100x slower eval,
        cancelled every eval point of a 7-minute GPU run and shrank its final eval to 230K tokens."""
        n = self.cfg.batch_size * self.cfg.seq_len
        self.validation(n)
        ev, seconds = self.timed_validation(n)
        return ev["val_tokens"] / max(seconds, 1e-9)

    def hellaswag(self) -> dict[str, float]:
        from budgetlm.eval import hellaswag
        ctx = self.ctx
        r = hellaswag.evaluate_hellaswag(self.model, self.tokenizer, self.hs_examples, self.device, ctx.rank,
                                         ctx.world, self.autocast, reduce=ctx.all_reduce_sum)
        return {"hellaswag_acc": r["acc"], "hellaswag_acc_norm": r["acc_norm"], "hellaswag_n": r["n"]}

    def sample(self, step: int) -> str | None:
        """Rank 0's sample at `step` (under FSDP every rank generates in lockstep); None elsewhere."""
        ctx = self.ctx
        if not (ctx.is_main or ctx.parallel == "fsdp"):
            return None
        if ctx.parallel == "fsdp":  # sharded weights: every rank generates in lockstep
            self.model.unshard()
        text = sample_text_from(self.model, self.tokenizer, self.cfg.eval.sample_tokens, self.cfg.seed + step)
        if ctx.parallel == "fsdp":
            self.model.reshard()
        return text if ctx.is_main else None

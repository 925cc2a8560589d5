"""Data-parallel training across processes started by torchrun (llm.c / TinyLlama style).

One process per GPU (or per CPU slot with gloo). Every rank builds the same model from the
same seed and reads disjoint windows of the data (BatchLoader rank/world); gradients are
averaged by DDP, or parameters, gradients and optimizer state are sharded by FSDP2
(`fully_shard` per Block, then the root). ZeRO-1 (`--zero-stage 1`) keeps DDP's replicated
weights but shards the AdamW state. Only rank 0 writes files and prints.

With WORLD_SIZE unset or 1, `setup` returns a context whose helpers are identities, so the
single-process trainer path is exactly what it was.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from budgetlm.errors import BudgetLMError

PARALLEL_MODES = ("auto", "ddp", "fsdp")


def env_world() -> tuple[int, int, int]:
    """(rank, world, local_rank) from the torchrun environment; (0, 1, 0) when not launched by it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


@dataclass
class DistContext:
    """Where this process stands in the job, plus the collectives the trainer needs."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    parallel: str = "none"  # none | ddp | fsdp
    zero_stage: int = 0
    owned: bool = False  # this context started the process group, so teardown ends it
    wrapped: Any = None  # the DDP wrapper or the FSDP root (for skipping gradient sync)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    # ---- collectives (identities when world == 1) ----
    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place average over ranks (gloo has no AVG op, so SUM / world)."""
        if self.enabled:
            torch.distributed.all_reduce(t)
            t /= self.world
        return t

    def broadcast_float(self, x: float) -> float:
        """Rank 0's value on every rank: budget decisions must agree or ranks hang at the next collective."""
        if not self.enabled:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(t, 0)
        return float(t.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    # ---- model and optimizer ----
    def wrap(self, model: torch.nn.Module, compute_dtype: torch.dtype | None = None) -> torch.nn.Module:
        """The module to call in the training step: DDP(model), or the FSDP2-sharded model itself.

        With FSDP2 and a bf16/fp16 `compute_dtype`, the weights are gathered in that dtype and the
        gradients reduced in fp32 (torchtitan's policy): half the all-gather traffic and no separate
        autocast copy of each weight; the sharded fp32 master weights and AdamW state are unchanged."""
        if self.parallel == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DDP(model, device_ids=ids, broadcast_buffers=False)  # buffers (RoPE tables) are the same everywhere
            return self.wrapped
        if self.parallel == "fsdp":
            try:
                from torch.distributed.fsdp import fully_shard
            except ImportError:
                raise BudgetLMError(f"--parallel fsdp needs torch >= 2.6 (FSDP2 fully_shard); this is torch "
                                    f"{torch.__version__}; use --parallel ddp") from None
            kw = {}
            if compute_dtype in (torch.bfloat16, torch.float16):
                from torch.distributed.fsdp import MixedPrecisionPolicy
                kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
            for block in getattr(model, "blocks", []):
                fully_shard(block, **kw)
            fully_shard(model, **kw)
            self.wrapped = model
            return model
        return model

    def make_optimizer(self, model: torch.nn.Module, make: Callable[..., torch.optim.Optimizer], cfg: Any,
                       device: torch.device) -> torch.optim.Optimizer:
        """`make(model, cfg, device)` (plain AdamW), or the same groups under ZeroRedundancyOptimizer."""
        if self.zero_stage != 1 or not self.enabled:
            return make(model, cfg, device)
        from torch.distributed.optim import ZeroRedundancyOptimizer
        if cfg.optim.optimizer != "adamw":  # issue 21: ZeRO here wraps AdamW alone
            raise BudgetLMError(f"--zero-stage 1 shards AdamW only; use --zero-stage 0 with --optimizer {cfg.optim.optimizer}")
        plain = make(model, cfg, device)  # only to reuse its parameter groups and hyperparameters
        groups = [{k: g[k] for k in ("params", "weight_decay", "lr_scale") if k in g} for g in plain.param_groups]
        extra = {k: plain.defaults[k] for k in ("fused", "foreach") if plain.defaults.get(k)}
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, lr=cfg.optim.lr,
                                       betas=(cfg.optim.beta1, cfg.optim.beta2), eps=1e-8, **extra)

    @contextmanager
    def micro_step(self, last: bool) -> Iterator[None]:
        """Skip the gradient all-reduce on all but the last micro-step of an accumulated step."""
        if self.parallel == "ddp" and not last:
            with self.wrapped.no_sync():
                yield
        else:
            if self.parallel == "fsdp":  # reduce-scatter gradients only on the last micro-step
                self.wrapped.set_requires_gradient_sync(last)
            yield

    def scalar(self, t: torch.Tensor) -> float:
        """A Python float from a tensor that may be a DTensor (FSDP grad norm)."""
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        return float(t)

    # ---- checkpoint pieces: collectives on every rank, data on rank 0 ----
    def full_model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Full (unsharded) weights on CPU for rank 0; None elsewhere; None when model.state_dict() will do."""
        if self.parallel != "fsdp":
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if getattr(getattr(model, "cfg", None), "tie_embeddings", False):
            sd.pop("lm_head.weight", None)  # stored once, as the plain checkpoint does
        return sd

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
        """The whole optimizer state on rank 0 (ZeRO consolidates, FSDP gathers); None on other ranks."""
        if self.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
            sd = get_optimizer_state_dict(model, optimizer,
                                          options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return {"fsdp_full": sd} if self.is_main else None
        if self.zero_stage == 1 and self.enabled:
            optimizer.consolidate_state_dict(to=0)
            return optimizer.state_dict() if self.is_main else None
        return optimizer.state_dict() if self.is_main else None

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                             source: str) -> None:
        fsdp_saved = "fsdp_full" in state
        if fsdp_saved != (self.parallel == "fsdp"):
            raise BudgetLMError(f"--resume {source}: optimizer state was saved "
                                f"{'with' if fsdp_saved else 'without'} --parallel fsdp; resume the same way")
        if fsdp_saved:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
            set_optimizer_state_dict(model, optimizer, state["fsdp_full"],
                                     options=StateDictOptions(full_state_dict=True))
        else:  # ZeRO takes the consolidated dict on every rank and keeps its own partition
            optimizer.load_state_dict(state)
            steps_to_param_device_(getattr(optimizer, "optim", optimizer))

    def rank_rng(self, state: dict) -> dict:
        """This rank's saved RNG state (rank 0's when the world size changed)."""
        ranks = state.get("rng_ranks")
        if ranks and len(ranks) == self.world:
            return ranks[self.rank]
        return ranks[0] if ranks else state["rng"]

    # ---- evaluation sharded over ranks ----
    def evaluate(self, evaluate_fn: Callable[..., dict], model: torch.nn.Module, tokens: np.ndarray,
                 seq_len: int, max_tokens: int, **kw: Any) -> dict[str, float]:
        """Validation windows split over ranks, sums all-reduced. FSDP needs the same number of forward
        passes on every rank, so there each rank gets n // world windows (or all n when n < world)."""
        from budgetlm.data.loader import eval_windows
        windows = eval_windows(tokens.size, seq_len, max_tokens)  # the same windows as one process scores
        n = len(windows)
        if self.parallel == "fsdp" and n < self.world:
            return evaluate_fn(model, tokens, seq_len=seq_len, windows=windows, **kw)
        if self.parallel == "fsdp":
            per = n // self.world
            lo, hi = self.rank * per, (self.rank + 1) * per
        else:
            lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        sums = [0.0, 0.0, 0.0, 0.0, 0.0]
        if hi > lo:
            r = evaluate_fn(model, tokens, seq_len=seq_len, windows=windows[lo:hi], **kw)
            sums = [r["val_loss"] * r["val_tokens"], r["val_bpb"] * math.log(2) * max(r["val_bytes"], 1),
                    float(r["val_bytes"]), float(r["val_tokens"]), float(bool(r.get("bound")))]
        loss_sum, loss_text, nbytes, ntok, bound = self.all_reduce_sum(sums)
        loss = loss_sum / max(ntok, 1)
        out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
               "val_bpb": loss_text / math.log(2) / max(nbytes, 1), "val_tokens": int(ntok), "val_bytes": int(nbytes)}
        if bound:
            out["bound"] = True  # a variational upper bound (d3pm), as evaluate() marks it
        return out

    def cpu_threads(self) -> int | None:
        """Cores per process on CPU, so N local ranks do not oversubscribe the machine."""
        if not self.enabled or self.device.type != "cpu":
            return None
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // max(local, 1))

    def __enter__(self) -> "DistContext":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.teardown(clean=exc_type is None)

    def teardown(self, clean: bool = True) -> None:
        """End the process group this context started. After a clean run every rank first waits
        for the others and lets go of the DDP/FSDP wrapper, which holds the group: a gloo rank that
        freed it after its peer had exited once hung for good in the group's destructor. After an
        error no rank waits for the others (they may never come)."""
        self.wrapped = None
        if self.owned and torch.distributed.is_initialized():
            if clean:
                import gc
                gc.collect()  # compiled and wrapped modules sit in reference cycles
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()
            self.owned = False


def steps_to_param_device_(optimizer: torch.optim.Optimizer) -> None:
    """Fused (and capturable) AdamW keeps each parameter's step count on the parameter's device.
    ZeroRedundancyOptimizer.load_state_dict leaves the counts on the CPU (seen with torch 2.11 on
    CUDA: the fused kernel then refuses them), so put them back where the kernel wants them."""
    if not any(g.get("fused") or g.get("capturable") for g in optimizer.param_groups):
        return
    for p, st in optimizer.state.items():
        step = st.get("step")
        if torch.is_tensor(step) and step.device != p.device:
            st["step"] = step.to(p.device)


def setup(device: torch.device, parallel: str = "auto", zero_stage: int = 0) -> DistContext:
    """Join the job torchrun started (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the env).

    NCCL on CUDA (each rank on cuda:LOCAL_RANK), gloo on CPU. A process group that already exists
    (tests, notebooks) is used as is and left open.
    """
    if parallel not in PARALLEL_MODES:
        raise BudgetLMError(f"--parallel must be one of {', '.join(PARALLEL_MODES)}, got {parallel!r}")
    if zero_stage not in (0, 1):
        raise BudgetLMError(f"--zero-stage must be 0 or 1 (ZeRO-1 shards the optimizer state), got {zero_stage}")
    rank, world, local_rank = env_world()
    if world <= 1:
        if parallel == "fsdp" or zero_stage:
            raise BudgetLMError("--parallel fsdp / --zero-stage 1 need several processes: launch with "
                                "torchrun --nproc_per_node N -m budgetlm train ...")
        return DistContext(device=device)
    if device.type == "mps":
        raise BudgetLMError("multi-process training runs on CUDA (NCCL) or CPU (gloo), not on Apple MPS")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    mode = "ddp" if parallel == "auto" else parallel
    if mode == "fsdp" and zero_stage:
        raise BudgetLMError("--zero-stage 1 is for --parallel ddp; FSDP already shards the optimizer state")
    owned = False
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw = {"device_id": device} if device.type == "cuda" else {}
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world, **kw)
        owned = True
    ctx = DistContext(rank=rank, world=world, local_rank=local_rank, device=device, parallel=mode,
                      zero_stage=zero_stage, owned=owned)
    return ctx


@contextmanager
def maybe_main_first(ctx: DistContext) -> Iterator[None]:
    """Rank 0 runs the body first (a download), the others after it has finished."""
    if ctx.is_main:
        yield
        ctx.barrier()
    else:
        ctx.barrier()
        yield


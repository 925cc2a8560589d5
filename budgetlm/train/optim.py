"""The optimizer: AdamW (the plain recipe), or Muon for the blocks' weight matrices with AdamW for
everything else (embeddings, head, norms, biases), each group with its own learning rate.

The trainer's schedule sets every group's lr to `lr_at(...) * group.get("lr_scale", 1.0)`: a group
keeps its base LR as a multiple of --lr, so warmup and decay shape all groups alike. The plain
AdamW groups carry no lr_scale, so their state_dict (and old checkpoints) stay as they were.

Muon (Keller Jordan, 2024; `torch.optim.Muon`): SGD-momentum whose update is orthogonalized by a
quintic Newton-Schulz iteration. Defaults follow the reference: coefficients (3.4445, -4.7750,
2.0315), 5 steps, Nesterov momentum 0.95 (torch's defaults are exactly these), and torch's
adjust_lr_fn "original" = Keller Jordan's scale sqrt(max(1, rows/cols)), so --muon-lr means what
it means in the reference (0.02 in Keller Jordan's Muon README; the speedrun used 0.05 at 512K-token
batches). "match_rms_adamw" (Moonshot's 0.2*sqrt(max(rows, cols))) is the other choice.
"""

from __future__ import annotations

from typing import Any

import torch

from budgetlm.errors import BudgetLMError

OPTIMIZERS = ("adamw", "muon")
MUON_LR_ADJUST = ("original", "match_rms_adamw")


def _adamw(groups: list[dict], cfg: Any, device: torch.device) -> torch.optim.AdamW:
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=1e-8, **extra)


def _scaled(params: list, lr: float | None, base_lr: float, **group: Any) -> dict:
    """A parameter group whose LR is `lr` (None: the base LR), kept as a multiple of the base LR."""
    out = {"params": params, **group}
    if lr is not None:
        out["lr_scale"] = lr / base_lr
    return out


def _embedding_and_head(model: torch.nn.Module) -> tuple[set[int], set[int]]:
    """ids of the input-table parameters (token, position, value embeddings) and of the untied head."""
    embeds = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = getattr(model, "lm_head", None)
    heads = {id(head.weight)} - embeds if head is not None else set()
    return embeds, heads


def adamw_groups(model: torch.nn.Module, cfg: Any, muon_ids: set[int] = frozenset()) -> list[dict]:
    """AdamW's groups: matrices decay, vectors (biases, norms, gains) do not. With --embed-lr or
    --head-lr the embeddings / untied head get groups of their own (decaying, as matrices)."""
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in muon_ids]
    embed_lr, head_lr = cfg.optim.embed_lr, cfg.optim.head_lr
    if embed_lr is None and head_lr is None and not muon_ids:  # the plain recipe's two groups, as ever
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    embeds, heads = _embedding_and_head(model)
    pick = lambda ids: [p for p in params if id(p) in ids]
    rest = [p for p in params if id(p) not in embeds | heads]
    groups = [_scaled(pick(embeds), embed_lr, cfg.optim.lr, weight_decay=cfg.optim.weight_decay),
              _scaled(pick(heads), head_lr, cfg.optim.lr, weight_decay=cfg.optim.weight_decay),
              {"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def muon_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weight matrices inside the transformer blocks (attention and MLP Linears)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise BudgetLMError(f"--optimizer muon: the {type(model).__name__} model has no transformer blocks")
    embeds, _ = _embedding_and_head(model)
    return [p for p in blocks.parameters() if p.requires_grad and p.dim() == 2 and id(p) not in embeds]


def _is_sharded(p: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without DTensor has no FSDP2 either
        return False
    return isinstance(p, DTensor)


class MuonAdamW:
    """One optimizer object over two: Muon for the block matrices, AdamW for the rest. It offers what
    the trainer, checkpoints and steps_to_param_device_ use: step, zero_grad, param_groups (the inner
    groups themselves, so setting a group's lr reaches the inner optimizer), state, state_dict and
    load_state_dict (keyed by inner optimizer, so a resume restores each exactly)."""

    def __init__(self, adamw: torch.optim.AdamW, muon: torch.optim.Optimizer) -> None:
        self.adamw, self.muon = adamw, muon
        self.defaults = adamw.defaults

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups + self.muon.param_groups

    @property
    def state(self) -> dict:
        return {**self.adamw.state, **self.muon.state}

    @torch.no_grad()
    def step(self) -> None:
        self.adamw.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"adamw", "muon"}:
            raise BudgetLMError("--resume: the checkpoint's optimizer state is not Muon+AdamW "
                                "(it was saved with another --optimizer; resume with the same one)")
        self.adamw.load_state_dict(state["adamw"])
        self.muon.load_state_dict(state["muon"])


def muon_optimizer(params: list, cfg: Any) -> torch.optim.Optimizer:
    if not hasattr(torch.optim, "Muon"):  # added in torch 2.9
        raise BudgetLMError(f"--optimizer muon needs torch >= 2.9 (torch.optim.Muon); this is torch {torch.__version__}")
    group = _scaled(params, cfg.optim.muon_lr, cfg.optim.lr)
    # Same keyword names in torch 2.9-2.13 (lr, weight_decay, momentum, nesterov, ns_steps, adjust_lr_fn).
    return torch.optim.Muon([group], lr=cfg.optim.muon_lr, weight_decay=cfg.optim.muon_weight_decay,
                            momentum=cfg.optim.muon_momentum, nesterov=True, ns_steps=5,
                            adjust_lr_fn=cfg.optim.muon_lr_adjust)


def make_optimizer(model: torch.nn.Module, cfg: Any, device: torch.device) -> torch.optim.Optimizer | MuonAdamW:
    """AdamW over every parameter (--optimizer adamw), or Muon+AdamW (--optimizer muon). Fused AdamW
    kernel on CUDA, foreach elsewhere."""
    if cfg.optim.optimizer == "adamw":
        return _adamw(adamw_groups(model, cfg), cfg, device)
    matrices = muon_params(model)
    if any(_is_sharded(p) for p in matrices):
        # FSDP2 shards each matrix by rows: Newton-Schulz needs the whole matrix on one rank.
        raise BudgetLMError("--optimizer muon does not support --parallel fsdp (it orthogonalizes whole "
                            "matrices, FSDP2 holds row shards); use --parallel ddp")
    ids = {id(p) for p in matrices}
    return MuonAdamW(_adamw(adamw_groups(model, cfg, ids), cfg, device), muon_optimizer(matrices, cfg))


def set_group_lrs(optimizer: Any, lr: float) -> None:
    """The schedule's LR for this step into every group, times the group's own scale."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)

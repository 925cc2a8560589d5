"""Model registry: the trainer asks for a model by config and never needs to know which one."""

from __future__ import annotations

import torch

from budgetlm.config import ModelConfig
from budgetlm.errors import BudgetLMError


def build_model(cfg: ModelConfig) -> torch.nn.Module:
    if cfg.arch == "gpt":
        from budgetlm.models.transformer import GPT
        return GPT(cfg)
    if cfg.arch == "lstm":
        from budgetlm.models.lstm import LSTMLM
        return LSTMLM(cfg)
    if cfg.arch == "d3pm":
        from budgetlm.models.d3pm import D3PM
        return D3PM(cfg)
    raise BudgetLMError(f"--arch: unknown architecture {cfg.arch!r}")

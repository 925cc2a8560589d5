"""FP8 matmuls for training, through torchao's Float8Linear (dynamic scaling, bf16 master weights).

Every nn.Linear whose dimensions the FP8 tensor cores accept (multiples of 16) is swapped in
place; weights stay the same Parameters, so tied embeddings, checkpoints and export are
unchanged. Opt-in: FP8 trades precision for speed, so it is measured apart from the bf16 fast
path (benchmarks/HISTORY.md §2) and checked against it (benchmarks/gpu_correctness.py).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from budgetlm.errors import BudgetLMError

FP8_RECIPES = ("off", "tensorwise", "rowwise")


def fp8_supported(device: torch.device) -> bool:
    """FP8 tensor cores: NVIDIA Ada (8.9), Hopper (9.0) and newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def enable_fp8(model: nn.Module, recipe: str = "tensorwise", include_head: bool = True,
               emulate: bool = False, modules: str = "all") -> list[str]:
    """Swap the model's eligible Linears for Float8Linear; returns the swapped modules' names.

    `recipe`: torchao's scaling recipe (tensorwise: one scale per tensor, fastest; rowwise: one
    per row, more accurate). `emulate` runs the FP8 casts with fp32 matmuls (any device; tests).
    `modules`: "all", or comma-separated pieces of module names ("mlp", "mlp.down", "attn.qkv"):
    only Linears whose name contains one are swapped. In a narrow model FP8 pays only where a
    matmul is large against the casts it needs (benchmarks/HISTORY.md §2).
    """
    if recipe == "off":
        return []
    pieces = [p.strip() for p in modules.split(",") if p.strip()]
    if not pieces:
        raise BudgetLMError("--fp8-modules: give 'all' or pieces of module names, e.g. 'mlp' or 'mlp.down'")
    if recipe not in FP8_RECIPES:
        raise BudgetLMError(f"--fp8: unknown recipe {recipe!r} (use {', '.join(FP8_RECIPES)})")
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise BudgetLMError("--fp8 needs torchao: pip install 'budgetlm[fp8]'") from None
    device = next(model.parameters()).device
    if not emulate and not fp8_supported(device):
        raise BudgetLMError(f"--fp8 needs an NVIDIA GPU with FP8 tensor cores (Ada/Hopper or newer); "
                            f"the model is on {device}")
    config = Float8LinearConfig.from_recipe_name(recipe)
    if emulate:
        config = dataclasses.replace(config, emulate=True)
    swapped: list[str] = []

    def eligible(module: nn.Module, name: str) -> bool:
        ok = (isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0
              and (include_head or name != "lm_head") and ("all" in pieces or any(q in name for q in pieces)))
        if ok:
            swapped.append(name)
        return ok

    convert_to_float8_training(model, module_filter_fn=eligible, config=config)
    if not swapped:
        raise BudgetLMError(f"--fp8-modules {modules!r} matches no Linear of the model "
                            f"(names look like {', '.join(n for n, m in model.named_modules() if isinstance(m, nn.Linear))[:120]})")
    return swapped

"""Device, precision and thread choices in one place, so CPU, CUDA and Apple MPS share one code path."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from budgetlm.errors import BudgetLMError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise BudgetLMError(f"--device: unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BudgetLMError("--device cuda: no CUDA device is available here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BudgetLMError("--device mps: Apple MPS is not available here")
    return dev


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """bf16 autocast where the hardware has fast bf16 (CUDA Ampere+); fp32 elsewhere."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise BudgetLMError(f"--dtype: unknown {name!r} (use auto, float32 or bfloat16)")
    return table[name]


def autocast_ctx(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_threads(threads: int | None, device: torch.device) -> int:
    """All physical cores for CPU math; on GPU machines leave torch's default."""
    if device.type != "cpu" and threads is None:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, threads or cores))
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def set_inductor_options(pairs: list[str] | None) -> dict:
    """Apply `--inductor KEY=VALUE` settings to torch._inductor.config (e.g. max_autotune_gemm=True,
    combo_kernels=True) and return them as a dict for the results row. Values are Python literals
    (True, 4, 'TRITON'); a bare word is taken as a string. Unknown keys are an error, not a no-op."""
    import ast

    import torch._inductor.config as inductor_config

    options = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BudgetLMError(f"--inductor {pair!r}: expected KEY=VALUE, e.g. max_autotune_gemm=True")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        try:
            current = inductor_config
            *parents, leaf = key.split(".")
            for part in parents:  # nested configs such as triton.cudagraphs
                current = getattr(current, part)
            getattr(current, leaf)
        except AttributeError:
            raise BudgetLMError(f"--inductor {pair!r}: torch._inductor.config has no option {key!r}") from None
        setattr(current, leaf, value)
        options[key] = value
    return options

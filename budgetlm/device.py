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


def should_compile(setting: str, device: torch.device) -> bool:
    """Compile pays on CUDA; on CPU and MPS the compile time ate the gain in our measurements
    (benchmarks/results.md), so `auto` leaves it off there."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    if setting != "auto":
        raise BudgetLMError(f"--compile must be auto, on or off, got {setting!r}")
    return device.type == "cuda"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")


# Below this size a training step is launch-bound on a GPU: CUDA graphs measured 2.4x (1.2M
# params) and 2.8x (7.3M) tokens/s on an H100 (benchmarks/RESULTS.md §2); larger sizes not measured.
CUDA_GRAPHS_MAX_PARAMS = 20_000_000


def resolve_cuda_graphs(setting: str, device: torch.device, compiled: bool, n_params: int,
                        distributed: bool) -> bool:
    """Whether to compile with CUDA graphs (torch.compile mode "reduce-overhead"): the step's
    kernels replay as one launch. `auto`: on for small models trained compiled on one CUDA GPU.
    With gradient accumulation the caller must keep the gradients allocated (keep_grads_allocated);
    so kept, a 0.76M-param model with 2 micro-batches per step trained 1.71x faster on an H200 with
    the same validation loss, and bench's steps matched the ungraphed ones bit for bit."""
    if setting not in ("auto", "on", "off"):
        raise BudgetLMError(f"--cuda-graphs: unknown {setting!r} (use auto, on, off)")
    if setting == "on" and not (device.type == "cuda" and compiled):
        raise BudgetLMError("--cuda-graphs on needs a CUDA device and compilation (--compile auto/on)")
    if setting == "on" and distributed:
        raise BudgetLMError("--cuda-graphs on is not supported with DDP/FSDP (one process only)")
    if setting == "auto":
        return device.type == "cuda" and compiled and not distributed and n_params < CUDA_GRAPHS_MAX_PARAMS
    return setting == "on"


def keep_grads_allocated(params) -> None:
    """Give every trainable parameter a zero gradient now; the caller then zeroes them in place
    (zero_grad(set_to_none=False)) instead of dropping them.

    Why: a CUDA-graph replay writes its outputs into memory the next replay reuses. When .grad is
    None, autograd does not copy the first micro-step's gradient: it keeps the graph's output tensor
    as .grad, and the second micro-step's replay overwrites it ("accessing tensor output of CUDAGraphs
    that has been overwritten", torch 2.11 on an H200). With .grad already allocated, every
    micro-step's gradient is added into it in place and its graph output is dead before the next
    replay. One difference from set_to_none: a parameter that gets no gradient in a step still
    takes AdamW's weight decay (a None grad would skip it); budgetlm's models use every parameter."""
    for p in params:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def resolve_half_residual(setting: str, device: torch.device, dtype: torch.dtype, fp8: str = "off") -> bool:
    """Whether the residual stream runs in the autocast dtype (bf16/fp16) instead of fp32.
    `auto`: on for CUDA half-precision training, where the fp32 stream doubled the bytes every
    norm and residual add moves (benchmarks/RESULTS.md §2); off on CPU/MPS, in fp32, and with
    FP8 rowwise matmuls, whose loss left the 2e-2 band only in combination with the bf16 stream."""
    if setting not in ("auto", "on", "off"):
        raise BudgetLMError(f"--half-residual: unknown {setting!r} (use auto, on, off)")
    if setting == "auto":
        return device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and fp8 != "rowwise"
    return setting == "on"


def resolve_ce_kernel(setting: str, device: torch.device, fused_loss: bool = False) -> bool:
    """Whether the loss runs through models/ce_kernel.py (loss gradient computed in the forward
    pass by one Triton kernel, over the logits' buffer). `auto`: on CUDA when Triton imports and
    the chunked loss is not asked for; elsewhere the plain loss."""
    from budgetlm.models.ce_kernel import triton_ready
    if setting not in ("auto", "on", "off"):
        raise BudgetLMError(f"--ce-kernel: unknown {setting!r} (use auto, on, off)")
    if setting == "on" and fused_loss:
        raise BudgetLMError("--ce-kernel on and --fused-loss on are two different loss heads: pick one")
    if setting == "on" and not triton_ready(device):
        raise BudgetLMError(f"--ce-kernel on needs a CUDA device and Triton (the model is on {device})")
    if setting == "auto":
        return triton_ready(device) and not fused_loss
    return setting == "on"


def resolve_fp8_head(setting: str, device: torch.device, ce_kernel: bool) -> bool:
    """Whether the CE kernel's head runs its three matmuls in FP8 (models/ce_kernel_fp8.py).
    Opt-in, like --fp8: FP8 trades gradient precision (~3e-2 relative) for speed."""
    from budgetlm.models.fp8 import fp8_supported
    if setting not in ("on", "off"):
        raise BudgetLMError(f"--fp8-head: unknown {setting!r} (use on, off)")
    if setting == "off":
        return False
    if not ce_kernel:
        raise BudgetLMError("--fp8-head on runs inside the CE kernel's head: it needs --ce-kernel auto/on "
                            "(CUDA with Triton), no --fused-loss and no distillation teacher")
    if not fp8_supported(device):
        raise BudgetLMError(f"--fp8-head on needs an NVIDIA GPU with FP8 tensor cores (Ada/Hopper or newer); "
                            f"the model is on {device}")
    return True


def resolve_attention(name: str, device: torch.device) -> str | None:
    """The attention kernel to ask scaled_dot_product_attention for, or None for PyTorch's own
    order. `auto` picks cuDNN on Hopper: there its fused attention ran 1.3-1.5x faster than
    FlashAttention-2 for our training shapes (1.04-1.06x per step; benchmarks/RESULTS.md §2), and
    PyTorch ranks it last."""
    if name not in ATTENTION_BACKENDS:
        raise BudgetLMError(f"--attn: unknown {name!r} (use {', '.join(ATTENTION_BACKENDS)})")
    if name == "auto":
        hopper = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9
        return "cudnn" if hopper else None
    return name


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

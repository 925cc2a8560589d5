"""The fast path, resolved once: which of compile, CUDA graphs, attention kernel, loss head, FP8
and recompute a run uses, decided by one function from the config, the device and the model.

The trainer, `bench` and the memory probe all build a `FastPath` with `resolve_fast_path` and set
it on their model with `apply` / `compile`, so they run the same step by construction. Each
`resolve_*` below keeps the measurement its `auto` rests on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from budgetlm.errors import BudgetLMError
from budgetlm.models.base import HeadOptions, LanguageModel
from budgetlm.models.fp8 import enable_fp8
from budgetlm.models.transformer import set_attention_kernel

# torch.compile modes that record CUDA graphs (their outputs are overwritten by the next replay)
GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class FastPath:
    compile: bool  # torch.compile the (wrapped) model
    compile_mode: str  # torch.compile mode: "default", or one of bench's choices
    cuda_graphs: bool  # the compiled step replays as CUDA graphs (mode in GRAPH_MODES)
    graph_grads: bool  # graphs with accumulation: gradients kept allocated, zeroed in place
    attention: str | None  # the SDPA kernel asked for, or None for PyTorch's own order
    fused_loss: bool  # chunked head + cross-entropy
    ce_kernel: bool  # head + cross-entropy through the Triton gradient kernel
    fp8_head: bool  # the CE kernel's head matmuls in FP8
    half_residual: bool  # the residual stream in the autocast dtype
    fp8: str  # FP8 Linears recipe ("off", "tensorwise", "rowwise")
    fp8_modules: str  # with fp8: "all" or pieces of Linear names
    recompute: int  # activation recomputation level (0, 1, 2)

    @property
    def head(self) -> HeadOptions:
        return HeadOptions(self.fused_loss, self.ce_kernel, self.fp8_head, self.half_residual)

    def apply(self, model: LanguageModel) -> list[str]:
        """Set the model's options; returns the names of the Linears swapped to FP8. Call it on
        the bare model before DDP/FSDP wrap it (they must see the FP8 Linears)."""
        layers = enable_fp8(model, self.fp8, modules=self.fp8_modules)
        model.set_recompute(self.recompute)
        model.set_head(self.head)
        set_attention_kernel(model, self.attention)
        return layers

    def compile_model(self, module: torch.nn.Module) -> Any:
        """The callable a step runs: `module` compiled (or itself). Call it after the optimizer is
        built; with graph_grads it first gives every parameter its kept gradient."""
        if self.graph_grads:  # gradients must outlive each replay: see keep_grads_allocated
            keep_grads_allocated(module.parameters())
        if not self.compile:
            return module
        return torch.compile(module) if self.compile_mode == "default" else torch.compile(module, mode=self.compile_mode)


def resolve_fast_path(cfg: Any, device: torch.device, dtype: torch.dtype, model: LanguageModel, *,
                      accum: int = 1, distributed: bool = False, loss_hook: bool = False,
                      compile_mode: str | None = None) -> FastPath:
    """The fast path for `model` under `cfg` (a TrainConfig: compile, cuda_graphs, attn, fused_loss,
    ce_kernel, fp8_head, fp8, fp8_modules, half_residual, recompute). loss_hook: a hook replaces the
    loss (distillation) and needs the logits, which the chunked loss and the CE kernel never form.
    compile_mode: bench's explicit torch.compile mode; None = the trainer's (CUDA graphs by
    resolve_cuda_graphs, "reduce-overhead" when on)."""
    support = model.head_support
    # Measured on an H100 (benchmarks/RESULTS.md): the compiled plain loss is faster than the
    # eager chunked one, which pays only when memory is short; so `auto` means off.
    fused = "fused_loss" in support and cfg.fast.fused_loss == "on" and not loss_hook
    ce = fp8_head = False
    if "ce_kernel" in support:
        ce = resolve_ce_kernel(cfg.fast.ce_kernel, device, cfg.fast.fused_loss == "on") and not loss_hook
        fp8_head = resolve_fp8_head(cfg.fast.fp8_head, device, ce)
    elif cfg.fast.fp8_head == "on":
        raise BudgetLMError(f"--fp8-head on: the {model.cfg.arch} model has no CE-kernel head")
    compiled = should_compile(cfg.fast.compile, device)
    if compile_mode is None:
        graphs = resolve_cuda_graphs(cfg.fast.cuda_graphs, device, compiled, model.num_params(), distributed)
        compile_mode = "reduce-overhead" if graphs else "default"
    else:
        graphs = compiled and compile_mode in GRAPH_MODES
    attention = resolve_attention(cfg.fast.attn, device)
    half = "half_residual" in support and resolve_half_residual(cfg.fast.half_residual, device, dtype, cfg.fast.fp8)
    return FastPath(compile=compiled, compile_mode=compile_mode, cuda_graphs=graphs, graph_grads=graphs and accum > 1,
                    attention=attention, fused_loss=fused, ce_kernel=ce, fp8_head=fp8_head, half_residual=half,
                    fp8=cfg.fast.fp8, fp8_modules=cfg.fast.fp8_modules, recompute=cfg.fast.recompute)


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



ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")


# Below this size a training step is launch-bound on a GPU: CUDA graphs measured 2.4x (1.2M
# params) and 2.8x (7.3M) tokens/s on an H100 (benchmarks/HISTORY.md §2); larger sizes not measured.
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
    norm and residual add moves (benchmarks/HISTORY.md §2); off on CPU/MPS, in fp32, and with
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
    FlashAttention-2 for our training shapes (1.04-1.06x per step; benchmarks/HISTORY.md §2), and
    PyTorch ranks it last."""
    if name not in ATTENTION_BACKENDS:
        raise BudgetLMError(f"--attn: unknown {name!r} (use {', '.join(ATTENTION_BACKENDS)})")
    if name == "auto":
        hopper = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9
        return "cudnn" if hopper else None
    return name



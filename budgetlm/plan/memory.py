"""How many parameters a shape has and how much accelerator memory one training step needs.

Parameter counts come from building the real model on the `meta` device (no storage, exact
numel, vocabulary padding included), so the planner never drifts from budgetlm.models. The
memory model follows what our trainer keeps alive under PyTorch AMP (fp32 parameters, bf16
autocast, AdamW), so it can be checked against torch.cuda.max_memory_allocated
(benchmarks/plan_check.py; on an H100 the eager estimate was 1-3% above the measured peak):

  weights    4 B/param   fp32 parameters (AMP keeps the master copy *as* the parameters)
  grads      4 B/param   fp32 .grad (resident from the 2nd micro-batch of an accumulating step)
  optimizer  8 B/param   AdamW exp_avg + exp_avg_sq, fp32
             = 16 B/param in total; zero1 shards the optimizer over N GPUs, fsdp all three.
  weight_copies          bf16 casts of every matmul weight that autocast makes in the forward
                         and autograd keeps for the backward (2 B per matmul param); under fsdp
                         only the two layers being gathered are resident
  activations            saved tensors per layer per token (see layer_activation_bytes), times
                         B*T*L. Recompute level 1 (MLPs) keeps the MLP's fp32 input instead of
                         its tensors; level 2 (whole blocks) keeps only each block's fp32 input.
                         Either adds back one layer's worth while it is recomputed.
  logits                 the loss head. Plain path: B*T*V elements of bf16 logits (held by the
                         trainer), fp32 log-softmax (saved by cross-entropy) and the fp32
                         gradient pair at the start of the backward: 2+4+4+4 = 14 B/element
                         (16 in fp32). Fused chunked path (models/fused_ce.py, opt-in with
                         TrainConfig.fused_loss = "on"): one 4096-row chunk of fp32 logits and temporaries
                         (~12 B/element) plus bf16 copies of hidden and head weight, and the
                         saved fp32 d(hidden), d(weight). Cross-entropy kernel (models/ce_kernel.py,
                         the CUDA default): the bf16 logits, overwritten by their gradient in the
                         forward pass and kept for the backward (2 B/element), plus the backward's
                         d(hidden), d(weight) and their scaled copies in bf16. Its FP8 head
                         (models/ce_kernel_fp8.py, opt-in): G and G^T in e5m2 kept for the backward
                         (2 B/element) and the bf16 logits beside them while they are written
                         (2 B/element more at the peak: +3.2 GB measured at GPT-2 32x1024), plus
                         the e4m3 copies of hidden and head weight in both layouts.
  overhead               fixed CUDA context, cuBLAS workspace and allocator slack; not part of
                         max_memory_allocated, but part of what must fit on the card
torch.compile fuses elementwise ops and saves less (15-40% below this estimate, measured), so
the estimate is an upper bound for compiled runs (the trainer compiles on CUDA).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import torch

from budgetlm.config import FastConfig, ModelConfig, OptimConfig, TrainConfig
from budgetlm.device import autocast_ctx, synchronize
from budgetlm.errors import BudgetLMError
from budgetlm.models import build_model
from budgetlm.train.distributed import DistContext
from budgetlm.train.fastpath import resolve_fast_path
from budgetlm.train.optim import make_optimizer
from budgetlm.train.step import CycleBatches, train_step

GB = 1e9
OVERHEAD_BYTES = 1.0 * GB  # CUDA context (~0.5 GB) + workspaces and fragmentation; see module docstring
SHARDINGS = ("none", "zero1", "fsdp")
_STATS: dict[tuple, dict[str, float]] = {}


def _stats(cfg: ModelConfig) -> dict[str, float]:
    """Exact counts from a meta-device build (cached): total params, matmul params, per-layer params."""
    key = tuple(dataclasses.astuple(cfg))
    if key not in _STATS:
        with torch.device("meta"):
            model = build_model(cfg)
        matmul = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
        block = model.blocks[0] if hasattr(model, "blocks") else None
        layer = sum(p.numel() for p in block.parameters()) if block is not None else 0
        mlp = sum(p.numel() for p in block.mlp.parameters()) if block is not None else 0
        _STATS[key] = {"params": float(model.num_params()), "matmul": float(sum(matmul.values())),
                       "layer": float(layer), "mlp": float(mlp), "fpt_base": float(model.flops_per_token(0)),
                       "fpt_per_seq": float(model.flops_per_token(1) - model.flops_per_token(0))}
    return _STATS[key]


def count_params(cfg: ModelConfig) -> int:
    """Exact parameter count (tied embeddings once), from the real module built on `meta`."""
    return int(_stats(cfg)["params"])


def flops_per_token(cfg: ModelConfig, seq_len: int, recompute: int = 0) -> float:
    """GPT.flops_per_token(seq_len) without allocating the model: 6N + attention; recompute
    adds the forward it redoes: the MLPs (2 FLOPs/param) at level 1, whole blocks at level 2."""
    s = _stats(cfg)
    fpt = s["fpt_base"] + s["fpt_per_seq"] * seq_len
    level = _level(recompute)
    if level == 1:
        fpt += 2 * cfg.n_layer * s["mlp"]
    elif level == 2:
        fpt += 2 * cfg.n_layer * s["layer"] + s["fpt_per_seq"] * seq_len / 3
    return fpt


def _level(recompute: bool | int) -> int:
    """Recompute level from a bool (True = whole blocks, as llm.c -r 2) or 0/1/2."""
    level = 2 if recompute is True else int(recompute or 0)
    if level not in (0, 1, 2):
        raise BudgetLMError(f"--recompute must be 0 (off), 1 (MLPs) or 2 (whole blocks), got {recompute!r}")
    return level


def _act_bytes(dtype: str) -> tuple[int, int]:
    """(a, r): bytes of a matmul activation and of a norm's saved input. AMP: bf16 matmuls, fp32
    norm inputs: with the fp32 residual stream (the embeddings are fp32 parameters, and bf16 +
    fp32 adds to fp32), and also with the bf16 stream the trainer runs on CUDA, because eager
    autograd then saves the norm's fp32 upcast instead (RMSNorm upcasts itself, CUDA autocast
    runs LayerNorm in fp32). Only torch.compile keeps the bf16 tensor and redoes the cast
    (5 GB less at TinyLlama 14x2048, benchmarks/HISTORY.md §2); compiled runs are below this
    eager-mode model anyway."""
    if dtype in ("bfloat16", "bf16"):
        return 2, 4
    if dtype in ("float32", "fp32"):
        return 4, 4
    raise BudgetLMError(f"--dtype: unknown {dtype!r} (use bfloat16 or float32)")


def layer_activation_bytes(cfg: ModelConfig, seq_len: int, dtype: str = "bfloat16",
                           attention: str = "flash", native_gqa: bool | None = None) -> dict[str, float]:
    """Bytes autograd saves per token in one block, by source. Follows transformer.Block:

    attention: norm1 input (r*d) + its output cast for qkv (a*d) + qkv output (q, k, v views
    saved by SDPA) + rotated q, k if rope (new tensors) + repeated k, v if GQA without SDPA's
    enable_gqa (the model uses it in half precision on CUDA: `native_gqa`, default = bf16) + SDPA output and
    fp32 log-sum-exp + the reshaped copy fed to proj (a*d). `flash`/efficient SDPA stores no
    T x T scores; `math` attention adds scores and probabilities, 2*a*n_head*T per token.
    mlp: norm2 input (r*d) + cast (a*d) + up output + activation output (+ gate product for swiglu).
    """
    a, r = _act_bytes(dtype)
    d, H, K, hd, h = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.hidden
    rope, gqa = cfg.pos == "rope", K != H
    if native_gqa is None:
        native_gqa = dtype in ("bfloat16", "bf16")
    repeated = gqa and not native_gqa
    attn = r * d + a * d + a * (H + 2 * K) * hd + 8  # + norm mean/rstd
    attn += a * H * hd if rope else 0  # rotated q
    attn += 2 * a * H * hd if repeated else (a * K * hd if rope else 0)  # repeated k, v / rotated k
    attn += a * d + 4 * H + a * d  # SDPA out + lse, proj input copy
    if attention == "math":
        attn += 2 * a * H * seq_len
    elif attention != "flash":
        raise BudgetLMError(f"attention must be flash or math, got {attention!r}")
    mlp = r * d + a * d + 8
    mlp += a * 2 * h + a * h + a * h if cfg.mlp == "swiglu" else a * h + a * h
    return {"attention": float(attn), "mlp": float(mlp), "total": float(attn + mlp)}


def loss_head_bytes(cfg: ModelConfig, tokens: int, dtype: str = "bfloat16", fused_loss: bool = False,
                    chunk_rows: int = 4096, ce_kernel: bool = False, fp8_head: bool = False) -> float:
    """Peak bytes of the LM head + cross-entropy for `tokens` rows (see the module docstring)."""
    a, r = _act_bytes(dtype)
    V, Vp, d = cfg.vocab_size, cfg.padded_vocab, cfg.n_embd
    if ce_kernel and fp8_head and not fused_loss:
        return tokens * Vp * (2 + 2) + 2 * (tokens + Vp) * d + a * tokens * d + 4 * Vp * d
    if ce_kernel and not fused_loss:
        return tokens * a * Vp + 2 * a * (tokens + Vp) * d
    if not fused_loss:
        return tokens * (a * Vp + 12.0 * V)
    copy = a if a == 2 else 0  # fp32 compute uses the tensors themselves
    saved = r * tokens * d + 4 * Vp * d  # d(hidden), d(weight) saved for the backward
    forward = copy * (tokens + Vp) * d + 12.0 * min(chunk_rows, tokens) * Vp
    backward = r * tokens * d + 4 * Vp * d  # grad_h * grad_out, grad_w * grad_out
    return saved + max(forward, backward)


def memory_estimate(cfg: ModelConfig, micro_batch: int, seq_len: int, dtype: str = "bfloat16",
                    sharding: str = "none", n_gpus: int = 1, recompute: bool | int = False,
                    attention: str = "flash", fused_loss: bool = False,
                    overhead: float = OVERHEAD_BYTES, ce_kernel: bool = False,
                    fp8_head: bool = False) -> dict[str, float]:
    """Peak bytes per GPU for one training step, by part (see the module docstring).

    recompute: False/0 off, 1 MLPs, True/2 whole blocks (TrainConfig.recompute).
    fused_loss / ce_kernel: the chunked loss head / the cross-entropy kernel's head (the trainer's
    CUDA default); neither: the plain compiled-or-eager loss.
    overhead: fixed bytes beside the tensors (CUDA context etc.; 0 for a CPU).
    Keys: weights, grads, optimizer, weight_copies, activations, logits, overhead,
    allocated (all but overhead: comparable to torch.cuda.max_memory_allocated) and total.
    """
    if sharding not in SHARDINGS:
        raise BudgetLMError(f"--sharding must be one of {', '.join(SHARDINGS)}, got {sharding!r}")
    if n_gpus < 1 or micro_batch < 0 or seq_len < 1:
        raise BudgetLMError(f"--gpus/micro-batch/--seq-len must be positive (got {n_gpus}, {micro_batch}, {seq_len})")
    level = _level(recompute)
    s = _stats(cfg)
    a, r = _act_bytes(dtype)
    P = s["params"]
    n_w = n_gpus if sharding == "fsdp" else 1
    n_o = n_gpus if sharding in ("zero1", "fsdp") else 1
    out = {"weights": 4 * P / n_w, "grads": 4 * P / n_w, "optimizer": 8 * P / n_o}
    copies = 2 * s["matmul"] if a == 2 else 0.0
    if sharding == "fsdp" and n_gpus > 1:  # two gathered layers (current + prefetch), fp32 + bf16 cast
        copies = 2 * s["layer"] * (4 + (2 if a == 2 else 0))
    out["weight_copies"] = copies
    tokens = micro_batch * seq_len
    per = layer_activation_bytes(cfg, seq_len, dtype, attention)
    head = r * cfg.n_embd + r * cfg.n_embd + a * cfg.n_embd  # embedding output, norm_f input + cast
    kept = {0: per["total"], 1: per["attention"] + r * cfg.n_embd, 2: r * cfg.n_embd}[level]
    redo = {0: 0.0, 1: per["mlp"], 2: per["total"]}[level]  # one layer rebuilt during its backward
    out["activations"] = tokens * (cfg.n_layer * kept + redo + head)
    out["logits"] = loss_head_bytes(cfg, tokens, dtype, fused_loss, ce_kernel=ce_kernel, fp8_head=fp8_head)
    out["overhead"] = float(overhead)
    out["allocated"] = sum(v for k, v in out.items() if k != "overhead")
    out["total"] = out["allocated"] + out["overhead"]
    return out


def pick_micro_batch(cfg: ModelConfig, seq_len: int, mem_bytes: float, dtype: str = "bfloat16",
                     sharding: str = "none", n_gpus: int = 1, recompute: bool | int = False,
                     max_micro: int = 64, headroom: float = 0.10, fused_loss: bool = False,
                     overhead: float = OVERHEAD_BYTES, ce_kernel: bool = False) -> int:
    """Largest power of two whose estimate fits in (1 - headroom) of memory; 0 if not even 1 fits.
    Headroom covers what the model leaves out (fragmentation, compile workspaces, temporaries)."""
    best, b = 0, 1
    while b <= max_micro:
        est = memory_estimate(cfg, b, seq_len, dtype, sharding, n_gpus, recompute, fused_loss=fused_loss,
                              overhead=overhead, ce_kernel=ce_kernel)["total"]
        if est > (1 - headroom) * mem_bytes:
            break
        best, b = b, b * 2
    return best


def _train_steps(cfg: ModelConfig, micro_batch: int, seq_len: int, device: torch.device, steps: int | None,
                 seconds: float | None, dtype: torch.dtype, compile: bool = False, accum: int = 1,
                 fused_loss: bool = False, recompute: int = 0, warmup: int = 1,
                 half_residual: bool | None = None, cuda_graphs: bool = False,
                 ce_kernel: bool | None = None, max_wall_s: float | None = None) -> dict[str, Any]:
    """Real AdamW steps on random tokens, the trainer's own (train/step.py's train_step, its fast path
    resolved by train/fastpath.py: fp32 params, autocast, `accum` micro-batches, clip, step, zero_grad).
    The first `warmup` steps (optimizer state, kernel selection, compile) are not timed.
    ce_kernel: None = the trainer's auto choice; False = the plain loss (speedrun_size's calibration).
    max_wall_s: also stop timing once this much wall time has passed since the call, build and warm-up
    included (after one timed step), so a calibration stays inside its share on a slow or busy machine."""
    begin = time.perf_counter()
    cfg = dataclasses.replace(cfg, block_size=max(cfg.block_size, seq_len))
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    onoff = lambda flag, auto=False: "auto" if flag is None and auto else ("on" if flag else "off")  # noqa: E731
    tc = TrainConfig(fast=FastConfig(compile=onoff(compile), cuda_graphs=onoff(cuda_graphs and compile), fused_loss=onoff(fused_loss), ce_kernel=onoff(ce_kernel, auto=True), half_residual=onoff(half_residual, auto=True), recompute=_level(recompute)),
                     optim=OptimConfig(lr=1e-4, beta1=0.9, beta2=0.95, weight_decay=0.1))
    fast = resolve_fast_path(tc, device, dtype, model, accum=accum)
    fast.apply(model)  # the trainer's switches, set the way it sets them
    opt = make_optimizer(model, tc, device)
    run = fast.compile_model(model)
    amp = autocast_ctx(device, dtype)
    x = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len), device=device)
    y = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len), device=device)
    batches, plain = CycleBatches([(x, y)]), DistContext(device=device)

    def step() -> float:
        t = time.perf_counter()
        train_step(run, model, opt, batches, plain, accum=accum, device=device, autocast=amp,
                   cuda_graphs=fast.cuda_graphs, graph_grads=fast.graph_grads, grad_clip=1.0)
        synchronize(device)
        return time.perf_counter() - t

    first = step()  # warm-up: optimizer state, kernels, compile
    for _ in range(warmup - 1):  # compiled code settles (autotuning, recompiles) over a few steps
        step()
    times: list[float] = []
    t0 = time.perf_counter()
    while (steps is not None and len(times) < steps) or (seconds is not None and time.perf_counter() - t0 < seconds):
        if max_wall_s is not None and times and time.perf_counter() - begin > max_wall_s:
            break
        times.append(step())
    step_s = statistics.median(times) if times else first
    return {"first_step_s": first, "step_s": step_s, "steps": len(times), "accum": accum,
            "tokens_per_s": accum * micro_batch * seq_len / step_s, "params": count_params(cfg)}


def measure_throughput(cfg: ModelConfig, micro_batch: int, seq_len: int, seconds: float = 3.0,
                       device: torch.device | None = None, compile: str = "auto") -> dict[str, Any]:
    """Tokens/s of real training steps on this machine's device for about `seconds` (after the
    warm-up steps), so --measure can put a measured number beside the estimate. compile="auto"
    does what the trainer does (compiled on CUDA): the compile time is spent in the warm-up and
    reported as first_step_s, and the timed steps run the code training will run."""
    from budgetlm.train.fastpath import resolve_cuda_graphs, should_compile
    from budgetlm.plan.hardware import local_device
    dev = device or local_device()[0]
    dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    compiled = should_compile(compile, dev)
    graphs = resolve_cuda_graphs("auto", dev, compiled, count_params(cfg), distributed=False)
    res = _train_steps(cfg, micro_batch, seq_len, dev, None, seconds, dtype, compiled,
                       warmup=3 if compiled else 1, cuda_graphs=graphs)
    res["compile"], res["cuda_graphs"] = compiled, graphs
    return res


def measure_peak_memory(cfg: ModelConfig, micro_batch: int, seq_len: int, steps: int = 3,
                        compile: bool = False, accum: int = 2, fused_loss: bool = False,
                        recompute: int = 0) -> dict[str, Any]:
    """Run `steps` real steps on CUDA (bf16 autocast, fused AdamW, fp32 params; the chunked loss
    head with fused_loss=True, else the trainer's default head — the cross-entropy kernel where
    Triton imports —, recompute levels as TrainConfig.recompute) and return
    torch.cuda.max_memory_allocated with timings, to check memory_estimate()['allocated'].

    accum=2 by default because the estimate counts fp32 grads as resident during the forward,
    which is true from the second micro-batch of an accumulating step (plans accumulate); with
    accum=1 grads are None until the backward frees activations, and the peak is lower by up
    to 4 B/param (measured on H100: tinyllama-1.1b ub 8, 35.3 GB vs 40.7 estimated)."""
    if not torch.cuda.is_available():
        raise BudgetLMError("measure_peak_memory needs a CUDA device")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    res = _train_steps(cfg, micro_batch, seq_len, torch.device("cuda"), steps, None, torch.bfloat16, compile, accum,
                       fused_loss, recompute)
    res.update({"max_allocated": torch.cuda.max_memory_allocated() - base,
                "max_reserved": torch.cuda.max_memory_reserved(), "device": torch.cuda.get_device_name()})
    torch.cuda.empty_cache()
    return res

"""How big a model the speedrun trains: sized from the budget and this device's measured speed.

1. Calibrate (`calibrate`): a few eager steps of one reference shape (no compile) give the
   device's effective FLOP/s. That takes ~1% of the budget.
2. Predict tokens/s for every candidate of the device's ladder: the calibrated FLOP/s, corrected
   by size with what benchmarks/RESULTS.md measured (`_cpu_efficiency`, `_gpu_mfu`), divided by
   the candidate's FLOPs/token. On CUDA the prediction is for the step the trainer runs
   (compiled, CUDA graphs below 20M params), and the compile time is taken from the seconds left.
3. Tokens = predicted tokens/s x training seconds; the planner's Chinchilla loss
   (plan.chinchilla_loss, with the data's unique tokens so repeats count less and, as Muennighoff
   et al. found, scarce data favours smaller models) picks the candidate with the lowest loss
   among those whose batch fits in memory (memory.pick_micro_batch).

Everything here except `calibrate` is arithmetic on a Calibration, so tests can pass a fake one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from budgetlm.config import ModelConfig
from budgetlm.train.fastpath import CUDA_GRAPHS_MAX_PARAMS
from budgetlm.errors import BudgetLMError
from budgetlm.plan.memory import GB, OVERHEAD_BYTES, count_params, flops_per_token, pick_micro_batch
from budgetlm.plan.planner import chinchilla_loss, lr_for, total_batch_for

LOSS_FIT = "besiroglu"  # see plan.LOSS_FITS: its optimum matched our measured CPU optimum; Hoffmann's did not

# CPU: today's default is the reference and the smallest candidate. 3x96 SwiGLU, bpe:1024, seq 64 x
# batch 64, lr 3e-3 reached the lowest 5-minute BPB on a 2-core CPU (benchmarks/HISTORY.md sections 1
# and 6: seq 64 x 64 and vocab 1024 trained 1.8x the tokens/s of 256 x 32 / 4096; 3x96 was the best
# size, SwiGLU beat GELU, 3 seeds). Larger shapes keep a head dim of 32 and add layers and width.
CPU_LADDER = ((3, 96, 3), (4, 128, 4), (4, 160, 5), (5, 160, 5), (4, 192, 6), (5, 192, 6), (6, 224, 7), (6, 256, 8))
CPU_SEQ, CPU_BATCH, CPU_VOCAB = 64, 64, 1024
# Effective FLOP/s by size relative to 3x96, from the CPU study's size sweep (tokens/s x FLOPs/token,
# GELU, seq 64 x 64, vocab 1024, 2-core Xeon; research_study.md section 1): small models waste more
# of each step on per-op overhead.
CPU_EFFICIENCY = ((169_728, 0.717), (440_160, 1.0), (932_608, 1.16), (1_988_736, 1.39), (5_017_600, 1.43))

# CUDA: head dim 64 (flash/cuDNN attention), GELU as in the measured fast path, vocab padded to 64.
GPU_LADDER = ((4, 256, 4), (6, 320, 5), (6, 384, 6), (8, 448, 7), (8, 512, 8), (10, 640, 10), (12, 768, 12))
# From 40M body params (12 L d^2) on: seq 1024 (GPT-2's) and bpe:16384; the head stays ~1/8 of the FLOPs.
GPU_BIG_PARAMS = 40e6
# Measured MFU (of 989 TFLOP/s) of the step the trainer runs, bf16, compiled, by params: 1.15M (3x128,
# 64x256) and 7.3M (6x288, 32x512) with CUDA graphs on an H100 (HISTORY.md section 2, fourth pass:
# 4.90M and 3.34M tokens/s), GPT-2 124M at 32x1024x4 on an H200 (ninth pass: 557k tokens/s).
# Log-log interpolation between them, clamped outside; sizes in between were not measured.
GPU_MFU = ((1_152_128, 0.036), (7_322_112, 0.163), (124_475_904, 0.45))
# Calibration reference on CUDA: GPT-2 124M's shape, eager bf16, plain loss, fp32 residual, micro-batch
# 16 x 1024. Eager, it measured 309,522 tokens/s at 32x1024 on an H100 (HISTORY.md section 2, second
# pass: 0.69x the compiled step) = 25% MFU; the ratio of a device's calibration to that MFU scales GPU_MFU.
GPU_REF = ModelConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024, vocab_multiple=64)
GPU_REF_SEQ, GPU_REF_BATCH, GPU_REF_EAGER_MFU = 1024, 16, 0.25
# Compile time spent inside the budget (bench's warm-up, results.jsonl warmup_s on the H100/H200: 10-22 s
# for 1-7M params with CUDA graphs, 20-35 s for GPT-2 124M), plus the trainer's eval-shape recompile.
COMPILE_S_SMALL, COMPILE_S_BIG = 30.0, 45.0
TRAIN_SHARE = 0.9  # of the seconds left: the rest goes to the final eval, checkpoint and samples
BYTES_PER_TOKEN = 4.0  # rough BPE estimate for unique tokens of a local corpus (until the data layer counts)
COMPRESSION = {".xz": 3.2, ".gz": 3.0, ".zst": 3.0}  # text per compressed byte (Gutenberg: ~64 MB in ~20 MB .xz)


@dataclass
class Calibration:
    """What `calibrate` measured: the device, its effective FLOP/s on the reference shape, its memory."""

    device: str  # cpu | cuda | mps
    name: str
    flops_per_s: float
    mem_bytes: float
    seconds: float = 0.0
    reference: str = ""
    ref_tokens_per_s: float = 0.0


@dataclass
class Candidate:
    name: str
    cfg: ModelConfig
    params: int
    seq_len: int
    micro_batch: int
    accum: int
    tokens_per_s: float
    tokens: float
    loss: float
    lr: float

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "seq_len": self.seq_len, "micro_batch": self.micro_batch,
                "accum": self.accum, "predicted_tokens_per_s": round(self.tokens_per_s),
                "predicted_tokens": round(self.tokens), "loss": round(self.loss, 4), "lr": self.lr}


@dataclass
class Sizing:
    """The chosen model and batch, the candidates it beat, and the same facts as a JSON-able dict."""

    choice: Candidate
    tokenizer: str
    candidates: list[Candidate]
    facts: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def _interp_log(x: float, anchors: tuple[tuple[float, float], ...]) -> float:
    """y at x, log-log between anchors (x ascending), clamped to the end values outside them."""
    if x <= anchors[0][0]:
        return anchors[0][1]
    for (x0, y0), (x1, y1) in zip(anchors, anchors[1:]):
        if x <= x1:
            t = math.log(x / x0) / math.log(x1 / x0)
            return math.exp(math.log(y0) + t * math.log(y1 / y0))
    return anchors[-1][1]


def _cpu_efficiency(params: float) -> float:
    return _interp_log(params, CPU_EFFICIENCY) / _interp_log(CPU_EFFICIENCY[1][0], CPU_EFFICIENCY)


def _gpu_mfu(params: float) -> float:
    return _interp_log(params, GPU_MFU)


def estimated_compile_seconds(params: float) -> float:
    """Estimated torch.compile time of the trainer's step on CUDA (see COMPILE_S_*)."""
    return COMPILE_S_SMALL if params < CUDA_GRAPHS_MAX_PARAMS else COMPILE_S_BIG


def lr_for_size(params: float) -> float:
    """Peak lr: 3e-3 up to 1M params (measured best at 5 minutes on CPU, 5e-3 was worse: HISTORY.md
    section 1), log-interpolated to the planner's lr_for from 10M (2e-3) on."""
    if params <= 1e6:
        return 3e-3
    if params >= 1e7:
        return lr_for(params)
    t = math.log(params / 1e6) / math.log(10)
    return float(f"{math.exp(math.log(3e-3) + t * math.log(lr_for(1e7) / 3e-3)):.2g}")


def vocab_of(tokenizer: str) -> int:
    """Vocabulary size a tokenizer spec will give (bpe:N -> N; gpt2 50257; char ~ a few hundred)."""
    if tokenizer.startswith("bpe:") and tokenizer[4:].isdigit():
        return int(tokenizer[4:])
    return {"gpt2": 50257, "char": 256}.get(tokenizer, 8192)


def estimate_unique_tokens(src: str) -> float | None:
    """ESTIMATE of the unique tokens a data source holds, from file sizes / ~4 bytes per token (x the
    text-per-byte of compressed parts); None for generated or hub sources (plenty for these budgets).
    To be replaced by the data layer's own count where it has one."""
    path = Path(src)
    if not path.exists():
        return None
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file() and not f.name.startswith(".")]
    text_bytes = sum(f.stat().st_size * COMPRESSION.get(f.suffix, 1.0) for f in files)
    return text_bytes / BYTES_PER_TOKEN if text_bytes else None


def _cpu_config(layers: int, width: int, heads: int, vocab: int = CPU_VOCAB) -> ModelConfig:
    return ModelConfig(n_layer=layers, n_head=heads, n_embd=width, mlp="swiglu", vocab_size=vocab, block_size=CPU_SEQ)


def _cpu_candidates(cal: Calibration, tokenizer: str | None) -> list[tuple[str, ModelConfig, int, int, int]]:
    """(name, config, seq, micro-batch, accumulation) per CPU shape; 64 x 64 tokens a step, split into
    micro-batches only where memory is short (fp32, no CUDA overhead)."""
    vocab = vocab_of(tokenizer) if tokenizer else CPU_VOCAB
    out = []
    for layers, width, heads in CPU_LADDER:
        cfg = _cpu_config(layers, width, heads, vocab)
        micro = pick_micro_batch(cfg, CPU_SEQ, cal.mem_bytes, "float32", max_micro=CPU_BATCH, overhead=0.0)
        if micro:
            out.append((f"{layers}x{width}", cfg, CPU_SEQ, micro, CPU_BATCH // micro))
    return out


def _gpu_candidates(cal: Calibration, tokenizer: str | None) -> list[tuple[str, ModelConfig, int, int, int]]:
    out = []
    for layers, width, heads in GPU_LADDER:
        body = 12 * layers * width * width
        big = body >= GPU_BIG_PARAMS
        seq = 1024 if big else 512
        vocab = vocab_of(tokenizer) if tokenizer else (16384 if big else 8192)
        cfg = ModelConfig(n_layer=layers, n_head=heads, n_embd=width, vocab_size=vocab, block_size=seq,
                          vocab_multiple=64)
        params = count_params(cfg)
        total = total_batch_for(params)
        micro = pick_micro_batch(cfg, seq, cal.mem_bytes, "bfloat16", max_micro=max(1, total // seq),
                                 overhead=OVERHEAD_BYTES, ce_kernel=True)
        if micro:
            out.append((f"{layers}x{width}", cfg, seq, micro, max(1, total // (micro * seq))))
    return out


def size_model(seconds_left: float, cal: Calibration, unique_tokens: float | None = None,
               tokenizer: str | None = None) -> Sizing:
    """The candidate with the lowest predicted loss for `seconds_left` of budget on the calibrated device
    (see the module docstring). tokenizer: a fixed spec (--tokenizer) instead of the ladder's choice."""
    gpu = cal.device == "cuda"
    shapes = (_gpu_candidates if gpu else _cpu_candidates)(cal, tokenizer)
    if not shapes:
        raise BudgetLMError(f"speedrun: no model of the ladder fits in {cal.mem_bytes / GB:.1f} GB on {cal.name}")
    cands = []
    for name, cfg, seq, micro, accum in shapes:
        params = count_params(cfg)
        fpt = flops_per_token(cfg, seq)
        if gpu:
            tok_s = cal.flops_per_s / GPU_REF_EAGER_MFU * _gpu_mfu(params) / fpt
            train_s = max(seconds_left - estimated_compile_seconds(params), 1.0) * TRAIN_SHARE
        else:
            tok_s = cal.flops_per_s * _cpu_efficiency(params) / fpt
            train_s = max(seconds_left, 1.0) * TRAIN_SHARE
        tokens = tok_s * train_s
        loss = chinchilla_loss(params, tokens, unique_tokens, fit=LOSS_FIT, repeated_params=True)
        cands.append(Candidate(name, cfg, params, seq, micro, accum, tok_s, tokens, loss, lr_for_size(params)))
    choice = min(cands, key=lambda c: c.loss)
    tok = tokenizer or (f"bpe:{choice.cfg.vocab_size}")
    sizing = Sizing(choice, tok, cands)
    sizing.facts, sizing.lines = _explain(choice, cands, cal, seconds_left, unique_tokens, tok)
    return sizing


def _m(x: float) -> str:
    return f"{x / 1e9:.2f}B" if x >= 1e9 else f"{x / 1e6:.1f}M" if x >= 1e5 else f"{x / 1e3:.0f}k"


def _explain(c: Candidate, cands: list[Candidate], cal: Calibration, seconds_left: float,
             unique: float | None, tok: str) -> tuple[dict[str, Any], list[str]]:
    """One log line per fact, and the same facts as a dict for summary.json."""
    gpu = cal.device == "cuda"
    train_s = c.tokens / c.tokens_per_s
    epochs = f" on {_m(unique)} unique ({c.tokens / unique:.1f} epochs)" if unique else " (data: no repeats assumed)"
    others = ", ".join(f"{o.name} {o.loss:.3f}" for o in sorted(cands, key=lambda o: o.loss) if o is not c)
    lines = [f"sizing: calibrated {cal.reference} on {cal.name}: {cal.ref_tokens_per_s:,.0f} tok/s = "
             f"{cal.flops_per_s / 1e12:.3g} TFLOP/s effective, in {cal.seconds:.1f}s",
             f"size: {c.name} ({_m(c.params)} params, {tok}, batch {c.micro_batch}x{c.seq_len}x{c.accum}, "
             f"lr {c.lr:g}): predicted {c.tokens_per_s:,.0f} tok/s x {train_s:.0f}s = {_m(c.tokens)} tokens{epochs}; "
             f"Chinchilla loss {c.loss:.3f} vs {others}"]
    if gpu:
        lines.append(f"size: {estimated_compile_seconds(c.params):.0f}s of compile (estimate) taken from the training time")
    facts = {"method": "measured", "device": cal.device, "device_name": cal.name,
             "calibration": {"reference": cal.reference, "seconds": cal.seconds,
                             "tokens_per_s": cal.ref_tokens_per_s, "flops_per_s": cal.flops_per_s},
             "seconds_left": seconds_left, "train_seconds": train_s,
             "compile_seconds_estimate": estimated_compile_seconds(c.params) if gpu else 0.0,
             "unique_tokens": unique, "loss_fit": LOSS_FIT, "tokenizer": tok,
             "choice": c.row(), "candidates": [o.row() for o in cands]}
    return facts, lines


def calibrate(device, seconds: float) -> Calibration:
    """Time a few eager training steps of the device's reference shape (CPU: today's 3x96 default;
    CUDA: GPT-2 124M's shape in bf16, plain loss) and turn them into effective FLOP/s."""
    import torch

    from budgetlm.device import set_threads
    from budgetlm.plan.hardware import _ram_gb
    from budgetlm.plan.memory import _train_steps
    t0 = time.perf_counter()
    if device.type == "cuda":
        cfg, seq, batch = GPU_REF, GPU_REF_SEQ, GPU_REF_BATCH
        r = _train_steps(cfg, batch, seq, device, None, seconds, torch.bfloat16, ce_kernel=False, half_residual=False,
                         max_wall_s=2 * seconds + 5.0)  # CUDA start-up comes on top
        name, mem = torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory
        what = f"12x768 eager bf16 {batch}x{seq}"
    else:
        set_threads(None, device)  # as the trainer will: all cores
        cfg = _cpu_config(*CPU_LADDER[0])
        seq, batch = CPU_SEQ, CPU_BATCH
        r = _train_steps(cfg, batch, seq, device, None, seconds, torch.float32, max_wall_s=2 * seconds)
        name, mem = device.type, 0.5 * _ram_gb() * GB
        what = f"3x96 eager fp32 {batch}x{seq}"
    return Calibration(device.type, name, r["tokens_per_s"] * flops_per_token(cfg, seq), float(mem),
                       time.perf_counter() - t0, what, r["tokens_per_s"])


# A CPU 8x the study machine's speed (a 16-core workstation): if even it would train the smallest
# shape, a calibration cannot change the answer and is not worth its seconds (budgets up to ~1 minute).
FAST_CPU_FACTOR = 8.0


def calibration_pays(seconds_left: float, unique_tokens: float | None = None, tokenizer: str | None = None) -> bool:
    """False when the CPU budget is so short that the smallest candidate wins on any plausible CPU."""
    ref = _cpu_config(*CPU_LADDER[0])
    fast = Calibration("cpu", "fast CPU", FAST_CPU_FACTOR * 36_000 * flops_per_token(ref, CPU_SEQ), 1e12)
    sized = size_model(seconds_left, fast, unique_tokens, tokenizer)
    return sized.choice is not sized.candidates[0]


def smallest_without_calibration(seconds_left: float, tokenizer: str | None = None) -> tuple[dict[str, Any], str]:
    """The facts and the log line when `calibration_pays` says no: the CPU ladder's first shape."""
    name, cfg = f"{CPU_LADDER[0][0]}x{CPU_LADDER[0][1]}", _cpu_config(*CPU_LADDER[0])
    tok = tokenizer or f"bpe:{CPU_VOCAB}"
    why = (f"{seconds_left:.0f}s is too short for a larger model even on a CPU {FAST_CPU_FACTOR:g}x the study "
           f"machine's speed, so no calibration was spent")
    facts = {"method": "smallest (no calibration)", "device": "cpu", "seconds_left": seconds_left, "why": why,
             "tokenizer": tok, "choice": {"name": name, "params": count_params(cfg), "seq_len": CPU_SEQ,
                                          "micro_batch": CPU_BATCH, "accum": 1, "lr": lr_for_size(count_params(cfg))}}
    return facts, f"size: {name} ({_m(count_params(cfg))} params, {tok}): {why}"


def calibration_seconds(budget_s: float) -> float:
    """Seconds of timed steps: 0.5% of the budget, 0.3-3 s. The model build and the untimed first step
    come on top (~0.3 s on an idle 2-core CPU, a few seconds of CUDA start-up that the trainer then
    does not pay again), so the whole calibration stays near 1% of the budget."""
    return min(max(0.005 * budget_s, 0.3), 3.0)


def apply_sizing(sizing: Sizing, model: ModelConfig, train, log: Callable[[str], None] = print) -> None:
    """Put the chosen shape, batch, seq len and lr into the setup's configs."""
    c = sizing.choice
    for k in ("n_layer", "n_head", "n_embd", "mlp", "vocab_multiple", "block_size"):  # vocab: the data's
        setattr(model, k, getattr(c.cfg, k))
    model.n_kv_head = None
    train.batch_size, train.seq_len, train.optim.lr = c.micro_batch, c.seq_len, c.lr
    train.total_batch_tokens = c.micro_batch * c.seq_len * c.accum if c.accum > 1 else None
    for line in sizing.lines:
        log(line)


__all__ = ["Calibration", "Candidate", "Sizing", "calibrate", "calibration_seconds", "size_model", "apply_sizing",
           "estimate_unique_tokens", "calibration_pays", "smallest_without_calibration", "estimated_compile_seconds", "lr_for_size", "vocab_of"]

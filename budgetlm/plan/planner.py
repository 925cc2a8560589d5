"""`budgetlm plan`: what a budget of GPUs, hours and tokens buys, before spending it.

For a ladder of model shapes it computes exact parameter counts (meta-device builds), the
memory one training step needs per GPU (budgetlm.plan.memory), the largest micro-batch that fits,
tokens/s from peak FLOP/s x an MFU assumption (budgetlm.plan.hardware), how many tokens the time
buys and how many epochs of the data that is. It then recommends one shape for a goal:

  compute-optimal   Chinchilla (Hoffmann et al. 2022): for compute C = 6ND the loss is lowest
                    near D = 20 N, so pick the shape whose tokens-in-budget / params is nearest 20.
  inference-optimal A model is trained once and served many times, so a smaller model trained on
                    more tokens (over-trained) is cheaper to serve. Over-training is limited by
                    the data (repeating more than ~4 epochs stops helping, Muennighoff et al. 2023)
                    and by quality: pick the smallest shape that uses the whole time within the
                    epoch limit and whose Chinchilla-fit loss is within `loss_tolerance` of the best.
  fixed-params      the shape nearest to --params, trained for as many tokens as time allows.

and writes a TOML config that `budgetlm train --config plan.toml --data DIR` runs as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.config import MODEL_PRESETS, ModelConfig, model_config
from budgetlm.errors import BudgetLMError
from budgetlm.plan.hardware import GPUSpec, _ram_gb, get_gpu, local_device, measure_cpu_tflops, peak_flops
from budgetlm.train.fastpath import resolve_ce_kernel
from budgetlm.plan.memory import (GB, OVERHEAD_BYTES, SHARDINGS, count_params, flops_per_token, layer_activation_bytes,
                                  measure_peak_memory, measure_throughput, memory_estimate, pick_micro_batch)
from budgetlm.train.budget import parse_budget, parse_count  # noqa: F401 (parse_count: plan's --tokens/--params)

__all__ = ["count_params", "memory_estimate", "measure_peak_memory", "peak_flops", "estimate", "make_plan",
           "write_config", "Plan", "Candidate", "ladder", "chinchilla_loss"]

GOALS = ("compute-optimal", "inference-optimal", "fixed-params")
# GPT-2 BPE / Llama vocabularies (the data's tokenizer decides at train time), rows padded to 64 as the presets do.
FAMILIES = {"gpt2": {"vocab_size": 50257, "vocab_multiple": 64},
            "llama": {"vocab_size": 32000, "vocab_multiple": 64, "mlp": "swiglu", "norm": "rmsnorm", "pos": "rope",
                      "bias": False, "tie_embeddings": False}}
# (label, n_layer, n_embd, n_head, n_kv_head, mlp_hidden): tiny to multi-billion.
# gpt2-48x2560 is the hand answer's "3B"; with 48 layers it has ~3.9B params (GPT-3 2.7B has 32).
LADDERS: dict[str, list[tuple[str, int, int, int, int | None, int | None]]] = {
    "gpt2": [("gpt2-4x256", 4, 256, 4, None, None), ("gpt2-6x384", 6, 384, 6, None, None),
             ("gpt2-8x512", 8, 512, 8, None, None), ("gpt2-124m", 12, 768, 12, None, None),
             ("gpt2-350m", 24, 1024, 16, None, None), ("gpt2-774m", 36, 1280, 20, None, None),
             ("gpt2-1.5b", 48, 1600, 25, None, None), ("gpt2-48x2560", 48, 2560, 32, None, None),
             ("gpt2-32x4096", 32, 4096, 32, None, None)],
    "llama": [("llama-4x256", 4, 256, 4, None, None), ("llama-6x384", 6, 384, 6, None, None),
              ("llama-8x512", 8, 512, 8, None, None), ("llama-12x768", 12, 768, 12, None, None),
              ("llama-24x1024", 24, 1024, 16, None, None), ("llama-36x1280", 36, 1280, 20, None, None),
              ("tinyllama-1.1b", 22, 2048, 32, 4, 5632), ("llama-48x1600", 48, 1600, 25, None, None),
              ("llama-48x2560", 48, 2560, 32, None, None), ("llama2-7b", 32, 4096, 32, None, 11008)],
}
CHINCHILLA_TOKENS_PER_PARAM = 20.0
MAX_EPOCHS = 4.0  # Muennighoff et al. 2023: up to ~4 epochs is almost as good as fresh data


def ladder(family: str = "gpt2", seq_len: int = 1024, vocab_size: int | None = None) -> list[tuple[str, ModelConfig]]:
    """The candidate shapes of a family, with block_size = seq_len."""
    if family not in LADDERS:
        raise BudgetLMError(f"--family must be one of {', '.join(LADDERS)}, got {family!r}")
    base = dict(FAMILIES[family], block_size=seq_len)
    if vocab_size:
        base["vocab_size"] = vocab_size
    return [(name, ModelConfig(n_layer=L, n_embd=d, n_head=H, n_kv_head=kv, mlp_hidden=h, **base))
            for name, L, d, H, kv, h in LADDERS[family]]


def parse_time(text: str | float | int) -> float:
    """Seconds from '24h', '90m', '1h30m' or a number of seconds; errors name --time."""
    if isinstance(text, (int, float)):
        if text <= 0:
            raise BudgetLMError(f"--time must be positive, got {text}")
        return float(text)
    try:
        b = parse_budget(text)
    except BudgetLMError:
        b = None
    if b is None or b.kind != "time":
        raise BudgetLMError(f"--time: expected a duration like 24h, 90m or 1h30m, got {text!r}")
    return b.amount


# Parametric loss fits L = E + A/N^alpha + B/D^beta: (E, A, B, alpha, beta).
#  hoffmann   Hoffmann et al. 2022, Approach 3 as printed (the planner's default).
#  besiroglu  Besiroglu et al. 2024 ("Chinchilla scaling: a replication attempt"), the same data refit:
#             its optimum agrees with Hoffmann's Approaches 1-2 (~20 tokens/param), as our 5-minute
#             CPU study did (best size at 23.6 tokens/param, benchmarks/HISTORY.md section 6).
LOSS_FITS = {"hoffmann": (1.69, 406.4, 410.7, 0.34, 0.28), "besiroglu": (1.8172, 482.01, 2085.43, 0.3478, 0.3658)}


def chinchilla_loss(params: float, tokens: float, unique_tokens: float | None = None, fit: str = "hoffmann",
                    repeated_params: bool = False) -> float:
    """Hoffmann et al. 2022 fit L = E + A/N^a + B/D^b (Approach 3), with repeated data discounted as
    Muennighoff et al. 2023: D' = U + U*R*(1 - exp(-R/R*)), R = epochs - 1, R* = 15.4.
    repeated_params: also their parameter discount: parameters beyond U_N = U/20 (the size that is
    compute-optimal for the unique data) count as N' = U_N + U_N*R_N*(1 - exp(-R_N/5.3)), R_N = N/U_N - 1,
    so that scarce data favours smaller models trained for more epochs (their finding).
    Only differences between candidates mean anything: the fit is for another tokenizer and data."""
    e, a, b, alpha, beta = LOSS_FITS[fit]
    d, n = tokens, params
    if unique_tokens and tokens > unique_tokens:
        r, r_star = tokens / unique_tokens - 1, 15.4
        d = unique_tokens * (1 + r_star * (1 - math.exp(-r / r_star)))
    if repeated_params and unique_tokens:
        u_n = unique_tokens / CHINCHILLA_TOKENS_PER_PARAM
        if params > u_n:
            r_n, r_star_n = params / u_n - 1, 5.3
            n = u_n * (1 + r_star_n * (1 - math.exp(-r_n / r_star_n)))
    return e + a / n ** alpha + b / d ** beta


def lr_for(params: float) -> float:
    """Peak AdamW lr by size, log-log between anchors: ~2e-3 tiny (10M), 6e-4 at 124M (GPT-2/GPT-3
    small), 3e-4 at 3B and above (Llama 2 7B used 3e-4). Bigger models need smaller steps."""
    anchors = [(1e7, 2e-3), (1.24e8, 6e-4), (3e9, 3e-4)]
    if params <= anchors[0][0]:
        return anchors[0][1]
    for (n0, l0), (n1, l1) in zip(anchors, anchors[1:]):
        if params <= n1:
            t = math.log(params / n0) / math.log(n1 / n0)
            return float(f"{math.exp(math.log(l0) + t * math.log(l1 / l0)):.2g}")
    return anchors[-1][1]


def total_batch_for(params: float) -> int:
    """Tokens per optimizer step by size (GPT-3 table: 0.5M up to 760M, 1M to 2.7B, 2M at 6.7B;
    Llama 2: 4M). Small models learn faster per token with smaller batches."""
    for limit, tokens in ((2e7, 2 ** 16), (1e8, 2 ** 17), (1e9, 2 ** 19), (2e9, 2 ** 20), (5e9, 2 ** 21)):
        if params < limit:
            return tokens
    return 2 ** 22


@dataclass
class Candidate:
    """One shape under the budget: size, memory, speed, and what the time buys."""

    name: str
    cfg: ModelConfig
    params: int
    flops_per_token: float  # training FLOPs/token, recompute included
    micro_batch: int  # 0 = not even one sequence fits
    memory: dict[str, float]  # at micro_batch (or 1 if nothing fits), with the plan's recompute
    act_plain: float  # activation bytes at the same micro-batch without recompute
    act_rc: float  # ... and with whole-block recompute (level 2): the with/without comparison
    tokens_per_s: float
    tokens_in_time: float
    epochs: float | None
    loss: float

    @property
    def fits(self) -> bool:
        return self.micro_batch > 0

    @property
    def tokens_per_param(self) -> float:
        return self.tokens_in_time / self.params


def estimate(cfg: ModelConfig, gpu: GPUSpec, n_gpus: int = 1, seq_len: int = 1024, mfu: float = 0.40,
             time_s: float = 86400.0, data_tokens: float | None = None, sharding: str = "none",
             recompute: bool | int = 0, name: str = "", max_micro: int = 64,
             fused_loss: bool | None = None) -> Candidate:
    """Memory, micro-batch, tokens/s = gpus * peak * MFU / (FLOPs/token), and tokens in time_s.
    fused_loss: the chunked loss head (TrainConfig.fused_loss = on); None = the trainer's default, off
    (on CUDA the trainer's default head is the cross-entropy kernel, which keeps only bf16 logits)."""
    dtype = "bfloat16" if gpu.bf16 else "float32"
    fused = bool(fused_loss)
    extra = {"fused_loss": fused, "overhead": OVERHEAD_BYTES if gpu.device != "cpu" else 0.0,
             "ce_kernel": gpu.device == "cuda" and not fused}
    micro = pick_micro_batch(cfg, seq_len, gpu.mem_bytes, dtype, sharding, n_gpus, recompute, max_micro, **extra)
    mem = memory_estimate(cfg, max(micro, 1), seq_len, dtype, sharding, n_gpus, recompute, **extra)
    plain, rc = (memory_estimate(cfg, max(micro, 1), seq_len, dtype, sharding, n_gpus, lv, **extra)["activations"]
                 for lv in (0, 2))
    fpt = flops_per_token(cfg, seq_len, recompute)  # recompute adds the forward it redoes
    tps = n_gpus * gpu.peak_flops * mfu / fpt
    tokens = tps * time_s
    params = count_params(cfg)
    return Candidate(name or f"{cfg.n_layer}x{cfg.n_embd}", cfg, params, fpt, micro, mem, plain, rc, tps, tokens,
                     tokens / data_tokens if data_tokens else None, chinchilla_loss(params, tokens, data_tokens))


@dataclass
class Plan:
    """A recommendation and everything it was derived from."""

    gpu: GPUSpec
    n_gpus: int
    goal: str
    family: str
    seq_len: int
    mfu: float
    time_s: float
    time_text: str
    data_tokens: float | None
    sharding: str
    recompute: int
    candidates: list[Candidate]
    choice: Candidate
    picks: dict[str, Candidate]  # what each goal would pick, to compare
    train: dict[str, Any]
    steps: int
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    data_dir: str | None = None
    fused_loss: bool = False


def _pick(goal: str, cands: list[Candidate], params: float | None, max_epochs: float,
          tol: float) -> tuple[Candidate, list[str]]:
    """The candidate a goal recommends, and why. `cands` are the fitting ones, smallest first."""
    log20 = lambda c: abs(math.log(c.tokens_per_param / CHINCHILLA_TOKENS_PER_PARAM))  # noqa: E731
    ok_data = [c for c in cands if c.epochs is None or c.epochs <= max_epochs]
    if goal == "fixed-params":
        c = min(cands, key=lambda c: abs(math.log(c.params / params)))
        return c, [f"--params {params:,.0f}: nearest fitting shape is {c.name} ({c.params:,} params)"]
    if goal == "compute-optimal":
        c = min(cands, key=log20)
        why = [f"Chinchilla: D ~ 20 N; {c.name} gets {c.tokens_per_param:.1f} tokens/param in the budget, "
               f"the nearest to 20 on the ladder"]
        if c.epochs is not None and c.epochs > max_epochs:
            bigger = [b for b in ok_data if b.params > c.params]
            if bigger:
                why.append(f"but that is {c.epochs:.1f} epochs of the data (> {max_epochs:g}); with too little "
                           f"unique data a bigger model is better (Muennighoff et al.): {bigger[0].name}")
                c = bigger[0]
        return c, why
    pool = ok_data or cands
    best = min(pool, key=lambda c: c.loss)
    c = next(c for c in pool if c.loss <= best.loss * (1 + tol))
    why = [f"inference-optimal: the smallest shape that uses the whole time within {max_epochs:g} epochs "
           f"of the data and whose predicted loss is within {tol:.0%} of the best ({best.name}, "
           f"{best.loss:.3f}): {c.name} at {c.tokens_per_param:.0f} tokens/param, loss {c.loss:.3f}"]
    smaller = [s for s in cands if s.params < c.params]
    if smaller:
        s = smaller[-1]
        too_many = s.epochs is not None and s.epochs > max_epochs
        why.append(f"the next smaller, {s.name}, would " + (f"need {s.epochs:.1f} epochs" if too_many else
                   f"lose {s.loss / best.loss - 1:.1%} ({s.tokens_per_param:.0f} tokens/param, loss {s.loss:.3f})"))
    if not ok_data:
        why.append("no shape stays within the epoch limit: the data is too small for this much compute")
    return c, why


def train_settings(c: Candidate, gpu: GPUSpec, n_gpus: int, seq_len: int, time_text: str,
                   recompute: int = 0) -> tuple[dict[str, Any], int]:
    """[train] values for the chosen candidate, and the planned number of optimizer steps."""
    unit = c.micro_batch * seq_len * n_gpus
    total = total_batch_for(c.params)
    while total > unit and c.tokens_in_time / total < 1000:  # keep >= ~1000 steps when the budget is short
        total //= 2
    accum = max(1, round(total / unit))
    steps = int(c.tokens_in_time // (accum * unit))
    train = {"budget": time_text, "batch_size": c.micro_batch, "total_batch_tokens": accum * c.micro_batch * seq_len,
             "seq_len": seq_len, "lr": lr_for(c.params), "min_lr_frac": 0.1,
             "warmup_steps": max(1, round(0.015 * steps)), "schedule": "cosine", "weight_decay": 0.1,
             "beta2": 0.95, "grad_clip": 1.0, "dtype": "bfloat16" if gpu.bf16 else "float32", "compile": "auto",
             "recompute": recompute}
    return train, steps


def _check_numbers(**values: float | None) -> None:
    """Every given number finite (NaN slips through < and > checks) and not negative; errors name the flag."""
    for name, v in values.items():
        if v is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BudgetLMError(f"{flag} must be a finite number, got {v!r}")
        if v < 0 or (v == 0 and name != "loss_tolerance"):
            raise BudgetLMError(f"{flag} must be positive, got {v}")


def make_plan(gpu: str | GPUSpec = "h100", n_gpus: int = 1, tokens: str | float | None = None,
              time_budget: str | float = "24h", goal: str = "compute-optimal", params: str | float | None = None,
              family: str = "gpt2", seq_len: int = 1024, mfu: float = 0.40, tflops: float | None = None,
              mem_gb: float | None = None, sharding: str = "none", recompute: bool | int = 0,
              vocab_size: int | None = None, max_epochs: float = MAX_EPOCHS, loss_tolerance: float = 0.02,
              data_dir: str | None = None, fused_loss: bool | None = None) -> Plan:
    """Estimate every candidate of the family and recommend one for `goal` (see module docstring).
    recompute: 0 off, 1 MLPs, 2 (or True) whole blocks, as TrainConfig.recompute."""
    _check_numbers(tflops=tflops, mem_gb=mem_gb, mfu=mfu, loss_tolerance=loss_tolerance, max_epochs=max_epochs)
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1):
        raise BudgetLMError(f"--vocab must be a positive whole number, got {vocab_size!r}")
    spec = gpu if isinstance(gpu, GPUSpec) else get_gpu(gpu, tflops, mem_gb)
    if goal not in GOALS:
        raise BudgetLMError(f"--goal must be one of {', '.join(GOALS)}, got {goal!r}")
    if not isinstance(n_gpus, int) or n_gpus < 1:
        raise BudgetLMError(f"--gpus must be a positive whole number, got {n_gpus!r}")
    if not 0 < mfu <= 1:
        raise BudgetLMError(f"--mfu must be in (0, 1], got {mfu}")
    if seq_len < 1:
        raise BudgetLMError(f"--seq-len must be positive, got {seq_len}")
    if sharding not in SHARDINGS:
        raise BudgetLMError(f"--sharding must be one of {', '.join(SHARDINGS)}, got {sharding!r}")
    data = parse_count(tokens, "--tokens")
    want = parse_count(params, "--params")
    if goal == "fixed-params" and want is None:
        raise BudgetLMError("--goal fixed-params needs --params (e.g. --params 1.5B)")
    time_s = parse_time(time_budget)
    time_text = time_budget if isinstance(time_budget, str) else f"{time_s:g}s"
    level = 2 if recompute is True else int(recompute or 0)
    if level not in (0, 1, 2):
        raise BudgetLMError(f"--recompute must be 0, 1 or 2, got {recompute!r}")
    cands = [estimate(cfg, spec, n_gpus, seq_len, mfu, time_s, data, sharding, level, name, fused_loss=fused_loss)
             for name, cfg in ladder(family, seq_len, vocab_size)]
    fitting = [c for c in cands if c.fits]
    if not fitting:
        raise BudgetLMError(f"--gpu {spec.key}: no {family} shape fits in {spec.mem_gb:g} GB at --seq-len {seq_len}; "
                            f"try --sharding fsdp with more --gpus, --recompute or a shorter --seq-len")
    picks = {g: _pick(g, fitting, want, max_epochs, loss_tolerance)[0] for g in GOALS if g != "fixed-params" or want}
    choice, reasons = _pick(goal, fitting, want, max_epochs, loss_tolerance)
    train, steps = train_settings(choice, spec, n_gpus, seq_len, time_text, level)
    plan = Plan(spec, n_gpus, goal, family, seq_len, mfu, time_s, time_text, data, sharding, level, cands,
                choice, picks, train, steps, reasons, data_dir=data_dir,
                fused_loss=bool(fused_loss))
    if fused_loss:
        plan.train["fused_loss"] = "on"
    if choice.epochs is not None and choice.epochs > max_epochs:
        plan.warnings.append(f"{choice.name} would see {choice.epochs:.1f} epochs of the data (> ~{max_epochs:g}): "
                             f"repeated tokens are worth less; get more data or pick a bigger model")
    if choice.tokens_per_param < 5:
        plan.warnings.append(f"{choice.name} sees only {choice.tokens_per_param:.1f} tokens/param (Chinchilla: ~20): "
                             f"badly under-trained; {picks['compute-optimal'].name} would reach a lower loss")
    if n_gpus > 1 or sharding != "none":
        plan.warnings.append("the trainer runs one process on one device (no data parallel or sharding yet): "
                             "the config holds the per-GPU shape; multi-GPU numbers are estimates only")
    if steps < 100:
        plan.warnings.append(f"only {steps} optimizer steps: the budget is very short for this model")
    return plan


def _gb(x: float) -> str:
    return f"{x / GB:.1f}" if x >= 0.05 * GB else f"{x / GB:.2f}"


def _count(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def _dur(s: float) -> str:
    return f"{s / 86400:.1f}d" if s >= 86400 * 2 else f"{s / 3600:.1f}h" if s >= 3600 else f"{s / 60:.0f}m"


def render(plan: Plan) -> str:
    """The candidate table and the recommendation, as text."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{plan.n_gpus} x {plan.gpu.name} ({plan.gpu.tflops:g} TFLOP/s, {plan.gpu.mem_gb:g} GB) | "
                    f"{plan.time_text} | MFU {plan.mfu:.0%} | seq {plan.seq_len} | sharding {plan.sharding} | "
                    f"data {_count(plan.data_tokens) if plan.data_tokens else 'unlimited'} tokens")
    for col in ("model", "params", "L/d/H", "fits", "ubatch", "w/g/opt GB", "act GB", "act GB rc",
                "logits GB", "total GB", "tok/s", "time for 20N", "tokens in time", "tok/param", "epochs", "pred loss"):
        t.add_column(col, justify="left" if col in ("model", "L/d/H") else "right")
    for c in plan.candidates:
        m, cfg = c.memory, c.cfg
        kv = f"/{cfg.kv_heads}kv" if cfg.kv_heads != cfg.n_head else ""
        mark = " <" if c is plan.choice else ""
        t.add_row(c.name + mark, f"{c.params / 1e6:,.1f}M", f"{cfg.n_layer}/{cfg.n_embd}/{cfg.n_head}{kv}",
                  "yes" if c.fits else "NO", str(c.micro_batch or "-"),
                  f"{_gb(m['weights'])}/{_gb(m['grads'])}/{_gb(m['optimizer'])}", _gb(c.act_plain), _gb(c.act_rc),
                  _gb(m["logits"]), _gb(m["total"]), f"{c.tokens_per_s:,.0f}",
                  _dur(20 * c.params / c.tokens_per_s), _count(c.tokens_in_time), f"{c.tokens_per_param:.1f}",
                  f"{c.epochs:.2f}" if c.epochs is not None else "-", f"{c.loss:.3f}")
    c, tr = plan.choice, plan.train
    lines = [f"Recommendation ({plan.goal}): {c.name}: {c.params:,} params "
             f"({c.cfg.n_layer} layers, {c.cfg.n_embd} wide, {c.cfg.n_head} heads)",
             f"  {_count(c.tokens_in_time)} tokens in {plan.time_text} ({c.tokens_per_param:.1f} tokens/param"
             + (f", {c.epochs:.2f} epochs" if c.epochs is not None else "") + f") at ~{c.tokens_per_s:,.0f} tok/s",
             f"  batch {tr['batch_size']} x {plan.seq_len} x accum {tr['total_batch_tokens'] // (tr['batch_size'] * plan.seq_len)}"
             f"{f' x {plan.n_gpus} GPUs' if plan.n_gpus > 1 else ''} = {tr['total_batch_tokens'] * plan.n_gpus:,} tokens/step, "
             f"~{plan.steps:,} steps; lr {tr['lr']:g} -> {tr['lr'] * tr['min_lr_frac']:.2g} ({tr['schedule']}), "
             f"warmup {tr['warmup_steps']:,}; memory {_gb(c.memory['total'])} of {plan.gpu.mem_gb:g} GB"]
    lines += [f"  why: {r}" for r in plan.reasons]
    others = ", ".join(f"{g}: {p.name} ({_count(p.tokens_in_time)} tokens)" for g, p in plan.picks.items())
    lines.append(f"  each goal would pick: {others}")
    lines += [f"  warning: {w}" for w in plan.warnings]
    console = Console(width=230, color_system=None)
    with console.capture() as cap:
        console.print(t)
    return cap.get() + "\n".join(lines)


def explain(plan: Plan) -> str:
    """Every formula behind the recommendation, with its numbers."""
    c, cfg, g = plan.choice, plan.choice.cfg, plan.gpu
    m, tr, n = c.memory, plan.train, plan.n_gpus
    dtype = "bfloat16" if g.bf16 else "float32"
    act = layer_activation_bytes(cfg, plan.seq_len, dtype)
    C = n * g.peak_flops * plan.mfu * plan.time_s
    n_opt = math.sqrt(C / (6 * CHINCHILLA_TOKENS_PER_PARAM))
    B, T = max(c.micro_batch, 1), plan.seq_len
    out = [f"params N = {c.params:,} (numel of the model built on the meta device)",
           f"FLOPs/token = 6N' + 6*L*d*T = {c.flops_per_token:,.0f}  (N' = params without lookup-only tables"
           + (f"; + the forward that recompute level {plan.recompute} redoes)" if plan.recompute else ")"),
           f"tokens/s = gpus * peak * MFU / FLOPs/token = {n} * {g.peak_flops:.4g} * {plan.mfu} / {c.flops_per_token:.4g}"
           f" = {c.tokens_per_s:,.0f}",
           f"tokens in time = {c.tokens_per_s:,.0f} * {plan.time_s:,.0f} s = {c.tokens_in_time:,.0f}"
           f"  -> {c.tokens_per_param:.1f} tokens/param",
           f"compute C = gpus * peak * MFU * time = {C:.3g} FLOPs; Chinchilla N_opt = sqrt(C / (6*20)) = {n_opt:,.0f},"
           f" D_opt = 20 N_opt = {20 * n_opt:,.0f}",
           f"20N tokens for {c.name} = {20 * c.params:,.0f}, taking {20 * c.params / c.tokens_per_s / 3600:,.1f} h"]
    if c.epochs is not None:
        out.append(f"epochs = tokens / data = {c.tokens_in_time:,.0f} / {plan.data_tokens:,.0f} = {c.epochs:.2f}")
    out += [f"predicted loss = 1.69 + 406.4/N^0.34 + 410.7/D'^0.28 = {c.loss:.3f} (Chinchilla fit; D' discounts repeats)",
            f"weights = 4 B * N{f' / {n}' if plan.sharding == 'fsdp' else ''} = {_gb(m['weights'])} GB; grads = same "
            f"= {_gb(m['grads'])} GB; optimizer = 8 B * N{f' / {n}' if plan.sharding != 'none' else ''} = "
            f"{_gb(m['optimizer'])} GB  (fp32 params + fp32 grads + AdamW m, v = 16 B/param)",
            f"weight copies = 2 B * matmul params (bf16 autocast casts kept for backward) = {_gb(m['weight_copies'])} GB",
            f"activations/layer/token = attention {act['attention']:.0f} B + mlp {act['mlp']:.0f} B = {act['total']:.0f} B"
            f" (d={cfg.n_embd}, heads={cfg.n_head}, kv={cfg.kv_heads}, hidden={cfg.hidden}, flash attention)",
            f"activations = B*T*(L*{act['total']:.0f} B + {10 * cfg.n_embd} B head) = {B}*{T}*"
            f"({cfg.n_layer}*{act['total']:.0f} + {10 * cfg.n_embd}) = {_gb(c.act_plain)} GB without recompute; "
            f"whole-block recompute keeps 4*d = {4 * cfg.n_embd} B/token/layer + one layer: {_gb(c.act_rc)} GB"
            + (f"; this plan (level {plan.recompute}): {_gb(m['activations'])} GB" if plan.recompute else ""),
            (f"loss head (fused, chunked) = 4096 rows * V*12 B + bf16 copies + fp32 d(hidden), d(weight) "
             f"= {_gb(m['logits'])} GB" if plan.fused_loss else
             f"loss head (cross-entropy kernel) = B*T*V*2 B logits/gradient + bf16 d(hidden), d(weight) = "
             f"{B}*{T}*{cfg.padded_vocab}*2 + ... = {_gb(m['logits'])} GB" if g.device == "cuda" else
             f"logits = B*T*V*(2+4+4+4) B = {B}*{T}*{cfg.vocab_size}*14 = {_gb(m['logits'])} GB"),
            f"total = sum + {_gb(m['overhead'])} GB CUDA overhead = {_gb(m['total'])} GB; micro-batch = largest power "
            f"of 2 with total <= 90% of {g.mem_gb:g} GB = {c.micro_batch}",
            f"total batch = {tr['total_batch_tokens'] * n:,} tokens (by size) -> accum = "
            f"{tr['total_batch_tokens'] // (B * T)}; steps = tokens / batch = {plan.steps:,}; "
            f"warmup = 1.5% = {tr['warmup_steps']:,}; lr = {tr['lr']:g} (log-interpolated by size)"]
    return "\n".join(out)


def measure(plan: Plan, seconds: float = 3.0, max_step_s: float = 2.0, log=print,
            limit: int | None = None, compile: str = "auto") -> list[dict[str, Any]]:
    """Real steps on this machine for every candidate small enough for it (at most `limit`, smallest
    first), compiled where the trainer compiles (compile="auto"); measured vs estimated tok/s, the
    MFU that would have made the estimate right, and the candidate's time at the measured speed
    (times the plan's GPU count: the plan assumes its own GPUs are the ones measured here)."""
    dev, name = local_device()
    peak = measure_cpu_tflops() * 1e12 if dev.type == "cpu" else peak_flops(name)
    import torch
    mem = torch.cuda.get_device_properties(0).total_memory if dev.type == "cuda" else 0.5 * _ram_gb() * GB
    overhead = OVERHEAD_BYTES if dev.type == "cuda" else 0.0
    rows = []
    for c in plan.candidates:
        if limit is not None and len(rows) >= limit:
            break
        micro = min(max(c.micro_batch, 1), 4 if dev.type == "cpu" else 64)
        est = (peak or 0) * plan.mfu / flops_per_token(c.cfg, plan.seq_len)
        if not peak or micro * plan.seq_len / est > max_step_s:
            continue
        micro = min(micro, pick_micro_batch(c.cfg, plan.seq_len, mem, "bfloat16" if dev.type == "cuda" else "float32",
                                            overhead=overhead, ce_kernel=resolve_ce_kernel("auto", dev)))
        if micro < 1:
            continue
        r = measure_throughput(c.cfg, micro, plan.seq_len, seconds, dev, compile=compile)
        tok_s = r["tokens_per_s"] * plan.n_gpus
        row = {"model": c.name, "device": name, "micro_batch": micro, "measured_tok_s": r["tokens_per_s"],
               "estimated_tok_s": est, "error": est / r["tokens_per_s"] - 1, "compile": r["compile"],
               "implied_mfu": r["tokens_per_s"] * flops_per_token(c.cfg, plan.seq_len) / peak,
               "step_tokens_per_s": r["tokens_per_s"], "hours_for_tokens": c.tokens_in_time / tok_s / 3600}
        rows.append(row)
        log(f"  {c.name:16s} {name} ub {micro} ({'compiled' if r['compile'] else 'eager'}): measured "
            f"{row['measured_tok_s']:,.0f} tok/s, estimated {est:,.0f} ({row['error']:+.0%}); implied MFU "
            f"{row['implied_mfu']:.0%}; its {c.tokens_in_time / 1e9:,.2f}B tokens would take "
            f"{row['hours_for_tokens']:,.1f} h at the measured speed")
    if not rows:
        log("  no candidate is small enough to measure on this device within a few seconds")
    return rows


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(plan: Plan, path: str | Path) -> Path:
    """A TOML file that `budgetlm train --config PATH --data DIR` runs as is: explicit [model] fields,
    the [train] values of the plan, and [data] dir when known."""
    from budgetlm.config import TrainConfig, from_dict, to_dict
    c = plan.choice
    model = {k: v for k, v in to_dict(c.cfg).items() if v is not None}
    from_dict(TrainConfig, plan.train, "plan")  # fail here, not at train time
    preset = next((p for p in MODEL_PRESETS if model_config(p, block_size=c.cfg.block_size) == c.cfg), None)
    lines = [f"# budgetlm plan: {plan.goal} on {plan.n_gpus} x {plan.gpu.name}, {plan.time_text}, MFU {plan.mfu:.0%}",
             f"# {c.name}: {c.params:,} params, ~{c.tokens_in_time:,.0f} tokens ({c.tokens_per_param:.1f}/param), "
             f"~{plan.steps:,} steps" + (f", {c.epochs:.2f} epochs" if c.epochs is not None else ""),
             "# vocab_size is replaced by the data's tokenizer at train time.", "", "[model]"]
    if preset:
        lines.append(f"# same shape as preset {preset!r}")
    lines += [f"{k} = {_toml(v)}" for k, v in model.items()]
    lines += ["", "[train]"] + [f"{k} = {_toml(v)}" for k, v in plan.train.items()]
    if plan.data_dir:
        lines += ["", "[data]", f"dir = {_toml(plan.data_dir)}"]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path

"""Configuration dataclasses shared by the CLI, the trainer, the planner and checkpoints.

Plain values only, so a config round-trips through JSON (checkpoints) and TOML (plan files).
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from budgetlm.errors import BudgetLMError


ARCHS = ("gpt", "lstm", "d3pm")  # build_model in budgetlm/models/__init__.py knows each


@dataclass
class ModelConfig:
    """Shape of the model: a GPT-2 style transformer by default, Llama style by switches; `arch` picks
    another family (lstm, d3pm), which reads the fields that apply to it."""

    arch: str = "gpt"  # gpt (transformer) | lstm (recurrent baseline) | d3pm (absorbing discrete diffusion)
    vocab_size: int = 4096
    block_size: int = 256  # longest context the model is trained for
    n_layer: int = 3
    n_head: int = 4
    n_kv_head: int | None = None  # None = n_head (multi-head); fewer = grouped-query attention
    n_embd: int = 128
    mlp: str = "gelu"  # gelu | swiglu
    mlp_hidden: int | None = None  # None: 4*n_embd for gelu, ~8/3*n_embd (rounded) for swiglu
    norm: str = "layernorm"  # layernorm | rmsnorm
    pos: str = "learned"  # learned | rope
    rope_theta: float = 10000.0
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    norm_eps: float = 1e-5
    vocab_multiple: int = 1  # pad embedding/head rows to a multiple of this (64: fast GPU matmuls)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise BudgetLMError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        choices = {"mlp": ("gelu", "swiglu"), "norm": ("layernorm", "rmsnorm"), "pos": ("learned", "rope")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise BudgetLMError(f"model field '{name}' must be one of {allowed}, got {getattr(self, name)!r}")
        if self.arch != "lstm":  # an LSTM has no attention heads, so no head-shape rules
            if self.n_embd % self.n_head:
                raise BudgetLMError(f"model: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            if self.kv_heads < 1 or self.n_head % self.kv_heads:
                raise BudgetLMError(f"model: n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
            if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
                raise BudgetLMError("model: rope needs an even head dimension (n_embd / n_head)")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise BudgetLMError(f"model field '{name}' must be positive, got {getattr(self, name)}")

    @property
    def padded_vocab(self) -> int:
        m = max(1, self.vocab_multiple)
        return m * ((self.vocab_size + m - 1) // m)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":  # keeps the parameter count of a 4x GELU MLP
            return 64 * ((int(8 * self.n_embd / 3) + 63) // 64)
        return 4 * self.n_embd


# Named sizes. Small ones are for CPU budgets; gpt2-* follow GPT-2 / llm.c (d12 = 124M ...).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "nano": dict(n_layer=2, n_head=2, n_embd=64),
    "micro": dict(n_layer=2, n_head=4, n_embd=96),
    "tiny": dict(n_layer=3, n_head=4, n_embd=128),
    "small": dict(n_layer=4, n_head=4, n_embd=192),
    "mini": dict(n_layer=6, n_head=6, n_embd=288),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024, vocab_multiple=64),
    "gpt2-350m": dict(n_layer=24, n_head=16, n_embd=1024, vocab_size=50257, block_size=1024, vocab_multiple=64),
    "gpt2-774m": dict(n_layer=36, n_head=20, n_embd=1280, vocab_size=50257, block_size=1024, vocab_multiple=64),
    "gpt2-1.5b": dict(n_layer=48, n_head=25, n_embd=1600, vocab_size=50257, block_size=1024, vocab_multiple=64),
    "tinyllama-1.1b": dict(
        n_layer=22, n_head=32, n_kv_head=4, n_embd=2048, mlp="swiglu", mlp_hidden=5632, norm="rmsnorm",
        pos="rope", bias=False, tie_embeddings=False, vocab_size=32000, block_size=2048, norm_eps=1e-5,
        vocab_multiple=64,
    ),
}
MODEL_PRESETS.update({"d12": MODEL_PRESETS["gpt2-124m"], "d24": MODEL_PRESETS["gpt2-350m"],
                      "d36": MODEL_PRESETS["gpt2-774m"], "d48": MODEL_PRESETS["gpt2-1.5b"]})


SHAPE = re.compile(r"(\d+)x(\d+)(?:h(\d+))?")


def preset_values(preset: str) -> dict[str, Any]:
    """A named size, or a shape "LxW" (L layers, width W, head dim 32) / "LxWhH" (H heads), so sweeps
    and the command line can name any small size without a preset for it."""
    if preset in MODEL_PRESETS:
        return dict(MODEL_PRESETS[preset])
    m = SHAPE.fullmatch(preset)
    if m:
        layers, width = int(m[1]), int(m[2])
        heads = int(m[3]) if m[3] else max(1, width // 32)
        return dict(n_layer=layers, n_embd=width, n_head=heads)
    raise BudgetLMError(f"--model: unknown size {preset!r}; choose from {', '.join(MODEL_PRESETS)} "
                        f"or a shape like 4x128 (layers x width) / 4x128h4 (with heads)")


def model_config(preset: str | None = None, **overrides: Any) -> ModelConfig:
    """A ModelConfig from a preset name plus explicit overrides (None values are ignored)."""
    values: dict[str, Any] = {}
    if preset:
        values.update(preset_values(preset))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**values)


@dataclass
class TrainConfig:
    """Everything the trainer needs besides the model shape and the data."""

    budget: str = "5m"
    batch_size: int = 32  # sequences per micro-batch
    total_batch_tokens: int | None = None  # None = one micro-batch per step (no accumulation)
    seq_len: int = 256
    lr: float = 2e-3
    min_lr_frac: float = 0.1  # floor of the decay, as a fraction of lr
    warmup_frac: float = 0.05  # warmup as a fraction of the budget
    warmup_steps: int | None = None  # explicit warmup steps (overrides warmup_frac for step budgets)
    schedule: str = "cosine"  # cosine | linear | wsd | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"  # auto | float32 | bfloat16
    compile: str = "auto"  # auto | on | off
    threads: int | None = None
    eval_every: int = 0  # steps; 0 = time budgets: eval_points evals spread over the budget, else only at the end
    eval_points: int = 10  # with eval_every 0 and a time budget: an eval at each 1/eval_points of it (0 = none)
    eval_tokens: int = 65536  # validation tokens scored at each eval
    final_eval_tokens: int = 0  # 0 = the whole validation split
    checkpoint_every: int = 0  # steps; 0 = only at the end
    log_every: int = 10
    log_to: str = "auto"  # metric sinks: jsonl,tensorboard,wandb (train/sinks.py; auto = jsonl + tensorboard)
    out_dir: str = "runs/latest"
    progress: bool = True
    fused_loss: str = "auto"  # auto | on | off: chunked head + cross-entropy, saves memory (auto: off)
    ce_kernel: str = "auto"  # auto | on | off: head + cross-entropy as one Triton gradient kernel (auto: CUDA + Triton)
    recompute: int = 0  # activation recomputation: 0 off, 1 MLPs, 2 whole blocks (llm.c -r)
    attn: str = "auto"  # preferred attention kernel: auto | flash | cudnn | efficient | math
    fp8: str = "off"  # off | tensorwise | rowwise: FP8 matmuls through torchao (Ada/Hopper GPUs)
    fp8_modules: str = "all"  # with fp8: "all" or comma-separated pieces of Linear names ("mlp")
    fp8_head: str = "off"  # on | off: the CE kernel's head matmuls in FP8 (models/ce_kernel_fp8.py; opt-in)
    cuda_graphs: str = "auto"  # auto | on | off: torch.compile "reduce-overhead" (auto: CUDA, < 20M params)
    half_residual: str = "auto"  # auto | on | off: residual stream in bf16 (auto: CUDA half precision)
    teacher: str | None = None  # e.g. "ngram:4": distill from an n-gram for the first steps
    distill_steps: int = 200
    distill_alpha: float = 0.5
    distill_temp: float = 1.0
    max_steps: int | None = None  # stop after this many steps (the schedule still follows the budget)
    sample_every: int = 0  # steps between samples printed by rank 0 (0 = never)
    sample_tokens: int = 64  # tokens per sample
    hellaswag_every: int = 0  # steps between HellaSwag evals (0 = never); also run at the end when on
    hellaswag_items: int = 0  # HellaSwag items scored per eval (0 = all 10,042)
    hellaswag_file: str | None = None  # a local HellaSwag val file (.jsonl or .jsonl.xz) instead of the download
    train_shards: str | None = None  # glob of train shards (llm.c -i); default: the data folder's train split
    val_shards: str | None = None  # glob of val shards (llm.c -j)
    parallel: str = "auto"  # auto | ddp | fsdp; used when launched by torchrun with WORLD_SIZE > 1
    zero_stage: int = 0  # 1: shard the AdamW state over ranks (ZeroRedundancyOptimizer, with ddp)

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear", "wsd", "constant"):
            raise BudgetLMError(f"--schedule must be cosine, linear, wsd or constant, got {self.schedule!r}")
        for name in ("batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise BudgetLMError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise BudgetLMError(f"--lr must be positive, got {self.lr}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Build a dataclass from a dict, naming any unknown field and where it came from."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BudgetLMError(f"{source}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
    return cls(**values)


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BudgetLMError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise BudgetLMError(f"{path}: not valid TOML ({e})") from None


def save_json(path: str | Path, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@dataclass
class RunInfo:
    """Facts about a finished run, written to summary.json and printed as the summary table."""

    params: int = 0
    steps: int = 0
    tokens_seen: int = 0
    tokens_per_s: float = 0.0
    train_seconds: float = 0.0
    val_loss: float = float("nan")
    val_ppl: float = float("nan")
    val_bpb: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

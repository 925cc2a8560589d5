"""Configuration dataclasses shared by the CLI, the trainer, the planner and checkpoints.

Plain values only, so a config round-trips through JSON (checkpoints) and TOML (plan files).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from typing import Any

from budgetlm.config_fields import (  # noqa: F401 (re-exported: callers import these from budgetlm.config)
    check_fields, check_table, check_toml_tables, check_value, field_kind, flag_name, flat_dict, flat_values,
    from_dict, get_value, group, group_fields, leaf_field, leaf_items, leaf_paths, load_toml, nest_values, save_json,
    set_value, setting, to_dict)
from budgetlm.errors import BudgetLMError


ARCHS = ("gpt", "lstm", "d3pm")  # build_model in budgetlm/models/__init__.py knows each


ONOFF = ("auto", "on", "off")


@dataclass
class ModelConfig:
    """Shape of the model: a GPT-2 style transformer by default, Llama style by switches; `arch` picks
    another family (lstm, d3pm), which reads the fields that apply to it."""

    arch: str = setting("gpt", "gpt (transformer), lstm (recurrent baseline), d3pm (discrete diffusion; "
                        "BPB is an upper bound)", choices=ARCHS)
    vocab_size: int = setting(4096, "vocabulary size (replaced by the data's tokenizer)", min=1)
    block_size: int = setting(256, "longest context the model is trained for", min=1)
    n_layer: int = setting(3, "transformer blocks", min=1)
    n_head: int = setting(4, "attention heads", min=1)
    n_kv_head: int | None = setting(None, "fewer than --n-head: grouped-query attention", min=1)
    n_embd: int = setting(128, "model width", min=1)
    mlp: str = setting("gelu", "MLP type (relu2: ReLU squared)", choices=("gelu", "swiglu", "relu2"))
    mlp_hidden: int | None = setting(None, "MLP width (default: 4*n_embd for gelu, ~8/3*n_embd for swiglu)", min=1)
    norm: str = setting("layernorm", "normalization", choices=("layernorm", "rmsnorm"))
    pos: str = setting("learned", "position encoding", choices=("learned", "rope"))
    rope_theta: float = setting(10000.0, "RoPE base", positive=True)
    bias: bool = setting(True, "biases in linear layers and norms")
    tie_embeddings: bool = setting(True, "share the embedding and head weights")
    dropout: float = setting(0.0, "dropout probability", min=0.0, max=0.999)
    norm_eps: float = setting(1e-5, "epsilon of the norms", positive=True)
    vocab_multiple: int = setting(1, "pad embedding/head rows to a multiple of this (64: fast GPU matmuls)", min=1)
    # issue 21: modern-recipe switches of the gpt transformer, each off by default (off = GPT-2 as before)
    qk_norm: bool = setting(False, "RMS-normalize queries and keys per head")
    zero_init_proj: bool = setting(False, "zero-init the attention-out and MLP-out projections")
    logit_softcap: float = setting(0.0, "cap the logits: cap*tanh(logits/cap) (0 = off; e.g. 15)", min=0.0)
    value_embeds: int = setting(0, "value-embedding tables mixed into the values of the first and last "
                                "layers (0 = off)", min=0)
    embed_skip: bool = setting(False, "each block adds the embedding output back in with a learned gain")
    window: int = setting(0, "sliding-window attention: each token sees the last N tokens (0 = full causal)", min=0)

    def __post_init__(self) -> None:
        check_fields(self)
        switches = [n for n in ("qk_norm", "zero_init_proj", "logit_softcap", "value_embeds", "embed_skip", "window")
                    if getattr(self, n)]
        if self.arch != "gpt" and switches:
            raise BudgetLMError(f"model: {', '.join(switches)} apply to the gpt transformer only, not arch {self.arch}")
        if 2 * self.value_embeds > self.n_layer:
            raise BudgetLMError(f"model: value_embeds ({self.value_embeds}) serve a first and a last layer each: "
                                f"at most n_layer/2 = {self.n_layer // 2}")
        if self.arch != "lstm":  # an LSTM has no attention heads, so no head-shape rules
            if self.n_embd % self.n_head:
                raise BudgetLMError(f"model: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            if self.kv_heads < 1 or self.n_head % self.kv_heads:
                raise BudgetLMError(f"model: n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
            if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
                raise BudgetLMError("model: rope needs an even head dimension (n_embd / n_head)")

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
class OptimConfig:
    """TrainConfig.optim: the optimizer (AdamW, or Muon for the blocks' matrices) and its groups' LRs."""

    lr: float = setting(2e-3, "peak learning rate", positive=True)
    weight_decay: float = setting(0.1, "AdamW weight decay", min=0.0)
    beta1: float = setting(0.9, "AdamW beta1", min=0.0, max=0.9999)
    beta2: float = setting(0.95, "AdamW beta2", min=0.0, max=0.9999)
    grad_clip: float = setting(1.0, "gradient-norm clip (0 = off)", min=0.0)
    optimizer: str = setting("adamw", "adamw, or muon: Muon for the blocks' matrices, AdamW for the rest",
                             choices=("adamw", "muon"))
    muon_lr: float = setting(0.02, "Muon's peak learning rate (scaled by the schedule like --lr)", positive=True)
    muon_momentum: float = setting(0.95, "Muon's Nesterov momentum", min=0.0, max=0.9999)
    muon_weight_decay: float = setting(0.0, "Muon's decoupled weight decay", min=0.0)
    muon_lr_adjust: str = setting("original", "Muon's per-shape LR scale: original = sqrt(max(1, rows/cols)) "
                                  "(Keller Jordan), match_rms_adamw = 0.2*sqrt(max(rows, cols)) (Moonshot)",
                                  choices=("original", "match_rms_adamw"))
    embed_lr: float | None = setting(None, "AdamW LR of the embeddings (default --lr)", positive=True)
    head_lr: float | None = setting(None, "AdamW LR of an untied LM head (default --lr)", positive=True)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ScheduleConfig:
    """TrainConfig.schedule: the learning-rate schedule."""

    schedule: str = setting("cosine", "learning-rate schedule", choices=("cosine", "linear", "wsd", "constant"))
    warmup_frac: float = setting(0.05, "warmup as a fraction of the budget", min=0.0, max=1.0)
    warmup_steps: int | None = setting(None, "explicit warmup steps (overrides --warmup-frac)", min=0)
    min_lr_frac: float = setting(0.1, "floor of the decay, as a fraction of --lr", min=0.0, max=1.0)
    decay_frac: float = setting(0.2, "--schedule wsd: the final fraction of the budget spent decaying",
                                positive=True, max=1.0)
    batch_warmup_frac: float = setting(0.0, "batch-size warmup: ramp gradient accumulation from one micro-batch "
                                       "to the full --total-batch over this first fraction of the budget (0 = off)",
                                       min=0.0, max=1.0)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class EvalConfig:
    """TrainConfig.eval: validation, HellaSwag and samples during training."""

    eval_every: int = setting(0, "steps between evals (0 = time budgets: --eval-points evals spread over the "
                              "budget; other budgets: only at the end)", min=0)
    eval_points: int = setting(10, "with --eval-every 0 and a time budget: an eval at each 1/N of it (0 = none)",
                               min=0)
    eval_tokens: int = setting(65536, "validation tokens scored at each eval", min=1)
    final_eval_tokens: int = setting(0, "validation tokens of the final eval (0 = the whole split)", min=0)
    hellaswag_every: int = setting(0, "steps between HellaSwag evals (0 = never; also at the end)", min=0)
    hellaswag_items: int = setting(0, "HellaSwag items per eval (0 = all 10,042)", min=0)
    hellaswag_file: str | None = setting(None, "a local HellaSwag val file (.jsonl or .jsonl.xz) instead "
                                       "of the download (or set BUDGETLM_HELLASWAG_FILE)")
    sample_every: int = setting(0, "steps between samples printed by rank 0 (0 = never)", min=0)
    sample_tokens: int = setting(64, "tokens per sample", min=1)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class FastConfig:
    """TrainConfig.fast: the fast path: precision, compilation, kernels, memory savers."""

    dtype: str = setting("auto", "compute dtype", choices=("auto", "float32", "bfloat16"))
    compile: str = setting("auto", "torch.compile", choices=ONOFF)
    fused_loss: str = setting("auto", "chunked head+cross-entropy, saves memory (auto: off)", choices=ONOFF)
    ce_kernel: str = setting("auto", "loss gradient written over the logits by one Triton kernel "
                             "(auto: CUDA with Triton)", choices=ONOFF)
    recompute: int = setting(0, "activation recomputation: 0 off, 1 MLPs, 2 whole blocks", choices=(0, 1, 2))
    attn: str = setting("auto", "preferred attention kernel (auto: cuDNN on Hopper, else PyTorch's order)",
                        choices=("auto", "flash", "cudnn", "efficient", "math"))
    fp8: str = setting("off", "FP8 matmuls through torchao (Ada/Hopper GPUs; opt-in, trades precision for speed)",
                       choices=("off", "tensorwise", "rowwise"))
    fp8_modules: str = setting("all", "with --fp8: 'all' (default) or pieces of Linear names, e.g. 'mlp'")
    fp8_head: str = setting("off", "the LM head's three matmuls in FP8 inside the CE kernel (Ada/Hopper; opt-in)",
                            choices=("on", "off"))
    cuda_graphs: str = setting("auto", "compile with CUDA graphs, one launch per step (auto: CUDA, one GPU, "
                               "< 20M params)", choices=ONOFF)
    half_residual: str = setting("auto", "residual stream in bf16, norms in fp32 (auto: CUDA half precision)",
                                 choices=ONOFF)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class DistConfig:
    """TrainConfig.dist: scale-out under torchrun."""

    parallel: str = setting("auto", "under torchrun: ddp (default) or fsdp", choices=("auto", "ddp", "fsdp"))
    zero_stage: int = setting(0, "1: ZeRO-1, AdamW state sharded (ddp)", choices=(0, 1))
    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class DataConfig:
    """TrainConfig.data: where the tokens come from (default: the data folder's splits)."""

    train_shards: str | None = setting(None, "train shards glob, e.g. 'DIR/fineweb_train_*.bin', or a data folder "
                                      "(default: the data folder's train split)")
    val_shards: str | None = setting(None, "val shards glob, e.g. 'DIR/fineweb_val_*.bin'")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class DistillConfig:
    """TrainConfig.distill: distillation from an n-gram teacher."""

    teacher: str | None = setting(None, "ngram:N - distill from a Kneser-Ney n-gram for the first steps")
    distill_steps: int = setting(200, "steps of distillation", min=0)
    distill_alpha: float = setting(0.5, "weight of the KL term (0..1)", min=0.0, max=1.0)
    distill_temp: float = setting(1.0, "distillation temperature", positive=True)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(init=False)
class TrainConfig:
    """Everything the trainer needs besides the model shape and the data: run-level fields at the top,
    the rest in one sub-config per component that reads it (cfg.optim.lr, cfg.fast.compile, ...).

    The constructor also takes today's flat keywords (TrainConfig(lr=1e-3) sets optim.lr), so old
    checkpoints, plan files and callers keep working; a sub-config passed in is copied, so two
    TrainConfigs never share one."""

    budget: str = setting("5m", "5m, 2h, 300s, 50M-tokens, 1000-steps", budget=True)
    batch_size: int = setting(32, "sequences per micro-batch", min=1)
    total_batch_tokens: int | None = setting(None, "tokens per step (gradient accumulation)", min=1)
    seq_len: int = setting(256, "tokens per training sequence", min=1)
    seed: int = setting(1337, "random seed", min=0)
    device: str = setting("auto", "auto, cpu, cuda, cuda:N, mps")
    threads: int | None = setting(None, "CPU threads", min=1)
    checkpoint_every: int = setting(0, "steps between checkpoints (0 = only at the end)", min=0)
    log_every: int = setting(10, "steps between log lines", min=1)
    log_to: str = setting("auto", "metric sinks: jsonl,tensorboard,wandb (auto = jsonl + tensorboard when installed)")
    out_dir: str = setting("runs/latest", "run folder")
    progress: bool = setting(True, "live progress bar")
    max_steps: int | None = setting(None, "stop after N steps (the schedule still follows the "
                                   "budget; no --budget: the budget is N-steps)", min=1)
    recipe: str = setting("auto", "named bundle of model/optimizer switches (explicit flags win); auto = the one "
                          "measured best for the model: modern for the learned-position transformer, plain for the others",
                          choices=("auto", "plain", "modern"))
    optim: OptimConfig = group(OptimConfig, "the optimizer: lr, betas, weight decay, gradient clip")
    schedule: ScheduleConfig = group(ScheduleConfig, "the learning-rate schedule and its warmup")
    eval: EvalConfig = group(EvalConfig, "validation, HellaSwag and samples during training")
    fast: FastConfig = group(FastConfig, "precision, compilation, kernels and memory savers")
    dist: DistConfig = group(DistConfig, "data-parallel mode and ZeRO under torchrun")
    data: DataConfig = group(DataConfig, "train / val shard globs")
    distill: DistillConfig = group(DistillConfig, "distillation from an n-gram teacher")

    def __init__(self, **values: Any) -> None:
        split = nest_values(type(self), values)
        for f in fields(self):
            if f.metadata.get("group"):
                setattr(self, f.name, _build_group(f, split.get(f.name)))
            else:
                setattr(self, f.name, split.get(f.name, f.default))
        self.__post_init__()

    def __post_init__(self) -> None:
        check_fields(self)

    def __setattr__(self, name: str, value: Any) -> None:
        # A flat name set here would be a silent new attribute the trainer never reads.
        if name not in _FIELD_NAMES[type(self)]:
            raise AttributeError(_moved(type(self), name))
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:  # only called when the attribute is missing
        raise AttributeError(_moved(type(self), name))


def _build_group(f: dataclasses.Field, given: Any) -> Any:
    cls = f.default_factory
    if given is None:
        return cls()
    if isinstance(given, dict):
        return cls(**given)
    if isinstance(given, cls):
        return dataclasses.replace(given)
    raise TypeError(f"TrainConfig.{f.name}: expected a {cls.__name__} or a dict, got {given!r}")


def _moved(cls: type, name: str) -> str:
    where = leaf_paths(cls).get(name)
    if where and "." in where:
        return f"{cls.__name__}.{name} moved to {cls.__name__}.{where}"
    return f"{cls.__name__} has no field {name!r}"


_FIELD_NAMES = {TrainConfig: {f.name for f in fields(TrainConfig)}}


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

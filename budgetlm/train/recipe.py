"""Training recipes: named bundles of model and optimizer switches, applied before training by the
verbs that build configs (`train`, `speedrun`); train() itself trains exactly the configs it is given.

`plain` is GPT-2 with AdamW and a cosine schedule, bit-identical to budgetlm before issue 21.
`modern` bundles the ideas of the modded-nanogpt speedrun that fit this codebase: Muon for the
block matrices, RoPE, RMSNorm without biases, QK-norm, ReLU², zero-initialised output projections,
an untied head, logit soft-capping, value embeddings, skip connections from the embedding, and a
warmup-stable-decay schedule with a long decay. `auto` (the default) picks by measurement, see
resolve_recipe.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from budgetlm.config import ModelConfig, TrainConfig, flat_dict, get_value
from budgetlm.errors import BudgetLMError

RECIPES = ("auto", "plain", "modern")


def modern_model(cfg: ModelConfig) -> dict[str, Any]:
    """The modern recipe's model switches (value embeddings only where a first and a last layer exist)."""
    return dict(pos="rope", norm="rmsnorm", bias=False, qk_norm=True, mlp="relu2", zero_init_proj=True,
                tie_embeddings=False, logit_softcap=15.0, value_embeds=min(1, cfg.n_layer // 2),
                embed_skip=True)


# The speedrun decays over its last ~40% of steps; Muon's LR 0.02 is Keller Jordan's Muon default.
MODERN_TRAIN: dict[str, Any] = dict(optimizer="muon", muon_lr=0.02, schedule="wsd", decay_frac=0.4)


def resolve_recipe(name: str, model_cfg: ModelConfig) -> str:
    """The recipe `auto` stands for: modern for the gpt transformer with learned positions (the
    default shape, the speedrun's sized ones, the gpt2-* / dN sizes), measured better on both devices
    (benchmarks/RESULTS.md, "The modern recipe"): the 5-minute CPU speedrun on held-out TinyStories,
    1.112 vs plain 1.146 BPB (AMD, 3 seeds, p = 0.001) and 1.105 vs 1.136 (Xeon, 2 seeds, p = 0.049),
    on a held-out Gutenberg book 1.937 vs 1.997 (3 seeds, p = 0.006), and GPT-2 124M on Gutenberg on
    an H200, 7 minutes each, 1.310 vs 1.965 BPB, reaching plain's final loss in 0.31x its time.
    plain for the rest: the LSTM and D3PM (the bundle is the transformer's) and a RoPE model (a Llama
    preset such as tinyllama-1.1b, or --pos rope), a shape someone chose, which auto leaves as named."""
    if name != "auto":
        return name
    return "modern" if model_cfg.arch == "gpt" and model_cfg.pos == "learned" else "plain"


def auto_leaves_out(train_cfg: TrainConfig) -> set[str]:
    """The bundle's fields `auto` leaves alone because other settings exclude them, so that auto
    never refuses a run that plain would take (an explicit --recipe modern still refuses it)."""
    out = set()
    if train_cfg.dist.parallel == "fsdp" or train_cfg.dist.zero_stage:
        out |= {"optimizer", "muon_lr"}  # Muon is not sharded: AdamW stays
    if any(get_value(train_cfg, n) == "on" for n in ("fused_loss", "ce_kernel", "fp8_head")):
        out.add("logit_softcap")  # those heads have no cap
    return out


def apply_recipe(model_cfg: ModelConfig, train_cfg: TrainConfig,
                 explicit: Iterable[str] = ()) -> tuple[ModelConfig, TrainConfig]:
    """(model config, train config) with train_cfg.recipe's bundle applied; fields named in
    `explicit` (set by the user: flags or a config file) keep their values. Checks the mix."""
    if train_cfg.recipe not in RECIPES:
        raise BudgetLMError(f"--recipe must be one of {', '.join(RECIPES)}, got {train_cfg.recipe!r}")
    explicit = set(explicit)
    name = resolve_recipe(train_cfg.recipe, model_cfg)
    if train_cfg.recipe == "auto":
        explicit |= auto_leaves_out(train_cfg)
    if name == "modern":
        if model_cfg.arch != "gpt":
            raise BudgetLMError(f"--recipe modern is for the gpt transformer, not --arch {model_cfg.arch}")
        keep = lambda values: {k: v for k, v in values.items() if k not in explicit}
        model_cfg = dataclasses.replace(model_cfg, **keep(modern_model(model_cfg)))
        # flat leaves rebuilt, not dataclasses.replace: its schedule="wsd" would replace the whole
        # schedule group (decay_frac and warmup with it) by the leaf's value
        train_cfg = TrainConfig(**{**flat_dict(train_cfg), **keep(MODERN_TRAIN), "recipe": name})
    elif train_cfg.recipe != name:  # auto -> plain: the summary says what was applied
        train_cfg = dataclasses.replace(train_cfg, recipe=name)
    check_switches(model_cfg, train_cfg)
    return model_cfg, train_cfg


def check_switches(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Refuse, before training, the combinations the switches cannot serve."""
    if model_cfg.logit_softcap:
        for name in ("fused_loss", "ce_kernel", "fp8_head"):
            if get_value(train_cfg, name) == "on":
                raise BudgetLMError(f"--{name.replace('_', '-')} on: that head has no logit soft-cap; "
                                    f"use --logit-softcap 0 or --{name.replace('_', '-')} auto")
    if train_cfg.optim.optimizer == "muon":
        if train_cfg.dist.parallel == "fsdp":
            raise BudgetLMError("--optimizer muon does not support --parallel fsdp (it orthogonalizes whole "
                                "matrices, FSDP2 holds row shards); use --parallel ddp")
        if train_cfg.dist.zero_stage:
            raise BudgetLMError("--zero-stage 1 shards AdamW only; use --zero-stage 0 with --optimizer muon")
        if model_cfg.arch == "lstm":
            raise BudgetLMError("--optimizer muon: --arch lstm has no transformer blocks")

"""`budgetlm speedrun`: prepare, size, train, evaluate and sample under one budget."""

from __future__ import annotations

import argparse

from budgetlm import checks
from budgetlm.cli.flags import field_flag, field_flags, picked
from budgetlm.cli.train import RECIPE_MODEL_FLAGS, RECIPE_TRAIN_FLAGS, add_recipe_flags

MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "mlp", "norm", "pos")
TRAIN_FLAGS = ("seq_len", "batch_size", "lr", "compile", "threads", "log_to")  # explicit flags win over the sizing


def register(sub) -> None:
    sp = sub.add_parser("speedrun", help="the main job: prepare, train, evaluate, sample under one budget")
    field_flag(sp, "budget", default="5m")
    sp.add_argument("--data", default="tinystories", help="tinystories (falls back to synth offline), synth, FILE")
    sp.add_argument("--tokenizer", help="default: chosen for the device")
    sp.add_argument("--out", default="runs/speedrun", help="run folder: logs, checkpoints, summary")
    field_flag(sp, "device")
    field_flag(sp, "seed", default=1337)
    sp.add_argument("--no-progress", action="store_true", help="no live progress bar")
    sp.add_argument("--sizing", choices=["measured", "static"], default="measured",
                    help="measured: size model, batch and tokenizer from a short calibration of this device (default); "
                         "static: the fixed per-device defaults")
    sp.add_argument("--auto-size", action="store_true", help="after data prep, time several sizes and keep the one "
                    "the budget favours (replaces the sizing's shape)")
    sp.add_argument("--probe-seconds", type=checks.number(float, positive=True), default=4.0,
                    help="seconds of measurement per --auto-size size")
    field_flags(sp.add_argument_group("model (default: sized for the device and budget)"), MODEL_FLAGS)
    field_flags(sp.add_argument_group("training (default: sized for the device and budget)"), TRAIN_FLAGS)
    add_recipe_flags(sp)
    sp.set_defaults(fn=run)


def run(args: argparse.Namespace) -> None:
    from budgetlm.speedrun.pipeline import speedrun
    overrides = {**picked(args, MODEL_FLAGS + TRAIN_FLAGS + RECIPE_MODEL_FLAGS + RECIPE_TRAIN_FLAGS),
                 "progress": not args.no_progress}
    check_overrides(overrides)
    speedrun(args.budget, args.data, args.tokenizer, args.out, args.device or "auto", seed=args.seed,
             overrides=overrides, auto=args.auto_size, probe_seconds=args.probe_seconds, sizing=args.sizing)


def check_overrides(overrides: dict) -> None:
    """The speedrun's flags checked before it sizes, prepares or calibrates anything: each value by its
    field's rules, and the head shape when both sides of it are given (the rest follows the sizing)."""
    from budgetlm.config import ModelConfig, TrainConfig, check_value, leaf_field, leaf_paths
    for cls in (ModelConfig, TrainConfig):
        for name in overrides:
            if name in leaf_paths(cls):
                check_value(leaf_field(cls, name), overrides[name])
    if "n_head" in overrides and "n_embd" in overrides:
        ModelConfig(**{k: overrides[k] for k in ("n_head", "n_embd", "pos") if k in overrides})

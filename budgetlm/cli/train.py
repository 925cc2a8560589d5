"""`budgetlm train`: flags (and an optional TOML file) -> ModelConfig + TrainConfig -> train().
llm.c's train_gpt2cu short flags are aliases of the same fields (docs/llmc_flags.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from budgetlm import checks
from budgetlm.cli.flags import field_flag, field_flags, picked
from budgetlm.errors import BudgetLMError

MODEL_FLAGS = ("arch", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp", "norm", "pos", "mlp_hidden")
TRAIN_FLAGS = ("batch_size", "total_batch_tokens", "seq_len", "lr", "min_lr_frac", "warmup_frac", "warmup_steps",
               "schedule", "weight_decay", "grad_clip", "seed", "device", "dtype", "compile", "threads",
               "eval_every", "eval_points", "eval_tokens", "final_eval_tokens", "checkpoint_every", "log_every", "log_to", "fused_loss",
               "ce_kernel", "recompute", "attn", "fp8", "fp8_modules", "fp8_head", "half_residual", "cuda_graphs",
               "teacher", "distill_steps", "distill_alpha", "distill_temp", "max_steps", "sample_every",
               "sample_tokens", "hellaswag_every", "hellaswag_items", "hellaswag_file", "train_shards", "val_shards",
               "parallel", "zero_stage")
# issue 21: the recipe (a named bundle) and its switches; a switch given here wins over the bundle
RECIPE_MODEL_FLAGS = ("qk_norm", "zero_init_proj", "logit_softcap", "value_embeds", "embed_skip", "window",
                      "tie_embeddings")
RECIPE_TRAIN_FLAGS = ("recipe", "optimizer", "muon_lr", "muon_momentum", "muon_weight_decay", "muon_lr_adjust",
                      "embed_lr", "head_lr", "decay_frac", "batch_warmup_frac")
DISTILL_FLAGS = ("teacher", "distill_steps", "distill_alpha", "distill_temp")
SCALE_FLAGS = ("parallel", "zero_stage", "train_shards", "val_shards", "max_steps", "sample_every", "sample_tokens",
               "hellaswag_every", "hellaswag_items", "hellaswag_file")
LLMC_SHORT = {"zero_stage": "-z", "train_shards": "-i", "val_shards": "-j", "max_steps": "-x", "sample_every": "-s",
              "sample_tokens": "-g", "recompute": "-r", "schedule": "-k", "eval_every": "-v", "batch_size": "-b",
              "seq_len": "-t", "total_batch_tokens": "-d", "weight_decay": "-c", "lr": "-l", "min_lr_frac": "-q",
              "warmup_steps": "-u", "checkpoint_every": "-n"}  # llm.c's train_gpt2cu letters


def add_model_flags(p: argparse._ActionsContainer, names: tuple[str, ...] = MODEL_FLAGS) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="named size: nano, micro, tiny, small, mini, gpt2-124m, ..., tinyllama-1.1b, "
                                   "or a shape like 4x128 (llm.c -e: d12, d24, d36, d48)")
    field_flags(g, names)


def add_recipe_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe (issue 21: --recipe modern bundles these; a flag given wins)")
    field_flags(g, RECIPE_TRAIN_FLAGS[:1])
    field_flags(g, RECIPE_MODEL_FLAGS)
    field_flags(g, RECIPE_TRAIN_FLAGS[1:])


def register(sub) -> None:
    sp = sub.add_parser("train", help="train under a budget of time, tokens or steps", add_help=False)
    sp.add_argument("--help", action="help", help="show this help and exit (-h is llm.c's HellaSwag switch)")
    sp.add_argument("--data", help="prepared data folder")
    field_flag(sp, "budget")  # default: the --config file's, else -x N steps, else 5m
    sp.add_argument("--config", help="TOML file with [model], [train], [data] tables (e.g. from 'budgetlm plan')")
    sp.add_argument("--out", "-o", default="runs/latest", help="run folder: logs, checkpoints, summary")
    sp.add_argument("--resume", nargs="?", const="", help="continue from the latest checkpoint in --out (or PATH)")
    sp.add_argument("--stop-after-steps", type=int, help=argparse.SUPPRESS)
    add_model_flags(sp)
    sp.add_argument("-e", dest="model", help="= --model: d12, d24, d36, d48 or another preset")
    g = sp.add_argument_group("training")
    field_flags(g, tuple(n for n in TRAIN_FLAGS if n not in SCALE_FLAGS + DISTILL_FLAGS), LLMC_SHORT)
    g.add_argument("--no-progress", action="store_true", help="no live progress bar")
    add_recipe_flags(sp)
    field_flags(sp.add_argument_group("distillation"), DISTILL_FLAGS)
    g = sp.add_argument_group("scale-out (torchrun) and llm.c-style flags, see docs/llmc_flags.md")
    field_flags(g, SCALE_FLAGS, LLMC_SHORT)
    g.add_argument("--zero1", dest="zero_stage", action="store_const", const=1, help="= --zero-stage 1")
    g.add_argument("-h", "--hellaswag", type=int, choices=[0, 1], help="1: HellaSwag at every eval (-v)")
    g.add_argument("-y", dest="resume_llmc", type=int, choices=[0, 1], help="1 = --resume (latest in --out)")
    sp.set_defaults(fn=run)


def resolve_llmc(args: argparse.Namespace) -> None:
    """The llm.c switches that are more than aliases."""
    if args.train_shards and Path(args.train_shards).is_dir():  # -i DIR: a prepared folder
        args.data, args.train_shards = args.data or args.train_shards, None
    elif args.train_shards and not args.data:  # -i 'DIR/x_train_*.bin': meta.json and tokenizer.json in DIR
        args.data = str(Path(args.train_shards).parent)
    if args.resume_llmc == 1 and args.resume is None:
        args.resume = ""
    if args.hellaswag == 1 and not args.hellaswag_every:
        if not args.eval_every:
            raise BudgetLMError("-h 1: HellaSwag runs at every eval, so give -v N (or --hellaswag-every N)")
        args.hellaswag_every = args.eval_every


def run(args: argparse.Namespace) -> None:
    from budgetlm.config import TrainConfig, from_dict, load_toml, model_config
    from budgetlm.train.trainer import train

    model_values, train_values = {}, {}
    resolve_llmc(args)
    if args.config:
        file = load_toml(args.config)
        check_train_toml(file, args.config)
        model_values = dict(file.get("model", {}))
        train_values = dict(file.get("train", {}))
        args.data = args.data or file.get("data", {}).get("dir")
    if not args.data:
        raise BudgetLMError("--data: give the prepared data folder (from 'budgetlm prepare')")
    checks.data_dir(args.data)
    preset = args.model or model_values.pop("preset", None)
    model_values.update(picked(args, MODEL_FLAGS + RECIPE_MODEL_FLAGS))
    mcfg = model_config(preset, **model_values)
    train_values.update(picked(args, TRAIN_FLAGS + RECIPE_TRAIN_FLAGS))
    train_values["budget"] = (args.budget or train_values.get("budget")
                              or (f"{args.max_steps}-steps" if args.max_steps else "5m"))
    train_values["out_dir"] = args.out
    train_values["progress"] = not args.no_progress
    resume = (args.resume or args.out) if args.resume is not None else None
    if resume is not None and "recipe" not in train_values:  # a resumed run keeps its recipe, not today's auto
        from budgetlm.train.checkpoint import saved_train_config
        saved = saved_train_config(resume)
        if saved is not None:
            train_values["recipe"] = saved.get("recipe", "plain")  # saved before recipes existed: plain
    tcfg = from_dict(TrainConfig, train_values, "flags")  # the file's own keys were checked above, naming it
    from budgetlm.config import flat_values
    from budgetlm.train.recipe import apply_recipe  # values given by flag or file win over the bundle
    mcfg, tcfg = apply_recipe(mcfg, tcfg, explicit=set(model_values) | set(flat_values(TrainConfig, train_values)))
    info = train(mcfg, tcfg, args.data, resume=resume, stop_after_steps=args.stop_after_steps)
    from budgetlm.report.summary import summary_table
    from budgetlm.train.distributed import env_world
    if env_world()[0] == 0:  # under torchrun only rank 0 prints
        print(summary_table(info))


def check_train_toml(file: dict, where: str) -> None:
    """A train config file: only [model], [train] and [data] tables, each key known and well typed;
    [train] takes flat keys (lr = ...) and sub-tables ([train.optim])."""
    from budgetlm.config import ModelConfig, TrainConfig, check_table, check_toml_tables
    check_toml_tables(file, where, ("model", "train", "data"))
    check_table(ModelConfig, file.get("model", {}), where, "model", extra=("preset",))
    check_table(TrainConfig, file.get("train", {}), where, "train")
    for key, value in file.get("data", {}).items():
        if key != "dir":
            raise BudgetLMError(f"data.{key} in {where}: unknown key; known: dir")
        if not isinstance(value, str):
            raise BudgetLMError(f"data.dir in {where}: expected a folder path string, got {value!r}")
    preset = file.get("model", {}).get("preset")
    if preset is not None and not isinstance(preset, str):
        raise BudgetLMError(f"model.preset in {where}: expected a preset name, got {preset!r}")

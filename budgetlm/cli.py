"""`budgetlm VERB ...`: each verb parses its flags into config objects and calls one library
function. Problems with input end as one line naming the file or flag, and exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from budgetlm import checks
from budgetlm.errors import BudgetLMError
from budgetlm.train.interrupt import RunStopped

MODEL_FLAGS = ("arch", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp", "norm", "pos", "mlp_hidden")
TRAIN_FLAGS = ("batch_size", "total_batch_tokens", "seq_len", "lr", "min_lr_frac", "warmup_frac", "warmup_steps",
               "schedule", "weight_decay", "grad_clip", "seed", "device", "dtype", "compile", "threads",
               "eval_every", "eval_points", "eval_tokens", "checkpoint_every", "log_every", "log_to", "fused_loss", "ce_kernel", "recompute", "attn", "fp8", "fp8_modules", "fp8_head", "half_residual", "cuda_graphs", "teacher", "distill_steps",
               "distill_alpha", "distill_temp", "max_steps", "sample_every", "sample_tokens", "hellaswag_every",
               "hellaswag_items", "hellaswag_file", "train_shards", "val_shards", "parallel", "zero_stage")
DISTILL_FLAGS = ("teacher", "distill_steps", "distill_alpha", "distill_temp")
LLMC_FLAGS = ("parallel", "zero_stage", "train_shards", "val_shards", "max_steps", "sample_every", "sample_tokens",
              "hellaswag_every", "hellaswag_items", "hellaswag_file")  # defined in _add_llmc_flags (llm.c aliases)


def _field_flag(g: argparse._ActionsContainer, cls: type, name: str, *aliases: str, **extra) -> None:
    """A flag for one config field: help, choices and type from its metadata (config.setting), so a
    flag's rules live in one place; values are checked again, with the rest, by the config itself."""
    from budgetlm.config import field_kind, flag_name, leaf_field
    f = leaf_field(cls, name)
    kind = field_kind(f)[0]
    opts = {"help": f.metadata.get("help")}
    if kind in ("int", "float"):
        opts["type"] = int if kind == "int" else float
    if "choices" in f.metadata:
        opts["choices"] = list(f.metadata["choices"])
    g.add_argument(flag_name(name), *aliases, **{**opts, **extra})


SPEEDRUN_MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "mlp", "norm", "pos")
SPEEDRUN_TRAIN_FLAGS = ("seq_len", "batch_size", "lr", "compile", "threads", "log_to")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    from budgetlm.config import ModelConfig
    g = p.add_argument_group("model")
    g.add_argument("--model", help="named size: nano, micro, tiny, small, mini, gpt2-124m, ..., tinyllama-1.1b")
    for name in MODEL_FLAGS:
        _field_flag(g, ModelConfig, name)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    from budgetlm.config import TrainConfig
    g = p.add_argument_group("training")
    for name in TRAIN_FLAGS:
        if name in LLMC_FLAGS or name in DISTILL_FLAGS:
            continue
        _field_flag(g, TrainConfig, name, *(("--total-batch",) if name == "total_batch_tokens" else ()))
    g.add_argument("--no-progress", action="store_true", help="no live progress bar")
    g = p.add_argument_group("distillation")
    for name in DISTILL_FLAGS:
        _field_flag(g, TrainConfig, name)


def _add_llmc_flags(p: argparse.ArgumentParser) -> None:
    """Scale-out flags, and llm.c's train_gpt2cu short flags as aliases (docs/llmc_flags.md).
    `-h` is llm.c's HellaSwag switch here (-h 1), so this verb's help is --help only."""
    p.add_argument("--help", action="help", help="show this help and exit (-h is llm.c's HellaSwag switch)")
    g = p.add_argument_group("scale-out (torchrun) and llm.c-style flags, see docs/llmc_flags.md")
    from budgetlm.config import TrainConfig
    _field_flag(g, TrainConfig, "parallel")
    _field_flag(g, TrainConfig, "zero_stage", "-z")
    g.add_argument("--zero1", dest="zero_stage", action="store_const", const=1, help="= --zero-stage 1")
    _field_flag(g, TrainConfig, "train_shards", "-i",
                help="train shards glob, e.g. 'DIR/fineweb_train_*.bin', or a data folder")
    _field_flag(g, TrainConfig, "val_shards", "-j", help="val shards glob, e.g. 'DIR/fineweb_val_*.bin'")
    _field_flag(g, TrainConfig, "max_steps", "-x", help="stop after N steps (no --budget: the budget is N-steps)")
    _field_flag(g, TrainConfig, "sample_every", "-s")
    _field_flag(g, TrainConfig, "sample_tokens", "-g")
    g.add_argument("-h", "--hellaswag", type=int, choices=[0, 1], help="1: HellaSwag at every eval (-v)")
    _field_flag(g, TrainConfig, "hellaswag_every")
    _field_flag(g, TrainConfig, "hellaswag_items")
    _field_flag(g, TrainConfig, "hellaswag_file", help="local HellaSwag val file (.jsonl or .jsonl.xz) instead of "
                "the download (or set BUDGETLM_HELLASWAG_FILE)")
    g.add_argument("-y", dest="resume_llmc", type=int, choices=[0, 1], help="1 = --resume (latest in --out)")
    g.add_argument("-e", dest="model", help="= --model: d12, d24, d36, d48 or another preset")
    g.add_argument("-r", dest="recompute", type=int, choices=[0, 1, 2], help="= --recompute")
    g.add_argument("-k", dest="schedule", choices=["cosine", "linear", "wsd", "constant"], help="= --schedule")
    for short, dest, typ in (("-o", "out", str), ("-v", "eval_every", int), ("-b", "batch_size", int),
                             ("-t", "seq_len", int), ("-d", "total_batch_tokens", int), ("-c", "weight_decay", float),
                             ("-l", "lr", float), ("-q", "min_lr_frac", float), ("-u", "warmup_steps", int),
                             ("-n", "checkpoint_every", int)):
        g.add_argument(short, dest=dest, type=typ, help=f"= --{dest.replace('_', '-')}")


def _resolve_llmc(args: argparse.Namespace) -> None:
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


def _picked(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def cmd_prepare(args: argparse.Namespace) -> None:
    from budgetlm.data.prepare import prepare
    prepare(args.data, args.tokenizer, args.out, max_tokens=_count(args.max_tokens, "--max-tokens"),
            val_frac=args.val_frac, shard_tokens=_count(args.shard_tokens, "--shard-tokens"), seed=args.seed,
            sample=args.sample)


def _count(text: str | None, flag: str) -> int | None:
    """'50M', '2.5k', '1000' -> int."""
    if text is None:
        return None
    scale = {"k": 1e3, "m": 1e6, "b": 1e9}
    t = str(text).strip().lower()
    try:
        return int(float(t[:-1]) * scale[t[-1]]) if t[-1] in scale else int(t)
    except (ValueError, IndexError, OverflowError):
        raise BudgetLMError(f"{flag}: expected a count like 1000, 50k or 20M, got {text!r}") from None


def cmd_train(args: argparse.Namespace) -> None:
    from budgetlm.config import TrainConfig, from_dict, load_toml, model_config
    from budgetlm.train.trainer import train

    model_values, train_values = {}, {}
    _resolve_llmc(args)
    if args.config:
        file = load_toml(args.config)
        _check_train_toml(file, args.config)
        model_values = dict(file.get("model", {}))
        train_values = dict(file.get("train", {}))
        args.data = args.data or file.get("data", {}).get("dir")
    if not args.data:
        raise BudgetLMError("--data: give the prepared data folder (from 'budgetlm prepare')")
    checks.data_dir(args.data)
    preset = args.model or model_values.pop("preset", None)
    model_values.update(_picked(args, MODEL_FLAGS))
    mcfg = model_config(preset, **model_values)
    train_values.update(_picked(args, TRAIN_FLAGS))
    train_values["budget"] = (args.budget or train_values.get("budget")
                              or (f"{args.max_steps}-steps" if args.max_steps else "5m"))
    train_values["out_dir"] = args.out
    train_values["progress"] = not args.no_progress
    tcfg = from_dict(TrainConfig, train_values, "flags")  # the file's own keys were checked above, naming it
    resume = None
    if args.resume is not None:
        resume = args.resume or args.out
    info = train(mcfg, tcfg, args.data, resume=resume, stop_after_steps=args.stop_after_steps)
    from budgetlm.report import summary_table
    from budgetlm.train.distributed import env_world
    if env_world()[0] == 0:  # under torchrun only rank 0 prints
        print(summary_table(info))


def _check_train_toml(file: dict, where: str) -> None:
    """A train config file: only [model], [train] and [data] tables, each key known and well typed."""
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


def cmd_eval(args: argparse.Namespace) -> None:
    from budgetlm.data.prepare import data_tokenizer
    from budgetlm.data.shards import load_split
    from budgetlm.eval.perplexity import evaluate
    from budgetlm.report import load_model

    if args.text and args.data:
        raise BudgetLMError("--text and --data: give one (a text file to score, or a prepared data folder)")
    for flag, on in (("--fuse", args.fuse), ("--stories", args.stories), ("--judge", args.judge)):
        if on and not args.data:
            raise BudgetLMError(f"{flag} needs --data (the prepared folder)")
    if not (args.data or args.text or args.hellaswag is not None):
        raise BudgetLMError("give --data DIR (prepared folder), --text FILE or --hellaswag [N]")
    model, tok, ckpt = load_model(args.checkpoint, args.device or "auto")
    device = next(model.parameters()).device
    seq = args.seq_len or model.cfg.block_size
    if not args.data:
        return _eval_text(args, model, tok, ckpt, device, seq)
    data_tok = data_tokenizer(args.data)
    if data_tok.fingerprint() != tok.fingerprint():
        raise BudgetLMError(f"--data {args.data}: tokenizer ({data_tok.spec}) does not match the checkpoint's "
                            f"({tok.spec}) in {ckpt}")
    val = load_split(args.data, args.split)
    result = evaluate(model, val, tok.token_bytes(), seq, args.batch_size, device, max_tokens=args.max_tokens or 0)
    result.update({"checkpoint": str(ckpt), "split": args.split})
    if args.hellaswag is not None:
        from budgetlm.eval.hellaswag import score_file
        result["hellaswag"] = score_file(model, tok, args.hellaswag_file, args.hellaswag, device)
    fuser = None
    if args.fuse:
        from budgetlm.fusion import Fuser
        fuser = Fuser.build(model, args.data, args.fuse, tok, log=lambda m: print(m, file=sys.stderr))
        fused = evaluate(model, val, tok.token_bytes(), seq, args.batch_size, device,
                         max_tokens=args.max_tokens or 0, logits_fn=fuser.logits_fn)
        result["fused"] = {"spec": args.fuse, **fused}
    if args.stories:
        from budgetlm.data.prepare import load_meta
        from budgetlm.eval.story_eval import story_eval
        lower = bool(load_meta(args.data).get("lowercase"))
        result["stories"] = story_eval(model, tok, args.stories, seed=args.seed, lowercase_prompts=lower,
                                       logits_hook=fuser.logits_hook if fuser else None)
    if args.judge:
        from budgetlm.eval.judge import Judge
        if not args.stories:
            raise BudgetLMError("--judge needs --stories N (stories to judge)")
        st = result["stories"]["stories"]
        result["judge"] = {k: v for k, v in Judge(cache_path=args.judge_cache).score_many(
            [s["text"] for s in st], [s["prompt"] for s in st]).items() if k != "results"}
    print(json.dumps({k: v for k, v in result.items() if k != "stories"} |
                     ({"story_metrics": result["stories"]["story_metrics"]} if args.stories else {}), indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def _eval_text(args: argparse.Namespace, model, tok, ckpt: Path, device, seq: int) -> None:
    """`eval --text FILE` and/or `--hellaswag [N]`, with no prepared folder."""
    from budgetlm.eval.hellaswag import score_file
    from budgetlm.eval.text import evaluate_text
    result = evaluate_text(model, tok, args.text, seq, args.batch_size, device, args.max_tokens or 0) \
        if args.text else {}
    result.update({"checkpoint": str(ckpt)} | ({"text": args.text} if args.text else {}))
    if args.hellaswag is not None:
        result["hellaswag"] = score_file(model, tok, args.hellaswag_file, args.hellaswag, device)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def cmd_sample(args: argparse.Namespace) -> None:
    from budgetlm.generate import sample_text
    from budgetlm.report import load_model

    model, tok, _ = load_model(args.checkpoint, args.device or "auto")
    temp = None if args.greedy else args.temperature
    hook = None
    if args.fuse:
        from budgetlm.fusion import Fuser
        if not args.data and any(h in args.fuse for h in ("knn", "ngram:")) and "@" not in args.fuse:
            raise BudgetLMError("--fuse with ngram or knn heads needs --data (the prepared folder they are built from)")
        fuser = Fuser.build(model, args.data, args.fuse, tok, log=lambda m: print(m, file=sys.stderr))
        hook = fuser.logits_hook
    for i in range(args.n):
        s = sample_text(model, tok, args.prompt, args.max_tokens, temp, args.top_k, args.top_p, args.seed + i,
                        logits_hook=hook)
        print(s.text)
        print(f"[{len(s.tokens)} tokens, {s.tokens_per_s:,.0f} tokens/s]", file=sys.stderr)
        if i + 1 < args.n:
            print("-" * 40)


def cmd_speedrun(args: argparse.Namespace) -> None:
    from budgetlm.speedrun import speedrun
    overrides = {**_picked(args, SPEEDRUN_MODEL_FLAGS + SPEEDRUN_TRAIN_FLAGS), "progress": not args.no_progress}
    _check_speedrun_overrides(overrides)
    speedrun(args.budget, args.data, args.tokenizer, args.out, args.device or "auto", seed=args.seed,
             overrides=overrides, auto=args.auto_size, probe_seconds=args.probe_seconds, sizing=args.sizing)


def _check_speedrun_overrides(overrides: dict) -> None:
    """The speedrun's flags checked before it sizes, prepares or calibrates anything: each value by its
    field's rules, and the head shape when both sides of it are given (the rest follows the sizing)."""
    from budgetlm.config import ModelConfig, TrainConfig, check_value, leaf_field, leaf_paths
    for cls in (ModelConfig, TrainConfig):
        for name in overrides:
            if name in leaf_paths(cls):
                check_value(leaf_field(cls, name), overrides[name])
    if "n_head" in overrides and "n_embd" in overrides:
        ModelConfig(**{k: overrides[k] for k in ("n_head", "n_embd", "pos") if k in overrides})


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="budgetlm", description="Train the strongest language model a budget allows.")
    sub = p.add_subparsers(dest="verb", required=True)

    sp = sub.add_parser("prepare", help="text -> tokenizer -> token shards (llm.c format)")
    sp.add_argument("--data", required=True, help="tinystories, synth, fineweb-edu, FILE.txt|.jsonl|.parquet, DIR, hf:OWNER/NAME")
    sp.add_argument("--tokenizer", help="bpe:N, gpt2 or char (default bpe:4096; fineweb-edu is always gpt2)")
    sp.add_argument("--sample", help="with --data fineweb-edu: 10BT (default), 100BT or 350BT")
    sp.add_argument("--out", required=True)
    sp.add_argument("--max-tokens", help="train tokens to keep, e.g. 20M (default: all)")
    sp.add_argument("--val-frac", type=checks.number(float, min=0.0, max=0.99), default=0.1,
                    help="held-out share for sources without a val split")
    sp.add_argument("--shard-tokens", default="100M")
    sp.add_argument("--seed", type=checks.number(int, min=0), default=0)
    sp.set_defaults(fn=cmd_prepare)

    sp = sub.add_parser("train", help="train under a budget of time, tokens or steps", add_help=False)
    sp.add_argument("--data", help="prepared data folder")
    sp.add_argument("--budget", help="5m, 2h, 300s, 50M-tokens, 1000-steps")
    sp.add_argument("--config", help="TOML file with [model], [train], [data] tables (e.g. from 'budgetlm plan')")
    sp.add_argument("--out", default="runs/latest", help="run folder: logs, checkpoints, summary")
    sp.add_argument("--resume", nargs="?", const="", help="continue from the latest checkpoint in --out (or PATH)")
    sp.add_argument("--stop-after-steps", type=int, help=argparse.SUPPRESS)
    _add_model_flags(sp)
    _add_train_flags(sp)
    _add_llmc_flags(sp)
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser("eval", help="validation loss, perplexity, bits per byte (and story metrics)")
    sp.add_argument("checkpoint", help="run or checkpoint folder")
    sp.add_argument("--data", help="prepared data folder (same tokenizer)")
    sp.add_argument("--text", help="score a text file instead (.txt/.jsonl/.parquet, or a folder), tokenized with "
                                   "the checkpoint's tokenizer exactly as 'prepare' would")
    sp.add_argument("--hellaswag", type=int, nargs="?", const=0, metavar="N",
                    help="also HellaSwag acc / acc_norm on the first N items (default all 10,042)")
    sp.add_argument("--hellaswag-file", help="local HellaSwag val file (.jsonl or .jsonl.xz; or BUDGETLM_HELLASWAG_FILE)")
    sp.add_argument("--split", default="val")
    sp.add_argument("--seq-len", type=checks.number(int, min=1))
    sp.add_argument("--batch-size", type=checks.number(int, min=1), default=16)
    sp.add_argument("--max-tokens", type=checks.number(int, min=1))
    sp.add_argument("--stories", type=checks.number(int, min=0), default=0,
                    help="also generate N stories and score their quality")
    sp.add_argument("--fuse", help="also score with shallow fusion, e.g. ngram:0.2,cache:0.1,knn:0.1")
    sp.add_argument("--judge", action="store_true", help="score the stories with an LLM judge (BUDGETLM_JUDGE_*)")
    sp.add_argument("--judge-cache", help="JSONL cache of judge replies")
    sp.add_argument("--seed", type=checks.number(int, min=0), default=0)
    sp.add_argument("--device")
    sp.add_argument("--out", help="write the results as JSON here")
    sp.set_defaults(fn=cmd_eval)

    sp = sub.add_parser("sample", help="generate text from a checkpoint")
    sp.add_argument("checkpoint", nargs="?", default="runs/speedrun")
    sp.add_argument("--prompt", default="Once upon a time")
    sp.add_argument("--max-tokens", type=checks.number(int, min=1), default=256)
    sp.add_argument("--temperature", type=checks.number(float, positive=True), default=0.8)
    sp.add_argument("--top-k", type=checks.number(int, min=0), default=0, help="keep the k likeliest tokens (0 = all)")
    sp.add_argument("--top-p", type=checks.number(float, positive=True, max=1.0), default=0.95)
    sp.add_argument("--greedy", action="store_true")
    sp.add_argument("-n", type=checks.number(int, min=1), default=1, help="number of samples")
    sp.add_argument("--fuse", help="shallow fusion, e.g. ngram:0.2,cache:0.1,knn:0.1")
    sp.add_argument("--data", help="prepared data folder (for --fuse ngram/knn heads)")
    sp.add_argument("--seed", type=checks.number(int, min=0), default=0)
    sp.add_argument("--device")
    sp.set_defaults(fn=cmd_sample)

    sp = sub.add_parser("speedrun", help="the main job: prepare, train, evaluate, sample under one budget")
    sp.add_argument("--budget", default="5m")
    sp.add_argument("--data", default="tinystories", help="tinystories (falls back to synth offline), synth, FILE")
    sp.add_argument("--tokenizer", help="default: chosen for the device")
    sp.add_argument("--out", default="runs/speedrun")
    sp.add_argument("--device")
    sp.add_argument("--seed", type=checks.number(int, min=0), default=1337)
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument("--sizing", choices=["measured", "static"], default="measured",
                    help="measured: size model, batch and tokenizer from a short calibration of this device (default); "
                         "static: the fixed per-device defaults")
    sp.add_argument("--auto-size", action="store_true", help="after data prep, time several sizes and keep the one "
                    "the budget favours (replaces the sizing's shape)")
    sp.add_argument("--probe-seconds", type=checks.number(float, positive=True), default=4.0, help="seconds of measurement per --auto-size size")
    from budgetlm.config import ModelConfig, TrainConfig
    for name in SPEEDRUN_MODEL_FLAGS:
        _field_flag(sp, ModelConfig, name)
    for name in SPEEDRUN_TRAIN_FLAGS:
        _field_flag(sp, TrainConfig, name)
    sp.set_defaults(fn=cmd_speedrun)

    from budgetlm import bench, export, ngram_cli, plan
    plan.register(sub)
    export.register(sub)
    bench.register(sub)
    ngram_cli.register(sub)
    from budgetlm import sweep
    sweep.register(sub)
    from budgetlm import plot as plot_cli
    plot_cli.register(sub)
    return p


# Paths each verb writes: (attribute, "dir" | "file"), checked before any work starts.
OUTPUTS = {"prepare": (("out", "dir"),), "train": (("out", "dir"),), "speedrun": (("out", "dir"),),
           "eval": (("out", "file"), ("judge_cache", "file")), "export": (("out", "dir"),),
           "ngram": (("out", "file"), ("json", "file")), "sweep": (("out", "dir"),),
           "plot": (("out", "file"), ("summary", "file")), "plan": (("out", "file"),)}
DATA_DIR_VERBS = ("eval", "sample", "ngram")  # --data is a prepared folder (train checks after its TOML)


def check_paths(args: argparse.Namespace) -> None:
    """Output paths writable and of the right kind, and --data a folder where one is expected."""
    for attr, kind in OUTPUTS.get(args.verb, ()):
        path = getattr(args, attr, None)
        if path is None:
            continue
        label = "--" + attr.replace("_", "-")
        if kind == "dir":
            checks.out_dir(path, label)
        else:
            checks.out_file(path, label)
    if args.verb == "bench" and not getattr(args, "no_record", True):
        checks.out_file(args.results, "--results")
    if args.verb in DATA_DIR_VERBS and getattr(args, "data", None):
        checks.data_dir(args.data)


class UsageError(SystemExit):
    """A flag argparse could not parse; main prints it as the one error line (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line `budgetlm VERB: error: ...` (no usage block), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def _verb_of(argv: list[str] | None, parser: argparse.ArgumentParser) -> str | None:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next((a for a in (sys.argv[1:] if argv is None else argv) if a in sub.choices), None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        verb = _verb_of(argv, parser)
        print(f"budgetlm{' ' + verb if verb else ''}: error: {e.message}", file=sys.stderr)
        return 2
    try:
        check_paths(args)
        args.fn(args)
    except BudgetLMError as e:
        print(f"budgetlm {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:  # stopped by a signal after a checkpoint; the trainer logged how to resume
        return e.exit_code
    except KeyboardInterrupt:
        print(f"budgetlm {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

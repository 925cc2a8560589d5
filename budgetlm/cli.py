"""`budgetlm VERB ...`: each verb parses its flags into config objects and calls one library
function. Problems with input end as one line naming the file or flag, and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from budgetlm.errors import BudgetLMError
from budgetlm.train.interrupt import RunStopped

MODEL_FLAGS = ("arch", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp", "norm", "pos", "mlp_hidden")
TRAIN_FLAGS = ("batch_size", "total_batch_tokens", "seq_len", "lr", "min_lr_frac", "warmup_frac", "warmup_steps",
               "schedule", "weight_decay", "grad_clip", "seed", "device", "dtype", "compile", "threads",
               "eval_every", "eval_points", "eval_tokens", "checkpoint_every", "log_every", "log_to", "fused_loss", "ce_kernel", "recompute", "attn", "fp8", "fp8_modules", "fp8_head", "half_residual", "cuda_graphs", "teacher", "distill_steps",
               "distill_alpha", "distill_temp", "max_steps", "sample_every", "sample_tokens", "hellaswag_every",
               "hellaswag_items", "hellaswag_file", "train_shards", "val_shards", "parallel", "zero_stage")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="named size: nano, micro, tiny, small, mini, gpt2-124m, ..., tinyllama-1.1b")
    g.add_argument("--arch", choices=["gpt", "lstm", "d3pm"],
                   help="gpt (transformer), lstm (recurrent baseline), d3pm (discrete diffusion; BPB is an upper bound)")
    g.add_argument("--n-layer", type=int)
    g.add_argument("--n-head", type=int)
    g.add_argument("--n-kv-head", type=int, help="fewer than --n-head: grouped-query attention")
    g.add_argument("--n-embd", type=int)
    g.add_argument("--mlp", choices=["gelu", "swiglu"])
    g.add_argument("--mlp-hidden", type=int)
    g.add_argument("--norm", choices=["layernorm", "rmsnorm"])
    g.add_argument("--pos", choices=["learned", "rope"])


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, help="sequences per micro-batch")
    g.add_argument("--total-batch-tokens", "--total-batch", type=int, help="tokens per step (gradient accumulation)")
    g.add_argument("--seq-len", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--min-lr-frac", type=float)
    g.add_argument("--warmup-frac", type=float)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--schedule", choices=["cosine", "linear", "wsd", "constant"])
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--grad-clip", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16"])
    g.add_argument("--compile", choices=["auto", "on", "off"])
    g.add_argument("--threads", type=int)
    g.add_argument("--eval-every", type=int,
                   help="steps between evals (0 = time budgets: --eval-points evals over the budget; else at the end)")
    g.add_argument("--eval-points", type=int, help="with --eval-every 0: evals spread over a time budget (10; 0 = none)")
    g.add_argument("--eval-tokens", type=int)
    g.add_argument("--checkpoint-every", type=int)
    g.add_argument("--log-every", type=int)
    g.add_argument("--log-to", help="metric sinks besides metrics.jsonl: tensorboard, wandb (offline), comma-separated "
                                    "(default auto: jsonl + tensorboard when installed)")
    g.add_argument("--fused-loss", choices=["auto", "on", "off"], help="chunked head+cross-entropy, saves memory (auto: off)")
    g.add_argument("--ce-kernel", choices=["auto", "on", "off"],
                   help="loss gradient written over the logits by one Triton kernel (auto: CUDA with Triton)")
    g.add_argument("--recompute", type=int, choices=[0, 1, 2], help="activation recomputation level")
    g.add_argument("--attn", choices=["auto", "flash", "cudnn", "efficient", "math"],
                   help="preferred attention kernel (auto: cuDNN on Hopper, else PyTorch's order)")
    g.add_argument("--fp8", choices=["off", "tensorwise", "rowwise"],
                   help="FP8 matmuls through torchao (Ada/Hopper GPUs; opt-in, trades precision for speed)")
    g.add_argument("--fp8-modules", help="with --fp8: 'all' (default) or pieces of Linear names, e.g. 'mlp'")
    g.add_argument("--fp8-head", choices=["on", "off"],
                   help="the LM head's three matmuls in FP8 inside the CE kernel (Ada/Hopper; opt-in)")
    g.add_argument("--half-residual", choices=["auto", "on", "off"],
                   help="residual stream in bf16, norms in fp32 (auto: CUDA half precision)")
    g.add_argument("--cuda-graphs", choices=["auto", "on", "off"],
                   help="compile with CUDA graphs, one launch per step (auto: CUDA, one GPU, < 20M params)")
    g.add_argument("--no-progress", action="store_true", help="no live progress bar")
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", help="ngram:N - distill from a Kneser-Ney n-gram for the first steps")
    g.add_argument("--distill-steps", type=int)
    g.add_argument("--distill-alpha", type=float, help="weight of the KL term (0..1)")
    g.add_argument("--distill-temp", type=float)


def _add_llmc_flags(p: argparse.ArgumentParser) -> None:
    """Scale-out flags, and llm.c's train_gpt2cu short flags as aliases (docs/llmc_flags.md).
    `-h` is llm.c's HellaSwag switch here (-h 1), so this verb's help is --help only."""
    p.add_argument("--help", action="help", help="show this help and exit (-h is llm.c's HellaSwag switch)")
    g = p.add_argument_group("scale-out (torchrun) and llm.c-style flags, see docs/llmc_flags.md")
    g.add_argument("--parallel", choices=["auto", "ddp", "fsdp"], help="under torchrun: ddp (default) or fsdp")
    g.add_argument("-z", "--zero-stage", type=int, choices=[0, 1], help="1: ZeRO-1, AdamW state sharded (ddp)")
    g.add_argument("--zero1", dest="zero_stage", action="store_const", const=1, help="= --zero-stage 1")
    g.add_argument("-i", "--train-shards", help="train shards glob, e.g. 'DIR/fineweb_train_*.bin', or a data folder")
    g.add_argument("-j", "--val-shards", help="val shards glob, e.g. 'DIR/fineweb_val_*.bin'")
    g.add_argument("-x", "--max-steps", type=int, help="stop after N steps (no --budget: the budget is N-steps)")
    g.add_argument("-s", "--sample-every", type=int, help="steps between samples printed by rank 0")
    g.add_argument("-g", "--sample-tokens", type=int, help="tokens per sample (64)")
    g.add_argument("-h", "--hellaswag", type=int, choices=[0, 1], help="1: HellaSwag at every eval (-v)")
    g.add_argument("--hellaswag-every", type=int, help="steps between HellaSwag evals (and at the end)")
    g.add_argument("--hellaswag-items", type=int, help="items per HellaSwag eval (0 = all 10,042)")
    g.add_argument("--hellaswag-file", help="local HellaSwag val file (.jsonl or .jsonl.xz) instead of the download "
                                            "(or set BUDGETLM_HELLASWAG_FILE)")
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
    except (ValueError, IndexError):
        raise BudgetLMError(f"{flag}: expected a count like 1000, 50k or 20M, got {text!r}") from None


def cmd_train(args: argparse.Namespace) -> None:
    from budgetlm.config import TrainConfig, from_dict, load_toml, model_config
    from budgetlm.train.trainer import train

    model_values, train_values = {}, {}
    _resolve_llmc(args)
    if args.config:
        file = load_toml(args.config)
        model_values = dict(file.get("model", {}))
        train_values = dict(file.get("train", {}))
        args.data = args.data or file.get("data", {}).get("dir")
    if not args.data:
        raise BudgetLMError("--data: give the prepared data folder (from 'budgetlm prepare')")
    preset = args.model or model_values.pop("preset", None)
    model_values.update(_picked(args, MODEL_FLAGS))
    mcfg = model_config(preset, **model_values)
    train_values.update(_picked(args, TRAIN_FLAGS))
    train_values["budget"] = (args.budget or train_values.get("budget")
                              or (f"{args.max_steps}-steps" if args.max_steps else "5m"))
    train_values["out_dir"] = args.out
    train_values["progress"] = not args.no_progress
    tcfg = from_dict(TrainConfig, train_values, args.config or "flags")
    resume = None
    if args.resume is not None:
        resume = args.resume or args.out
    info = train(mcfg, tcfg, args.data, resume=resume, stop_after_steps=args.stop_after_steps)
    from budgetlm.report import summary_table
    from budgetlm.train.distributed import env_world
    if env_world()[0] == 0:  # under torchrun only rank 0 prints
        print(summary_table(info))


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
    overrides = {**_picked(args, ("n_layer", "n_head", "n_embd", "mlp", "norm", "pos", "seq_len", "batch_size", "lr",
                                  "compile", "threads", "log_to")), "progress": not args.no_progress}
    speedrun(args.budget, args.data, args.tokenizer, args.out, args.device or "auto", seed=args.seed,
             overrides=overrides, auto=args.auto_size, probe_seconds=args.probe_seconds, sizing=args.sizing)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="budgetlm", description="Train the strongest language model a budget allows.")
    sub = p.add_subparsers(dest="verb", required=True)

    sp = sub.add_parser("prepare", help="text -> tokenizer -> token shards (llm.c format)")
    sp.add_argument("--data", required=True, help="tinystories, synth, fineweb-edu, FILE.txt|.jsonl|.parquet, DIR, hf:OWNER/NAME")
    sp.add_argument("--tokenizer", help="bpe:N, gpt2 or char (default bpe:4096; fineweb-edu is always gpt2)")
    sp.add_argument("--sample", help="with --data fineweb-edu: 10BT (default), 100BT or 350BT")
    sp.add_argument("--out", required=True)
    sp.add_argument("--max-tokens", help="train tokens to keep, e.g. 20M (default: all)")
    sp.add_argument("--val-frac", type=float, default=0.1, help="held-out share for sources without a val split")
    sp.add_argument("--shard-tokens", default="100M")
    sp.add_argument("--seed", type=int, default=0)
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
    sp.add_argument("--seq-len", type=int)
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--max-tokens", type=int)
    sp.add_argument("--stories", type=int, default=0, help="also generate N stories and score their quality")
    sp.add_argument("--fuse", help="also score with shallow fusion, e.g. ngram:0.2,cache:0.1,knn:0.1")
    sp.add_argument("--judge", action="store_true", help="score the stories with an LLM judge (BUDGETLM_JUDGE_*)")
    sp.add_argument("--judge-cache", help="JSONL cache of judge replies")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device")
    sp.add_argument("--out", help="write the results as JSON here")
    sp.set_defaults(fn=cmd_eval)

    sp = sub.add_parser("sample", help="generate text from a checkpoint")
    sp.add_argument("checkpoint", nargs="?", default="runs/speedrun")
    sp.add_argument("--prompt", default="Once upon a time")
    sp.add_argument("--max-tokens", type=int, default=256)
    sp.add_argument("--temperature", type=float, default=0.8)
    sp.add_argument("--top-k", type=int, default=0)
    sp.add_argument("--top-p", type=float, default=0.95)
    sp.add_argument("--greedy", action="store_true")
    sp.add_argument("-n", type=int, default=1, help="number of samples")
    sp.add_argument("--fuse", help="shallow fusion, e.g. ngram:0.2,cache:0.1,knn:0.1")
    sp.add_argument("--data", help="prepared data folder (for --fuse ngram/knn heads)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device")
    sp.set_defaults(fn=cmd_sample)

    sp = sub.add_parser("speedrun", help="the main job: prepare, train, evaluate, sample under one budget")
    sp.add_argument("--budget", default="5m")
    sp.add_argument("--data", default="tinystories", help="tinystories (falls back to synth offline), synth, FILE")
    sp.add_argument("--tokenizer", help="default: chosen for the device")
    sp.add_argument("--out", default="runs/speedrun")
    sp.add_argument("--device")
    sp.add_argument("--seed", type=int, default=1337)
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument("--sizing", choices=["measured", "static"], default="measured",
                    help="measured: size model, batch and tokenizer from a short calibration of this device (default); "
                         "static: the fixed per-device defaults")
    sp.add_argument("--auto-size", action="store_true", help="after data prep, time several sizes and keep the one "
                    "the budget favours (replaces the sizing's shape)")
    sp.add_argument("--probe-seconds", type=float, default=4.0, help="seconds of measurement per --auto-size size")
    for flag, typ in (("--n-layer", int), ("--n-head", int), ("--n-embd", int), ("--seq-len", int),
                      ("--batch-size", int), ("--lr", float), ("--threads", int)):
        sp.add_argument(flag, type=typ)
    sp.add_argument("--mlp", choices=["gelu", "swiglu"])
    sp.add_argument("--norm", choices=["layernorm", "rmsnorm"])
    sp.add_argument("--pos", choices=["learned", "rope"])
    sp.add_argument("--compile", choices=["auto", "on", "off"])
    sp.add_argument("--log-to", help="metric sinks besides metrics.jsonl: tensorboard, wandb (default auto)")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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

"""`budgetlm ngram build|sample`: Kneser-Ney n-gram models over a prepared data folder,
scored with the same bits-per-byte as the transformers (same tokens, same byte counts)."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from budgetlm.data.prepare import data_tokenizer
from budgetlm.checks import number
from budgetlm.data.shards import load_split
from budgetlm.errors import BudgetLMError


def ngram_bpb(lm, val_tokens: np.ndarray, token_bytes: np.ndarray) -> dict[str, float]:
    """Loss (nats/token over all targets), perplexity and bits per byte of val_tokens[1:]
    given their prefixes, counting bytes exactly as eval.perplexity does."""
    toks = np.asarray(val_tokens, dtype=np.int64)
    logp = lm.log_prob(toks)[1:]  # the first token has no prefix in the split
    targets = toks[1:]
    nb = token_bytes[targets]
    loss = float(-logp.mean())
    return {"val_loss": loss, "val_ppl": math.exp(loss),
            "val_bpb": float(-(logp * (nb > 0)).sum() / math.log(2) / max(nb.sum(), 1)), "val_tokens": int(targets.size)}


def build_and_score(data_dir: str | Path, order: int, max_tokens: int = 0) -> tuple[object, dict]:
    from budgetlm.models.ngram import KneserNeyLM
    tok = data_tokenizer(data_dir)
    train = load_split(data_dir, "train")
    if max_tokens:
        train = train[:max_tokens]
    t = time.perf_counter()
    lm = KneserNeyLM.build(np.asarray(train), tok.vocab_size, order)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    res = ngram_bpb(lm, load_split(data_dir, "val"), tok.token_bytes())
    res.update({"order": order, "build_seconds": build_s, "eval_seconds": time.perf_counter() - t,
                "train_tokens": int(train.size)})
    return lm, res


def cmd_ngram(args: argparse.Namespace) -> None:
    if args.action == "build":
        orders = _orders(args.order)
        rows = []
        for order in orders:
            lm, res = build_and_score(args.data, order, args.max_tokens or 0)
            rows.append(res)
            print(f"order {order}: built in {res['build_seconds']:.2f}s from {res['train_tokens']:,} tokens; "
                  f"val loss {res['val_loss']:.4f}, ppl {res['val_ppl']:.2f}, bits/byte {res['val_bpb']:.4f}")
            if args.out:
                out = Path(args.out)
                path = out if len(orders) == 1 else out.with_name(f"{out.stem}.{order}{out.suffix or '.npz'}")
                save_for(lm, path, tok_fingerprint(args.data))
                print(f"saved {path}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    else:
        from budgetlm.models.ngram import KneserNeyLM
        if not args.model:
            raise BudgetLMError("ngram sample: --model FILE.npz is required")
        lm = KneserNeyLM.load(args.model)
        tok = data_tokenizer(args.data)
        check_tokenizer(lm, args.model, tok, f"--data {args.data}")
        prompt = [tok.eot_id] + tok.encode(args.prompt)
        ids = lm.sample(args.max_tokens_out, prompt, temperature=args.temperature, seed=args.seed)
        text = tok.decode(ids).split("<|endoftext|>")[0]
        print(args.prompt + text)


def tok_fingerprint(data_dir: str | Path) -> str:
    return data_tokenizer(data_dir).fingerprint()


def _sidecar(path: str | Path) -> Path:
    """Where the tokenizer of a saved n-gram is noted (np.savez adds .npz when the name lacks it)."""
    p = Path(path)
    return (p if p.suffix == ".npz" else Path(f"{p}.npz")).with_suffix(".tokenizer.json")


def save_for(lm, path: str | Path, fingerprint: str) -> None:
    """Save an n-gram with a note of the tokenizer its ids belong to, so loading it over other data fails."""
    lm.save(path)
    _sidecar(path).write_text(json.dumps({"tokenizer_fingerprint": fingerprint}) + "\n")


def check_tokenizer(lm, path: str | Path, tok, where: str) -> None:
    """An n-gram's token ids are only meaningful with the tokenizer it was built with."""
    if lm.vocab_size != getattr(tok, "vocab_size", lm.vocab_size):
        raise BudgetLMError(f"{where}: tokenizer ({tok.spec}, vocab {tok.vocab_size}) does not match the n-gram "
                            f"{path} (vocab {lm.vocab_size}); built from data of another tokenizer")
    note = _sidecar(path)
    if note.is_file():
        try:
            want = json.loads(note.read_text()).get("tokenizer_fingerprint")
        except (ValueError, AttributeError):
            want = None
        if want and hasattr(tok, "fingerprint") and want != tok.fingerprint():
            raise BudgetLMError(f"{where}: tokenizer ({tok.spec}) is not the one the n-gram {path} was built with")


def _orders(text: str) -> list[int]:
    from budgetlm.models.ngram import MAX_ORDER
    try:
        if ".." in text:
            lo, hi = (int(x) for x in text.split(".."))
        else:
            lo = hi = int(text)
    except ValueError:
        raise BudgetLMError(f"--order {text!r}: expected N or LO..HI, e.g. 4 or 2..5") from None
    if not 1 <= lo <= hi <= MAX_ORDER:
        raise BudgetLMError(f"--order {text!r}: orders must run upwards within 1..{MAX_ORDER}, e.g. 4 or 2..5")
    return list(range(lo, hi + 1))


def register(sub) -> None:
    p = sub.add_parser("ngram", help="Kneser-Ney n-gram models: build (with val BPB) or sample")
    p.add_argument("action", choices=["build", "sample"])
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--order", default="4", help="N or a range LO..HI (build)")
    p.add_argument("--max-tokens", type=number(int, min=1), help="build from at most this many train tokens")
    p.add_argument("--out", help="save the model(s) as .npz")
    p.add_argument("--json", help="write build/eval numbers as JSON")
    p.add_argument("--model", help="a saved .npz (sample)")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--max-tokens-out", dest="max_tokens_out", type=number(int, min=1), default=200)
    p.add_argument("--temperature", type=number(float, positive=True), default=1.0)
    p.add_argument("--seed", type=number(int, min=0), default=0)
    p.set_defaults(fn=cmd_ngram)

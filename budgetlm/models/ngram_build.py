"""Kneser-Ney n-gram models over a prepared data folder: build one from the train split and score
it with the same bits-per-byte as the transformers (same tokens, same byte counts); save it with a
note of its tokenizer, and refuse it later with another tokenizer."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from budgetlm.data.prepare import data_tokenizer
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

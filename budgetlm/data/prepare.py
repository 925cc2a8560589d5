"""Text source -> tokenizer -> llm.c token shards, reading only as much text as asked for.

Each document is preceded by the end-of-text token (as in GPT-2/llm.c data), so the model
learns where stories start and sampling can begin from that token.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from budgetlm.data.shards import ShardWriter, write_shard
from budgetlm.data.sources import open_source
from budgetlm.data.tokenizers import TOKENIZER_FILE, Tokenizer, build_tokenizer, load_tokenizer
from budgetlm.errors import BudgetLMError

META_FILE = "meta.json"
BATCH_DOCS = 2048
TOKENIZER_TRAIN_CHARS = 20_000_000  # a BPE learns its merges from at most this much text


def _encode_docs(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    """Each document as end-of-text + its tokens, the layout every split and stream shard uses."""
    from budgetlm.data.stream import encode_pieces
    return encode_pieces(tok, [(True, d) for d in docs])


def _take_chars(it: Iterator[str], max_chars: int) -> list[str]:
    docs, n = [], 0
    for d in it:
        docs.append(d)
        n += len(d)
        if n >= max_chars:
            break
    return docs


def prepare(src: str, tokenizer: str | None, out_dir: str | Path, max_tokens: int | None = None,
            val_frac: float = 0.1, val_max_tokens: int = 1_000_000, shard_tokens: int = 100_000_000,
            seed: int = 0, log=print, sample: str | None = None) -> dict:
    """Tokenize `src` into shards in `out_dir`; returns the metadata also saved as meta.json.

    max_tokens caps the train tokens (None = the whole source). Sources with no validation
    split hold out the last `val_frac` of the documents read. tokenizer None = bpe:4096.
    `fineweb-edu` (with `sample`, default 10BT) goes to data/fineweb.py: GPT-2, llm.c shard layout.
    """
    if shard_tokens < 1:  # a zero-token shard never fills: the writer would loop forever
        raise BudgetLMError(f"--shard-tokens must be positive, got {shard_tokens}")
    if src == "fineweb-edu":
        if tokenizer not in (None, "gpt2"):
            raise BudgetLMError(f"--data fineweb-edu is tokenized with GPT-2 (llm.c's shards); drop --tokenizer {tokenizer}")
        from budgetlm.data.fineweb import prepare_fineweb
        return prepare_fineweb(out_dir, sample or "10BT", shard_tokens=shard_tokens, max_tokens=max_tokens, log=log)
    if sample is not None:
        raise BudgetLMError(f"--sample is for --data fineweb-edu, not {src}")
    tokenizer = tokenizer or "bpe:4096"
    t0 = time.perf_counter()
    if not 0 <= val_frac < 1:
        raise BudgetLMError(f"--val-frac must be in [0, 1), got {val_frac}")
    if max_tokens is not None and max_tokens < 1:
        raise BudgetLMError(f"--max-tokens must be positive, got {max_tokens}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A capped run streams remote text instead of downloading all of it.
    source = open_source(src, seed=seed, stream=max_tokens is not None)
    train_docs = source.train()
    held_out = source.val is None

    # Text to learn the tokenizer from; kept and encoded first so nothing is read twice.
    want_chars = TOKENIZER_TRAIN_CHARS if max_tokens is None else min(TOKENIZER_TRAIN_CHARS, max_tokens * 6)
    first = _take_chars(train_docs, want_chars)
    if not first:
        raise BudgetLMError(f"--data {src}: no text found")
    tok = build_tokenizer(tokenizer, iter(first))
    t_tok = time.perf_counter() - t0

    # Encode batch by batch until the token target is met; held-out sources keep every token
    # in memory first, because their validation split is the tail of what was read.
    target = None if max_tokens is None else int(max_tokens / (1 - val_frac)) if held_out else max_tokens
    chunks: list[np.ndarray] = []
    n_docs = n_tok = 0
    stream = itertools.chain(first, train_docs)
    writer = None if held_out else ShardWriter(out, tok.vocab_size, shard_tokens)
    batch_docs = 64
    while target is None or n_tok < target:
        batch = list(itertools.islice(stream, batch_docs))
        if not batch:
            break
        enc = _encode_docs(tok, batch)
        n_docs += len(batch)
        n_tok += enc.size
        if writer:
            writer.add(enc)
        else:
            chunks.append(enc)
        # Size the next batch to what is still missing, so a small target reads little text.
        missing = (target - n_tok) if target is not None else BATCH_DOCS * n_tok
        batch_docs = int(min(BATCH_DOCS, max(16, missing / max(n_tok / n_docs, 1) * 1.1 + 1)))

    if held_out:
        allt = np.concatenate(chunks)
        n_val_docs = max(1, int(round(n_docs * val_frac))) if val_frac > 0 else 0
        if n_val_docs >= n_docs:
            raise BudgetLMError(f"--data {src}: only {n_docs} document(s); too few to hold out a validation split")
        # Split at a document start: find the (n_docs - n_val_docs)-th end-of-text token.
        starts = np.flatnonzero(allt == tok.eot_id)
        cut = int(starts[n_docs - n_val_docs]) if n_val_docs else allt.size
        train_tokens, val_tokens = allt[:cut], allt[cut:]
        writer = ShardWriter(out, tok.vocab_size, shard_tokens)
        writer.add(train_tokens)
        val_docs = n_val_docs
    else:
        # A capped run needs a validation split in proportion, not the source's whole one.
        val_cap = val_max_tokens if max_tokens is None else min(val_max_tokens, max(20_000, max_tokens // 10))
        val_tokens = _encode_docs(tok, _take_chars(source.val(), val_cap * 6))[:val_cap]
        val_docs = int((val_tokens == tok.eot_id).sum())
    writer.close()
    write_shard(out / "val_000000.bin", val_tokens, tok.vocab_size)
    tok.save(out / TOKENIZER_FILE)

    meta = {
        "source": src, "tokenizer": tok.spec, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
        "train_tokens": int(writer.total), "val_tokens": int(val_tokens.size), "train_shards": len(writer.written),
        "docs_read": n_docs, "val_docs": val_docs, "lowercase": all(d == d.lower() for d in first[:1000]),
        "val_split": f"last {val_frac:.0%} of documents read" if held_out else "the source's validation split",
        "max_tokens": max_tokens, "seed": seed, "tokenizer_seconds": round(t_tok, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    log(f"prepared {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens from {src} "
        f"({tok.spec}, vocab {tok.vocab_size}) in {meta['seconds']:.1f}s -> {out}")
    return meta


def load_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BudgetLMError(f"{path}: not found; run 'budgetlm prepare --out {data_dir}' first") from None
    except ValueError:
        raise BudgetLMError(f"{path}: not valid JSON") from None


def data_tokenizer(data_dir: str | Path) -> Tokenizer:
    return load_tokenizer(Path(data_dir) / TOKENIZER_FILE)

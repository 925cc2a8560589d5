"""`budgetlm eval RUN --text FILE`: validation loss, perplexity and bits per byte on any text,
tokenized with the checkpoint's own tokenizer.

The text is read and laid out exactly as `prepare` lays out shards (the same document reader,
each document preceded by end-of-text), so a file scores the same as a prepared folder whose
validation split holds the same documents.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from budgetlm.data.prepare import _encode_docs
from budgetlm.data.sources import iter_path
from budgetlm.data.tokenizers import Tokenizer
from budgetlm.errors import BudgetLMError
from budgetlm.eval.perplexity import evaluate

BATCH_DOCS = 256  # documents encoded per batch (the tokenizers library threads each batch)


def text_tokens(path: str | Path, tokenizer: Tokenizer, max_tokens: int = 0) -> np.ndarray:
    """The documents of FILE (or a folder: .txt, .jsonl, .parquet, and compressed forms where
    data.sources reads them) as one token stream; with max_tokens, only the documents needed for
    max_tokens + 1 tokens (inputs and their targets) are read and encoded."""
    path = Path(path)
    if not path.exists():
        raise BudgetLMError(f"--text {path}: file not found")
    docs = iter_path(path)
    chunks, n, size = [], 0, 1
    while not max_tokens or n <= max_tokens:
        batch = list(itertools.islice(docs, size))
        if not batch:
            break
        chunks.append(_encode_docs(tokenizer, batch))
        n += chunks[-1].size
        size = min(BATCH_DOCS, 2 * size)  # growing batches: a capped eval of whole books reads few of them
    if not chunks:
        raise BudgetLMError(f"--text {path}: no text found")
    return np.concatenate(chunks)


def evaluate_text(model: torch.nn.Module, tokenizer: Tokenizer, path: str | Path, seq_len: int, batch_size: int,
                  device: torch.device, max_tokens: int = 0, autocast=None) -> dict[str, float]:
    """evaluate() on FILE's tokens: val_loss (nats/token), val_ppl, val_bpb, val_tokens, val_bytes."""
    tokens = text_tokens(path, tokenizer, max_tokens)
    if tokens.size <= seq_len:
        raise BudgetLMError(f"--text {path}: {tokens.size} tokens; need at least --seq-len + 1 = {seq_len + 1}")
    return evaluate(model, tokens, tokenizer.token_bytes(), seq_len, batch_size, device, max_tokens=max_tokens,
                    autocast=autocast)

"""Validation loss, perplexity and bits per byte.

Bits per byte = (sum of next-token losses in nats) / ln 2 / (UTF-8 bytes of those target
tokens). Byte counts come from the tokenizer, so models with different vocabularies are
compared on the same text. Targets that are special tokens (end-of-text) are left out of
both sums, as nanochat does: they stand for no bytes of text.

Models without exact likelihoods (the d3pm diffusion LM) expose `nll_bound(x, y, seed=...)`,
per-position terms of a variational bound; their loss and BPB are upper bounds, flagged
by "bound": True in the result.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from budgetlm.data.loader import eval_batches


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: np.ndarray, token_bytes: np.ndarray, seq_len: int,
             batch_size: int, device: torch.device, max_tokens: int = 0, autocast=None,
             logits_fn=None, windows: np.ndarray | None = None) -> dict[str, float]:
    """Mean loss (nats/token over all targets), perplexity, and bits per byte.

    max_tokens caps the windows scored, spread over the whole split (data.loader.eval_windows);
    windows names them explicitly (one rank's share of a sharded eval).

    logits_fn(model, x) -> log-probabilities lets fusion and other heads be scored the same way.
    """
    was_training = model.training
    model.eval()
    tb = torch.as_tensor(token_bytes, device=device)
    loss_sum = loss_text = bytes_sum = 0.0
    n_tok = 0
    bound = logits_fn is None and hasattr(model, "nll_bound")
    for i, (x, y) in enumerate(eval_batches(tokens, seq_len, batch_size, max_tokens, windows)):
        x, y = x.to(device), y.to(device)
        with autocast or nullcontext():
            if bound:  # per-position bound terms; seeded by batch so the result is deterministic
                nll = model.nll_bound(x, y, seed=i).float()
            elif logits_fn is None:
                logits, _ = model(x)
                logp = F.log_softmax(logits.float(), dim=-1)
            else:
                logp = logits_fn(model, x)
        if not bound:
            nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        nb = tb[y]
        loss_sum += nll.sum().item()
        loss_text += (nll * (nb > 0)).sum().item()
        bytes_sum += nb.sum().item()
        n_tok += y.numel()
    model.train(was_training)
    loss = loss_sum / n_tok
    result = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
              "val_bpb": loss_text / math.log(2) / max(bytes_sum, 1), "val_tokens": n_tok,
              "val_bytes": int(bytes_sum)}
    if bound:
        result["bound"] = True  # an upper bound on the true loss / BPB, not an exact value
    return result

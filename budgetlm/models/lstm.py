"""A multi-layer LSTM language model: the recurrent baseline a small-budget transformer should beat.

It speaks the same protocol as the GPT (budgetlm/models/transformer.py), so the trainer, eval,
sampling and speedrun use it unchanged:

* forward(idx, targets=None, cache=None) -> (logits, loss)
* hidden_states(idx, cache) -> (B, T, n_embd), the input to `lm_head`
* new_cache(batch, length=None) -> LSTMCache holding (h, c) and `pos`
* the LanguageModel interface (models/base.py); of the head options only the chunked loss

Width: embedding = hidden = n_embd, so the input table and the head can always be tied
(cfg.tie_embeddings). On CUDA nn.LSTM runs the cuDNN kernel by itself.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from budgetlm.models.base import HeadOptions, check_head_options

from budgetlm.config import ModelConfig
from budgetlm.models.fused_ce import fused_linear_cross_entropy


class LSTMCache:
    """Recurrent state (h, c), each (n_layer, B, n_embd), plus the tokens consumed so far.

    Unlike a KV cache its size does not grow with the context; `length` only mirrors
    cfg.block_size so callers that restart a full cache (generate_ids) behave as with the GPT.
    """

    def __init__(self, h: torch.Tensor, c: torch.Tensor, length: int) -> None:
        self.h, self.c = h, c
        self.length = length
        self.pos = 0


class LSTMLM(nn.Module):
    """Embedding -> dropout -> n_layer LSTM (dropout between layers) -> dropout -> LM head."""

    head_support = frozenset({"fused_loss"})  # no CE kernel, no residual stream

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.n_embd
        self.wte = nn.Embedding(cfg.padded_vocab, d)  # registered before lm_head: checkpoints keep this name
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(d, d, num_layers=cfg.n_layer, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.lm_head = nn.Linear(d, cfg.padded_vocab, bias=False)
        self.fused_loss = False  # the chunked head: set through set_head
        if cfg.tie_embeddings:  # sizes always match here: hidden width == embedding width
            self.lm_head.weight = self.wte.weight
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)
        if not self.cfg.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.02)
        # Forget-gate bias 1 (Jozefowicz et al. 2015): the state is kept by default early in training,
        # which helps gradients flow through time. Gate order in PyTorch is input, forget, cell, output.
        d = self.cfg.n_embd
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias_ih"):
                with torch.no_grad():
                    p.zero_()
                    p[d:2 * d].fill_(1.0)
            elif name.startswith("bias_hh"):
                nn.init.zeros_(p)

    def set_recompute(self, level: int) -> None:
        """Accepted for the trainer's sake and ignored: cuDNN's LSTM keeps its own workspace, and
        an LSTM's activations (4 gates x width per token per layer) are small next to attention."""
        if level not in (0, 1, 2):
            raise ValueError(f"recompute level must be 0, 1 or 2, got {level}")

    def set_head(self, options: HeadOptions) -> None:
        check_head_options(self, options)
        self.fused_loss = options.fused_loss

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        if non_embedding:
            n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token ~= 6 x (parameters used in matmuls).

        Each LSTM layer does 4 gates x (input + recurrent) matmuls: 8*d^2 weights, 2 FLOPs per
        weight forward, x3 for forward + backward, i.e. the same 6N rule as a transformer's
        matmuls. There is no attention term, so the count does not depend on seq_len. The
        elementwise gate math (~30 FLOPs per unit) is ignored; the input table is a lookup, so it
        counts only when it doubles as the head (tied).
        """
        n = self.num_params()
        if not self.cfg.tie_embeddings:
            n -= self.wte.weight.numel()
        return 6.0 * n

    def flops_per_token_full_attention(self, seq_len: int) -> float:
        return self.flops_per_token(seq_len)  # no attention: both conventions agree

    def new_cache(self, batch: int, length: int | None = None) -> LSTMCache:
        p = next(self.parameters())
        shape = (self.cfg.n_layer, batch, self.cfg.n_embd)
        h = torch.zeros(shape, device=p.device, dtype=p.dtype)
        return LSTMCache(h, torch.zeros_like(h), length or self.cfg.block_size)

    def hidden_states(self, idx: torch.Tensor, cache: LSTMCache | None = None) -> torch.Tensor:
        """Top-layer outputs (B, T, n_embd), the input to the LM head.

        With a cache the state carries over between calls (and cache.pos counts tokens); there
        is no hard length limit, so nothing here raises past block_size.
        """
        x = self.drop(self.wte(idx))
        if cache is None:
            out, _ = self.lstm(x)
        else:
            state = (cache.h.to(x.dtype), cache.c.to(x.dtype))
            out, (cache.h, cache.c) = self.lstm(x, state)
            cache.pos += idx.size(1)
        return self.drop(out)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: LSTMCache | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, V) and, given targets, the mean next-token cross-entropy (ignore_index -1).

        With `fused_loss` and targets, the loss comes from the chunked head and logits are None.
        """
        h = self.hidden_states(idx, cache)
        V = self.cfg.vocab_size
        if targets is not None and self.fused_loss:
            return None, fused_linear_cross_entropy(h.reshape(-1, h.size(-1)), self.lm_head.weight, targets, V)
        logits = self.lm_head(h)
        if logits.size(-1) > V:  # padding columns stand for no token
            logits = logits[..., :V]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1), ignore_index=-1)
        return logits, loss

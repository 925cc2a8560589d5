"""Sampling with a KV cache: temperature, top-k, top-p; stops at end-of-text.

`logits_hook(ids, logits) -> logits` lets shallow fusion (n-gram, cache, kNN heads) reshape
the next-token distribution without the sampler knowing about them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from budgetlm.data.tokenizers import Tokenizer
from budgetlm.errors import BudgetLMError

LogitsHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (ids, logits, hidden) -> logits


@dataclass
class Sample:
    text: str
    tokens: list[int]
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / max(self.seconds, 1e-9)


def check_sampling(temperature: float | None, top_k: int, top_p: float, max_new_tokens: int) -> None:
    """Sampling settings a sampler can use: errors name the flag (NaN passes no comparison, so each
    check is written as what must hold)."""
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise BudgetLMError(f"--temperature must be a positive finite number, got {temperature}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise BudgetLMError(f"--top-k must be a whole number >= 0 (0 = all tokens), got {top_k}")
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise BudgetLMError(f"--top-p must be in (0, 1], got {top_p}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise BudgetLMError(f"--max-tokens must be a whole number >= 0, got {max_new_tokens}")


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    if not (math.isfinite(temperature) and temperature > 0):
        raise BudgetLMError(f"--temperature must be a positive finite number, got {temperature}")
    logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def generate_ids(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.8,
                 top_k: int = 0, top_p: float = 0.95, stop_id: int | None = None,
                 generator: torch.Generator | None = None, logits_hook: LogitsHook | None = None) -> list[int]:
    """Token ids after the prompt (one sequence). Greedy when temperature is None."""
    model.eval()
    device = next(model.parameters()).device
    block = model.cfg.block_size
    ids = list(prompt_ids)[-block:]
    cache = model.new_cache(1)
    x = torch.tensor([ids], device=device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        if cache.pos + x.size(1) > block:  # context full: restart the cache on the last half
            keep = ids[-(block // 2):]
            cache = model.new_cache(1)
            x = torch.tensor([keep], device=device)
        hidden = model.hidden_states(x, cache)
        logits = model.lm_head(hidden[:, -1]).float()
        if logits_hook is not None:
            logits = logits_hook(torch.tensor([ids], device=device), logits, hidden[:, -1])
        if temperature is None:
            nxt = int(logits.argmax(-1))
        else:
            probs = F.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        if stop_id is not None and nxt == stop_id:
            break
        out.append(nxt)
        ids.append(nxt)
        x = torch.tensor([[nxt]], device=device)
    return out


def sample_text(model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 256,
                temperature: float | None = 0.8, top_k: int = 0, top_p: float = 0.95, seed: int = 0,
                logits_hook: LogitsHook | None = None) -> Sample:
    """A story continuing `prompt`; the end-of-text token in front marks a story start, as in training."""
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    prompt_ids = [tokenizer.eot_id] + tokenizer.encode(prompt)
    t = time.perf_counter()
    if hasattr(model, "sample"):  # non-autoregressive (d3pm): fills all positions at once, then cut at end-of-text
        if logits_hook is not None:
            raise BudgetLMError("fusion heads need an autoregressive model; this one samples by unmasking")
        new = model.sample(prompt_ids, max_new_tokens, temperature=temperature, generator=gen, top_k=top_k,
                           top_p=top_p)
        if tokenizer.eot_id in new:
            new = new[:new.index(tokenizer.eot_id)]
    else:
        new = generate_ids(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, tokenizer.eot_id, gen,
                           logits_hook)
    dt = time.perf_counter() - t
    return Sample(prompt + tokenizer.decode(new), new, dt)

"""Discrete diffusion LM with absorbing ([MASK]) noise, trained on the continuous-time ELBO
(MDLM, Sahoo et al. 2024; SEDD-absorb and D3PM-absorb are the same family).

Why here: it is the main non-autoregressive alternative at small scale, and its bound is in
nats per token, so its bits per byte sit in the same table as the GPT's (as an upper bound).

Noise: a sequence x0 of L tokens; at time t ~ U(0, 1] each token is replaced by [MASK]
(id = vocab_size, one extra embedding row) independently with probability t (linear schedule
alpha_t = 1 - t). The denoiser is the GPT's blocks with bidirectional attention; it predicts
the clean token at each masked position and never predicts [MASK] (the SUBS parametrisation:
unmasked tokens are carried over, so only masked positions score). No time input: with
absorbing noise the number of masks tells the model t (MDLM finds conditioning unnecessary).

Loss (negative ELBO per token, nats): E_t [ (1/t) * sum_{i masked} -log p(x0_i | x_t) ] / L.
It upper-bounds -log p(x0) / L. Training uses one t per sequence, spread over the batch
(low-discrepancy sampling) to cut variance; `nll_bound` averages K stratified t per sequence
with a fixed seed for evaluation.

What sequence is scored: the trainer passes (x, y) with y = x shifted by one. The diffusion
model scores y, the same tokens an autoregressive model is scored on, so the byte counts in
eval line up. x is unused (it would only add the first token as context).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from budgetlm.config import ModelConfig
from budgetlm.models.base import HeadOptions, check_head_options
from budgetlm.models.transformer import Block, finish_stack, make_norm, set_block_recompute

T_MIN = 1e-3  # training draws t from [T_MIN, 1]: at t ~ 0 nothing is masked and 1/t explodes


class D3PM(nn.Module):
    """Bidirectional transformer denoiser for absorbing-state discrete diffusion."""

    head_support: frozenset[str] = frozenset()  # its loss is an ELBO over noised inputs: no head option applies

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mask_id = cfg.vocab_size  # one row past the real vocabulary
        m = max(1, cfg.vocab_multiple)
        rows = m * ((cfg.vocab_size + 1 + m - 1) // m)
        self.wte = nn.Embedding(rows, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, causal=False) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, rows, bias=False)
        self.recompute = 0
        finish_stack(self, cfg)

    def set_recompute(self, level: int) -> None:
        """Activation recomputation as in the GPT: 0 off, 1 MLPs, 2 whole blocks."""
        set_block_recompute(self, level)

    def set_head(self, options: HeadOptions) -> None:
        check_head_options(self, options)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() + (self.wpe.weight.numel() if self.wpe is not None else 0)
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """6N for the matmuls plus attention scores; bidirectional, so the full 12*L*d*T (a causal
        model counts half). Evaluation with `nll_bound` costs K forward passes on top."""
        n = self.num_params() - (self.wpe.weight.numel() if self.wpe is not None else 0)
        if not self.cfg.tie_embeddings:
            n -= self.wte.weight.numel()
        return 6 * n + 12 * self.cfg.n_layer * self.cfg.n_embd * seq_len

    def flops_per_token_full_attention(self, seq_len: int) -> float:
        return self.flops_per_token(seq_len)  # bidirectional: already the whole square

    # --- denoiser -------------------------------------------------------------------------------

    def denoise(self, xt: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size) for the clean token at every position of the noised xt.
        [MASK] (and the padding rows) get no column: the model never predicts them."""
        B, T = xt.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.cfg.block_size}")
        x = self.wte(xt)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=xt.device))
        else:
            rope = (self.rope_cos[:T], self.rope_sin[:T])
        x = self.drop(x)
        whole = self.recompute == 2 and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            x = checkpoint(block, x, rope, None, i, use_reentrant=False) if whole else block(x, rope, None, i)
        return self.lm_head(self.norm_f(x))[..., :self.cfg.vocab_size]

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, mask): each token of x0 (B, T) becomes [MASK] with probability t (B,).
        With a generator the draws are made on the CPU, so they are the same on any device."""
        if generator is not None:
            u = torch.rand(x0.shape, generator=generator).to(x0.device)
        else:
            u = torch.rand(x0.shape, device=x0.device)
        mask = u < t.to(x0.device).view(-1, 1)
        return torch.where(mask, torch.full_like(x0, self.mask_id), x0), mask

    def _weighted_nll(self, x0: torch.Tensor, t: torch.Tensor, valid: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-position ELBO terms (B, T): (1/t) * -log p(x0_i | x_t) where masked, else 0."""
        xt, mask = self.add_noise(x0, t, generator)
        logits = self.denoise(xt).float()
        nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # (B, T)
        return nll * (mask & valid) / t.to(nll.device).view(-1, 1)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: object | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Without targets: denoiser logits for idx (which may hold [MASK]s), loss None.

        With targets: (None, negative ELBO in nats per token of `targets`), a one-sample estimate
        with one t per sequence. Logits are None then: they belong to a noised input, and a
        next-token hook (distillation) must not mistake them for next-token predictions.
        """
        if cache is not None:
            raise ValueError("d3pm has no KV cache: it is not autoregressive")
        if targets is None:
            return self.denoise(idx), None
        valid = targets >= 0  # -1 = ignore, as in the GPT's cross-entropy
        x0 = targets.clamp(min=0)
        B = x0.size(0)
        # Low-discrepancy t over the batch (MDLM): one uniform offset, B evenly spaced points.
        u = (torch.rand((), device=x0.device) + torch.arange(B, device=x0.device) / B) % 1.0
        t = T_MIN + (1 - T_MIN) * u
        terms = self._weighted_nll(x0, t, valid)
        return None, terms.sum() / valid.sum().clamp(min=1)

    @torch.no_grad()
    def nll_bound(self, x: torch.Tensor, y: torch.Tensor, k: int = 8, seed: int = 0) -> torch.Tensor:
        """Per-position negative-ELBO terms (B, T) in nats for the sequences y; their sum over a
        sequence is an unbiased estimate of its bound on -log p(y), so their mean is a per-token
        upper bound comparable with an AR model's loss (in expectation).

        Lower variance than the training loss: K stratified times per sequence, t_k in
        ((k + u_k) / K), covering all of (0, 1], with noise drawn from a CPU generator seeded
        with `seed` (the same result on every call and device). Costs K forward passes.
        x is unused: see the module docstring.
        """
        gen = torch.Generator().manual_seed(int(seed))
        B = y.size(0)
        valid = y >= 0
        x0 = y.clamp(min=0)
        total = torch.zeros(y.shape, device=y.device, dtype=torch.float32)
        for j in range(k):
            u = torch.rand(B, generator=gen)
            t = ((j + u) / k).clamp(min=1e-6)
            total += self._weighted_nll(x0, t, valid, gen)
        return total / k

    # --- sampling -------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, prompt_ids: list[int], length: int, steps: int | None = None,
               temperature: float | None = 1.0, generator: torch.Generator | None = None,
               top_k: int = 0, top_p: float = 1.0, strategy: str = "confidence") -> list[int]:
        """`length` new token ids after the prompt, by iterative unmasking.

        Start from prompt + [MASK]*length; at each of `steps` steps predict every masked
        position, draw a token (greedy when temperature is None) and keep an even share of the
        remaining masks: the most confident ones (MaskGIT-style; better text in few steps) or a
        random subset ("random": the model's own reverse process). steps=None: min(length, 64).
        There is no sliding window: prompt + new tokens must fit block_size, so a prompt keeps at
        most its last block_size // 2 tokens and fewer than `length` come back when it is full.
        """
        from budgetlm.sample.generate import filter_logits
        if strategy not in ("confidence", "random"):
            raise ValueError(f"strategy must be confidence or random, got {strategy!r}")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        block = self.cfg.block_size
        prompt = list(prompt_ids)[-(block // 2):] if block // 2 else []
        length = max(0, min(length, block - len(prompt)))
        if length == 0:
            return []
        x = torch.tensor([prompt + [self.mask_id] * length], device=device)
        steps = max(1, min(length, steps or min(length, 64)))
        for s in range(steps):
            masked = (x[0] == self.mask_id).nonzero().squeeze(-1)
            n_left = masked.numel()
            if n_left == 0:
                break
            n_now = math.ceil(n_left / (steps - s))
            logits = self.denoise(x)[0, masked].float()  # (n_left, V)
            if temperature is None:
                probs = F.softmax(logits, dim=-1)
                tok = probs.argmax(-1)
            else:
                probs = F.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
                tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            if strategy == "confidence":
                score = probs.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
            else:
                score = torch.rand(n_left, device=device, generator=generator)
            keep = score.topk(n_now).indices
            x[0, masked[keep]] = tok[keep]
        self.train(was_training)
        return x[0, len(prompt):].tolist()

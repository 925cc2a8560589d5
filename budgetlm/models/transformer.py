"""The one transformer: GPT-2 style by default, Llama style by switches.

GPT-2: learned positions, LayerNorm, GELU MLP, biases, tied embeddings.
Llama: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, no biases, untied head.
Any mix of the switches is allowed, so ablations change one thing at a time.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from budgetlm.config import ModelConfig
from budgetlm.models.base import HEAD_OPTION_NAMES, HeadOptions, check_head_options
from budgetlm.models.ce_kernel import linear_cross_entropy
from budgetlm.models.ce_kernel_fp8 import linear_cross_entropy_fp8
from budgetlm.models.fused_ce import fused_linear_cross_entropy


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 whatever the stream's dtype (autocast has no rule for rms_norm on
        # every device); the result comes back in the stream's dtype.
        return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) as Llama/HF do; x is (B, T, H, hd), the
    layout the qkv matmul writes. Rotating before the heads are transposed saved 2.6 GB at the
    TinyLlama shape, 14x2048, and no measurable time (benchmarks/HISTORY.md §2)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype)[:, None, :], sin.to(x.dtype)[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def init_weights(module: nn.Module, n_layer: int) -> None:
    """GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer), zero biases."""
    if isinstance(module, nn.Linear):
        std = 0.02 / math.sqrt(2 * n_layer) if getattr(module, "residual", False) else 0.02
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


# ---- issue 21: modern-recipe switches (each off by default; off = the code path above, unchanged) ----
class SoftcapLinear(nn.Linear):
    """The LM head with logit soft-capping, cap * tanh(logits / cap) in fp32 (Gemma 2, modded-nanogpt):
    bounded logits keep early training from overconfident spikes. The cap lives in the head itself,
    so every caller of model.lm_head (loss, generation, fusion) sees the same capped logits."""

    def __init__(self, d_in: int, d_out: int, cap: float) -> None:
        super().__init__(d_in, d_out, bias=False)
        self.cap = cap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(super().forward(x).float() / self.cap)


def window_mask(q_start: int, q_len: int, k_len: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean (q_len, k_len) mask of causal sliding-window attention: query at position i sees keys
    j with i - window < j <= i (queries sit at q_start.., keys at 0..)."""
    qpos = torch.arange(q_start, q_start + q_len, device=device)[:, None]
    kpos = torch.arange(k_len, device=device)[None, :]
    return (kpos <= qpos) & (qpos - kpos < window)


def value_embed_table(layer: int, n_layer: int, tables: int) -> int | None:
    """Which value-embedding table layer `layer` mixes in: table i serves layer i and layer
    n_layer - tables + i (the first and last layers, as in modded-nanogpt); None for the middle."""
    if layer < tables:
        return layer
    if layer >= n_layer - tables:
        return layer - (n_layer - tables)
    return None


def zero_residual_projections(model: nn.Module) -> None:
    """Zero-init the attention-out and MLP-out projections: each block starts as the identity."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and getattr(module, "residual", False):
            nn.init.zeros_(module.weight)


# Grouped-query attention through SDPA's enable_gqa (torch >= 2.5) on CUDA half precision;
# gqa_mode(False) restores the repeated-heads path (the bench's ablation row).
NATIVE_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


@contextlib.contextmanager
def gqa_mode(native: bool):
    global NATIVE_GQA
    before, NATIVE_GQA = NATIVE_GQA, native and NATIVE_GQA
    try:
        yield
    finally:
        NATIVE_GQA = before


def sdpa_backend(kernel: str):
    """The SDPBackend for a kernel name (flash, cudnn, efficient, math)."""
    from torch.nn.attention import SDPBackend
    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[kernel]


def sdpa_restriction(kernel: str | None, q: torch.Tensor, gqa: bool):
    """Restrict scaled_dot_product_attention to one kernel inside the model's forward, where
    torch.compile sees it (a priority set around a compiled call does not reach the graph: the
    compiled step ran FlashAttention under a cuDNN preference, benchmarks/HISTORY.md §2). Only
    when the kernel can serve these inputs; otherwise PyTorch's own order decides."""
    if kernel is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel
    half = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    fits = {"math": True, "cudnn": half and q.size(-1) % 8 == 0 and q.size(-1) <= 128,
            "flash": half and q.size(-1) <= 256, "efficient": q.is_cuda and not gqa}[kernel]
    if not fits:
        return contextlib.nullcontext()
    return sdpa_kernel([sdpa_backend(kernel)])


def padded_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, vocab: int) -> torch.Tensor:
    """Mean next-token cross-entropy (fp32) over logits whose last dim may be padded past `vocab`.
    The padding columns get -inf, so they take no probability and no gradient, as if sliced off;
    but the rows keep their 64-aligned length, which the compiled loss kernels read faster than
    rows sliced to 50257 (benchmarks/HISTORY.md §2)."""
    flat = logits.float().reshape(-1, logits.size(-1))
    if flat.size(-1) > vocab:
        pad = torch.arange(flat.size(-1), device=flat.device) >= vocab
        flat = flat.masked_fill(pad, float("-inf"))
    return F.cross_entropy(flat, targets.reshape(-1), ignore_index=-1)


class KVCache:
    """Pre-allocated keys/values for every layer, so decoding one token costs O(T), not O(T^2)."""

    def __init__(self, cfg: ModelConfig, batch: int, length: int, device: torch.device, dtype: torch.dtype):
        shape = (batch, cfg.kv_heads, length, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.length = length
        self.pos = 0  # tokens already stored


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.causal = causal  # False: bidirectional (the d3pm denoiser sees the whole sequence)
        hd, kv = cfg.head_dim, cfg.kv_heads
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * kv) * hd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj.residual = True  # scaled init, see init_weights
        self.kernel: str | None = None  # attention kernel asked for in training (set_attention_kernel)

    def forward(self, x: torch.Tensor, rope: tuple | None, cache: KVCache | None, layer: int,
                ve: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        cfg, hd = self.cfg, self.cfg.head_dim
        q, k, v = self.qkv(x).split([cfg.n_head * hd, cfg.kv_heads * hd, cfg.kv_heads * hd], dim=-1)
        q, k, v = q.view(B, T, cfg.n_head, hd), k.view(B, T, cfg.kv_heads, hd), v.view(B, T, cfg.kv_heads, hd)
        if ve is not None:  # issue 21: value embeddings, mixed in with two learned weights
            mix = self.ve_mix.to(v.dtype)  # in the stream's dtype: SDPA's GPU kernels want q, k, v alike
            v = mix[0] * v + mix[1] * ve.view_as(v).to(v.dtype)
        if cfg.qk_norm:  # issue 21: RMS-normalized queries and keys per head (no gain), in fp32
            q = F.rms_norm(q.float(), (hd,), eps=cfg.norm_eps).to(q.dtype)
            k = F.rms_norm(k.float(), (hd,), eps=cfg.norm_eps).to(k.dtype)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd) views for SDPA
        causal, start = self.causal, 0
        if cache is not None:
            start = cache.pos
            cache.k[layer][:, :, start:start + T] = k
            cache.v[layer][:, :, start:start + T] = v
            k, v = cache.k[layer][:, :, :start + T], cache.v[layer][:, :, :start + T]
            if start > 0:
                if T != 1:
                    raise ValueError("KV cache: after the prompt, feed one token at a time")
                causal = False  # one new query attends to everything cached
        drop = cfg.dropout if self.training else 0.0
        gqa = cfg.kv_heads != cfg.n_head  # GQA: each kv head serves n_head/kv_heads query heads
        native = gqa and NATIVE_GQA and q.is_cuda and q.dtype != torch.float32 and self.kernel != "efficient"
        if gqa and not native:  # CPU, fp32, old torch: the memory-efficient kernel needs equal head counts
            rep = cfg.n_head // cfg.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        kernel = self.kernel if self.training and cache is None else None
        extra = {"enable_gqa": True} if native else {}
        if cfg.window:  # issue 21: sliding window through an explicit mask (flash/cuDNN take none)
            extra["attn_mask"] = window_mask(start, T, k.size(2), cfg.window, q.device)
            causal, kernel = False, None
        with sdpa_restriction(kernel, q, native):
            # native GQA: the fused kernels read the shared kv heads in place, no repeated copies
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=drop, **extra)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.relu2 = cfg.mlp == "relu2"  # issue 21: ReLU squared (Primer; modded-nanogpt)
        width = 2 * cfg.hidden if self.swiglu else cfg.hidden  # gate and up in one matmul
        self.up = nn.Linear(cfg.n_embd, width, bias=cfg.bias)
        self.down = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)
        self.down.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            return self.down(F.silu(gate) * up)
        if self.relu2:
            return self.down(F.relu(h).square())
        return self.down(F.gelu(h, approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool = True) -> None:
        super().__init__()
        self.norm1, self.attn = make_norm(cfg), Attention(cfg, causal)
        self.norm2, self.mlp = make_norm(cfg), MLP(cfg)
        self.recompute_mlp = False  # recompute level 1: keep only the MLP's input, redo it in backward
        # issue 21: embed_skip mixes the embedding output x0 back in; the gain starts at 0 (no change)
        self.skip_gain = nn.Parameter(torch.zeros(1)) if cfg.embed_skip else None

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, rope: tuple | None, cache: KVCache | None, layer: int,
                x0: torch.Tensor | None = None, ve: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_gain is not None:
            x = x + self.skip_gain.to(x.dtype) * x0
        x = x + self.attn(self.norm1(x), rope, cache, layer, ve)
        if self.recompute_mlp and self.training and torch.is_grad_enabled():
            return x + checkpoint(self._mlp, x, use_reentrant=False)
        return x + self._mlp(x)


def finish_stack(model: nn.Module, cfg: ModelConfig) -> None:
    """The end of a transformer stack's constructor, shared by the GPT and the D3PM denoiser:
    tie the head to the embedding, add the RoPE tables, apply the GPT-2 init."""
    if cfg.tie_embeddings:
        model.lm_head.weight = model.wte.weight
    if cfg.pos == "rope":
        cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta)
        model.register_buffer("rope_cos", cos, persistent=False)
        model.register_buffer("rope_sin", sin, persistent=False)
    model.apply(lambda module: init_weights(module, cfg.n_layer))
    if cfg.zero_init_proj:  # issue 21
        zero_residual_projections(model)


def set_attention_kernel(model: nn.Module, kernel: str | None) -> None:
    """Ask every attention layer for one SDPA kernel in training (flash, cudnn, efficient, math),
    or None for PyTorch's own order; see sdpa_restriction."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.kernel = kernel


def set_block_recompute(model: nn.Module, level: int) -> None:
    """0 keeps all activations, 1 recomputes the MLPs, 2 whole blocks (the forward checks model.recompute)."""
    if level not in (0, 1, 2):
        raise ValueError(f"recompute level must be 0, 1 or 2, got {level}")
    model.recompute = level
    for b in model.blocks:
        b.recompute_mlp = level == 1


class GPT(nn.Module):
    head_support = HEAD_OPTION_NAMES  # every HeadOptions field (models/base.py)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.padded_vocab, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = SoftcapLinear(cfg.n_embd, cfg.padded_vocab, cfg.logit_softcap) if cfg.logit_softcap \
            else nn.Linear(cfg.n_embd, cfg.padded_vocab, bias=False)
        if cfg.value_embeds:  # issue 21: token -> value-vector tables, shared by a first and a last layer
            self.value_tables = nn.ModuleList(nn.Embedding(cfg.padded_vocab, cfg.kv_heads * cfg.head_dim)
                                              for _ in range(cfg.value_embeds))
            for i, block in enumerate(self.blocks):
                if value_embed_table(i, cfg.n_layer, cfg.value_embeds) is not None:
                    block.attn.ve_mix = nn.Parameter(torch.tensor([0.5, 0.5]))
        self.set_head(HeadOptions())  # fused_loss, ce_kernel, fp8_head, half_residual: see HeadOptions
        self.recompute = 0  # 0: keep all activations; 1: recompute MLPs; 2: recompute whole blocks
        finish_stack(self, cfg)

    def set_recompute(self, level: int) -> None:
        """Activation recomputation like llm.c's -r: 0 off, 1 MLPs, 2 whole blocks."""
        set_block_recompute(self, level)

    def set_head(self, options: HeadOptions) -> None:
        """The loss head and residual-stream options `forward` branches on (models/base.py)."""
        check_head_options(self, options)
        self.fused_loss, self.ce_kernel = options.fused_loss, options.ce_kernel
        self.fp8_head, self.half_residual = options.fp8_head, options.half_residual

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # parameters() counts tied weights once
        if non_embedding:
            n -= self.wte.weight.numel()
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N for the matmuls (PaLM appendix B) plus attention scores."""
        cfg = self.cfg
        # Lookups cost no matmul: drop positions, and the input table unless it doubles as the head.
        n = self.num_params() - (self.wpe.weight.numel() if self.wpe is not None else 0)
        if not cfg.tie_embeddings:
            n -= self.wte.weight.numel()
        if cfg.value_embeds:  # issue 21: value-embedding tables are lookups too
            n -= sum(t.weight.numel() for t in self.value_tables)
        return 6 * n + 6 * cfg.n_layer * cfg.n_embd * seq_len  # causal: half of 12*L*d*T

    def flops_per_token_full_attention(self, seq_len: int) -> float:
        """The convention of nanoGPT, PaLM and TinyLlama's MFU: attention scores counted over the
        whole T x T square (12*L*d*T), though causal kernels skip half. Used to compare with them."""
        return self.flops_per_token(seq_len) + 6 * self.cfg.n_layer * self.cfg.n_embd * seq_len

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, n_embd): the input to the LM head."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.cfg.block_size}")
        x = self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        else:
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        if self.half_residual and torch.is_autocast_enabled(x.device.type):
            # Megatron/llm.c style: the residual stream in bf16, norms still computed in fp32.
            # Under plain autocast it stays fp32 (embedding + bf16 branch outputs promote), which
            # doubles the bytes every norm and residual add moves and the activations kept.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        x = self.drop(x)
        x0 = x if self.cfg.embed_skip else None
        tables = [t(idx) for t in self.value_tables] if self.cfg.value_embeds else []
        whole = self.recompute == 2 and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            j = value_embed_table(i, self.cfg.n_layer, len(tables)) if tables else None
            ve = tables[j] if j is not None else None
            x = checkpoint(block, x, rope, None, i, x0, ve, use_reentrant=False) if whole \
                else block(x, rope, cache, i, x0, ve)
        if cache is not None:
            cache.pos += T
        return self.norm_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, V) and, given targets, the mean next-token cross-entropy.

        With `fused_loss` or `ce_kernel` and targets, the loss comes from that head and logits are None.
        """
        h = self.hidden_states(idx, cache)
        V = self.cfg.vocab_size
        if self.cfg.logit_softcap:  # issue 21: the chunked and kernel heads know no cap: plain head
            logits = self.lm_head(h)
            loss = padded_cross_entropy(logits, targets, V) if targets is not None else None
            return logits[..., :V], loss
        if targets is not None and self.fused_loss:
            return None, fused_linear_cross_entropy(h.view(-1, h.size(-1)), self.lm_head.weight, targets, V)
        if targets is not None and self.ce_kernel:
            head = linear_cross_entropy_fp8 if self.fp8_head else linear_cross_entropy
            return None, head(h.reshape(-1, h.size(-1)), self.lm_head.weight, targets, V)
        logits = self.lm_head(h)
        loss = None
        if targets is not None:
            loss = padded_cross_entropy(logits, targets, V)
        if logits.size(-1) > V:  # drop the padding columns: they stand for no token
            logits = logits[..., :V]
        return logits, loss

    def new_cache(self, batch: int, length: int | None = None) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.cfg, batch, length or self.cfg.block_size, p.device, p.dtype)

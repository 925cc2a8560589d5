"""What the trainer, bench and the memory probe need from a model, stated once.

Every model in the registry implements `LanguageModel`; the options that change how its loss
head and residual stream run are handed over in one `HeadOptions` (set_head), not poked onto it.
A model declares in `head_support` which of those options it has; the fast path (train/fastpath.py)
resolves only those, so an LSTM never sees a CE kernel and a diffusion model no head option at all.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class HeadOptions:
    fused_loss: bool = False  # chunked head + cross-entropy (models/fused_ce.py): forms no logits
    ce_kernel: bool = False  # head + cross-entropy with the gradient kernel (models/ce_kernel.py): no logits
    fp8_head: bool = False  # with ce_kernel: the head's matmuls in FP8 (models/ce_kernel_fp8.py)
    half_residual: bool = False  # the residual stream in the autocast dtype instead of fp32


HEAD_OPTION_NAMES = frozenset(f.name for f in fields(HeadOptions))


def check_head_options(model: object, options: HeadOptions) -> None:
    """Refuse an option the model did not declare: a silent no-op would hide a wiring mistake."""
    asked = {f.name for f in fields(options) if getattr(options, f.name)}
    extra = asked - model.head_support
    if extra:
        raise ValueError(f"{type(model).__name__} has no head option {', '.join(sorted(extra))}")


@runtime_checkable
class LanguageModel(Protocol):
    cfg: Any  # its ModelConfig
    head_support: frozenset[str]  # the HeadOptions fields this model implements

    def num_params(self, non_embedding: bool = False) -> int: ...

    def flops_per_token(self, seq_len: int) -> float: ...

    def flops_per_token_full_attention(self, seq_len: int) -> float:
        """nanoGPT's/TinyLlama's MFU convention: attention over the whole T x T square."""
        ...

    def set_recompute(self, level: int) -> None: ...

    def set_head(self, options: HeadOptions) -> None: ...

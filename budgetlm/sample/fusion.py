"""Shallow fusion: mix the transformer's next-token distribution with cheap extra heads.

Small models under a budget forget names and repeat themselves; three heads that cost no
training patch that at inference time:

* ``ngram`` -- a Kneser-Ney n-gram LM over the train split (or a saved ``.npz``);
* ``cache`` -- a recency-weighted unigram cache of the current story's own tokens
  (names and objects already mentioned are likely to come back);
* ``knn``   -- kNN-LM (Khandelwal et al. 2020): nearest train-set hidden states vote for
  the token that followed them.

Linear mode:     p = (1 - sum l_h) p_model + sum l_h p_h
Log-linear mode: log p = log p_model + sum l_h log p_h - log Z

The same code serves generation (``Fuser.logits_hook``, one position) and evaluation
(``Fuser.logits_fn``, all B*T positions at once), and both return log-probabilities, so a
perplexity measured with fusion is the perplexity of exactly what the sampler draws from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from budgetlm.errors import BudgetLMError
from budgetlm.models.ngram import MAX_ORDER, KneserNeyLM

HEADS = ("ngram", "cache", "knn")
SMOOTH = 1e-6  # uniform floor for cache/knn heads: keeps log p finite for log-linear mode
_OPTIONS = {"order": int, "decay": float, "k": int, "tau": float, "knn_max": int, "ngram_max": int}


@dataclass
class FusionSpec:
    """Parsed ``--fuse`` value. Heads with weight 0 are never built."""

    weights: dict[str, float] = field(default_factory=dict)
    mode: str = "linear"  # linear | log
    ngram_path: str | None = None  # load the n-gram from here instead of building it
    order: int = 4  # n-gram order when built from data
    ngram_max: int = 50_000_000  # train tokens used to build the n-gram (bounds memory/time)
    decay: float = 0.99  # cache: weight of a token t positions back is decay**t
    k: int = 16  # knn: neighbours per query
    tau: float = 0.1  # knn: temperature on cosine similarity
    knn_max: int = 200_000  # knn: datastore entries (one per train position)

    @property
    def active(self) -> dict[str, float]:
        return {h: w for h, w in self.weights.items() if w > 0}


def parse_fusion(spec: str) -> FusionSpec:
    """``"ngram:0.2[@model.npz],cache:0.1,knn:0.1[,mode=log|linear][,order=4,decay=..,k=..,tau=..]"``."""
    def bad(msg: str) -> BudgetLMError:
        return BudgetLMError(f"--fuse {spec!r}: {msg}")

    out = FusionSpec()
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise bad("empty; expected e.g. 'ngram:0.2,cache:0.1,knn:0.1'")
    for part in parts:
        if "=" in part:
            key, _, val = (s.strip() for s in part.partition("="))
            if key == "mode":
                mode = {"linear": "linear", "log": "log", "loglinear": "log", "log-linear": "log"}.get(val)
                if mode is None:
                    raise bad(f"mode must be 'linear' or 'log', got {val!r}")
                out.mode = mode
                continue
            if key not in _OPTIONS:
                raise bad(f"unknown option {key!r}; known: mode, {', '.join(_OPTIONS)}")
            try:
                setattr(out, key, _OPTIONS[key](val))
            except ValueError:
                raise bad(f"{key} must be a {_OPTIONS[key].__name__}, got {val!r}") from None
            continue
        head, sep, rest = part.partition(":")
        head = head.strip()
        if head not in HEADS:
            raise bad(f"unknown head {head!r}; known heads: {', '.join(HEADS)}")
        if not sep:
            raise bad(f"head {head!r} needs a weight, e.g. '{head}:0.1'")
        if head in out.weights:
            raise bad(f"head {head!r} given twice")
        weight, _, path = rest.partition("@")
        if path and head != "ngram":
            raise bad(f"only the ngram head takes '@path', not {head!r}")
        try:
            w = float(weight)
        except ValueError:
            raise bad(f"weight of {head!r} must be a number, got {weight!r}") from None
        if not np.isfinite(w) or w < 0:
            raise bad(f"weight of {head!r} must be >= 0, got {weight!r}")
        out.weights[head] = w
        out.ngram_path = path.strip() or out.ngram_path
    if out.mode == "linear" and sum(out.weights.values()) >= 1:
        raise bad(f"linear-mode weights must sum to < 1 (the model keeps the rest), got {sum(out.weights.values()):g}")
    if not 1 <= out.order <= MAX_ORDER:
        raise bad(f"order must be in 1..{MAX_ORDER}, got {out.order}")
    if not 0 < out.decay <= 1 or out.tau <= 0 or out.k < 1 or out.knn_max < 1 or out.ngram_max < 1:
        raise bad("need 0 < decay <= 1, tau > 0, k >= 1, knn_max >= 1, ngram_max >= 1")
    return out


def _smooth(p: torch.Tensor) -> torch.Tensor:
    return p * (1 - SMOOTH) + SMOOTH / p.size(-1)


@dataclass
class KnnDatastore:
    """(L2-normalized final hidden state, next token) pairs; queried by cosine similarity."""

    keys: torch.Tensor  # (N, d)
    values: torch.Tensor  # (N,) long
    k: int = 16
    tau: float = 0.1
    chunk: int = 2048  # most queries per matmul; further capped so a (chunk, N) block stays ~256 MB

    @classmethod
    @torch.no_grad()
    def build(cls, model: torch.nn.Module, tokens: np.ndarray, max_entries: int, k: int = 16, tau: float = 0.1,
              batch_size: int = 8) -> "KnnDatastore":
        """Run the model over non-overlapping block_size windows of the first max_entries+1 tokens."""
        block = model.cfg.block_size
        toks = torch.from_numpy(np.asarray(tokens[:max_entries + 1]).astype(np.int64))
        if toks.numel() < 2:
            raise BudgetLMError("--fuse knn: need at least 2 train tokens to build a datastore")
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        keys, values = [], []
        n_full, rest = divmod(toks.numel() - 1, block)
        groups = [(s, min(s + batch_size, n_full), block) for s in range(0, n_full, batch_size)]
        if rest:
            groups.append((n_full, n_full + 1, rest))  # the short tail window, alone
        for first, last, n in groups:
            x = torch.stack([toks[i * block:i * block + n] for i in range(first, last)]).to(device)
            y = torch.stack([toks[i * block + 1:i * block + n + 1] for i in range(first, last)])
            h = model.hidden_states(x).float().reshape(-1, model.cfg.n_embd)
            keys.append(F.normalize(h, dim=-1))
            values.append(y.reshape(-1).to(device))
        model.train(was_training)
        kd = torch.cat(keys)
        if device.type == "cuda":
            kd = kd.half()  # halves the memory of 200k x d; cosine scores need no more precision
        return cls(kd, torch.cat(values), k, tau)

    @torch.no_grad()
    def probs(self, hidden: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """(Q, V) kNN distributions for (Q, d) hidden states (smoothed, rows sum to 1)."""
        q = F.normalize(hidden.float(), dim=-1).to(self.keys.dtype)
        k = min(self.k, self.keys.size(0))
        step = max(1, min(self.chunk, (1 << 26) // max(self.keys.size(0), 1)))
        out = torch.zeros(q.size(0), vocab_size, device=q.device)
        for i in range(0, q.size(0), step):
            sims, idx = (q[i:i + step] @ self.keys.T).float().topk(k, dim=-1)
            w = torch.softmax(sims / self.tau, dim=-1)  # = exp(sim/tau) / sum over neighbours
            out[i:i + step].scatter_add_(1, self.values[idx], w)
        return _smooth(out)


def _check_data_tokenizer(data_dir: str | Path, tokenizer) -> None:
    """Heads built from a data folder's tokens must share the model's tokenizer, or their ids mean other text."""
    from budgetlm.data.prepare import data_tokenizer
    from budgetlm.data.tokenizers import TOKENIZER_FILE
    if not (Path(data_dir) / TOKENIZER_FILE).is_file() or not hasattr(tokenizer, "fingerprint"):
        return  # bare shards (library use): nothing to compare; Fuser still checks vocabulary sizes
    data_tok = data_tokenizer(data_dir)
    if data_tok.fingerprint() != tokenizer.fingerprint():
        raise BudgetLMError(f"--fuse: --data {data_dir} is tokenized with {data_tok.spec}, not the model's "
                            f"tokenizer ({tokenizer.spec}); build the heads from data of the same tokenizer")


class Fuser:
    """Holds the heads of one ``--fuse`` spec and combines them with the model's distribution."""

    def __init__(self, spec: FusionSpec | str, vocab_size: int, eot_id: int, ngram: KneserNeyLM | None = None,
                 knn: KnnDatastore | None = None) -> None:
        self.spec = parse_fusion(spec) if isinstance(spec, str) else spec
        self.vocab_size, self.eot_id = int(vocab_size), int(eot_id)
        self.ngram, self.knn = ngram, knn
        act = self.spec.active
        if "ngram" in act and ngram is None or "knn" in act and knn is None:
            raise BudgetLMError("--fuse: ngram/knn head has weight > 0 but was not built (use Fuser.build)")
        if ngram is not None and ngram.vocab_size != self.vocab_size:
            raise BudgetLMError(f"--fuse ngram: n-gram vocabulary {ngram.vocab_size} != model vocabulary "
                                f"{self.vocab_size} (built with another tokenizer?)")

    @classmethod
    def build(cls, model: torch.nn.Module, data_dir: str | Path | None, spec: FusionSpec | str, tokenizer,
              log: Callable[[str], None] = lambda _: None) -> "Fuser":
        """Build the heads the spec gives weight to; ngram/knn read the train split of data_dir."""
        spec = parse_fusion(spec) if isinstance(spec, str) else spec
        V, act = model.cfg.vocab_size, spec.active
        ngram = knn = None
        train = None
        if ("ngram" in act and not spec.ngram_path) or "knn" in act:
            if data_dir is None:
                raise BudgetLMError("--fuse: the ngram (without @path) and knn heads need --data (train split)")
            from budgetlm.data.shards import load_split
            _check_data_tokenizer(data_dir, tokenizer)
            train = load_split(data_dir, "train")
        if "ngram" in act:
            if spec.ngram_path:
                ngram = KneserNeyLM.load(spec.ngram_path)
                from budgetlm.models.ngram_build import check_tokenizer
                check_tokenizer(ngram, spec.ngram_path, tokenizer, "--fuse ngram")
                log(f"fusion: loaded {ngram.order}-gram model from {spec.ngram_path}")
            else:
                n = min(train.size, spec.ngram_max)
                ngram = KneserNeyLM.build(np.asarray(train[:n]).astype(np.int64), V, spec.order)
                log(f"fusion: built {spec.order}-gram model from {n:,} train tokens")
        if "knn" in act:
            knn = KnnDatastore.build(model, train, spec.knn_max, spec.k, spec.tau)
            log(f"fusion: kNN datastore of {knn.keys.size(0):,} entries (k={spec.k}, tau={spec.tau})")
        return cls(spec, V, tokenizer.eot_id, ngram, knn)

    # ------------------------------------------------------------------ heads
    def _ngram_probs(self, contexts: torch.Tensor) -> torch.Tensor:
        """(N, V) n-gram probabilities for (N, order-1) contexts, in row chunks of ~128M floats."""
        step = max(1, (1 << 27) // self.vocab_size)
        ctx = contexts.cpu().numpy()
        parts = [torch.from_numpy(self.ngram.next_token_probs(ctx[i:i + step])) for i in range(0, len(ctx), step)]
        return torch.cat(parts).to(contexts.device)

    def _ngram_contexts(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, order-1): the last order-1 tokens up to each position, end-of-text padded on the left."""
        h = self.ngram.order - 1
        if h == 0:
            return x.new_zeros(*x.shape, 0)
        pad = x.new_full((x.size(0), h - 1), self.eot_id)
        return torch.cat([pad, x], dim=1).unfold(1, h, 1)

    def _cache_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, V) cache distributions after each position of x (B, T).

        Only tokens of the current story count: those after the last end-of-text (story
        start) up to and including position t, weighted decay**(t - s). Where there are none,
        the head is uniform. One scatter_add of a (B, T, T) weight tensor: no loop over T.
        """
        B, T = x.shape
        pos = torch.arange(T, device=x.device)
        last_eot = torch.where(x == self.eot_id, pos, -1).cummax(dim=1).values  # (B, T)
        age = (pos[:, None] - pos[None, :]).clamp_min(0).float()
        w = torch.full((T, T), self.spec.decay, device=x.device).pow(age).tril()  # (t, s)
        w = w[None] * (pos[None, None, :] > last_eot[:, :, None])  # (B, t, s)
        out = torch.zeros(B, T, self.vocab_size, device=x.device)
        return self._normalize_cache(out.scatter_add_(2, x[:, None, :].expand(B, T, T), w))

    def _cache_last(self, x: torch.Tensor) -> torch.Tensor:
        """(B, V): the cache distribution after the last position only (generation's case, O(n))."""
        B, n = x.shape
        pos = torch.arange(n, device=x.device)
        last_eot = torch.where(x == self.eot_id, pos, -1).max(dim=1).values  # (B,)
        w = torch.full((n,), self.spec.decay, device=x.device).pow((n - 1 - pos).float())
        w = w[None] * (pos[None, :] > last_eot[:, None])
        out = torch.zeros(B, self.vocab_size, device=x.device)
        return self._normalize_cache(out.scatter_add_(1, x, w))

    def _normalize_cache(self, counts: torch.Tensor) -> torch.Tensor:
        total = counts.sum(-1, keepdim=True)
        uniform = torch.full_like(counts, 1.0 / self.vocab_size)
        return _smooth(torch.where(total > 0, counts / total.clamp_min(1e-30), uniform))

    # ------------------------------------------------------------------ combination
    def fuse(self, logits: torch.Tensor, heads: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log-probabilities (..., V) from model logits and per-head probabilities."""
        logp = F.log_softmax(logits.float(), dim=-1)
        act = self.spec.active
        if not act:
            return logp
        if self.spec.mode == "linear":
            p = logp.exp() * (1 - sum(act.values()))
            for h, lam in act.items():
                p = p + lam * heads[h]
            return p.clamp_min(1e-30).log()  # heads are smoothed, so the clamp only guards fp rounding
        s = logp
        for h, lam in act.items():
            s = s + lam * heads[h].clamp_min(1e-30).log()
        return F.log_softmax(s, dim=-1)

    def _heads(self, x: torch.Tensor, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every active head's (B, T, V) distribution after each position of x (B, T)."""
        B, T = x.shape
        act, out = self.spec.active, {}
        with torch.autocast(device_type=x.device.type, enabled=False):
            if "ngram" in act:
                out["ngram"] = self._ngram_probs(self._ngram_contexts(x).reshape(B * T, -1)).view(B, T, -1)
            if "cache" in act:
                out["cache"] = self._cache_probs(x)
            if "knn" in act:
                out["knn"] = self.knn.probs(hidden.reshape(B * T, -1), self.vocab_size).view(B, T, -1)
        return out

    @torch.no_grad()
    def logits_hook(self, ids: torch.Tensor, logits: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """For generate_ids: fused log-probs (1, V) after the full context ids (1, n); hidden is (1, d)."""
        act, heads = self.spec.active, {}
        with torch.autocast(device_type=ids.device.type, enabled=False):
            if "ngram" in act:
                heads["ngram"] = self._ngram_probs(self._ngram_contexts(ids[:, -self.ngram.order:])[:, -1])
            if "cache" in act:
                heads["cache"] = self._cache_last(ids)
            if "knn" in act:
                heads["knn"] = self.knn.probs(hidden, self.vocab_size)
        return self.fuse(logits, heads)

    @torch.no_grad()
    def logits_fn(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """For evaluate(): fused log-probabilities (B, T, V) after every position of x (B, T)."""
        hidden = model.hidden_states(x)
        logits = model.lm_head(hidden).float()
        return self.fuse(logits, self._heads(x, hidden.float()))

    def describe(self) -> str:
        """One line for logs and result files."""
        act = ", ".join(f"{h}:{w:g}" for h, w in self.spec.active.items()) or "none"
        return f"fusion {self.spec.mode} [{act}]"

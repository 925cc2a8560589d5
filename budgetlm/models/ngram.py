"""Interpolated modified Kneser-Ney n-gram language model over integer token ids.

Used as a cheap baseline and as a teacher for distillation, so two things matter:
building from millions of tokens in seconds, and producing dense (B, V) next-token
distributions for a whole training batch in a fraction of a second. Everything is
numpy over sorted int64 key arrays; there are no per-n-gram Python loops.

Identifiers. Table n holds every n-gram type of the corpus as the sorted int64 key
``id(first n-1 tokens) * V + last token``; the id of an n-gram is its index in that
table, and the id of a single token is the token itself. Keys therefore sort
lexicographically, each context owns a contiguous row range of the next table (found
by searchsorted), and keys stay far below 2**63 (at most #tokens * V). The same table
serves as the n-gram counts of order n and as the context index of order n + 1, so
building costs one sort per order.

Model (Chen & Goodman 1998, interpolated modified KN), for order n with context h:
    p_n(w | h) = max(c(h w) - D(c), 0) / c(h)  +  gamma(h) * p_{n-1}(w | h')
    gamma(h)   = (D1 N1(h .) + D2 N2(h .) + D3 N3+(h .)) / c(h)
where h' drops the oldest token of h, D(c) is D1, D2 or D3+ for c = 1, 2, >= 3, and
N_k(h .) counts words following h exactly k times. The highest order uses raw counts;
lower orders use continuation counts c'(h w) = N1+(. h w), the number of distinct
tokens seen directly before ``h w`` (0 for an n-gram seen only at the corpus start).
A context with c(h) = 0 has gamma = 1 (pure backoff), and order 1 interpolates with
the uniform 1/V, so every token gets mass and each distribution sums to one:
sum_w (c - D)/c(h) + gamma(h) = 1.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from budgetlm.errors import BudgetLMError

if TYPE_CHECKING:  # torch is imported lazily: building an n-gram model needs only numpy
    import torch

MAX_ORDER = 6
_KIND = "budgetlm.kneser_ney.v1"
_FALLBACK_D = np.array([0.5, 1.0, 1.5])  # used where count-of-counts are too sparse
_MIN_D = 0.05  # floor so every context leaves some mass for lower orders


def _check_tokens(tokens: np.ndarray, vocab_size: int, name: str, allow_2d: bool = False) -> np.ndarray:
    """Validate an integer id array and return it as int64 (arithmetic on keys needs it)."""
    arr = np.asarray(tokens)
    want = 2 if allow_2d else 1
    if arr.ndim != want:
        raise BudgetLMError(f"{name} must be a {want}-D integer array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise BudgetLMError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise BudgetLMError(
            f"{name} holds token ids outside [0, vocab_size={vocab_size}): min {arr.min()}, max {arr.max()}"
        )
    return arr


def estimate_discounts(counts: np.ndarray, method: str | None = None) -> np.ndarray:
    """Return (D1, D2, D3+) for one order from its count-of-counts.

    Chen & Goodman's estimates: Y = n1 / (n1 + 2 n2), D_k = k - (k + 1) Y n_{k+1} / n_k.
    ``method`` "single" gives original KN (one D = Y for all counts). Estimates that are
    undefined (some n_k = 0) fall back to 0.5/1.0/1.5, and all are clipped into
    [0.05, k] so that c - D_k >= 0 and gamma > 0 for every seen context.
    """
    n = np.bincount(counts[counts <= 4], minlength=5)[1:5].astype(np.float64)  # n1..n4
    if n[0] == 0 or n[1] == 0:
        y = None
    else:
        y = n[0] / (n[0] + 2 * n[1])
    if method == "single":
        d = np.full(3, y if y is not None else _FALLBACK_D[0])
    else:
        d = _FALLBACK_D.copy()
        for k in (1, 2, 3):
            if y is not None and n[k - 1] > 0:
                d[k - 1] = k - (k + 1) * y * n[k] / n[k - 1]
    return np.clip(d, _MIN_D, [1.0, 2.0, 3.0])


class KneserNeyLM:
    """Interpolated modified Kneser-Ney LM; see the module docstring for the formulas.

    ``_keys[n - 1]`` / ``_counts[n - 1]`` are the sorted n-gram keys and their raw
    (n = order) or continuation (n < order) counts; ``_keys[0]`` is ``arange(V)``.
    These plus the discounts are all :meth:`save` stores; per-context gamma, row
    offsets and discounted entry probabilities are derived in ``_finalize``.
    """

    def __init__(self, order: int, vocab_size: int, discounts: np.ndarray,
                 keys: list[np.ndarray], counts: list[np.ndarray]) -> None:
        self.order = int(order)
        self.vocab_size = int(vocab_size)
        self.discounts = np.asarray(discounts, dtype=np.float64).reshape(self.order, 3)
        self._keys = keys
        self._counts = counts
        self._finalize()

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, tokens: np.ndarray, vocab_size: int, order: int = 4,
              discounts: str | None = None) -> "KneserNeyLM":
        """Count n-grams of a 1-D token corpus and estimate the model.

        ``discounts``: None or "modified" (three Chen & Goodman discounts per order),
        "single" (one discount per order, original KN), or "D1,D2,D3" fixed for all
        orders. End-of-text ids are ordinary tokens: n-grams span documents.
        """
        if not isinstance(order, (int, np.integer)) or not 1 <= order <= MAX_ORDER:
            raise BudgetLMError(f"order must be an integer in 1..{MAX_ORDER}, got {order!r}")
        if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
            raise BudgetLMError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        tok = _check_tokens(tokens, vocab_size, "tokens")
        if tok.size == 0:
            raise BudgetLMError("tokens is empty: need at least one token to build an n-gram model")
        fixed = None
        if discounts not in (None, "modified", "single"):
            try:
                fixed = np.array([float(x) for x in str(discounts).split(",")])
            except ValueError:
                fixed = None
            if fixed is None or fixed.shape != (3,) or not np.all((fixed >= 0) & (fixed <= [1, 2, 3])):
                raise BudgetLMError(f"discounts must be None, 'modified', 'single' or 'D1,D2,D3' "
                                    f"with 0 <= Dk <= k, got {discounts!r}")
        V, L, N = int(vocab_size), tok.size, int(order)

        # ids[n-1][i] = id of the n-gram ending at position i (-1 where i < n-1);
        # rep[n-1][t] = end position of one occurrence of n-gram type t.
        keys, raw = [np.arange(V, dtype=np.int64)], [np.bincount(tok, minlength=V)]
        ids, rep = [tok], [None]
        for n in range(2, N + 1):
            key = ids[-1][n - 2: L - 1] * V + tok[n - 1:]
            table, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
            cur = np.full(L, -1, dtype=np.int64)
            cur[n - 1:] = inv
            occ = np.empty(table.size, dtype=np.int64)
            occ[inv] = np.arange(n - 1, L)  # any occurrence will do
            keys.append(table)
            raw.append(cnt)
            ids.append(cur)
            rep.append(occ)
        counts = []
        for n in range(1, N + 1):
            if n == N:
                counts.append(raw[n - 1].astype(np.int64))  # highest order: raw counts
            else:
                # continuation count N1+(. g): each (n+1)-gram type adds one to its n-suffix,
                # which is the n-gram ending at the same position
                suffix = ids[n - 1][rep[n]]
                counts.append(np.bincount(suffix, minlength=keys[n - 1].size).astype(np.int64))
        if fixed is not None:
            disc = np.tile(fixed, (N, 1))
        else:
            disc = np.stack([estimate_discounts(c, discounts) for c in counts])
        return cls(N, V, disc, keys, counts)

    def _finalize(self) -> None:
        """Derive per-context offsets, c(h), gamma(h) and per-entry (c - D)/c(h)."""
        V = self.vocab_size
        self._start, self._total, self._gamma, self._val, self._val32, self._word = [], [], [], [], [], []
        for n in range(1, self.order + 1):
            keys, cnt = self._keys[n - 1], self._counts[n - 1]
            num_ctx = 1 if n == 1 else self._keys[n - 2].size
            ctx = keys // V
            seen = cnt > 0  # lower orders keep zero-count types: they are contexts one order up
            d = np.where(seen, self.discounts[n - 1][np.clip(cnt, 1, 3) - 1], 0.0)  # D1, D2 or D3+
            total = np.bincount(ctx, weights=cnt, minlength=num_ctx)  # c(h)
            dsum = np.bincount(ctx, weights=d, minlength=num_ctx)  # D1 N1 + D2 N2 + D3 N3+
            self._total.append(total)
            self._gamma.append(np.divide(dsum, total, out=np.ones(num_ctx), where=total > 0))
            self._start.append(np.searchsorted(keys, np.arange(num_ctx + 1, dtype=np.int64) * V))
            denom = total[ctx]
            self._val.append(np.divide(cnt - d, denom, out=np.zeros(keys.size), where=denom > 0))
            self._val32.append(self._val[-1].astype(np.float32))
            self._word.append(keys % V)
        # order 1 has one context and interpolates with the uniform distribution
        self._p1 = self._gamma[0][0] / V + self._val[0]

    # ------------------------------------------------------------------ queries
    def _history(self, contexts: np.ndarray) -> np.ndarray:
        """Validate (B, k) contexts; return the last order-1 tokens, -1-padded on the left."""
        ctx = _check_tokens(contexts, self.vocab_size, "contexts", allow_2d=True)
        h = self.order - 1
        ctx = ctx[:, max(ctx.shape[1] - h, 0):]
        if ctx.shape[1] < h:
            ctx = np.concatenate([np.full((ctx.shape[0], h - ctx.shape[1]), -1, np.int64), ctx], axis=1)
        return ctx

    def _context_ids(self, hist: np.ndarray) -> list[np.ndarray]:
        """For n = 2..order, the id of each history's last n-1 tokens (-1: unseen or too short)."""
        V, out = self.vocab_size, []
        for n in range(2, self.order + 1):
            k = n - 1
            cur = hist[:, -k]  # oldest context token; a 1-gram's id is the token
            for j in range(2, k + 1):  # extend left-to-right through the j-gram tables
                table, tok = self._keys[j - 1], hist[:, j - k - 1]
                key = cur * V + tok
                pos = np.searchsorted(table, key)
                found = (cur >= 0) & (tok >= 0) & (pos < table.size)
                found[found] = table[pos[found]] == key[found]
                cur = np.where(found, pos, -1)
            out.append(cur)
        return out

    def _ctx_stats(self, n: int, cid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(seen, gamma) of order-n contexts; unseen means unknown id or c(h) = 0, gamma = 1."""
        if self._total[n - 1].size == 0:  # no (n-1)-grams at all: corpus shorter than n-1
            return np.zeros(cid.shape, bool), np.ones(cid.shape)
        c = np.maximum(cid, 0)
        seen = (cid >= 0) & (self._total[n - 1][c] > 0)
        return seen, np.where(seen, self._gamma[n - 1][c], 1.0)

    def next_token_probs(self, contexts: np.ndarray) -> np.ndarray:
        """Dense next-token distributions, float32 (B, V), for (B, k) histories of any k.

        Built from the lowest order up. Rows sharing an order-n context are identical up
        to order n, so each order works on its distinct contexts only: new row =
        gamma(h) * parent row, then the observed (h, w) entries are scattered in.
        """
        hist = self._history(contexts)
        B, V = hist.shape[0], self.vocab_size
        P = self._p1.astype(np.float32)[None, :]
        row = np.zeros(B, dtype=np.int64)  # row of P that each batch element uses
        for n, cid in enumerate(self._context_ids(hist), start=2):
            seen, gamma = self._ctx_stats(n, cid)
            if not seen.any():
                continue
            group = np.where(seen, cid, -1 - row)  # unseen contexts keep their parent row
            _, first, inv = np.unique(group, return_index=True, return_inverse=True)
            u_seen, u_cid = seen[first], cid[first]
            newP = P[row[first]]
            newP *= gamma[first].astype(np.float32)[:, None]
            lo = np.where(u_seen, self._start[n - 1][np.maximum(u_cid, 0)], 0)
            lengths = np.where(u_seen, self._start[n - 1][np.maximum(u_cid, 0) + 1], 0) - lo
            total = int(lengths.sum())
            if total:
                # entry index = row start + offset within the row
                entry = np.arange(total) + np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
                flat = np.repeat(np.arange(first.size) * V, lengths) + self._word[n - 1][entry]
                # (row, word) pairs are unique, so buffered fancy += is exact
                newP.reshape(-1)[flat] += self._val32[n - 1][entry]
            P, row = newP, inv.reshape(-1)
        return P[row]

    def next_token_probs_torch(self, contexts: torch.Tensor) -> torch.Tensor:
        """Torch wrapper of :meth:`next_token_probs`; float32 on the input's device."""
        import torch

        probs = self.next_token_probs(contexts.detach().to("cpu").numpy())
        return torch.from_numpy(probs).to(contexts.device)

    def log_prob(self, tokens: np.ndarray) -> np.ndarray:
        """Natural-log probability of tokens[i] given tokens[:i] (truncated to order-1), float64.

        Only the needed entries are looked up, one searchsorted per order: the n-gram
        found ending at position i-1 is the order-(n+1) context of position i.
        """
        tok = _check_tokens(tokens, self.vocab_size, "tokens")
        V = self.vocab_size
        p = self._p1[tok]
        if tok.size == 0:
            return p
        cid = np.concatenate([[-1], tok[:-1]])  # order-2 context: the previous token
        for n in range(2, self.order + 1):
            seen, gamma = self._ctx_stats(n, cid)
            keys = self._keys[n - 1]
            if keys.size == 0:  # corpus shorter than n: every context unseen
                break
            key = cid * V + tok
            pos = np.minimum(np.searchsorted(keys, key), keys.size - 1)
            member = (cid >= 0) & (keys[pos] == key)  # n-gram exists (its count may be 0)
            p = np.where(member, self._val[n - 1][pos], 0.0) + gamma * p  # (c-D)/c(h) + gamma p_{n-1}
            cid = np.concatenate([[-1], np.where(member, pos, -1)[:-1]])
        return np.log(p)

    def sample(self, n_tokens: int, prompt: list[int] | None = None,
               temperature: float = 1.0, seed: int = 0) -> list[int]:
        """Generate ``n_tokens`` new ids (prompt excluded); temperature 0 means greedy."""
        if temperature < 0:
            raise BudgetLMError(f"temperature must be >= 0, got {temperature}")
        rng = np.random.default_rng(seed)
        seq = list(prompt or [])
        _check_tokens(np.asarray(seq, dtype=np.int64), self.vocab_size, "prompt")
        out: list[int] = []
        for _ in range(n_tokens):
            ctx = np.asarray(seq[max(len(seq) - self.order + 1, 0):] if self.order > 1 else [], np.int64)
            p = self.next_token_probs(ctx[None, :])[0].astype(np.float64)
            if temperature == 0:
                nxt = int(np.argmax(p))
            else:
                p = np.exp(np.log(p) / temperature - np.log(p).max() / temperature)
                c = np.cumsum(p)
                nxt = int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), p.size - 1))
            seq.append(nxt)
            out.append(nxt)
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the tables to ``path`` with np.savez (numpy appends .npz if missing)."""
        arrays = {"kind": np.array(_KIND), "order": np.array(self.order),
                  "vocab_size": np.array(self.vocab_size), "discounts": self.discounts}
        for n in range(1, self.order + 1):
            arrays[f"keys_{n}"] = self._keys[n - 1]
            arrays[f"counts_{n}"] = self._counts[n - 1]
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "KneserNeyLM":
        """Read a model written by :meth:`save`; anything else raises BudgetLMError naming path."""
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise BudgetLMError(f"{path}: cannot read an n-gram model file ({e})") from e
        if str(data.get("kind", "")) != _KIND:
            raise BudgetLMError(f"{path}: not a KneserNeyLM file (missing or wrong 'kind' field)")
        try:
            order, V = int(data["order"]), int(data["vocab_size"])
            if not 1 <= order <= MAX_ORDER or V < 1:
                raise ValueError(f"bad order {order} or vocab_size {V}")
            keys = [data[f"keys_{n}"].astype(np.int64) for n in range(1, order + 1)]
            counts = [data[f"counts_{n}"].astype(np.int64) for n in range(1, order + 1)]
            for k, c in zip(keys, counts):
                if k.ndim != 1 or k.shape != c.shape or np.any(np.diff(k) <= 0) or np.any(c < 0):
                    raise ValueError("an n-gram table is not sorted and unique, or has negative counts")
            for n in range(2, order + 1):  # each context id must exist one order down
                ctx = keys[n - 1] // V
                if ctx.size and not 0 <= ctx[0] <= ctx[-1] < keys[n - 2].size:
                    raise ValueError(f"order-{n} table refers to unknown contexts")
            if not np.array_equal(keys[0], np.arange(V)):
                raise ValueError("unigram table must list every token id")
            return cls(order, V, data["discounts"], keys, counts)
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise BudgetLMError(f"{path}: corrupt KneserNeyLM file ({e})") from e

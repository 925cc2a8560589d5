"""Tests for the vectorized interpolated modified Kneser-Ney model (budgetlm.models.ngram)."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from budgetlm.errors import BudgetLMError
from budgetlm.models.ngram import KneserNeyLM


def markov_corpus(vocab: int, length: int, branching: int, seed: int) -> np.ndarray:
    """Tokens from a random sparse 2nd-order Markov chain: each (a, b) has `branching` successors."""
    rng = np.random.default_rng(seed)
    succ = rng.integers(0, vocab, size=(vocab, vocab, branching))
    cum = np.cumsum(rng.dirichlet(np.ones(branching), size=(vocab, vocab)), axis=-1)
    u = rng.random(length)
    out = np.empty(length, dtype=np.int64)
    out[:2] = rng.integers(0, vocab, size=2)
    for i in range(2, length):
        a, b = out[i - 2], out[i - 1]
        out[i] = succ[a, b, min(np.searchsorted(cum[a, b], u[i]), branching - 1)]
    return out


class ReferenceKN:
    """Slow, literal dict implementation of interpolated modified KN (Chen & Goodman)."""

    def __init__(self, tokens: list[int], vocab: int, order: int) -> None:
        self.V, self.N = vocab, order
        raw = {n: Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
               for n in range(1, order + 1)}
        self.adj: dict[int, Counter] = {order: raw[order]}
        for n in range(1, order):  # continuation count: distinct left neighbours
            self.adj[n] = Counter(g[1:] for g in raw[n + 1])
        self.D = {}
        for n in range(1, order + 1):
            coc = Counter(self.adj[n].values())
            n1, n2, n3, n4 = (coc[k] for k in (1, 2, 3, 4))
            y = n1 / (n1 + 2 * n2)
            self.D[n] = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        self.by_ctx: dict[int, dict[tuple, dict[int, int]]] = {}
        for n in range(1, order + 1):
            table: dict[tuple, dict[int, int]] = defaultdict(dict)
            for g, c in self.adj[n].items():
                table[g[:-1]][g[-1]] = c
            self.by_ctx[n] = table

    def prob(self, ctx: tuple, w: int) -> float:
        ctx = ctx[len(ctx) - (self.N - 1):] if self.N > 1 else ()
        p = 1.0 / self.V
        for n in range(1, len(ctx) + 2):
            h = ctx[len(ctx) - (n - 1):] if n > 1 else ()
            entries = self.by_ctx[n].get(h, {})
            total = sum(entries.values())
            if total == 0:
                continue  # unseen context: gamma = 1
            disc = lambda c: self.D[n][min(c, 3) - 1]  # noqa: E731
            gamma = sum(disc(c) for c in entries.values()) / total
            c = entries.get(w, 0)
            p = (max(c - disc(c), 0.0) if c else 0.0) / total + gamma * p
        return p


def test_matches_reference_implementation() -> None:
    # 8-token Markov body plus rare ids 8..11 with 1..4 distinct left neighbours, so that
    # every order has n1..n4 > 0 and the Chen & Goodman estimates are all defined.
    body = markov_corpus(vocab=8, length=270, branching=3, seed=3)
    rare = [0, 8, 1, 9, 2, 9, 0, 10, 1, 10, 2, 10, 0, 11, 1, 11, 2, 11, 3, 11]
    tokens = np.concatenate([body[:130], rare, body[130:]])
    ref = ReferenceKN(tokens.tolist(), 12, 3)
    model = KneserNeyLM.build(tokens.astype(np.uint16), 12, order=3)
    assert ref.D[1][2] != pytest.approx(ref.D[2][2])  # discounts differ per order and count class
    np.testing.assert_allclose(model.discounts, [ref.D[n] for n in (1, 2, 3)], atol=1e-12)
    for k in (0, 1, 2):
        ctxs = np.array(list(itertools.product(range(12), repeat=k)), dtype=np.int64).reshape(12**k, k)
        got = model.next_token_probs(ctxs)
        want = np.array([[ref.prob(tuple(c), w) for w in range(12)] for c in ctxs.tolist()])
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    want_lp = [np.log(ref.prob(tuple(tokens[max(0, i - 2):i].tolist()), int(tokens[i])))
               for i in range(tokens.size)]
    np.testing.assert_allclose(model.log_prob(tokens), want_lp, atol=1e-9)


def test_hand_computed_bigram() -> None:
    # Corpus 0 1 0 1 2 0 1, V=4, fixed D1, D2, D3+ = 0.5, 1.0, 1.5.
    # Continuation counts N1+(. w): w=0 -> {1,2} = 2, w=1 -> {0} = 1, w=2 -> {1} = 1, w=3 -> 0; total 4.
    # gamma() = (1.0 + 0.5 + 0.5) / 4 = 0.5, so p1 = ((2-1)/4, 0.5/4, 0.5/4, 0) + 0.5/4
    p1 = np.array([0.375, 0.25, 0.25, 0.125])
    # context 0: c(0 1) = 3 -> (3 - 1.5)/3 = 0.5, gamma = 1.5/3 = 0.5
    # context 1: c(1 0) = c(1 2) = 1 -> 0.5/2 each, gamma = (0.5 + 0.5)/2 = 0.5
    # context 2: c(2 0) = 1 -> 0.5/1, gamma = 0.5/1 = 0.5;  context 3: unseen -> p1
    want = np.stack([
        np.array([0.0, 0.5, 0.0, 0.0]) + 0.5 * p1,
        np.array([0.25, 0.0, 0.25, 0.0]) + 0.5 * p1,
        np.array([0.5, 0.0, 0.0, 0.0]) + 0.5 * p1,
        p1,
    ])
    model = KneserNeyLM.build(np.array([0, 1, 0, 1, 2, 0, 1]), 4, order=2, discounts="0.5,1.0,1.5")
    np.testing.assert_allclose(model.next_token_probs(np.arange(4)[:, None]), want, atol=1e-7)
    np.testing.assert_allclose(model.next_token_probs(np.zeros((1, 0), np.int64))[0], p1, atol=1e-7)
    assert want[0, 1] == pytest.approx(0.625) and want[1, 0] == pytest.approx(0.4375)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_distributions_sum_to_one(order: int) -> None:
    V = 32  # ids 30, 31 never occur in the corpus
    tokens = markov_corpus(30, 5000, 3, seed=order)
    model = KneserNeyLM.build(tokens, V, order=order)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, V, size=(64, k)) for k in (0, 1, max(order - 1, 0), order + 2)]
    starts = rng.integers(0, 5000 - order - 3, size=64)
    batches.append(np.stack([tokens[s:s + order + 2] for s in starts]))  # seen contexts
    for ctx in batches:
        P = model.next_token_probs(ctx)
        assert P.shape == (ctx.shape[0], V) and P.dtype == np.float32
        np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-5)
        assert P.min() > 0


@pytest.mark.parametrize("order", [1, 2, 4, 5])
def test_log_prob_agrees_with_dense(order: int) -> None:
    V = 40
    model = KneserNeyLM.build(markov_corpus(36, 6000, 3, seed=7), V, order=order)
    unseen = np.random.default_rng(1).integers(0, V, 100)  # includes ids 36..39 never trained on
    seq = np.concatenate([markov_corpus(36, 400, 3, seed=7)[:300], unseen])
    lp = model.log_prob(seq)
    assert lp.shape == seq.shape and np.all(np.isfinite(lp))
    h = order - 1
    for i in range(min(h, seq.size)):  # short histories at the start
        P = model.next_token_probs(seq[None, :i])
        assert np.log(P[0, seq[i]]) == pytest.approx(lp[i], abs=1e-5)
    if h:
        ctx = np.lib.stride_tricks.sliding_window_view(seq, h)[: seq.size - h]
    else:
        ctx = np.zeros((seq.size, 0), np.int64)
    P = model.next_token_probs(ctx)
    np.testing.assert_allclose(np.log(P[np.arange(len(ctx)), seq[h:]]), lp[h:], atol=1e-5)


def test_higher_order_lowers_heldout_perplexity() -> None:
    tokens = markov_corpus(50, 40000, 3, seed=11)
    split = int(0.9 * tokens.size)
    ppl = {n: float(np.exp(-KneserNeyLM.build(tokens[:split], 50, order=n).log_prob(tokens[split:]).mean()))
           for n in (1, 2, 3)}
    assert ppl[3] < ppl[2] < ppl[1]
    assert ppl[3] < 0.5 * ppl[1]
    assert ppl[3] < 4.0  # 3 successors per 2-token context


def test_dtypes_and_torch_wrapper() -> None:
    tokens = markov_corpus(20, 2000, 2, seed=5)
    a = KneserNeyLM.build(tokens.astype(np.uint16), 20, order=3)
    b = KneserNeyLM.build(tokens.astype(np.uint32), 20, order=3)
    ctx = tokens[100:164].reshape(32, 2)
    np.testing.assert_array_equal(a.next_token_probs(ctx), b.next_token_probs(ctx.astype(np.int32)))
    t = a.next_token_probs_torch(torch.from_numpy(ctx))
    assert t.dtype == torch.float32 and t.device.type == "cpu"
    np.testing.assert_array_equal(t.numpy(), a.next_token_probs(ctx))


def test_sample() -> None:
    model = KneserNeyLM.build(markov_corpus(20, 3000, 2, seed=2), 20, order=3)
    s = model.sample(50, prompt=[1, 2], seed=4)
    assert len(s) == 50 and all(0 <= x < 20 for x in s)
    assert s == model.sample(50, prompt=[1, 2], seed=4)
    greedy = model.sample(5, prompt=[1, 2], temperature=0)
    assert greedy[0] == int(np.argmax(model.next_token_probs(np.array([[1, 2]]))[0]))
    assert len(model.sample(3)) == 3


def test_save_load_round_trip(tmp_path) -> None:
    tokens = markov_corpus(25, 3000, 3, seed=9)
    model = KneserNeyLM.build(tokens, 25, order=4)
    path = tmp_path / "kn.npz"
    model.save(path)
    loaded = KneserNeyLM.load(path)
    assert (loaded.order, loaded.vocab_size) == (4, 25)
    np.testing.assert_array_equal(loaded.discounts, model.discounts)
    ctx = np.random.default_rng(0).integers(0, 25, size=(50, 5))
    np.testing.assert_array_equal(loaded.next_token_probs(ctx), model.next_token_probs(ctx))
    np.testing.assert_array_equal(loaded.log_prob(tokens[:500]), model.log_prob(tokens[:500]))


def test_load_rejects_non_models(tmp_path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"definitely not a zip file")
    other = tmp_path / "other.npz"
    np.savez(other, x=np.arange(3))
    broken = tmp_path / "broken.npz"
    KneserNeyLM.build(np.arange(10) % 5, 5, order=2).save(broken)
    with np.load(broken) as z:
        data = dict(z)
    del data["counts_2"]
    np.savez(broken, **data)
    for path in (garbage, other, broken, tmp_path / "missing.npz"):
        with pytest.raises(BudgetLMError, match="missing.npz|garbage.npz|other.npz|broken.npz") as e:
            KneserNeyLM.load(path)
        assert str(path) in str(e.value)


@pytest.mark.parametrize("kwargs, name", [
    (dict(tokens=np.arange(10), vocab_size=10, order=0), "order"),
    (dict(tokens=np.arange(10), vocab_size=10, order=7), "order"),
    (dict(tokens=np.array([], dtype=np.int64), vocab_size=10), "tokens"),
    (dict(tokens=np.array([1, 2, 10]), vocab_size=10), "tokens"),
    (dict(tokens=np.array([1, -1, 2]), vocab_size=10), "tokens"),
    (dict(tokens=np.ones((3, 3), np.int64), vocab_size=10), "tokens"),
    (dict(tokens=np.array([0.5, 1.0]), vocab_size=10), "tokens"),
    (dict(tokens=np.arange(10), vocab_size=0), "vocab_size"),
    (dict(tokens=np.arange(10), vocab_size=10, discounts="kneser"), "discounts"),
    (dict(tokens=np.arange(10), vocab_size=10, discounts="0.5,3.0,1.0"), "discounts"),
])
def test_bad_build_inputs(kwargs: dict, name: str) -> None:
    with pytest.raises(BudgetLMError, match=name):
        KneserNeyLM.build(**kwargs)


def test_bad_query_inputs() -> None:
    model = KneserNeyLM.build(np.arange(100) % 7, 7, order=3)
    with pytest.raises(BudgetLMError, match="contexts"):
        model.next_token_probs(np.array([[1, 7]]))
    with pytest.raises(BudgetLMError, match="contexts"):
        model.next_token_probs(np.array([1, 2]))
    with pytest.raises(BudgetLMError, match="tokens"):
        model.log_prob(np.array([3, 9]))
    with pytest.raises(BudgetLMError, match="temperature"):
        model.sample(3, temperature=-1.0)


def test_corpus_shorter_than_order() -> None:
    model = KneserNeyLM.build(np.array([3, 1]), 5, order=5)
    P = model.next_token_probs(np.array([[3, 1, 3, 1], [0, 0, 0, 3]]))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(np.isfinite(model.log_prob(np.array([3, 1, 4]))))

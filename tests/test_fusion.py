"""Shallow fusion: parsing, each head's distribution, and eval/generation agreement.

Tiny random models on CPU; every assertion compares against an independently computed
value (the model's own log-softmax, a hand-built cache, the stored next token), so a head
that returned uniform or stale numbers would fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from budgetlm.config import model_config
from budgetlm.errors import BudgetLMError
from budgetlm.sample.fusion import SMOOTH, Fuser, FusionSpec, KnnDatastore, parse_fusion
from budgetlm.sample.generate import generate_ids
from budgetlm.models.ngram import KneserNeyLM
from budgetlm.models.transformer import GPT

torch.set_num_threads(1)
V, EOT = 40, 0


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    model = GPT(model_config(n_layer=1, n_head=2, n_embd=16, vocab_size=V, block_size=32)).eval()
    rng = np.random.default_rng(0)
    corpus = rng.integers(1, V, 3000)
    corpus[::50] = EOT  # story boundaries
    ngram = KneserNeyLM.build(corpus, V, 3)
    knn = KnnDatastore.build(model, corpus, 500, k=8, tau=0.1)
    x = torch.from_numpy(rng.integers(1, V, (2, 20)))
    x[0, 7] = EOT  # a story start inside the window: the cache must reset there
    return model, ngram, knn, x


def _fuser(parts, spec):
    _, ngram, knn, _ = parts
    return Fuser(spec, V, EOT, ngram, knn)


def test_parse_spec_fields_and_options():
    s = parse_fusion("ngram:0.2@m.npz, cache:0.1,knn:0.1,mode=log,order=5,decay=0.9,k=4,tau=0.5,knn_max=99")
    assert s.weights == {"ngram": 0.2, "cache": 0.1, "knn": 0.1}
    assert (s.mode, s.ngram_path, s.order, s.decay, s.k, s.tau, s.knn_max) == ("log", "m.npz", 5, 0.9, 4, 0.5, 99)
    assert parse_fusion("cache:0.3").mode == "linear" and parse_fusion("cache:0").active == {}
    assert parse_fusion("ngram:0.7,cache:0.6,mode=log").mode == "log"  # log-linear weights need not sum < 1


@pytest.mark.parametrize("bad", ["", "lstm:0.1", "cache:-0.1", "cache:abc", "cache", "ngram:0.6,cache:0.4",
                                 "cache:0.1,mode=geo", "cache:0.1,foo=1", "cache:0.1,cache:0.2",
                                 "knn:0.1@x.npz", "ngram:0.1,order=9", "cache:0.1,decay=0", "cache:0.1,k=x"])
def test_parse_errors_name_the_flag(bad):
    with pytest.raises(BudgetLMError, match="--fuse"):
        parse_fusion(bad)


@pytest.mark.parametrize("mode", ["linear", "log"])
def test_fused_distributions_sum_to_one_and_differ_from_model(parts, mode):
    model, *_, x = parts
    fuser = _fuser(parts, f"ngram:0.3,cache:0.2,knn:0.2,mode={mode}")
    logp = fuser.logits_fn(model, x)
    assert logp.shape == (2, 20, V) and torch.isfinite(logp).all()
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 20), atol=1e-5, rtol=0)
    base = F.log_softmax(model(x)[0].float(), -1)
    assert (logp - base).abs().max() > 0.05  # the heads really changed something


def test_zero_weights_reproduce_model_exactly(parts):
    model, *_, x = parts
    base = F.log_softmax(model(x)[0].float(), -1)
    for spec in ("ngram:0,cache:0,knn:0", "ngram:0,cache:0,knn:0,mode=log"):
        assert torch.equal(_fuser(parts, spec).logits_fn(model, x), base)


def test_cache_head_mass_only_on_current_story_tokens(parts):
    *_, x = parts
    fuser = _fuser(parts, "cache:0.5,decay=0.9")
    p = fuser._cache_probs(x)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 20), atol=1e-5, rtol=0)
    for b, t in [(0, 3), (0, 12), (1, 19)]:
        start = 8 if b == 0 and t >= 7 else 0  # row 0 has a story start at 7
        ctx = x[b, start:t + 1].tolist()
        want = torch.zeros(V, dtype=torch.float64)
        for s, tok in enumerate(ctx):
            want[tok] += 0.9 ** (len(ctx) - 1 - s)
        want = want / want.sum() * (1 - SMOOTH) + SMOOTH / V
        torch.testing.assert_close(p[b, t].double(), want, atol=1e-6, rtol=1e-5)
        outside = torch.ones(V, dtype=torch.bool)
        outside[ctx] = False
        assert p[b, t][outside].sum() <= SMOOTH + 1e-7
    # at the story start itself there is nothing to copy: uniform
    torch.testing.assert_close(p[0, 7], torch.full((V,), 1 / V), atol=1e-7, rtol=0)


def test_ngram_head_uses_last_tokens_padded_with_end_of_text(parts):
    model, ngram, _, x = parts
    fuser = _fuser(parts, "ngram:0.5")
    ctx = fuser._ngram_contexts(x)  # order 3: two tokens of context
    assert ctx[1, 0].tolist() == [EOT, int(x[1, 0])] and ctx[1, 9].tolist() == x[1, 8:10].tolist()
    want = ngram.next_token_probs(np.array([[EOT, int(x[1, 0])], x[1, 8:10].tolist()]))
    got = fuser._ngram_probs(ctx[1, [0, 9]])
    torch.testing.assert_close(got, torch.from_numpy(want))
    base = F.log_softmax(model(x)[0].float(), -1)[1, 9]
    fused = fuser.logits_fn(model, x)[1, 9]
    torch.testing.assert_close(fused.exp(), 0.5 * base.exp() + 0.5 * torch.from_numpy(want[1]), atol=1e-6, rtol=0)


def test_knn_returns_stored_next_token_for_its_own_hidden_state():
    torch.manual_seed(1)
    model = GPT(model_config(n_layer=2, n_head=2, n_embd=32, vocab_size=V, block_size=16)).eval()
    seq = np.random.default_rng(1).integers(1, V, 50)
    store = KnnDatastore.build(model, seq, 1000, k=8, tau=1e-3, batch_size=2)
    assert store.keys.shape == (49, 32) and store.values.tolist() == seq[1:].tolist()
    for i in (0, 17, 40):  # windows: [0,16), [16,32), [32,48), [48,49)
        w = i // 16
        h = model.hidden_states(torch.from_numpy(seq[None, w * 16:i + 1]))[:, -1]
        p = store.probs(h, V)[0]
        assert int(p.argmax()) == seq[i + 1] and p[seq[i + 1]] > 0.9
    # a blunt temperature spreads the mass over the neighbours instead
    store.tau = 100.0
    assert store.probs(h, V)[0].max() < 0.9


@pytest.mark.parametrize("spec", ["ngram:0.2,cache:0.1,knn:0.1", "ngram:0.4,cache:0.3,knn:0.5,mode=log"])
def test_eval_and_generation_paths_agree(parts, spec):
    model, *_, x = parts
    fuser = _fuser(parts, spec)
    full = fuser.logits_fn(model, x)
    for b, t in [(0, 0), (0, 1), (0, 7), (0, 13), (1, 5), (1, 19)]:
        prefix = x[b:b + 1, :t + 1]
        hidden = model.hidden_states(prefix)[:, -1]
        hook = fuser.logits_hook(prefix, model.lm_head(hidden).float(), hidden)
        torch.testing.assert_close(hook, full[b:b + 1, t], atol=1e-5, rtol=0)


def test_hook_drives_generation(parts):
    model, *_ = parts
    fuser = _fuser(parts, "ngram:0.3,cache:0.3,knn:0.2")
    g = torch.Generator().manual_seed(0)
    out = generate_ids(model, [EOT, 5, 6], 40, temperature=1.0, generator=g, logits_hook=fuser.logits_hook)
    assert len(out) == 40 and all(0 <= t < V for t in out)  # runs past block_size 32 too
    # near-total cache weight at low temperature copies context tokens
    fuser = _fuser(parts, "cache:0.999")
    out = generate_ids(model, [EOT, 5, 6], 20, temperature=0.3, generator=g, logits_hook=fuser.logits_hook)
    assert set(out) <= {5, 6}


def test_build_from_data_dir_and_vocab_mismatch(tmp_path):
    from budgetlm.data.shards import write_shard

    torch.manual_seed(0)
    model = GPT(model_config(n_layer=1, n_head=2, n_embd=16, vocab_size=V, block_size=16)).eval()
    toks = np.random.default_rng(2).integers(0, V, 400)
    write_shard(tmp_path / "train_000000.bin", toks, V)

    class Tok:
        eot_id = EOT

    fuser = Fuser.build(model, tmp_path, "ngram:0.1,knn:0.1,order=2,knn_max=100", Tok())
    assert fuser.ngram.order == 2 and fuser.knn.keys.shape == (100, 16)
    fuser.ngram.save(tmp_path / "ng.npz")
    loaded = Fuser.build(model, None, f"ngram:0.1@{tmp_path / 'ng.npz'}", Tok())
    assert loaded.ngram.order == 2
    with pytest.raises(BudgetLMError, match="--fuse"):
        Fuser.build(model, None, "knn:0.1", Tok())
    with pytest.raises(BudgetLMError, match="vocabulary"):
        Fuser(FusionSpec({"ngram": 0.1}), V + 1, EOT, fuser.ngram)

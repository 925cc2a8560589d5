import torch

from budgetlm.config import model_config
from budgetlm.sample.generate import filter_logits, generate_ids
from budgetlm.models.transformer import GPT


def _greedy_no_cache(model, ids, n):
    ids = list(ids)
    out = []
    for _ in range(n):
        logits, _ = model(torch.tensor([ids[-model.cfg.block_size:]]))
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        ids.append(nxt)
    return out


def test_kv_cache_matches_full_forward_for_each_variant():
    torch.manual_seed(0)
    for kw in ({}, dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False, tie_embeddings=False)):
        m = GPT(model_config(n_layer=2, n_head=4, n_embd=32, vocab_size=97, block_size=64, **kw)).eval()
        prompt = [1, 5, 9, 11]
        assert generate_ids(m, prompt, 30, temperature=None) == _greedy_no_cache(m, prompt, 30)


def test_generation_past_block_size_keeps_going():
    m = GPT(model_config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, block_size=16)).eval()
    assert len(generate_ids(m, [1, 2, 3], 40, temperature=1.0, generator=torch.Generator().manual_seed(0))) == 40


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    k2 = filter_logits(logits, 1.0, 2, 1.0)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = torch.softmax(logits, -1)[0]  # ~[0.64, 0.24, 0.09, 0.03]
    tp = filter_logits(logits, 1.0, 0, 0.7)
    assert torch.isfinite(tp[0, :2]).all() and torch.isinf(tp[0, 2:]).all() and p[0] < 0.7 < p[:2].sum()


def test_stop_token_ends_generation():
    torch.manual_seed(0)
    m = GPT(model_config(n_layer=1, n_head=2, n_embd=16, vocab_size=20, block_size=32)).eval()
    first = generate_ids(m, [1], 1, temperature=None)[0]
    assert generate_ids(m, [1], 10, temperature=None, stop_id=first) == []
    assert len(generate_ids(m, [1], 10, temperature=None)) == 10

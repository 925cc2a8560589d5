"""LSTM LM: the GPT protocol (forward, cache, head, counts) and a few real training steps."""

import json

import pytest
import torch

from budgetlm.config import EvalConfig, OptimConfig, TrainConfig, model_config
from budgetlm.errors import BudgetLMError
from budgetlm.sample.generate import generate_ids
from budgetlm.models import build_model
from budgetlm.models.lstm import LSTMLM


def tiny(**kw):
    base = dict(arch="lstm", n_layer=2, n_embd=32, vocab_size=61, block_size=32)
    base.update(kw)
    return model_config(**base)


def _greedy_no_cache(model, ids, n):
    ids, out = list(ids), []
    for _ in range(n):
        logits, _ = model(torch.tensor([ids[-model.cfg.block_size:]]))
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        ids.append(nxt)
    return out


def test_forward_shapes_loss_and_tying():
    torch.manual_seed(0)
    m = build_model(tiny())
    assert isinstance(m, LSTMLM) and m.lm_head.weight is m.wte.weight
    x = torch.randint(0, 61, (3, 10))
    logits, loss = m(x, x)
    assert logits.shape == (3, 10, 61)
    assert loss.ndim == 0 and abs(loss.item() - torch.log(torch.tensor(61.0)).item()) < 0.3  # ~uniform at init
    assert m(x)[1] is None
    untied = build_model(tiny(tie_embeddings=False, vocab_multiple=64))
    assert untied.num_params() > m.num_params()
    assert untied(x)[0].shape[-1] == 61  # padding columns dropped
    assert m.flops_per_token(10) == m.flops_per_token(999) == 6 * m.num_params()  # no attention term
    m.set_recompute(2)  # accepted, a no-op


def test_n_embd_need_not_divide_heads():
    assert build_model(tiny(n_embd=30, n_head=4)).num_params() > 0


def test_cached_greedy_equals_full_forward():
    torch.manual_seed(1)
    m = build_model(tiny(dropout=0.1)).eval()  # eval() turns dropout off
    prompt = [1, 5, 9, 11]
    assert generate_ids(m, prompt, 20, temperature=None) == _greedy_no_cache(m, prompt, 20)


def test_cache_carries_state_across_calls():
    torch.manual_seed(2)
    m = build_model(tiny()).eval()
    x = torch.randint(0, 61, (2, 12))
    full = m.hidden_states(x)
    cache = m.new_cache(2)
    parts = [m.hidden_states(x[:, :5], cache)] + [m.hidden_states(x[:, i:i + 1], cache) for i in range(5, 12)]
    assert cache.pos == 12
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_generation_past_block_size():
    m = build_model(tiny(block_size=8)).eval()
    assert len(generate_ids(m, [1, 2, 3], 30, temperature=1.0, generator=torch.Generator().manual_seed(0))) == 30


def test_unknown_arch_names_the_flag():
    with pytest.raises(BudgetLMError, match="--arch"):
        model_config(arch="rnn")


def test_trains_with_the_trainer(synth_data, tmp_path):
    from budgetlm.train.trainer import train
    cfg = TrainConfig(budget="6-steps", batch_size=4, seq_len=32, out_dir=str(tmp_path), progress=False, log_every=1,
                      seed=3, threads=1, optim=OptimConfig(lr=1e-2), eval=EvalConfig(final_eval_tokens=1024))
    info = train(tiny(n_embd=48), cfg, synth_data, log=lambda *_: None)
    losses = info.extra["losses"]
    assert info.steps == 6 and all(map(lambda v: v == v, losses)) and losses[-1] < losses[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"]["arch"] == "lstm" and summary["val_bpb"] > 0
    from budgetlm.report.summary import load_model
    model, tok, _ = load_model(tmp_path)  # the checkpoint round-trips (tied head stored once)
    assert isinstance(model, LSTMLM)

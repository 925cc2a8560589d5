"""story_eval with a tiny random GPT and a tiny BPE: shape of the result, determinism, prompts."""

from __future__ import annotations

import pytest
import torch

from budgetlm.config import model_config
from budgetlm.data.tokenizers import build_tokenizer
from budgetlm.errors import BudgetLMError
from budgetlm.eval.story_eval import STORY_PROMPTS, story_eval
from budgetlm.models.transformer import GPT

torch.set_num_threads(1)
METRIC_KEYS = {"rep_ngram_3", "rep_ngram_4", "doubled_tokens", "distinct_1", "distinct_2", "length_words",
               "ends_properly", "name_consistency", "new_names_midstory", "n_stories"}


@pytest.fixture(scope="module")
def model_and_tok():
    texts = list(STORY_PROMPTS) + ["The cat sat on the mat. It was happy.", "Lily and Tom played ball all day."]
    tok = build_tokenizer("bpe:300", iter(texts * 5))
    torch.manual_seed(0)
    model = GPT(model_config(n_layer=1, n_head=2, n_embd=16, vocab_size=tok.vocab_size, block_size=64)).eval()
    return model, tok


def test_returns_n_scored_stories_from_cycled_prompts(model_and_tok):
    model, tok = model_and_tok
    out = story_eval(model, tok, n=len(STORY_PROMPTS) + 2, seed=3, max_new_tokens=12)
    assert len(STORY_PROMPTS) >= 10
    stories = out["stories"]
    assert len(stories) == len(STORY_PROMPTS) + 2
    assert [s["prompt"] for s in stories[-2:]] == list(STORY_PROMPTS[:2])  # cycled
    assert all(s["text"].startswith(s["prompt"]) for s in stories)
    assert set(out["story_metrics"]) == METRIC_KEYS and out["story_metrics"]["n_stories"] == len(stories)
    assert 0 < out["generation"]["new_tokens_mean"] <= 12


def test_same_seed_same_stories_other_seed_differs(model_and_tok):
    model, tok = model_and_tok
    a = story_eval(model, tok, n=3, seed=7, max_new_tokens=10)
    b = story_eval(model, tok, n=3, seed=7, max_new_tokens=10)
    c = story_eval(model, tok, n=3, seed=8, max_new_tokens=10)
    assert a["stories"] == b["stories"] and a["story_metrics"] == b["story_metrics"]
    assert a["stories"] != c["stories"]


def test_lowercase_prompts_and_hook_are_used(model_and_tok):
    model, tok = model_and_tok
    calls = []

    def hook(ids, logits, hidden):
        calls.append(ids.shape[1])
        return logits

    out = story_eval(model, tok, n=2, max_new_tokens=5, lowercase_prompts=True, logits_hook=hook)
    assert [s["prompt"] for s in out["stories"]] == [p.lower() for p in STORY_PROMPTS[:2]]
    assert len(calls) >= 2
    with pytest.raises(BudgetLMError):
        story_eval(model, tok, n=0)

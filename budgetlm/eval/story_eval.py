"""Generate stories from fixed prompts and score them, so runs can be compared on the stories
themselves (repetition, names, endings), not only on validation loss.

The prompts are a fixed list, cycled, and story i is sampled with seed ``seed + i``: the
same model and seed give the same stories, and two models are judged on the same openers.
"""

from __future__ import annotations

import torch

from budgetlm.data.tokenizers import Tokenizer
from budgetlm.errors import BudgetLMError
from budgetlm.eval.story_metrics import score_stories
from budgetlm.sample.generate import LogitsHook, sample_text

# TinyStories-style openers; most introduce a named character, so name consistency has
# something to check (a story that switches Lily to Sue mid-way scores lower).
STORY_PROMPTS: tuple[str, ...] = (
    "Once upon a time, there was a little girl named Lily",
    "Tom and his dog Max went to the park",
    "One day, a little boy named Ben found a shiny rock",
    "Once upon a time, there was a big red ball named Bob",
    "Sara and her mom went to the store to buy",
    "Once upon a time, in a small house, lived a cat named Kitty",
    "Tim wanted to fly like a bird",
    "Anna had a new toy. It was a blue truck",
    "One sunny day, Sam and his friend Mia played in the garden",
    "Once upon a time, there was a little bunny named Fluffy",
    "Lucy saw a big tree in the forest",
    "Jack did not want to share his cookies with his sister Emma",
)


def story_eval(model: torch.nn.Module, tokenizer: Tokenizer, n: int, seed: int = 0, max_new_tokens: int = 256,
               temperature: float | None = 0.8, top_p: float = 0.95, logits_hook: LogitsHook | None = None,
               lowercase_prompts: bool = False) -> dict:
    """Sample ``n`` stories (prompts cycled) and score them with :func:`score_stories`.

    Returns ``{"story_metrics": {metric: mean}, "stories": [{"prompt", "text"}, ...],
    "generation": {"new_tokens_mean", "tokens_per_s"}}``; ``text`` includes the prompt,
    which is what the metrics score. ``lowercase_prompts`` is for models trained on
    lower-cased data, where a capitalised prompt is out of distribution.
    """
    if not isinstance(n, int) or n < 1:
        raise BudgetLMError(f"story eval: number of stories must be a positive integer, got {n!r}")
    if max_new_tokens < 1:
        raise BudgetLMError(f"story eval: max_new_tokens must be positive, got {max_new_tokens}")
    prompts = [STORY_PROMPTS[i % len(STORY_PROMPTS)] for i in range(n)]
    if lowercase_prompts:
        prompts = [p.lower() for p in prompts]
    samples = [sample_text(model, tokenizer, p, max_new_tokens, temperature=temperature, top_k=0, top_p=top_p,
                           seed=seed + i, logits_hook=logits_hook) for i, p in enumerate(prompts)]
    metrics = score_stories([s.text for s in samples], prompts)
    new_tokens = sum(len(s.tokens) for s in samples)
    seconds = sum(s.seconds for s in samples)
    return {
        "story_metrics": metrics,
        "stories": [{"prompt": p, "text": s.text} for p, s in zip(prompts, samples)],
        "generation": {"new_tokens_mean": new_tokens / n, "tokens_per_s": new_tokens / max(seconds, 1e-9)},
    }

"""Story metrics on hand-written good and bad stories.

Every assertion contrasts a flawed story with a clean one or checks an exact
value, so a metric that always returned the same number would fail.
"""

from __future__ import annotations

import pytest

from budgetlm.errors import BudgetLMError
from budgetlm.eval.story_metrics import score_stories, score_story

CLEAN = (
    "Once upon a time, there was a little girl named Lily. She loved to play with her red ball "
    "in the park. One day, Lily saw a small dog sitting under a tree. \"Hello, little dog!\" said "
    "Lily. The dog wagged its tail and ran to her. Lily and the dog played together until the sun "
    "went down. Then Lily went home with a big smile."
)
GLITCHY = "One One day, Tom went to the park,, and he saw a bird. The bird was blue. Tom was happy."
LOOPING = (
    "Lily went to the park. She saw a dog. She saw a dog. She saw a dog. She saw a dog. "
    "She saw a dog. She saw a dog."
)
NAME_SWAP = (
    "Once upon a time, there was a girl named Lily. Lily liked to play in the garden. One day, "
    "Lily found a red flower. Max picked the flower. Max put it in a pot. Max was very happy."
)
TRUNCATED = "Once upon a time, there was a boy named Tim. He liked to play with his"


def test_clean_story_scores_well() -> None:
    s = score_story(CLEAN)
    assert s["rep_ngram_3"] == 0.0
    assert s["rep_ngram_4"] == 0.0
    assert s["doubled_tokens"] == 0.0
    assert s["ends_properly"] == 1.0
    assert s["name_consistency"] == 1.0
    assert s["new_names_midstory"] == 0.0
    assert s["length_words"] == 66.0


def test_doubled_words_and_punctuation_are_counted() -> None:
    s = score_story(GLITCHY)
    # "One One" and ",," in 20 words -> 2 per 20 words = 10 per 100 words.
    assert s["length_words"] == 20.0
    assert s["doubled_tokens"] == pytest.approx(10.0)
    assert score_story("The cat sat on the mat. It was warm.")["doubled_tokens"] == 0.0


@pytest.mark.parametrize(
    "text, expected_count",
    [
        ("Lily looked around... and then she smiled.", 0),  # ellipsis is legitimate
        ("Lily looked around… and then she smiled.", 0),  # unicode ellipsis too
        ("Lily looked around.. and then she smiled.", 1),
        ("Lily looked around. . and then she smiled.", 1),
        ("Lily looked around, , and then she smiled.", 1),
        ("Lily looked around.... and then she smiled.", 1),
        ("Lily looked around ,,, and then she smiled.", 2),
        ("Lily looked around and and then she smiled.", 1),
        ("Lily had had a long day and then she smiled.", 0),  # legitimate English doubling
        ("Wow!! Lily looked around and then she smiled.", 0),  # emphatic, not counted
    ],
)
def test_doubled_tokens_rules(text: str, expected_count: int) -> None:
    s = score_story(text)
    assert s["doubled_tokens"] == pytest.approx(100.0 * expected_count / s["length_words"])


def test_looping_story_has_high_repetition() -> None:
    loop = score_story(LOOPING)
    clean = score_story(CLEAN)
    assert loop["rep_ngram_3"] > 0.5
    assert loop["rep_ngram_4"] > 0.5
    assert loop["rep_ngram_3"] > clean["rep_ngram_3"] + 0.5


def test_rep_ngram_exact_value() -> None:
    # 3-grams: abc, bca, cab, abc -> one of four repeats an earlier one.
    assert score_story("a b c a b c")["rep_ngram_3"] == pytest.approx(0.25)
    assert score_story("a b c a b c")["rep_ngram_4"] == pytest.approx(0.0)
    assert score_story("a b")["rep_ngram_3"] == 0.0


def test_name_change_midstory_is_flagged() -> None:
    s = score_story(NAME_SWAP)
    # Lily x3 (introduced), Max x3 (appears in sentence 4) -> 3/6.
    assert s["name_consistency"] == pytest.approx(0.5)
    assert s["new_names_midstory"] == 1.0
    assert s["name_consistency"] < score_story(CLEAN)["name_consistency"]


def test_names_from_prompt_count_as_introduced() -> None:
    prompt = "Write a story about Lily and her friend Max."
    s = score_story(NAME_SWAP, prompt=prompt)
    assert s["name_consistency"] == 1.0
    assert s["new_names_midstory"] == 0.0


def test_common_capitalized_words_are_not_names() -> None:
    text = (
        "Mom and Dad went out. I stayed home. Suddenly the door opened. The cat came in. "
        "Oh, it was Mom! \"Look at this,\" she said. One day we will go to the park."
    )
    s = score_story(text)
    assert s["name_consistency"] == 1.0
    assert s["new_names_midstory"] == 0.0


def test_honorific_does_not_split_sentence_and_quote_continuation() -> None:
    # "Mr." does not end a sentence, and '"Hi!" said Tom.' is one sentence, so Brown and
    # Tom are both introduced within the first two sentences.
    text = '"Hi!" said Tom. Tom met Mr. Brown at the shop. Tom and Mr. Brown laughed. Brown smiled.'
    s = score_story(text)
    assert s["name_consistency"] == 1.0
    assert s["new_names_midstory"] == 0.0


def test_truncated_story_does_not_end_properly() -> None:
    assert score_story(TRUNCATED)["ends_properly"] == 0.0
    assert score_story("He went to the.")["ends_properly"] == 0.0  # dangling article
    assert score_story("He looked at the sky and...")["ends_properly"] == 0.0  # trailing off
    assert score_story("")["ends_properly"] == 0.0


@pytest.mark.parametrize(
    "ending", ["They were happy.", "They were happy!", "Were they happy?", '"We are happy!"', "They were happy.”"]
)
def test_proper_endings(ending: str) -> None:
    assert score_story("Tim played all day. " + ending)["ends_properly"] == 1.0


def test_special_tokens_are_ignored() -> None:
    s = score_story("Tim played all day. He was happy.<|endoftext|>")
    assert s["ends_properly"] == 1.0
    assert s["length_words"] == 7.0


def test_distinct_is_lower_for_repetitive_corpus() -> None:
    diverse = [CLEAN, NAME_SWAP, "A brave fox jumped over a sleepy bear near the river."]
    repetitive = [LOOPING, LOOPING, LOOPING]
    d = score_stories(diverse)
    r = score_stories(repetitive)
    assert r["distinct_1"] < d["distinct_1"]
    assert r["distinct_2"] < d["distinct_2"]
    # Corpus-level: three copies of one story have a third the distinct bigrams of one copy.
    single = score_story(LOOPING)
    assert r["distinct_2"] == pytest.approx(single["distinct_2"] / 3)
    assert r["n_stories"] == 3.0


def test_score_stories_means_and_validation() -> None:
    res = score_stories([CLEAN, TRUNCATED], prompts=["", ""])
    assert res["ends_properly"] == pytest.approx(0.5)
    assert res["length_words"] == pytest.approx((66 + 16) / 2)
    with pytest.raises(BudgetLMError, match="2 stories but 1 prompts"):
        score_stories([CLEAN, TRUNCATED], prompts=[""])
    with pytest.raises(BudgetLMError, match="no stories"):
        score_stories([])

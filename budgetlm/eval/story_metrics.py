"""Story-quality metrics that need no external model.

Why: driving validation loss down does not guarantee better stories. Small
models trained hard on TinyStories-like data have shown ",,", "One One day",
looping repetition and characters whose names change mid-story. These cheap,
deterministic text statistics catch those failures so they can be tracked next
to perplexity. They are heuristics for English children's stories, not a
substitute for reading samples or for an LLM judge (``budgetlm.eval.judge``).

Tokenization. Special tokens of the form ``<|...|>`` (e.g. ``<|endoftext|>``)
are removed first. A *word* is a maximal run of letters/digits, optionally
joined by inner apostrophes ("didn't", "Lily's"); curly apostrophes count as
straight ones. "..." and "…" are one *ellipsis* token; every other
non-space, non-word character is a one-character punctuation token. N-gram
metrics use lowercased words only (punctuation ignored); n-grams never cross
story boundaries.

Metrics returned by :func:`score_story` (all floats):

``rep_ngram_3``, ``rep_ngram_4``
    Of the word n-grams in the story (positions 0..W-n), the fraction that
    equal some n-gram at an earlier position of the same story. 0.0 for no
    repetition, approaching 1.0 for a loop; 0.0 when the story has fewer than
    n words. Example: "a b c a b c" has 3-grams abc, bca, cab, abc -> 1/4.
``doubled_tokens``
    Doubling glitches per 100 words (0.0 for an empty story). Counted:
    (a) two adjacent words (no token between them) equal case-insensitively,
    e.g. "One One", "the the" -- except words in ``LEGIT_DOUBLES`` ("had had",
    "that that", "very very", "no no", ...), which are ordinary English;
    (b) two adjacent punctuation tokens, whitespace between allowed, both from
    ``. , ; :`` or ellipsis, e.g. ",,", ", ,", "..", ". .", ".,", "....". A
    lone "..." or "…" is a legitimate ellipsis and is NOT counted; "...."
    counts once (ellipsis + "."). "!!", "?!" and "!," are not counted
    (emphatic dialogue is normal in children's stories). A run of k such
    tokens counts k-1.
``distinct_1``, ``distinct_2``
    Unique word unigrams (bigrams) / total unigrams (bigrams), lowercased;
    per story here, pooled over the corpus in :func:`score_stories`. 0.0
    when there are no n-grams. Lower means more repetitive text; note the
    value falls naturally with length, so compare samples of similar length.
``length_words``
    Number of word tokens.
``ends_properly``
    1.0 if, after trailing whitespace and closing quotes/brackets
    (``" ” ’ ' )``) are stripped, the text ends in ".", "!" or "?" but not
    in an ellipsis (trailing off), AND the last sentence looks complete: the
    text has at least one word and its last word is not in ``DANGLING_ENDINGS``
    (articles, conjunctions, possessives like "the", "and", "his": "He went
    to the." is cut off). Otherwise 0.0.
``name_consistency``, ``new_names_midstory``
    Heuristic for "Lily becomes Max halfway". A *name form* is a word that
    (after dropping a possessive 's) is alphabetic, has a capital first letter
    and lowercase rest, has at least two letters and whose lowercase is not in
    ``COMMON_WORDS`` ("I", "Mom", "Dad", "The", "Suddenly", "Oh", ...). It is
    a *name* if it occurs, in prompt or story, capitalized at a position that
    is not sentence-initial; or if all its occurrences are sentence-initial
    (sentence start, or directly after an opening quote) and the word never
    occurs in lowercase in prompt or story (so "Max went home." counts, but
    "Look!" does not if "look" appears elsewhere). Every occurrence of a
    name in the story is a *mention*. Names are *introduced* if they occur in
    the prompt or in the first two sentences of the story.
    ``name_consistency`` = mentions of introduced names / all mentions (1.0
    when there are no mentions). ``new_names_midstory`` = number of distinct
    names whose first story mention is after the first two sentences and that
    are not in the prompt. Sentences end at ".", "!", "?" or ellipsis, except
    after "Mr", "Mrs", "Ms", "Dr", "St", and except when the next word is
    lowercase ('"Hi!" said Tom.' is one sentence).
    Limits: places and objects ("Candyland", "Teddy") count as names, so a
    story that legitimately introduces a new character or place later is
    penalized; names that are also in ``COMMON_WORDS`` ("Will", "May") are
    never counted, and other sentence-initial names that also occur as a
    lowercase word ("Rose" next to "the sun rose") are counted only where
    they appear mid-sentence; a one-off capitalized
    imperative at sentence start ("Run!") may be taken for a name; only
    English capitalization conventions are understood.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from budgetlm.errors import BudgetLMError

_SPECIAL_RE = re.compile(r"<\|[^|>]*\|>")
_TOKEN_RE = re.compile(r"\.\.\.|…|[^\W_]+(?:['’][^\W_]+)*|[^\w\s]")
_WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
ELLIPSIS = "…"
_DOUBLE_PUNCT = frozenset({".", ",", ";", ":", ELLIPSIS})
_SENT_END = frozenset({".", "!", "?", ELLIPSIS})
_QUOTES = frozenset({'"', "“", "'", "‘"})
_HONORIFICS = frozenset({"mr", "mrs", "ms", "dr", "st"})

LEGIT_DOUBLES = frozenset({"had", "that", "very", "no", "ha", "bye", "yes", "so", "go", "now", "come"})
DANGLING_ENDINGS = frozenset(
    "the a an and or but nor my your his their our its very of because if than".split()
)
COMMON_WORDS = frozenset(
    """
    i me my mine we us our you your he him his she her it its they them their
    the a an this that these those there here what why how where who when which
    once one two three four five then but and so or nor if because as while after before
    suddenly finally later soon next last first every each all some many most much
    other another any no not never always sometimes often even just only also still
    now today tomorrow yesterday tonight together inside outside meanwhile however
    instead maybe perhaps again too very little big soon at in on with from to for by
    up down out into over under near around behind across through about like
    yes yeah yay wow oh ooh oops ouch uh um hmm ah aha ha hey hi hello bye goodbye
    please thanks thank sorry okay ok sure good great nice well look let lets come go
    stop wait help see listen watch try do don can will would could should shall may
    might must is are was were be been am have has had did does get got make made
    run jump play eat give take keep tell said say says think know want like love
    mom mommy mum mummy mama ma dad daddy papa pa grandma grandpa granny grandmother
    grandfather nana aunt auntie uncle sir madam miss mister mr mrs ms dr teacher god
    the end monday tuesday wednesday thursday friday saturday sunday
    everyone everybody everything someone somebody something nobody nothing
    once upon time day night morning
    """.split()
)


def _clean(text: str) -> str:
    return _SPECIAL_RE.sub(" ", text).replace("’", "'")


def _tokens(text: str) -> list[tuple[str, int, int]]:
    """(token, start, end) with "..." mapped to the single ellipsis token."""
    out = []
    for m in _TOKEN_RE.finditer(text):
        tok = ELLIPSIS if m.group() in ("...", ELLIPSIS) else m.group()
        out.append((tok, m.start(), m.end()))
    return out


def _is_word(tok: str) -> bool:
    return bool(_WORD_RE.fullmatch(tok))


def _words(text: str) -> list[str]:
    return [t.lower() for t, _, _ in _tokens(_clean(text)) if _is_word(t)]


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _rep_ngram(words: Sequence[str], n: int) -> float:
    grams = _ngrams(words, n)
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def _distinct(word_lists: Iterable[Sequence[str]], n: int) -> float:
    total, unique = 0, set()
    for words in word_lists:
        grams = _ngrams(words, n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def _doubled_count(toks: Sequence[tuple[str, int, int]]) -> int:
    count = 0
    for (a, _, a_end), (b, b_start, _) in zip(toks, toks[1:]):
        if _is_word(a) and _is_word(b):
            la = a.lower()
            count += la == b.lower() and la not in LEGIT_DOUBLES
        elif a in _DOUBLE_PUNCT and b in _DOUBLE_PUNCT:
            count += 1
    return count


def _word_positions(toks: Sequence[tuple[str, int, int]]) -> list[tuple[str, int, bool]]:
    """(word, sentence index, sentence-initial?) for every word token."""
    out: list[tuple[str, int, bool]] = []
    sent, pending, prev_word = 0, False, ""
    prev: tuple[str, int, int] | None = None
    for tok in toks:
        t, start, _ = tok
        if _is_word(t):
            after_open_quote = prev is not None and prev[0] in _QUOTES and prev[2] == start
            initial = not out
            if pending and t[0].isupper():
                sent += 1 if out else 0
                initial = True
            pending = False
            out.append((t, sent, initial or after_open_quote))
            prev_word = t.lower()
        elif t in _SENT_END and not (t == "." and prev_word in _HONORIFICS):
            pending = True
        prev = tok
    return out


def _name_form(word: str) -> str | None:
    w = word[:-2] if word.endswith("'s") else word
    if len(w) >= 2 and w.isalpha() and w[0].isupper() and w[1:].islower() and w.lower() not in COMMON_WORDS:
        return w
    return None


def _name_stats(story_pos: list[tuple[str, int, bool]], prompt_pos: list[tuple[str, int, bool]]) -> tuple[float, float]:
    everything = story_pos + prompt_pos
    lower_vocab = {w for w, _, _ in everything if w.islower()}
    non_initial, initial_only = set(), set()
    for w, _, initial in everything:
        form = _name_form(w)
        if form is None:
            continue
        (initial_only if initial else non_initial).add(form)
    names = non_initial | {f for f in initial_only if f.lower() not in lower_vocab}
    prompt_names = {f for w, _, _ in prompt_pos if (f := _name_form(w)) in names}
    introduced = prompt_names | {f for w, s, _ in story_pos if s < 2 and (f := _name_form(w)) in names}
    mentions = [(f, s) for w, s, _ in story_pos if (f := _name_form(w)) in names]
    if not mentions:
        return 1.0, 0.0
    consistency = sum(f in introduced for f, _ in mentions) / len(mentions)
    new_mid = {f for f, s in mentions if f not in introduced}
    return consistency, float(len(new_mid))


def _ends_properly(text: str, positions: list[tuple[str, int, bool]]) -> float:
    stripped = text.rstrip().rstrip("\"”’')").rstrip()
    if not stripped or stripped[-1] not in ".!?" or stripped.endswith("..."):
        return 0.0
    if not positions:
        return 0.0
    last_word = positions[-1][0].lower()
    return 0.0 if last_word in DANGLING_ENDINGS else 1.0


def score_story(text: str, prompt: str = "") -> dict[str, float]:
    """Score one story; ``prompt`` only informs which names count as introduced."""
    clean = _clean(text)
    toks = _tokens(clean)
    positions = _word_positions(toks)
    words = [w.lower() for w, _, _ in positions]
    n_words = len(words)
    consistency, new_mid = _name_stats(positions, _word_positions(_tokens(_clean(prompt))))
    return {
        "rep_ngram_3": _rep_ngram(words, 3),
        "rep_ngram_4": _rep_ngram(words, 4),
        "doubled_tokens": 100.0 * _doubled_count(toks) / n_words if n_words else 0.0,
        "distinct_1": _distinct([words], 1),
        "distinct_2": _distinct([words], 2),
        "length_words": float(n_words),
        "ends_properly": _ends_properly(clean, positions),
        "name_consistency": consistency,
        "new_names_midstory": new_mid,
    }


def score_stories(stories: list[str], prompts: list[str] | None = None) -> dict[str, float]:
    """Mean of :func:`score_story` over stories, with corpus-level distinct-n.

    ``distinct_1``/``distinct_2`` are pooled over all stories (unique n-grams in
    the corpus / total n-grams), because averaging per-story values hides
    models that tell the same story every time. Adds ``n_stories``.
    """
    if not stories:
        raise BudgetLMError("score_stories: no stories given")
    if prompts is None:
        prompts = [""] * len(stories)
    if len(prompts) != len(stories):
        raise BudgetLMError(f"score_stories: {len(stories)} stories but {len(prompts)} prompts")
    per = [score_story(s, p) for s, p in zip(stories, prompts)]
    result = {k: sum(r[k] for r in per) / len(per) for k in per[0]}
    word_lists = [_words(s) for s in stories]
    result["distinct_1"] = _distinct(word_lists, 1)
    result["distinct_2"] = _distinct(word_lists, 2)
    result["n_stories"] = float(len(stories))
    return result

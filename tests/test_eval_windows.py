"""A capped eval scores windows spread over the whole validation split, the same ones each time."""

import numpy as np
import pytest

from budgetlm.data.loader import eval_batches, eval_windows
from budgetlm.errors import BudgetLMError


def test_uncapped_eval_scores_every_window_in_order():
    assert eval_windows(101, 10).tolist() == list(range(10))
    assert eval_windows(101, 10, max_tokens=10_000).tolist() == list(range(10))


def test_capped_eval_spreads_over_the_split():
    assert eval_windows(1001, 10, max_tokens=30).tolist() == [0, 33, 66]
    # two held-out "books": a capped eval of two windows reads one window of each
    tokens = np.concatenate([np.full(500, 1), np.full(501, 2)]).astype(np.int64)
    xs = [x for x, _ in eval_batches(tokens, 10, batch_size=8, max_tokens=20)]
    firsts = sorted(int(row[0]) for x in xs for row in x)
    assert firsts == [1, 2]


def test_eval_windows_refuses_a_split_shorter_than_one_window():
    with pytest.raises(BudgetLMError, match="need more than seq_len"):
        eval_windows(10, 10)

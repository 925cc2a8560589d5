"""The eval-speed probe that sizes a time budget's eval points and final eval."""

import time

from budgetlm.config import TrainConfig
from budgetlm.train.distributed import DistContext
from budgetlm.train.evaluator import Evaluator


class _FirstCallSlow(Evaluator):
    """An evaluator whose first validation pays a one-off cost, as a compiled eval graph does."""

    def __init__(self, cfg: TrainConfig) -> None:  # no model: only the timing is under test
        self.cfg, self.ctx, self.calls = cfg, DistContext(), 0

    def validation(self, max_tokens: int) -> dict[str, float]:
        self.calls += 1
        time.sleep(0.5 if self.calls == 1 else 0.01)
        return {"val_tokens": max_tokens}


def test_speed_probe_leaves_out_the_first_passes_compile():
    cfg = TrainConfig(batch_size=4, seq_len=32)
    ev = _FirstCallSlow(cfg)
    speed = ev.speed()
    # timed over the warm pass: 128 tokens in ~0.01 s, not in the first pass's 0.5 s
    assert speed > 128 / 0.25, speed
    assert ev.calls == 2


def test_compiled_final_eval_scores_whole_batches_only():
    from budgetlm.train.budget import whole_batch_tokens
    # 300,000 val tokens, windows of 256, batches of 32 windows (8,192 tokens): 36 whole batches
    assert whole_batch_tokens(300_000, 300_000, 256, 8192) == 36 * 8192
    assert whole_batch_tokens(20_000, 300_000, 256, 8192) == 2 * 8192  # a cap rounds down too
    assert whole_batch_tokens(100, 300_000, 256, 8192) == 8192  # never below one batch


def test_a_shrunk_final_eval_stays_in_whole_batches():
    from budgetlm.train.budget import BudgetClock, Clock, parse_budget
    bc = BudgetClock(parse_budget("60s"), Clock(), final_eval_tokens=10_000_000, min_eval_tokens=8192, log=lambda *_: None)
    bc.measured_eval_speed(100_000.0)  # 100s for 10M tokens > a tenth of 60s: shrunk to ~600K
    assert bc.final_eval_tokens % 8192 == 0 and 0.9 * 600_000 < bc.final_eval_tokens <= 600_000

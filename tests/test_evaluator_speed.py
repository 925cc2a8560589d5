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

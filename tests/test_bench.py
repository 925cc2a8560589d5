"""`budgetlm bench` on the CPU: accumulation is counted in tokens/s, and the largest-micro-batch
search finds the out-of-memory edge exactly (with a stand-in for the timed steps)."""

from __future__ import annotations

import pytest
import torch

from budgetlm import bench
from budgetlm.config import model_config
from budgetlm.errors import BudgetLMError


def test_bench_counts_accumulated_micro_batches() -> None:
    r1 = bench.bench_one("nano", seq=16, micro_batch=2, steps=2, warmup=1, compile=False, device="cpu")
    r3 = bench.bench_one("nano", seq=16, micro_batch=2, steps=2, warmup=1, compile=False, device="cpu", accum=3)
    assert r1["accum"] == 1 and r3["accum"] == 3
    # tokens/s is tokens per optimizer step (micro-batch x seq x accum) over the step time
    assert r3["tokens_per_s"] == pytest.approx(2 * 16 * 3 / (r3["ms_per_step"] / 1000))
    assert r1["tokens_per_s"] == pytest.approx(2 * 16 / (r1["ms_per_step"] / 1000))


@pytest.mark.parametrize("edge,start", [(1, 1), (5, 1), (37, 8), (64, 16), (100, 128)])
def test_max_micro_batch_finds_the_edge(monkeypatch: pytest.MonkeyPatch, edge: int, start: int) -> None:
    tried = []

    def fake_bench(micro_batch: int, **kw) -> dict:
        tried.append(micro_batch)
        if micro_batch > edge:
            raise torch.OutOfMemoryError("fake")
        return {"micro_batch": micro_batch, "peak_mem_gb": micro_batch / 10}

    monkeypatch.setattr(bench, "bench_one", fake_bench)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    mb, row = bench.max_micro_batch(start=start, model_name="nano", seq=16)
    assert mb == edge and row["micro_batch"] == edge  # start > edge: bisects down from the failed start
    assert len(tried) <= 2 * edge.bit_length() + 3  # doubling then bisection, not a linear scan


def test_shape_names_work_as_model_sizes() -> None:
    cfg = model_config("6x256")
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head) == (6, 256, 8)  # head dim 32 by default
    assert model_config("3x96h3").n_head == 3
    assert model_config("tiny").n_layer == 3  # names still win
    with pytest.raises(BudgetLMError, match="shape like 4x128"):
        model_config("4by128")


def test_max_micro_batch_flag_needs_cuda(capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU error message")
    from budgetlm.cli import main
    assert main(["bench", "--model", "nano", "--max-micro-batch", "--no-record"]) == 2
    assert "--max-micro-batch needs CUDA" in capsys.readouterr().err

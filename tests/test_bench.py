"""`budgetlm bench` on the CPU: accumulation is counted in tokens/s, and the largest-micro-batch
search finds the out-of-memory edge exactly (with a stand-in for the timed steps)."""

from __future__ import annotations

import pytest
import torch

from budgetlm.plan import bench
from budgetlm.config import model_config
from budgetlm.errors import BudgetLMError


def test_bench_counts_accumulated_micro_batches() -> None:
    r1 = bench.bench_one("nano", seq=16, micro_batch=2, steps=2, warmup=1, compile=False, device="cpu")
    r3 = bench.bench_one("nano", seq=16, micro_batch=2, steps=2, warmup=1, compile=False, device="cpu", accum=3)
    assert r1["accum"] == 1 and r3["accum"] == 3
    # tokens/s is tokens per optimizer step (micro-batch x seq x accum) over the step time
    assert r3["tokens_per_s"] == pytest.approx(2 * 16 * 3 / (r3["ms_per_step"] / 1000))
    assert r1["tokens_per_s"] == pytest.approx(2 * 16 / (r1["ms_per_step"] / 1000))


def test_bench_reports_the_loss_and_refuses_steps_that_do_not_train(monkeypatch: pytest.MonkeyPatch) -> None:
    r = bench.bench_one("nano", seq=16, micro_batch=2, steps=3, warmup=1, compile=False, device="cpu")
    assert 0 < r["loss_first"] < 20 and r["loss_last"] < r["loss_first"] + bench.DIVERGED_NATS
    bench.check_training(10.9, 10.8)
    for last in (float("nan"), float("inf"), 12.0):
        with pytest.raises(BudgetLMError, match="do not train"):
            bench.check_training(10.9, last)
    # A setting that wrecks the weights (AdamW at lr 100) is caught, not timed.
    from budgetlm.config import OptimConfig, TrainConfig
    monkeypatch.setattr(bench, "TrainConfig", lambda: TrainConfig(optim=OptimConfig(lr=100.0)))
    with pytest.raises(BudgetLMError, match="do not train"):
        bench.bench_one("nano", seq=16, micro_batch=2, steps=3, warmup=1, compile=False, device="cpu")


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


@pytest.mark.parametrize("mode", [["--parallel", "ddp", "--zero-stage", "1"], ["--parallel", "fsdp"]])
def test_bench_under_torchrun_reports_the_job_and_each_gpu(tmp_path, mode) -> None:
    """Two gloo ranks: one row (rank 0 writes), tokens/s for the job = 2 x per GPU, per GPU from the
    slowest rank's step time; the parallel mode named as the trainer names it."""
    import json
    import os
    import subprocess
    import sys
    out = tmp_path / "rows.jsonl"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          "-m", "budgetlm", "bench", "--model", "nano", "--seq", "16", "--micro-batch", "2",
                          "--accum", "2", "--steps", "2", "--warmup", "1", "--compile", "off", "--device", "cpu",
                          "--results", str(out), *mode], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("as given") == 1  # only rank 0 prints
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1
    r = rows[0]
    assert r["world"] == 2 and r["parallel"] == ("ddp+zero1" if "--zero-stage" in mode else "fsdp")
    assert r["tokens_per_s_per_gpu"] == pytest.approx(2 * 16 * 2 / (r["ms_per_step"] / 1000))
    assert r["tokens_per_s"] == pytest.approx(2 * r["tokens_per_s_per_gpu"])
    assert r["ms_per_step"] >= r["ms_per_step_rank0"]  # the job's pace is its slowest rank's


def test_max_micro_batch_refuses_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    from argparse import Namespace
    from budgetlm.cli import bench as bench_cli
    from budgetlm.train.distributed import DistContext
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = Namespace(model="nano", seq_len=16, steps=1, warmup=1, compile="off", fused_loss="off", attn="auto",
                     fused_adam="on", dtype="float32", recompute=0, fp8="off", gqa="native", half_residual="on",
                     ce_kernel="off", fp8_head="off", fp8_modules="all", device="cpu", accum=1, compile_mode="default",
                     vocab_multiple=None,
                     max_micro_batch=True, batch_size=[2])
    with pytest.raises(BudgetLMError, match="without torchrun"):
        bench_cli.bench_settings(args, DistContext(world=2, parallel="ddp"))


def test_inductor_options_are_set_checked_and_recorded(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.config as inductor_config
    from budgetlm.cli import main
    from budgetlm.device import set_inductor_options
    # patch() restores every option the test touches
    with inductor_config.patch({"combo_kernels": inductor_config.combo_kernels,
                                "max_autotune_gemm_backends": inductor_config.max_autotune_gemm_backends,
                                "triton.cudagraphs": inductor_config.triton.cudagraphs}):
        got = set_inductor_options(["combo_kernels=True", "max_autotune_gemm_backends=TRITON",
                                    "triton.cudagraphs=False"])
        assert got == {"combo_kernels": True, "max_autotune_gemm_backends": "TRITON", "triton.cudagraphs": False}
        assert inductor_config.combo_kernels is True and inductor_config.max_autotune_gemm_backends == "TRITON"
        for bad, why in (("no_such_option=1", "no option 'no_such_option'"), ("combo_kernels", "KEY=VALUE")):
            with pytest.raises(BudgetLMError, match=why):
                set_inductor_options([bad])
        out = tmp_path / "rows.jsonl"
        assert main(["bench", "--model", "nano", "--seq", "16", "--micro-batch", "2", "--steps", "1",
                     "--warmup", "1", "--compile", "off", "--device", "cpu", "--results", str(out),
                     "--inductor", "combo_kernels=False"]) == 0
        import json
        row = json.loads(out.read_text().splitlines()[0])
        assert row["inductor"] == {"combo_kernels": False}
        assert main(["bench", "--model", "nano", "--no-record", "--inductor", "nope=1"]) == 2

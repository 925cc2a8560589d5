"""Data parallelism on CPU (gloo): two ranks with batch b must train exactly like one process with
batch 2b — same windows, same losses (fp32, within 1e-5) — and resume across processes.

The ranks are started with torch.multiprocessing.spawn and join the group themselves, so one
spawn can run several train() calls (straight, stopped, resumed)."""

import json
import os
import socket

import numpy as np
import pytest
import torch

from budgetlm.config import TrainConfig, model_config
from budgetlm.data.loader import BatchLoader
from budgetlm.train import checkpoint as ckpt_mod
from budgetlm.train.distributed import DistContext
from budgetlm.train.trainer import train
from conftest import end_spawned_rank

QUIET = dict(log=lambda *_: None)
MODEL = dict(n_layer=1, n_head=2, n_embd=16)
B, T = 2, 32  # per-rank micro-batch; the single-process reference uses 2*B


def cfg(out, **kw):
    base = dict(budget="6-steps", batch_size=B, seq_len=T, lr=3e-3, out_dir=str(out), progress=False, log_every=1,
                final_eval_tokens=1024, seed=7, threads=1, dtype="float32", device="cpu", compile="off",
                total_batch_tokens=2 * B * T * 2)  # 2 ranks x 2 micro-steps: exercises no_sync
    base.update(kw)
    return base


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, jobs: list, result_path: str, env: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), **env)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    ok = False
    try:
        results = []
        for job in jobs:
            info = train(model_config(**MODEL), TrainConfig(**job["cfg"]), job["data"], resume=job.get("resume"),
                         stop_after_steps=job.get("stop"), **QUIET)
            results.append({"losses": info.extra["losses"], "val_loss": info.val_loss, "steps": info.steps,
                            "tokens": info.tokens_seen, "extra": {k: v for k, v in info.extra.items()
                                                                  if k.startswith("hellaswag")}})
        if rank == 0:
            with open(result_path, "w") as f:
                json.dump(results, f)
        ok = True
    finally:
        end_spawned_rank(rank, world, ok)


def run_ranks(tmp_path, jobs: list, world: int = 2, env: dict | None = None) -> list[dict]:
    import torch.multiprocessing as mp
    result = tmp_path / "ranks.json"
    mp.spawn(_worker, args=(world, _free_port(), jobs, str(result), env or {}), nprocs=world, join=True)
    return json.loads(result.read_text())


def weights(path):
    return ckpt_mod.load_checkpoint(path)[2]


def test_rank_windows_concatenate_to_single_process_windows():
    """rank 0 rows + rank 1 rows == the single-process batch of 2b rows, at every position and epoch."""
    tokens = np.arange(2000, dtype=np.uint16)
    single = BatchLoader(tokens, 16, 6, seed=3)
    ranks = [BatchLoader(tokens, 16, 3, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(25):  # crosses several epoch boundaries (124 windows per epoch)
        x, _ = single.next_batch()
        parts = [ld.next_batch()[0] for ld in ranks]
        assert torch.equal(x, torch.cat(parts))
        assert all(ld.position == single.position for ld in ranks)


def test_ddp_two_ranks_match_single_process(synth_data, tmp_path):
    """2 ranks x batch b (DDP, gloo, grad accumulation 2) == 1 process x batch 2b, step by step."""
    ref = train(model_config(**MODEL), TrainConfig(**cfg(tmp_path / "single", batch_size=2 * B)), synth_data, **QUIET)
    [dist] = run_ranks(tmp_path, [{"cfg": cfg(tmp_path / "ddp"), "data": str(synth_data)}])
    assert dist["steps"] == ref.steps == 6 and dist["tokens"] == ref.tokens_seen
    assert np.allclose(dist["losses"], ref.extra["losses"], rtol=0, atol=1e-5), (dist["losses"], ref.extra["losses"])
    assert dist["val_loss"] == pytest.approx(ref.val_loss, abs=1e-5)
    wa, wb = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "loss" in r]) == 6  # only rank 0 wrote metrics
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world"] == 2


def test_resume_across_two_ranks_ddp_and_zero1(synth_data, tmp_path):
    """8 steps straight == 4, stop, resume 4 more, on 2 ranks: bit-for-bit; ZeRO-1 matches DDP and
    resumes from its consolidated optimizer state."""
    d = str(synth_data)
    jobs = []
    for name, extra in (("ddp", {}), ("zero", {"zero_stage": 1})):
        straight = cfg(tmp_path / f"{name}_a", budget="8-steps", **extra)
        halves = cfg(tmp_path / f"{name}_b", budget="8-steps", checkpoint_every=2, **extra)
        jobs += [{"cfg": straight, "data": d}, {"cfg": halves, "data": d, "stop": 4},
                 {"cfg": halves, "data": d, "resume": str(tmp_path / f"{name}_b")}]
    ddp_a, _, ddp_b, zero_a, _, zero_b = run_ranks(tmp_path, jobs)
    assert ddp_b["losses"] == ddp_a["losses"] and ddp_b["steps"] == 8
    assert zero_b["losses"] == zero_a["losses"]
    assert np.allclose(zero_a["losses"], ddp_a["losses"], rtol=0, atol=1e-5)
    for name in ("ddp", "zero"):
        wa, wb = weights(tmp_path / f"{name}_a"), weights(tmp_path / f"{name}_b")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    state = ckpt_mod.load_checkpoint(tmp_path / "zero_b")[4]
    assert len(state["rng_ranks"]) == 2 and state["world"] == 2 and state["optimizer"]["state"]
    assert json.loads((tmp_path / "zero_a" / "summary.json").read_text())["parallel"] == "ddp+zero1"


def test_fsdp2_two_ranks_match_single_process_and_resume(synth_data, tmp_path):
    """FSDP2 (fully_shard per block + root) on gloo: same losses as one process, full-state checkpoints
    that load anywhere, exact resume; sampling and HellaSwag run in lockstep on sharded weights."""
    from test_hellaswag import write_fixture
    cache = tmp_path / "cache"
    write_fixture(cache / "hellaswag" / "hellaswag_val.jsonl", n=5)
    ref = train(model_config(**MODEL), TrainConfig(**cfg(tmp_path / "single", batch_size=2 * B)), synth_data, **QUIET)
    d = str(synth_data)
    halves = cfg(tmp_path / "fsdp_b", parallel="fsdp", checkpoint_every=3)
    a, _, b = run_ranks(tmp_path, [
        {"cfg": cfg(tmp_path / "fsdp_a", parallel="fsdp", sample_every=3, sample_tokens=8, hellaswag_every=3), "data": d},
        {"cfg": halves, "data": d, "stop": 3}, {"cfg": halves, "data": d, "resume": str(tmp_path / "fsdp_b")}],
        env={"BUDGETLM_CACHE": str(cache)})
    assert np.allclose(a["losses"], ref.extra["losses"], rtol=0, atol=1e-5)
    assert b["losses"] == a["losses"]
    assert a["extra"]["hellaswag_n"] == 5
    assert json.loads((tmp_path / "fsdp_a" / "summary.json").read_text())["parallel"] == "fsdp"
    wa, ws = weights(tmp_path / "fsdp_a"), weights(tmp_path / "single")
    assert wa.keys() == ws.keys() and all(torch.allclose(wa[k], ws[k], atol=1e-5) for k in wa)
    rows = [json.loads(x) for x in (tmp_path / "fsdp_a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "hellaswag_acc_norm" in r and not r.get("final")] == [3, 6]


def test_single_process_rejects_fsdp_and_zero(synth_data, tmp_path):
    from budgetlm.errors import BudgetLMError
    for kw in ({"parallel": "fsdp"}, {"zero_stage": 1}):
        with pytest.raises(BudgetLMError, match="torchrun"):
            train(model_config(**MODEL), TrainConfig(**cfg(tmp_path, **kw)), synth_data, **QUIET)


def test_fused_adam_steps_return_to_the_parameter_device():
    """ZeRO's load_state_dict leaves step counts on the CPU; fused AdamW on CUDA then refuses them.
    Stand-in without a GPU: parameters on the 'meta' device, counts on the CPU."""
    from types import SimpleNamespace
    from budgetlm.train.distributed import steps_to_param_device_
    p = torch.nn.Parameter(torch.ones(3, device="meta"))
    fused = SimpleNamespace(param_groups=[{"params": [p], "fused": True}], state={p: {"step": torch.tensor(5.0)}})
    steps_to_param_device_(fused)
    assert fused.state[p]["step"].device == p.device
    plain = SimpleNamespace(param_groups=[{"params": [p], "fused": None}], state={p: {"step": torch.tensor(5.0)}})
    steps_to_param_device_(plain)  # the for-each/for-loop kernels keep counts on the CPU: left there
    assert plain.state[p]["step"].device.type == "cpu"


@pytest.mark.gpu  # ZeRO + fused AdamW on CUDA; conftest skips it without a GPU
def test_zero1_fused_adam_resumes_on_cuda(tmp_path):
    """The bug the H200 pair found: a ZeRO-1 checkpoint reloaded, then a fused AdamW step."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from budgetlm.train.distributed import DistContext
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    torch.distributed.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        ctx = DistContext(rank=0, world=2, device=torch.device("cuda", 0), parallel="ddp", zero_stage=1)
        model = torch.nn.Linear(4, 4).cuda()
        make = lambda: ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=0.1,
                                               fused=True)
        opt = make()
        model(torch.ones(2, 4, device="cuda")).sum().backward()
        opt.step()
        opt.consolidate_state_dict(to=0)
        state = opt.state_dict()
        again = make()
        ctx.load_optimizer_state(model, again, state, "test")
        again.step()
        assert all(s["step"].device.type == "cuda" for s in again.optim.state.values())
    finally:
        torch.distributed.destroy_process_group()


def test_teardown_waits_for_every_rank_only_after_a_clean_run(monkeypatch):
    """A clean end lets go of the wrapper, then barrier, then destroy (a gloo rank that freed the
    wrapper after its peer had exited hung once in CI); after an error no rank waits for others."""
    calls = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: calls.append("destroy"))
    ctx = DistContext(world=2, parallel="ddp", owned=True, wrapped=torch.nn.Linear(2, 2))
    ctx.teardown()
    assert calls == ["barrier", "destroy"] and ctx.wrapped is None and not ctx.owned
    ctx.teardown()  # a second call does nothing
    assert calls == ["barrier", "destroy"]
    calls.clear()
    DistContext(world=2, parallel="ddp", owned=True).teardown(clean=False)
    assert calls == ["destroy"]
    DistContext(world=2, parallel="ddp", owned=False).teardown()  # a group someone else started stays
    assert calls == ["destroy"]
    calls.clear()
    with pytest.raises(RuntimeError):
        with DistContext(world=2, parallel="ddp", owned=True):  # as train() and bench use it
            raise RuntimeError("a rank failed")
    assert calls == ["destroy"]
    with DistContext(world=2, parallel="ddp", owned=True):
        pass
    assert calls == ["destroy", "barrier", "destroy"]


def _failing_save_worker(rank: int, world: int, port: int, job: dict, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from budgetlm.errors import BudgetLMError
    from budgetlm.train import checkpointer

    def full_disk(*_, **__):
        raise BudgetLMError("checkpoints: disk full (simulated)")
    if rank == 0:  # only rank 0 writes, so only its save can fail
        checkpointer.save_checkpoint = full_disk
    try:
        train(model_config(**MODEL), TrainConfig(**job["cfg"]), job["data"], **QUIET)
        message = "no error"
    except BudgetLMError as e:
        message = str(e)
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(message)
    end_spawned_rank(rank, world, True)


def test_a_failed_save_on_rank_0_stops_every_rank_with_its_message(synth_data, tmp_path):
    """Rank 0's save error (NaN weights, full disk) reaches the other ranks instead of leaving them
    in the next collective."""
    import torch.multiprocessing as mp
    job = {"cfg": cfg(tmp_path / "run", checkpoint_every=2), "data": str(synth_data)}
    mp.spawn(_failing_save_worker, args=(2, _free_port(), job, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "checkpoints: disk full (simulated)"

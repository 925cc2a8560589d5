"""SIGINT/SIGTERM stop a run at a step boundary with a checkpoint, and --resume continues it bit
for bit (an uninterrupted run with the same configuration is the reference)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from budgetlm.config import TrainConfig, from_dict
from budgetlm.train import checkpoint as ckpt_mod
from budgetlm.train.interrupt import RunStopped, StopSignals
from budgetlm.train.trainer import train
from test_train import cfg, tiny_model  # the exact-resume test's model and config

QUIET = dict(log=lambda *_: None)
# A budget far beyond what runs: the schedule is fixed, and --stop-after-steps ends the reference.
CLI_RUN = ["--budget", "100000-steps", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--batch-size", "4",
           "--seq-len", "32", "--lr", "3e-3", "--log-every", "1", "--seed", "7", "--compile", "off",
           "--threads", "1", "--no-progress"]


def _cli(data, out, *extra):
    # A short final eval (a config-file setting); SIGINT back to its default in the child: a
    # background job inherits it ignored, and budgetlm (rightly) leaves an ignored signal alone.
    toml = out.parent / f"{out.name}.toml"
    toml.write_text("[train]\nfinal_eval_tokens = 512\n")
    return subprocess.Popen([sys.executable, "-m", "budgetlm", "train", "--data", str(data), "--out", str(out),
                             "--config", str(toml), *CLI_RUN, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _loss_rows(out):
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written right now
            pass
    return [r for r in rows if "loss" in r]


def _stop_with(proc, out, signals, timeout=60.0):
    """Wait until the run has logged a few steps, then send the signals; return (rc, stdout, stderr)."""
    deadline = time.monotonic() + timeout
    while len(_loss_rows(out)) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run logged no steps"
        time.sleep(0.005)
    for s in signals:
        proc.send_signal(s)
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr


def _reference_losses(data, out, steps, ref_out):
    """Losses of an uninterrupted run with the interrupted run's own configuration (from its checkpoint)."""
    _, mcfg, _, _, state = ckpt_mod.load_checkpoint(out)
    tcfg = from_dict(TrainConfig, {**state["train_config"], "out_dir": str(ref_out)}, "checkpoint")
    return train(mcfg, tcfg, data, stop_after_steps=steps, **QUIET).extra["losses"]


@pytest.mark.parametrize("signals,code", [((signal.SIGTERM,), 143), ((signal.SIGINT, signal.SIGINT), 130)],
                         ids=["sigterm", "sigint-twice"])
def test_signal_stops_with_checkpoint_and_resume_is_exact(synth_data, tmp_path, signals, code):
    out = tmp_path / "run"
    rc, stdout, stderr = _stop_with(_cli(synth_data, out), out, signals)
    name = signals[0].name
    assert rc == code, stdout + stderr
    lines = [x for x in stdout.splitlines() if x.startswith("stopped by")]
    assert len(lines) == 1 and "Traceback" not in stderr, stdout + stderr
    m = re.fullmatch(rf"stopped by {name} at step (\d+); checkpoint saved; continue with --resume {re.escape(str(out))}",
                     lines[0])
    assert m, lines
    k = int(m.group(1))
    assert ckpt_mod.load_checkpoint(out)[4]["step"] == k
    assert not (out / ".lock").exists()

    more = 4
    proc = _cli(synth_data, out, "--resume", "--stop-after-steps", str(k + more))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout + stderr
    reference = _reference_losses(synth_data, out, k + more, tmp_path / "reference")
    rows = _loss_rows(out)
    assert [r["step"] for r in rows] == list(range(1, k + more + 1))  # each step once
    assert [r["loss"] for r in rows] == reference  # bit for bit (JSON floats round-trip exactly)
    assert ckpt_mod.load_checkpoint(out)[4]["losses"] == reference




def test_ctrl_c_mid_step_stops_at_the_step_boundary(synth_data, tmp_path):
    """A Ctrl-C landing mid-step (here: inside the forward of step 5) finishes that step, then
    checkpoints; the resumed run matches a straight one (the old handler saved the data position
    one batch ahead of the weights)."""
    straight = train(tiny_model(), cfg(tmp_path / "a"), synth_data, **QUIET)

    def ctrl_c_at_step_4(step, *_):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return None
    with pytest.raises(RunStopped, match=r"stopped by SIGINT at step 5; checkpoint saved") as e:
        train(tiny_model(), cfg(tmp_path / "b"), synth_data, loss_hook=ctrl_c_at_step_4, **QUIET)
    assert e.value.exit_code == 130
    assert ckpt_mod.load_checkpoint(tmp_path / "b")[4]["step"] == 5
    resumed = train(tiny_model(), cfg(tmp_path / "b"), synth_data, resume=str(tmp_path / "b"), **QUIET)
    assert resumed.extra["losses"] == straight.extra["losses"]
    assert resumed.val_loss == straight.val_loss
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after train()


def test_stop_signals_record_then_abort_on_the_third():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # a second signal (e.g. while saving) changes nothing
        assert stop.signum == signal.SIGTERM and stop.count == 2
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == before


def test_stop_signals_leave_an_ignored_signal_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGINT, old)


def test_run_stopped_pickles():
    import pickle
    e = pickle.loads(pickle.dumps(RunStopped(signal.SIGTERM, "stopped by SIGTERM at step 3")))
    assert e.exit_code == 143 and str(e) == "stopped by SIGTERM at step 3"


def _stop_worker(rank: int, world: int, port: int, data: str, tmp: str) -> None:
    """A run where rank 1 alone gets SIGTERM during step 3 (resuming from such a checkpoint on
    several ranks is exact like any other: tests/test_distributed.py)."""
    from pathlib import Path

    import torch

    from conftest import end_spawned_rank
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    ok = False

    def run_cfg(out):
        return cfg(Path(tmp) / out, budget="6-steps", batch_size=2, threads=1, dtype="float32", device="cpu",
                   compile="off", final_eval_tokens=512)

    def sigterm_rank_1(step, *_):
        if rank == 1 and step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return None
    try:
        stopped = None
        try:
            train(tiny_model(), run_cfg("b"), data, loss_hook=sigterm_rank_1, **QUIET)
        except RunStopped as e:
            stopped = e.signum
        with open(Path(tmp) / f"rank{rank}.json", "w") as f:
            json.dump({"stopped": stopped}, f)
        ok = True
    finally:
        end_spawned_rank(rank, world, ok)


def test_signal_on_one_rank_stops_all_ranks_on_the_same_step(synth_data, tmp_path):
    import torch.multiprocessing as mp

    from test_distributed import _free_port
    mp.spawn(_stop_worker, args=(2, _free_port(), str(synth_data), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["stopped"] for r in ranks] == [signal.SIGTERM, signal.SIGTERM]  # both stopped, neither hung
    assert ckpt_mod.load_checkpoint(tmp_path / "b")[4]["step"] == 3  # saved once, at the agreed step


def test_stop_right_after_a_checkpoint_keeps_it(synth_data, tmp_path, monkeypatch):
    """A stop on the step a checkpoint was just written (or resumed from) does not write it again:
    rewriting removes the folder `latest` points to for a moment."""
    saves = []
    orig = ckpt_mod.save_checkpoint

    def counting(root, step, *a, **k):
        saves.append(step)
        return orig(root, step, *a, **k)
    from budgetlm.train import checkpointer, trainer
    monkeypatch.setattr(checkpointer, "save_checkpoint", counting)

    def sigterm_in_step_4(step, *_):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return None
    with pytest.raises(RunStopped, match="at step 4; checkpoint saved"):
        train(tiny_model(), cfg(tmp_path, checkpoint_every=2), synth_data, loss_hook=sigterm_in_step_4, **QUIET)
    assert saves == [2, 4]
    orig_meta = trainer.load_meta

    def sigterm_during_setup(*a):
        os.kill(os.getpid(), signal.SIGTERM)
        return orig_meta(*a)
    monkeypatch.setattr(trainer, "load_meta", sigterm_during_setup)
    with pytest.raises(RunStopped, match="at step 4; checkpoint saved"):  # the resumed run stops before a step
        train(tiny_model(), cfg(tmp_path, checkpoint_every=2), synth_data, resume=str(tmp_path), **QUIET)
    assert saves == [2, 4]
    assert ckpt_mod.load_checkpoint(tmp_path)[4]["step"] == 4


class _OtherRank:
    """A ctx for rank 1 of 2 whose all_reduce_sum adds rank 0's contribution."""
    enabled, is_main = True, False

    def __init__(self, rank0):
        self.rank0 = rank0

    def all_reduce_sum(self, values):
        return [a + b for a, b in zip(values, self.rank0)]


def test_poll_gives_rank_0s_value_and_any_ranks_signal():
    stop = StopSignals()
    assert stop.poll(_OtherRank([0.75, 0.0, 0.0]), 0.5) == (0.75, 0)  # rank 0's clock fraction decides
    stop.signum = signal.SIGINT
    assert stop.poll(_OtherRank([0.75, 0.0, 0.0]), 0.5) == (0.75, signal.SIGINT)
    assert stop.poll(_OtherRank([0.75, 0.0, 1.0]), 0.5) == (0.75, signal.SIGTERM)  # SIGTERM wins

"""One run per run folder: OUT/.lock refuses a second run, takes over a dead one's, and is
released at exit, on errors too."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from budgetlm.config import TrainConfig, model_config
from budgetlm.errors import BudgetLMError
from budgetlm.train.runlock import RunLock
from budgetlm.train.trainer import train

from test_interrupt import _cli, _loss_rows  # the CLI run of a tiny model


def tiny_cfg(out, **kw):
    return TrainConfig(**{**dict(budget="3-steps", batch_size=4, seq_len=32, out_dir=str(out), progress=False,
                                 final_eval_tokens=1024, seed=7), **kw})


def _write_lock(out, pid, host=None):
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": time.time()}))


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_cli_run_on_the_same_out_refuses(synth_data, tmp_path, capsys):
    out = tmp_path / "run"
    first = _cli(synth_data, out)
    try:
        while len(_loss_rows(out)) < 1:
            assert first.poll() is None, first.communicate()
            time.sleep(0.01)
        lock = json.loads((out / ".lock").read_text())
        assert lock["pid"] == first.pid and lock["host"] == socket.gethostname() and lock["started"] > 0
        from budgetlm.cli import main  # the second run in-process: one interpreter start less
        assert main(["train", "--data", str(synth_data), "--out", str(out), "--budget", "3-steps",
                     "--compile", "off", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith(f"budgetlm train: error: {out}: in use by pid {first.pid}"), err
        assert first.poll() is None  # the first run is untouched
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 143 and not (out / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(synth_data, tmp_path):
    dead = _dead_pid()
    _write_lock(tmp_path, dead)
    notes = []
    train(model_config(n_layer=1, n_head=2, n_embd=32), tiny_cfg(tmp_path), synth_data, log=notes.append)
    assert any(f"took over a stale lock (pid {dead} on" in n for n in notes), notes
    assert not (tmp_path / ".lock").exists()


def test_lock_released_when_training_fails(synth_data, tmp_path):
    with pytest.raises(BudgetLMError, match="kenlm"):
        train(model_config(n_layer=1, n_head=2, n_embd=32), tiny_cfg(tmp_path, teacher="kenlm:4"), synth_data,
              log=lambda *_: None)
    assert not (tmp_path / ".lock").exists()


def test_live_lock_refuses_without_touching_the_folder(tmp_path):
    _write_lock(tmp_path, os.getppid())  # a live process (pytest's parent)
    with pytest.raises(BudgetLMError, match=rf"{tmp_path}: in use by pid {os.getppid()} on "):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getppid()


def test_lock_of_another_host_is_not_guessed_at(tmp_path):
    _write_lock(tmp_path, _dead_pid(), host="elsewhere")
    with pytest.raises(BudgetLMError, match="another host: if that run is gone, delete"):
        RunLock(tmp_path).acquire()


def test_lock_is_exclusive_and_released_only_by_its_owner(tmp_path):
    a = RunLock(tmp_path).acquire()
    with pytest.raises(BudgetLMError, match="in use by pid"):
        RunLock(tmp_path).acquire()  # same pid: alive, so refused
    a.release()
    assert not (tmp_path / ".lock").exists()
    b = RunLock(tmp_path).acquire()
    a.release()  # already released: must not remove b's lock
    assert (tmp_path / ".lock").exists()
    b.release()


def test_unreadable_lock_is_taken_over_once_old(tmp_path):
    (tmp_path / ".lock").write_text("")  # a writer died between creating and filling it
    with pytest.raises(BudgetLMError, match="another run is starting"):
        RunLock(tmp_path).acquire()  # so fresh, it may be being written now
    old = time.time() - 60
    os.utime(tmp_path / ".lock", (old, old))
    notes = []
    RunLock(tmp_path, log=notes.append).acquire().release()
    assert notes == [f"note: {tmp_path}: took over an unreadable lock"]

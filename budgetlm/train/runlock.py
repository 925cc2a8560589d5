"""One run per run folder: OUT/.lock, created atomically (O_EXCL), holds the owner's pid, host
and start time. A second run on the same folder refuses instead of interleaving metrics.jsonl
and racing over checkpoints; a lock left by a dead process on this host is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from budgetlm.errors import BudgetLMError

LOCK_FILE = ".lock"
FRESH_S = 5.0  # an unreadable lock younger than this may be one being written right now


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _parse(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return _parse(path.read_text())
    except OSError:
        return None


class RunLock:
    """acquire() takes OUT/.lock or raises BudgetLMError naming the folder and the holder; release() frees it."""

    def __init__(self, out: str | Path, log: Callable[[str], None] = print) -> None:
        self.out, self.log = Path(out), log
        self.path = self.out / LOCK_FILE
        self.mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        self.held = False

    def acquire(self) -> "RunLock":
        self.out.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a lost race with another taker retries, then refuses
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.mine) + "\n")
            self.held = True
            return self
        raise BudgetLMError(f"{self.out}: could not take the run lock {self.path}")

    def _take_over_if_stale(self) -> None:
        """Remove the lock if its owner is gone; raise if it is (or may be) alive."""
        try:
            text, mtime = self.path.read_text(), self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile
        owner = _parse(text)
        if owner is None:
            if time.time() - mtime < FRESH_S:
                raise BudgetLMError(f"{self.out}: another run is starting in this folder ({self.path})")
            why = "an unreadable lock"
        else:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
            holder = f"pid {owner['pid']} on {owner.get('host', '?')}, started {started}"
            if owner.get("host") != self.mine["host"]:
                raise BudgetLMError(f"{self.out}: in use by {holder} (another host: if that run is gone, "
                                    f"delete {self.path})")
            if _pid_alive(owner["pid"]):
                raise BudgetLMError(f"{self.out}: in use by {holder}; use another --out or stop that run")
            why = f"a stale lock ({holder}, no longer running)"
        try:
            if self.path.read_text() != text:  # replaced since read: not the stale one any more
                return
            self.path.unlink()
        except FileNotFoundError:
            return
        self.log(f"note: {self.out}: took over {why}")

    def release(self) -> None:
        if self.held and (_read(self.path) or {}).get("pid") == self.mine["pid"]:
            self.path.unlink(missing_ok=True)
        self.held = False


@contextmanager
def hold_run_lock(out: str | Path, ctx: Any, log: Callable[[str], None] = print) -> Iterator[None]:
    """The run lock for the block. Under several ranks rank 0 alone takes it and tells the others
    whether it could, so that a refused run ends on every rank instead of hanging at a collective."""
    lock = RunLock(out, log)
    error = None
    if ctx.is_main:
        try:
            lock.acquire()
        except BudgetLMError as e:
            error = e
    if ctx.enabled and ctx.broadcast_float(0.0 if error else 1.0) == 0.0 and error is None:
        raise BudgetLMError(f"{out}: rank 0 could not take the run lock")
    if error is not None:
        raise error
    try:
        yield
    finally:
        lock.release()

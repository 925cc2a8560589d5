"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM (what schedulers send before a kill) without
losing it: the signal only records a request; the training loop honours it at the next step
boundary, where model, optimizer, data position and RNG agree, saves a checkpoint and raises
RunStopped. A checkpoint taken there resumes bit for bit.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint. A KeyboardInterrupt, so code that
    turns errors into failed results (sweeps) lets it through; exit_code is the shell's 128 + signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(signum, message)  # both in args: the exception pickles (sweep worker processes)
        self.signum, self.message = signum, message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return self.message


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """While active (a `with` block), SIGINT and SIGTERM record a stop request instead of raising.

    The second signal is ignored too, so a Ctrl-C pressed again while the checkpoint is written
    cannot cut it short; the third aborts at once (KeyboardInterrupt) for a run that is stuck,
    which still corrupts nothing: checkpoints are written atomically. Handlers go in only on the
    main thread (Python's rule) and not over a signal the process inherited as ignored (a
    background job's SIGINT); the previous handlers come back on exit.
    """

    ABORT_AFTER = 3

    def __init__(self) -> None:
        self.signum = 0  # the first stop signal received; 0 = none
        self.count = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        # Only bookkeeping here: printing from a handler can hit a half-written stdout buffer.
        self.count += 1
        self.signum = self.signum or signum
        if self.count >= self.ABORT_AFTER:
            raise KeyboardInterrupt

    def poll(self, ctx: Any, rank0_value: float = 0.0) -> tuple[float, int]:
        """(rank 0's rank0_value, the agreed stop signal or 0), in one collective under several
        ranks, so every rank stops on the same step: a signal on any rank stops all of them
        (SIGTERM wins over SIGINT). One process: (rank0_value, its own signal)."""
        if not ctx.enabled:
            return rank0_value, self.signum
        value, n_int, n_term = ctx.all_reduce_sum([rank0_value if ctx.is_main else 0.0,
                                                   float(self.signum == signal.SIGINT),
                                                   float(self.signum == signal.SIGTERM)])
        return value, int(signal.SIGTERM) if n_term else int(signal.SIGINT) if n_int else 0

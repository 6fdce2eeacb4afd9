"""Signals that end a run (SIGTERM from a scheduler's time limit, SIGHUP from a closed terminal,
SIGINT from Ctrl-C) as one exception, so the run can record itself KILLED with what it trained so
far, print one line and exit with the shell's 128 + signal number.

Why an exception: the default SIGTERM/SIGHUP action ends the process at once (nothing recorded, the
MLflow run stays RUNNING), and Ctrl-C's KeyboardInterrupt prints a long traceback.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

CAUGHT = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGHUP", "SIGINT")) if s is not None
)


class Interrupted(BaseException):
    """The run was stopped by a signal (a BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_state = {"depth": 0, "pending": 0}


def _raise(signum: int, frame: object) -> None:
    if _state["depth"] > 0:  # inside a store write: raise when it is done (``critical``)
        _state["pending"] = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A block the signal exception must not cut in half (a database write: interrupted half-way,
    sqlite keeps its write lock and the run could not even record that it was killed). A signal
    that arrives inside is raised as ``Interrupted`` when the outermost block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0 and _state["pending"]:
            signum, _state["pending"] = _state["pending"], 0
            raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP/SIGINT raise ``Interrupted`` (main thread only: Python
    delivers signals there; elsewhere this is a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in CAUGHT}
    _state["pending"] = 0
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Within the block (recording a run's end), further signals are ignored, so a second Ctrl-C
    or SIGTERM cannot leave the record half-written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in CAUGHT}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def as_interrupted(exc: BaseException) -> Interrupted | None:
    """``exc`` as an Interrupted (KeyboardInterrupt is SIGINT), or None for anything else."""
    if isinstance(exc, Interrupted):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(signal.SIGINT)
    return None

"""Ctrl-C, systemd's SIGTERM and SIGHUP: unwind cleanly, and never mid-way through a server operation.

All three signals raise ``SignalReceived`` in the main thread. Like
``KeyboardInterrupt`` it is a ``BaseException``, so no ``except Exception`` on
the way up can swallow it and every ``finally`` (shadow removal, temporary
parts) runs; unlike it, the CLI framework does not intercept it, so the one
error edge in ``casbackup.cli.main`` reports it.

Some statements carry on inside the server after the client stops waiting:
a FREEZE interrupted half-way keeps creating hard links after we removed its
shadow directory, and would leave one behind. ``deferred()`` holds signals
while such a statement runs and delivers them the moment it returns.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SignalReceived(BaseException):
    def __init__(self, signum: int) -> None:
        self.name = signal.Signals(signum).name
        super().__init__(self.name)


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise SignalReceived(signum)


def install() -> Callable[[], None]:
    """Route SIGINT/SIGTERM/SIGHUP to SignalReceived; returns a function that undoes it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, _raise) for sig in SIGNALS}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


@contextmanager
def deferred() -> Iterator[None]:
    """Run a block to completion even if a signal arrives; deliver the signal afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def remember(signum: int, _frame: FrameType | None) -> None:
        pending.append(signum)

    previous: dict[int, Any] = {sig: signal.signal(sig, remember) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(pending[0])

"""The time limit of one filter run: SIGALRM in the main thread, nested deadlines re-armed."""

from __future__ import annotations

import contextlib
import importlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from detox.errors import FilterTimeout

# signal.signal() wraps _signal.signal() to hand back handlers as enum members, which for a Python
# handler means raising and catching a ValueError; deadline() swaps handlers twice per filter run and
# only ever passes back what it got, so it calls the C function directly.
_swap_handler: Callable[[int, Any], Any] = importlib.import_module("_signal").signal


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise FilterTimeout in the running code after ``seconds`` (main thread only).

    Converters that can hang in C code run in sandboxed subprocesses with their own limits; this
    bounds the pure-Python work done in-process.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(signum: int, frame: FrameType | None) -> None:
        raise FilterTimeout(f"no result within {seconds:g}s")

    # Deadlines nest (an archive's filter runs its members' filters): the inner one never outlives
    # the outer, and the outer's remaining time is re-armed when the inner ends.
    outer_remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    effective = min(seconds, outer_remaining) if outer_remaining > 0 else seconds
    previous = _swap_handler(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, effective)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _swap_handler(signal.SIGALRM, previous)
        if outer_remaining > 0:
            left = outer_remaining - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))

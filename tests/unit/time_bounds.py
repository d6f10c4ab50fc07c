"""Time bounds for tests of hostile input: a load must be cheap and must not hang.

Two separate bounds, because a busy shared machine stretches the wall clock
without the code doing more work: the cost is judged in CPU time, and a hang
(a blocking read of a FIFO uses no CPU) is stopped by a wall-clock alarm.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def alarm_after(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM interrupts whatever blocks (a FIFO's read)."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def cpu_bound(seconds: float) -> Iterator[None]:
    """The block must take under ``seconds`` of this process's CPU time."""
    started = time.process_time()
    yield
    used = time.process_time() - started
    assert used < seconds, f"took {used:.2f} s of CPU time (bound: {seconds} s)"

"""How promptly the event loop answers: its lag, and Python's garbage-collection pauses.

Every keypress, MixMonitor start and ledger row passes through one event loop.
When that loop stalls, every call waits: a 3 pressed during a stall starts its
recording late, whatever Asterisk does. Two things stall it without any
awaited I/O being slow: a callback that computes too long, and the cyclic
garbage collector, which stops the process while it walks every tracked
object. With hundreds of calls at once, a full collection that also walks
every object imported at start-up (aiohttp, asyncpg, pydantic, structlog)
takes long enough to show in the keypress-to-recording p99.

So the daemon
- freezes what start-up created (``gc.freeze``): those objects live as long
  as the process and need never be walked again;
- measures each collection's pause (``consentd_gc_pause_seconds{generation}``)
  and the loop's lag (``consentd_event_loop_lag_seconds``: how late a timer
  that should fire every 100 ms fires), so an operator sees a stall and its
  cause on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

#: Milliseconds matter here: a healthy loop answers within 1-5 ms.
PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
PROBE_INTERVAL = 0.1


class LoopHealth:
    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self.lag = Histogram(
            "consentd_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 100 ms (every call waits that long)",
            buckets=PAUSE_BUCKETS,
            registry=registry,
        )
        self.gc_pause = Histogram(
            "consentd_gc_pause_seconds",
            "How long each garbage collection stopped the daemon, by generation",
            ("generation",),
            buckets=PAUSE_BUCKETS,
            registry=registry,
        )
        for generation in ("0", "1", "2"):
            self.gc_pause.labels(generation)
        self._gc_started: float | None = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = self._clock()
        elif self._gc_started is not None:
            self.gc_pause.labels(str(info.get("generation", 2))).observe(
                self._clock() - self._gc_started
            )
            self._gc_started = None

    def watch_gc(self, *, freeze: bool = True) -> None:
        """Freeze what start-up made, then time every collection from here on."""
        if freeze:
            gc.collect()
            gc.freeze()
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        gc.unfreeze()

    async def probe(self, interval: float = PROBE_INTERVAL) -> None:
        """Forever: sleep ``interval`` and record how much later than that the loop woke."""
        while True:
            due = self._clock() + interval
            await asyncio.sleep(interval)
            self.lag.observe(max(0.0, self._clock() - due))

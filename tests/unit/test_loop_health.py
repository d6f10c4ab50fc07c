"""The loop's lag and the collector's pauses reach /metrics; start-up objects are frozen."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest
from prometheus_client import CollectorRegistry

from consentd.loop_health import LoopHealth


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_each_collection_is_timed_under_its_generation() -> None:
    now = [100.0]
    registry = CollectorRegistry()
    health = LoopHealth(registry, clock=lambda: now[0])

    health._on_gc("start", {"generation": 2})
    now[0] += 0.12  # a full collection that stopped the daemon for 120 ms
    health._on_gc("stop", {"generation": 2})

    assert _sample(registry, "consentd_gc_pause_seconds_count", generation="2") == 1
    assert _sample(registry, "consentd_gc_pause_seconds_sum", generation="2") == pytest.approx(0.12)
    assert _sample(registry, "consentd_gc_pause_seconds_bucket", generation="2", le="0.1") == 0
    assert _sample(registry, "consentd_gc_pause_seconds_count", generation="0") == 0


async def test_a_blocked_loop_shows_as_lag() -> None:
    registry = CollectorRegistry()
    health = LoopHealth(registry)
    probe = asyncio.create_task(health.probe(interval=0.02))
    await asyncio.sleep(0.05)
    time.sleep(0.3)  # noqa: ASYNC251 -- the point: a callback that blocks the loop 300 ms
    await asyncio.sleep(0.05)
    probe.cancel()

    assert _sample(registry, "consentd_event_loop_lag_seconds_count") >= 2
    # exactly one wake-up came 0.25 s or more late
    late = _sample(registry, "consentd_event_loop_lag_seconds_count") - _sample(
        registry, "consentd_event_loop_lag_seconds_bucket", le="0.25"
    )
    assert late == 1


def test_start_up_objects_are_frozen_and_collections_timed_until_unwatched() -> None:
    registry = CollectorRegistry()
    health = LoopHealth(registry)
    try:
        health.watch_gc()
        assert gc.get_freeze_count() > 1000  # the imported libraries, at least
        gc.collect(0)
        assert _sample(registry, "consentd_gc_pause_seconds_count", generation="0") == 1
    finally:
        health.unwatch_gc()
    assert gc.get_freeze_count() == 0
    gc.collect(0)
    assert _sample(registry, "consentd_gc_pause_seconds_count", generation="0") == 1


def test_without_freeze_nothing_is_frozen_but_pauses_are_still_timed() -> None:
    registry = CollectorRegistry()
    health = LoopHealth(registry)
    try:
        health.watch_gc(freeze=False)
        assert gc.get_freeze_count() == 0
        gc.collect(1)
        assert _sample(registry, "consentd_gc_pause_seconds_count", generation="1") == 1
    finally:
        health.unwatch_gc()

"""Prometheus metrics, read the way Prometheus reads them: ``/metrics`` scraped over HTTP
and parsed from the text format. Calls go through the real dispatcher and runners (with
the fakes of test_dispatcher), the ledger through the real writer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consentd.ami import Recorder
from consentd.ari import AriClient
from consentd.call_model import HandOff
from consentd.dispatcher import Dispatcher, NodeConfig
from consentd.greetings import GreetingLibrary
from consentd.http_api import Health, init_app, register_gauges
from consentd.journal import Journal
from consentd.ledger import LedgerEvent, LedgerWriter, MemoryLedger
from consentd.metrics import Metrics
from consentd.policy import load_policies
from consentd.recording_store import FileStore
from consentd.runner import Ports
from tests.unit.conftest import CallScript, FakeClock, make_facts
from tests.unit.test_dispatcher import (
    MONITOR,
    POLICIES,
    SOUNDS,
    FakeAri,
    FakeRecorder,
    dtmf,
    playback_finished,
    settle,
    stasis_end,
    stasis_start,
    until,
)

T0 = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)
TOKEN = "metrics-token"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def ended(policy: str, outcome: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return ("consentd_calls_ended_total", frozenset({("policy", policy), ("outcome", outcome)}))


# ---------------------------------------------------------------- calls by policy and outcome


def test_calls_are_counted_at_their_end_by_policy_and_consent_outcome() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    def finish(policy: str, *digits: str, hand_off: bool = False, **options: Any) -> None:
        call = CallScript(make_facts(policy, **options), FakeClock())
        call.arrive()
        for digit in digits:
            call.wait(1)
            call.press(digit)
        call.wait(1)
        if hand_off:
            call.send(HandOff(call.clock()))  # the next start adopts and counts it
        else:
            call.hang_up()
        metrics.call_finished(call.call)

    finish("opt_in", "3")
    finish("opt_in", "3", "3", allow_withdrawal=True)
    finish("opt_in")
    finish("opt_out", "3")
    finish("opt_out", "3", hand_off=True)
    finish("always", "3")
    finish("always")

    samples = scrape(registry)

    assert samples[ended("opt_in", "caller_opted_in")] == 1
    assert samples[ended("opt_in", "caller_withdrew")] == 1
    assert samples[ended("opt_in", "no_decision")] == 1
    assert samples[ended("opt_out", "caller_opted_out")] == 1
    assert samples[ended("always", "no_decision")] == 2
    assert samples[ended("never", "no_decision")] == 0  # every series is there from the start
    counted = sum(v for (name, _), v in samples.items() if name == "consentd_calls_ended_total")
    assert counted == 6


# ---------------------------------------------------------------- through the dispatcher


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[Dispatcher, Clock, CollectorRegistry]]:
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(POLICIES)
    book = load_policies(policy_file)
    root = tmp_path / "asterisk"
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    writer = LedgerWriter(MemoryLedger(), Journal(None), linger_seconds=0)
    clock = Clock()
    recorder = FakeRecorder(root)
    ports = Ports(
        ari=cast(AriClient, FakeAri()),
        recorder=cast(Recorder, recorder),
        ledger=writer,
        recordings=FileStore(root),
        clock=clock,
        delete_grace=0.01,
        recording_changed=metrics.recording_changed,
    )
    config = NodeConfig("pbx1", "consentd", MONITOR, str(root), "b007")
    tasks: list[asyncio.Task[Any]] = []

    def spawn(coro: Any, name: str) -> asyncio.Task[Any]:
        tasks.append(asyncio.create_task(coro, name=name))
        return tasks[-1]

    dispatcher = Dispatcher(
        config,
        book,
        GreetingLibrary.install(book, SOUNDS, root),
        ports,
        spawn,
        call_finished=metrics.call_finished,
    )

    async def began(channel_id: str, variable: str, value: str) -> None:
        """Asterisk's ChannelVarset of MixMonitor's id: it began at the clock's time."""
        stamp = clock.now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"
        await dispatcher.handle(
            {
                "type": "ChannelVarset",
                "timestamp": stamp,
                "channel": {"id": channel_id},
                "variable": variable,
                "value": value,
            }
        )

    recorder.began = began
    writer_task = asyncio.create_task(writer.run())
    try:
        yield dispatcher, clock, registry
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(writer_task, 1.0)


async def feed(dispatcher: Dispatcher, *events: dict[str, Any]) -> None:
    for event in events:
        await dispatcher.handle(event)
    await settle()


async def test_a_deciding_3_reports_its_latency_and_the_ended_call_is_counted(
    node: tuple[Dispatcher, Clock, CollectorRegistry],
) -> None:
    dispatcher, clock, registry = node
    # The keypress at 1.5 s (Asterisk's time); MixMonitor confirmed at 1.62 s.
    clock.now = T0 + timedelta(seconds=1.62)
    await feed(
        dispatcher,
        stasis_start("1764432000.1", "+4930100002"),
        dtmf("1764432000.1", "1", "2026-11-29T16:00:01.000+0000"),  # decides nothing
        dtmf("1764432000.1", "3", "2026-11-29T16:00:01.500+0000"),
        stasis_end("1764432000.1"),
    )
    # opt-out: recording from the end of the greeting (6 s), the 3 at 7 s, stopped at 7.25 s.
    clock.now = T0 + timedelta(seconds=0.5)
    await feed(
        dispatcher,
        stasis_start("1764432000.2", "+4930100003"),
        stasis_start("1764432000.3", "+4930100001"),
        playback_finished("1764432000.2", "1764432000.2-greeting"),
    )
    clock.now = T0 + timedelta(seconds=7.25)
    await feed(
        dispatcher,
        dtmf("1764432000.2", "3", "2026-11-29T16:00:07.000+0000"),
        dtmf("1764432000.3", "3", "2026-11-29T16:00:07.000+0000"),  # always: changes nothing
    )
    await until(lambda: "1764432000.1" not in dispatcher.calls)

    samples = scrape(registry)

    latency = "consentd_keypress_to_recording_seconds"
    assert value(samples, f"{latency}_count", change="started") == 1
    assert value(samples, f"{latency}_sum", change="started") == pytest.approx(0.12)
    assert value(samples, f"{latency}_bucket", change="started", le="0.1") == 0
    assert value(samples, f"{latency}_bucket", change="started", le="0.25") == 1
    assert value(samples, f"{latency}_count", change="stopped") == 1
    assert value(samples, f"{latency}_sum", change="stopped") == pytest.approx(0.25)
    assert samples[ended("opt_in", "caller_opted_in")] == 1
    assert samples[ended("opt_out", "caller_opted_out")] == 0  # still talking


# ---------------------------------------------------------------- the ledger writer


def event(n: int, at: datetime) -> LedgerEvent:
    return LedgerEvent(f"c/{n}", "c", "pbx1", n, "keypress", at, {"digit": "1"})


async def test_the_write_lag_runs_from_occurred_at_to_stored_and_the_journal_drains() -> None:
    store = MemoryLedger()
    lags: list[float] = []
    now = [T0 + timedelta(seconds=2.5)]
    writer = LedgerWriter(
        store,
        Journal(None),
        retry_seconds=0.02,
        linger_seconds=0,
        observe_lag=lags.append,
        clock=lambda: now[0],
    )
    task = asyncio.create_task(writer.run())
    try:
        writer.submit(event(0, T0 + timedelta(seconds=1)))
        await until(lambda: len(store.events) == 1)
        assert lags == [1.5]

        store.available = False  # the database goes away: three events wait in the journal
        for n in (1, 2, 3):
            writer.submit(event(n, T0 + timedelta(seconds=3)))
        await until(lambda: writer.journal_backlog == 3)
        now[0] = T0 + timedelta(seconds=63)
        store.available = True
        await until(lambda: writer.journal_backlog == 0)
        assert lags == [1.5, 60.0, 60.0, 60.0]
    finally:
        await writer.close()
        await asyncio.wait_for(task, 1.0)


# ---------------------------------------------------------------- /metrics over HTTP


async def _no_calls(limit: int) -> list[dict[str, Any]]:
    return []


async def test_metrics_scraped_over_http_carry_every_family() -> None:
    registry = CollectorRegistry()
    health = Health(
        ari=True, ami=False, database=False, active_calls=2, ledger_backlog=7, calls_started=5
    )
    register_gauges(registry, lambda: health)
    metrics = Metrics(registry)
    metrics.watch_journal(lambda: 4)
    metrics.ledger_stored(0.03)
    metrics.ledger_stored(12.0)
    metrics.recording_changed("started", 0.07)
    app = init_app(lambda: health, registry, _no_calls, api_token=TOKEN)

    async with TestClient(TestServer(app)) as client:
        refused = await client.get("/metrics")
        response = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        text = await response.text()

    assert refused.status == 401
    assert response.status == 200
    samples = parse(text)
    assert value(samples, "consentd_ari_up") == 1
    assert value(samples, "consentd_ami_up") == 0
    assert value(samples, "consentd_database_up") == 0
    assert value(samples, "consentd_active_calls") == 2
    assert value(samples, "consentd_ledger_backlog") == 7
    assert value(samples, "consentd_journal_backlog") == 4
    assert value(samples, "consentd_calls_total") == 5
    assert value(samples, "consentd_ledger_write_lag_seconds_count") == 2
    assert value(samples, "consentd_ledger_write_lag_seconds_bucket", le="0.05") == 1
    assert value(samples, "consentd_ledger_write_lag_seconds_bucket", le="30.0") == 2
    assert value(samples, "consentd_keypress_to_recording_seconds_count", change="started") == 1
    assert value(samples, "consentd_keypress_to_recording_seconds_count", change="stopped") == 0
    assert len([k for k in samples if k[0] == "consentd_calls_ended_total"]) == 20

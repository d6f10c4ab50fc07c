"""The agents' report over a busy day of ledger rows, with a fake database: building
it is seconds of pure Python, and the event loop must keep serving calls meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from consentd.reports_pg import LedgerReports

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CALLS = 20_000


def _rows(calls: int) -> list[dict[str, Any]]:
    facts = {
        "did": "+4930100001",
        "caller": "+4915100000001",
        "direction": "inbound",
        "line": "+4930100001",
        "policy_source": "number",
        "policy": "opt_in",
    }
    rows = []
    for n in range(calls):
        call_id = f"vm:{n}"
        started = NOW - timedelta(seconds=calls - n)
        for seq, (kind, at, data) in enumerate(
            [
                ("call_started", started, facts),
                ("consent_decided", started + timedelta(seconds=2), {"action": "caller_opted_in"}),
                ("call_ended", started + timedelta(seconds=9), {"cause": "normal"}),
            ]
        ):
            rows.append(
                {"id": 3 * n + seq, "event_key": f"{call_id}:{seq}", "call_id": call_id,
                 "node": "vm", "seq": seq, "kind": kind, "occurred_at": at, "stored_at": at,
                 "data": data}
            )  # fmt: skip
    return rows


class _Connection:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        if "agent_connected" in query:
            return [{"call_id": r["call_id"]} for r in self.rows if r["kind"] == "call_started"]
        return self.rows


class _Store:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[_Connection]:
        yield _Connection(self.rows)


async def test_a_days_calls_are_summed_while_the_event_loop_goes_on() -> None:
    reports = LedgerReports(_Store(_rows(CALLS)))  # type: ignore[arg-type]
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            await asyncio.sleep(0.005)
            ticks.append(time.perf_counter())

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    began = time.perf_counter()
    calls = await reports.agent_calls_started(NOW - timedelta(days=1), NOW, NOW)
    ended = time.perf_counter()
    done.set()
    await ticking

    assert len(calls) == CALLS
    assert {c["call_recording_consent_action"] for c in calls} == {"caller_opted_in"}
    assert calls[0]["id"] == "vm:0"
    # In the loop, the whole report would be one gap: no tick would land inside it.
    # Off it, the loop wakes throughout. Counted in ticks, not against the wall
    # clock, because a busy shared machine stretches both threads alike.
    inside = [t for t in ticks if began < t < ended]
    assert len(inside) >= 5, (len(inside), ended - began)

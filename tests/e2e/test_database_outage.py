"""Nothing is lost when PostgreSQL goes away: consentd journals and replays the ledger."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

from consentd.sipp import CallPlan, place_call
from tests.e2e.harness import (
    SCENARIO,
    Stack,
    consentd_calls,
    ledger_rows,
    local_stack,
    stack_command,
)


def health() -> dict[str, Any]:
    with urllib.request.urlopen(f"{local_stack().http}/healthz", timeout=2) as response:
        body: dict[str, Any] = json.load(response)
    return body


def test_calls_during_a_database_outage_reach_the_ledger_afterwards(stack: Stack) -> None:
    since = datetime.now(UTC)
    caller = "+4915199990002"
    stack_command("db-stop")
    try:
        plan = CallPlan("+4930100001", caller, talk_ms=2500)
        result = asyncio.run(place_call(plan, SCENARIO, sip_port=5191, media_port=17950))
        assert result.ok, result.output[-2000:]
        time.sleep(1.0)
        during = health()
        assert during["database"] == "journalling"
        assert during["ledger_backlog"] >= 4  # call_started, recording start/stop, call_ended
    finally:
        stack_command("db-start")

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and health()["ledger_backlog"]:
        time.sleep(0.5)
    after = health()
    assert after == {**after, "database": "connected", "ledger_backlog": 0}

    [call] = [c for c in consentd_calls(since=since) if c["caller"] == caller]
    assert call["call_recording_consent"] == "always"
    assert call["ended_at"] is not None
    assert len(call["recordings"]) == 1
    kinds = [row["kind"] for row in ledger_rows(call["id"])]
    assert kinds == ["call_started", "recording_started", "recording_stopped", "call_ended"]

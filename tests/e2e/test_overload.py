"""Past its capacity consentd strands no caller: extra calls go on unrecorded, and are counted.

The daemon is restarted with ``CONSENTD_MAX_CALLS=2`` and six callers ring at
once. Two are served; the other four are handed to the dialplan's
``[consentd-unrecorded]`` path at once, with a ``call_unserved`` row each and
``consentd_calls_unserved_total`` on ``/metrics``. Every SIPp call completes
(nobody rings forever), no unserved call is recorded, and a fresh ARI client
still gets its answer while the calls run.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from consentd.sipp import CallPlan, place_calls
from tests.e2e.harness import (
    SCENARIO,
    Stack,
    consentd_calls,
    ledger_rows,
    local_stack,
    restart_daemon,
)

pytestmark = pytest.mark.e2e


def _metric(name: str) -> float:
    stack = local_stack()
    request = urllib.request.Request(
        f"{stack.http}/metrics", headers={"Authorization": f"Bearer {stack.api_token}"}
    )
    with urllib.request.urlopen(request, timeout=2) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _fresh_ari_client_answers() -> bool:
    stack = local_stack()
    request = urllib.request.Request(f"{stack.ari_url}/asterisk/info", headers=stack.ari_headers())
    with urllib.request.urlopen(request, timeout=3) as response:
        return bool(response.status == 200)


def test_calls_beyond_capacity_go_on_unrecorded_and_are_counted(stack: Stack) -> None:
    restart_daemon(stack.policies, CONSENTD_MAX_CALLS="2")
    try:
        since = datetime.now(UTC)
        plans = [
            replace(CallPlan("+4930100001", f"+491519998800{n}", talk_ms=5000), speak=True)
            for n in range(6)
        ]

        async def calls_and_probe() -> tuple[list[object], bool]:
            calls = asyncio.create_task(place_calls(plans, SCENARIO, first_sip_port=5250))
            await asyncio.sleep(2.5)  # all six are up now
            answered = await asyncio.to_thread(_fresh_ari_client_answers)
            return list(await calls), answered

        results, ari_answered = asyncio.run(calls_and_probe())
        assert ari_answered, "a fresh ARI client got no answer while the calls ran"
        assert all(r.ok for r in results), "a caller was stranded or failed"  # type: ignore[attr-defined]
        time.sleep(1.5)

        calls = {c["caller"]: c for c in consentd_calls(since=since)}
        assert set(calls) == {p.caller for p in plans}
        rows_of = {caller: ledger_rows(call["id"]) for caller, call in calls.items()}
        unserved = {
            caller: rows
            for caller, rows in rows_of.items()
            if any(r["kind"] == "call_unserved" for r in rows)
        }
        assert len(unserved) == 4
        for caller, rows in unserved.items():
            kinds = [r["kind"] for r in rows]
            assert kinds == ["call_started", "call_unserved", "call_ended"], (caller, kinds)
            assert rows[1]["data"] == {"reason": "max_calls"}
            assert calls[caller]["recordings"] == []
        served = [c for caller, c in calls.items() if caller not in unserved]
        assert all(len(c["recordings"]) == 1 for c in served)  # always: recorded
        assert _metric("consentd_calls_unserved_total") == 4
        assert _metric("consentd_calls_total") == 6
    finally:
        restart_daemon(stack.policies)

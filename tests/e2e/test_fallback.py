"""When consentd is not connected, calls still go through, unrecorded, and Asterisk logs it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from consentd.sipp import CallPlan, place_call
from tests.e2e.harness import SCENARIO, Stack, consentd_calls


def test_call_without_daemon_falls_back_to_no_recording_and_is_logged(stack: Stack) -> None:
    messages = stack.root / "var/log/asterisk/messages"
    monitor = stack.root / "var/spool/asterisk/monitor"
    recordings_before = set(monitor.glob("*.wav"))
    log_offset = messages.stat().st_size
    caller = "+4915199990001"
    since = datetime.now(UTC)
    stack.stop_daemon()
    try:
        # +4930100001 is "always": with the daemon up it would be recorded.
        plan = CallPlan("+4930100001", caller, talk_ms=2000)
        result = asyncio.run(place_call(plan, SCENARIO, sip_port=5190, media_port=17900))
    finally:
        stack.restart_daemon()

    assert result.ok, result.output[-2000:]
    with messages.open(encoding="utf-8", errors="replace") as log:
        log.seek(log_offset)
        new_lines = log.read().splitlines()
    fallback = [
        line for line in new_lines if "] WARNING[" in line and "consentd unreachable" in line
    ]
    assert len(fallback) == 1, new_lines[-20:]
    assert "+4930100001" in fallback[0] and caller in fallback[0]
    assert set(monitor.glob("*.wav")) == recordings_before
    assert caller not in {c["caller"] for c in consentd_calls(since=since)}

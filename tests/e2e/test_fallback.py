"""When consentd is not connected, calls still go through, unrecorded, and Asterisk logs it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from consentd.sipp import CallPlan, place_call
from tests.e2e.harness import SCENARIO, Stack, consentd_calls, ledger_rows


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
    served = [c for c in consentd_calls(since=since) if c["caller"] == caller]
    assert not [c for c in served if not c["consentd_unavailable"]], served


def test_call_handled_while_consentd_was_away_appears_in_the_ledger(stack: Stack) -> None:
    """The dialplan's fallback log reaches the ledger when consentd is back; nothing invented."""
    fallback_log = stack.root / "var/log/asterisk/consentd-fallback.log"
    caller = "+4915199990077"
    since = datetime.now(UTC)
    stack.stop_daemon()
    try:
        plan = CallPlan("+4930100003", caller, talk_ms=3000)
        result = asyncio.run(place_call(plan, SCENARIO, sip_port=5192, media_port=17920))
    finally:
        stack.restart_daemon()
    assert result.ok, result.output[-2000:]
    assert caller.encode() not in fallback_log.read_bytes()  # base64 in the file

    call = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [c for c in consentd_calls(since=since) if c["caller"] == caller]
        if found and found[0]["ended_at"]:
            call = found[0]
            break
        time.sleep(0.5)
    assert call is not None, f"no ended fallback call from {caller} in consentd calls"
    assert len(found) == 1, found
    assert call["consentd_unavailable"] is True
    assert call["phone_number"] == "+4930100003"
    assert call["direction"] == "inbound"
    assert call["call_recording_consent"] is None  # no policy was applied
    assert call["recordings"] == [] and call["recording_time"] == 0
    assert call["fallback"]["branch"] == "stasis_failed"
    assert call["fallback"]["uniqueid"] == call["id"].rsplit(":", 1)[1]
    assert call["fallback"]["linkedid"] == call["fallback"]["uniqueid"]  # a call of its own
    started = datetime.fromisoformat(call["started_at"])
    ended = datetime.fromisoformat(call["ended_at"])
    assert since <= started < ended <= datetime.now(UTC)
    assert 2.5 <= (ended - started).total_seconds() <= 10, (started, ended)
    rows = ledger_rows(call["id"])
    assert [r["kind"] for r in rows] == ["call_started", "call_ended"]
    assert "channel_id" not in rows[0]["data"]

    # A restart reads the whole file again: still one call, two rows.
    stack.restart_daemon()
    time.sleep(1.0)
    assert [c["id"] for c in consentd_calls(since=since) if c["caller"] == caller] == [call["id"]]
    assert len(ledger_rows(call["id"])) == 2

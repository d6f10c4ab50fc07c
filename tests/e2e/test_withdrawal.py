"""Withdrawal over real SIP: an opt-in caller consents with 3, then takes it back with 3."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from consentd.sipp import CallPlan, place_call
from tests.e2e.harness import SCENARIO, Stack, collect_outcomes


def test_a_second_3_withdraws_and_deletes_the_recording(stack: Stack) -> None:
    since = datetime.now(UTC)
    plan = CallPlan("+4930100015", "+4915100000601", 2000, "3", 3000, "3", talk_ms=2000, speak=True)
    caller = asyncio.run(place_call(plan, SCENARIO, sip_port=5190, media_port=17900))
    outcome = collect_outcomes({"call": (caller, None)}, since)["call"]

    assert caller.ok, caller.output[-2000:]
    actions = [r["data"]["action"] for r in outcome.rows("consent_decided")]
    assert actions == ["caller_opted_in", "caller_withdrew"]
    started = outcome.first("recording_started")["data"]
    assert outcome.first("recording_stopped")["data"]["reason"] == "caller_withdrew"
    assert outcome.first("recording_deleted")["data"]["file"] == started["file"]
    assert not stack.host_path(started["file"]).exists()
    details = outcome.details
    assert details["call_recording_consent_action"] == "caller_withdrew"
    assert details["recordings"] == [] and details["recording_time"] == 0
    assert abs(details["not_recording_time"] - plan.duration_s) <= 1.0
    # 2 s to the consent, 3 s recorded before the withdrawal
    assert (
        abs(outcome.seconds("recording_stopped") - outcome.seconds("recording_started") - 3) <= 0.6
    )

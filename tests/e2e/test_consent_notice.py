"""A consent notice Asterisk cannot play: the call goes on, and is never recorded.

The operator's greeting of +4930100017 exists for consentd's loader but is taken
away from Asterisk's sounds before the call, as on a PBX whose greetings nobody
installed (CONSENTD_INSTALL_GREETINGS=false, ``consentd greetings --export`` not
run). ARI ends the playback "failed"; an opt-out call would otherwise record from
there. A caller who hangs up during a greeting that plays is just a call's end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

from consentd.greetings import CUSTOM_DIR
from consentd.openapi import document
from consentd.sipp import CallPlan, place_calls
from tests.api_schema import validate_response
from tests.e2e.harness import SCENARIO, Stack, collect_outcomes, local_stack


def api_calls(**query: str) -> Any:
    """GET /api/calls as the dashboard asks it (the export records, PostgreSQL's filter)."""
    stack = local_stack()
    request = urllib.request.Request(
        f"{stack.http}/api/calls?{urllib.parse.urlencode(query)}",
        headers={"Authorization": f"Bearer {stack.api_token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_an_opt_out_call_whose_notice_cannot_play_is_never_recorded(stack: Stack) -> None:
    source = stack.policies.parent / "notice-missing.wav"
    name = hashlib.sha256(source.read_bytes()).hexdigest()[:24]
    installed = stack.host_path(f"/var/lib/asterisk/sounds/{CUSTOM_DIR}/{name}.wav")
    assert installed.exists(), "consentd did not install the greeting it is given"
    hidden = installed.with_name(installed.name + ".hidden")
    since = datetime.now(UTC)
    plans = [
        # The notice cannot play; a 3 at 2.5 s changes nothing (nobody asked).
        CallPlan("+4930100017", "+4915100000601", 2500, "3", talk_ms=3000, speak=True),
        # Hangs up at 1 s, while the bundled opt-out greeting still plays.
        CallPlan("+4930100003", "+4915100000602", talk_ms=1000, speak=True),
    ]
    installed.rename(hidden)
    try:
        missing, hung_up = asyncio.run(
            place_calls(plans, SCENARIO, first_sip_port=5560, first_media_port=18800)
        )
    finally:
        hidden.rename(installed)
    found = collect_outcomes({"missing": (missing, None), "hung_up": (hung_up, None)}, since)

    # The call completes, the caller is kept on the line until they hang up.
    assert missing.ok, missing.output[-2000:]
    outcome = found["missing"]
    kinds = [row["kind"] for row in outcome.ledger]
    assert outcome.first("greeting_finished")["data"]["state"] == "failed"
    failed = outcome.first("consent_notice_failed")["data"]
    assert failed["media"] == f"sound:/var/lib/asterisk/sounds/{CUSTOM_DIR}/{name}"
    assert failed["state"] == "failed" and failed["action"] == "notice_failed"
    assert failed["source"] == str(source.resolve())
    assert "recording_started" not in kinds and "consent_decided" not in kinds
    assert [r["data"]["decides"] for r in outcome.rows("keypress")] == [False]
    assert kinds[-1] == "call_ended"
    details = outcome.details
    assert details["call_recording_consent"] == "opt_out"
    assert details["call_recording_consent_action"] == "notice_failed"
    assert details["call_recording_consent_keypress"] is None
    assert details["recordings"] == [] and details["segments"] == []
    assert details["recording_time"] == 0
    validate_response(document(), "/calls", "GET", 200, [details])
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in details["id"])
    monitor = stack.host_path("/var/spool/asterisk/monitor")
    assert list(monitor.glob(f"consentd-{safe_id}-*")) == []
    # The dashboard's filter finds it under its own outcome, not as a refusal.
    listed = api_calls(outcome="notice_failed", number=missing.plan.caller)
    validate_response(document(), "/api/calls", "GET", 200, listed)
    # (the database keeps the calls of earlier runs, by the same caller)
    assert details["id"] in [c["call_id"] for c in listed["calls"]]
    assert {c["call_recording_consent_action"] for c in listed["calls"]} == {"notice_failed"}
    refused = api_calls(outcome="caller_opted_out", number=missing.plan.caller)["calls"]
    assert details["id"] not in [c["call_id"] for c in refused]

    # A greeting cut off by the caller's hangup is only the call's end.
    assert hung_up.ok, hung_up.output[-2000:]
    ended = found["hung_up"]
    # Asterisk ends the cut-off greeting "failed" as well (its stream read the hangup).
    assert ended.first("greeting_finished")["data"]["state"] == "failed"
    assert [row["kind"] for row in ended.ledger].count("consent_notice_failed") == 0
    assert ended.details["call_recording_consent_action"] is None

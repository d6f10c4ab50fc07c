"""An operator's own greeting as they come (MP3, 44.1 kHz stereo), played on a real call.

consentd converts it at load; the caller must hear it whole, and the ledger
must prove which file it was (its SHA-256).
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

from consentd.sipp import CallPlan, place_call
from tests.e2e.harness import (
    MP3_GREETING_S,
    SCENARIO,
    Stack,
    collect_outcomes,
)


def test_an_mp3_greeting_is_converted_and_played_whole(stack: Stack) -> None:
    since = datetime.now(UTC)
    plan = CallPlan("+4930100009", "+4915100000401", 2500, "3", talk_ms=2000, speak=True)
    caller = asyncio.run(place_call(plan, SCENARIO, sip_port=5170, media_port=17700))
    outcome = collect_outcomes({"mp3": (caller, None)}, since)["mp3"]

    assert caller.ok, caller.output[-2000:]
    source = stack.policies.parent / "operator-greeting.mp3"
    played = outcome.first("greeting_played")["data"]
    assert played["source"] == str(source.resolve())
    assert played["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert played["media"].startswith("sound:/var/lib/asterisk/sounds/consentd-custom/")
    installed = stack.host_path(played["media"].removeprefix("sound:") + ".wav")
    assert installed.exists()
    # Played to its end before the 3 (at 2.5 s): finished, and as long as the MP3.
    finished = outcome.first("greeting_finished")
    assert finished["data"]["state"] == "done"
    heard = outcome.seconds("greeting_finished") - outcome.seconds("greeting_played")
    assert abs(heard - MP3_GREETING_S) <= 0.3, heard
    assert outcome.details["call_recording_consent_action"] == "caller_opted_in"

"""Per-call details derived from the ledger of a call played through the real call flow."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from consentd.call_details import recent_calls, summarize
from consentd.call_model import CallFacts
from consentd.ledger import MemoryLedger

T0 = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)
FILE_1 = "/var/spool/asterisk/monitor/consentd-pbx1_1764432000.17-1.wav"

Facts = Callable[..., CallFacts]
Script = Callable[..., Any]


def details_of(call: Any, now: datetime | None = None) -> dict[str, Any]:
    summary = summarize(call.ledger_events(), now or call.clock())
    assert summary is not None
    return summary


def test_opt_in_call_where_the_caller_pressed_3(facts: Facts, script: Script) -> None:
    call = script(facts("opt_in", language="de", did="+4930100002"))
    call.arrive()
    call.wait(4)
    call.press("3")
    call.wait(26)
    call.hang_up()

    details = details_of(call)

    assert details["id"] == "pbx1:1764432000.17"
    assert details["phone_number"] == "+4930100002"
    assert details["caller"] == "+4917612345678"
    assert details["direction"] == "inbound"
    assert details["policy_source"] == "number"
    assert details["call_recording_consent"] == "opt_in"
    assert details["call_recording_consent_action"] == "caller_opted_in"
    assert details["call_recording_consent_keypress"] == "3"
    assert details["recording_time"] == 26
    assert details["not_recording_time"] == 4
    assert details["recordings"] == [FILE_1]
    assert details["started_at"] == "2026-11-29T16:00:00+00:00"
    assert details["ended_at"] == "2026-11-29T16:00:30+00:00"


def test_opt_in_call_without_a_3_has_no_recording(facts: Facts, script: Script) -> None:
    call = script(facts("opt_in"))
    call.arrive()
    call.wait(2)
    call.press("1")
    call.wait(5)
    call.greeting_ends()
    call.wait(13)
    call.hang_up()

    details = details_of(call)

    assert details["call_recording_consent"] == "opt_in"
    assert details["call_recording_consent_action"] is None
    assert details["call_recording_consent_keypress"] is None
    assert details["recording_time"] == 0
    assert details["not_recording_time"] == 20
    assert details["recordings"] == []
    assert details["keypresses"] == [
        {"digit": "1", "at": "2026-11-29T16:00:02+00:00", "decides": False}
    ]


def test_opt_out_call_where_the_caller_pressed_3_keeps_no_audio(
    facts: Facts, script: Script
) -> None:
    call = script(facts("opt_out", did="+4930100003"))
    call.arrive()
    call.wait(3)
    call.press("3")
    call.wait(17)
    call.hang_up()

    details = details_of(call)

    assert details["call_recording_consent"] == "opt_out"
    assert details["call_recording_consent_action"] == "caller_opted_out"
    assert details["call_recording_consent_keypress"] == "3"
    assert details["recordings"] == []
    assert details["recording_time"] == 0
    assert details["not_recording_time"] == 20
    assert details["segments"] == [
        {
            "segment": 1,
            "file": FILE_1,
            "started_at": "2026-11-29T16:00:00+00:00",
            "stopped_at": "2026-11-29T16:00:03+00:00",
            "kept": False,
        }
    ]


def test_opt_out_call_with_keep_partial_keeps_the_audio_before_the_3(
    facts: Facts, script: Script
) -> None:
    call = script(facts("opt_out", keep_partial_on_opt_out=True))
    call.arrive()
    call.wait(3)
    call.press("3")
    call.wait(17)
    call.hang_up()

    details = details_of(call)

    assert details["call_recording_consent_action"] == "caller_opted_out"
    assert details["recordings"] == [FILE_1]
    assert details["recording_time"] == 3
    assert details["not_recording_time"] == 17


def test_opt_out_call_without_a_3_is_recorded_until_hangup(facts: Facts, script: Script) -> None:
    call = script(facts("opt_out"))
    call.arrive()
    call.wait(6)
    call.greeting_ends()
    call.wait(39)
    call.hang_up()

    details = details_of(call)

    assert details["call_recording_consent_action"] is None
    assert details["call_recording_consent_keypress"] is None
    assert details["recordings"] == [FILE_1]
    assert (details["recording_time"], details["not_recording_time"]) == (45, 0)


def test_always_call_is_recorded_and_a_3_is_no_consent_action(facts: Facts, script: Script) -> None:
    call = script(facts("always", did="+4930100001"))
    call.arrive()
    call.wait(5)
    call.press("3")
    call.wait(10)
    call.hang_up()

    details = details_of(call)

    assert details["call_recording_consent"] == "always"
    assert details["call_recording_consent_action"] is None
    assert details["call_recording_consent_keypress"] is None
    assert (details["recording_time"], details["not_recording_time"]) == (15, 0)
    assert details["keypresses"] == [
        {"digit": "3", "at": "2026-11-29T16:00:05+00:00", "decides": False}
    ]


def test_never_call_is_not_recorded(facts: Facts, script: Script) -> None:
    call = script(facts("never", did="+4930999999", policy_source="default"))
    call.arrive()
    call.wait(12)
    call.hang_up()

    details = details_of(call)

    assert details["call_recording_consent"] == "never"
    assert details["policy_source"] == "default"
    assert details["phone_number"] == "+4930999999"
    assert (details["recording_time"], details["not_recording_time"]) == (0, 12)
    assert details["recordings"] == []


def test_recording_paths_are_host_paths_when_asterisk_is_chrooted(
    facts: Facts, script: Script
) -> None:
    call = script(facts("always", asterisk_root="/srv/asterisk"))
    call.arrive()
    call.wait(1)
    call.hang_up()

    assert details_of(call)["recordings"] == ["/srv/asterisk" + FILE_1]


def test_call_in_progress_is_measured_until_now_and_has_no_end(
    facts: Facts, script: Script
) -> None:
    call = script(facts("opt_in"))
    call.arrive()
    call.wait(5)
    call.press("3")

    details = details_of(call, now=T0 + timedelta(seconds=25))

    assert details["ended_at"] is None
    assert (details["recording_time"], details["not_recording_time"]) == (20, 5)


def test_whole_seconds_still_add_up_to_the_call_duration(facts: Facts, script: Script) -> None:
    call = script(facts("opt_in"))
    call.arrive()
    call.wait(2.4)
    call.press("3")
    call.wait(8.2)
    call.hang_up()

    details = details_of(call)

    assert details["recording_time"] + details["not_recording_time"] == 11


def test_events_in_any_order_give_the_same_details(facts: Facts, script: Script) -> None:
    call = script(facts("opt_out"))
    call.arrive()
    call.wait(3)
    call.press("3")
    call.wait(5)
    call.hang_up()
    events = call.ledger_events()

    assert summarize(reversed(events), T0) == summarize(events, T0)


def test_ledger_without_call_started_gives_no_details(facts: Facts, script: Script) -> None:
    call = script(facts("always"))
    call.arrive()
    call.hang_up()

    assert summarize(call.ledger_events()[1:], T0) is None
    assert summarize([], T0) is None


async def test_recent_calls_are_newest_first_and_limited(facts: Facts, script: Script) -> None:
    store = MemoryLedger()
    for minute, number in enumerate(["+4930100001", "+4930100002", "+4930100003"]):
        call = script(
            facts("never", did=number, call_id=f"pbx1:{minute}", channel_id=str(minute)),
        )
        call.wait(60 * minute)
        call.arrive()
        call.wait(10)
        call.hang_up()
        await store.append(call.ledger_events())

    recent = await recent_calls(store, 2, T0 + timedelta(hours=1))

    assert [c["phone_number"] for c in recent] == ["+4930100003", "+4930100002"]
    assert [c["id"] for c in recent] == ["pbx1:2", "pbx1:1"]


WAIT = st.floats(min_value=0, max_value=120, allow_nan=False, allow_infinity=False)


@given(
    policy=st.sampled_from(["always", "never", "opt_in", "opt_out"]),
    keep_partial=st.booleans(),
    before_3=WAIT,
    after_3=WAIT,
    presses_3=st.booleans(),
)
def test_recorded_and_unrecorded_seconds_always_sum_to_the_call_duration(
    facts: Facts,
    script: Script,
    policy: str,
    keep_partial: bool,
    before_3: float,
    after_3: float,
    presses_3: bool,
) -> None:
    call = script(facts(policy, keep_partial_on_opt_out=keep_partial))
    call.arrive()
    call.wait(before_3)
    if presses_3:
        call.press("3")
    call.wait(after_3)
    call.hang_up()

    details = details_of(call)

    duration = (call.clock() - T0).total_seconds()
    assert details["recording_time"] + details["not_recording_time"] == round(duration)
    assert details["recording_time"] >= 0 and details["not_recording_time"] >= 0

"""Per-call details derived from the ledger of a call played through the real call flow."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from consentd.call_details import recent_calls, summarize
from consentd.call_model import (
    AgentCompleted,
    AgentConnected,
    CallFacts,
    QueueAbandoned,
    QueueJoined,
    ReturnedFromQueue,
    VoicemailFinished,
    VoicemailStarted,
)
from consentd.ledger import LedgerEvent, MemoryLedger
from consentd.policy import Group

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
    call.wait(5)
    call.greeting_ends()  # recording from here
    call.wait(3)
    call.press("3")
    call.wait(12)
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
            "location": "asterisk://pbx1" + FILE_1,
            "started_at": "2026-11-29T16:00:05+00:00",
            "stopped_at": "2026-11-29T16:00:08+00:00",
            "kept": False,
        }
    ]


def test_opt_out_call_refused_during_the_greeting_never_recorded(
    facts: Facts, script: Script
) -> None:
    call = script(facts("opt_out", did="+4930100003"))
    call.arrive()
    call.wait(2)
    call.press("3")
    call.greeting_ends()
    call.wait(18)
    call.hang_up()

    details = details_of(call)

    assert details["call_recording_consent_action"] == "caller_opted_out"
    assert details["segments"] == [] and details["recordings"] == []
    assert (details["recording_time"], details["not_recording_time"]) == (0, 20)


def test_opt_out_call_with_keep_partial_keeps_the_audio_before_the_3(
    facts: Facts, script: Script
) -> None:
    call = script(facts("opt_out", keep_partial_on_opt_out=True))
    call.arrive()
    call.greeting_ends()
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
    # from the end of the greeting: the greeting itself is not recorded
    assert (details["recording_time"], details["not_recording_time"]) == (39, 6)


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

    details = details_of(call)
    assert details["recordings"] == ["/srv/asterisk" + FILE_1]
    # Where it lives on the PBX, as that Asterisk names it, wherever consentd runs.
    assert details["recording_locations"] == ["asterisk://pbx1" + FILE_1]
    assert [s["location"] for s in details["segments"]] == ["asterisk://pbx1" + FILE_1]


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


# ---------------------------------------------------------------- routed calls

SUPPORT = Group(queue="support", timeout=20)
VOICEMAIL_FILE = "/var/spool/asterisk/recording/consentd-vm-pbx1_1764432000.17.wav"


def routed_call(facts: Facts, script: Script, recording: str, **options: Any) -> Any:
    """A routed call through its greetings (5 s and 4 s) into the queue, joined at 10 s."""
    call = script(facts(recording, group=SUPPORT, did="+4930100010", **options))
    call.arrive()
    call.wait(5)
    call.greeting_ends()
    if call.call.greeting_playback is not None:
        call.wait(4)
        call.greeting_ends()
    call.clock.now = T0 + timedelta(seconds=10)
    call.send(QueueJoined("support", 1, call.clock()))
    return call


def agent_answers(call: Any, queue_time: int) -> None:
    call.send(AgentConnected("Agent 1", "PJSIP/agent1", queue_time, 3, call.clock()))


def test_routed_opt_in_call_records_only_the_time_bridged_to_the_agent(
    facts: Facts, script: Script
) -> None:
    call = routed_call(facts, script, "opt_in")
    call.wait(4)
    call.press("3")  # 14 s: MixMonitor waits for the bridge
    call.wait(16)
    agent_answers(call, queue_time=20)  # 30 s
    call.wait(45)
    call.hang_up()  # 75 s

    details = details_of(call)

    assert details["call_recording_consent_action"] == "caller_opted_in"
    assert details["recording_time"] == 45
    assert details["not_recording_time"] == 30
    assert details["recordings"] == [FILE_1]
    assert details["group"] == "support"
    assert details["queue"] == "support"
    assert details["agent"] == "Agent 1"
    assert details["answered_at"] == "2026-11-29T16:00:30+00:00"
    assert details["queue_time"] == 20
    assert details["abandoned"] is False
    assert details["voicemail"] is False


def test_routed_recording_ends_when_the_agent_completes_not_at_the_hangup(
    facts: Facts, script: Script
) -> None:
    call = routed_call(facts, script, "opt_in")
    call.wait(4)
    call.press("3")  # 14 s
    call.wait(16)
    agent_answers(call, queue_time=20)  # 30 s
    call.wait(30)
    call.send(AgentCompleted("agent", 30, call.clock()))  # 60 s
    call.wait(2)
    call.hang_up()  # 62 s

    details = details_of(call)

    assert (details["recording_time"], details["not_recording_time"]) == (30, 32)


def test_routed_opt_in_call_where_3_came_while_talking_records_from_the_press(
    facts: Facts, script: Script
) -> None:
    call = routed_call(facts, script, "opt_in")
    call.wait(10)
    agent_answers(call, queue_time=10)  # 20 s
    call.wait(15)
    call.press("3")  # 35 s
    call.wait(25)
    call.hang_up()  # 60 s

    details = details_of(call)

    assert (details["recording_time"], details["not_recording_time"]) == (25, 35)
    assert details["keypresses"] == [
        {"digit": "3", "at": "2026-11-29T16:00:35+00:00", "decides": True}
    ]


def test_routed_opt_in_call_without_a_3_records_nothing_even_when_answered(
    facts: Facts, script: Script
) -> None:
    call = routed_call(facts, script, "opt_in")
    call.wait(5)
    agent_answers(call, queue_time=5)  # 15 s
    call.wait(40)
    call.hang_up()

    details = details_of(call)

    assert details["call_recording_consent_action"] is None
    assert (details["recording_time"], details["not_recording_time"]) == (0, 55)
    assert details["recordings"] == []
    assert details["agent"] == "Agent 1"
    assert details["queue_time"] == 5


def test_routed_always_call_that_hung_up_in_the_queue_recorded_nothing(
    facts: Facts, script: Script
) -> None:
    call = routed_call(facts, script, "always")
    call.wait(8)
    call.send(QueueAbandoned(8, call.clock()))  # the caller hung up waiting
    call.hang_up()

    details = details_of(call)

    assert (details["recording_time"], details["not_recording_time"]) == (0, 18)
    assert details["abandoned"] is True
    assert details["agent"] is None
    assert details["answered_at"] is None
    assert details["queue_time"] is None
    assert details["voicemail"] is False


def voicemail_call(facts: Facts, script: Script, recording: str, **options: Any) -> Any:
    """Nobody answered within 20 s; voicemail greeting 3 s, then a 14 s message."""
    call = routed_call(facts, script, recording, **options)
    call.wait(20)
    call.send(QueueAbandoned(20, call.clock()))  # app_queue reports the timeout as an abandon
    call.send(ReturnedFromQueue("TIMEOUT", call.clock()))  # 30 s
    call.wait(3)
    call.greeting_ends()
    call.wait(1)
    call.send(VoicemailStarted(call.clock()))  # 34 s
    call.wait(14)
    call.send(VoicemailFinished("done", 14, call.clock()))  # 48 s
    call.wait(0.2)
    call.hang_up()
    return call


def test_voicemail_is_counted_as_recorded_and_listed_with_the_recordings(
    facts: Facts, script: Script
) -> None:
    call = voicemail_call(facts, script, "never", asterisk_root="/srv/asterisk")

    details = details_of(call)

    assert details["voicemail"] is True
    assert details["recordings"] == ["/srv/asterisk" + VOICEMAIL_FILE]
    assert details["recording_locations"] == ["asterisk://pbx1" + VOICEMAIL_FILE]
    assert details["recording_time"] == 14
    assert details["not_recording_time"] == 34
    assert details["abandoned"] is False
    assert details["agent"] is None


def recording_a_voicemail(facts: Facts, script: Script) -> Any:
    """Nobody answered within 20 s; the voicemail greeting ended and the message began."""
    call = routed_call(facts, script, "never")
    call.wait(20)
    call.send(ReturnedFromQueue("TIMEOUT", call.clock()))
    call.greeting_ends()
    call.send(VoicemailStarted(call.clock()))
    return call


def test_a_voicemail_asterisk_never_wrote_is_neither_listed_nor_counted(
    facts: Facts, script: Script
) -> None:
    """The caller hung up during the beep: ARI ends the recording before opening its
    file, and its RecordingFinished has no duration (found by
    tests/e2e/test_arbitrary_moments.py: details listed a file that never existed)."""
    call = recording_a_voicemail(facts, script)
    call.wait(0.2)
    call.send(VoicemailFinished("done", None, call.clock()))
    call.hang_up()

    details = details_of(call)

    assert details["voicemail"] is False
    assert details["recordings"] == [] and details["recording_locations"] == []
    assert details["recording_time"] == 0


def test_a_voicemail_cut_by_the_hangup_is_still_listed(facts: Facts, script: Script) -> None:
    """No RecordingFinished before the hangup (state "hangup"): the message may hold audio."""
    call = recording_a_voicemail(facts, script)
    call.wait(5)
    call.hang_up()

    details = details_of(call)

    assert details["voicemail"] is True and len(details["recordings"]) == 1
    assert details["recording_time"] == 5


def test_voicemail_of_a_caller_who_opted_out_is_still_kept(facts: Facts, script: Script) -> None:
    call = script(facts("opt_out", group=SUPPORT))
    call.arrive()
    call.wait(2)
    call.press("3")
    call.wait(3)
    call.greeting_ends()  # the consent greeting is skipped after the 3
    call.wait(20)
    call.send(ReturnedFromQueue("TIMEOUT", call.clock()))
    call.greeting_ends()
    call.send(VoicemailStarted(call.clock()))
    call.wait(9)
    call.hang_up()  # mid-message

    details = details_of(call)

    assert details["call_recording_consent_action"] == "caller_opted_out"
    assert details["recordings"] == [VOICEMAIL_FILE]
    assert details["recording_time"] == 9
    assert details["segments"][0]["kept"] is False


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


MILLISECONDS = st.integers(min_value=0, max_value=240_000)


@given(in_queue=MILLISECONDS, talking=MILLISECONDS, press_after=MILLISECONDS)
def test_routed_recording_time_is_the_overlap_of_consent_and_the_agent_bridge(
    facts: Facts, script: Script, in_queue: int, talking: int, press_after: int
) -> None:
    """Times in whole milliseconds, so the expected rounding is exact."""
    call = routed_call(facts, script, "opt_in")
    connected_at = 10_000 + in_queue
    hangup_at = connected_at + talking
    pressed_at = 10_000 + press_after
    moments = sorted(
        [(pressed_at, "press"), (connected_at, "agent"), (hangup_at, "hangup")],
        key=lambda e: (e[0], e[1] == "hangup"),
    )
    for ms, what in moments:
        call.clock.now = T0 + timedelta(milliseconds=ms)
        if what == "press":
            call.press("3")
        elif what == "agent":
            agent_answers(call, queue_time=round(in_queue / 1000))
        else:
            call.hang_up()

    details = details_of(call)

    bridged_and_consented = max(0, hangup_at - max(pressed_at, connected_at))
    assert details["recording_time"] == round(bridged_and_consented / 1000)
    assert details["recording_time"] + details["not_recording_time"] == round(hangup_at / 1000)


def test_routed_recording_of_a_call_no_agent_answered_is_not_listed() -> None:
    t0 = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)
    segment = {
        "segment": 1,
        "file": "/var/spool/asterisk/monitor/x-1.wav",
        "path": "/srv/x-1.wav",
        "bridged_only": True,
    }
    started = {
        "did": "+4930100012", "caller": "+491", "direction": "inbound", "line": "phone",
        "policy": "always", "policy_source": "number", "group": "support", "queue": "support",
    }  # fmt: skip
    events = [
        LedgerEvent("k/0", "c", "pbx1", 0, "call_started", t0, started),
        LedgerEvent("k/1", "c", "pbx1", 1, "recording_started", t0, segment),
        LedgerEvent("k/2", "c", "pbx1", 2, "queue_joined", t0, {"queue": "support"}),
        LedgerEvent("k/3", "c", "pbx1", 3, "queue_abandoned", t0, {"queue_time": 5}),
        LedgerEvent(
            "k/4", "c", "pbx1", 4, "recording_stopped", t0, {**segment, "reason": "hangup"}
        ),
        LedgerEvent("k/5", "c", "pbx1", 5, "call_ended", t0.replace(second=9), {"cause": "x"}),
    ]

    details = summarize(events, t0)

    assert details is not None
    assert details["recordings"] == []
    assert details["recording_time"] == 0
    assert details["not_recording_time"] == 9
    assert details["abandoned"] is True


# ---------------------------------------------------------------- exact time accounting

D0 = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)


def rows(*spec: tuple[float, str, dict[str, Any]]) -> list[LedgerEvent]:
    """Ledger rows of one call: (seconds after D0, kind, data)."""
    started = {
        "did": "+4930100010", "caller": "+4917612345678", "direction": "inbound",
        "line": "phone", "policy_source": "number", "policy": "opt_in",
    }  # fmt: skip
    out = [LedgerEvent("c/0", "c", "pbx1", 0, "call_started", D0, started)]
    for seq, (seconds, kind, data) in enumerate(spec, start=1):
        out.append(
            LedgerEvent(f"c/{seq}", "c", "pbx1", seq, kind, D0 + timedelta(seconds=seconds), data)
        )
    return out


def segment(n: int, **more: Any) -> dict[str, Any]:
    return {"segment": n, "file": f"/m/{n}.wav", "path": f"/root/m/{n}.wav", **more}


def test_a_recording_overlapping_the_voicemail_counts_once_and_segments_are_listed() -> None:
    details = summarize(
        rows(
            (2, "consent_decided", {"action": "caller_opted_in", "digit": "3"}),
            (2, "recording_started", segment(1)),
            (6, "voicemail_started", {"path": "/root/vm.wav"}),
            (10, "voicemail_finished", {"path": "/root/vm.wav"}),
            (12, "call_ended", {"cause": "hangup"}),
            (12, "recording_stopped", segment(1)),
        ),
        D0,
    )
    assert details is not None
    assert details["recording_time"] == 10  # 2 s to 12 s, the voicemail inside it
    assert details["not_recording_time"] == 2
    assert details["recording_segments"] == [
        {"start": (D0 + timedelta(seconds=2)).isoformat(),
         "end": (D0 + timedelta(seconds=12)).isoformat()},
    ]  # fmt: skip


def test_a_bridged_only_recording_counts_from_the_agents_answer_with_wait_and_talk() -> None:
    details = summarize(
        rows(
            (1, "recording_started", segment(1, bridged_only=True)),
            (3, "queue_joined", {"queue": "support"}),
            (8, "agent_connected", {"agent": "agent1"}),
            (20, "agent_completed", {"reason": "caller"}),
            (20, "call_ended", {"cause": "hangup"}),
        ),
        D0,
    )
    assert details is not None
    assert (details["wait_time"], details["talk_time"]) == (5, 12)
    assert (details["recording_time"], details["not_recording_time"]) == (12, 8)
    assert details["recording_segments"][0]["start"] == (D0 + timedelta(seconds=8)).isoformat()


def test_a_call_handed_to_the_dialplan_waits_until_the_callee_answers() -> None:
    details = summarize(
        rows(
            (4, "routed", {"to": "dialplan", "context": "pbx", "extension": "200"}),
            (9, "callee_answered", {}),
            (15, "call_ended", {"cause": "hangup"}),
        ),
        D0,
    )
    assert details is not None
    assert (details["wait_time"], details["talk_time"]) == (5, 6)


def test_a_call_held_by_consentd_has_no_wait_or_talk_time_and_the_last_decision_stands() -> None:
    details = summarize(
        rows(
            (2, "consent_decided", {"action": "caller_opted_in", "digit": "3"}),
            (5, "consent_decided", {"action": "caller_withdrew", "digit": "3"}),
            (7, "call_ended", {"cause": "hangup"}),
        ),
        D0,
    )
    assert details is not None
    assert (details["wait_time"], details["talk_time"]) == (None, None)
    assert details["call_recording_consent_action"] == "caller_withdrew"
    assert details["recording_time"] + details["not_recording_time"] == 7


def test_an_outbound_recording_counts_from_the_callees_answer() -> None:
    details = summarize(
        rows(
            (0, "outbound_dialled", {"callee": "+4917699990000"}),
            (0, "recording_started", segment(1, bridged_only=True)),
            (2, "callee_answered", {}),
            (6, "recording_stopped", segment(1, bridged_only=True)),
            (6, "call_ended", {"cause": "hangup"}),
        ),
        D0,
    )
    assert details is not None
    assert details["recordings"] == ["/root/m/1.wav"]
    assert (details["recording_time"], details["not_recording_time"]) == (4, 2)
    assert (details["wait_time"], details["talk_time"]) == (2, 4)

"""The consent call flow: which commands each policy issues, and what the first 3 does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consentd.call_flow import Call, _Transition, handle, new_call
from consentd.call_model import (
    Answer,
    Answered,
    CallArrived,
    CallEnded,
    CallFacts,
    Command,
    CommandFailed,
    ConsentAction,
    ContinueUnrecorded,
    DeleteRecording,
    DtmfReceived,
    Hangup,
    HangupRequested,
    InternalError,
    LeftStasis,
    Media,
    Phase,
    Play,
    PlaybackFinished,
    PlaybackStarted,
    RecordingDeleted,
    RecordingStarted,
    RecordingStopped,
    StartRecording,
    StopPlayback,
    StopRecording,
    WriteLedger,
)
from tests.unit.flow_helpers import (
    CHANNEL,
    T0,
    actions,
    arrived,
    at,
    greeted,
    kinds,
    ledger,
    press,
)

GREETING = f"{CHANNEL}-greeting"
FILE_1 = "/var/spool/asterisk/monitor/consentd-pbx1_1764432000.17-1.wav"
FILE_2 = "/var/spool/asterisk/monitor/consentd-pbx1_1764432000.17-2.wav"

Facts = Callable[..., CallFacts]


def started_data(call_facts: CallFacts, **changes: Any) -> dict[str, Any]:
    data = {
        "did": call_facts.did,
        "caller": "+4917612345678",
        "direction": "inbound",
        "policy": call_facts.policy.recording.value,
        "line": call_facts.policy.line.value,
        "language": call_facts.policy.language,
        "policy_source": "number",
        "channel_id": CHANNEL,
        "node": "pbx1",
    }
    data.update(changes)
    return data


# ---------------------------------------------------------------- arrival per policy


def test_always_answers_starts_recording_and_holds_without_a_greeting(facts: Facts) -> None:
    call_facts = facts("always", did="+4930100001")

    call, commands = handle(new_call(call_facts), CallArrived(T0))
    assert commands == [WriteLedger(0, "call_started", T0, started_data(call_facts)), Answer()]
    assert call.phase is Phase.ANSWERING and call.recording is None

    call, commands = handle(call, Answered(at(0.05)))

    assert commands == [StartRecording(1, FILE_1)]
    assert call.recording is not None and call.recording.number == 1


def test_never_answers_and_holds_without_recording_or_greeting(facts: Facts) -> None:
    call_facts = facts("never", did="+4930100004")

    _, commands = handle(new_call(call_facts), CallArrived(T0))

    assert commands == [
        WriteLedger(0, "call_started", T0, started_data(call_facts)),
        Answer(),
    ]


def test_opt_in_answers_and_plays_the_greeting_without_recording(facts: Facts) -> None:
    call_facts = facts("opt_in", language="de")

    call, commands = handle(new_call(call_facts), CallArrived(T0))
    assert commands == [
        WriteLedger(0, "call_started", T0, started_data(call_facts, language="de")),
        Answer(),
    ]
    call, commands = handle(call, Answered(at(0.05)))

    assert commands == [
        Play(GREETING, Media("sound:consentd/call_recording_opt_in", "de", "bundled"))
    ]
    assert call.recording is None
    assert call.greeting_playback == GREETING


def test_opt_out_plays_the_greeting_then_records_from_its_end(facts: Facts) -> None:
    call_facts = facts("opt_out", did="+4930100003")

    call, commands = handle(new_call(call_facts), CallArrived(T0))
    assert actions(commands) == [Answer()]
    call, commands = handle(call, Answered(at(0.05)))
    assert actions(commands) == [
        Play(GREETING, Media("sound:consentd/call_recording_opt_out", "en", "bundled"))
    ]
    assert call.recording is None  # not while the greeting plays: see README, fidelity

    call, commands = handle(call, PlaybackFinished(GREETING, at(4.4)))

    assert kinds(commands) == ["greeting_finished"]
    assert actions(commands) == [StartRecording(1, FILE_1)]
    assert call.phase is Phase.HOLDING


def test_call_started_records_the_policy_source_of_an_unknown_number(facts: Facts) -> None:
    call_facts = facts("never", did="+4930999999", policy_source="default")

    _, commands = handle(new_call(call_facts), CallArrived(T0))

    assert ledger(commands)[0].data["policy_source"] == "default"
    assert ledger(commands)[0].data["did"] == "+4930999999"


def test_greeting_started_is_written_with_the_media_that_proves_what_was_heard(
    facts: Facts,
) -> None:
    custom = Media("sound:consentd-custom/4f2a", "fr", "/etc/consentd/fr.wav", "4f2a" * 16)
    call_facts = facts("opt_in")
    call = arrived(replace(call_facts, greeting=custom))

    _, commands = handle(call, PlaybackStarted(GREETING, at(0.2)))

    assert commands == [
        WriteLedger(
            1,
            "greeting_played",
            at(0.2),
            {
                "playback_id": GREETING,
                "kind": "opt_in",
                "media": "sound:consentd-custom/4f2a",
                "language": "fr",
                "source": "/etc/consentd/fr.wav",
                "sha256": "4f2a" * 16,
            },
        )
    ]


# ---------------------------------------------------------------- opt_in


def test_opt_in_press_3_during_greeting_stops_it_and_starts_recording(facts: Facts) -> None:
    call = arrived(facts("opt_in"))

    call, commands = press(call, "3", seconds=2.5)

    assert commands == [
        WriteLedger(
            1,
            "keypress",
            at(2.5),
            {
                "digit": "3",
                "duration_ms": 120,
                "phase": "greeting",
                "where": "greeting",
                "decides": True,
            },
        ),
        WriteLedger(
            2,
            "consent_decided",
            at(2.5),
            {"action": "caller_opted_in", "digit": "3", "phase": "greeting", "where": "greeting"},
        ),
        StopPlayback(GREETING, before_recording=True),
        StartRecording(1, FILE_1),
    ]
    assert call.decision is not None and call.decision.value == "caller_opted_in"


def test_a_3_that_reaches_consentd_after_the_hangup_request_stops_the_greeting_unwaited(
    facts: Facts,
) -> None:
    """The BYE came first: no recording follows, so the stop holds nothing up."""
    call = arrived(facts("opt_in"))
    call, _ = handle(call, HangupRequested(at(2.4)))

    _, commands = press(call, "3", seconds=2.5)

    assert actions(commands) == [StopPlayback(GREETING, before_recording=False)]


def test_opt_in_press_3_after_greeting_starts_recording_without_stopping_playback(
    facts: Facts,
) -> None:
    call = arrived(facts("opt_in"))
    call, _ = handle(call, PlaybackFinished(GREETING, at(6)))

    _, commands = press(call, "3", seconds=8)

    assert kinds(commands) == ["keypress", "consent_decided"]
    assert ledger(commands)[0].data["phase"] == "holding"
    assert actions(commands) == [StartRecording(1, FILE_1)]


def test_opt_in_without_a_3_never_records(facts: Facts) -> None:
    call = arrived(facts("opt_in"))
    everything: list[Command] = []
    for step, digit in enumerate("12#*0"):
        call, commands = press(call, digit, seconds=1 + step)
        everything += commands
    call, commands = handle(call, PlaybackFinished(GREETING, at(7)))
    everything += commands
    for step, digit in enumerate("4*"):
        call, commands = press(call, digit, seconds=8 + step)
        everything += commands
    _, commands = handle(call, CallEnded(at(20)))
    everything += commands

    assert not any(isinstance(c, StartRecording) for c in everything)
    assert "consent_decided" not in kinds(everything)
    assert "recording_stopped" not in kinds(everything)
    assert kinds(everything)[-1] == "call_ended"


# ---------------------------------------------------------------- opt_out


def test_opt_out_press_3_stops_and_deletes_the_recording(facts: Facts) -> None:
    call = greeted(facts("opt_out"))

    call, commands = press(call, "3", seconds=6)

    assert commands == [
        WriteLedger(
            2,
            "keypress",
            at(6),
            {
                "digit": "3",
                "duration_ms": 120,
                "phase": "holding",
                "where": "holding",
                "decides": True,
            },
        ),
        WriteLedger(
            3,
            "consent_decided",
            at(6),
            {"action": "caller_opted_out", "digit": "3", "phase": "holding", "where": "holding"},
        ),
        StopRecording(1, FILE_1),
        DeleteRecording(1, FILE_1),
    ]


def test_opt_out_press_3_during_the_greeting_means_nothing_is_ever_recorded(
    facts: Facts,
) -> None:
    call = arrived(facts("opt_out"))

    call, commands = press(call, "3", seconds=2)
    assert actions(commands) == [StopPlayback(GREETING)]
    call, commands = handle(call, PlaybackFinished(GREETING, at(2.1), state="stopped"))

    assert kinds(commands) == ["greeting_finished"]
    assert actions(commands) == []
    assert call.recording is None and call.segments_opened == 0


def test_opt_out_press_3_with_keep_partial_stops_but_keeps_the_recording(facts: Facts) -> None:
    call = greeted(facts("opt_out", keep_partial_on_opt_out=True))

    _, commands = press(call, "3", seconds=6)

    assert kinds(commands) == ["keypress", "consent_decided"]
    assert actions(commands) == [StopRecording(1, FILE_1)]


def test_opt_out_recording_stopped_after_the_3_gives_reason_caller_opted_out(
    facts: Facts,
) -> None:
    call = arrived(facts("opt_out"))
    call, _ = press(call, "3", seconds=3)

    call, commands = handle(call, RecordingStopped(1, at(3.1)))

    assert commands == [
        WriteLedger(
            3,
            "recording_stopped",
            at(3.1),
            {
                "reason": "caller_opted_out",
                "segment": 1,
                "file": FILE_1,
                "path": FILE_1,
                "bridged_only": False,
            },
        )
    ]
    assert call.recording is None


def test_opt_out_hangup_after_the_recording_stopped_writes_no_second_stop(facts: Facts) -> None:
    call = arrived(facts("opt_out"))
    call, _ = press(call, "3", seconds=3)
    call, _ = handle(call, RecordingStopped(1, at(3.1)))

    _, commands = handle(call, CallEnded(at(9)))

    assert kinds(commands) == ["call_ended"]


# ---------------------------------------------------------------- only the first 3 decides


def test_a_second_3_only_writes_a_keypress_that_does_not_decide(facts: Facts) -> None:
    call = arrived(facts("opt_out"))
    call, _ = press(call, "3", seconds=2)

    call, commands = press(call, "3", seconds=4)

    assert commands == [
        WriteLedger(
            3,
            "keypress",
            at(4),
            {
                "digit": "3",
                "duration_ms": 120,
                "phase": "greeting",
                "where": "greeting",
                "decides": False,
            },
        )
    ]


def test_other_digits_only_write_a_keypress_that_does_not_decide(facts: Facts) -> None:
    call = arrived(facts("opt_in"))

    for digit in "0124*#":
        call, commands = press(call, digit)
        assert len(commands) == 1
        assert isinstance(commands[0], WriteLedger)
        assert commands[0].kind == "keypress"
        assert commands[0].data["digit"] == digit
        assert commands[0].data["decides"] is False
    assert call.decision is None


def test_a_3_after_other_digits_still_decides(facts: Facts) -> None:
    call = arrived(facts("opt_in"))
    call, _ = press(call, "1", seconds=1)
    call, _ = press(call, "2", seconds=1.5)

    _, commands = press(call, "3", seconds=2)

    assert kinds(commands) == ["keypress", "consent_decided"]
    assert StartRecording(1, FILE_1) in commands


def test_a_3_on_an_always_call_changes_nothing(facts: Facts) -> None:
    call = arrived(facts("always"))

    after, commands = press(call, "3")

    assert kinds(commands) == ["keypress"]
    assert ledger(commands)[0].data["decides"] is False
    assert actions(commands) == []
    assert after.decision is None and after.recording == call.recording


def test_a_3_on_a_never_call_changes_nothing(facts: Facts) -> None:
    call = arrived(facts("never"))

    after, commands = press(call, "3")

    assert kinds(commands) == ["keypress"]
    assert ledger(commands)[0].data == {
        "digit": "3",
        "duration_ms": 120,
        "phase": "holding",
        "where": "holding",
        "decides": False,
    }
    assert actions(commands) == []
    assert after.recording is None


# ---------------------------------------------------------------- greeting playback


def test_greeting_finished_is_written_and_the_call_goes_on_hold(facts: Facts) -> None:
    call = arrived(facts("opt_in"))

    call, commands = handle(call, PlaybackFinished(GREETING, at(6)))

    assert commands == [
        WriteLedger(1, "greeting_finished", at(6), {"playback_id": GREETING, "state": "done"}),
    ]
    assert call.phase is Phase.HOLDING
    assert call.greeting_playback is None


def test_greeting_stopped_by_the_3_finishes_into_hold(facts: Facts) -> None:
    call = arrived(facts("opt_in"))
    call, _ = press(call, "3", seconds=2)

    _, commands = handle(call, PlaybackFinished(GREETING, at(2.1), state="stopped"))

    assert kinds(commands) == ["greeting_finished"]
    assert ledger(commands)[0].data["state"] == "stopped"
    assert actions(commands) == []  # holding: no silence generator (recording fidelity)


def test_playback_finished_of_an_unknown_playback_does_nothing(facts: Facts) -> None:
    call = arrived(facts("opt_in"))

    after, commands = handle(call, PlaybackFinished("someone-else", at(6)))

    assert commands == []
    assert after == call


# ---------------------------------------------------------------- recording feedback


def test_recording_feedback_is_written_with_segment_file_and_host_path(facts: Facts) -> None:
    call = arrived(facts("always", asterisk_root="/srv/asterisk"))
    host = "/srv/asterisk" + FILE_1
    segment = {"segment": 1, "file": FILE_1, "path": host, "bridged_only": False}

    call, started = handle(call, RecordingStarted(1, at(0.1)))
    call, stopped = handle(call, RecordingStopped(1, at(5)))
    call, deleted = handle(call, RecordingDeleted(1, at(5.1)))

    assert started == [WriteLedger(1, "recording_started", at(0.1), segment)]
    assert stopped == [WriteLedger(2, "recording_stopped", at(5), {"reason": "stopped", **segment})]
    assert deleted == [WriteLedger(3, "recording_deleted", at(5.1), segment)]


def test_hangup_while_recording_writes_recording_stopped_then_call_ended(facts: Facts) -> None:
    call = arrived(facts("always"))
    call, _ = handle(call, RecordingStarted(1, at(0.1)))

    call, commands = handle(call, CallEnded(at(30)))

    assert commands == [
        WriteLedger(
            2,
            "recording_stopped",
            at(30),
            {
                "reason": "hangup",
                "segment": 1,
                "file": FILE_1,
                "path": FILE_1,
                "bridged_only": False,
            },
        ),
        WriteLedger(3, "call_ended", at(30), {"cause": "hangup"}),
    ]
    assert call.ended and call.recording is None


def test_a_call_ends_when_asterisk_announced_the_hangup_not_when_stasis_let_go(
    facts: Facts,
) -> None:
    """On a busy PBX StasisEnd came up to 1.5 s after the BYE (ChannelHangupRequest):
    the caller's audio, the recording and the call ended at the BYE."""
    call = arrived(facts("always"))
    call, _ = handle(call, RecordingStarted(1, at(0.1)))
    call, commands = handle(call, HangupRequested(at(9.6)))
    assert commands == []
    call, _ = handle(call, HangupRequested(at(9.9)))  # a second one changes nothing

    call, commands = handle(call, LeftStasis(at(11.1)))

    assert [(w.kind, w.at) for w in ledger(commands)] == [
        ("recording_stopped", at(9.6)),
        ("call_ended", at(9.6)),
    ]


def test_a_row_written_after_the_hangup_request_keeps_the_call_s_rows_in_time_order(
    facts: Facts,
) -> None:
    call = arrived(facts("opt_in"))
    call, _ = handle(call, HangupRequested(at(3.0)))
    # The greeting cut off by the hangup ends after it: its row comes first.
    call, commands = handle(call, PlaybackFinished(GREETING, at(3.4), state="failed"))
    assert [(w.kind, w.at) for w in ledger(commands)] == [("greeting_finished", at(3.4))]

    call, commands = handle(call, LeftStasis(at(4.5)))

    assert [(w.kind, w.at) for w in ledger(commands)] == [("call_ended", at(3.4))]


def test_without_a_hangup_request_the_end_is_the_end_event_s_time(facts: Facts) -> None:
    call = arrived(facts("never"))

    _, commands = handle(call, LeftStasis(at(7.0)))

    assert [(w.kind, w.at) for w in ledger(commands)] == [("call_ended", at(7.0))]


def test_ended_call_ignores_dtmf_and_playback_events(facts: Facts) -> None:
    call = arrived(facts("opt_in"))
    call, _ = handle(call, CallEnded(at(4)))

    for event in (
        DtmfReceived("3", at(5)),
        PlaybackFinished(GREETING, at(5)),
        CallEnded(at(6)),
    ):
        after, commands = handle(call, event)
        assert commands == []
        assert after == call


def test_ended_call_still_writes_late_recording_feedback(facts: Facts) -> None:
    call = arrived(facts("opt_out"))
    call, _ = press(call, "3", seconds=2)
    call, _ = handle(call, CallEnded(at(2.05)))

    call, stopped = handle(call, RecordingStopped(1, at(2.1)))
    _, deleted = handle(call, RecordingDeleted(1, at(2.2)))

    assert kinds(stopped) == ["recording_stopped"]
    assert kinds(deleted) == ["recording_deleted"]


# ---------------------------------------------------------------- failures


def test_failed_recording_start_clears_the_recording_so_hangup_writes_no_stop(
    facts: Facts,
) -> None:
    call = arrived(facts("always"))

    call, failed = handle(
        call, CommandFailed(StartRecording(1, FILE_1), "MixMonitor: no such channel", at(0.1))
    )
    _, ended = handle(call, CallEnded(at(9)))

    assert failed == [
        WriteLedger(
            1,
            "command_failed",
            at(0.1),
            {"command": "StartRecording", "error": "MixMonitor: no such channel"},
        )
    ]
    assert call.recording is None
    assert kinds(ended) == ["call_ended"]


def test_a_refused_greeting_play_puts_the_call_on_hold_uninformed(facts: Facts) -> None:
    call = arrived(facts("opt_in"))

    call, commands = handle(
        call,
        CommandFailed(
            Play(GREETING, Media("sound:consentd/call_recording_opt_in", "en", "bundled")),
            "404",
            at(0),
        ),
    )

    assert kinds(commands) == ["command_failed", "consent_notice_failed"]
    assert ledger(commands)[0].data == {"command": "Play", "error": "404"}
    assert ledger(commands)[1].data["state"] == "play_failed"
    assert ledger(commands)[1].data["error"] == "404"
    assert actions(commands) == []  # holding: no silence generator (recording fidelity)
    assert call.greeting_playback is None
    assert call.phase is Phase.HOLDING


def test_a_3_after_a_greeting_that_could_not_be_played_records_nothing(facts: Facts) -> None:
    call = arrived(facts("opt_in"))
    call, _ = handle(
        call,
        CommandFailed(
            Play(GREETING, Media("sound:consentd/call_recording_opt_in", "en", "bundled")),
            "x",
            at(0),
        ),
    )

    _, commands = press(call, "3")

    assert kinds(commands) == ["keypress"]  # the caller was never asked
    assert actions(commands) == []


def test_failed_stop_after_opt_out_leaves_the_recording_to_end_with_the_hangup(
    facts: Facts,
) -> None:
    call = greeted(facts("opt_out"))
    call, _ = press(call, "3", seconds=6)
    call, _ = handle(call, CommandFailed(StopRecording(1, FILE_1), "AMI timeout", at(6.1)))

    _, commands = handle(call, CallEnded(at(9)))

    assert kinds(commands) == ["recording_stopped", "call_ended"]
    assert ledger(commands)[0].data["reason"] == "hangup"


# ---------------------------------------------------------------- whole calls


def test_ledger_seq_numbers_are_consecutive_from_0_across_a_whole_call(
    facts: Facts, script: Callable[..., Any]
) -> None:
    call = script(facts("opt_out"))
    call.arrive()
    call.wait(1)
    call.press("1")
    call.wait(1.5)
    call.press("3")
    call.wait(0.1)
    call.greeting_ends()
    call.wait(2)
    call.press("3")
    call.press("#")
    call.wait(10)
    call.hang_up()

    seqs = [w.seq for w in call.ledger]
    assert seqs == list(range(len(seqs)))
    assert call.kinds() == [
        "call_started",
        "greeting_played",
        "keypress",
        "keypress",
        "consent_decided",
        "greeting_finished",
        "keypress",
        "keypress",
        "call_ended",
    ]
    assert call.call.next_seq == len(seqs)


def test_opt_in_after_the_3_records_a_new_segment_until_hangup(
    facts: Facts, script: Callable[..., Any]
) -> None:
    call = script(facts("opt_in"))
    call.arrive()
    call.wait(2)
    call.press("3")
    call.wait(20)

    commands = call.hang_up()

    assert kinds(commands) == ["recording_stopped", "call_ended"]
    assert ledger(commands)[0].data == {
        "reason": "hangup",
        "segment": 1,
        "file": FILE_1,
        "path": FILE_1,
        "bridged_only": False,
    }
    assert FILE_2 not in str(call.commands)


DIGITS = st.sampled_from(list("0123456789*#ABCD"))


@given(
    digits=st.lists(DIGITS, max_size=12),
    greeting_ends_after=st.integers(min_value=0, max_value=12),
)
def test_any_digits_on_opt_in_decide_and_record_once_exactly_when_a_3_is_among_them(
    facts: Facts, script: Callable[..., Any], digits: list[str], greeting_ends_after: int
) -> None:
    call = script(facts("opt_in"))
    call.arrive()
    for index, digit in enumerate(digits):
        if index == greeting_ends_after and call.call.greeting_playback is not None:
            call.greeting_ends()
        call.wait(0.5)
        call.press(digit)
    call.hang_up()

    decided = call.kinds().count("consent_decided")
    recordings = sum(isinstance(c, StartRecording) for c in call.commands)
    expected = 1 if "3" in digits else 0
    assert decided == expected
    assert recordings == expected
    assert [w.seq for w in call.ledger] == list(range(len(call.ledger)))


# ---------------------------------------------------------------- overload: never strand a caller


def test_a_call_consentd_cannot_serve_goes_on_unrecorded_and_the_ledger_says_why(
    facts: Facts,
) -> None:
    call_facts = facts("opt_out", did="+4930100003")

    call, commands = handle(new_call(call_facts), CallArrived(T0, unserved="overloaded"))

    assert kinds(commands) == ["call_started", "call_unserved"]
    assert ledger(commands)[1].data == {"reason": "overloaded"}
    assert actions(commands) == [ContinueUnrecorded("overloaded")]  # no answer, no recording
    assert call.phase is Phase.UNSERVED and call.unserved == "overloaded"


def test_a_failed_answer_hands_the_call_to_the_dialplan_instead_of_leaving_it_ringing(
    facts: Facts,
) -> None:
    call, _ = handle(new_call(facts("opt_out", did="+4930100003")), CallArrived(T0))

    call, commands = handle(call, CommandFailed(Answer(), "POST answer: timeout", at(5)))

    assert kinds(commands) == ["command_failed", "call_unserved"]
    assert ledger(commands)[1].data == {"reason": "answer_failed"}
    assert actions(commands) == [ContinueUnrecorded("answer_failed")]
    assert call.recording is None  # an opt-out caller never heard the greeting: not recorded


def test_if_the_dialplan_cannot_take_an_unserved_call_either_it_is_hung_up(facts: Facts) -> None:
    call, _ = handle(new_call(facts("opt_in")), CallArrived(T0, unserved="overloaded"))

    _, commands = handle(call, CommandFailed(ContinueUnrecorded("overloaded"), "timeout", at(5)))

    assert actions(commands) == [Hangup()]


def test_a_3_on_an_unserved_call_decides_nothing(facts: Facts) -> None:
    call, _ = handle(new_call(facts("opt_in")), CallArrived(T0, unserved="overloaded"))

    call, commands = press(call, "3")

    assert ledger(commands)[0].data["decides"] is False
    assert actions(commands) == [] and call.decision is None


def test_an_opt_out_3_before_the_answer_is_confirmed_means_no_recording_at_all(
    facts: Facts,
) -> None:
    call, _ = handle(new_call(facts("opt_out", did="+4930100003")), CallArrived(T0))
    call, _ = press(call, "3", 0.01)

    call, commands = handle(call, Answered(at(0.05)))

    assert not any(isinstance(c, StartRecording) for c in commands)
    assert call.decision is ConsentAction.CALLER_OPTED_OUT


def test_a_call_the_dialplan_already_answered_needs_no_answer(facts: Facts) -> None:
    call_facts = facts("opt_out", did="+4930100003")

    call, commands = handle(new_call(call_facts), CallArrived(T0, answered=True))

    assert actions(commands) == [
        Play(GREETING, Media("sound:consentd/call_recording_opt_out", "en", "bundled"))
    ]
    assert call.phase is Phase.GREETING


def test_an_internal_error_stops_the_recording_and_hands_the_call_on_unrecorded(
    facts: Facts,
) -> None:
    call = greeted(facts("opt_out"))  # recording since the greeting ended

    call, commands = handle(call, InternalError("ValueError: boom", at(7)))

    assert kinds(commands) == ["call_failed", "call_unserved"]
    assert ledger(commands)[0].data == {"error": "ValueError: boom"}
    assert actions(commands) == [StopRecording(1, FILE_1), ContinueUnrecorded("internal_error")]
    assert call.phase is Phase.UNSERVED


def test_a_recording_start_with_no_answer_counts_as_maybe_recording(facts: Facts) -> None:
    call = greeted(facts("opt_out"))

    call, commands = handle(
        call, CommandFailed(StartRecording(1, FILE_1), "no answer within 5s", at(4.5), unknown=True)
    )
    assert ledger(commands)[0].data["outcome"] == "unknown"
    assert call.recording is not None  # it may be recording

    _, commands = press(call, "3", seconds=6)

    # so a refusal still stops it and deletes whatever it captured
    assert actions(commands) == [StopRecording(1, FILE_1), DeleteRecording(1, FILE_1)]


def test_a_refused_recording_start_counts_as_not_recording(facts: Facts) -> None:
    call = greeted(facts("opt_out"))

    call, _ = handle(call, CommandFailed(StartRecording(1, FILE_1), "No such channel", at(4.5)))

    assert call.recording is None


def test_a_transition_updates_the_call_as_dataclasses_replace_would(facts: Facts) -> None:
    """``_Transition.update`` is a fast ``replace``: same result, same refusal of
    unknown names, and valid only while ``Call`` has no ``__post_init__``."""
    call = new_call(facts())
    transition = _Transition(call)

    transition.update(phase=Phase.HOLDING, next_seq=7, pending_greetings=("hold",))

    assert transition.call == replace(
        call, phase=Phase.HOLDING, next_seq=7, pending_greetings=("hold",)
    )
    assert call.phase is Phase.GREETING and call.next_seq == 0  # the old one is untouched
    assert not hasattr(Call, "__post_init__")
    with pytest.raises(TypeError, match="no field colour"):
        transition.update(colour="red")

"""The call flow of a number routed to a group: greetings, the queue, agents and voicemail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consentd.call_flow import Call, handle, new_call
from consentd.call_model import (
    AgentCompleted,
    AgentConnected,
    Answer,
    Answered,
    CallArrived,
    CallEnded,
    CallFacts,
    Command,
    CommandFailed,
    ContinueToQueue,
    DeleteIfEmpty,
    DeleteRecording,
    Hangup,
    LeftStasis,
    Media,
    Phase,
    Play,
    PlaybackFinished,
    PlaybackStarted,
    QueueAbandoned,
    QueueJoined,
    RecordingStarted,
    ReturnedFromQueue,
    StartRecording,
    StartVoicemail,
    StopPlayback,
    StopRecording,
    VoicemailFinished,
    VoicemailStarted,
    WriteLedger,
)
from consentd.policy import Group, NoAnswer
from tests.unit.flow_helpers import CHANNEL, T0, actions, arrived, at, kinds, ledger, press

AVAILABLE = f"{CHANNEL}-available"
GREETING = f"{CHANNEL}-greeting"
VOICEMAIL = f"{CHANNEL}-voicemail"
FILE_1 = "/var/spool/asterisk/monitor/consentd-pbx1_1764432000.17-1.wav"
VOICEMAIL_NAME = "consentd-vm-pbx1_1764432000.17"
VOICEMAIL_FILE = f"/var/spool/asterisk/recording/{VOICEMAIL_NAME}.wav"
AVAILABLE_MEDIA = Media("sound:consentd/available", "en", "bundled", kind="available")
VOICEMAIL_MEDIA = Media("sound:consentd/voicemail", "en", "bundled", kind="voicemail")

SUPPORT = Group(queue="support", timeout=20, no_answer=NoAnswer.VOICEMAIL)
HANGS_UP = Group(queue="support", timeout=20, no_answer=NoAnswer.HANGUP)

Facts = Callable[..., CallFacts]
Script = Callable[..., Any]


def routed(facts: Facts, recording: str, group: Group = SUPPORT, **options: Any) -> CallFacts:
    return facts(recording, group=group, did="+4930100010", **options)


def run(call: Call, *events: Any) -> tuple[Call, list[Command]]:
    """Handle ``events`` in order; the commands of the last one."""
    commands: list[Command] = []
    for event in events:
        call, commands = handle(call, event)
    return call, commands


def queued(call_facts: CallFacts) -> Call:
    """Arrived, heard its greetings to the end, and was sent into the queue."""
    call = arrived(call_facts)
    call, _ = handle(call, PlaybackFinished(AVAILABLE, at(5)))
    if call.greeting_playback == GREETING:
        call, _ = handle(call, PlaybackFinished(GREETING, at(9)))
    assert call.phase is Phase.QUEUED
    return call


def in_voicemail(call_facts: CallFacts) -> Call:
    """Nobody answered; the voicemail greeting played and recording the message began."""
    call = queued(call_facts)
    call, _ = run(
        call,
        ReturnedFromQueue("TIMEOUT", at(30)),
        PlaybackFinished(VOICEMAIL, at(34)),
        VoicemailStarted(at(35)),
    )
    assert call.voicemail_active
    return call


def consent_greeting(recording: str) -> Media:
    return Media(f"sound:consentd/call_recording_{recording}", "en", "bundled")


# ---------------------------------------------------------------- arrival


def test_routed_call_started_names_group_and_queue_and_the_availability_greeting_comes_first(
    facts: Facts,
) -> None:
    call, commands = handle(new_call(routed(facts, "opt_in")), CallArrived(T0))

    assert commands == [
        WriteLedger(
            0,
            "call_started",
            T0,
            {
                "did": "+4930100010",
                "caller": "+4917612345678",
                "direction": "inbound",
                "policy": "opt_in",
                "line": "phone",
                "language": "en",
                "policy_source": "number",
                "channel_id": CHANNEL,
                "node": "pbx1",
                "group": "support",
                "queue": "support",
            },
        ),
        Answer(),
    ]
    call, commands = handle(call, Answered(at(0.05)))

    assert commands == [Play(AVAILABLE, AVAILABLE_MEDIA)]
    assert call.greeting_playback == AVAILABLE
    assert call.phase is Phase.GREETING


@pytest.mark.parametrize("recording", ["always", "opt_out"])
def test_routed_call_that_records_from_the_start_records_only_while_bridged(
    facts: Facts, recording: str
) -> None:
    call, _ = handle(new_call(routed(facts, recording)), CallArrived(T0))
    _, commands = handle(call, Answered(at(0.05)))

    assert actions(commands) == [
        StartRecording(1, FILE_1, bridged_only=True),
        Play(AVAILABLE, AVAILABLE_MEDIA),
    ]


def test_routed_never_call_only_answers_and_plays_the_availability_greeting(facts: Facts) -> None:
    call, _ = handle(new_call(routed(facts, "never")), CallArrived(T0))
    _, commands = handle(call, Answered(at(0.05)))

    assert actions(commands) == [Play(AVAILABLE, AVAILABLE_MEDIA)]


def test_recording_feedback_of_a_routed_call_says_bridged_only(facts: Facts) -> None:
    call = arrived(routed(facts, "always"))

    _, commands = handle(call, RecordingStarted(1, at(0.1)))

    assert commands == [
        WriteLedger(
            1,
            "recording_started",
            at(0.1),
            {"segment": 1, "file": FILE_1, "path": FILE_1, "bridged_only": True},
        )
    ]


# ---------------------------------------------------------------- greetings, then the queue


@pytest.mark.parametrize("recording", ["opt_in", "opt_out"])
def test_after_the_availability_greeting_the_consent_greeting_plays(
    facts: Facts, recording: str
) -> None:
    call = arrived(routed(facts, recording))

    call, commands = handle(call, PlaybackFinished(AVAILABLE, at(5)))

    assert commands == [
        WriteLedger(1, "greeting_finished", at(5), {"playback_id": AVAILABLE, "state": "done"}),
        Play(GREETING, consent_greeting(recording)),
    ]
    assert call.greeting_playback == GREETING
    assert call.phase is Phase.GREETING


@pytest.mark.parametrize("recording", ["always", "never"])
def test_without_a_consent_greeting_the_availability_greeting_leads_into_the_queue(
    facts: Facts, recording: str
) -> None:
    call = arrived(routed(facts, recording))

    call, commands = handle(call, PlaybackFinished(AVAILABLE, at(5)))

    assert kinds(commands) == ["greeting_finished"]
    assert actions(commands) == [ContinueToQueue("support", 20)]
    assert call.phase is Phase.QUEUED
    assert call.greeting_playback is None


def test_after_the_consent_greeting_the_caller_goes_into_the_queue(facts: Facts) -> None:
    call = arrived(routed(facts, "opt_in"))
    call, _ = handle(call, PlaybackFinished(AVAILABLE, at(5)))

    call, commands = handle(call, PlaybackFinished(GREETING, at(9)))

    assert commands == [
        WriteLedger(2, "greeting_finished", at(9), {"playback_id": GREETING, "state": "done"}),
        ContinueToQueue("support", 20),
    ]
    assert call.phase is Phase.QUEUED


def test_greetings_played_are_the_availability_one_then_the_consent_one(
    facts: Facts, script: Script
) -> None:
    call = script(routed(facts, "opt_in"))
    call.arrive()
    call.wait(5)
    call.greeting_ends()
    call.wait(4)
    call.greeting_ends()

    played = [w for w in call.ledger if w.kind == "greeting_played"]
    assert [(w.data["playback_id"], w.data["kind"], w.data["media"]) for w in played] == [
        (AVAILABLE, "available", "sound:consentd/available"),
        (GREETING, "opt_in", "sound:consentd/call_recording_opt_in"),
    ]
    assert call.kinds() == [
        "call_started",
        "greeting_played",
        "greeting_finished",
        "greeting_played",
        "greeting_finished",
    ]
    assert call.commands[-1] == ContinueToQueue("support", 20)


# ---------------------------------------------------------------- key 3 before the queue


def test_opt_in_3_during_the_availability_greeting_records_without_stopping_it(
    facts: Facts,
) -> None:
    call = arrived(routed(facts, "opt_in"))

    call, commands = press(call, "3", seconds=2)

    assert commands == [
        WriteLedger(
            1,
            "keypress",
            at(2),
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
            at(2),
            {"action": "caller_opted_in", "digit": "3", "phase": "greeting", "where": "greeting"},
        ),
        StartRecording(1, FILE_1, bridged_only=True),
    ]
    assert call.greeting_playback == AVAILABLE


def test_opt_in_3_during_the_availability_greeting_skips_the_consent_greeting(
    facts: Facts,
) -> None:
    call = arrived(routed(facts, "opt_in"))
    call, _ = press(call, "3", seconds=2)

    call, commands = handle(call, PlaybackFinished(AVAILABLE, at(5)))

    assert kinds(commands) == ["greeting_finished"]
    assert actions(commands) == [ContinueToQueue("support", 20)]
    assert call.phase is Phase.QUEUED


def test_opt_out_3_during_the_availability_greeting_stops_and_deletes_and_skips_consent(
    facts: Facts,
) -> None:
    call = arrived(routed(facts, "opt_out"))

    call, decided = press(call, "3", seconds=2)
    _, finished = handle(call, PlaybackFinished(AVAILABLE, at(5)))

    assert actions(decided) == [StopRecording(1, FILE_1), DeleteRecording(1, FILE_1)]
    assert actions(finished) == [ContinueToQueue("support", 20)]


def test_3_during_the_consent_greeting_stops_it_and_the_queue_follows(facts: Facts) -> None:
    call = arrived(routed(facts, "opt_in"))
    call, _ = handle(call, PlaybackFinished(AVAILABLE, at(5)))

    call, decided = press(call, "3", seconds=6)
    call, finished = handle(call, PlaybackFinished(GREETING, at(6.1), state="stopped"))

    assert kinds(decided) == ["keypress", "consent_decided"]
    assert actions(decided) == [
        StopPlayback(GREETING, before_recording=True),
        StartRecording(1, FILE_1, bridged_only=True),
    ]
    assert ledger(finished)[0].data == {"playback_id": GREETING, "state": "stopped"}
    assert actions(finished) == [ContinueToQueue("support", 20)]


# ---------------------------------------------------------------- key 3 in the queue


def test_opt_in_3_while_queued_starts_a_bridged_only_recording(facts: Facts) -> None:
    call = queued(routed(facts, "opt_in"))

    call, commands = press(call, "3", seconds=14)

    assert commands == [
        WriteLedger(
            3,
            "keypress",
            at(14),
            {
                "digit": "3",
                "duration_ms": 120,
                "phase": "queued",
                "where": "queue",
                "decides": True,
            },
        ),
        WriteLedger(
            4,
            "consent_decided",
            at(14),
            {"action": "caller_opted_in", "digit": "3", "phase": "queued", "where": "queue"},
        ),
        StartRecording(1, FILE_1, bridged_only=True),
    ]
    assert call.phase is Phase.QUEUED


def test_opt_out_3_while_queued_stops_and_deletes_the_recording(facts: Facts) -> None:
    call = queued(routed(facts, "opt_out"))

    _, commands = press(call, "3", seconds=14)

    assert kinds(commands) == ["keypress", "consent_decided"]
    assert ledger(commands)[0].data["phase"] == "queued"
    assert ledger(commands)[1].data == {
        "action": "caller_opted_out",
        "digit": "3",
        "phase": "queued",
        "where": "queue",
    }
    assert actions(commands) == [StopRecording(1, FILE_1), DeleteRecording(1, FILE_1)]


def test_opt_in_3_while_talking_to_the_agent_starts_recording(facts: Facts) -> None:
    call = queued(routed(facts, "opt_in"))
    call, _ = handle(call, AgentConnected("Agent 1", "PJSIP/agent1", 12, 3, at(21)))

    _, commands = press(call, "3", seconds=40)

    assert ledger(commands)[0].data["phase"] == "connected"
    assert actions(commands) == [StartRecording(1, FILE_1, bridged_only=True)]


# ---------------------------------------------------------------- leaving Stasis


@pytest.mark.parametrize("connected", [False, True], ids=["queued", "connected"])
def test_leaving_stasis_for_the_queue_or_the_agent_does_not_end_the_call(
    facts: Facts, connected: bool
) -> None:
    call = queued(routed(facts, "always"))
    if connected:
        call, _ = handle(call, AgentConnected("Agent 1", "PJSIP/agent1", 12, 3, at(21)))

    after, commands = handle(call, LeftStasis(at(22)))

    assert commands == []
    assert after == call


def test_leaving_stasis_during_a_greeting_ends_the_call(facts: Facts) -> None:
    call = arrived(routed(facts, "always"))

    call, commands = handle(call, LeftStasis(at(3)))

    assert commands == [
        WriteLedger(
            1,
            "recording_stopped",
            at(3),
            {
                "reason": "hangup",
                "segment": 1,
                "file": FILE_1,
                "path": FILE_1,
                "bridged_only": True,
            },
        ),
        WriteLedger(2, "call_ended", at(3), {"cause": "hangup"}),
        DeleteIfEmpty(FILE_1),  # bridged-only, never bridged: only a header, if anything
    ]
    assert call.ended


def test_hangup_while_queued_ends_the_call(facts: Facts) -> None:
    call = queued(routed(facts, "never"))

    call, commands = handle(call, CallEnded(at(25), cause="Normal Clearing"))

    assert commands == [WriteLedger(2, "call_ended", at(25), {"cause": "Normal Clearing"})]
    assert call.ended


# ---------------------------------------------------------------- queue and agent events


def test_queue_and_agent_events_are_written_to_the_ledger(facts: Facts) -> None:
    call = queued(routed(facts, "never"))

    call, joined = handle(call, QueueJoined("support", 1, at(10)))
    call, connected = handle(call, AgentConnected("Agent 1", "PJSIP/agent1", 11, 4, at(21)))
    connected_phase = call.phase
    call, completed = handle(call, AgentCompleted("caller", 95, at(116)))

    assert joined == [WriteLedger(2, "queue_joined", at(10), {"queue": "support", "position": 1})]
    assert connected == [
        WriteLedger(
            3,
            "agent_connected",
            at(21),
            {"agent": "Agent 1", "interface": "PJSIP/agent1", "queue_time": 11, "ring_time": 4},
        )
    ]
    assert connected_phase is Phase.CONNECTED
    assert completed == [
        WriteLedger(4, "agent_completed", at(116), {"reason": "caller", "talk_time": 95})
    ]


def test_abandon_in_the_queue_is_written_to_the_ledger(facts: Facts) -> None:
    call = queued(routed(facts, "never"))

    call, commands = handle(call, QueueAbandoned(18, at(27)))

    assert commands == [WriteLedger(2, "queue_abandoned", at(27), {"queue_time": 18})]
    assert call.phase is Phase.QUEUED


# ---------------------------------------------------------------- nobody answered


@pytest.mark.parametrize("recording", ["always", "opt_in", "opt_out", "never"])
def test_queue_timeout_plays_the_voicemail_greeting_whatever_the_policy(
    facts: Facts, recording: str
) -> None:
    call = queued(routed(facts, recording))
    seq = call.next_seq

    call, commands = handle(call, ReturnedFromQueue("TIMEOUT", at(30)))

    assert commands == [
        WriteLedger(seq, "queue_left", at(30), {"status": "TIMEOUT"}),
        Play(VOICEMAIL, VOICEMAIL_MEDIA, followed_by=("sound:beep",)),
    ]
    assert call.phase is Phase.VOICEMAIL
    assert call.greeting_playback == VOICEMAIL


def test_voicemail_greeting_played_is_written_with_kind_voicemail(facts: Facts) -> None:
    call = queued(routed(facts, "opt_in"))
    call, _ = handle(call, ReturnedFromQueue("TIMEOUT", at(30)))

    _, commands = handle(call, PlaybackStarted(VOICEMAIL, at(30.1)))

    assert kinds(commands) == ["greeting_played"]
    assert ledger(commands)[0].data["kind"] == "voicemail"
    assert ledger(commands)[0].data["media"] == "sound:consentd/voicemail"


@pytest.mark.parametrize("recording", ["never", "opt_in"])
def test_after_the_voicemail_greeting_the_message_is_recorded_for_the_groups_maximum(
    facts: Facts, recording: str
) -> None:
    group = Group(queue="support", timeout=20, voicemail_max_seconds=60)
    call = queued(routed(facts, recording, group))
    call, _ = handle(call, ReturnedFromQueue("TIMEOUT", at(30)))

    call, commands = handle(call, PlaybackFinished(VOICEMAIL, at(34)))

    assert kinds(commands) == ["greeting_finished"]
    # The greeting ended with the beep: Asterisk records at once, and its
    # RecordingStarted is the message's start (its own beep would follow that event).
    assert actions(commands) == [StartVoicemail(VOICEMAIL_NAME, 60, beep=False)]
    assert call.phase is Phase.VOICEMAIL


def test_without_its_greeting_heard_the_voicemail_beeps_on_asterisks_side(facts: Facts) -> None:
    """A voicemail greeting that failed to play had no beep in it: Asterisk's comes."""
    call = queued(routed(facts, "never"))
    call, _ = handle(call, ReturnedFromQueue("TIMEOUT", at(30)))

    call, commands = handle(call, PlaybackFinished(VOICEMAIL, at(30.2), state="failed"))

    assert actions(commands) == [StartVoicemail(VOICEMAIL_NAME, 120, beep=True)]


@pytest.mark.parametrize("recording", ["never", "opt_in"])
def test_voicemail_start_and_finish_are_written_and_the_call_hung_up(
    facts: Facts, recording: str
) -> None:
    call = queued(routed(facts, recording, asterisk_root="/srv/asterisk"))
    call, _ = run(call, ReturnedFromQueue("TIMEOUT", at(30)), PlaybackFinished(VOICEMAIL, at(34)))
    where = {"file": VOICEMAIL_FILE, "path": "/srv/asterisk" + VOICEMAIL_FILE}
    seq = call.next_seq

    call, started = handle(call, VoicemailStarted(at(35)))
    call, finished = handle(call, VoicemailFinished("done", 14, at(49)))
    _, ended = handle(call, CallEnded(at(49.2)))

    assert started == [WriteLedger(seq, "voicemail_started", at(35), where)]
    assert finished == [
        WriteLedger(
            seq + 1, "voicemail_finished", at(49), {"state": "done", "duration": 14, **where}
        ),
        Hangup(),
    ]
    assert ended == [
        WriteLedger(seq + 2, "call_ended", at(49.2), {"cause": "hangup"}),
        DeleteIfEmpty(VOICEMAIL_FILE),  # a message hung up at the beep holds no audio
    ]


def test_hangup_while_leaving_a_voicemail_finishes_it_before_the_call_ends(facts: Facts) -> None:
    call = in_voicemail(routed(facts, "never"))
    seq = call.next_seq

    call, commands = handle(call, CallEnded(at(41)))

    assert commands == [
        WriteLedger(
            seq,
            "voicemail_finished",
            at(41),
            {"state": "hangup", "duration": None, "file": VOICEMAIL_FILE, "path": VOICEMAIL_FILE},
        ),
        WriteLedger(seq + 1, "call_ended", at(41), {"cause": "hangup"}),
        DeleteIfEmpty(VOICEMAIL_FILE),
    ]
    assert call.ended and not call.voicemail_active


@pytest.mark.parametrize("greeting_playing", [True, False], ids=["greeting", "recording"])
def test_3_during_voicemail_does_not_decide(facts: Facts, greeting_playing: bool) -> None:
    call = queued(routed(facts, "opt_in"))
    call, _ = handle(call, ReturnedFromQueue("TIMEOUT", at(30)))
    if not greeting_playing:
        call, _ = run(call, PlaybackFinished(VOICEMAIL, at(34)), VoicemailStarted(at(35)))

    after, commands = press(call, "3", seconds=36)

    assert commands == [
        WriteLedger(
            call.next_seq,
            "keypress",
            at(36),
            {
                "digit": "3",
                "duration_ms": 120,
                "phase": "voicemail",
                "where": "voicemail",
                "decides": False,
            },
        )
    ]
    assert after.decision is None and after.recording is None


def test_queue_timeout_with_no_answer_hangup_hangs_up(facts: Facts) -> None:
    call = queued(routed(facts, "opt_in", HANGS_UP))

    call, commands = handle(call, ReturnedFromQueue("JOINEMPTY", at(10)))

    assert commands == [
        WriteLedger(3, "queue_left", at(10), {"status": "JOINEMPTY"}),
        WriteLedger(4, "no_answer_hangup", at(10), {}),
        Hangup(),
    ]
    assert call.phase is Phase.QUEUED


# ---------------------------------------------------------------- failures


def test_failed_continue_into_the_queue_holds_the_line(facts: Facts) -> None:
    call = queued(routed(facts, "never"))

    call, commands = handle(
        call, CommandFailed(ContinueToQueue("support", 20), "POST continue: not found", at(5.1))
    )

    assert commands == [
        WriteLedger(
            2,
            "command_failed",
            at(5.1),
            {"command": "ContinueToQueue", "error": "POST continue: not found"},
        ),
    ]
    assert call.phase is Phase.HOLDING
    _, left = handle(call, LeftStasis(at(9)))
    assert kinds(left) == ["call_ended"]


def test_a_queue_hand_off_with_no_answer_counts_as_maybe_queued(facts: Facts) -> None:
    call = queued(routed(facts, "opt_in"))

    call, commands = handle(
        call,
        CommandFailed(ContinueToQueue("support", 20), "no answer within 5s", at(5.1), unknown=True),
    )

    assert ledger(commands)[0].data["outcome"] == "unknown"
    assert call.phase is Phase.QUEUED
    call, left = handle(call, LeftStasis(at(9)))  # leaving Stasis for the queue: not the end
    assert kinds(left) == [] and not call.ended
    _, decided = press(call, "3", 12)
    assert kinds(decided) == ["keypress", "consent_decided"]  # key 3 still counts


def test_failed_voicemail_recording_hangs_up(facts: Facts) -> None:
    call = queued(routed(facts, "never"))
    call, _ = run(call, ReturnedFromQueue("TIMEOUT", at(30)), PlaybackFinished(VOICEMAIL, at(34)))

    _, commands = handle(
        call, CommandFailed(StartVoicemail(VOICEMAIL_NAME, 120), "HTTP 500", at(34.1))
    )

    assert kinds(commands) == ["command_failed"]
    assert ledger(commands)[0].data == {"command": "StartVoicemail", "error": "HTTP 500"}
    assert actions(commands) == [Hangup()]


def test_failed_voicemail_greeting_goes_straight_to_recording_the_message(facts: Facts) -> None:
    call = queued(routed(facts, "never"))
    call, _ = handle(call, ReturnedFromQueue("TIMEOUT", at(30)))

    _, commands = handle(call, CommandFailed(Play(VOICEMAIL, VOICEMAIL_MEDIA), "404", at(30)))

    assert actions(commands) == [StartVoicemail(VOICEMAIL_NAME, 120)]


# ---------------------------------------------------------------- whole calls

STEPS = ["available_ends", "consent_ends", "agent_answers"]


@given(
    recording=st.sampled_from(["opt_in", "opt_out"]),
    digits=st.lists(st.sampled_from(list("0123456789*#")), max_size=8),
    press_at=st.lists(st.integers(min_value=0, max_value=3), max_size=8),
)
def test_any_digits_in_any_phase_decide_once_exactly_when_a_3_is_among_them(
    facts: Facts, script: Script, recording: str, digits: list[str], press_at: list[int]
) -> None:
    call = script(routed(facts, recording))
    call.arrive()
    step = 0
    for index, digit in enumerate(digits):
        target = press_at[index] if index < len(press_at) else step
        while step < target:
            if STEPS[step] == "agent_answers":
                call.send(AgentConnected("Agent 1", "PJSIP/agent1", 5, 2, call.clock()))
            elif call.call.greeting_playback is not None:
                call.greeting_ends()
            step += 1
            call.wait(1)
        call.press(digit)
    call.hang_up()

    decided = call.kinds().count("consent_decided")
    assert decided == (1 if "3" in digits else 0)
    assert all(c.bridged_only for c in call.commands if isinstance(c, StartRecording))
    assert [w.seq for w in call.ledger] == list(range(len(call.ledger)))
    assert call.kinds()[-1] == "call_ended"


# ------------------------------------------------- restarts and failures


@pytest.mark.parametrize("recording", ["never", "opt_out"])
def test_a_call_first_seen_back_from_the_queue_goes_to_voicemail_without_greetings(
    facts: Facts, recording: str
) -> None:
    call = new_call(routed(facts, recording))

    call, commands = handle(call, CallArrived(T0, returned_from_queue="TIMEOUT"))

    assert kinds(commands) == ["call_started", "queue_left"]
    assert actions(commands) == [Play(VOICEMAIL, VOICEMAIL_MEDIA, followed_by=("sound:beep",))]
    assert call.phase is Phase.VOICEMAIL
    assert call.recording is None


def test_voicemail_recording_that_fails_before_it_starts_hangs_up(facts: Facts) -> None:
    call = queued(routed(facts, "never"))
    call, _ = run(call, ReturnedFromQueue("TIMEOUT", at(30)), PlaybackFinished(VOICEMAIL, at(34)))

    call, commands = handle(call, VoicemailFinished("failed", None, at(34.2)))

    assert kinds(commands) == ["voicemail_finished"]
    assert ledger(commands)[0].data["state"] == "failed"
    assert actions(commands) == [Hangup()]

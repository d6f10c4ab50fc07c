"""A consent notice Asterisk could not play: the caller was never told, so never recorded.

ARI ends such a playback with state "failed" (res_stasis_playback.c: the stream
could not be opened, e.g. the greeting's sound is missing on the PBX). The call
goes on (hold, queue, route) unrecorded, the ledger says why
(``consent_notice_failed``), and whatever was already recording stops and is
deleted, keep_partial_on_opt_out or not. A hangup cuts a playback off with
"failed" too: after ChannelHangupRequest that is only the call's end.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from consentd.adoption import rebuild
from consentd.call_details import summarize
from consentd.call_flow import Call, handle, new_call
from consentd.call_model import (
    Adopted,
    AgentConnected,
    Answered,
    CallArrived,
    CallEnded,
    CallFacts,
    Command,
    CommandFailed,
    ConsentAction,
    ContinueToQueue,
    DeleteRecording,
    DtmfReceived,
    HangupRequested,
    LeftStasis,
    Phase,
    Play,
    PlaybackFinished,
    PlaybackStarted,
    RecordingStarted,
    RecordingStopped,
    StartRecording,
    StartTimer,
    StopRecording,
    WriteLedger,
)
from consentd.greetings import GreetingLibrary
from consentd.ledger import LedgerEvent
from consentd.openapi import document
from consentd.policy import Group, NoAnswer, PolicyBook, load_policies
from tests.api_schema import validate_response
from tests.unit.conftest import CallScript, write_wav
from tests.unit.flow_helpers import (
    CHANNEL,
    T0,
    actions,
    arrived,
    at,
    kinds,
    ledger,
    press,
    routed_facts,
    run,
)

GREETING = f"{CHANNEL}-greeting"
AVAILABLE = f"{CHANNEL}-available"
FILE_1 = "/var/spool/asterisk/monitor/consentd-pbx1_1764432000.17-1.wav"
SUPPORT = Group(queue="support", timeout=20, no_answer=NoAnswer.VOICEMAIL)

Facts = Callable[..., CallFacts]


def fails(playback_id: str, seconds: float) -> PlaybackFinished:
    return PlaybackFinished(playback_id, at(seconds), state="failed")


def rows(call_facts: CallFacts, commands: list[Command]) -> list[LedgerEvent]:
    return [
        LedgerEvent(f"k/{w.seq}", call_facts.call_id, "pbx1", w.seq, w.kind, w.at, w.data)
        for w in ledger(commands)
    ]


def starts(commands: list[Command]) -> list[StartRecording]:
    return [c for c in commands if isinstance(c, StartRecording)]


# ---------------------------------------------------------------- opt_out, held by consentd


def test_opt_out_greeting_failed_is_written_and_the_call_is_held_unrecorded(facts: Facts) -> None:
    call = arrived(facts("opt_out", did="+4930100003"))
    call, _ = handle(call, PlaybackStarted(GREETING, at(0.1)))

    call, commands = handle(call, fails(GREETING, 0.12))

    assert commands == [
        WriteLedger(2, "greeting_finished", at(0.12), {"playback_id": GREETING, "state": "failed"}),
        WriteLedger(
            3,
            "consent_notice_failed",
            at(0.12),
            {
                "action": "notice_failed",
                "playback_id": GREETING,
                "media": "sound:consentd/call_recording_opt_out",
                "language": "en",
                "source": "bundled",
                "state": "failed",
                "phase": "greeting",
                "where": "greeting",
            },
        ),
    ]  # and no StartRecording: the caller never heard "press 3 to refuse"
    assert call.phase is Phase.HOLDING
    assert call.decision is ConsentAction.NOTICE_FAILED


def test_opt_out_keys_after_a_failed_notice_record_nothing_and_the_end_is_plain(
    facts: Facts, script: Callable[..., CallScript]
) -> None:
    call = script(facts("opt_out", did="+4930100003"))
    call.arrive()
    call.wait(0.02)
    call.send(fails(GREETING, 0.02))
    call.wait(3)
    for digit in "313":
        call.press(digit)
    call.wait(5)
    call.hang_up()

    assert starts(call.commands) == []
    assert "consent_decided" not in call.kinds()
    assert [w.data["decides"] for w in call.ledger if w.kind == "keypress"] == [False] * 3
    assert call.kinds()[-1] == "call_ended"
    assert call.kinds().count("consent_notice_failed") == 1


def test_a_greeting_that_ends_done_still_records_an_opt_out_call(facts: Facts) -> None:
    """The control case: only "failed" withholds the recording."""
    call = arrived(facts("opt_out", did="+4930100003"))

    _, commands = handle(call, PlaybackFinished(GREETING, at(4.4), state="done"))

    assert actions(commands) == [StartRecording(1, FILE_1)]
    assert "consent_notice_failed" not in kinds(commands)


# ---------------------------------------------------------------- a hangup is just an end


def test_a_greeting_cut_off_by_the_hangup_is_a_normal_end(facts: Facts) -> None:
    call = arrived(facts("opt_out", did="+4930100003"))

    call, commands = run(
        call,
        HangupRequested(at(2)),
        fails(GREETING, 2.01),
        CallEnded(at(2.02)),
    )

    # The greeting ended, the call ended with it. Nothing starts recording on the
    # way out: found with callers hanging up mid-greeting under load, where the
    # ledger then named a recording (started after the call's end) with no file.
    assert kinds(commands) == ["greeting_finished", "call_ended"]
    assert not [c for c in actions(commands) if isinstance(c, StartRecording)]
    assert call.decision is None and call.segments_opened == 0


@pytest.mark.parametrize("status", [404, 409])
@pytest.mark.parametrize("recording", ["opt_in", "opt_out"])
def test_a_play_refused_because_the_caller_already_hung_up_is_a_normal_end(
    facts: Facts, recording: str, status: int
) -> None:
    """Found under load: the caller hung up 0.3 s after the answer, before Asterisk
    took the greeting's play; ARI refused it (404: no such channel; 409: out of
    Stasis) and the call came out as ``notice_failed``. It is the call's end."""
    call, _ = handle(new_call(facts(recording)), CallArrived(T0))
    call, answered = handle(call, Answered(T0))
    (play,) = [c for c in answered if isinstance(c, Play)]

    call, commands = run(
        call,
        CommandFailed(play, f"POST play: status {status}", at(0.5), status=status),
        HangupRequested(at(0.3)),
        LeftStasis(at(0.6)),
    )

    assert kinds(commands) == ["command_failed", "call_ended"]
    assert not starts(commands)
    assert call.decision is None
    assert ledger(commands)[-1].at == at(0.5)  # never before a row already written


def test_a_play_refused_for_another_reason_is_still_a_failed_notice(facts: Facts) -> None:
    call, _ = handle(new_call(facts("opt_out")), CallArrived(T0))
    call, answered = handle(call, Answered(T0))
    (play,) = [c for c in answered if isinstance(c, Play)]

    call, commands = handle(call, CommandFailed(play, "POST play: status 500", at(0.5), status=500))

    assert kinds(commands) == ["command_failed", "consent_notice_failed"]
    assert call.decision is ConsentAction.NOTICE_FAILED


def test_a_3_that_reaches_consentd_after_the_hangup_request_starts_nothing(
    facts: Facts,
) -> None:
    """The caller's last press and the BYE cross: the decision is the caller's and is
    written; a recording on a channel that is going away would hold nothing."""
    call = arrived(facts("opt_in"))

    call, _ = handle(call, HangupRequested(at(2)))
    call, commands = press(call, "3", seconds=2.01)

    assert "consent_decided" in kinds(commands)
    assert not [c for c in actions(commands) if isinstance(c, StartRecording)]
    assert call.recording is None


def test_the_hangup_request_alone_writes_nothing(facts: Facts) -> None:
    call = arrived(facts("opt_in"))

    after, commands = handle(call, HangupRequested(at(2)))

    assert commands == [] and after.hanging_up


# ---------------------------------------------------------------- opt_in


def test_opt_in_failed_notice_is_written_and_a_later_3_does_not_record(
    facts: Facts,
) -> None:
    call = arrived(facts("opt_in"))

    call, commands = handle(call, fails(GREETING, 0.1))
    assert kinds(commands) == ["greeting_finished", "consent_notice_failed"]
    assert actions(commands) == []

    call, commands = press(call, "3", seconds=4)

    assert kinds(commands) == ["keypress"]
    assert ledger(commands)[0].data["decides"] is False  # the caller was never asked
    assert actions(commands) == []
    assert call.decision is ConsentAction.NOTICE_FAILED


def test_opt_in_3_before_the_greeting_failed_keeps_the_callers_decision(facts: Facts) -> None:
    call = arrived(facts("opt_in"))
    call, _ = press(call, "3", seconds=0.05)

    call, commands = handle(call, fails(GREETING, 0.1))

    assert kinds(commands) == ["greeting_finished"]
    assert call.decision is ConsentAction.CALLER_OPTED_IN


@pytest.mark.parametrize("recording", ["always", "never"])
def test_always_and_never_have_no_notice_to_fail(facts: Facts, recording: str) -> None:
    call_facts = facts(recording, group=SUPPORT, did="+4930100010")
    call = arrived(call_facts)

    _, commands = handle(call, fails(AVAILABLE, 0.1))

    assert kinds(commands) == ["greeting_finished"]
    assert actions(commands) == [ContinueToQueue("support", 20)]


# ---------------------------------------------------------------- groups: recording from the answer


@pytest.mark.parametrize("keep_partial", [False, True])
def test_group_opt_out_failed_notice_stops_and_deletes_the_bridged_recording(
    facts: Facts, keep_partial: bool
) -> None:
    call_facts = facts(
        "opt_out", group=SUPPORT, did="+4930100010", keep_partial_on_opt_out=keep_partial
    )
    call = arrived(call_facts)  # bridged-only recording from the answer
    call, _ = run(call, RecordingStarted(1, at(0.1), "0x7"), PlaybackFinished(AVAILABLE, at(4)))
    assert call.greeting_playback == GREETING

    call, commands = handle(call, fails(GREETING, 4.05))

    assert kinds(commands) == ["greeting_finished", "consent_notice_failed"]
    assert actions(commands) == [
        StopRecording(1, FILE_1, "0x7"),
        DeleteRecording(1, FILE_1),  # whatever keep_partial_on_opt_out says
        ContinueToQueue("support", 20),  # the caller still reaches the queue
    ]

    call, commands = run(
        call,
        RecordingStopped(1, at(4.1)),
        AgentConnected("agent1", "PJSIP/agent1", 3, 2, at(9)),
        DtmfReceived("3", at(12)),
        CallEnded(at(30)),
    )
    assert ledger(commands)[0].data["reason"] == "notice_failed"
    assert starts(commands) == []  # not at the agent's answer, not on a 3


def test_group_opt_in_failed_notice_then_3_in_the_queue_records_nothing(facts: Facts) -> None:
    call = arrived(facts("opt_in", group=SUPPORT, did="+4930100010"))
    call, _ = run(call, PlaybackFinished(AVAILABLE, at(4)), fails(GREETING, 4.05))

    call, commands = run(
        call, DtmfReceived("3", at(8)), AgentConnected("agent1", "PJSIP/agent1", 3, 2, at(9))
    )

    assert starts(commands) == []
    assert call.phase is Phase.CONNECTED


def test_a_failed_availability_greeting_is_no_failed_notice(facts: Facts) -> None:
    """It carries no consent notice; the consent greeting that follows does."""
    call = arrived(facts("opt_out", group=SUPPORT, did="+4930100010"))

    call, commands = handle(call, fails(AVAILABLE, 0.1))

    assert kinds(commands) == ["greeting_finished"]
    assert call.decision is None and call.greeting_playback == GREETING


# ---------------------------------------------------------------- adoption after a restart


def test_adopted_after_a_failed_notice_the_call_is_never_recorded(facts: Facts) -> None:
    call_facts = facts("opt_out", group=SUPPORT, did="+4930100010")
    _, history = run(
        new_call(call_facts),
        CallArrived(T0),
        Answered(T0),
        RecordingStarted(1, at(0.1), "0x7"),
        PlaybackFinished(AVAILABLE, at(4)),
        fails(GREETING, 4.05),  # the notice failed: stop and delete sent, then
        RecordingStopped(1, at(4.1)),  # consentd died before the delete's row
    )

    adopted = rebuild(call_facts, rows(call_facts, history))
    assert adopted.decision is ConsentAction.NOTICE_FAILED
    _, commands = run(
        adopted,
        Adopted(at(30), "queue", untracked_recordings=((2, "0x9"),)),
        AgentConnected("agent1", "PJSIP/agent1", 3, 2, at(31)),
        DtmfReceived("3", at(32)),
    )

    assert starts(commands) == []
    file_2 = FILE_1.removesuffix("1.wav") + "2.wav"
    assert StopRecording(2, file_2, "0x9") in commands  # one the ledger never knew of
    assert DeleteRecording(2, file_2) in commands
    assert DeleteRecording(1, FILE_1) in commands  # owed since before the restart


def test_adopted_opt_out_call_held_after_a_failed_notice_starts_no_recording(
    facts: Facts,
) -> None:
    call_facts = facts("opt_out", did="+4930100003")
    call, first = handle(new_call(call_facts), CallArrived(T0))
    call, more = run(call, Answered(T0), PlaybackStarted(GREETING, at(0.1)), fails(GREETING, 0.1))

    adopted = rebuild(call_facts, rows(call_facts, first + more))
    assert adopted.phase is Phase.HOLDING
    call, commands = run(adopted, Adopted(at(30), "stasis"), DtmfReceived("3", at(31)))

    assert starts(commands) == []
    assert call.decision is ConsentAction.NOTICE_FAILED


# ---------------------------------------------------------------- IVR menus: the prompt tells

POLICIES = """\
default: {recording: never}
numbers:
  "+4930100020": {recording: opt_out, routing: {ivr: main}}
  "+4930100021": {recording: opt_in, routing: {ivr: main}}
  "+4930100023": {recording: always, routing: {ivr: main}}
groups:
  support: {queue: support, timeout: 20}
ivr:
  main:
    options: {"1": {group: support}, "9": {ivr: other}}
    timeout: 5
    retries: 2
  other:
    options: {"1": {group: support}}
    timeout: 5
"""


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> PolicyBook:
    path = tmp_path_factory.mktemp("notice") / "policies.yaml"
    path.write_text(textwrap.dedent(POLICIES))
    write_wav(path.parent / "tone.wav", seconds=0.5)
    return load_policies(path)


@pytest.fixture
def menu_facts(book: PolicyBook, tmp_path_factory: pytest.TempPathFactory) -> Any:
    library = GreetingLibrary.install(
        book, "/var/lib/asterisk/sounds", tmp_path_factory.mktemp("root")
    )

    def make(did: str) -> CallFacts:
        return routed_facts(book, library, did)

    return make


def in_menu(call_facts: CallFacts) -> Call:
    call, _ = run(new_call(call_facts), CallArrived(T0), Answered(T0))
    return call


def test_menu_opt_out_failed_prompt_stops_and_deletes_the_recording_from_the_answer(
    menu_facts: Any,
) -> None:
    call = in_menu(menu_facts("+4930100020"))  # records from the answer: no greeting to wait for
    assert call.recording is not None
    call, _ = handle(call, RecordingStarted(1, at(0.1), "0x3"))

    call, commands = handle(call, fails(f"{CHANNEL}-ivr-1", 0.15))

    assert kinds(commands) == ["greeting_finished", "consent_notice_failed"]
    assert ledger(commands)[1].data["where"] == "ivr:main"
    assert actions(commands) == [
        StopRecording(1, FILE_1, "0x3"),
        DeleteRecording(1, FILE_1),
        StartTimer(1, 5),  # the menu still waits for the caller's choice
    ]

    call, commands = run(
        call,
        RecordingStopped(1, at(0.2)),
        DtmfReceived("3", at(2)),
        DtmfReceived("1", at(3)),
        PlaybackFinished(f"{CHANNEL}-available", at(8)),
        AgentConnected("agent1", "PJSIP/agent1", 3, 2, at(12)),
    )
    assert starts(commands) == []  # neither in the menu, nor the queue, nor at the answer
    assert call.phase is Phase.CONNECTED


def test_menu_prompt_heard_once_then_another_menus_failing_is_no_failed_notice(
    menu_facts: Any,
) -> None:
    call = in_menu(menu_facts("+4930100021"))
    call, _ = run(call, PlaybackFinished(f"{CHANNEL}-ivr-1", at(6)), DtmfReceived("9", at(7)))

    call, commands = handle(call, fails(f"{CHANNEL}-ivr-2", 7.1))

    assert kinds(commands) == ["greeting_finished"]  # the caller heard the notice before
    assert call.decision is None


def test_an_always_menu_prompt_failing_changes_nothing(menu_facts: Any) -> None:
    call = in_menu(menu_facts("+4930100023"))

    call, commands = handle(call, fails(f"{CHANNEL}-ivr-1", 0.1))

    assert kinds(commands) == ["greeting_finished"]
    assert call.recording is not None and call.decision is None


# ---------------------------------------------------------------- what the call's details say


def test_call_details_give_the_outcome_notice_failed_and_keep_no_audio(
    facts: Facts, script: Callable[..., CallScript]
) -> None:
    call = script(facts("opt_out", group=SUPPORT, did="+4930100010", keep_partial_on_opt_out=True))
    call.arrive()  # bridged-only recording from the answer
    call.wait(4)
    call.greeting_ends()  # the availability greeting
    call.send(fails(GREETING, call.clock().timestamp() - T0.timestamp()))
    call.press("3")
    call.wait(20)
    call.hang_up()

    details = summarize(call.ledger_events(), call.clock())

    assert details is not None
    assert details["call_recording_consent_action"] == "notice_failed"
    assert details["call_recording_consent_keypress"] is None
    assert details["recordings"] == [] and details["recording_time"] == 0
    validate_response(document(), "/calls", "GET", 200, [details])

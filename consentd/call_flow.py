"""The consent call flow as a pure state machine.

``handle(call, event)`` returns the next state of the call and the commands to
carry out. It does no I/O and reads no clock, so every rule of the product
(who is recorded when, what the first 3 means, what is deleted) is decided
here and tested without Asterisk. The runner executes the commands and feeds
their outcomes back as events.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from consentd.call_model import (
    CONSENT_KEY,
    Answer,
    CallArrived,
    CallEnded,
    CallFacts,
    Command,
    CommandFailed,
    ConsentAction,
    DeleteRecording,
    DtmfReceived,
    Event,
    Phase,
    Play,
    PlaybackFinished,
    PlaybackStarted,
    RecordingDeleted,
    RecordingStarted,
    RecordingStopped,
    Segment,
    StartHold,
    StartRecording,
    StopPlayback,
    StopRecording,
    WriteLedger,
)
from consentd.policy import Recording


@dataclass(frozen=True)
class Call:
    facts: CallFacts
    phase: Phase = Phase.GREETING
    next_seq: int = 0
    segments_opened: int = 0
    decision: ConsentAction | None = None
    greeting_playback: str | None = None
    recording: Segment | None = None

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED


class _Transition:
    """Collects the commands of one transition and numbers its ledger writes."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.commands: list[Command] = []

    def do(self, command: Command) -> None:
        self.commands.append(command)

    def ledger(self, kind: str, at: datetime, **data: Any) -> None:
        self.commands.append(WriteLedger(self.call.next_seq, kind, at, data))
        self.call = replace(self.call, next_seq=self.call.next_seq + 1)

    def update(self, **changes: Any) -> None:
        self.call = replace(self.call, **changes)

    def start_recording(self) -> None:
        number = self.call.segments_opened + 1
        file = self.call.facts.recording_file(number)
        self.update(segments_opened=number, recording=Segment(number, file))
        self.do(StartRecording(number, file))

    def hold(self) -> None:
        self.update(phase=Phase.HOLDING)
        self.do(StartHold())

    def result(self) -> tuple[Call, list[Command]]:
        return self.call, self.commands


def new_call(facts: CallFacts) -> Call:
    return Call(facts=facts)


def handle(call: Call, event: Event) -> tuple[Call, list[Command]]:
    t = _Transition(call)
    if call.ended and not isinstance(event, RecordingStopped | RecordingDeleted):
        return t.result()
    match event:
        case CallArrived():
            _arrive(t, event)
        case DtmfReceived():
            _keypress(t, event)
        case PlaybackStarted() if event.playback_id == call.greeting_playback:
            media = call.facts.greeting
            assert media is not None
            t.ledger(
                "greeting_played",
                event.at,
                playback_id=event.playback_id,
                media=media.uri,
                language=media.language,
                source=media.source,
                sha256=media.sha256,
            )
        case PlaybackFinished() if event.playback_id == call.greeting_playback:
            t.ledger(
                "greeting_finished", event.at, playback_id=event.playback_id, state=event.state
            )
            t.update(greeting_playback=None)
            if call.phase is Phase.GREETING:
                t.hold()
        case RecordingStarted():
            t.ledger("recording_started", event.at, **_segment_data(call, event.segment))
        case RecordingStopped():
            reason = (
                "caller_opted_out" if call.decision is ConsentAction.CALLER_OPTED_OUT else "stopped"
            )
            t.ledger(
                "recording_stopped", event.at, reason=reason, **_segment_data(call, event.segment)
            )
            if call.recording and call.recording.number == event.segment:
                t.update(recording=None)
        case RecordingDeleted():
            t.ledger("recording_deleted", event.at, **_segment_data(call, event.segment))
        case CommandFailed():
            _command_failed(t, event)
        case CallEnded():
            _end(t, event)
    return t.result()


def _arrive(t: _Transition, event: CallArrived) -> None:
    facts = t.call.facts
    policy = facts.policy
    t.ledger(
        "call_started",
        event.at,
        did=facts.did,
        caller=facts.caller,
        direction=facts.direction.value,
        policy=policy.recording.value,
        line=policy.line.value,
        language=policy.language,
        policy_source=facts.policy_source,
        channel_id=facts.channel_id,
        node=facts.node,
    )
    t.do(Answer())
    if policy.recording in (Recording.ALWAYS, Recording.OPT_OUT):
        t.start_recording()
    if facts.greeting is not None:
        playback_id = f"{facts.channel_id}-greeting"
        t.update(greeting_playback=playback_id, phase=Phase.GREETING)
        t.do(Play(playback_id, facts.greeting))
    else:
        t.hold()


def _keypress(t: _Transition, event: DtmfReceived) -> None:
    call = t.call
    decides = (
        event.digit == CONSENT_KEY
        and call.decision is None
        and call.facts.policy.recording.asks_caller
    )
    t.ledger(
        "keypress",
        event.at,
        digit=event.digit,
        duration_ms=event.duration_ms,
        phase=call.phase.value,
        decides=decides,
    )
    if not decides:
        return
    policy = call.facts.policy
    action = (
        ConsentAction.CALLER_OPTED_IN
        if policy.recording is Recording.OPT_IN
        else ConsentAction.CALLER_OPTED_OUT
    )
    t.update(decision=action)
    t.ledger(
        "consent_decided", event.at, action=action.value, digit=event.digit, phase=call.phase.value
    )
    # The recording changes first; the rest of the greeting can wait a round trip.
    segment = call.recording
    if action is ConsentAction.CALLER_OPTED_IN:
        t.start_recording()
    elif segment is not None:
        t.update(recording=replace(segment, stopping=True))
        t.do(StopRecording(segment.number, segment.file))
    if call.greeting_playback is not None:
        t.do(StopPlayback(call.greeting_playback))
    if segment is not None and action is ConsentAction.CALLER_OPTED_OUT:
        if not policy.keep_partial_on_opt_out:
            t.do(DeleteRecording(segment.number, segment.file))


def _command_failed(t: _Transition, event: CommandFailed) -> None:
    command = event.command
    t.ledger("command_failed", event.at, command=type(command).__name__, error=event.error)
    segment = t.call.recording
    if isinstance(command, StartRecording | StopRecording) and segment is not None:
        if segment.number == command.segment and isinstance(command, StartRecording):
            t.update(recording=None)
        elif segment.number == command.segment:
            # Still running: the hangup will end it, and the ledger must say so.
            t.update(recording=replace(segment, stopping=False))
    elif isinstance(command, Play) and command.playback_id == t.call.greeting_playback:
        t.update(greeting_playback=None)
        if t.call.phase is Phase.GREETING:
            t.hold()


def _end(t: _Transition, event: CallEnded) -> None:
    segment = t.call.recording
    if segment is not None and not segment.stopping:
        # MixMonitor ends with the channel; the hangup is the stop time.
        t.ledger(
            "recording_stopped", event.at, reason="hangup", **_segment_data(t.call, segment.number)
        )
        t.update(recording=None)
    t.ledger("call_ended", event.at, cause=event.cause)
    t.update(phase=Phase.ENDED, greeting_playback=None)


def _segment_data(call: Call, segment: int) -> dict[str, Any]:
    file = call.facts.recording_file(segment)
    return {"segment": segment, "file": file, "path": call.facts.host_path(file)}

"""The consent call flow as a pure state machine.

``handle(call, event)`` returns the next state of the call and the commands to
carry out. It does no I/O and reads no clock, so every rule of the product
(who is recorded when, what the first 3 means, what is deleted) is decided
here and tested without Asterisk. The runner executes the commands and feeds
their outcomes back as events.

A call either stays with consentd (greeting, then silence until hangup) or,
when its number routes to a group, hears the availability greeting and the
consent greeting and then waits in the group's app_queue queue. Key 3 keeps
working there; the recording (MixMonitor option b) covers only the time the
caller is bridged to an agent. Nobody answering leads back here, to voicemail.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from consentd.call_model import (
    CONSENT_KEY,
    Adopted,
    AgentCompleted,
    AgentConnected,
    Answer,
    Answered,
    CallArrived,
    CallEnded,
    CallFacts,
    Command,
    CommandFailed,
    ConsentAction,
    ContinueToQueue,
    ContinueUnrecorded,
    DeleteIfEmpty,
    DeleteRecording,
    DtmfReceived,
    EmptyFileRemoved,
    Event,
    HandOff,
    Hangup,
    InternalError,
    LeftStasis,
    Media,
    Phase,
    Play,
    PlaybackFinished,
    PlaybackStarted,
    QueueAbandoned,
    QueueJoined,
    RecordingDeleted,
    RecordingStarted,
    RecordingStopped,
    ReturnedFromQueue,
    Segment,
    StartRecording,
    StartVoicemail,
    StopPlayback,
    StopRecording,
    Subscribe,
    VoicemailFinished,
    VoicemailStarted,
    WriteLedger,
)
from consentd.policy import NoAnswer, Recording

#: Playback-id suffixes; "greeting" is the consent greeting.
CONSENT, AVAILABLE, VOICEMAIL = "greeting", "available", "voicemail"


@dataclass(frozen=True)
class Call:
    facts: CallFacts
    phase: Phase = Phase.GREETING
    next_seq: int = 0
    segments_opened: int = 0
    decision: ConsentAction | None = None
    greeting_playback: str | None = None
    #: Greetings still to play, in order (playback-id suffixes).
    pending_greetings: tuple[str, ...] = ()
    recording: Segment | None = None
    voicemail_active: bool = False
    #: Why consentd handed the call back to the dialplan unrecorded, if it did.
    unserved: str | None = None
    #: Refused recordings still on disk (found when adopting after a restart).
    owed_deletions: tuple[Segment, ...] = ()
    #: The runner should stop after this event (the daemon hands the call on).
    handed_off: bool = False
    #: An agent answered at some point (bridged-only recordings hold audio).
    agent_answered: bool = False
    #: consentd asked Asterisk to record a voicemail.
    voicemail_requested: bool = False

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED or self.handed_off

    def playback_id(self, suffix: str) -> str:
        return f"{self.facts.channel_id}-{suffix}"

    def media(self, suffix: str) -> Media | None:
        facts = self.facts
        return {
            CONSENT: facts.greeting,
            AVAILABLE: facts.announcement,
            VOICEMAIL: facts.voicemail_greeting,
        }[suffix]


class _Transition:
    """Collects the commands of one transition and numbers its ledger writes."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.commands: list[Command] = []

    def do(self, command: Command) -> None:
        self.commands.append(command)

    def ledger(self, kind: str, at: datetime, /, **data: Any) -> None:
        self.commands.append(WriteLedger(self.call.next_seq, kind, at, data))
        self.call = replace(self.call, next_seq=self.call.next_seq + 1)

    def update(self, **changes: Any) -> None:
        self.call = replace(self.call, **changes)

    def start_recording(self) -> None:
        number = self.call.segments_opened + 1
        file = self.call.facts.recording_file(number)
        self.update(segments_opened=number, recording=Segment(number, file))
        self.do(StartRecording(number, file, bridged_only=self.call.facts.group is not None))

    def play(self, suffix: str) -> None:
        media = self.call.media(suffix)
        if media is None:
            self.next_step()
            return
        playback_id = self.call.playback_id(suffix)
        self.update(greeting_playback=playback_id)
        self.do(Play(playback_id, media))

    def next_step(self) -> None:
        """After a greeting (or none): the next greeting, the queue, voicemail, or holding."""
        call = self.call
        if call.phase is Phase.VOICEMAIL:
            group = call.facts.group
            assert group is not None
            self.update(voicemail_requested=True)
            self.do(StartVoicemail(call.facts.voicemail_name, group.voicemail_max_seconds))
        elif call.pending_greetings:
            suffix, *rest = call.pending_greetings
            self.update(pending_greetings=tuple(rest), phase=Phase.GREETING)
            self.play(suffix)
        elif call.facts.group is not None:
            self.update(phase=Phase.QUEUED)
            self.do(ContinueToQueue(call.facts.group.queue, call.facts.group.timeout))
        else:
            # The line stays open with nothing sent to the caller. No silence
            # generator: its steady frames against the caller's bursty RTP made
            # MixMonitor insert silence and lengthen the file (see README,
            # "Recording fidelity"). For the same reason an opt-out call held
            # here records from the end of its greeting, not during it: the
            # caller is recorded alone, exactly as their audio arrives.
            self.update(phase=Phase.HOLDING)
            if _records_opt_out_now(call):
                self.start_recording()

    def result(self) -> tuple[Call, list[Command]]:
        return self.call, self.commands


def new_call(facts: CallFacts) -> Call:
    greetings = []
    if facts.group is not None and facts.announcement is not None:
        greetings.append(AVAILABLE)
    if facts.greeting is not None:
        greetings.append(CONSENT)
    return Call(facts=facts, pending_greetings=tuple(greetings))


_AFTER_END = RecordingStopped | RecordingDeleted | EmptyFileRemoved


def handle(call: Call, event: Event) -> tuple[Call, list[Command]]:
    t = _Transition(call)
    if call.ended and not isinstance(event, _AFTER_END):
        return t.result()
    match event:
        case CallArrived():
            _arrive(t, event)
        case Answered() if call.phase is Phase.ANSWERING:
            _answered(t)
        case DtmfReceived():
            _keypress(t, event)
        case PlaybackStarted() if event.playback_id == call.greeting_playback:
            _greeting_started(t, event)
        case PlaybackFinished() if event.playback_id == call.greeting_playback:
            t.ledger(
                "greeting_finished", event.at, playback_id=event.playback_id, state=event.state
            )
            t.update(greeting_playback=None)
            t.next_step()
        case RecordingStarted():
            ids = {"mixmonitor_id": event.mixmonitor_id} if event.mixmonitor_id else {}
            t.ledger("recording_started", event.at, **_segment_data(call, event.segment), **ids)
            if call.recording and call.recording.number == event.segment:
                t.update(recording=replace(call.recording, mixmonitor_id=event.mixmonitor_id))
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
        case EmptyFileRemoved():
            t.ledger("empty_file_deleted", event.at, file=event.file)
        case QueueJoined():
            t.ledger("queue_joined", event.at, queue=event.queue, position=event.position)
        case AgentConnected() if not call.agent_answered:
            t.update(phase=Phase.CONNECTED, agent_answered=True)
            t.ledger(
                "agent_connected",
                event.at,
                agent=event.agent,
                interface=event.interface,
                queue_time=event.hold_time,
                ring_time=event.ring_time,
                **({"recovered": True} if event.recovered else {}),
            )
        case AgentCompleted():
            t.ledger("agent_completed", event.at, reason=event.reason, talk_time=event.talk_time)
        case QueueAbandoned():
            t.ledger("queue_abandoned", event.at, queue_time=event.hold_time)
        case ReturnedFromQueue():
            _no_answer(t, event)
        case VoicemailStarted():
            t.update(voicemail_active=True)
            t.ledger("voicemail_started", event.at, **_voicemail_data(call))
        case VoicemailFinished() if call.phase is Phase.VOICEMAIL:
            # Also when ARI fails the recording before it started: don't leave the caller waiting.
            t.update(voicemail_active=False)
            t.ledger(
                "voicemail_finished",
                event.at,
                state=event.state,
                duration=event.duration,
                **_voicemail_data(call),
            )
            t.do(Hangup())
        case LeftStasis() if call.phase is not Phase.QUEUED and call.phase is not Phase.CONNECTED:
            _end(t, CallEnded(event.at))
        case CommandFailed():
            _command_failed(t, event)
        case InternalError():
            _internal_error(t, event)
        case Adopted():
            _adopt(t, event)
        case HandOff():
            t.ledger("call_handed_off", event.at, phase=call.phase.value)
            t.update(handed_off=True)
        case CallEnded():
            _end(t, event)
    return t.result()


def _arrive(t: _Transition, event: CallArrived) -> None:
    facts = t.call.facts
    policy = facts.policy
    routed = {"group": policy.routing.group} if policy.routing else {}
    if facts.group is not None:
        routed["queue"] = facts.group.queue
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
        **routed,
    )
    if event.returned_from_queue is not None:
        t.update(pending_greetings=())
        _no_answer(t, ReturnedFromQueue(event.returned_from_queue, event.at))
        return
    if event.unserved is not None:
        _unserved(t, event.unserved, event.at)
        return
    if event.answered:
        _answered(t)
        return
    # Nothing else happens until Asterisk confirms the answer: a call that
    # cannot be answered in time goes on unrecorded instead of ringing forever.
    t.update(phase=Phase.ANSWERING)
    t.do(Answer())


def _answered(t: _Transition) -> None:
    t.update(phase=Phase.GREETING)
    if t.call.facts.policy.recording is Recording.ALWAYS:
        t.start_recording()
    elif _records_opt_out_now(t.call) and t.call.facts.group is not None:
        t.start_recording()  # bridged-only: it holds nothing before an agent answers
    t.next_step()


def _records_opt_out_now(call: Call) -> bool:
    """An opt-out call records unless the caller refused (also before the answer)."""
    return (
        call.facts.policy.recording is Recording.OPT_OUT
        and call.decision is None
        and call.recording is None
        and call.segments_opened == 0
    )


def _unserved(t: _Transition, reason: str, at: datetime) -> None:
    """consentd cannot serve this call: the dialplan carries it on, never recorded."""
    t.ledger("call_unserved", at, reason=reason)
    t.update(phase=Phase.UNSERVED, pending_greetings=(), unserved=reason)
    t.do(ContinueUnrecorded(reason))


def _greeting_started(t: _Transition, event: PlaybackStarted) -> None:
    suffix = event.playback_id.removeprefix(f"{t.call.facts.channel_id}-")
    media = t.call.media(suffix)
    assert media is not None
    t.ledger(
        "greeting_played",
        event.at,
        playback_id=event.playback_id,
        kind=media.kind,
        media=media.uri,
        language=media.language,
        source=media.source,
        sha256=media.sha256,
    )


def _keypress(t: _Transition, event: DtmfReceived) -> None:
    call = t.call
    decides = (
        event.digit == CONSENT_KEY
        and call.decision is None
        and call.facts.policy.recording.asks_caller
        and call.phase not in (Phase.VOICEMAIL, Phase.UNSERVED)
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
    t.update(
        decision=action,
        pending_greetings=tuple(g for g in call.pending_greetings if g != CONSENT),
    )
    t.ledger(
        "consent_decided", event.at, action=action.value, digit=event.digit, phase=call.phase.value
    )
    segment = call.recording
    greeting = call.greeting_playback
    stop_greeting = greeting == call.playback_id(CONSENT)
    if action is ConsentAction.CALLER_OPTED_IN:
        # The greeting stops first: a recording that begins while the greeting's
        # steady frames still flow gets silence inserted wherever the caller's
        # RTP is late (MixMonitor's read/write pairing), and keeps its tail.
        if stop_greeting and greeting is not None:
            t.do(StopPlayback(greeting))
        t.start_recording()
        return
    # A refusal stops the recording before anything else: nothing more is captured.
    if segment is not None:
        t.update(recording=replace(segment, stopping=True))
        t.do(StopRecording(segment.number, segment.file, segment.mixmonitor_id))
    if stop_greeting and greeting is not None:
        t.do(StopPlayback(greeting))
    if segment is not None and not policy.keep_partial_on_opt_out:
        t.do(DeleteRecording(segment.number, segment.file))


def _no_answer(t: _Transition, event: ReturnedFromQueue) -> None:
    group = t.call.facts.group
    t.ledger("queue_left", event.at, status=event.status)
    if group is None or group.no_answer is NoAnswer.HANGUP:
        t.ledger("no_answer_hangup", event.at)
        t.do(Hangup())
        return
    # Voicemail is recorded whatever the policy: the caller chooses to leave it.
    t.update(phase=Phase.VOICEMAIL)
    t.play(VOICEMAIL)


def _command_failed(t: _Transition, event: CommandFailed) -> None:
    command = event.command
    unknown = {"outcome": "unknown"} if event.unknown else {}
    t.ledger(
        "command_failed", event.at, command=type(command).__name__, error=event.error, **unknown
    )
    segment = t.call.recording
    if isinstance(command, StartRecording | StopRecording) and segment is not None:
        if segment.number == command.segment and isinstance(command, StartRecording):
            # Refused: nothing records. No answer: it may record, so the segment
            # stays, and a later refusal still stops and deletes it.
            if not event.unknown:
                t.update(recording=None)
        elif segment.number == command.segment:
            # Still running: the hangup will end it, and the ledger must say so.
            t.update(recording=replace(segment, stopping=False))
    elif isinstance(command, Play) and command.playback_id == t.call.greeting_playback:
        t.update(greeting_playback=None)
        t.next_step()
    elif isinstance(command, Answer) and t.call.phase is Phase.ANSWERING:
        _unserved(t, "answer_failed", event.at)
    elif isinstance(command, ContinueUnrecorded):
        t.do(Hangup())  # the dialplan could not take it either: never leave it ringing
    elif isinstance(command, ContinueToQueue):
        # Refused: the caller stays here. No answer: it may be queued, and a
        # StasisEnd then must not end the call.
        t.update(phase=Phase.QUEUED if event.unknown else Phase.HOLDING)
    elif isinstance(command, StartVoicemail):
        t.do(Hangup())


def _adopt(t: _Transition, event: Adopted) -> None:
    """Reconcile a call rebuilt from the ledger with where Asterisk has it now.

    Consent first: whatever was refused is stopped and deleted, exactly once;
    whatever was consented (or is the policy) and is not recording, records.
    The caller is never greeted again.
    """
    call = t.call
    t.ledger(
        "call_adopted",
        event.at,
        location=event.location,
        phase=call.phase.value,
        untracked_recordings=[n for n, _ in event.untracked_recordings] or None,
    )
    refused = call.decision is ConsentAction.CALLER_OPTED_OUT
    keep = call.facts.policy.keep_partial_on_opt_out
    for number, mixmonitor_id in event.untracked_recordings:
        if call.recording is not None and call.recording.number == number:
            continue
        found = Segment(number, call.facts.recording_file(number), mixmonitor_id=mixmonitor_id)
        t.update(segments_opened=max(t.call.segments_opened, number))
        if _should_record(t.call) and t.call.recording is None:
            t.update(recording=found)
            t.ledger("recording_started", event.at, **_segment_data(call, number), adopted=True)
        else:  # the ledger never knew it, so it cannot be consented: stop and delete
            t.do(StopRecording(number, found.file, mixmonitor_id))
            t.do(DeleteRecording(number, found.file))
    for owed in call.owed_deletions:
        t.do(DeleteRecording(owed.number, owed.file))
    t.update(owed_deletions=())
    current = t.call.recording
    if current is not None and refused:
        t.update(recording=replace(current, stopping=True))
        t.do(StopRecording(current.number, current.file, current.mixmonitor_id))
        if not keep:
            t.do(DeleteRecording(current.number, current.file))
    if event.location == "queue":
        t.do(Subscribe())
        if t.call.phase is not Phase.CONNECTED:
            t.update(phase=Phase.QUEUED)
        if _should_record(t.call) and t.call.recording is None:
            t.start_recording()
        return
    if event.returned_from_queue is not None:
        _no_answer(t, ReturnedFromQueue(event.returned_from_queue, event.at))
        return
    if t.call.phase is Phase.VOICEMAIL:
        return
    playing = call.playback_id(CONSENT)
    if playing in event.playing:
        t.update(phase=Phase.GREETING, greeting_playback=playing)
        return
    t.update(greeting_playback=None)
    if _should_record(t.call) and t.call.recording is None:
        if t.call.facts.group is None:
            t.update(phase=Phase.HOLDING)
            t.start_recording()
            return
        t.start_recording()  # bridged-only: from the agent's answer
    t.next_step()


def _should_record(call: Call) -> bool:
    """Whether the policy and the caller's decision want audio recorded now."""
    recording = call.facts.policy.recording
    if recording is Recording.ALWAYS:
        return True
    if recording is Recording.OPT_IN:
        return call.decision is ConsentAction.CALLER_OPTED_IN
    if recording is Recording.OPT_OUT:
        return call.decision is None
    return False


def _internal_error(t: _Transition, event: InternalError) -> None:
    """Fail this call safely: stop recording, and let the dialplan carry it unrecorded."""
    t.ledger("call_failed", event.at, error=event.error)
    segment = t.call.recording
    if segment is not None and not segment.stopping:
        t.update(recording=replace(segment, stopping=True))
        t.do(StopRecording(segment.number, segment.file, segment.mixmonitor_id))
    if t.call.phase in (Phase.ANSWERING, Phase.GREETING, Phase.HOLDING):
        _unserved(t, "internal_error", event.at)


def _end(t: _Transition, event: CallEnded) -> None:
    segment = t.call.recording
    refused = t.call.decision is ConsentAction.CALLER_OPTED_OUT
    delete_refused = refused and not t.call.facts.policy.keep_partial_on_opt_out
    if segment is not None and not segment.stopping:
        # MixMonitor ends with the channel; the hangup is the stop time.
        t.ledger(
            "recording_stopped",
            event.at,
            reason="hangup",
            **_segment_data(t.call, segment.number),
        )
        t.update(recording=None)
        if delete_refused:  # refused, but the stop never happened (found after a restart)
            t.do(DeleteRecording(segment.number, segment.file))
    for owed in t.call.owed_deletions:
        t.do(DeleteRecording(owed.number, owed.file))
    t.update(owed_deletions=())
    if t.call.voicemail_active:
        t.ledger(
            "voicemail_finished", event.at, state="hangup", duration=None, **_voicemail_data(t.call)
        )
        t.update(voicemail_active=False)
    t.ledger("call_ended", event.at, cause=event.cause)
    t.update(phase=Phase.ENDED, greeting_playback=None)
    # No empty files left behind: a bridged-only recording whose caller never
    # reached an agent, or a voicemail hung up at the beep, holds only a header.
    call = t.call
    if call.facts.group is not None and not call.agent_answered:
        for number in range(1, call.segments_opened + 1):
            t.do(DeleteIfEmpty(call.facts.recording_file(number)))
    if call.voicemail_requested:
        t.do(DeleteIfEmpty(call.facts.voicemail_file))


def _segment_data(call: Call, segment: int) -> dict[str, Any]:
    file = call.facts.recording_file(segment)
    return {
        "segment": segment,
        "file": file,
        "path": call.facts.host_path(file),
        "bridged_only": call.facts.group is not None,
    }


def _voicemail_data(call: Call) -> dict[str, Any]:
    file = call.facts.voicemail_file
    return {"file": file, "path": call.facts.host_path(file)}

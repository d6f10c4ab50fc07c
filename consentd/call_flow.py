"""The consent call flow as a pure state machine.

``handle(call, event)`` returns the next state of the call and the commands to
carry out. It does no I/O and reads no clock, so every rule of the product
(who is recorded when, what the first 3 means, what is deleted) is decided
here and tested without Asterisk. The runner executes the commands and feeds
their outcomes back as events.

A call either stays with consentd (greeting, then silence until hangup) or
goes where its number's routing sends it: a group (availability greeting,
consent greeting, then the group's app_queue queue; the recording, MixMonitor
option b, covers only the time bridged to an agent; nobody answering leads
back here, to voicemail), an IVR menu (no consent greeting: the menu's prompt
mentions key 3), the PBX's own dialplan, voicemail, or a hangup. Wherever it
goes, consentd keeps watching the channel, and key 3 keeps deciding consent.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from consentd.call_model import (
    CONSENT_KEY,
    DEFAULT_VOICEMAIL_SECONDS,
    Adopted,
    AgentCompleted,
    AgentConnected,
    Answer,
    Answered,
    Beep,
    Bridged,
    CallArrived,
    CallEnded,
    CallFacts,
    Command,
    CommandFailed,
    ConsentAction,
    ContinueOutbound,
    ContinueToDialplan,
    ContinueToQueue,
    ContinueUnrecorded,
    DeleteIfEmpty,
    DeleteRecording,
    Direction,
    DtmfReceived,
    EmptyFileRemoved,
    Event,
    HandOff,
    Hangup,
    HangupRequested,
    InternalError,
    LeftStasis,
    Media,
    MenuPlan,
    MuteRecording,
    Phase,
    Play,
    PlaybackFinished,
    PlaybackStarted,
    QueueAbandoned,
    QueueJoined,
    RecordingControl,
    RecordingDeleted,
    RecordingStarted,
    RecordingStopped,
    ReturnedFromQueue,
    Segment,
    SetVariables,
    StartRecording,
    StartTimer,
    StartVoicemail,
    StopPlayback,
    StopRecording,
    Subscribe,
    TimerFired,
    VoicemailFinished,
    VoicemailStarted,
    WriteLedger,
)
from consentd.policy import (
    DialplanTarget,
    GroupTarget,
    HangupTarget,
    IvrTarget,
    NoAnswer,
    PauseGap,
    Recording,
    RoutingTarget,
    VoicemailTarget,
)

#: Playback-id suffixes; "greeting" is the consent greeting.
CONSENT, AVAILABLE, VOICEMAIL = "greeting", "available", "voicemail"
#: Asterisk's own beep (the one ARI's record plays), after the voicemail greeting.
VOICEMAIL_BEEP = "sound:beep"
WAIT, HOLD = "wait", "hold"
#: ARI's answers to a request on a channel that hung up meanwhile: gone (404),
#: or still there but already out of Stasis (409, ``resource_channels.c``).
CHANNEL_LEFT_STATUSES = (404, 409)
#: Playback-id prefixes of an IVR menu's prompt and its "invalid choice" prompt,
#: numbered per play so a stopped prompt's late events are never mistaken.
MENU_PROMPT, MENU_INVALID = "ivr-", "invalid-"


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
    #: Who answered (app_queue's member name): the agent an API control is by.
    agent: str | None = None
    #: consentd asked Asterisk to record a voicemail.
    voicemail_requested: bool = False
    #: The voicemail greeting played to its end, and with it the beep.
    voicemail_beeped: bool = False
    #: The IVR menu the caller is in (phase IVR), and its misses (no key, wrong key).
    menu: str | None = None
    menu_misses: int = 0
    #: Menu prompts played so far (numbers their playback ids).
    menu_plays: int = 0
    #: The token of the live menu timer (0: none); ``timers`` numbers them.
    timer: int = 0
    timers: int = 0
    #: The number's routing was followed (the route is taken once).
    routed: bool = False
    #: In a bridge now (the dialplan's Dial answered): a press is "talking".
    bridged: bool = False
    #: An agent paused the recording (silence: muted; skip: stopped until resumed).
    paused: bool = False
    #: Segments recorded with MixMonitor option b (audio only while bridged to an agent).
    bridged_segments: tuple[int, ...] = ()
    #: A greeting carrying the consent notice played (done, or stopped by a key).
    notice_heard: bool = False
    #: When Asterisk announced the hangup (ChannelHangupRequest): a playback it
    #: cuts off ends "failed", and that is the call's end, not a notice that failed.
    hung_up_at: datetime | None = None
    #: The latest time of a ledger row written so far (the call's rows stay in order).
    last_row_at: datetime | None = None

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED or self.handed_off

    @property
    def hanging_up(self) -> bool:
        return self.hung_up_at is not None

    @property
    def refused(self) -> bool:
        """The caller opted out or withdrew: nothing may be kept (keep_partial aside)."""
        return self.decision is not None and self.decision.refuses

    @property
    def deletes_captured(self) -> bool:
        """Whether audio captured so far must be deleted (refused, or never informed)."""
        keep = self.facts.policy.keep_partial_on_opt_out
        return self.decision is not None and self.decision.deletes_captured(keep)

    def carries_notice(self, playback_id: str) -> bool:
        """Whether this playback tells the caller about recording and key 3: the
        consent greeting, or (numbers routed to a menu) the menu's prompt."""
        if not self.facts.policy.recording.asks_caller:
            return False
        suffix = playback_id.removeprefix(f"{self.facts.channel_id}-")
        return suffix == CONSENT or suffix.startswith(MENU_PROMPT)

    def playback_id(self, suffix: str) -> str:
        return f"{self.facts.channel_id}-{suffix}"

    @property
    def menu_plan(self) -> MenuPlan:
        assert self.menu is not None
        return self.facts.menus[self.menu]

    def media(self, suffix: str) -> Media | None:
        facts = self.facts
        if suffix.startswith(MENU_PROMPT):
            return self.menu_plan.greeting
        if suffix.startswith(MENU_INVALID):
            return self.menu_plan.invalid
        return {
            CONSENT: facts.greeting,
            AVAILABLE: facts.announcement,
            VOICEMAIL: facts.voicemail_greeting,
            WAIT: facts.wait_greeting,
            HOLD: facts.hold_greeting,
        }[suffix]


_CALL_FIELDS = frozenset(f.name for f in fields(Call))


class _Transition:
    """Collects the commands of one transition and numbers its ledger writes."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.commands: list[Command] = []

    def do(self, command: Command) -> None:
        self.commands.append(command)

    def ledger(self, kind: str, at: datetime, /, **data: Any) -> None:
        self.commands.append(WriteLedger(self.call.next_seq, kind, at, data))
        last = self.call.last_row_at
        self.update(
            next_seq=self.call.next_seq + 1, last_row_at=at if last is None else max(at, last)
        )

    def update(self, **changes: Any) -> None:
        """``dataclasses.replace`` for ``Call``, without its per-field walk and
        28-argument ``__init__``: those were 8 % of the daemon's CPU samples at
        300 calls/s. ``Call`` has no ``__post_init__`` to skip; unknown names still fail."""
        unknown = changes.keys() - _CALL_FIELDS
        if unknown:
            raise TypeError(f"Call has no field {', '.join(sorted(unknown))}")
        new = object.__new__(Call)
        new.__dict__.update(self.call.__dict__)
        new.__dict__.update(changes)
        self.call = new

    def start_recording(self, *, bridged_only: bool | None = None) -> None:
        """``bridged_only`` (MixMonitor b) defaults to: routed to a group of agents.

        Not once the caller has hung up (ChannelHangupRequest): a MixMonitor on the
        dying channel was still confirmed by AMI, and the ledger then named a
        recording that never got a file, its start after the call's end."""
        if self.call.hanging_up:
            return
        number = self.call.segments_opened + 1
        file = self.call.facts.recording_file(number)
        if bridged_only is None:
            bridged_only = self.call.facts.group is not None
        self.update(segments_opened=number, recording=Segment(number, file))
        if bridged_only:
            self.update(bridged_segments=(*self.call.bridged_segments, number))
        self.do(StartRecording(number, file, bridged_only=bridged_only))

    def stop_recording(self) -> None:
        """Stop the running segment (once: a stop already under way is not repeated)."""
        segment = self.call.recording
        if segment is None or segment.stopping:
            return
        self.update(recording=replace(segment, stopping=True))
        self.do(StopRecording(segment.number, segment.file, segment.mixmonitor_id))

    def delete_segments(self) -> None:
        """Delete every segment's file: a pause with pause_gap skip split it in several."""
        for number in range(1, self.call.segments_opened + 1):
            self.do(DeleteRecording(number, self.call.facts.recording_file(number)))

    def record_if_due(self) -> None:
        """Start recording if the policy and the caller's decision want it and none runs."""
        if _should_record(self.call) and self.call.recording is None:
            self.start_recording()

    def play(self, suffix: str, at: datetime) -> None:
        media = self.call.media(suffix)
        if media is None:
            self.next_step(at)
            return
        playback_id = self.call.playback_id(suffix)
        self.update(greeting_playback=playback_id)
        # The voicemail greeting ends with the beep: the recording then starts when
        # Asterisk says it does (its own beep would come after its RecordingStarted).
        then = (VOICEMAIL_BEEP,) if suffix == VOICEMAIL else ()
        self.do(Play(playback_id, media, followed_by=then))

    def next_step(self, at: datetime) -> None:
        """After a greeting (or none): the next greeting, the menu's wait for a key,
        the queue, voicemail, the number's route, or holding."""
        call = self.call
        if call.hanging_up:
            return  # the caller is gone: no greeting, queue, route or recording starts
        if call.phase is Phase.VOICEMAIL:
            group = call.facts.group
            seconds = group.voicemail_max_seconds if group else DEFAULT_VOICEMAIL_SECONDS
            self.update(voicemail_requested=True)
            self.do(
                StartVoicemail(call.facts.voicemail_name, seconds, beep=not call.voicemail_beeped)
            )
        elif call.pending_greetings:
            suffix, *rest = call.pending_greetings
            phase = Phase.IVR if call.phase is Phase.IVR else Phase.GREETING
            self.update(pending_greetings=tuple(rest), phase=phase)
            self.play(suffix, at)
        elif call.phase is Phase.IVR:
            self.start_timer(call.menu_plan.timeout)
        elif call.facts.group is not None:
            self.update(phase=Phase.QUEUED)
            self.do(ContinueToQueue(call.facts.group.queue, call.facts.group.timeout))
        elif call.facts.policy.routing is not None and not call.routed:
            _route(self, call.facts.policy.routing, at, source="number")
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

    def start_timer(self, seconds: float) -> None:
        token = self.call.timers + 1
        self.update(timers=token, timer=token)
        self.do(StartTimer(token, seconds))

    def result(self) -> tuple[Call, list[Command]]:
        return self.call, self.commands


def new_call(facts: CallFacts) -> Call:
    if facts.direction is Direction.OUTBOUND:
        return Call(facts=facts)  # the agent dials: no greetings on their side
    greetings = []
    if facts.group is not None and facts.announcement is not None:
        greetings.append(AVAILABLE)
    if facts.greeting is not None:
        greetings.append(CONSENT)
    routing = facts.policy.routing
    if facts.wait_greeting is not None and isinstance(routing, GroupTarget | DialplanTarget):
        greetings.append(WAIT)  # before the queue or the hand-off to the dialplan
    if facts.hold_greeting is not None and routing is None:
        greetings.append(HOLD)
    return Call(facts=facts, pending_greetings=tuple(greetings))


_AFTER_END = RecordingStopped | RecordingDeleted | EmptyFileRemoved


def _after_end(event: Event) -> bool:
    """What the hangup's own commands report back still goes into the ledger. A failed
    delete above all: its ``command_failed`` row is how the after-call sweep
    (consentd/owed_deletions.py) finds refused audio still on the PBX."""
    if isinstance(event, CommandFailed):
        return isinstance(event.command, DeleteRecording)
    return isinstance(event, _AFTER_END)


def handle(call: Call, event: Event) -> tuple[Call, list[Command]]:
    t = _Transition(call)
    if call.ended and not _after_end(event):
        return t.result()
    match event:
        case CallArrived():
            _arrive(t, event)
        case Answered() if call.phase is Phase.ANSWERING:
            _answered(t, event.at)
        case DtmfReceived():
            _keypress(t, event)
        case PlaybackStarted() if event.playback_id == call.greeting_playback:
            _greeting_started(t, event)
        case PlaybackFinished() if event.playback_id == call.greeting_playback:
            t.ledger(
                "greeting_finished", event.at, playback_id=event.playback_id, state=event.state
            )
            t.update(greeting_playback=None)
            if call.phase is Phase.VOICEMAIL and event.state == "done":
                t.update(voicemail_beeped=True)  # the voicemail greeting, its beep included
            _notice_ended(t, event.playback_id, event.state, event.at)
            t.next_step(event.at)
        case HangupRequested():
            # The first announced; or earlier than a refused play's guess (below).
            t.update(hung_up_at=min(call.hung_up_at or event.at, event.at))
        case TimerFired() if call.phase is Phase.IVR and event.token == call.timer:
            t.update(timer=0)
            _menu_miss(t, "no_key", event.at)
        case RecordingControl() if control_refusal(call, event.action) is None:
            _control(t, event)
        case Bridged():
            if call.phase is Phase.DIALPLAN and event.entered != call.bridged:
                t.ledger("callee_answered" if event.entered else "callee_left", event.at)
            t.update(bridged=event.entered)
        case RecordingStarted():
            ids: dict[str, Any] = (
                {"mixmonitor_id": event.mixmonitor_id} if event.mixmonitor_id else {}
            )
            if event.late:
                ids["late"] = True
            t.ledger("recording_started", event.at, **_segment_data(call, event.segment), **ids)
            if call.recording and call.recording.number == event.segment:
                t.update(
                    recording=replace(
                        call.recording, mixmonitor_id=event.mixmonitor_id, started_at=event.at
                    )
                )
        case RecordingStopped():
            reason = call.decision.value if call.decision and call.refused else "stopped"
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
            t.update(phase=Phase.CONNECTED, agent_answered=True, agent=event.agent or None)
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
        case LeftStasis() if call.phase not in (Phase.QUEUED, Phase.CONNECTED, Phase.DIALPLAN):
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
    routed: dict[str, Any] = {}
    if isinstance(policy.routing, GroupTarget):
        routed["group"] = policy.routing.group
    if facts.group is not None:
        routed["queue"] = facts.group.queue
    if policy.menu is not None:
        routed["ivr"] = policy.menu
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
        **({"callee": facts.callee, "agent": facts.agent} if facts.callee is not None else {}),
    )
    if facts.direction is Direction.OUTBOUND:
        _outbound(t, event)
        return
    if event.returned_from_queue is not None:
        t.update(pending_greetings=())
        _no_answer(t, ReturnedFromQueue(event.returned_from_queue, event.at))
        return
    if event.unserved is not None:
        _unserved(t, event.unserved, event.at)
        return
    if event.answered:
        _answered(t, event.at)
        return
    # Nothing else happens until Asterisk confirms the answer: a call that
    # cannot be answered in time goes on unrecorded instead of ringing forever.
    t.update(phase=Phase.ANSWERING)
    t.do(Answer())


def _outbound(t: _Transition, event: CallArrived) -> None:
    """An agent's call to the trunk: refused, or dialled with the operator number.

    ``always`` and ``opt_out`` record from the callee's answer (MixMonitor b on
    the agent's channel); ``opt_in`` and ``never`` do not: the callee was never
    asked. consentd stays subscribed to the agent's channel.
    """
    facts = t.call.facts
    if event.refused is not None:
        t.ledger("call_refused", event.at, reason=event.refused)
        t.update(phase=Phase.UNSERVED)
        t.do(Hangup(reason="rejected"))
        return
    policy = facts.policy
    recorded = policy.recording in (Recording.ALWAYS, Recording.OPT_OUT)
    announce = policy.outbound_announcement
    t.ledger(
        "outbound_dialled",
        event.at,
        callee=facts.callee,
        caller_id=facts.did,
        recorded=recorded,
        announcement=announce,
    )
    if recorded:
        t.start_recording(bridged_only=True)
    t.update(phase=Phase.DIALPLAN, routed=True)
    notice = "A(consentd/outbound_notice)" if announce else ""
    t.do(
        ContinueOutbound(
            facts.callee or "",
            (
                ("CONSENTD_CALLER_ID", facts.did),
                ("CONSENTD_DIAL_OPTIONS", notice),
                ("CONSENTD_CALL_ID", facts.call_id),
            ),
        )
    )


def _answered(t: _Transition, at: datetime) -> None:
    t.update(phase=Phase.GREETING)
    if t.call.facts.policy.recording is Recording.ALWAYS:
        t.start_recording()
    elif _records_opt_out_now(t.call) and t.call.facts.group is not None:
        t.start_recording()  # bridged-only: it holds nothing before an agent answers
    elif _records_opt_out_now(t.call) and t.call.facts.policy.menu is not None:
        t.start_recording()  # a menu has no consent greeting to wait for
    t.next_step(at)


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


def _notice_ended(
    t: _Transition, playback_id: str, state: str, at: datetime, *, error: str | None = None
) -> None:
    """A greeting ended: if it carried the consent notice and Asterisk could not play
    it, on a call still up and undecided, the caller was never told: never recorded.

    A hangup cuts a playback off with state "failed" too: after ChannelHangupRequest
    that is only the call's end.
    """
    call = t.call
    if not call.carries_notice(playback_id):
        return
    if state not in ("failed", "play_failed"):
        t.update(notice_heard=True)
        return
    if call.hanging_up or call.notice_heard or call.decision is not None:
        return
    media = call.media(playback_id.removeprefix(f"{call.facts.channel_id}-"))
    t.update(
        decision=ConsentAction.NOTICE_FAILED,
        pending_greetings=tuple(g for g in call.pending_greetings if g != CONSENT),
    )
    t.ledger(
        "consent_notice_failed",
        at,
        action=ConsentAction.NOTICE_FAILED.value,
        playback_id=playback_id,
        media=media.uri if media else None,
        language=media.language if media else None,
        source=media.source if media else None,
        state=state,
        phase=call.phase.value,
        where=_where(call),
        **({"error": error} if error is not None else {}),
    )
    # Whatever already records (a menu's or a group's opt-out recording, from the
    # answer) stops, and its audio goes: keep_partial_on_opt_out is the caller's
    # option for their own refusal, and this caller refused nothing.
    t.stop_recording()
    t.delete_segments()


def _keypress(t: _Transition, event: DtmfReceived) -> None:
    call = t.call
    if call.facts.direction is Direction.OUTBOUND:
        # The agent's own keys (a remote menu, a PIN): never consent, and not
        # the ledger's business. Their pause and resume codes come as controls.
        return
    consent_key = event.digit == CONSENT_KEY and call.facts.policy.recording.asks_caller
    open_to_consent = consent_key and call.phase not in (Phase.VOICEMAIL, Phase.UNSERVED)
    withdraws = (
        open_to_consent
        and call.decision is ConsentAction.CALLER_OPTED_IN
        and call.facts.policy.allow_withdrawal
    )
    decides = (open_to_consent and call.decision is None) or withdraws
    where = _where(call)
    t.ledger(
        "keypress",
        event.at,
        digit=event.digit,
        duration_ms=event.duration_ms,
        phase=call.phase.value,
        where=where,
        decides=decides,
    )
    if withdraws:
        _withdraw(t, event, where)
    elif decides:
        _decide(t, event, where)
    if decides and t.call.phase is Phase.DIALPLAN:
        t.do(SetVariables(_outcome_variables(t.call)))  # the dialplan's view of the outcome
    if call.phase is Phase.IVR:
        if consent_key:
            _menu_waits_again(t)  # consent, never a menu choice: the menu waits on
        else:
            _menu_key(t, event.digit, event.at)


def _decide(t: _Transition, event: DtmfReceived, where: str) -> None:
    call = t.call
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
        "consent_decided",
        event.at,
        action=action.value,
        digit=event.digit,
        phase=call.phase.value,
        where=where,
    )
    greeting = call.greeting_playback
    stop_greeting = greeting == call.playback_id(CONSENT)
    if action is ConsentAction.CALLER_OPTED_IN:
        # The greeting stops first (see StopPlayback.before_recording); a caller
        # already hanging up gets no recording, so nothing waits for the stop.
        if stop_greeting and greeting is not None:
            t.do(StopPlayback(greeting, before_recording=not call.hanging_up))
        t.start_recording()
    else:
        # A refusal stops the recording before anything else: nothing more is captured.
        t.stop_recording()
        if stop_greeting and greeting is not None:
            t.do(StopPlayback(greeting))
        if not policy.keep_partial_on_opt_out:
            t.delete_segments()


def _withdraw(t: _Transition, event: DtmfReceived, where: str) -> None:
    """The consent is taken back: stop, and delete everything captured so far."""
    call = t.call
    t.update(decision=ConsentAction.CALLER_WITHDREW)
    t.ledger(
        "consent_decided",
        event.at,
        action=ConsentAction.CALLER_WITHDREW.value,
        digit=event.digit,
        phase=call.phase.value,
        where=where,
    )
    t.stop_recording()
    t.delete_segments()


def control_refusal(call: Call, action: str) -> str | None:
    """Why an agent's pause or resume is refused now (an API error id), or None.

    The caller's refusal always wins: nothing resumes what was refused.
    """
    if action == "pause":
        return None if call.recording is not None and not call.paused else "recording-not-active"
    if action != "resume":
        return "unknown-action"
    recording = call.facts.policy.recording
    if (
        call.refused
        or recording is Recording.NEVER
        or (recording is Recording.OPT_IN and call.decision is not ConsentAction.CALLER_OPTED_IN)
    ):
        return "consent-refused"
    return None if call.paused else "recording-not-paused"


def _control(t: _Transition, event: RecordingControl) -> None:
    call = t.call
    gap = call.facts.policy.pause_gap
    if event.action == "pause":
        segment = call.recording
        assert segment is not None
        t.update(paused=True)
        t.ledger(
            "recording_paused",
            event.at,
            by=event.by,
            via=event.via,
            gap=gap.value,
            segment=segment.number,
        )
        if gap is PauseGap.SILENCE:
            t.do(MuteRecording(segment.number, segment.mixmonitor_id, muted=True))
        else:
            t.stop_recording()
        t.do(Beep())  # after the recording went quiet: the tone is not kept
        return
    t.update(paused=False)
    t.ledger("recording_resumed", event.at, by=event.by, via=event.via, gap=gap.value)
    t.do(Beep())
    segment = call.recording
    if gap is PauseGap.SILENCE and segment is not None:
        t.do(MuteRecording(segment.number, segment.mixmonitor_id, muted=False))
    else:
        bridged = bool(call.bridged_segments)
        t.start_recording(bridged_only=bridged)


def _where(call: Call) -> str:
    """Where the caller was when they pressed a key, as the ledger reports it."""
    match call.phase:
        case Phase.ANSWERING | Phase.GREETING:
            return "greeting"
        case Phase.IVR:
            return f"ivr:{call.menu}"
        case Phase.QUEUED:
            return "queue"
        case Phase.CONNECTED:
            return "talking"
        case Phase.DIALPLAN:
            return "talking" if call.bridged else "ringing"
    return call.phase.value


# ---------------------------------------------------------------- IVR menus


def _enter_menu(t: _Transition, name: str, at: datetime) -> None:
    t.update(phase=Phase.IVR, menu=name, menu_misses=0)
    _play_menu(t, at)


def _play_menu(t: _Transition, at: datetime, *, invalid_first: bool = False) -> None:
    """The menu's prompt (after "not a valid choice" if the caller missed), then a wait."""
    n = t.call.menu_plays + 1
    prompts = ((f"{MENU_INVALID}{n}",) if invalid_first else ()) + (f"{MENU_PROMPT}{n}",)
    t.update(menu_plays=n, pending_greetings=prompts, timer=0)
    t.next_step(at)


def _menu_waits_again(t: _Transition) -> None:
    """After a consent press the menu gives the caller its full time to choose again."""
    if t.call.timer:
        t.start_timer(t.call.menu_plan.timeout)


def _stop_menu_prompts(t: _Transition) -> None:
    playing = t.call.greeting_playback
    if playing is not None:
        t.do(StopPlayback(playing))
    t.update(greeting_playback=None, pending_greetings=(), timer=0)


def _menu_key(t: _Transition, digit: str, at: datetime) -> None:
    plan = t.call.menu_plan
    _stop_menu_prompts(t)
    target = plan.options.get(digit)
    if target is None:
        _menu_miss(t, "invalid_key", at, digit=digit)
        return
    _route(t, target, at, source=f"ivr:{plan.name}", digit=digit)


def _menu_miss(t: _Transition, reason: str, at: datetime, *, digit: str | None = None) -> None:
    """No key in time, or a key that is no option: the prompt again, or the default."""
    plan = t.call.menu_plan
    misses = t.call.menu_misses + 1
    t.update(menu_misses=misses)
    t.ledger("ivr_missed", at, menu=plan.name, reason=reason, digit=digit, misses=misses)
    if misses > plan.retries:
        _stop_menu_prompts(t)
        _route(t, plan.default, at, source=f"ivr:{plan.name}", digit=None)
        return
    _play_menu(t, at, invalid_first=reason == "invalid_key")


def _route(
    t: _Transition, target: RoutingTarget, at: datetime, *, source: str, digit: str | None = None
) -> None:
    """Send the call where a number's routing or a menu option says."""
    t.update(routed=True, menu=None if not isinstance(target, IvrTarget) else t.call.menu)
    where = {"source": source, **({"digit": digit} if digit is not None else {})}
    match target:
        case GroupTarget(group=name):
            group = t.call.facts.groups[name]
            t.ledger("routed", at, to="group", group=name, queue=group.queue, **where)
            t.update(facts=replace(t.call.facts, group=group), phase=Phase.GREETING)
            if t.call.facts.announcement is not None:
                t.update(pending_greetings=(AVAILABLE,))
            t.next_step(at)
        case IvrTarget(ivr=name):
            t.ledger("routed", at, to="ivr", ivr=name, **where)
            _enter_menu(t, name, at)
        case DialplanTarget(dialplan=place):
            t.ledger(
                "routed",
                at,
                to="dialplan",
                context=place.context,
                extension=place.extension,
                priority=place.priority,
                **where,
            )
            t.record_if_due()
            t.update(phase=Phase.DIALPLAN, bridged=False)
            t.do(
                ContinueToDialplan(
                    place.context, place.extension, place.priority, _outcome_variables(t.call)
                )
            )
        case VoicemailTarget():
            t.ledger("routed", at, to="voicemail", **where)
            t.update(phase=Phase.VOICEMAIL)
            t.play(VOICEMAIL, at)
        case HangupTarget():
            t.ledger("routed", at, to="hangup", **where)
            t.do(Hangup())


def _outcome_variables(call: Call) -> tuple[tuple[str, str], ...]:
    """What the admin's dialplan can branch on (and adoption finds the call by)."""
    return (
        ("CONSENTD_CONSENT", call.facts.policy.recording.value),
        ("CONSENTD_ACTION", call.decision.value if call.decision else "none"),
        ("CONSENTD_RECORDING", "on" if _should_record(call) else "off"),
        ("CONSENTD_CALL_ID", call.facts.call_id),
    )


def _no_answer(t: _Transition, event: ReturnedFromQueue) -> None:
    group = t.call.facts.group
    t.ledger("queue_left", event.at, status=event.status)
    if group is None or group.no_answer is NoAnswer.HANGUP:
        t.ledger("no_answer_hangup", event.at)
        t.do(Hangup())
        return
    # Voicemail is recorded whatever the policy: the caller chooses to leave it.
    t.update(phase=Phase.VOICEMAIL)
    t.play(VOICEMAIL, event.at)


def _command_failed(t: _Transition, event: CommandFailed) -> None:
    command = event.command
    details: dict[str, Any] = {"outcome": "unknown"} if event.unknown else {}
    if isinstance(command, DeleteRecording):
        # The audio still there: consentd/owed_deletions.py deletes it later from this row.
        details |= {"segment": command.segment, "file": command.file}
    t.ledger(
        "command_failed", event.at, command=type(command).__name__, error=event.error, **details
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
        if event.status in CHANNEL_LEFT_STATUSES and not t.call.hanging_up:
            # The caller hung up before Asterisk got to the play (a busy PBX):
            # the call's end, not a notice Asterisk could not play. Its
            # ChannelHangupRequest, already on its way, has the time.
            t.update(hung_up_at=event.at)
        # Refused or unanswered: nothing shows the caller heard it (safer for consent).
        _notice_ended(t, command.playback_id, "play_failed", event.at, error=event.error)
        t.next_step(event.at)
    elif isinstance(command, Answer) and t.call.phase is Phase.ANSWERING:
        _unserved(t, "answer_failed", event.at)
    elif isinstance(command, ContinueUnrecorded):
        t.do(Hangup())  # the dialplan could not take it either: never leave it ringing
    elif isinstance(command, ContinueToQueue):
        # Refused: the caller stays here. No answer: it may be queued, and a
        # StasisEnd then must not end the call.
        t.update(phase=Phase.QUEUED if event.unknown else Phase.HOLDING)
    elif isinstance(command, ContinueOutbound) and not event.unknown:
        t.do(Hangup())  # never leave an agent's call hanging in consentd's app
    elif isinstance(command, ContinueToDialplan) and not event.unknown:
        t.update(phase=Phase.HOLDING)  # still in consentd's app: the hangup ends it
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
    for number, mixmonitor_id in event.untracked_recordings:
        if call.recording is not None and call.recording.number == number:
            continue
        _take_untracked(t, number, event.at, mixmonitor_id, live=True)
    for owed in call.owed_deletions:
        t.do(DeleteRecording(owed.number, owed.file))
    t.update(owed_deletions=())
    current = t.call.recording
    if current is not None and call.refused:
        t.stop_recording()
        if call.deletes_captured:
            t.do(DeleteRecording(current.number, current.file))
    if event.location == "dialplan":
        t.do(Subscribe())
        t.update(phase=Phase.DIALPLAN)
        t.record_if_due()
        return
    if event.location == "queue":
        t.do(Subscribe())
        if t.call.phase is not Phase.CONNECTED:
            t.update(phase=Phase.QUEUED)
        t.record_if_due()
        return
    if event.returned_from_queue is not None:
        _no_answer(t, ReturnedFromQueue(event.returned_from_queue, event.at))
        return
    if t.call.phase is Phase.VOICEMAIL:
        return
    if t.call.phase is Phase.IVR and t.call.menu in t.call.facts.menus:
        t.record_if_due()
        t.update(greeting_playback=None)
        _play_menu(t, event.at)  # the prompt again, with a full wait for the key
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
    t.next_step(event.at)


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
    t.stop_recording()
    if t.call.phase in (Phase.ANSWERING, Phase.GREETING, Phase.HOLDING):
        _unserved(t, "internal_error", event.at)


def _end_time(call: Call, event: CallEnded) -> datetime:
    """When the call ended: the hangup Asterisk announced, where it announced one.

    Asterisk publishes ChannelHangupRequest as the BYE arrives; StasisEnd and
    ChannelDestroyed follow once the channel's own thread gets to the hangup,
    which on a busy PBX was up to 1.5 s later, after the caller's phone had
    long finished the call. The caller's audio, and with it the recording,
    ends at the BYE. Never before a row already written, so the call's rows
    stay in time order.
    """
    hung_up = call.hung_up_at
    if hung_up is None or hung_up >= event.at:
        return event.at
    return hung_up if call.last_row_at is None else max(hung_up, call.last_row_at)


def _end(t: _Transition, event: CallEnded) -> None:
    event = replace(event, at=_end_time(t.call, event))
    _found_after_the_end(t, event)
    segment = t.call.recording
    delete_refused = t.call.deletes_captured
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
    found = event.untracked_recordings
    extra: dict[str, Any] = {"untracked_recordings": list(found)} if found else {}
    if event.time_from is not None:
        extra["time_from"] = event.time_from
    t.ledger("call_ended", event.at, cause=event.cause, **extra)
    t.update(phase=Phase.ENDED, greeting_playback=None)
    # No empty files left behind: a bridged-only recording whose caller never
    # reached an agent, or a voicemail hung up at the beep, holds only a header.
    call = t.call
    if not call.agent_answered:
        for number in call.bridged_segments:
            t.do(DeleteIfEmpty(call.facts.recording_file(number)))
    if call.voicemail_requested:
        t.do(DeleteIfEmpty(call.facts.voicemail_file))


def _found_after_the_end(t: _Transition, event: CallEnded) -> None:
    """Files the ledger never knew, of a call that ended while no consentd ran: as on
    adoption, the policy or a decision in the ledger may want it (kept, its rows
    written now); otherwise it cannot have been consented, and it is deleted."""
    for number in event.untracked_recordings:
        if number > t.call.segments_opened:
            _take_untracked(t, number, event.at, None, live=False)


def _take_untracked(
    t: _Transition, number: int, at: datetime, mixmonitor_id: str | None, *, live: bool
) -> None:
    """A recording the ledger never knew: kept (its rows written now) where the policy
    or a decision in the ledger wants audio and none is recording; otherwise it cannot
    have been consented, and is deleted (stopped first while its channel ``live``s)."""
    found = Segment(number, t.call.facts.recording_file(number), mixmonitor_id=mixmonitor_id)
    t.update(segments_opened=max(t.call.segments_opened, number))
    if _should_record(t.call) and t.call.recording is None:
        t.update(recording=found)
        t.ledger("recording_started", at, **_segment_data(t.call, number), adopted=True)
        return
    if live:
        t.do(StopRecording(number, found.file, mixmonitor_id))
    t.do(DeleteRecording(number, found.file))


def _segment_data(call: Call, segment: int) -> dict[str, Any]:
    file = call.facts.recording_file(segment)
    return {
        "segment": segment,
        "file": file,
        "path": call.facts.host_path(file),
        "bridged_only": segment in call.bridged_segments,
    }


def _voicemail_data(call: Call) -> dict[str, Any]:
    file = call.facts.voicemail_file
    return {"file": file, "path": call.facts.host_path(file)}

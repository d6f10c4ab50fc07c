"""The vocabulary of a call: its facts, the events it reacts to, the commands it issues.

These are plain frozen values so that the call flow stays a pure function and
every transition can be tested without Asterisk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from consentd.policy import Group, NumberPolicy, RoutingTarget


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class ConsentAction(StrEnum):
    CALLER_OPTED_IN = "caller_opted_in"
    CALLER_OPTED_OUT = "caller_opted_out"
    #: An opt-in caller took the consent back (policy allow_withdrawal).
    CALLER_WITHDREW = "caller_withdrew"
    #: Not the caller's choice: the consent notice could not be played (Asterisk
    #: failed the greeting), so the caller was never told and is never recorded.
    NOTICE_FAILED = "notice_failed"

    @property
    def refuses(self) -> bool:
        """Whatever was captured must go (unless the policy keeps a partial opt-out)."""
        return self in (
            ConsentAction.CALLER_OPTED_OUT,
            ConsentAction.CALLER_WITHDREW,
            ConsentAction.NOTICE_FAILED,
        )

    def deletes_captured(self, keep_partial_on_opt_out: bool) -> bool:
        """Whether audio captured before this outcome is deleted.

        ``keep_partial_on_opt_out`` is the caller's refusal's option only: audio of a
        caller who never heard the notice goes whatever the policy says.
        """
        if self is ConsentAction.NOTICE_FAILED:
            return True
        return self.refuses and not keep_partial_on_opt_out


class Phase(StrEnum):
    ANSWERING = "answering"
    #: Handed back to the dialplan unrecorded (overload, or the answer failed).
    UNSERVED = "unserved"
    GREETING = "greeting"
    HOLDING = "holding"
    #: In an IVR menu: its prompt, then waiting for a key.
    IVR = "ivr"
    QUEUED = "queued"
    CONNECTED = "connected"
    #: Handed to the PBX's own dialplan (still subscribed: key 3 keeps working).
    DIALPLAN = "dialplan"
    VOICEMAIL = "voicemail"
    ENDED = "ended"


CONSENT_KEY = "3"


@dataclass(frozen=True)
class Media:
    """Something Asterisk can play, and what it proves in the ledger."""

    uri: str
    language: str
    source: str  # "bundled" or the operator's file
    sha256: str | None = None
    kind: str = "opt_in"


@dataclass(frozen=True)
class MenuPlan:
    """One IVR menu with its prompts resolved to media for the call's language."""

    name: str
    greeting: Media
    invalid: Media
    options: Mapping[str, RoutingTarget]
    default: RoutingTarget
    timeout: float
    retries: int


#: Voicemail length when the route is {voicemail: true} rather than a group's.
DEFAULT_VOICEMAIL_SECONDS = 120


@dataclass(frozen=True)
class CallFacts:
    """What is known when the call arrives and never changes afterwards."""

    call_id: str
    node: str
    channel_id: str
    did: str
    caller: str
    direction: Direction
    policy: NumberPolicy
    policy_source: str
    greeting: Media | None
    recording_dir: str
    asterisk_root: str = "/"
    #: Set when the number routes to a group of agents (app_queue).
    group: Group | None = None
    announcement: Media | None = None
    voicemail_greeting: Media | None = None
    #: Where ARI writes channel recordings (voicemail), as Asterisk sees it.
    voicemail_dir: str = "/var/spool/asterisk/recording"
    #: Outbound: the number dialled and the agent (PJSIP endpoint) who dialled it.
    callee: str | None = None
    agent: str | None = None
    #: Operators' "wait" (before a hand-off to the dialplan or the queue) and
    #: "hold" (before consentd holds the call) greetings; played only when set.
    wait_greeting: Media | None = None
    hold_greeting: Media | None = None
    #: The policy file's menus and groups, for routes chosen during the call.
    menus: Mapping[str, MenuPlan] = field(default_factory=dict)
    groups: Mapping[str, Group] = field(default_factory=dict)

    def host_path(self, asterisk_path: str) -> str:
        """Where a file Asterisk writes appears on this host (Asterisk may run in a chroot)."""
        return str(PurePosixPath(self.asterisk_root, asterisk_path.lstrip("/")))

    @property
    def safe_id(self) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.call_id)

    def recording_file(self, segment: int) -> str:
        return f"{self.recording_dir}/consentd-{self.safe_id}-{segment}.wav"

    @property
    def voicemail_name(self) -> str:
        return f"consentd-vm-{self.safe_id}"

    @property
    def voicemail_file(self) -> str:
        return f"{self.voicemail_dir}/{self.voicemail_name}.wav"


@dataclass(frozen=True)
class Segment:
    """One MixMonitor recording of the call."""

    number: int
    file: str
    stopping: bool = False
    #: MixMonitor's own id for this recording: every stop names it, so a stop
    #: never ends another recording on the same channel.
    mixmonitor_id: str | None = None
    #: When it began (its ``recording_started``): with the seconds its file holds,
    #: when it stopped, for a call whose hang-up consentd did not see.
    started_at: datetime | None = None


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class CallArrived:
    at: datetime
    #: Set when consentd first sees the call as it comes back from a queue nobody
    #: answered (it restarted meanwhile): QUEUESTATUS. The caller is then not greeted again.
    returned_from_queue: str | None = None
    #: Set when consentd cannot serve the call in time (overloaded): it goes on
    #: unrecorded through the dialplan, and the ledger says why.
    unserved: str | None = None
    #: The dialplan answered before Stasis(): no ARI answer is needed.
    answered: bool = False
    #: An agent's outbound call consentd refuses (not one of the operator's
    #: numbers, an unknown agent): why. It is hung up with 403.
    refused: str | None = None


@dataclass(frozen=True)
class Answered:
    """Asterisk confirmed the answer: greetings and recording may begin."""

    at: datetime


@dataclass(frozen=True)
class DtmfReceived:
    digit: str
    at: datetime
    duration_ms: int | None = None


@dataclass(frozen=True)
class PlaybackStarted:
    playback_id: str
    at: datetime


@dataclass(frozen=True)
class HangupRequested:
    """ARI ChannelHangupRequest: the call is ending (a playback cut off by it fails)."""

    at: datetime


@dataclass(frozen=True)
class PlaybackFinished:
    playback_id: str
    at: datetime
    state: str = "done"


@dataclass(frozen=True)
class RecordingStarted:
    segment: int
    at: datetime
    mixmonitor_id: str | None = None
    #: Known from MixMonitor's id variable only: its AMI answer never came in time.
    late: bool = False


@dataclass(frozen=True)
class RecordingStopped:
    segment: int
    at: datetime


@dataclass(frozen=True)
class RecordingDeleted:
    segment: int
    at: datetime


@dataclass(frozen=True)
class LeftStasis:
    """The channel left the Stasis app: a hangup, or our own continue into the queue."""

    at: datetime


@dataclass(frozen=True)
class ReturnedFromQueue:
    """Queue() ended without an agent (timeout, empty queue) and the dialplan sent the call back."""

    status: str
    at: datetime


@dataclass(frozen=True)
class QueueJoined:
    queue: str
    position: int | None
    at: datetime


@dataclass(frozen=True)
class AgentConnected:
    agent: str
    interface: str
    hold_time: int | None
    ring_time: int | None
    at: datetime
    #: Learned from Asterisk's bridges after the AMI event was lost (a reconnect).
    recovered: bool = False


@dataclass(frozen=True)
class AgentCompleted:
    reason: str
    talk_time: int | None
    at: datetime


@dataclass(frozen=True)
class QueueAbandoned:
    hold_time: int | None
    at: datetime


@dataclass(frozen=True)
class VoicemailStarted:
    at: datetime


@dataclass(frozen=True)
class VoicemailFinished:
    state: str
    duration: int | None
    at: datetime


@dataclass(frozen=True)
class CommandFailed:
    command: Command
    error: str
    at: datetime
    #: No answer came (a timeout, or the connection dropped after sending): the
    #: command may have happened. The flow then takes the reading safer for consent.
    unknown: bool = False
    #: ARI's HTTP status of the refusal, when ARI refused (404: no such channel).
    status: int | None = None


@dataclass(frozen=True)
class Adopted:
    """consentd finds this call already running (it restarted, or ARI reconnected).

    The call's state was rebuilt from its ledger; this says where Asterisk has
    the channel now, so the flow can reconcile the two.
    """

    at: datetime
    #: "stasis" (in consentd's app) or "queue" (in the dialplan's app_queue).
    location: str
    #: Playbacks of this call still playing.
    playing: tuple[str, ...] = ()
    #: Set when the channel came back from the queue (QUEUESTATUS) meanwhile.
    returned_from_queue: str | None = None
    #: MixMonitors Asterisk has on the channel that the ledger never heard of:
    #: (segment, MixMonitorID), read back from the channel's variables.
    untracked_recordings: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class HandOff:
    """The daemon is stopping: leave this call to the next start, which adopts it."""

    at: datetime


@dataclass(frozen=True)
class InternalError:
    """consentd itself failed on this call (a bug, an unexpected error): this call alone."""

    error: str
    at: datetime


@dataclass(frozen=True)
class EmptyFileRemoved:
    """A recording file that held nothing but its WAV header was deleted."""

    file: str
    at: datetime


@dataclass(frozen=True)
class CallEnded:
    at: datetime
    cause: str = "hangup"
    #: Segments whose file is on disk but which the ledger never knew: consentd
    #: died between MixMonitor's start and its row, and the call ended before a
    #: consentd came back (its channel, and the id variables on it, are gone).
    untracked_recordings: tuple[int, ...] = ()
    #: Where ``at`` came from when nobody saw the hangup (consentd was away, or ARI
    #: was): the open recording's last audio ("recording"), else the moment consentd
    #: noticed, on its return ("restart") or on ARI's reconnect ("reconnect").
    time_from: str | None = None


@dataclass(frozen=True)
class RecordingControl:
    """An agent pauses or resumes the recording (HTTP API, or DTMF on the agent's leg)."""

    action: str  # "pause" or "resume"
    #: The agent (their endpoint or queue member name), or "api" when unknown.
    by: str
    at: datetime
    #: "api" (HTTP) or "dtmf" (the agent's code).
    via: str = "api"


@dataclass(frozen=True)
class TimerFired:
    """A timer the flow set (``StartTimer``) ran out; stale tokens are ignored."""

    token: int
    at: datetime


@dataclass(frozen=True)
class Bridged:
    """The dialplan's Dial() was answered (the caller talks), or ended (it does not)."""

    entered: bool
    at: datetime


Event = (
    CallArrived
    | Answered
    | LeftStasis
    | ReturnedFromQueue
    | QueueJoined
    | AgentConnected
    | AgentCompleted
    | QueueAbandoned
    | VoicemailStarted
    | VoicemailFinished
    | DtmfReceived
    | PlaybackStarted
    | PlaybackFinished
    | HangupRequested
    | RecordingStarted
    | RecordingStopped
    | RecordingDeleted
    | CommandFailed
    | InternalError
    | Adopted
    | HandOff
    | EmptyFileRemoved
    | TimerFired
    | RecordingControl
    | Bridged
    | CallEnded
)


# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class Answer:
    pass


@dataclass(frozen=True)
class Play:
    playback_id: str
    media: Media
    #: Sounds played right after ``media`` in the same playback (the voicemail beep).
    followed_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class StopPlayback:
    playback_id: str
    #: A recording starts right after. Its MixMonitor must not attach while the
    #: greeting still writes: MixMonitor pairs the greeting's steady frames with
    #: the caller's, and where the caller's RTP comes late it writes the
    #: greeting's frames with silence for the caller (``main/audiohook.c``,
    #: ``audiohook_read_frame_both``), so the recording gets gaps and the
    #: greeting's tail. The runner waits, briefly, until Asterisk has queued the
    #: stop on the channel.
    before_recording: bool = False


@dataclass(frozen=True)
class StartRecording:
    segment: int
    file: str
    #: Record only while bridged to an agent (MixMonitor option b).
    bridged_only: bool = False


@dataclass(frozen=True)
class ContinueToQueue:
    """Send the caller into the group's queue, still watching its keypresses."""

    queue: str
    timeout: int


@dataclass(frozen=True)
class StartVoicemail:
    name: str
    max_seconds: int
    #: Asterisk beeps before it records. Its RecordingStarted comes before that
    #: beep, so the ledger's message would start 0.44 s early: consentd's voicemail
    #: greeting ends with the beep instead, and this is False after it.
    beep: bool = True


@dataclass(frozen=True)
class Hangup:
    #: ARI's hangup reason ("rejected" is SIP 403); None: a normal clearing.
    reason: str | None = None


@dataclass(frozen=True)
class ContinueOutbound:
    """Send an agent's call to the trunk (dialplan consentd-outbound), still watched."""

    callee: str
    #: Channel variables for the dialplan: caller ID, Dial options.
    variables: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class StopRecording:
    segment: int
    file: str
    mixmonitor_id: str | None = None


@dataclass(frozen=True)
class DeleteIfEmpty:
    """After the call: delete ``file`` if it holds no audio (a WAV header only)."""

    file: str


@dataclass(frozen=True)
class Subscribe:
    """Receive this channel's events wherever it goes (the queue), e.g. after a restart."""


@dataclass(frozen=True)
class ContinueUnrecorded:
    """Hand the call back to the dialplan's unrecorded path (consentd cannot serve it)."""

    reason: str


@dataclass(frozen=True)
class DeleteRecording:
    segment: int
    file: str


@dataclass(frozen=True)
class Beep:
    """A short tone to everyone on the call: an agent paused or resumed the recording."""


@dataclass(frozen=True)
class MuteRecording:
    """Silence (or un-silence) a running MixMonitor: the file keeps its timeline."""

    segment: int
    mixmonitor_id: str | None
    muted: bool


@dataclass(frozen=True)
class StartTimer:
    """Post ``TimerFired(token)`` after ``seconds`` (an IVR menu waiting for a key)."""

    token: int
    seconds: float


@dataclass(frozen=True)
class ContinueToDialplan:
    """Hand the call to the PBX's dialplan, staying subscribed so key 3 is still seen."""

    context: str
    extension: str
    priority: int
    #: Channel variables set first, for the dialplan to read (CONSENTD_*).
    variables: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SetVariables:
    """Update channel variables (the consent outcome changed after a hand-off)."""

    variables: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class WriteLedger:
    """Append one event to the consent ledger; never waits for the database."""

    seq: int
    kind: str
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)


Command = (
    Answer
    | Beep
    | Play
    | StopPlayback
    | StartRecording
    | StopRecording
    | DeleteRecording
    | ContinueToQueue
    | ContinueUnrecorded
    | Subscribe
    | DeleteIfEmpty
    | StartVoicemail
    | Hangup
    | StartTimer
    | MuteRecording
    | ContinueOutbound
    | ContinueToDialplan
    | SetVariables
    | WriteLedger
)

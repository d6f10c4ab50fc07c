"""Carries out one call's commands over ARI, AMI, the recording store and the ledger.

Each call has its own runner task and inbox, so a slow Asterisk answer on one
call never delays another. Outcomes of commands (a recording really started,
a file really deleted) go back into the pure flow as events before the next
outside event is taken, which keeps the ledger in causal order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from consentd.ami import AmiError, AmiNotSent, AmiUnavailable, Recorder
from consentd.ari import AriClient, AriError, AriNotSent, AriUnavailable
from consentd.call_flow import Call, handle
from consentd.call_model import (
    Answer,
    Answered,
    Beep,
    Command,
    CommandFailed,
    ContinueOutbound,
    ContinueToDialplan,
    ContinueToQueue,
    ContinueUnrecorded,
    DeleteIfEmpty,
    DeleteRecording,
    DtmfReceived,
    EmptyFileRemoved,
    Event,
    Hangup,
    InternalError,
    MuteRecording,
    Play,
    PlaybackStarted,
    RecordingDeleted,
    RecordingStarted,
    RecordingStopped,
    SetVariables,
    StartRecording,
    StartTimer,
    StartVoicemail,
    StopPlayback,
    StopRecording,
    Subscribe,
    TimerFired,
    WriteLedger,
)
from consentd.ledger import LedgerEvent, LedgerWriter
from consentd.recording_store import STORE_ERRORS, RecordingStore, wait_and_delete

#: The dialplan context that dials agents' outbound calls to the trunk.
OUTBOUND_CONTEXT = "consentd-outbound"

#: The tone both parties hear when an agent pauses or resumes (0.25 s, bundled).
BEEP_MEDIA = "sound:consentd/beep"
#: Plays tried, 20 ms apart, while a new snoop channel is not in Stasis yet.
WHISPER_READY_TRIES = 25

#: MixMonitor's ``i(VAR)`` option sets this variable (suffix: the segment) the
#: instant before it attaches to the channel.
MIXMONITOR_ID_PREFIX = "CONSENTD_MIXMONITOR_"

#: What a failed command raises: AMI's errors, and a recording store's (ARI's among them).
COMMAND_ERRORS: tuple[type[Exception], ...] = (AmiError, *STORE_ERRORS)

#: Checks, ``delete_grace`` apart, that deleted audio stayed deleted after the hangup.
PURGE_CHECKS = 3


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Ports:
    """Everything a call talks to, wired once at start-up."""

    ari: AriClient
    recorder: Recorder
    ledger: LedgerWriter
    #: Where recordings live: deletes and checks go through it (files or ARI).
    recordings: RecordingStore
    clock: Callable[[], datetime] = utc_now
    #: How long to wait for MixMonitor to create a file before deleting it.
    delete_grace: float = 1.0
    #: A refused recording whose delete failed is tried again this often while
    #: the call lasts (after it, consentd/owed_deletions.py takes over).
    delete_retry: float = 5.0
    #: How long a whisper channel lives: the 0.25 s tone, and room for it to start late.
    beep_seconds: float = 1.0
    #: Hears ("started" or "stopped", seconds) when a deciding keypress changed the
    #: recording: from the keypress's time to the change confirmed (consentd/metrics.py).
    recording_changed: Callable[[str, float], None] | None = None
    #: How long a started recording waits for Asterisk's own start time (the
    #: ChannelVarset of MixMonitor's id variable) after the AMI answer, before
    #: the ledger falls back to the time the answer arrived.
    start_time_wait: float = 1.0
    #: How long a recording that follows a stopped greeting waits for ARI to
    #: confirm the stop (StopPlayback.before_recording) before it starts anyway.
    playback_stop_wait: float = 0.1


class CallRunner:
    def __init__(self, call: Call, ports: Ports) -> None:
        self.call = call
        self._ports = ports
        self._inbox: asyncio.Queue[Event] = asyncio.Queue()
        self._purged: list[str] = []
        self._pending_requests: set[asyncio.Task[None]] = set()
        self._beeps = 0
        #: Asterisk's start time and MixMonitor id of each segment's recording, from ARI.
        self._began: dict[int, asyncio.Future[tuple[datetime, str | None]]] = {}
        #: Segments whose MixMonitor start got no AMI answer: it may have started.
        self._unanswered_starts: set[int] = set()
        facts = call.facts
        self.log = structlog.get_logger("consentd.call").bind(
            call_id=facts.call_id, channel_id=facts.channel_id, did=facts.did
        )

    def post(self, event: Event) -> None:
        self._inbox.put_nowait(event)

    def recording_began(self, segment: int, at: datetime, mixmonitor_id: str | None = None) -> None:
        """Asterisk set a MixMonitor's id variable: the recording began at ``at``.

        The ledger takes its start time from here, not from the AMI answer: under
        load that answer reaches consentd up to seconds later, and a span that
        starts late would claim less audio than the file holds. When the AMI
        answer never came (timed out), this is the only word that the recording
        runs: the ledger gets its ``recording_started`` now, marked ``late``.
        """
        if segment in self._unanswered_starts:
            self._unanswered_starts.discard(segment)
            self.post(RecordingStarted(segment, at, mixmonitor_id, late=True))
            return
        began = self._began.setdefault(segment, asyncio.get_running_loop().create_future())
        if not began.done():
            began.set_result((at, mixmonitor_id))

    def _began_already(self, segment: int) -> tuple[datetime, str | None] | None:
        began = self._began.pop(segment, None)
        return began.result() if began is not None and began.done() else None

    async def _start_time(self, segment: int) -> datetime:
        """Asterisk's start time of the segment, or now if it does not come in time."""
        began = self._began.setdefault(segment, asyncio.get_running_loop().create_future())
        try:
            at, _ = await asyncio.wait_for(asyncio.shield(began), self._ports.start_time_wait)
            return at
        except TimeoutError:
            self.log.warning("recording_start_time_missing", segment=segment)
            return self._ports.clock()
        finally:
            self._began.pop(segment, None)

    async def run(self) -> Call:
        """Process events until the call has ended; returns the final state.

        An unexpected error fails this call alone (the flow stops its recording
        and hands it to the dialplan unrecorded); a second one ends it here.
        Either way the other calls and the daemon go on.
        """
        failures = 0
        while not self.call.ended:
            event = await self._inbox.get()
            try:
                await self._dispatch(event)
            except Exception as exc:
                failures += 1
                self.log.exception("call_failed", while_handling=type(event).__name__)
                if failures > 1:
                    break
                self.post(InternalError(f"{type(exc).__name__}: {exc}", self._ports.clock()))
        await self._confirm_purged()
        facts = self.call.facts
        self.log.info(
            "call_finished",
            policy=facts.policy.recording.value,
            policy_source=facts.policy_source,
            caller=facts.caller,
            consent_action=self.call.decision.value if self.call.decision else None,
            segments=self.call.segments_opened,
            ledger_events=self.call.next_seq,
        )
        return self.call

    async def _dispatch(self, event: Event) -> None:
        pending = deque([event])
        decided = False
        while pending:
            current = pending.popleft()
            if decided and isinstance(current, RecordingStarted | RecordingStopped):
                self._recording_changed(current, event)
            self.call, commands = handle(self.call, current)
            if current is event and isinstance(event, DtmfReceived):
                decided = any(
                    isinstance(c, WriteLedger) and c.kind == "consent_decided" for c in commands
                )
            for command in commands:
                outcome = await self._execute(command)
                if outcome is not None:
                    pending.append(outcome)

    async def _execute(self, command: Command) -> Event | None:
        facts = self.call.facts
        ari, recorder = self._ports.ari, self._ports.recorder
        try:
            match command:
                case WriteLedger():
                    self._write(command)
                case Answer():
                    await ari.answer(facts.channel_id)
                    return Answered(self._ports.clock())
                case Subscribe():
                    await ari.subscribe(facts.channel_id)
                case ContinueUnrecorded():
                    await ari.continue_unrecorded(facts.channel_id, facts.did)
                case Play():
                    await ari.play(
                        facts.channel_id,
                        command.playback_id,
                        ",".join((command.media.uri, *command.followed_by)),
                        command.media.language,
                    )
                    return PlaybackStarted(command.playback_id, self._ports.clock())
                case StopPlayback():
                    # Its failure changes nothing (the greeting ends anyway), so it
                    # runs beside the call. A recording that follows waits until
                    # Asterisk answered: by then the stop is queued on the channel
                    # (res_stasis_playback.c, playback_stop), ahead of MixMonitor,
                    # which comes over AMI. The wait is bounded: a slow ARI must not
                    # cost the caller's consented audio.
                    stopping = self._background(ari.stop_playback(command.playback_id), command)
                    if command.before_recording:
                        await asyncio.wait({stopping}, timeout=self._ports.playback_stop_wait)
                case StartRecording():
                    options = "b" if command.bridged_only else ""
                    try:
                        mixmonitor_id = await recorder.start(
                            facts.channel_id,
                            command.file,
                            options,
                            id_variable=f"{MIXMONITOR_ID_PREFIX}{command.segment}",
                        )
                    except AmiUnavailable as exc:
                        if isinstance(exc, AmiNotSent):
                            raise
                        began = self._began_already(command.segment)
                        if began is None:
                            self._unanswered_starts.add(command.segment)
                            raise  # unknown: the id variable may still say it started
                        self.log.warning("mixmonitor_answer_missing", error=str(exc))
                        return RecordingStarted(command.segment, *began, late=True)
                    at = await self._start_time(command.segment)
                    return RecordingStarted(command.segment, at, mixmonitor_id)
                case ContinueToQueue():
                    await ari.continue_to_queue(
                        facts.channel_id, facts.did, command.queue, command.timeout
                    )
                case Beep():
                    # Not awaited: the tone is a courtesy; the pause itself is done.
                    self._background(self._beep(), command)
                case MuteRecording():
                    await recorder.mute(
                        facts.channel_id, command.muted, mixmonitor_id=command.mixmonitor_id
                    )
                case StartTimer():
                    self._start_timer(command)
                case ContinueToDialplan():
                    await ari.continue_in_dialplan(
                        facts.channel_id,
                        (command.context, command.extension, command.priority),
                        command.variables,
                    )
                case SetVariables():
                    await ari.set_variables(facts.channel_id, command.variables)
                case StartVoicemail():
                    await ari.record(
                        facts.channel_id, command.name, command.max_seconds, beep=command.beep
                    )
                case Hangup():
                    await ari.hangup(facts.channel_id, command.reason)
                case ContinueOutbound():
                    await ari.continue_in_dialplan(
                        facts.channel_id,
                        (OUTBOUND_CONTEXT, command.callee, 1),
                        command.variables,
                    )
                case StopRecording():
                    await recorder.stop(facts.channel_id, command.mixmonitor_id)
                    return RecordingStopped(command.segment, self._ports.clock())
                case DeleteIfEmpty():
                    if await self._delete_if_empty(command.file):
                        return EmptyFileRemoved(command.file, self._ports.clock())
                case DeleteRecording():
                    await self._delete(command.file)
                    return RecordingDeleted(command.segment, self._ports.clock())
        except COMMAND_ERRORS as exc:
            unknown = isinstance(exc, AriUnavailable | AmiUnavailable) and not isinstance(
                exc, AriNotSent | AmiNotSent
            )
            self.log.warning(
                "command_failed", command=type(command).__name__, error=str(exc), unknown=unknown
            )
            if isinstance(command, DeleteRecording):
                # Never silent: the ledger gets command_failed and no recording_deleted.
                self.log.error(
                    "refused_audio_not_deleted",
                    file=command.file,
                    store=self._ports.recordings.kind,
                    error=str(exc),
                    action=f"tried again every {self._ports.delete_retry:g} s during the call, "
                    "then every CONSENTD_DELETE_RETRY_SECONDS; "
                    "consentd_refused_recordings_not_deleted counts it after the call",
                )
                self._background(self._delete_again(command), command)
            status = exc.status if isinstance(exc, AriError) else None
            return CommandFailed(
                command, str(exc), self._ports.clock(), unknown=unknown, status=status
            )
        return None

    def _recording_changed(self, change: RecordingStarted | RecordingStopped, press: Event) -> None:
        report = self._ports.recording_changed
        if report is not None:
            kind = "started" if isinstance(change, RecordingStarted) else "stopped"
            report(kind, (change.at - press.at).total_seconds())

    async def _beep(self) -> None:
        """Whisper the tone into the call's channel and every channel bridged with it.

        The caller may sit in app_queue's bridge or Dial()'s, outside Stasis,
        where ARI cannot play to it; a whispering snoop channel can.
        """
        ari = self._ports.ari
        channel = self.call.facts.channel_id
        parties = [channel]
        for bridge in await ari.bridges():
            members = [str(m) for m in bridge.get("channels") or []]
            if channel in members:
                parties = members
                break
        self._beeps += 1
        await asyncio.gather(
            *(
                self._whisper_beep(party, f"{channel}-beep{self._beeps}-{n}")
                for n, party in enumerate(parties)
            )
        )

    async def _whisper_beep(self, channel_id: str, snoop_id: str) -> None:
        ari = self._ports.ari
        await ari.whisper(channel_id, snoop_id)
        try:
            # The snoop channel enters Stasis a moment after Asterisk created it;
            # until then a play is refused with 409.
            for attempt in range(WHISPER_READY_TRIES):
                try:
                    await ari.play(snoop_id, f"{snoop_id}-tone", BEEP_MEDIA, "en")
                    break
                except AriError as exc:
                    if exc.status != 409 or attempt == WHISPER_READY_TRIES - 1:
                        raise
                    await asyncio.sleep(0.02)
            await asyncio.sleep(self._ports.beep_seconds)
        finally:
            await ari.hangup(snoop_id)

    def _start_timer(self, command: StartTimer) -> None:
        """The flow ignores a timer it no longer waits for, so none is ever cancelled."""
        loop = asyncio.get_running_loop()
        loop.call_later(
            command.seconds,
            lambda: self.post(TimerFired(command.token, self._ports.clock())),
        )

    def _background(
        self, request: Coroutine[Any, Any, None], command: Command
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(request)
        self._pending_requests.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._pending_requests.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                self.log.warning(
                    "command_failed",
                    command=type(command).__name__,
                    error=str(finished.exception()),
                )

        task.add_done_callback(done)
        return task

    def _write(self, command: WriteLedger) -> None:
        facts = self.call.facts
        self._ports.ledger.submit(
            LedgerEvent(
                event_key=f"{facts.call_id}/{command.seq}",
                call_id=facts.call_id,
                node=facts.node,
                seq=command.seq,
                kind=command.kind,
                occurred_at=command.at,
                data=command.data,
            )
        )
        # Debug: the canonical line is call_finished; at hundreds of calls a second
        # a line per ledger event cost more CPU than the call control itself.
        self.log.debug(command.kind, **{k: v for k, v in command.data.items() if v is not None})

    async def _delete(self, file: str) -> None:
        """Delete captured audio; MixMonitor may create the file a moment after it starts."""
        store = self._ports.recordings
        if not await wait_and_delete(store, file, self._ports.delete_grace):
            # Nothing to delete: MixMonitor wrote nothing, or (files) the recording
            # directory is not Asterisk's (CONSENTD_ASTERISK_ROOT, a shared disk).
            self.log.warning("recording_to_delete_not_found", file=file, store=store.kind)
        self._purged.append(file)

    async def _delete_again(self, command: DeleteRecording) -> None:
        """Retry a refused recording's failed delete while the call lasts: refused audio
        must not wait for a long call's end. Success goes into the flow as
        ``RecordingDeleted``; once the call has ended the ledger sweep takes over."""
        while True:
            await asyncio.sleep(self._ports.delete_retry)
            if self.call.ended:
                return
            try:
                await self._delete(command.file)
            except STORE_ERRORS as exc:
                self.log.warning(
                    "refused_audio_still_not_deleted", file=command.file, error=str(exc)
                )
                continue
            self.post(RecordingDeleted(command.segment, self._ports.clock()))
            return

    async def _delete_if_empty(self, file: str) -> bool:
        """A WAV of 44 bytes or less is a header alone; give the writer time to close it."""
        await asyncio.sleep(self._ports.delete_grace)
        if not await self._ports.recordings.holds_no_audio(file):
            return False
        return await self._ports.recordings.delete(file)

    async def _confirm_purged(self) -> None:
        """After hangup MixMonitor has closed its files; make sure deleted audio stayed deleted.

        Runs after the call's last event, so a failure cannot go into the flow:
        it is tried ``PURGE_CHECKS`` times and then logged as an error, never raised
        (an exception here would end the daemon's task group)."""
        if not self._purged:
            return
        store = self._ports.recordings
        for file in self._purged:
            error = ""
            for _ in range(PURGE_CHECKS):
                await asyncio.sleep(self._ports.delete_grace)
                try:
                    if await store.delete(file):
                        self.log.warning("recording_deleted_again", file=file, store=store.kind)
                    break
                except STORE_ERRORS as exc:
                    error = str(exc)
            else:
                self.log.error(
                    "recording_purge_unconfirmed",
                    file=file,
                    store=store.kind,
                    error=error,
                    action="check on the PBX that the file is gone",
                )

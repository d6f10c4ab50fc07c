"""Turns ARI events into call-flow events and routes them to each call's runner.

It also owns the resync after an ARI reconnect: events sent while the
websocket was down are lost, so hangups and finished greetings that happened
meanwhile are reconstructed from Asterisk's current state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog

from consentd.adoption import rebuild
from consentd.agent_features import CONTROL_USER_EVENT
from consentd.ari import CONNECTED, WHISPER_ARGS, AriError
from consentd.call_flow import AVAILABLE, CONSENT, Call, control_refusal, new_call
from consentd.call_model import (
    Adopted,
    AgentCompleted,
    AgentConnected,
    Bridged,
    CallArrived,
    CallEnded,
    CallFacts,
    Direction,
    DtmfReceived,
    Event,
    HandOff,
    HangupRequested,
    LeftStasis,
    Phase,
    PlaybackFinished,
    QueueAbandoned,
    QueueJoined,
    RecordingControl,
    ReturnedFromQueue,
    VoicemailFinished,
    VoicemailStarted,
)
from consentd.greetings import GreetingLibrary
from consentd.policy import GreetingKind, PolicyBook
from consentd.recording_store import STORE_ERRORS
from consentd.runner import MIXMONITOR_ID_PREFIX, CallRunner, Ports
from consentd.safe_text import clean_network_text

Spawn = Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]

_Found = TypeVar("_Found")

#: How far back a restart looks for calls that never got their call_ended row.
OPEN_CALL_HOURS = 24

#: One source's reports of the same digit closer than this are one press (no finger
#: is that fast).
SAME_PRESS_S = 0.3

#: The SIP header an agent's phone may send to call out as another operator number.
NUMBER_HEADER = "X-Consentd-Number"

#: How long a queued call's hangup waits for app_queue's AMI events to land.
AMI_GRACE_S = 0.3

#: The dialplan context consentd sends callers to for the queue (extensions.conf).
QUEUE_CONTEXT = "consentd-queue"

#: Set on channels handed to the PBX's dialplan; ari.conf lists it in channelvars
#: so GET /channels shows which of them consentd still watches.
CALL_ID_VARIABLE = "CONSENTD_CALL_ID"

#: The ARI events consentd acts on; Asterisk is asked to send no others.
HANDLED_EVENTS = (
    "StasisStart",
    "StasisEnd",
    "ChannelDestroyed",
    # Comes before the PlaybackFinished of a greeting the hangup cut off ("failed"):
    # that is the call's end, not a consent notice Asterisk could not play.
    "ChannelHangupRequest",
    "ChannelDtmfReceived",
    "PlaybackFinished",
    "RecordingStarted",
    "RecordingFinished",
    "RecordingFailed",
    # A call handed to the dialplan: its Dial() rings, or was answered (a press
    # is "talking" then). Published on the caller's channel topic, so the
    # channel subscription brings it; bridge events would need a bridge's.
    "Dial",
    # MixMonitor's id variable: the moment a recording really began, on
    # Asterisk's clock (consentd's ledger time for recording_started).
    "ChannelVarset",
)


@dataclass(frozen=True)
class NodeConfig:
    node: str
    app: str
    recording_dir: str
    asterisk_root: str
    boot_id: str
    #: A call whose StasisStart is older than this when consentd gets to it is
    #: not served: it goes on unrecorded through the dialplan (overload).
    shed_after: float = 2.0
    #: More calls than this at once: new ones go on unrecorded.
    max_calls: int = 10_000


def parse_ari_time(value: str | None, fallback: datetime) -> datetime:
    """ARI timestamps look like 2026-11-29T16:00:00.123+0000."""
    if not value:
        return fallback
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return fallback


def clean_caller(value: object) -> str:
    """Caller IDs and dialled numbers come from the network (the dialplan's ``_X.``
    takes anything after the first digit): control characters escaped, at most
    64 characters (consentd/safe_text.py). Only this value is stored, shown and logged."""
    return clean_network_text(value)


class Dispatcher:
    def __init__(
        self,
        config: NodeConfig,
        policies: PolicyBook,
        greetings: GreetingLibrary,
        ports: Ports,
        spawn: Spawn,
        *,
        call_finished: Callable[[Call], None] | None = None,
    ) -> None:
        """``call_finished`` hears each call whose runner returned (the metrics)."""
        self._config = config
        self._policies = policies
        self._greetings = greetings
        self._ports = ports
        self._spawn = spawn
        self._call_finished = call_finished
        self.calls: dict[str, CallRunner] = {}
        self._last_dtmf: dict[CallRunner, tuple[str, str, datetime]] = {}
        #: Per call, source ("ari", "ami") and digit: presses that source reported.
        self._presses: dict[CallRunner, Counter[tuple[str, str]]] = {}
        self.calls_started = 0
        self.calls_unserved = 0
        #: Set on SIGTERM: new calls go on unrecorded, calls in progress finish or are handed on.
        self.draining = False
        self._log = structlog.get_logger("consentd.dispatch")

    def replace_policies(self, policies: PolicyBook, greetings: GreetingLibrary) -> None:
        """A reloaded policy file, for new calls only: a call in progress keeps the
        facts (policy, greetings, group) it started with."""
        self._policies = policies
        self._greetings = greetings

    async def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == CONNECTED:
            await self._filter_events()
            await self._resync()
            return
        at = parse_ari_time(event.get("timestamp"), self._ports.clock())
        if kind == "Dial":
            self._dialled(event, at)
            return
        channel = event.get("channel") or {}
        runner = self.calls.get(channel.get("id", ""))
        if kind == "StasisStart":
            args = event.get("args") or []
            if args[:1] == [WHISPER_ARGS]:
                return  # consentd's own tone to a call's party, not a call
            if runner is None and args[:1] == ["after-queue"]:
                # Back from the queue, but this process never saw it go: it
                # restarted meanwhile. The call goes on from its ledger.
                await self._adopt(channel, "stasis", args, at)
            elif runner is None and args[:1] == ["outbound"]:
                await self._start_outbound(channel, at)
            elif runner is None:
                self._start_call(channel, args, at, adopted=False)
            elif args[:1] == ["after-queue"]:
                runner.post(ReturnedFromQueue(str(args[1]) if len(args) > 1 else "", at))
            return
        if runner is None:
            self._route_by_target(event, at)
            return
        if kind == "ChannelDtmfReceived":
            self._press(runner, "ari", str(event.get("digit", "")), at, event.get("duration_ms"))
        elif kind == "ChannelVarset":
            name = str(event.get("variable", ""))
            if (
                name.startswith(MIXMONITOR_ID_PREFIX)
                and name[len(MIXMONITOR_ID_PREFIX) :].isdigit()
            ):
                segment = int(name[len(MIXMONITOR_ID_PREFIX) :])
                runner.recording_began(segment, at, str(event.get("value") or "") or None)
        elif kind == "ChannelHangupRequest":
            runner.post(HangupRequested(at))
        elif kind == "StasisEnd":
            runner.post(LeftStasis(at))
        elif kind == "ChannelDestroyed":
            ended = CallEnded(at, cause=str(event.get("cause_txt") or "hangup"))
            if runner.call.phase in (Phase.QUEUED, Phase.CONNECTED):
                # app_queue's AMI events (QueueCallerAbandon, AgentComplete) come
                # over another connection and can land after ARI's hangup: give
                # them a moment, or an abandoned caller would not count as one.
                asyncio.get_running_loop().call_later(AMI_GRACE_S, runner.post, ended)
            else:
                runner.post(ended)

    def _dialled(self, event: dict[str, Any], at: datetime) -> None:
        """Dial() of a call we watch: ANSWER bridges the caller; any other end unbridges."""
        runner = self.calls.get(str((event.get("caller") or {}).get("id", "")))
        status = str(event.get("dialstatus", ""))
        if runner is not None and status:  # "" is the start of ringing
            runner.post(Bridged(status == "ANSWER", at))

    def control(
        self, call_id: str, action: str, by: str, via: str = "api"
    ) -> tuple[int, dict[str, Any]]:
        """An agent's pause or resume of a live call's recording: (HTTP status, body).

        Through the API ``by`` is "api": the ledger names the call's agent
        instead (who answered it, or who placed it), when there is one.
        """
        runner = self._runner_of(call_id)
        if runner is None or runner.call.ended:
            return 404, _error("no-such-call", f"no call {call_id!r} is in progress here")
        refusal = control_refusal(runner.call, action)
        if refusal is not None:
            return 409, _error(refusal, _CONTROL_MESSAGES.get(refusal, refusal))
        if via == "api":
            by = runner.call.agent or runner.call.facts.agent or by
        runner.post(RecordingControl(action, by, self._ports.clock(), via))
        state = "paused" if action == "pause" else "recording"
        return 200, {"id": call_id, "recording": state}

    def ami_connected(self) -> None:
        """AMI is back: app_queue's AgentConnect may have been sent meanwhile."""
        self._spawn(self.recover_agent_connections(), "recover-agent-connections")

    async def recover_agent_connections(self) -> None:
        """Calls consentd thinks are queued, but that Asterisk has bridged to an agent.

        AgentConnect is an AMI event: one sent while AMI (or consentd) was away
        is lost, and the bridged audio would count as never recorded. Asterisk's
        bridges say who talks to whom, and since when (the bridge's creation).
        """
        try:
            bridges = await self._ports.ari.bridges()
        except AriError as exc:
            self._log.warning("agent_recovery_failed", error=str(exc))
            return
        for bridge in bridges:
            members = [str(m) for m in bridge.get("channels") or []]
            for channel_id in members:
                runner = self.calls.get(channel_id)
                if runner is None or runner.call.phase is not Phase.QUEUED:
                    continue
                interface = await self._agent_interface([m for m in members if m != channel_id])
                at = parse_ari_time(bridge.get("creationtime"), self._ports.clock())
                self._log.info("agent_connection_recovered", channel_id=channel_id, agent=interface)
                runner.post(AgentConnected(interface, interface, None, None, at, recovered=True))

    async def _agent_interface(self, others: list[str]) -> str:
        """PJSIP/agent1-0000002a is interface PJSIP/agent1."""
        for channel_id in others:
            with contextlib.suppress(AriError):
                channel = await self._ports.ari.channel(channel_id)
                if channel and channel.get("name"):
                    return str(channel["name"]).rsplit("-", 1)[0]
        return ""

    def _route_by_target(self, event: dict[str, Any], at: datetime) -> None:
        """Playbacks and recordings name their channel only in target_uri."""
        kind = event.get("type")
        item = event.get("playback") or event.get("recording") or {}
        target = str(item.get("target_uri", ""))
        runner = self.calls.get(target.removeprefix("channel:")) if target else None
        if runner is None:
            return
        if kind == "PlaybackFinished":
            runner.post(PlaybackFinished(item["id"], at, str(item.get("state", "done"))))
        elif kind == "RecordingStarted":
            # The message begins: consentd's beep ended the greeting just before. (With
            # ARI's beep, sent only when no greeting played, it begins 0.44 s later.)
            runner.post(VoicemailStarted(at))
        elif kind in ("RecordingFinished", "RecordingFailed"):
            duration = item.get("duration")
            runner.post(VoicemailFinished(str(item.get("state", "done")), duration, at))

    def handle_ami(self, message: dict[str, str]) -> None:
        """AMI events about a caller we handle (matched by Uniqueid): app_queue's, and
        DTMFEnd, a second source of keypresses for when the ARI websocket is down."""
        if message.get("Event") == "UserEvent" and message.get("UserEvent") == CONTROL_USER_EVENT:
            self._agent_control(message)
            return
        runner = self.calls.get(message.get("Uniqueid", ""))
        if runner is None:
            return
        at = _ami_time(message.get("Timestamp"), self._ports.clock())
        if message.get("Event") == "DTMFEnd" and message.get("Direction") == "Received":
            self._press(
                runner, "ami", message.get("Digit", ""), at, _int(message.get("DurationMs"))
            )
            return
        event = _queue_event(message, at)
        if event is not None:
            runner.post(event)

    def _agent_control(self, message: dict[str, str]) -> None:
        """An agent dialled the pause or resume code on their own leg (a feature code,
        see consentd/agent_features.py): the UserEvent names the agent's channel.

        That channel is the call's own on an outbound call; on a queue or
        dialplan call it is linked to the caller's (Linkedid).
        """
        runner = self.calls.get(message.get("Uniqueid", "")) or self.calls.get(
            message.get("Linkedid", "")
        )
        action = message.get("Control", "")
        agent = _endpoint(message.get("Channel", ""))
        if runner is None:
            self._log.info("agent_control_without_call", agent=agent, control=action)
            return
        status, body = self.control(runner.call.facts.call_id, action, agent, via="dtmf")
        if status != 200:
            runner.log.info("agent_control_refused", agent=agent, control=action, reply=body)

    def _press(
        self, runner: CallRunner, source: str, digit: str, at: datetime, duration: object
    ) -> None:
        """One press, one count: ARI and AMI both report every press.

        The n-th report of a digit from one source is the same press as the n-th
        from the other, however far apart their timestamps: under load AMI's
        copy came seconds after ARI's, and a second 3 would have withdrawn the
        caller's consent. A press counts when its source is the first to report
        it, so a source that missed presses (its connection was down) lags
        behind and adds nothing, while the other still counts every press.
        """
        last = self._last_dtmf.get(runner)
        if (
            last
            and last[:2] == (source, digit)
            and abs((at - last[2]).total_seconds()) < SAME_PRESS_S
        ):
            return  # one source reporting one press twice
        self._last_dtmf[runner] = (source, digit, at)
        counts = self._presses.setdefault(runner, Counter())
        counts[source, digit] += 1
        other = "ami" if source == "ari" else "ari"
        if counts[source, digit] <= counts[other, digit]:
            return  # the other source reported this press already
        runner.post(DtmfReceived(digit, at, duration if isinstance(duration, int) else None))

    def _facts(self, channel: dict[str, Any], args: list[str], call_id: str) -> CallFacts:
        config = self._config
        did = clean_caller((channel.get("dialplan") or {}).get("exten"))
        match = self._policies.lookup(did)
        announcement, voicemail = self._greetings.routed_greetings(match.policy)
        direction = Direction.OUTBOUND if args[:1] == ["outbound"] else Direction.INBOUND
        return CallFacts(
            call_id=call_id,
            node=config.node,
            channel_id=str(channel["id"]),
            did=did,
            caller=clean_caller((channel.get("caller") or {}).get("number")),
            direction=direction,
            policy=match.policy,
            policy_source=match.source,
            greeting=self._greetings.consent_greeting(match.policy),
            recording_dir=config.recording_dir,
            asterisk_root=config.asterisk_root,
            group=self._policies.group_of(match.policy),
            announcement=announcement,
            voicemail_greeting=voicemail,
            menus=(
                self._greetings.menu_plans(self._policies, match.policy.language)
                if match.policy.menu is not None
                else {}
            ),
            groups=self._policies.config.groups,
            wait_greeting=self._greetings.optional(match.policy, GreetingKind.WAIT),
            hold_greeting=self._greetings.optional(match.policy, GreetingKind.HOLD),
        )

    def _start_call(
        self, channel: dict[str, Any], args: list[str], at: datetime, *, adopted: bool
    ) -> None:
        config = self._config
        channel_id = str(channel["id"])
        call_id = f"{config.node}:{channel_id}"
        if adopted:
            call_id += f"~{config.boot_id}"  # a call the ledger never heard of
        facts = self._facts(channel, args, call_id)
        runner = CallRunner(new_call(facts), self._ports)
        if facts.policy_source == "default":
            runner.log.info("unknown_number_uses_default", policy=facts.policy.recording.value)
        after_queue = args[:1] == ["after-queue"]
        returned = (args[1] if len(args) > 1 else "") if after_queue else None
        unserved = None if adopted or after_queue else self._overloaded(at)
        answered = channel.get("state") == "Up"
        self.calls_started += 1
        self._launch(
            channel_id,
            runner,
            CallArrived(at, returned_from_queue=returned, unserved=unserved, answered=answered),
        )

    def _runner_of(self, call_id: str) -> CallRunner | None:
        return next((r for r in self.calls.values() if r.call.facts.call_id == call_id), None)

    def running(self, call_id: str) -> bool:
        """Whether this call's runner is still at work (it may write rows after
        ``call_ended``: an empty file's removal, a late confirmation)."""
        return self._runner_of(call_id) is not None

    def _launch(self, channel_id: str, runner: CallRunner, first: Event) -> None:
        """Track the call, give its runner its first event, and run it in its own task."""
        self.calls[channel_id] = runner
        runner.post(first)
        self._spawn(self._run(channel_id, runner), f"call-{channel_id}")

    async def _start_outbound(self, channel: dict[str, Any], at: datetime) -> None:
        """An agent dials out: which operator number it calls as decides the policy.

        The agent is the PJSIP endpoint the call came from (authenticated by
        Asterisk); an ``X-Consentd-Number`` header may pick another of the
        operator's numbers. Anything else is refused (403), and the ledger says why.
        """
        channel_id = str(channel["id"])
        try:
            agent = await self._ports.ari.variable(channel_id, "CHANNEL(endpoint)") or ""
            requested = await self._requested_number(channel_id)
        except AriError as exc:
            self._log.warning("outbound_lookup_failed", channel_id=channel_id, error=str(exc))
            agent, requested = "", None
        requested = clean_caller(requested) if requested else None
        number, why = self._policies.outbound_number(agent, requested)
        config = self._config
        call_id = f"{config.node}:{channel_id}"
        callee = clean_caller((channel.get("dialplan") or {}).get("exten"))
        operator = number or requested or ""
        match = self._policies.lookup(operator)
        facts = CallFacts(
            call_id=call_id,
            node=config.node,
            channel_id=channel_id,
            did=operator,
            caller=clean_caller((channel.get("caller") or {}).get("number")) or agent,
            direction=Direction.OUTBOUND,
            policy=match.policy,
            policy_source=match.source if number else "refused",
            greeting=None,
            recording_dir=config.recording_dir,
            asterisk_root=config.asterisk_root,
            callee=callee,
            agent=agent,
        )
        runner = CallRunner(new_call(facts), self._ports)
        if number is None:
            runner.log.warning("outbound_refused", agent=agent, reason=why, requested=requested)
        self.calls_started += 1
        self._launch(channel_id, runner, CallArrived(at, refused=None if number else why))

    async def _requested_number(self, channel_id: str) -> str | None:
        """The operator number the agent's INVITE asks for, or None without the header.

        Asterisk's PJSIP_HEADER fails to read a header the INVITE lacks, and ARI
        answers that with a 500 ("Unable to read provided function"): a phone
        that sends no such header (every ordinary one) calls as its agent's own
        number. Taking that 500 for a failed lookup refused every such call.
        """
        try:
            return await self._ports.ari.variable(channel_id, f"PJSIP_HEADER(read,{NUMBER_HEADER})")
        except AriError as exc:
            if exc.status == 500:
                return None
            raise

    def hand_off_all(self) -> None:
        """Stopping: each call finishes what it is doing, writes ``call_handed_off`` and is
        left in Asterisk for the next start to adopt (nothing is cut mid-command)."""
        now = self._ports.clock()
        for runner in self.calls.values():
            runner.post(HandOff(now))

    def _overloaded(self, arrived: datetime) -> str | None:
        """Shed load rather than strand a caller: consentd is behind, or full."""
        if self.draining:
            return "shutting_down"
        if self._ports.ledger.full:
            self._log.error("call_shed", reason="ledger_full")
            return "ledger_full"
        lag = (self._ports.clock() - arrived).total_seconds()
        if lag > self._config.shed_after:
            self._log.warning("call_shed", reason="event_lag", lag_s=round(lag, 2))
            return "overloaded"
        if len(self.calls) >= self._config.max_calls:  # the new call not counted yet
            self._log.warning("call_shed", reason="max_calls", active=len(self.calls))
            return "max_calls"
        return None

    async def _run(self, channel_id: str, runner: CallRunner) -> Call:
        try:
            call = await runner.run()
            if call.unserved is not None:
                self.calls_unserved += 1
            if self._call_finished is not None:
                self._call_finished(call)
            return call
        finally:
            self.calls.pop(channel_id, None)
            self._last_dtmf.pop(runner, None)
            self._presses.pop(runner, None)

    async def _filter_events(self) -> None:
        try:
            await self._ports.ari.filter_events(HANDLED_EVENTS)
        except AriError as exc:  # an older Asterisk: every event comes, and is ignored
            self._log.warning("ari_event_filter_failed", error=str(exc))

    async def _resync(self) -> None:
        try:
            channels = {c["id"]: c for c in await self._ports.ari.channels()}
        except AriError as exc:
            self._log.warning("resync_failed", error=str(exc))
            return
        now = self._ports.clock()
        for channel_id, runner in list(self.calls.items()):
            if channel_id not in channels:
                at, dated = await self._ended_at(runner.call, now)
                runner.post(
                    CallEnded(at, "gone_while_disconnected", time_from=dated or "reconnect")
                )
                continue
            playback = runner.call.greeting_playback
            if playback and not await self._ports.ari.playback_exists(playback):
                runner.post(PlaybackFinished(playback, now, state="finished_while_disconnected"))
        for channel_id, channel in channels.items():
            if channel_id in self.calls:
                continue
            dialplan = channel.get("dialplan") or {}
            app_data = str(dialplan.get("app_data", "")).split(",")
            if str(channel.get("name", "")).startswith("Snoop/"):
                # A tone another consentd process began: it will never end it.
                with contextlib.suppress(AriError):
                    await self._ports.ari.hangup(channel_id)
            elif dialplan.get("app_name") == "Stasis" and app_data[0] == self._config.app:
                await self._adopt(channel, "stasis", app_data[1:], now)
            elif dialplan.get("context") == QUEUE_CONTEXT:
                await self._adopt(channel, "queue", [], now)
            elif (channel.get("channelvars") or {}).get(CALL_ID_VARIABLE):
                # Handed to the PBX's dialplan (ari.conf channelvars shows the mark).
                await self._adopt(channel, "dialplan", [], now)
        await self._close_calls_that_ended_meanwhile(channels, now)
        await self.recover_agent_connections()

    async def _close_calls_that_ended_meanwhile(
        self, channels: dict[str, dict[str, Any]], now: datetime
    ) -> None:
        """Calls that ended while no consentd watched (a crash, a restart) get their
        final rows: the open recording's stop, owed deletions, and call_ended."""
        since = now - timedelta(hours=OPEN_CALL_HOURS)
        for call_id, rows in (
            await self._ports.ledger.open_calls(self._config.node, since)
        ).items():
            channel_id = str(rows[0].data.get("channel_id", ""))
            if not channel_id or channel_id in channels or channel_id in self.calls:
                continue
            started = rows[0].data
            channel = {
                "id": channel_id,
                "dialplan": {"exten": started.get("did", "")},
                "caller": {"number": started.get("caller", "")},
            }
            call = rebuild(self._facts(channel, [], call_id), rows)
            untracked = await self._untracked_files(call)
            at, dated = await self._ended_at(call, now)
            ended = CallEnded(
                at,
                "ended_while_consentd_was_away",
                untracked_recordings=untracked,
                time_from=dated or "restart",
            )
            self._launch(channel_id, CallRunner(call, self._ports), ended)

    async def _ended_at(self, call: Call, now: datetime) -> tuple[datetime, str | None]:
        """When a call whose hang-up nobody saw ended, and "recording" when its open
        recording told (never before a row it has, never after ``now``); else
        ``now`` and None."""
        last_audio = await self._last_audio_at(call)
        if last_audio is None:
            return now, None
        floor = call.last_row_at or last_audio
        return min(now, max(last_audio, floor)), "recording"

    async def _last_audio_at(self, call: Call) -> datetime | None:
        """When the call's open recording stopped growing: its ``recording_started``
        plus the seconds its file holds. MixMonitor writes until the channel hangs
        up, so that is the hangup, far closer than the moment consentd noticed.
        None without an open recording, or when its file cannot be measured; also for
        a bridged-only one (MixMonitor b), which writes only while an agent talks."""
        segment = call.recording
        if segment is None or segment.started_at is None:
            return None
        if segment.number in call.bridged_segments:
            return None
        try:
            seconds = await self._ports.recordings.audio_seconds(segment.file)
        except STORE_ERRORS as exc:
            self._log.warning("recording_length_unknown", file=segment.file, error=str(exc))
            return None
        return None if seconds is None else segment.started_at + timedelta(seconds=seconds)

    async def _adopt(
        self, channel: dict[str, Any], location: str, args: list[str], at: datetime
    ) -> None:
        """Take on a call already running: rebuilt from its ledger when there is one."""
        channel_id = str(channel["id"])
        history = await self._ports.ledger.history_of(channel_id)
        if not history or any(e.kind == "call_ended" for e in history):
            self._log.info("call_adopted", channel_id=channel_id, ledger=False)
            if location == "stasis":
                self._start_call(channel, args, at, adopted=True)
            return  # in the queue without a ledger: nothing to decide for it
        did = history[0].data.get("did")
        if did:  # a call handed to the dialplan sits on the admin's extension now
            channel = {**channel, "dialplan": {**(channel.get("dialplan") or {}), "exten": did}}
        call = rebuild(self._facts(channel, args, history[0].call_id), history)
        playing = await self._still_playing(call)
        untracked = await self._untracked_recordings(channel_id, call)
        runner = CallRunner(call, self._ports)
        self._log.info("call_adopted", channel_id=channel_id, ledger=True, location=location)
        returned = (args[1] if len(args) > 1 else "") if args[:1] == ["after-queue"] else None
        self._launch(channel_id, runner, Adopted(at, location, playing, returned, untracked))

    async def _untracked_files(self, call: Call) -> tuple[int, ...]:
        """Recordings of an ended call past the last segment its ledger has: MixMonitor
        started, then consentd died before the row. The channel's id variables went
        with the channel, so the files themselves say it."""

        async def on_disk(segment: int) -> bool | None:
            file = call.facts.recording_file(segment)
            try:
                empty = await self._ports.recordings.holds_no_audio(file)
            except STORE_ERRORS as exc:
                self._log.warning("untracked_recording_check_failed", file=file, error=str(exc))
                return None
            return None if empty is None else True

        return tuple(segment for segment, _ in await _past_the_ledger(call, on_disk))

    async def _still_playing(self, call: Call) -> tuple[str, ...]:
        ids = (call.playback_id(CONSENT), call.playback_id(AVAILABLE))
        found = []
        for playback_id in ids:
            with contextlib.suppress(AriError):
                if await self._ports.ari.playback_exists(playback_id):
                    found.append(playback_id)
        return tuple(found)

    async def _untracked_recordings(
        self, channel_id: str, call: Call
    ) -> tuple[tuple[int, str], ...]:
        """MixMonitors started after the last segment the ledger has (the process died
        between the start and its row): their ids are in the channel's variables."""

        async def mixmonitor_id(segment: int) -> str | None:
            try:
                value = await self._ports.ari.variable(
                    channel_id, f"{MIXMONITOR_ID_PREFIX}{segment}"
                )
            except AriError:
                return None
            return value or None

        return tuple(await _past_the_ledger(call, mixmonitor_id))


async def _past_the_ledger(
    call: Call, probe: Callable[[int], Awaitable[_Found | None]]
) -> list[tuple[int, _Found]]:
    """The segments after the last one ``call``'s ledger has that ``probe`` finds, up to
    the first it does not (MixMonitor's segments come in order), two at most."""
    found = []
    for segment in range(call.segments_opened + 1, call.segments_opened + 3):
        value = await probe(segment)
        if value is None:
            break
        found.append((segment, value))
    return found


_CONTROL_MESSAGES = {
    "recording-not-active": "the call is not being recorded (or is paused already)",
    "recording-not-paused": "the recording is not paused",
    "consent-refused": "the caller has not consented, or refused: the recording stays off",
}


def _error(error_id: str, message: str) -> dict[str, Any]:
    return {"error": {"id": error_id, "message": message}}


def _ami_time(value: str | None, fallback: datetime) -> datetime:
    """AMI events carry ``Timestamp: 1795969623.123456`` when timestampevents=yes."""
    try:
        return datetime.fromtimestamp(float(value), UTC) if value else fallback
    except ValueError:
        return fallback


def _endpoint(channel_name: str) -> str:
    """PJSIP/agent1-0000002a is endpoint agent1."""
    return channel_name.split("/", 1)[-1].rsplit("-", 1)[0]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _queue_event(message: dict[str, str], at: datetime) -> Event | None:
    match message.get("Event"):
        case "QueueCallerJoin":
            return QueueJoined(message.get("Queue", ""), _int(message.get("Position")), at)
        case "AgentConnect":
            return AgentConnected(
                agent=message.get("MemberName") or message.get("Interface", ""),
                interface=message.get("Interface", ""),
                hold_time=_int(message.get("HoldTime")),
                ring_time=_int(message.get("RingTime")),
                at=at,
            )
        case "AgentComplete":
            return AgentCompleted(message.get("Reason", ""), _int(message.get("TalkTime")), at)
        case "QueueCallerAbandon":
            return QueueAbandoned(_int(message.get("HoldTime")), at)
    return None

"""Turns ARI events into call-flow events and routes them to each call's runner.

It also owns the resync after an ARI reconnect: events sent while the
websocket was down are lost, so hangups and finished greetings that happened
meanwhile are reconstructed from Asterisk's current state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from consentd.ari import CONNECTED, AriError
from consentd.call_flow import Call, new_call
from consentd.call_model import (
    CallArrived,
    CallEnded,
    CallFacts,
    Direction,
    DtmfReceived,
    PlaybackFinished,
)
from consentd.greetings import GreetingLibrary
from consentd.policy import PolicyBook
from consentd.runner import CallRunner, Ports

Spawn = Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]


@dataclass(frozen=True)
class NodeConfig:
    node: str
    app: str
    recording_dir: str
    asterisk_root: str
    boot_id: str


def parse_ari_time(value: str | None, fallback: datetime) -> datetime:
    """ARI timestamps look like 2026-11-29T16:00:00.123+0000."""
    if not value:
        return fallback
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return fallback


def clean_caller(value: object) -> str:
    """Caller IDs come from the network: keep them printable and bounded."""
    text = "" if value is None else str(value)
    text = "".join(ch for ch in text if ch.isprintable())
    return text[:64]


class Dispatcher:
    def __init__(
        self,
        config: NodeConfig,
        policies: PolicyBook,
        greetings: GreetingLibrary,
        ports: Ports,
        spawn: Spawn,
    ) -> None:
        self._config = config
        self._policies = policies
        self._greetings = greetings
        self._ports = ports
        self._spawn = spawn
        self.calls: dict[str, CallRunner] = {}
        self.calls_started = 0
        self._log = structlog.get_logger("consentd.dispatch")

    async def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        now = self._ports.clock()
        at = parse_ari_time(event.get("timestamp"), now)
        channel = event.get("channel") or {}
        runner = self.calls.get(channel.get("id", ""))
        if kind == CONNECTED:
            await self._resync()
        elif kind == "StasisStart":
            if runner is None:
                self._start_call(channel, event.get("args") or [], at, adopted=False)
        elif runner is None:
            playback = event.get("playback") or {}
            target = str(playback.get("target_uri", ""))
            runner = self.calls.get(target.removeprefix("channel:")) if target else None
            if kind == "PlaybackFinished" and runner is not None:
                runner.post(
                    PlaybackFinished(playback["id"], at, str(playback.get("state", "done")))
                )
        elif kind == "ChannelDtmfReceived":
            runner.post(DtmfReceived(str(event.get("digit", "")), at, event.get("duration_ms")))
        elif kind in ("StasisEnd", "ChannelDestroyed"):
            runner.post(CallEnded(at, cause=str(event.get("cause_txt") or "hangup")))

    def _start_call(
        self, channel: dict[str, Any], args: list[str], at: datetime, *, adopted: bool
    ) -> None:
        config = self._config
        channel_id = str(channel["id"])
        did = str((channel.get("dialplan") or {}).get("exten", ""))
        match = self._policies.lookup(did)
        direction = Direction.OUTBOUND if args[:1] == ["outbound"] else Direction.INBOUND
        call_id = f"{config.node}:{channel_id}"
        if adopted:
            call_id += f"~{config.boot_id}"
        facts = CallFacts(
            call_id=call_id,
            node=config.node,
            channel_id=channel_id,
            did=did,
            caller=clean_caller((channel.get("caller") or {}).get("number")),
            direction=direction,
            policy=match.policy,
            policy_source=match.source,
            greeting=self._greetings.consent_greeting(match.policy),
            recording_dir=config.recording_dir,
            asterisk_root=config.asterisk_root,
        )
        runner = CallRunner(new_call(facts), self._ports)
        if match.source == "default":
            runner.log.info("unknown_number_uses_default", policy=match.policy.recording.value)
        self.calls[channel_id] = runner
        self.calls_started += 1
        runner.post(CallArrived(at))
        self._spawn(self._run(channel_id, runner), f"call-{channel_id}")

    async def _run(self, channel_id: str, runner: CallRunner) -> Call:
        try:
            return await runner.run()
        finally:
            self.calls.pop(channel_id, None)

    async def _resync(self) -> None:
        try:
            channels = {c["id"]: c for c in await self._ports.ari.channels()}
        except AriError as exc:
            self._log.warning("resync_failed", error=str(exc))
            return
        now = self._ports.clock()
        for channel_id, runner in list(self.calls.items()):
            if channel_id not in channels:
                runner.post(CallEnded(now, cause="gone_while_disconnected"))
                continue
            playback = runner.call.greeting_playback
            if playback and not await self._ports.ari.playback_exists(playback):
                runner.post(PlaybackFinished(playback, now, state="finished_while_disconnected"))
        for channel_id, channel in channels.items():
            dialplan = channel.get("dialplan") or {}
            ours = (
                dialplan.get("app_name") == "Stasis"
                and str(dialplan.get("app_data", "")).split(",")[0] == self._config.app
            )
            if ours and channel_id not in self.calls:
                self._log.info("call_adopted", channel_id=channel_id)
                args = str(dialplan.get("app_data", "")).split(",")[1:]
                self._start_call(channel, args, now, adopted=True)

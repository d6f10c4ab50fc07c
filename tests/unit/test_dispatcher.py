"""ARI events in, Asterisk commands and ledger events out: the dispatcher and call runners."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

import pytest
import structlog
import structlog.testing

from consentd.ami import AmiNotSent, Recorder
from consentd.ari import CONNECTED, AriClient, AriError, AriNotFound, AriNotSent
from consentd.call_model import Media, Phase
from consentd.dispatcher import Dispatcher, NodeConfig, clean_caller, parse_ari_time
from consentd.greetings import GreetingLibrary
from consentd.journal import Journal
from consentd.ledger import LedgerEvent, LedgerWriter, MemoryLedger
from consentd.policy import Group, NoAnswer, PolicyBook, load_policies
from consentd.recording_store import ASTERISK_RECORDING_DIR, AriStore, FileStore, RecordingStore
from consentd.runner import Ports

POLICIES = """\
default: {recording: never}
numbers:
  "+4930100001": {recording: always}
  "+4930100002": {recording: opt_in, language: de}
  "+4930100003": {recording: opt_out}
  "+4930100004": {recording: never}
  "+4930100006": {recording: opt_out, keep_partial_on_opt_out: true}
  "+4930100010": {recording: opt_in, routing: {group: support}}
  "+4930100011": {recording: never, routing: {group: support}}
groups:
  support: {queue: support, timeout: 20}
"""
SOUNDS = "/var/lib/asterisk/sounds"
MONITOR = "/var/spool/asterisk/monitor"
CALLER = "+4917612345678"
T0 = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)


# ---------------------------------------------------------------- recorded-shaped ARI events


def channel(channel_id: str, did: str = "", caller: str = CALLER) -> dict[str, Any]:
    return {
        "id": channel_id,
        "name": f"PJSIP/trunk-{channel_id[-8:]}",
        "state": "Ring",
        "caller": {"name": "", "number": caller},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {
            "context": "from-trunk",
            "exten": did,
            "priority": 3,
            "app_name": "Stasis",
            "app_data": "consentd",
        },
        "creationtime": "2026-11-29T16:00:00.000+0000",
        "language": "en",
    }


def stasis_start(
    channel_id: str,
    did: str,
    *,
    caller: str = CALLER,
    args: list[str] | None = None,
    timestamp: str = "2026-11-29T16:00:00.000+0000",
) -> dict[str, Any]:
    return {
        "type": "StasisStart",
        "timestamp": timestamp,
        "args": args or [],
        "channel": channel(channel_id, did, caller),
        "asterisk_id": "02:42:ac:11:00:02",
        "application": "consentd",
    }


def dtmf(channel_id: str, digit: str, timestamp: str = "2026-11-29T16:00:01.500+0000") -> dict:
    return {
        "type": "ChannelDtmfReceived",
        "timestamp": timestamp,
        "digit": digit,
        "duration_ms": 100,
        "channel": channel(channel_id),
        "asterisk_id": "02:42:ac:11:00:02",
        "application": "consentd",
    }


def playback_finished(channel_id: str, playback_id: str, state: str = "done") -> dict[str, Any]:
    return {
        "type": "PlaybackFinished",
        "timestamp": "2026-11-29T16:00:06.000+0000",
        "playback": {
            "id": playback_id,
            "media_uri": "sound:consentd/call_recording_opt_in",
            "target_uri": f"channel:{channel_id}",
            "language": "de",
            "state": state,
        },
        "asterisk_id": "02:42:ac:11:00:02",
        "application": "consentd",
    }


def stasis_end(channel_id: str, timestamp: str = "2026-11-29T16:00:30.000+0000") -> dict:
    return {
        "type": "StasisEnd",
        "timestamp": timestamp,
        "channel": channel(channel_id),
        "asterisk_id": "02:42:ac:11:00:02",
        "application": "consentd",
    }


# ---------------------------------------------------------------- fakes


class FakeAri:
    """Records what consentd asks of Asterisk over ARI.

    Stored recordings are files under ``root``'s /var/spool/asterisk/recording,
    found by name without the extension, as Asterisk finds them.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self.requests: list[tuple[str, ...]] = []
        self.live_channels: list[dict[str, Any]] = []
        self.playbacks: set[str] = set()
        self.failing: dict[str, Exception] = {}
        self.variables: dict[tuple[str, str], str] = {}
        self.live_bridges: list[dict[str, Any]] = []
        #: How long Asterisk takes to answer a playback's stop.
        self.stop_delay = 0.0

    def _record(self, *request: str) -> None:
        self.requests.append(request)
        if request[0] in self.failing:
            raise self.failing[request[0]]

    def of(self, kind: str) -> list[tuple[str, ...]]:
        return [r for r in self.requests if r[0] == kind]

    async def answer(self, channel_id: str) -> None:
        self._record("answer", channel_id)

    async def play(self, channel_id: str, playback_id: str, media: str, lang: str) -> None:
        self._record("play", channel_id, playback_id, media, lang)
        self.playbacks.add(playback_id)

    async def stop_playback(self, playback_id: str) -> None:
        self._record("stop_playback", playback_id)
        await asyncio.sleep(self.stop_delay)
        self.playbacks.discard(playback_id)

    async def filter_events(self, types: tuple[str, ...]) -> None:
        self._record("filter_events", *types)

    async def channels(self) -> list[dict[str, Any]]:
        self._record("channels")
        return self.live_channels

    async def playback_exists(self, playback_id: str) -> bool:
        self._record("playback_exists", playback_id)
        return playback_id in self.playbacks

    async def continue_to_queue(self, channel_id: str, did: str, queue: str, timeout: int) -> None:
        self._record("continue_to_queue", channel_id, did, queue, str(timeout))

    async def record(
        self, channel_id: str, name: str, max_seconds: int, *, beep: bool = True
    ) -> None:
        self._record("record", channel_id, name, str(max_seconds), *(["beep"] if beep else []))

    async def hangup(self, channel_id: str, reason: str | None = None) -> None:
        self._record("hangup", channel_id, *([reason] if reason else []))

    async def continue_unrecorded(self, channel_id: str, did: str) -> None:
        self._record("continue_unrecorded", channel_id, did)

    async def subscribe(self, channel_id: str) -> None:
        self._record("subscribe", channel_id)

    async def variable(self, channel_id: str, name: str) -> str | None:
        self._record("variable", channel_id, name)
        if (channel_id, name) not in self.variables and name.startswith("PJSIP_HEADER("):
            # As Asterisk: reading a header the INVITE lacks is a failed function read.
            raise AriError(
                f"GET /channels/{channel_id}/variable: status 500 "
                "{'message': 'Unable to read provided function'}",
                500,
            )
        return self.variables.get((channel_id, name))

    async def continue_in_dialplan(
        self, channel_id: str, place: tuple[str, str, int], variables: tuple[tuple[str, str], ...]
    ) -> None:
        self._record(
            "continue_in_dialplan",
            channel_id,
            *map(str, place),
            *(f"{k}={v}" for k, v in variables),
        )

    async def set_variables(self, channel_id: str, variables: tuple[tuple[str, str], ...]) -> None:
        self._record("set_variables", channel_id, *(f"{k}={v}" for k, v in variables))

    async def bridges(self) -> list[dict[str, Any]]:
        self._record("bridges")
        return self.live_bridges

    async def whisper(self, channel_id: str, snoop_id: str) -> None:
        self._record("whisper", channel_id, snoop_id)

    def _stored(self, name: str) -> Path | None:
        assert self.root is not None, "FakeAri(root) holds stored recordings"
        base = self.root / ASTERISK_RECORDING_DIR.lstrip("/") / unquote(name)
        found = sorted(base.parent.glob(f"{base.name}.*"))
        return found[0] if found else None

    async def delete_stored_recording(self, name: str) -> bool:
        self._record("delete_stored_recording", name)
        path = self._stored(name)
        if path is None:
            return False
        path.unlink()
        return True

    async def stored_recording_size(self, name: str, limit: int) -> int | None:
        self._record("stored_recording_size", name, str(limit))
        path = self._stored(name)
        return None if path is None else min(path.stat().st_size, limit)

    async def channel(self, channel_id: str) -> dict[str, Any] | None:
        self._record("channel", channel_id)
        found = [c for c in self.live_channels if c["id"] == channel_id]
        return found[0] if found else None


class FakeRecorder:
    """MixMonitor stand-in: a started recording appears as a file under the Asterisk root."""

    def __init__(self, asterisk_root: Path) -> None:
        self.root = asterisk_root
        self.requests: list[tuple[str, ...]] = []
        self.failing: Exception | None = None
        #: Raised after MixMonitor started: Asterisk did it, its AMI answer is lost.
        self.answer_lost: Exception | None = None
        #: Asterisk's ChannelVarset of the id variable, sent before the AMI answer.
        self.began: Callable[[str, str, str], Awaitable[None]] | None = None

    def host_path(self, file: str) -> Path:
        return self.root / file.lstrip("/")

    async def start(
        self, channel: str, file: str, options: str = "", *, id_variable: str | None = None
    ) -> str | None:
        self.requests.append(("start", channel, file))
        if self.failing is not None:
            raise self.failing
        path = self.host_path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF....WAVE")
        if self.began is not None and id_variable is not None:
            await self.began(channel, id_variable, f"mm-{path.name}")
        if self.answer_lost is not None:
            raise self.answer_lost
        return f"mm-{path.name}"

    async def stop(self, channel: str, mixmonitor_id: str | None = None) -> None:
        self.requests.append(("stop", channel, mixmonitor_id or ""))

    async def mute(self, channel: str, muted: bool, *, mixmonitor_id: str | None = None) -> None:
        self.requests.append(("mute" if muted else "unmute", channel, mixmonitor_id or ""))


class Node:
    """One PBX node: a dispatcher wired to fakes, a memory ledger and a fake clock."""

    def __init__(
        self, root: Path, book: PolicyBook, recording_store: str = "files", **ports: Any
    ) -> None:
        """``ports`` overrides the runner's timings (``Ports``), e.g. a wait's bound."""
        self.root = root
        self.ari = FakeAri(root)
        self.recorder = FakeRecorder(root)
        #: "files": consentd deletes under the Asterisk root; "ari": the fake Asterisk does.
        self.recording_dir = MONITOR if recording_store == "files" else ASTERISK_RECORDING_DIR
        self.store_of_recordings: RecordingStore = (
            FileStore(root)
            if recording_store == "files"
            else AriStore(cast(AriClient, self.ari), retry_seconds=0.3)
        )
        self.store = MemoryLedger()
        self.writer = LedgerWriter(self.store, Journal(None), retry_seconds=0.05, linger_seconds=0)
        self.greetings = GreetingLibrary.install(book, SOUNDS, root)
        self.book = book
        self.tasks: list[asyncio.Task[Any]] = []
        ports = Ports(
            ari=cast(AriClient, self.ari),
            recorder=cast(Recorder, self.recorder),
            ledger=self.writer,
            recordings=self.store_of_recordings,
            clock=lambda: T0,
            delete_grace=0.05,
            delete_retry=0.05,
            **{"beep_seconds": 0.01, "start_time_wait": 0.2, **ports},
        )
        config = NodeConfig(
            node="pbx1",
            app="consentd",
            recording_dir=self.recording_dir,
            asterisk_root=str(root),
            boot_id="b007",
        )
        self.dispatcher = Dispatcher(config, book, self.greetings, ports, self._spawn)
        #: When Asterisk says a MixMonitor began (its ChannelVarset's timestamp).
        self.mixmonitor_began_at = "2026-11-29T16:00:08.400+0000"
        self.recorder.began = self._mixmonitor_began

    async def _mixmonitor_began(self, channel_id: str, variable: str, value: str) -> None:
        await self.dispatcher.handle(
            {
                "type": "ChannelVarset",
                "timestamp": self.mixmonitor_began_at,
                "channel": {"id": channel_id},
                "variable": variable,
                "value": value,
            }
        )

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task

    async def feed(self, *events: dict[str, Any]) -> None:
        for event in events:
            await self.dispatcher.handle(event)
        await settle()

    async def calls_done(self) -> None:
        """Wait until every call's runner has ended."""
        await asyncio.wait_for(asyncio.gather(*self.tasks), 1.0)

    async def ledger(self) -> list[LedgerEvent]:
        """Every ledger event so far, once stored, in call and seq order."""
        await until(lambda: self.writer.backlog == 0)
        await settle()
        return sorted(self.store.events.values(), key=lambda e: (e.call_id, e.seq))

    async def kinds(self) -> list[str]:
        return [e.kind for e in await self.ledger()]


async def settle() -> None:
    """Let the call runners take and carry out what was posted to them."""
    for _ in range(50):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], timeout: float = 1.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async for pbx in running_node(tmp_path, POLICIES):
        yield pbx


@pytest.fixture
async def patient_node(tmp_path: Path) -> AsyncIterator[Node]:
    """A node whose runners wait up to 10 s for a greeting's stop and for Asterisk's
    start time: tests of what a runner waits for then stay right while the machine
    stalls for longer than the shipped bounds (0.1 and 1 s)."""
    async for pbx in running_node(
        tmp_path, POLICIES, playback_stop_wait=10.0, start_time_wait=10.0
    ):
        yield pbx


async def running_node(
    tmp_path: Path, policies: str, recording_store: str = "files", **ports: Any
) -> AsyncIterator[Node]:
    """A node on ``policies`` with its ledger writer running; stopped cleanly after."""
    policy_file = tmp_path / "etc" / "policies.yaml"
    policy_file.parent.mkdir()
    policy_file.write_text(policies)
    pbx = Node(tmp_path / "asterisk", load_policies(policy_file), recording_store, **ports)
    writer = asyncio.create_task(pbx.writer.run())
    try:
        yield pbx
    finally:
        for task in pbx.tasks:
            task.cancel()
        await asyncio.gather(*pbx.tasks, return_exceptions=True)
        await pbx.writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(writer, 1.0)


def by_kind(events: list[LedgerEvent], kind: str) -> list[LedgerEvent]:
    return [e for e in events if e.kind == kind]


def recording_file(channel_id: str, segment: int = 1) -> str:
    return f"{MONITOR}/consentd-pbx1_{channel_id}-{segment}.wav"


# ---------------------------------------------------------------- policies over ARI


async def test_opt_in_number_is_answered_and_hears_the_german_opt_in_greeting(node: Node) -> None:
    await node.feed(stasis_start("1764432000.1", "+4930100002"))

    greeting = node.greetings.consent_greeting(node.book.lookup("+4930100002").policy)
    assert greeting is not None
    assert node.ari.requests == [
        ("answer", "1764432000.1"),
        ("play", "1764432000.1", "1764432000.1-greeting", greeting.uri, "de"),
    ]
    assert greeting.uri.startswith("sound:") and greeting.uri.endswith(
        "consentd/call_recording_opt_in"
    )
    assert node.recorder.requests == []


async def test_opt_in_press_3_stops_the_greeting_and_starts_mixmonitor(node: Node) -> None:
    await node.feed(stasis_start("1764432000.1", "+4930100002"), dtmf("1764432000.1", "3"))

    assert node.ari.of("stop_playback") == [("stop_playback", "1764432000.1-greeting")]
    assert node.recorder.requests == [("start", "1764432000.1", recording_file("1764432000.1"))]
    decided = by_kind(await node.ledger(), "consent_decided")
    assert [e.data["action"] for e in decided] == ["caller_opted_in"]
    assert decided[0].occurred_at == datetime(2026, 11, 29, 16, 0, 1, 500000, tzinfo=UTC)


def playing_when_mixmonitor_starts(node: Node) -> list[set[str]]:
    """The playbacks still running at each MixMonitor start, in order."""
    seen: list[set[str]] = []
    start = node.recorder.start

    async def watched(*args: Any, **kwargs: Any) -> str | None:
        seen.append(set(node.ari.playbacks))
        return await start(*args, **kwargs)

    node.recorder.start = watched  # type: ignore[method-assign]
    return seen


async def test_opt_in_press_3_starts_mixmonitor_only_once_asterisk_answered_the_greetings_stop(
    patient_node: Node,
) -> None:
    """MixMonitor attached while the greeting still plays would record its tail and,
    where the caller's RTP is late, silence in the caller's place (audiohook.c)."""
    node = patient_node
    seen = playing_when_mixmonitor_starts(node)
    node.ari.stop_delay = 0.03  # inside the wait's bound, even on a stalled machine

    await node.feed(stasis_start("1764432000.1", "+4930100002"), dtmf("1764432000.1", "3"))
    await until(lambda: bool(seen), timeout=5.0)

    assert seen == [set()]
    assert node.ari.of("stop_playback") == [("stop_playback", "1764432000.1-greeting")]


async def test_a_greetings_stop_that_asterisk_does_not_answer_delays_the_recording_briefly(
    node: Node,
) -> None:
    """Consented audio matters more than a greeting's tail: after 0.1 s it records anyway.
    (The bound is loose, for a loaded machine: the stop takes 2 s, the recording
    must not wait for it.)"""
    seen = playing_when_mixmonitor_starts(node)
    node.ari.stop_delay = 2.0
    loop = asyncio.get_running_loop()
    pressed = loop.time()

    await node.feed(stasis_start("1764432000.1", "+4930100002"), dtmf("1764432000.1", "3"))
    await until(lambda: bool(seen), timeout=1.5)

    assert 0.09 <= loop.time() - pressed < 1.5
    assert seen == [{"1764432000.1-greeting"}]  # the unanswered stop still playing
    assert [e.kind for e in by_kind(await node.ledger(), "recording_started")] == [
        "recording_started"
    ]
    await until(lambda: not node.ari.playbacks, timeout=3.0)  # the stop ends after all


async def test_a_greetings_stop_that_fails_lets_the_recording_start_at_once(
    patient_node: Node,
) -> None:
    """ARI down as the caller consents: the stop is lost (the greeting ends on its own),
    and the consented recording neither waits out the stop's bound (here 10 s) nor fails."""
    node = patient_node
    seen = playing_when_mixmonitor_starts(node)
    node.ari.failing["stop_playback"] = AriNotSent("DELETE /playbacks/x: websocket down")
    loop = asyncio.get_running_loop()
    pressed = loop.time()

    await node.feed(stasis_start("1764432000.1", "+4930100002"), dtmf("1764432000.1", "3"))
    await until(lambda: bool(seen), timeout=5.0)

    assert loop.time() - pressed < 5.0
    assert seen == [{"1764432000.1-greeting"}]
    assert (await node.kinds()).count("recording_started") == 1


async def test_recording_started_is_stamped_with_asterisks_start_time_not_the_amis_answer(
    node: Node,
) -> None:
    """Under load the AMI answer lags; the id variable's ChannelVarset has Asterisk's time."""
    await node.feed(stasis_start("1764432000.1", "+4930100002"), dtmf("1764432000.1", "3"))

    (started,) = by_kind(await node.ledger(), "recording_started")
    assert started.occurred_at == datetime(2026, 11, 29, 16, 0, 8, 400000, tzinfo=UTC)
    assert started.data["mixmonitor_id"] == "mm-consentd-pbx1_1764432000.1-1.wav"


async def test_a_start_time_that_comes_after_the_amis_answer_is_waited_for(
    patient_node: Node,
) -> None:
    node = patient_node

    async def late(channel_id: str, variable: str, value: str) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(
            0.05, asyncio.ensure_future, node._mixmonitor_began(channel_id, variable, value)
        )

    node.recorder.began = late
    await node.feed(stasis_start("1764432000.1", "+4930100002"), dtmf("1764432000.1", "3"))

    await until(
        lambda: any(e.kind == "recording_started" for e in node.store.events.values()),
        timeout=5.0,
    )
    (started,) = by_kind(await node.ledger(), "recording_started")
    assert started.occurred_at == datetime(2026, 11, 29, 16, 0, 8, 400000, tzinfo=UTC)


async def test_without_asterisks_start_time_the_answer_time_is_used_and_logged(
    node: Node,
) -> None:
    node.recorder.began = None  # an Asterisk that sent no ChannelVarset
    with structlog.testing.capture_logs() as logs:
        await node.feed(stasis_start("1764432000.1", "+4930100002"), dtmf("1764432000.1", "3"))
        await asyncio.sleep(0.3)  # past start_time_wait (0.2 s)
        (started,) = by_kind(await node.ledger(), "recording_started")

    assert started.occurred_at == T0  # the fake clock: when the answer arrived
    assert [e["segment"] for e in logs if e["event"] == "recording_start_time_missing"] == [1]


async def test_other_variables_and_foreign_channels_set_no_start_time(node: Node) -> None:
    async def confusing(channel_id: str, variable: str, value: str) -> None:
        for name, chan in (
            ("CONSENTD_MIXMONITOR_x", channel_id),
            ("MIXMONITOR_FILENAME", channel_id),
            (variable, "1764432000.99"),
        ):
            await node.dispatcher.handle(
                {
                    "type": "ChannelVarset",
                    "timestamp": "2026-11-29T16:00:09.000+0000",
                    "channel": {"id": chan},
                    "variable": name,
                    "value": value,
                }
            )

    node.recorder.began = confusing
    await node.feed(stasis_start("1764432000.1", "+4930100002"), dtmf("1764432000.1", "3"))
    await asyncio.sleep(0.3)

    (started,) = by_kind(await node.ledger(), "recording_started")
    assert started.occurred_at == T0


async def test_opt_out_number_starts_mixmonitor_when_its_greeting_ends(node: Node) -> None:
    await node.feed(stasis_start("1764432000.2", "+4930100003"))
    assert node.recorder.requests == []
    await node.feed(playback_finished("1764432000.2", "1764432000.2-greeting"))

    assert node.recorder.requests == [("start", "1764432000.2", recording_file("1764432000.2"))]
    assert node.ari.of("answer") == [("answer", "1764432000.2")]
    assert node.ari.of("play")[0][3].endswith("consentd/call_recording_opt_out")


async def test_always_number_records_without_a_greeting(node: Node) -> None:
    await node.feed(stasis_start("1764432000.3", "+4930100001"))

    assert node.recorder.requests == [("start", "1764432000.3", recording_file("1764432000.3"))]
    assert node.ari.requests == [("answer", "1764432000.3")]


async def test_unknown_number_uses_the_default_policy_and_says_so_in_the_ledger(
    node: Node,
) -> None:
    await node.feed(stasis_start("1764432000.4", "+4930999999"), stasis_end("1764432000.4"))
    await node.calls_done()

    events = await node.ledger()
    started = by_kind(events, "call_started")[0]
    assert started.data["policy_source"] == "default"
    assert started.data["policy"] == "never"
    assert started.data["did"] == "+4930999999"
    assert started.call_id == "pbx1:1764432000.4"
    assert node.ari.requests == [("answer", "1764432000.4")]
    assert node.recorder.requests == []


async def test_whole_opt_in_call_writes_its_ledger_at_ari_times(node: Node) -> None:
    chan = "1764432000.5"
    await node.feed(
        stasis_start(chan, "+4930100002"),
        dtmf(chan, "1", "2026-11-29T16:00:01.000+0000"),
        playback_finished(chan, f"{chan}-greeting"),
        dtmf(chan, "3", "2026-11-29T16:00:08.250+0000"),
        stasis_end(chan),
    )
    await node.calls_done()

    events = await node.ledger()
    assert [e.kind for e in events] == [
        "call_started",
        "greeting_played",
        "keypress",
        "greeting_finished",
        "keypress",
        "consent_decided",
        "recording_started",
        "recording_stopped",
        "call_ended",
    ]
    assert [e.seq for e in events] == list(range(len(events)))
    assert {e.event_key for e in events} == {f"pbx1:{chan}/{n}" for n in range(len(events))}
    assert by_kind(events, "keypress")[1].data["phase"] == "holding"
    assert by_kind(events, "call_ended")[0].occurred_at == datetime(
        2026, 11, 29, 16, 0, 30, tzinfo=UTC
    )
    assert node.dispatcher.calls == {}


async def test_playback_finished_reaches_the_call_by_its_target_channel(node: Node) -> None:
    await node.feed(
        stasis_start("1764432000.6", "+4930100002"),
        stasis_start("1764432000.7", "+4930100002"),
        playback_finished("1764432000.7", "1764432000.7-greeting"),
    )

    assert node.dispatcher.calls["1764432000.7"].call.phase is Phase.HOLDING
    assert node.dispatcher.calls["1764432000.6"].call.phase is Phase.GREETING
    finished = by_kind(await node.ledger(), "greeting_finished")
    assert [e.call_id for e in finished] == ["pbx1:1764432000.7"]


async def test_events_of_channels_that_are_not_calls_are_ignored(node: Node) -> None:
    await node.feed(
        dtmf("1764432999.9", "3"),
        playback_finished("1764432999.9", "other-playback"),
        stasis_end("1764432999.9"),
    )

    assert node.ari.requests == []
    assert await node.ledger() == []


async def test_outbound_argument_marks_the_call_outbound(node: Node) -> None:
    await node.feed(stasis_start("1764432000.8", "+4930100004", args=["outbound"]))

    started = by_kind(await node.ledger(), "call_started")[0]
    assert started.data["direction"] == "outbound"


async def test_caller_id_from_the_network_is_kept_printable_and_bounded(node: Node) -> None:
    await node.feed(stasis_start("1764432000.9", "+4930100004", caller="+49\x1b[31m" + "1" * 80))

    caller = by_kind(await node.ledger(), "call_started")[0].data["caller"]
    assert caller == ("+49\\u001b[31m" + "1" * 80)[:63] + "\u2026"


async def test_a_hostile_dialled_number_is_cleaned_before_lookup_ledger_and_log(
    node: Node,
) -> None:
    """The dialplan's _X. takes anything after the first digit; a number that only
    looks like a policy's number once its control characters are gone is not it."""
    await node.feed(stasis_start("1764432000.9", "+49301000\x1b01/../../x"))

    started = by_kind(await node.ledger(), "call_started")[0]
    assert started.data["did"] == "+49301000\\u001b01/../../x"
    assert started.data["policy_source"] == "default"
    assert "\x1b" not in json.dumps(started.data, ensure_ascii=False)


def test_clean_caller_of_nothing_is_empty() -> None:
    assert clean_caller(None) == ""


def test_ari_times_are_parsed_and_bad_ones_fall_back() -> None:
    assert parse_ari_time("2026-11-29T16:00:01.500+0000", T0) == datetime(
        2026, 11, 29, 16, 0, 1, 500000, tzinfo=UTC
    )
    assert parse_ari_time("yesterday", T0) is T0
    assert parse_ari_time(None, T0) is T0


# ---------------------------------------------------------------- resync after reconnect


async def test_a_call_gone_while_ari_was_down_ends_where_its_recording_stopped(
    node: Node,
) -> None:
    """consentd ran on, but without ARI it saw no hang-up: the recording's start plus
    its file's seconds dates it, not the reconnect (at T0, 0.6 s later)."""
    chan = "1764432001.2"
    node.mixmonitor_began_at = "2026-11-29T15:59:59.000+0000"  # T0 - 1 s
    await node.feed(stasis_start(chan, "+4930100001", timestamp="2026-11-29T15:59:58.900+0000"))
    await until(lambda: node.recorder.requests != [])
    node.recorder.host_path(recording_file(chan)).write_bytes(bytes(44 + 6_400))  # 0.4 s
    node.ari.live_channels = []

    await node.feed({"type": CONNECTED})
    await node.calls_done()

    events = await node.ledger()
    (ended,) = by_kind(events, "call_ended")
    (stopped,) = by_kind(events, "recording_stopped")
    assert ended.occurred_at == stopped.occurred_at == T0 - timedelta(seconds=0.6)
    assert (ended.data["cause"], ended.data["time_from"]) == (
        "gone_while_disconnected",
        "recording",
    )


async def test_resync_ends_a_call_whose_channel_is_gone(node: Node) -> None:
    await node.feed(stasis_start("1764432001.1", "+4930100001"))
    node.ari.live_channels = []

    await node.feed({"type": CONNECTED})
    await node.calls_done()

    events = await node.ledger()
    ended = by_kind(events, "call_ended")
    assert [e.data["cause"] for e in ended] == ["gone_while_disconnected"]
    stopped = by_kind(events, "recording_stopped")
    assert [e.data["reason"] for e in stopped] == ["hangup"]
    assert node.dispatcher.calls == {}


async def test_resync_keeps_a_call_whose_channel_is_still_there(node: Node) -> None:
    await node.feed(stasis_start("1764432001.2", "+4930100001"))
    node.ari.live_channels = [channel("1764432001.2", "+4930100001")]

    await node.feed({"type": CONNECTED})

    assert "call_ended" not in await node.kinds()
    assert list(node.dispatcher.calls) == ["1764432001.2"]


async def test_resync_finishes_a_greeting_that_ended_while_disconnected(node: Node) -> None:
    chan = "1764432001.3"
    await node.feed(stasis_start(chan, "+4930100002"))
    node.ari.live_channels = [channel(chan, "+4930100002")]
    node.ari.playbacks.clear()

    await node.feed({"type": CONNECTED})

    finished = by_kind(await node.ledger(), "greeting_finished")
    assert [e.data["state"] for e in finished] == ["finished_while_disconnected"]
    assert node.dispatcher.calls[chan].call.phase is Phase.HOLDING


async def test_resync_adopts_a_call_left_in_our_app_by_a_previous_run(node: Node) -> None:
    node.ari.live_channels = [channel("1764432001.4", "+4930100001")]

    await node.feed({"type": CONNECTED})

    started = by_kind(await node.ledger(), "call_started")
    assert [e.call_id for e in started] == ["pbx1:1764432001.4~b007"]
    assert started[0].data["policy"] == "always"
    assert node.recorder.requests == [
        ("start", "1764432001.4", f"{MONITOR}/consentd-pbx1_1764432001.4_b007-1.wav")
    ]


async def test_resync_leaves_channels_of_other_apps_alone(node: Node) -> None:
    other = channel("1764432001.5", "+4930100001")
    other["dialplan"]["app_data"] = "someone-else,inbound"
    node.ari.live_channels = [other]

    await node.feed({"type": CONNECTED})

    assert node.dispatcher.calls == {}
    assert await node.ledger() == []


# ---------------------------------------------------------------- the runner carries out commands


async def test_opt_out_press_3_deletes_the_recording_file_on_the_host(node: Node) -> None:
    chan = "1764432002.1"
    await node.feed(stasis_start(chan, "+4930100003"), playback_finished(chan, f"{chan}-greeting"))
    audio = node.recorder.host_path(recording_file(chan))
    assert audio.exists()

    await node.feed(dtmf(chan, "3"))
    await until(lambda: not audio.exists())
    await node.feed(stasis_end(chan))
    await node.calls_done()

    events = await node.ledger()
    assert not audio.exists()
    mixmonitor_id = f"mm-{Path(recording_file(chan)).name}"
    # the stop names the recording it ends: never another one on the channel
    assert node.recorder.requests == [
        ("start", chan, recording_file(chan)),
        ("stop", chan, mixmonitor_id),
    ]
    started = by_kind(await node.ledger(), "recording_started")
    assert started[0].data["mixmonitor_id"] == mixmonitor_id
    deleted = by_kind(events, "recording_deleted")
    assert [(e.data["segment"], e.data["file"], e.data["path"]) for e in deleted] == [
        (1, recording_file(chan), str(audio))
    ]
    assert [e.data["reason"] for e in by_kind(events, "recording_stopped")] == ["caller_opted_out"]


async def test_opt_out_with_keep_partial_leaves_the_file(node: Node) -> None:
    chan = "1764432002.2"
    await node.feed(
        stasis_start(chan, "+4930100006"),
        playback_finished(chan, f"{chan}-greeting"),
        dtmf(chan, "3"),
        stasis_end(chan),
    )
    await node.calls_done()

    assert node.recorder.host_path(recording_file(chan)).exists()
    assert "recording_deleted" not in await node.kinds()


async def test_deleted_audio_that_reappears_is_deleted_again_after_hangup(node: Node) -> None:
    chan = "1764432002.3"
    await node.feed(
        stasis_start(chan, "+4930100003"),
        playback_finished(chan, f"{chan}-greeting"),
        dtmf(chan, "3"),
    )
    audio = node.recorder.host_path(recording_file(chan))
    await until(lambda: "recording_deleted" in [e.kind for e in node.store.events.values()])
    audio.write_bytes(b"late MixMonitor flush")

    await node.feed(stasis_end(chan))
    await node.calls_done()

    assert not audio.exists()


async def test_failed_mixmonitor_is_written_to_the_ledger_and_not_counted_as_recording(
    node: Node,
) -> None:
    chan = "1764432002.4"
    node.recorder.failing = AmiNotSent("MixMonitor: not connected to AMI")

    await node.feed(stasis_start(chan, "+4930100001"), stasis_end(chan))
    await node.calls_done()

    events = await node.ledger()
    assert [e.kind for e in events] == ["call_started", "command_failed", "call_ended"]
    assert events[1].data == {
        "command": "StartRecording",
        "error": "MixMonitor: not connected to AMI",
    }


async def test_failed_greeting_playback_puts_the_caller_on_hold(node: Node) -> None:
    chan = "1764432002.5"
    node.ari.failing["play"] = AriError("POST /channels/x/play: status 500", 500)

    await node.feed(stasis_start(chan, "+4930100002"))

    assert node.dispatcher.calls[chan].call.phase is Phase.HOLDING
    failed = by_kind(await node.ledger(), "command_failed")
    assert [e.data["command"] for e in failed] == ["Play"]
    assert [e.data["action"] for e in by_kind(await node.ledger(), "consent_notice_failed")] == [
        "notice_failed"
    ]


async def test_a_play_refused_as_the_channel_is_gone_is_the_call_s_end(node: Node) -> None:
    """ARI answers 404 for a caller who hung up before the play: not a failed notice."""
    chan = "1764432002.6"
    node.ari.failing["play"] = AriNotFound("POST /channels/x/play: not found", 404)

    await node.feed(stasis_start(chan, "+4930100002"))
    await node.feed(stasis_end(chan))
    await node.calls_done()

    kinds = [e.kind for e in await node.ledger()]
    assert kinds == ["call_started", "command_failed", "call_ended"]


def test_bundled_greeting_is_played_from_asterisks_sounds_dir_in_the_callers_language(
    tmp_path: Path,
) -> None:
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(POLICIES)
    book = load_policies(policy_file)

    media = GreetingLibrary.install(book, SOUNDS, tmp_path).consent_greeting(
        book.lookup("+4930100002").policy
    )

    assert media == Media(
        f"sound:{SOUNDS}/de/consentd/call_recording_opt_in",
        "de",
        "bundled",
        kind="call_recording_opt_in",
    )


# ---------------------------------------------------------------- group routing

VOICEMAIL_NAME = "consentd-vm-pbx1_{channel}"
VOICEMAIL_FILE = "/var/spool/asterisk/recording/consentd-vm-pbx1_{channel}.wav"


def channel_destroyed(channel_id: str, cause: str = "Normal Clearing") -> dict[str, Any]:
    return {
        "type": "ChannelDestroyed",
        "timestamp": "2026-11-29T16:01:00.000+0000",
        "cause": 16,
        "cause_txt": cause,
        "channel": channel(channel_id),
        "asterisk_id": "02:42:ac:11:00:02",
        "application": "consentd",
    }


def recording_event(kind: str, channel_id: str, timestamp: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "timestamp": timestamp,
        "recording": {
            "name": VOICEMAIL_NAME.format(channel=channel_id),
            "format": "wav",
            "target_uri": f"channel:{channel_id}",
            **fields,
        },
        "asterisk_id": "02:42:ac:11:00:02",
        "application": "consentd",
    }


def ami_event(event: str, uniqueid: str, **fields: str) -> dict[str, str]:
    return {
        "Event": event,
        "Privilege": "agent,all",
        "Timestamp": "1795969623.25",
        "Channel": "PJSIP/trunk-00000001",
        "Uniqueid": uniqueid,
        "Queue": "support",
        **fields,
    }


#: ``Timestamp: 1795969623.25`` of the AMI events above.
AMI_TIME = datetime(2026, 11, 29, 16, 27, 3, 250000, tzinfo=UTC)


async def queued_call(node: Node, chan: str, did: str = "+4930100010") -> None:
    """A routed call that heard its greetings and went into the queue (leaving Stasis)."""
    await node.feed(
        stasis_start(chan, did),
        playback_finished(chan, f"{chan}-available"),
        playback_finished(chan, f"{chan}-greeting"),
        stasis_end(chan, "2026-11-29T16:00:09.000+0000"),
    )
    assert node.ari.of("continue_to_queue") == [("continue_to_queue", chan, did, "support", "20")]


async def test_routed_number_gets_its_group_and_the_availability_and_voicemail_greetings(
    node: Node,
) -> None:
    chan = "1764432003.1"
    await node.feed(stasis_start(chan, "+4930100010"))

    facts = node.dispatcher.calls[chan].call.facts
    assert facts.group == Group(queue="support", timeout=20, no_answer=NoAnswer.VOICEMAIL)
    assert facts.announcement == Media(
        f"sound:{SOUNDS}/en/consentd/available", "en", "bundled", kind="available"
    )
    assert facts.voicemail_greeting == Media(
        f"sound:{SOUNDS}/en/consentd/voicemail", "en", "bundled", kind="voicemail"
    )
    assert node.ari.requests == [
        ("answer", chan),
        ("play", chan, f"{chan}-available", f"sound:{SOUNDS}/en/consentd/available", "en"),
    ]
    started = by_kind(await node.ledger(), "call_started")[0]
    assert (started.data["group"], started.data["queue"]) == ("support", "support")


async def test_number_without_routing_gets_no_group_or_routed_greetings(node: Node) -> None:
    await node.feed(stasis_start("1764432003.2", "+4930100002"))

    facts = node.dispatcher.calls["1764432003.2"].call.facts
    assert (facts.group, facts.announcement, facts.voicemail_greeting) == (None, None, None)


async def test_leaving_stasis_for_the_queue_keeps_the_call_and_its_destruction_ends_it(
    node: Node,
) -> None:
    chan = "1764432003.3"
    await queued_call(node, chan)
    assert list(node.dispatcher.calls) == [chan]
    assert "call_ended" not in await node.kinds()

    await node.feed(channel_destroyed(chan))
    await node.calls_done()

    ended = by_kind(await node.ledger(), "call_ended")
    assert [(e.data["cause"], e.occurred_at) for e in ended] == [
        ("Normal Clearing", datetime(2026, 11, 29, 16, 1, tzinfo=UTC))
    ]
    assert node.dispatcher.calls == {}


async def test_return_from_the_queue_is_posted_with_the_queue_status(node: Node) -> None:
    chan = "1764432003.4"
    await queued_call(node, chan)

    await node.feed(stasis_start(chan, "+4930100010", args=["after-queue", "TIMEOUT"]))

    left = by_kind(await node.ledger(), "queue_left")
    assert [e.data for e in left] == [{"status": "TIMEOUT"}]
    assert node.ari.of("play")[-1] == (
        "play",
        chan,
        f"{chan}-voicemail",
        f"sound:{SOUNDS}/en/consentd/voicemail,sound:beep",  # the beep ends the greeting
        "en",
    )
    assert node.dispatcher.calls_started == 1


async def test_voicemail_recording_events_reach_the_call_by_its_target_channel(
    node: Node,
) -> None:
    chan = "1764432003.5"
    await queued_call(node, chan, did="+4930100011")
    await node.feed(
        stasis_start(chan, "+4930100011", args=["after-queue", "TIMEOUT"]),
        playback_finished(chan, f"{chan}-voicemail"),
    )
    assert node.ari.of("record") == [("record", chan, VOICEMAIL_NAME.format(channel=chan), "120")]

    await node.feed(
        recording_event(
            "RecordingStarted", chan, "2026-11-29T16:00:35.000+0000", state="recording"
        ),
        recording_event(
            "RecordingFinished", chan, "2026-11-29T16:00:49.000+0000", state="done", duration=14
        ),
    )

    events = await node.ledger()
    file = VOICEMAIL_FILE.format(channel=chan)
    where = {"file": file, "path": str(node.root) + file}
    started = by_kind(events, "voicemail_started")
    finished = by_kind(events, "voicemail_finished")
    assert [(e.occurred_at, e.data) for e in started] == [
        (datetime(2026, 11, 29, 16, 0, 35, tzinfo=UTC), where)
    ]
    assert [(e.occurred_at, e.data) for e in finished] == [
        (
            datetime(2026, 11, 29, 16, 0, 49, tzinfo=UTC),
            {"state": "done", "duration": 14, **where},
        )
    ]
    assert node.ari.of("hangup") == [("hangup", chan)]


async def test_the_same_keypress_delivered_twice_is_counted_once(node: Node) -> None:
    chan = "1764432003.6"
    await queued_call(node, chan)

    await node.feed(
        dtmf(chan, "3", "2026-11-29T16:00:12.000+0000"),
        dtmf(chan, "3", "2026-11-29T16:00:12.000+0000"),
    )

    presses = by_kind(await node.ledger(), "keypress")
    assert [(e.data["digit"], e.data["phase"], e.data["decides"]) for e in presses] == [
        ("3", "queued", True)
    ]
    assert node.recorder.requests == [("start", chan, recording_file(chan))]


async def test_two_presses_of_the_same_key_at_different_times_count_twice(node: Node) -> None:
    chan = "1764432003.7"
    await queued_call(node, chan)

    await node.feed(
        dtmf(chan, "3", "2026-11-29T16:00:12.000+0000"),
        dtmf(chan, "3", "2026-11-29T16:00:12.400+0000"),
    )

    presses = by_kind(await node.ledger(), "keypress")
    assert [e.data["decides"] for e in presses] == [True, False]
    assert [e.occurred_at.microsecond for e in presses] == [0, 400000]


async def test_queue_events_from_ami_reach_the_call_by_uniqueid_at_their_timestamp(
    node: Node,
) -> None:
    chan = "1764432003.8"
    await queued_call(node, chan)

    for message in (
        ami_event("QueueCallerJoin", chan, Position="1", Count="1"),
        ami_event(
            "AgentConnect",
            chan,
            MemberName="Agent 1",
            Interface="PJSIP/agent1",
            HoldTime="12",
            RingTime="3",
            DestUniqueid="1764432003.9",
        ),
        ami_event(
            "AgentComplete",
            chan,
            MemberName="Agent 1",
            Interface="PJSIP/agent1",
            HoldTime="12",
            TalkTime="95",
            Reason="caller",
        ),
    ):
        node.dispatcher.handle_ami(message)
    await settle()

    queue = [e for e in await node.ledger() if e.kind.startswith(("queue_", "agent_"))]
    assert [(e.kind, e.occurred_at, e.data) for e in queue] == [
        ("queue_joined", AMI_TIME, {"queue": "support", "position": 1}),
        (
            "agent_connected",
            AMI_TIME,
            {"agent": "Agent 1", "interface": "PJSIP/agent1", "queue_time": 12, "ring_time": 3},
        ),
        ("agent_completed", AMI_TIME, {"reason": "caller", "talk_time": 95}),
    ]
    assert node.dispatcher.calls[chan].call.phase.value == "connected"


async def test_abandon_from_ami_is_written_for_the_call(node: Node) -> None:
    chan = "1764432004.1"
    await queued_call(node, chan)

    node.dispatcher.handle_ami(
        ami_event("QueueCallerAbandon", chan, Position="1", OriginalPosition="1", HoldTime="18")
    )
    await settle()

    abandoned = by_kind(await node.ledger(), "queue_abandoned")
    assert [(e.occurred_at, e.data) for e in abandoned] == [(AMI_TIME, {"queue_time": 18})]


async def test_ami_events_of_unknown_callers_and_other_events_are_ignored(node: Node) -> None:
    chan = "1764432004.2"
    await queued_call(node, chan)
    before = await node.kinds()

    node.dispatcher.handle_ami(ami_event("QueueCallerJoin", "1764439999.9", Position="1"))
    node.dispatcher.handle_ami(ami_event("QueueMemberStatus", chan, Status="1"))
    node.dispatcher.handle_ami(ami_event("Newexten", chan, Application="Queue"))
    node.dispatcher.handle_ami({"Event": "AgentConnect", "MemberName": "Agent 1"})
    await settle()

    assert await node.kinds() == before


# ---------------------------------------------------------------- overload


async def test_a_call_consentd_reaches_too_late_goes_on_unrecorded_and_is_counted(
    node: Node,
) -> None:
    chan = "1764432009.1"
    # The clock reads 16:00:00; this StasisStart is 3 s old (more than shed_after, 2 s).
    await node.feed(stasis_start(chan, "+4930100003", timestamp="2026-11-29T15:59:57.000+0000"))

    assert node.ari.requests == [("continue_unrecorded", chan, "+4930100003")]
    assert node.recorder.requests == []  # opt-out, but never answered or recorded
    unserved = by_kind(await node.ledger(), "call_unserved")
    assert [e.data for e in unserved] == [{"reason": "overloaded"}]

    await node.feed(stasis_end(chan))
    await node.calls_done()
    assert node.dispatcher.calls_unserved == 1
    assert [e.kind for e in await node.ledger()][-1] == "call_ended"


async def test_a_timely_call_is_served(node: Node) -> None:
    await node.feed(stasis_start("1764432009.2", "+4930100003"))

    assert node.ari.requests[0] == ("answer", "1764432009.2")
    assert node.dispatcher.calls_unserved == 0


async def test_on_connect_asterisk_is_asked_for_only_the_events_consentd_handles(
    node: Node,
) -> None:
    await node.feed({"type": CONNECTED})

    (request,) = node.ari.of("filter_events")
    assert set(request[1:]) == {
        "StasisStart", "StasisEnd", "ChannelDestroyed", "ChannelHangupRequest",
        "ChannelDtmfReceived", "PlaybackFinished", "RecordingStarted", "RecordingFinished",
        "RecordingFailed", "Dial", "ChannelVarset",
    }  # fmt: skip
    assert node.ari.of("channels")  # and the resync still runs


async def test_an_asterisk_without_event_filters_still_resyncs(node: Node) -> None:
    node.ari.failing["filter_events"] = AriNotFound("PUT eventFilter: not found", 404)

    await node.feed({"type": CONNECTED})

    assert node.ari.of("channels")


async def test_a_channel_the_dialplan_answered_is_not_answered_again(node: Node) -> None:
    event = stasis_start("1764432009.3", "+4930100002")
    event["channel"]["state"] = "Up"

    await node.feed(event)

    assert node.ari.of("answer") == []
    assert [r[0] for r in node.ari.requests] == ["play"]


async def test_an_unexpected_error_in_one_call_fails_that_call_alone(node: Node) -> None:
    broken, fine = "1764432009.4", "1764432009.5"
    node.ari.failing["play"] = ValueError("a bug")  # not an ARI error: unexpected

    await node.feed(stasis_start(broken, "+4930100002"))
    await until(lambda: bool(node.ari.of("continue_unrecorded")))
    del node.ari.failing["play"]
    await node.feed(stasis_start(fine, "+4930100002"))

    assert node.ari.of("continue_unrecorded") == [("continue_unrecorded", broken, "+4930100002")]
    assert [r[1] for r in node.ari.of("play")] == [broken, fine]  # the other call goes on
    failed = by_kind(await node.ledger(), "call_failed")
    assert [(e.call_id, e.data["error"]) for e in failed] == [
        (f"pbx1:{broken}", "ValueError: a bug")
    ]
    await node.feed(stasis_end(broken), stasis_end(fine))
    await node.calls_done()  # both end normally; nothing else was cancelled


# ---------------------------------------------------------------- adoption after a restart


def earlier_run(
    store: MemoryLedger, chan: str, did: str, *rows: tuple[str, dict[str, Any]], policy: str
) -> str:
    """The ledger a previous daemon left for a call on ``chan``; returns the call id."""
    call_id = f"pbx1:{chan}"
    started = {"did": did, "policy": policy, "channel_id": chan, "node": "pbx1"}
    for seq, (kind, data) in enumerate([("call_started", started), *rows]):
        store.events[f"{call_id}/{seq}"] = LedgerEvent(
            f"{call_id}/{seq}", call_id, "pbx1", seq, kind, T0, data
        )
    return call_id


def segment_row(chan: str, n: int = 1, **extra: Any) -> dict[str, Any]:
    return {"segment": n, "file": recording_file(chan), "path": "", "bridged_only": False, **extra}


async def test_a_refused_recording_a_restart_left_on_disk_is_deleted_exactly_once(
    node: Node,
) -> None:
    chan = "1764432010.1"
    call_id = earlier_run(
        node.store, chan, "+4930100003",
        ("greeting_finished", {"playback_id": f"{chan}-greeting", "state": "done"}),
        ("recording_started", segment_row(chan, mixmonitor_id="0x1")),
        ("consent_decided", {"action": "caller_opted_out", "digit": "3", "phase": "holding"}),
        ("recording_stopped", segment_row(chan, reason="caller_opted_out")),
        policy="opt_out",
    )  # fmt: skip
    audio = node.recorder.host_path(recording_file(chan))
    audio.parent.mkdir(parents=True, exist_ok=True)
    audio.write_bytes(b"refused audio")
    node.ari.live_channels = [channel(chan, "+4930100003")]

    await node.feed({"type": CONNECTED})
    await until(lambda: not audio.exists())

    assert node.ari.of("answer") == [] and node.ari.of("play") == []  # not greeted again
    assert node.recorder.requests == []  # nothing new recorded
    rows = [e for e in await node.ledger() if e.call_id == call_id]
    assert [e.kind for e in rows][-2:] == ["call_adopted", "recording_deleted"]
    assert [e.seq for e in rows] == list(range(len(rows)))  # numbering goes on: no collisions
    await node.feed({"type": CONNECTED})  # a second reconnect: nothing more to do
    assert len(by_kind(await node.ledger(), "recording_deleted")) == 1


async def test_a_caller_in_the_queue_during_a_restart_is_adopted_and_key_3_still_counts(
    node: Node,
) -> None:
    chan = "1764432010.2"
    call_id = earlier_run(
        node.store, chan, "+4930100010",
        ("greeting_finished", {"playback_id": f"{chan}-greeting", "state": "done"}),
        ("queue_joined", {"queue": "support", "position": 1}),
        policy="opt_in",
    )  # fmt: skip
    queued = channel(chan, "+4930100010")
    queued["dialplan"].update(context="consentd-queue", app_name="Queue", app_data="support")
    node.ari.live_channels = [queued]

    await node.feed({"type": CONNECTED}, dtmf(chan, "3"))

    assert node.ari.of("subscribe") == [("subscribe", chan)]
    assert node.ari.of("answer") == [] and node.ari.of("play") == []
    decided = by_kind(await node.ledger(), "consent_decided")
    assert [(e.call_id, e.data["phase"]) for e in decided] == [(call_id, "queued")]
    assert node.recorder.requests == [("start", chan, recording_file(chan))]


async def test_an_agent_connect_lost_while_ami_was_down_is_recovered_from_the_bridge(
    node: Node,
) -> None:
    """Bridged audio must not count as 0 s because AMI reconnected meanwhile."""
    chan, agent = "1764432010.7", "1764432010.8"
    await queued_call(node, chan)
    node.ari.live_channels = [
        channel(chan, "+4930100010"),
        {"id": agent, "name": "PJSIP/agent1-0000002a", "state": "Up"},
    ]
    node.ari.live_bridges = [
        {"id": "b1", "channels": [agent, chan], "creationtime": "2026-11-29T16:00:20.250+0000"}
    ]

    node.dispatcher.ami_connected()
    await settle()
    await asyncio.wait_for(asyncio.gather(*node.tasks[-1:]), 1.0)
    await settle()
    # The AMI event itself arrives late after all: still one connection.
    node.dispatcher.handle_ami(ami_event("AgentConnect", chan, MemberName="Agent 1"))
    await settle()

    connected = by_kind(await node.ledger(), "agent_connected")
    assert [(e.occurred_at, e.data) for e in connected] == [
        (
            datetime(2026, 11, 29, 16, 0, 20, 250000, tzinfo=UTC),
            {
                "agent": "PJSIP/agent1",
                "interface": "PJSIP/agent1",
                "queue_time": None,
                "ring_time": None,
                "recovered": True,
            },
        )
    ]
    assert node.dispatcher.calls[chan].call.phase.value == "connected"


async def test_bridges_of_calls_not_in_the_queue_are_left_alone(node: Node) -> None:
    chan = "1764432010.9"
    await node.feed(stasis_start(chan, "+4930100002"))  # greeting, not queued
    node.ari.live_bridges = [{"id": "b2", "channels": [chan, "x"]}]

    await node.dispatcher.recover_agent_connections()
    await settle()

    assert by_kind(await node.ledger(), "agent_connected") == []


async def test_a_recording_the_ledger_never_heard_of_is_stopped_and_deleted(node: Node) -> None:
    chan = "1764432010.3"
    earlier_run(
        node.store, chan, "+4930100002",
        ("greeting_played", {"playback_id": f"{chan}-greeting"}),
        policy="opt_in",
    )  # fmt: skip
    node.ari.variables[(chan, "CONSENTD_MIXMONITOR_1")] = "0x77"  # started, then the crash
    node.ari.live_channels = [channel(chan, "+4930100002")]

    await node.feed({"type": CONNECTED})

    assert ("stop", chan, "0x77") in node.recorder.requests
    adopted = by_kind(await node.ledger(), "call_adopted")
    assert adopted[0].data["untracked_recordings"] == [1]


async def test_a_caller_back_from_the_queue_after_a_restart_keeps_its_call(node: Node) -> None:
    chan = "1764432010.4"
    call_id = earlier_run(
        node.store, chan, "+4930100010",
        ("queue_joined", {"queue": "support", "position": 1}),
        policy="opt_in",
    )  # fmt: skip

    await node.feed(stasis_start(chan, "+4930100010", args=["after-queue", "TIMEOUT"]))

    rows = [e for e in await node.ledger() if e.call_id == call_id]
    assert [e.kind for e in rows].count("call_started") == 1  # not a second call
    assert "queue_left" in [e.kind for e in rows]
    assert [e.seq for e in rows] == list(range(len(rows)))
    assert node.ari.of("play")[0][2] == f"{chan}-voicemail"


# ---------------------------------------------------------------- shutdown


async def test_stopping_hands_calls_on_and_sends_new_ones_on_unrecorded(node: Node) -> None:
    held, late = "1764432011.1", "1764432011.2"
    await node.feed(stasis_start(held, "+4930100001"))  # always: recording
    node.dispatcher.draining = True

    await node.feed(stasis_start(late, "+4930100001"))
    node.dispatcher.hand_off_all()
    await node.calls_done()

    assert node.ari.of("continue_unrecorded") == [("continue_unrecorded", late, "+4930100001")]
    rows = [e for e in await node.ledger() if e.call_id == f"pbx1:{held}"]
    assert rows[-1].kind == "call_handed_off"
    assert "call_ended" not in [e.kind for e in rows]  # the call goes on, for the next start
    assert ("stop", held) not in [r[:2] for r in node.recorder.requests]  # recording goes on
    unserved = by_kind(await node.ledger(), "call_unserved")
    assert [e.data["reason"] for e in unserved] == ["shutting_down"]


async def test_a_bridged_only_recording_that_never_reached_an_agent_leaves_no_file(
    node: Node,
) -> None:
    chan = "1764432012.1"
    await node.feed(stasis_start(chan, "+4930100010"))  # opt-in, routed
    for playback in ("available", "greeting"):
        await node.feed(playback_finished(chan, f"{chan}-{playback}"))
    await node.feed(dtmf(chan, "3"))  # consented in the queue: MixMonitor b starts
    audio = node.recorder.host_path(recording_file(chan))
    assert audio.exists()  # the fake writes a bare header, as MixMonitor does

    await node.feed(stasis_end(chan), {**stasis_end(chan), "type": "ChannelDestroyed"})
    await node.calls_done()

    assert not audio.exists()
    deleted = by_kind(await node.ledger(), "empty_file_deleted")
    assert [e.data["file"] for e in deleted] == [recording_file(chan)]


async def test_a_file_with_audio_is_never_taken_for_empty(node: Node) -> None:
    chan = "1764432012.2"
    await node.feed(stasis_start(chan, "+4930100010"))
    for playback in ("available", "greeting"):
        await node.feed(playback_finished(chan, f"{chan}-{playback}"))
    await node.feed(dtmf(chan, "3"))
    audio = node.recorder.host_path(recording_file(chan))
    audio.write_bytes(b"RIFF" + bytes(40) + b"\x01\x02" * 800)  # a header and some audio

    await node.feed(stasis_end(chan), {**stasis_end(chan), "type": "ChannelDestroyed"})
    await node.calls_done()

    assert audio.exists()
    assert by_kind(await node.ledger(), "empty_file_deleted") == []


def ami_dtmf(channel_id: str, digit: str, timestamp: str) -> dict[str, str]:
    return {
        "Event": "DTMFEnd", "Channel": "PJSIP/trunk-00000001", "Uniqueid": channel_id,
        "Digit": digit, "DurationMs": "120", "Direction": "Received", "Timestamp": timestamp,
    }  # fmt: skip


async def test_a_key_reported_by_both_ari_and_ami_counts_once(node: Node) -> None:
    chan = "1764432013.1"
    await node.feed(stasis_start(chan, "+4930100002"))

    await node.feed(dtmf(chan, "3", timestamp="2026-11-29T16:00:01.500+0000"))
    node.dispatcher.handle_ami(ami_dtmf(chan, "3", "1795968001.503"))  # the same press
    await settle()

    presses = by_kind(await node.ledger(), "keypress")
    assert [(e.data["digit"], e.data["decides"]) for e in presses] == [("3", True)]


async def test_amis_copy_of_a_press_seconds_late_is_not_a_second_press(tmp_path: Path) -> None:
    """Under load AMI's DTMFEnd came seconds after ARI's report of the same press;
    with withdrawal allowed, a second 3 would have taken the caller's consent back."""
    policies = POLICIES.replace(
        "groups:", '  "+4930100014": {recording: opt_in, allow_withdrawal: true}\ngroups:'
    )
    async for node in running_node(tmp_path, policies):
        await _ami_copy_late(node)


async def _ami_copy_late(node: Node) -> None:
    chan = "1764432013.3"
    await node.feed(stasis_start(chan, "+4930100014"))

    await node.feed(dtmf(chan, "3", timestamp="2026-11-29T16:00:01.500+0000"))
    node.dispatcher.handle_ami(ami_dtmf(chan, "3", "1795968004.2"))  # 2.7 s later
    await settle()
    presses = by_kind(await node.ledger(), "keypress")
    assert [(e.data["digit"], e.data["decides"]) for e in presses] == [("3", True)]

    # A real second press, reported by AMI first this time, withdraws: once.
    node.dispatcher.handle_ami(ami_dtmf(chan, "3", "1795968009.0"))
    await node.feed(dtmf(chan, "3", timestamp="2026-11-29T16:00:09.050+0000"))
    await settle()
    rows = await node.ledger()
    assert len(by_kind(rows, "keypress")) == 2
    assert [e.data["action"] for e in by_kind(rows, "consent_decided")] == [
        "caller_opted_in",
        "caller_withdrew",
    ]


async def test_a_key_pressed_while_the_ari_websocket_is_down_still_counts(node: Node) -> None:
    chan = "1764432013.2"
    await node.feed(stasis_start(chan, "+4930100002"))

    node.dispatcher.handle_ami(ami_dtmf(chan, "3", "1795968002.0"))  # ARI never reports it
    node.dispatcher.handle_ami({**ami_dtmf(chan, "3", "1795968002.1"), "Direction": "Sent"})
    await settle()

    decided = by_kind(await node.ledger(), "consent_decided")
    assert [e.data["action"] for e in decided] == ["caller_opted_in"]
    assert len(by_kind(await node.ledger(), "keypress")) == 1  # the sent digit is not the caller's


async def test_a_call_that_ended_while_no_consentd_ran_gets_its_final_rows(node: Node) -> None:
    chan = "1764432014.1"
    call_id = earlier_run(
        node.store,
        chan,
        "+4930100003",
        ("greeting_finished", {"playback_id": f"{chan}-greeting", "state": "done"}),
        ("recording_started", segment_row(chan, mixmonitor_id="0x9")),
        ("consent_decided", {"action": "caller_opted_out", "digit": "3", "phase": "holding"}),
        policy="opt_out",
    )  # fmt: skip  (the crash came before the stop: the refused audio is on disk)
    audio = node.recorder.host_path(recording_file(chan))
    audio.parent.mkdir(parents=True, exist_ok=True)
    audio.write_bytes(b"refused audio")
    node.ari.live_channels = []  # the caller hung up meanwhile

    await node.feed({"type": CONNECTED})
    await node.calls_done()

    rows = [e for e in await node.ledger() if e.call_id == call_id]
    assert [e.kind for e in rows][-3:] == ["recording_stopped", "call_ended", "recording_deleted"]
    assert rows[-2].data["cause"] == "ended_while_consentd_was_away"
    assert not audio.exists()
    await node.feed({"type": CONNECTED})  # the next reconnect finds nothing open
    await node.calls_done()
    assert len(by_kind(await node.ledger(), "call_ended")) == 1


def _shift(store: MemoryLedger, call_id: str, by: timedelta) -> None:
    for key, event in list(store.events.items()):
        if event.call_id == call_id:
            store.events[key] = replace(event, occurred_at=event.occurred_at + by)


async def test_a_call_that_ended_while_no_consentd_ran_ends_where_its_recording_stopped(
    node: Node,
) -> None:
    """Nobody saw its hang-up. MixMonitor wrote until the channel hung up, so the
    open recording's start plus the seconds its file holds is when that was: not
    the moment consentd came back (a minute later here)."""
    chan = "1764432014.3"
    call_id = earlier_run(
        node.store, chan, "+4930100001",
        ("recording_started", segment_row(chan, mixmonitor_id="0x9")),
        policy="always",
    )  # fmt: skip
    _shift(node.store, call_id, timedelta(seconds=-60))
    audio = node.recorder.host_path(recording_file(chan))
    audio.parent.mkdir(parents=True, exist_ok=True)
    audio.write_bytes(bytes(44 + 16_000 * 12 + 8_000))  # 12.5 s of 8 kHz 16-bit audio
    node.ari.live_channels = []

    await node.feed({"type": CONNECTED})
    await node.calls_done()

    rows = [e for e in await node.ledger() if e.call_id == call_id]
    assert [e.kind for e in rows][-2:] == ["recording_stopped", "call_ended"]
    hung_up = T0 - timedelta(seconds=60) + timedelta(seconds=12.5)
    assert [e.occurred_at for e in rows[-2:]] == [hung_up, hung_up]
    assert rows[-1].data["cause"] == "ended_while_consentd_was_away"
    assert rows[-1].data["time_from"] == "recording"
    assert audio.exists()  # "always": the recording is the call's, kept


async def test_a_bridged_only_recording_does_not_date_the_end(node: Node) -> None:
    """MixMonitor b writes only while the caller is bridged to an agent: its length
    is the talk, not the call, so it says nothing of when the call ended."""
    chan = "1764432014.6"
    call_id = earlier_run(
        node.store, chan, "+4930100001",
        ("recording_started", {**segment_row(chan), "bridged_only": True}),
        policy="always",
    )  # fmt: skip
    _shift(node.store, call_id, timedelta(seconds=-60))
    audio = node.recorder.host_path(recording_file(chan))
    audio.parent.mkdir(parents=True, exist_ok=True)
    audio.write_bytes(bytes(44 + 16_000 * 5))
    node.ari.live_channels = []

    await node.feed({"type": CONNECTED})
    await node.calls_done()

    ended = [e for e in await node.ledger() if e.call_id == call_id][-1]
    assert (ended.kind, ended.occurred_at, ended.data["time_from"]) == (
        "call_ended",
        T0,
        "restart",
    )


async def test_an_ended_call_without_a_recording_or_with_its_file_gone_ends_at_the_return(
    node: Node,
) -> None:
    """No audio to tell the hang-up's time by: the moment consentd came back, said so."""
    never = earlier_run(node.store, "1764432014.4", "+4930100004", policy="never")
    gone = earlier_run(
        node.store, "1764432014.5", "+4930100001",
        ("recording_started", segment_row("1764432014.5")),
        policy="always",
    )  # fmt: skip
    for call_id in (never, gone):
        _shift(node.store, call_id, timedelta(seconds=-60))
    node.ari.live_channels = []

    await node.feed({"type": CONNECTED})
    await node.calls_done()

    for call_id in (never, gone):
        ended = [e for e in await node.ledger() if e.call_id == call_id][-1]
        assert ended.kind == "call_ended"
        assert (ended.occurred_at, ended.data["time_from"]) == (T0, "restart")


async def _ended_meanwhile_with_a_file(
    node: Node, chan: str, did: str, policy: str
) -> tuple[list[LedgerEvent], Path]:
    """A call whose ledger has only its start, a recording of segment 1 on disk, and
    no channel left: what a consentd finds after a SIGKILL right after MixMonitor began.
    Returns the call's rows after the reconnect, and the file."""
    call_id = earlier_run(node.store, chan, did, policy=policy)
    audio = node.recorder.host_path(recording_file(chan))
    audio.parent.mkdir(parents=True, exist_ok=True)
    audio.write_bytes(b"audio")
    node.ari.live_channels = []

    await node.feed({"type": CONNECTED})
    await node.calls_done()

    return [e for e in await node.ledger() if e.call_id == call_id], audio


async def test_a_recording_the_ledger_never_knew_of_a_call_that_ended_meanwhile_is_deleted(
    node: Node,
) -> None:
    """Seen under fault injection: consentd was killed after MixMonitor started and
    before its rows reached the journal, and the caller hung up before a consentd came
    back. The file is on disk; nothing in the ledger consents to it."""
    rows, audio = await _ended_meanwhile_with_a_file(node, "1764432017.1", "+4930100002", "opt_in")

    assert [e.kind for e in rows][-2:] == ["call_ended", "recording_deleted"]
    assert rows[-2].data["untracked_recordings"] == [1]
    assert rows[-1].data["segment"] == 1
    assert not audio.exists()


async def test_an_untracked_recording_the_policy_wants_is_kept_with_its_rows(node: Node) -> None:
    rows, audio = await _ended_meanwhile_with_a_file(node, "1764432018.1", "+4930100001", "always")

    assert [e.kind for e in rows][-3:] == ["recording_started", "recording_stopped", "call_ended"]
    assert rows[-3].data["adopted"] is True and rows[-3].data["segment"] == 1
    assert audio.exists()


async def test_with_the_journal_full_new_calls_go_on_unrecorded(node: Node) -> None:
    node.writer._journal.max_lines = 0  # nothing more fits: the ledger cannot take rows

    await node.feed(stasis_start("1764432015.1", "+4930100001"))

    assert node.ari.of("continue_unrecorded") == [
        ("continue_unrecorded", "1764432015.1", "+4930100001")
    ]
    unserved = by_kind(await node.ledger(), "call_unserved")
    assert [e.data["reason"] for e in unserved] == ["ledger_full"]


async def test_a_reconnect_never_closes_a_call_whose_end_is_still_on_its_way(node: Node) -> None:
    chan = "1764432016.1"
    await node.feed(stasis_start(chan, "+4930100004"))
    node.store.available = False  # the call's rows wait in the writer, not yet stored
    await node.feed(stasis_end(chan))
    await node.calls_done()

    node.ari.live_channels = []
    await node.feed({"type": CONNECTED})
    node.store.available = True
    await until(lambda: any(e.kind == "call_ended" for e in node.store.events.values()), 3)
    await asyncio.sleep(0.2)  # time enough for a second, wrong, call_ended

    ended = [e for e in by_kind(await node.ledger(), "call_ended") if e.call_id.endswith(chan)]
    assert len(ended) == 1 and ended[0].data["cause"] != "ended_while_consentd_was_away"


async def test_dial_events_of_a_watched_caller_tell_the_call_it_is_talking(node: Node) -> None:
    chan = "1764432011.1"
    await queued_call(node, chan)

    await node.feed({"type": "Dial", "caller": {"id": chan}, "peer": {"id": "x"}, "dialstatus": ""})
    assert node.dispatcher.calls[chan].call.bridged is False  # ringing
    await node.feed(
        {"type": "Dial", "caller": {"id": chan}, "peer": {"id": "x"}, "dialstatus": "ANSWER"}
    )
    assert node.dispatcher.calls[chan].call.bridged is True
    await node.feed(
        {"type": "Dial", "caller": {"id": "other"}, "peer": {"id": chan}, "dialstatus": "BUSY"}
    )
    assert node.dispatcher.calls[chan].call.bridged is True  # the peer side is not our caller


async def test_an_abandon_arriving_over_ami_just_after_the_ari_hangup_still_counts(
    node: Node,
) -> None:
    """ARI and AMI are two connections: app_queue's abandon can land after ChannelDestroyed."""
    chan = "1764432011.2"
    await queued_call(node, chan)

    await node.feed({"type": "ChannelDestroyed", "channel": {"id": chan}, "cause_txt": "Normal"})
    node.dispatcher.handle_ami(ami_event("QueueCallerAbandon", chan, HoldTime="7"))
    await node.calls_done()

    kinds = await node.kinds()
    assert kinds[-2:] == ["queue_abandoned", "call_ended"]


# ---------------------------------------------------------------- a consent notice that failed


async def test_a_greeting_asterisk_could_not_play_leaves_an_opt_out_call_unrecorded(
    node: Node,
) -> None:
    chan = "1764432020.1"
    await node.feed(
        stasis_start(chan, "+4930100003"), playback_finished(chan, f"{chan}-greeting", "failed")
    )
    await node.feed(stasis_end(chan), {**stasis_end(chan), "type": "ChannelDestroyed"})
    await node.calls_done()

    assert node.recorder.requests == []
    [failed] = by_kind(await node.ledger(), "consent_notice_failed")
    assert failed.data["state"] == "failed"


async def test_a_greeting_the_hangup_cut_off_is_only_the_calls_end(node: Node) -> None:
    chan = "1764432020.2"
    await node.feed(
        stasis_start(chan, "+4930100003"),
        {**stasis_end(chan), "type": "ChannelHangupRequest"},
        playback_finished(chan, f"{chan}-greeting", "failed"),
    )
    await node.feed(stasis_end(chan), {**stasis_end(chan), "type": "ChannelDestroyed"})
    await node.calls_done()

    assert by_kind(await node.ledger(), "consent_notice_failed") == []
    assert by_kind(await node.ledger(), "call_ended")

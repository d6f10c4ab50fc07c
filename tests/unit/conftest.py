"""Shared helpers for the unit tests: fixed clocks, WAV files and a pure call-flow driver.

The helpers are handed out as fixtures (not imported from this module) so that
pytest's own conftest handling stays the only way they reach the tests.
"""

from __future__ import annotations

import wave
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from consentd.call_flow import Call, handle, new_call
from consentd.call_model import (
    Answer,
    Answered,
    CallArrived,
    CallEnded,
    CallFacts,
    Command,
    DeleteRecording,
    Direction,
    DtmfReceived,
    Event,
    Media,
    Play,
    PlaybackFinished,
    PlaybackStarted,
    RecordingDeleted,
    RecordingStarted,
    RecordingStopped,
    StartRecording,
    StopRecording,
    WriteLedger,
)
from consentd.ledger import LedgerEvent
from consentd.policy import Group, NumberPolicy

#: The moment every test call starts; fixed so that ledger times are exact.
T0 = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def write_wav(
    path: Path,
    *,
    rate: int = 8000,
    channels: int = 1,
    width: int = 2,
    seconds: float = 0.1,
) -> Path:
    """Write a silent PCM WAV file of the given shape."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(rate * seconds)
    with wave.open(str(path), "wb") as wav:
        wav.setframerate(rate)
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.writeframes(b"\x00" * frames * channels * width)
    return path


def make_facts(
    recording: str = "opt_in",
    *,
    language: str = "en",
    line: str = "phone",
    keep_partial_on_opt_out: bool = False,
    allow_withdrawal: bool = False,
    did: str = "+4930100002",
    caller: str = "+4917612345678",
    call_id: str = "pbx1:1764432000.17",
    channel_id: str = "1764432000.17",
    policy_source: str = "number",
    asterisk_root: str = "/",
    group: Group | None = None,
) -> CallFacts:
    """The facts of one inbound call, with the greeting the daemon would pick for the policy.

    With ``group`` the number routes to the group "support" and the call gets
    the bundled availability and voicemail greetings, as the dispatcher gives them.
    """
    policy = NumberPolicy.model_validate(
        {
            "recording": recording,
            "language": language,
            "line": line,
            "keep_partial_on_opt_out": keep_partial_on_opt_out,
            "allow_withdrawal": allow_withdrawal,
            **({"routing": {"group": "support"}} if group else {}),
        }
    )
    routed = (
        {
            "group": group,
            "announcement": _bundled(language, "available"),
            "voicemail_greeting": _bundled(language, "voicemail"),
        }
        if group
        else {}
    )
    return CallFacts(
        call_id=call_id,
        node="pbx1",
        channel_id=channel_id,
        did=did,
        caller=caller,
        direction=Direction.INBOUND,
        policy=policy,
        policy_source=policy_source,
        greeting=_bundled_greeting(policy),
        recording_dir="/var/spool/asterisk/monitor",
        asterisk_root=asterisk_root,
        **routed,
    )


def _bundled(language: str, kind: str) -> Media:
    return Media(uri=f"sound:consentd/{kind}", language=language, source="bundled", kind=kind)


def _bundled_greeting(policy: NumberPolicy) -> Media | None:
    kind = policy.greeting_kind
    if kind is None:
        return None
    return Media(uri=f"sound:consentd/{kind.value}", language=policy.language, source="bundled")


@dataclass
class CallScript:
    """Plays a call through the pure flow and feeds outcomes back the way the runner does.

    A started recording, a stopped recording, a deleted file and a started
    playback come back as events stamped with the fake clock, so the ledger
    written here is the ledger the daemon would write for the same call.
    """

    facts: CallFacts
    clock: FakeClock = field(default_factory=FakeClock)
    call: Call = field(init=False)
    commands: list[Command] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.call = new_call(self.facts)

    def send(self, event: Event) -> list[Command]:
        """Handle ``event`` and every outcome it causes; return the commands issued."""
        issued: list[Command] = []
        pending: deque[Event] = deque([event])
        while pending:
            self.call, commands = handle(self.call, pending.popleft())
            for command in commands:
                issued.append(command)
                outcome = self._outcome(command)
                if outcome is not None:
                    pending.append(outcome)
        self.commands.extend(issued)
        return issued

    def _outcome(self, command: Command) -> Event | None:
        at = self.clock()
        match command:
            case Answer():
                return Answered(at)
            case Play():
                return PlaybackStarted(command.playback_id, at)
            case StartRecording():
                return RecordingStarted(command.segment, at)
            case StopRecording():
                return RecordingStopped(command.segment, at)
            case DeleteRecording():
                return RecordingDeleted(command.segment, at)
        return None

    # -- what happens on the line, at the fake clock's time

    def arrive(self) -> list[Command]:
        return self.send(CallArrived(self.clock()))

    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def press(self, digit: str) -> list[Command]:
        return self.send(DtmfReceived(digit, self.clock(), duration_ms=120))

    def greeting_ends(self) -> list[Command]:
        playback = self.call.greeting_playback
        assert playback is not None, "no greeting is playing"
        return self.send(PlaybackFinished(playback, self.clock()))

    def hang_up(self) -> list[Command]:
        return self.send(CallEnded(self.clock()))

    # -- what the ledger holds afterwards

    @property
    def ledger(self) -> list[WriteLedger]:
        return [c for c in self.commands if isinstance(c, WriteLedger)]

    def kinds(self) -> list[str]:
        return [w.kind for w in self.ledger]

    def ledger_events(self) -> list[LedgerEvent]:
        return [
            LedgerEvent(
                event_key=f"{self.facts.call_id}/{w.seq}",
                call_id=self.facts.call_id,
                node=self.facts.node,
                seq=w.seq,
                kind=w.kind,
                occurred_at=w.at,
                data=w.data,
            )
            for w in self.ledger
        ]


@pytest.fixture(scope="session")
def facts() -> Callable[..., CallFacts]:
    """``facts("opt_out", keep_partial_on_opt_out=True)`` builds the facts of a call."""
    return make_facts


@pytest.fixture(scope="session")
def script() -> Callable[..., CallScript]:
    """``script(facts)`` starts a scripted call on a fresh fake clock at T0."""

    def start(call_facts: CallFacts, clock: FakeClock | None = None) -> CallScript:
        return CallScript(call_facts, clock or FakeClock())

    return start


@pytest.fixture(scope="session")
def wav() -> Callable[..., Path]:
    """``wav(path, rate=16000, channels=2)`` writes a WAV file of that shape."""
    return write_wav


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def greeting_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Operators' greetings converted at load go to a per-session cache, never ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "greeting-cache"
    monkeypatch.setattr("consentd.policy.DEFAULT_GREETING_CACHE", cache)
    return cache


@pytest.fixture(autouse=True)
def structlog_defaults() -> Iterator[None]:
    """A test that ran the CLI leaves structlog configured with cached loggers, and
    ``structlog.testing.capture_logs`` in a later test then hears nothing."""
    yield
    structlog.reset_defaults()

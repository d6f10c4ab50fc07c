"""Shared vocabulary of the call-flow tests: a fixed clock and views of a command list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consentd.call_flow import Call, handle, new_call
from consentd.call_model import (
    Answered,
    CallArrived,
    CallFacts,
    Command,
    DtmfReceived,
    PlaybackFinished,
    WriteLedger,
)

T0 = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)
CHANNEL = "1764432000.17"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def arrived(call_facts: CallFacts) -> Call:
    """A call that arrived and whose answer Asterisk confirmed."""
    call, _ = handle(new_call(call_facts), CallArrived(T0))
    call, _ = handle(call, Answered(T0))
    return call


def greeted(call_facts: CallFacts, seconds: float = 4.4) -> Call:
    """Arrived, answered, and the consent greeting played to its end."""
    call = arrived(call_facts)
    assert call.greeting_playback is not None
    call, _ = handle(call, PlaybackFinished(call.greeting_playback, at(seconds)))
    return call


def press(call: Call, digit: str, seconds: float = 2.0) -> tuple[Call, list[Command]]:
    return handle(call, DtmfReceived(digit, at(seconds), duration_ms=120))


def ledger(commands: list[Command]) -> list[WriteLedger]:
    return [c for c in commands if isinstance(c, WriteLedger)]


def actions(commands: list[Command]) -> list[Command]:
    """Everything except ledger writes: what Asterisk is asked to do."""
    return [c for c in commands if not isinstance(c, WriteLedger)]


def kinds(commands: list[Command]) -> list[str]:
    return [w.kind for w in ledger(commands)]

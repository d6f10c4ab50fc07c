"""Shared vocabulary of the call-flow tests: a fixed clock and views of a command list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from consentd.call_flow import Call, handle, new_call
from consentd.call_model import (
    Answered,
    CallArrived,
    CallFacts,
    Command,
    Direction,
    DtmfReceived,
    PlaybackFinished,
    WriteLedger,
)
from consentd.greetings import GreetingLibrary
from consentd.policy import GreetingKind, PolicyBook

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


def routed_facts(book: PolicyBook, library: GreetingLibrary, did: str) -> CallFacts:
    """An inbound call's facts as the dispatcher builds them for ``did``: its policy,
    greetings, group, menus and groups from ``book`` and ``library``."""
    policy = book.lookup(did).policy
    announcement, voicemail = library.routed_greetings(policy)
    return CallFacts(
        call_id=f"pbx1:{CHANNEL}",
        node="pbx1",
        channel_id=CHANNEL,
        did=did,
        caller="+4917612345678",
        direction=Direction.INBOUND,
        policy=policy,
        policy_source="number",
        greeting=library.consent_greeting(policy),
        recording_dir="/var/spool/asterisk/monitor",
        group=book.group_of(policy),
        announcement=announcement,
        voicemail_greeting=voicemail,
        menus=library.menu_plans(book, policy.language) if policy.menu else {},
        groups=book.config.groups,
        wait_greeting=library.optional(policy, GreetingKind.WAIT),
        hold_greeting=library.optional(policy, GreetingKind.HOLD),
    )


def run(call: Call, *events: Any) -> tuple[Call, list[Command]]:
    """Handle ``events`` in order; all their commands."""
    commands: list[Command] = []
    for event in events:
        call, more = handle(call, event)
        commands += more
    return call, commands

"""A call consentd finds already running (after a restart or a reconnect), rebuilt from its ledger.

The ledger is the memory that survives the process: the consent decision, each
recording segment and its MixMonitor id, what was refused but not yet
deleted, and how far the call got. ``rebuild`` turns a call's ledger rows back
into the state the flow had, so the call keeps its id and its numbering and
is never greeted or recorded twice; the flow's ``Adopted`` transition then
reconciles that state with what Asterisk reports now. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from consentd.call_flow import CONSENT, MENU_INVALID, MENU_PROMPT, Call
from consentd.call_model import CallFacts, ConsentAction, Phase, Segment
from consentd.ledger import LedgerEvent
from consentd.policy import Recording

#: The kinds that say where a call is, latest wins.
_PHASE_OF = {
    "greeting_finished": None,  # decided below: it depends on which greeting
    "queue_joined": Phase.QUEUED,
    "agent_connected": Phase.CONNECTED,
    "voicemail_started": Phase.VOICEMAIL,
    "call_unserved": Phase.UNSERVED,
    "call_ended": Phase.ENDED,
}


def rebuild(facts: CallFacts, events: Sequence[LedgerEvent]) -> Call:
    """The call as the ledger knows it. ``events`` are one call's rows, any order."""
    ordered = sorted(events, key=lambda e: e.seq)
    call = Call(facts=_facts_as_started(facts, ordered))
    segments: dict[int, dict[str, Any]] = {}
    phase = Phase.GREETING
    consent_greeting_done = False
    for event in ordered:
        data = event.data
        if event.kind == "consent_decided":
            call = replace(call, decision=ConsentAction(data["action"]))
        elif event.kind == "consent_notice_failed":
            # Never told, never recorded: no later key, answer or restart changes that.
            call = replace(call, decision=ConsentAction.NOTICE_FAILED)
        elif event.kind.startswith("recording_") and "segment" in data:
            segment = segments.setdefault(int(data["segment"]), {"file": data.get("file")})
            segment[event.kind] = data
            if event.kind == "recording_started":
                segment["started_at"] = event.occurred_at
        elif event.kind == "greeting_finished" and str(data.get("playback_id", "")).endswith(
            f"-{CONSENT}"
        ):
            consent_greeting_done = True
        if (
            event.kind == "greeting_finished"
            and data.get("state") != "failed"
            and call.carries_notice(str(data.get("playback_id", "")))
        ):
            call = replace(call, notice_heard=True)
        elif event.kind == "voicemail_finished":
            call = replace(call, voicemail_active=False)
        if event.kind == "voicemail_started":
            call = replace(call, voicemail_active=True)
        if event.kind == "agent_connected":
            call = replace(call, agent_answered=True, agent=data.get("agent") or None)
        if event.kind in ("recording_paused", "recording_resumed"):
            # A muted MixMonitor stays muted across our restart: so does the pause.
            call = replace(call, paused=event.kind == "recording_paused")
        if _PHASE_OF.get(event.kind) is not None:
            phase = _PHASE_OF[event.kind]  # type: ignore[assignment]
        if event.kind == "call_unserved":
            call = replace(call, unserved=str(data.get("reason", "")))
        if event.kind == "greeting_played":
            call = replace(call, menu_plays=max(call.menu_plays, _menu_play(data)))
        if event.kind == "routed":
            call, phase = _routed(call, data, phase)
        if event.kind == "recording_started" and data.get("bridged_only"):
            number = int(data["segment"])
            if number not in call.bridged_segments:
                call = replace(call, bridged_segments=(*call.bridged_segments, number))
    if (
        phase is Phase.GREETING
        and consent_greeting_done
        and call.facts.group is None
        and not call.routed
    ):
        phase = Phase.HOLDING
    open_segment, owed = _segments(facts, call, segments)
    return replace(
        call,
        phase=phase,
        next_seq=max((e.seq for e in ordered), default=-1) + 1,
        last_row_at=max((e.occurred_at for e in ordered), default=None),
        segments_opened=max(segments, default=0),
        recording=open_segment,
        owed_deletions=owed,
        pending_greetings=(),
    )


def _menu_play(data: dict[str, Any]) -> int:
    """The number of a menu prompt's playback id (…-ivr-3 is 3); 0 for other greetings."""
    prefix, _, number = str(data.get("playback_id", "")).rpartition("-")
    is_menu = prefix.endswith(("-" + MENU_PROMPT.rstrip("-"), "-" + MENU_INVALID.rstrip("-")))
    return int(number) if is_menu and number.isdigit() else 0


def _routed(call: Call, data: dict[str, Any], phase: Phase) -> tuple[Call, Phase]:
    """Where a ``routed`` row sent the call: a menu, the dialplan, a group, voicemail."""
    call = replace(call, routed=True, menu=None)
    match data.get("to"):
        case "ivr":
            return replace(call, menu=str(data.get("ivr"))), Phase.IVR
        case "dialplan":
            return call, Phase.DIALPLAN
        case "group":
            group = call.facts.groups.get(str(data.get("group")))
            if group is not None:
                call = replace(call, facts=replace(call.facts, group=group))
            return call, Phase.GREETING
        case "voicemail":
            return call, Phase.VOICEMAIL
    return call, phase


def _facts_as_started(facts: CallFacts, events: Sequence[LedgerEvent]) -> CallFacts:
    """A call keeps the policy it started with, even if the file changed since."""
    started = next((e for e in events if e.kind == "call_started"), None)
    if started is None:
        return facts
    recording = started.data.get("policy")
    if recording and recording != facts.policy.recording.value:
        return replace(
            facts, policy=facts.policy.model_copy(update={"recording": Recording(recording)})
        )
    return facts


def _segments(
    facts: CallFacts, call: Call, segments: dict[int, dict[str, Any]]
) -> tuple[Segment | None, tuple[Segment, ...]]:
    """The segment still recording, and the refused ones whose deletion is owed."""
    open_segment = None
    owed = []
    refused = call.deletes_captured
    for number, rows in sorted(segments.items()):
        started = rows.get("recording_started")
        file = str(rows.get("file") or facts.recording_file(number))
        segment = Segment(
            number,
            file,
            mixmonitor_id=(started or {}).get("mixmonitor_id") or None,
            started_at=rows.get("started_at"),
        )
        if "recording_stopped" not in rows and started is not None:
            open_segment = segment
        elif refused and "recording_deleted" not in rows:
            owed.append(segment)
    return open_segment, tuple(owed)

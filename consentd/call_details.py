"""Per-call details (the "ticket" view), derived from the ledger alone.

The summary is computed, never stored, so it can't drift from the events that
prove it. Field names follow the Zendesk Talk call object where one exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from consentd.ledger import LedgerEvent, LedgerStore


@dataclass
class _SegmentSpan:
    number: int
    file: str
    path: str
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    deleted: bool = False


def summarize(events: Iterable[LedgerEvent], now: datetime) -> dict[str, Any] | None:
    """Details of one call; ``now`` bounds calls still in progress. None without a start."""
    ordered = sorted(events, key=lambda e: e.seq)
    start = next((e for e in ordered if e.kind == "call_started"), None)
    if start is None:
        return None
    end = next((e for e in ordered if e.kind == "call_ended"), None)
    decision = next((e for e in ordered if e.kind == "consent_decided"), None)
    segments: dict[int, _SegmentSpan] = {}
    for event in ordered:
        if not event.kind.startswith("recording_") or "segment" not in event.data:
            continue
        span = segments.setdefault(
            event.data["segment"],
            _SegmentSpan(event.data["segment"], event.data["file"], event.data["path"]),
        )
        if event.kind == "recording_started":
            span.started_at = event.occurred_at
        elif event.kind == "recording_stopped":
            span.stopped_at = event.occurred_at
        elif event.kind == "recording_deleted":
            span.deleted = True

    until = end.occurred_at if end else now
    kept = [s for s in segments.values() if s.started_at is not None and not s.deleted]
    recorded = sum(
        max(0.0, ((s.stopped_at or until) - s.started_at).total_seconds())
        for s in kept
        if s.started_at is not None
    )
    total = max(0.0, (until - start.occurred_at).total_seconds())
    recording_time = round(recorded)
    facts = start.data
    return {
        "id": start.call_id,
        "node": start.node,
        "phone_number": facts["did"],
        "caller": facts["caller"],
        "direction": facts["direction"],
        "line": facts["line"],
        "policy_source": facts["policy_source"],
        "call_recording_consent": facts["policy"],
        "call_recording_consent_action": decision.data["action"] if decision else None,
        "call_recording_consent_keypress": decision.data["digit"] if decision else None,
        "recording_time": recording_time,
        "not_recording_time": max(0, round(total) - recording_time),
        "recording_control_interactions": 0,
        "recordings": [s.path for s in sorted(kept, key=lambda s: s.number)],
        "segments": [
            {
                "segment": s.number,
                "file": s.path,
                "started_at": _iso(s.started_at),
                "stopped_at": _iso(s.stopped_at),
                "kept": not s.deleted,
            }
            for s in sorted(segments.values(), key=lambda s: s.number)
        ],
        "keypresses": [
            {"digit": e.data["digit"], "at": _iso(e.occurred_at), "decides": e.data["decides"]}
            for e in ordered
            if e.kind == "keypress"
        ],
        "started_at": _iso(start.occurred_at),
        "ended_at": _iso(end.occurred_at) if end else None,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def recent_calls(store: LedgerStore, limit: int, now: datetime) -> list[dict[str, Any]]:
    """Details of the ``limit`` most recently started calls, newest first."""
    call_ids = await store.recent_call_ids(limit)
    by_call: dict[str, list[LedgerEvent]] = {}
    for event in await store.events_of(call_ids):
        by_call.setdefault(event.call_id, []).append(event)
    details = (summarize(by_call.get(call_id, []), now) for call_id in call_ids)
    return [d for d in details if d is not None]

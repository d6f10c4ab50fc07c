"""Per-call details (the "ticket" view), derived from the ledger alone.

The summary is computed, never stored, so it can't drift from the events that
prove it. Field names follow the Zendesk Talk call object where one exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from consentd.ledger import LedgerEvent, LedgerStore, rows_by_call

#: The rows that set a call's consent outcome (the latest stands): the caller's
#: key, or a consent notice Asterisk could not play.
OUTCOME_KINDS = frozenset({"consent_decided", "consent_notice_failed"})

#: The rows that tell a recording segment's life (pauses are accounted apart).
_SEGMENT_KINDS = ("recording_started", "recording_stopped", "recording_deleted")


def location(node: str, file: str) -> str:
    """Where a recording lives, whichever host consentd runs on: the node (the PBX
    whose Asterisk wrote it) and the path as that Asterisk sees it."""
    return f"asterisk://{node}/{file.lstrip('/')}"


@dataclass
class _SegmentSpan:
    number: int
    #: As Asterisk names it, and where consentd saw it (under CONSENTD_ASTERISK_ROOT).
    file: str
    path: str
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    deleted: bool = False
    bridged_only: bool = False


def summarize(events: Iterable[LedgerEvent], now: datetime) -> dict[str, Any] | None:
    """Details of one call; ``now`` bounds calls still in progress. None without a start."""
    ordered = sorted(events, key=lambda e: e.seq)
    start = next((e for e in ordered if e.kind == "call_started"), None)
    if start is None:
        return None
    end = next((e for e in ordered if e.kind == "call_ended"), None)
    # The latest decision stands: a withdrawal (caller_withdrew) follows a consent.
    # A consent notice Asterisk could not play is the outcome notice_failed (no key).
    decision = next((e for e in reversed(ordered) if e.kind in OUTCOME_KINDS), None)
    segments = _segments(ordered)
    until = end.occurred_at if end else now
    first = {e.kind: e for e in reversed(ordered)}  # the first row of each kind
    connected = first.get("agent_connected")
    bridge = _bridge(first, until)
    # A bridged-only recording of a call that never reached an agent holds no audio.
    kept = [
        s
        for s in segments.values()
        if s.started_at is not None and not s.deleted and (bridge or not s.bridged_only)
    ]
    voicemail = _voicemail(ordered, until)
    recorded_spans = _recorded(
        segments, bridge, voicemail, _paused(ordered, until), start.occurred_at, until
    )
    recorded = sum((stop - begin).total_seconds() for begin, stop in recorded_spans)
    total = max(0.0, (until - start.occurred_at).total_seconds())
    recording_time = min(round(recorded), round(total))
    waited, talked = _wait_and_talk(_waiting_since(ordered, first), bridge, until)
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
        "call_recording_consent_keypress": decision.data.get("digit") if decision else None,
        "recording_time": recording_time,
        "not_recording_time": max(0, round(total) - recording_time),
        "recording_segments": [
            {"start": _iso(begin), "end": _iso(stop)} for begin, stop in recorded_spans
        ],
        "wait_time": waited,
        "talk_time": talked,
        "recording_control_interactions": sum(
            1 for e in ordered if e.kind in ("recording_paused", "recording_resumed")
        ),
        "recordings": [s.path for s in sorted(kept, key=lambda s: s.number)]
        + ([voicemail[0]] if voicemail else []),
        # The same files, in the same order, as asterisk://NODE/PATH-ON-ASTERISK.
        "recording_locations": [
            location(start.node, s.file) for s in sorted(kept, key=lambda s: s.number)
        ]
        + ([location(start.node, voicemail[2])] if voicemail else []),
        "group": facts.get("group"),
        "queue": facts.get("queue"),
        "agent": connected.data["agent"] if connected else facts.get("agent"),
        "callee": facts.get("callee"),
        "answered_at": _iso(connected.occurred_at) if connected else None,
        "queue_time": connected.data.get("queue_time") if connected else None,
        # app_queue reports a queue timeout as an abandon too; only a hangup in the queue is one.
        "abandoned": connected is None
        and any(e.kind == "queue_abandoned" for e in ordered)
        and not any(e.kind == "queue_left" for e in ordered),
        "voicemail": voicemail is not None,
        "segments": [
            {
                "segment": s.number,
                "file": s.path,
                "location": location(start.node, s.file),
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
        # Handled by the dialplan alone while no consentd was connected (fallback_calls.py).
        "consentd_unavailable": bool(facts.get("consentd_unavailable")),
        "fallback": _fallback(facts, end) if facts.get("consentd_unavailable") else None,
    }


Span = tuple[datetime, datetime]


def recorded_spans(events: Iterable[LedgerEvent], now: datetime) -> list[Span]:
    """The call's kept recorded time, exactly as ``summarize`` lists it in
    ``recording_segments`` (the timeline's recorded spans are these)."""
    ordered = sorted(events, key=lambda e: e.seq)
    start = next((e for e in ordered if e.kind == "call_started"), None)
    if start is None:
        return []
    end = next((e for e in ordered if e.kind == "call_ended"), None)
    until = end.occurred_at if end else now
    first = {e.kind: e for e in reversed(ordered)}
    return _recorded(
        _segments(ordered),
        _bridge(first, until),
        _voicemail(ordered, until),
        _paused(ordered, until),
        start.occurred_at,
        until,
    )


def _segments(ordered: list[LedgerEvent]) -> dict[int, _SegmentSpan]:
    segments: dict[int, _SegmentSpan] = {}
    for event in ordered:
        if event.kind not in _SEGMENT_KINDS or "segment" not in event.data:
            continue
        span = segments.setdefault(
            event.data["segment"],
            _SegmentSpan(event.data["segment"], event.data["file"], event.data["path"]),
        )
        span.bridged_only = bool(event.data.get("bridged_only"))
        if event.kind == "recording_started":
            span.started_at = event.occurred_at
        elif event.kind == "recording_stopped":
            span.stopped_at = event.occurred_at
        elif event.kind == "recording_deleted":
            span.deleted = True
    return segments


def _recorded(
    segments: dict[int, _SegmentSpan],
    bridge: Span | None,
    voicemail: tuple[str, Span, str] | None,
    pauses: list[Span],
    start: datetime,
    until: datetime,
) -> list[Span]:
    """Kept recorded time within the call: segments (bridged-only ones while bridged)
    and the voicemail message, overlaps once, an agent's pauses cut out. A stop that
    lands after the hangup (it was under way) counts to the hangup: the channel is gone."""
    spans = [
        held
        for s in segments.values()
        if not s.deleted and (held := _recorded_span(s, until, bridge)) is not None
    ]
    if voicemail is not None:
        spans.append(voicemail[1])
    # Overlaps (a consented recording goes on while the voicemail is taken) count
    # once; an agent's pause is not recorded time, whatever the file keeps.
    clipped = [(max(b, start), min(e, until)) for b, e in _without(_merged(spans), pauses)]
    return [(b, e) for b, e in clipped if e > b]


def _fallback(facts: dict[str, Any], end: LedgerEvent | None) -> dict[str, Any]:
    """What the dialplan's fallback log said of the call, as it said it."""
    return {
        "branch": facts.get("fallback"),
        "uniqueid": facts.get("uniqueid"),
        "linkedid": facts.get("linkedid"),
        "mailbox": facts.get("mailbox"),
        "hangup_cause": end.data.get("hangup_cause") if end else None,
        "voicemail_status": end.data.get("voicemail_status") if end else None,
    }


def _recorded_span(
    span: _SegmentSpan, until: datetime, bridge: tuple[datetime, datetime] | None
) -> tuple[datetime, datetime] | None:
    """When a kept segment held audio: MixMonitor option b only while bridged."""
    if span.started_at is None:
        return None
    start, stop = span.started_at, span.stopped_at or until
    if span.bridged_only:
        if bridge is None:
            return None
        start, stop = max(start, bridge[0]), min(stop, bridge[1])
    return (start, stop) if stop > start else None


def _merged(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for begin, stop in sorted(spans):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((begin, stop))
    return merged


def _paused(ordered: list[LedgerEvent], until: datetime) -> list[tuple[datetime, datetime]]:
    spans: list[tuple[datetime, datetime]] = []
    paused_at: datetime | None = None
    for event in ordered:
        if event.kind == "recording_paused" and paused_at is None:
            paused_at = event.occurred_at
        elif event.kind == "recording_resumed" and paused_at is not None:
            spans.append((paused_at, event.occurred_at))
            paused_at = None
    if paused_at is not None:
        spans.append((paused_at, until))
    return spans


def _without(
    spans: list[tuple[datetime, datetime]], holes: list[tuple[datetime, datetime]]
) -> list[tuple[datetime, datetime]]:
    """``spans`` with every ``holes`` interval cut out; a hole that ends before it starts
    (a resume stamped by a clock a little behind the pause's) cuts nothing."""
    for hole_start, hole_end in holes:
        if hole_end <= hole_start:
            continue
        kept = []
        for begin, stop in spans:
            if stop <= hole_start or begin >= hole_end:
                kept.append((begin, stop))
                continue
            if begin < hole_start:
                kept.append((begin, hole_start))
            if stop > hole_end:
                kept.append((hole_end, stop))
        spans = kept
    return spans


def _bridge(first: dict[str, LedgerEvent], until: datetime) -> tuple[datetime, datetime] | None:
    """When the caller talked to someone: the queue's agent, or (after a hand-off to
    the dialplan, or an agent's outbound call) the callee. MixMonitor option b
    records only then."""
    for begin, stop in (
        ("agent_connected", "agent_completed"),
        ("callee_answered", "callee_left"),
    ):
        if begin in first:
            ended = first.get(stop)
            return first[begin].occurred_at, ended.occurred_at if ended else until
    return None


def _waiting_since(ordered: list[LedgerEvent], first: dict[str, LedgerEvent]) -> datetime | None:
    """When the call began waiting for someone: joined the queue, or was dialled on."""
    waiting = first.get("queue_joined") or next(
        (
            e
            for e in ordered
            if (e.kind == "routed" and e.data.get("to") == "dialplan")
            or e.kind == "outbound_dialled"
        ),
        None,
    )
    return waiting.occurred_at if waiting else None


def _wait_and_talk(
    waiting: datetime | None, bridge: tuple[datetime, datetime] | None, until: datetime
) -> tuple[int | None, int | None]:
    """Seconds waiting (in the queue, or ringing after a hand-off) and talking after the answer.

    None where the call never waited for anyone (held by consentd, voicemail only).
    """
    if waiting is None:
        return None, None
    answer_at = bridge[0] if bridge else until
    waited = round(max(0.0, (answer_at - waiting).total_seconds()))
    if bridge is None:
        return waited, 0
    return waited, round(max(0.0, (bridge[1] - bridge[0]).total_seconds()))


def voicemail_left(
    ordered: Sequence[LedgerEvent],
) -> tuple[LedgerEvent, LedgerEvent | None] | None:
    """The ``voicemail_started`` and (if any) ``voicemail_finished`` rows of a message
    that has a file, rows in ledger order.

    None when the call took no voicemail, or took one that holds nothing: consentd
    deleted the file as empty after the hangup (``empty_file_deleted``), or Asterisk
    never wrote one. A caller who hangs up during the beep ends ARI's recording
    before its file is opened; its ``RecordingFinished`` then carries no duration
    (res_stasis_recording.c gives one only once the recording ran).
    """
    started = next((e for e in ordered if e.kind == "voicemail_started"), None)
    if started is None:
        return None
    file = started.data.get("file")
    if any(e.kind == "empty_file_deleted" and e.data.get("file") == file for e in ordered):
        return None
    finished = next((e for e in ordered if e.kind == "voicemail_finished"), None)
    if (
        finished is not None
        and finished.data.get("state") not in (None, "hangup")
        and finished.data.get("duration") is None
    ):
        return None  # ARI's own end, without a duration: nothing was written
    return started, finished


def _voicemail(
    ordered: list[LedgerEvent], until: datetime
) -> tuple[str, tuple[datetime, datetime], str] | None:
    """(host path, (start, end), path on Asterisk) of the voicemail message, if the
    caller left one."""
    left = voicemail_left(ordered)
    if left is None:
        return None
    started, finished = left
    stop = finished.occurred_at if finished else until
    span = (started.occurred_at, max(stop, started.occurred_at))
    return started.data["path"], span, str(started.data.get("file") or started.data["path"])


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def recent_calls(store: LedgerStore, limit: int, now: datetime) -> list[dict[str, Any]]:
    """Details of the ``limit`` most recently started calls, newest first."""
    call_ids = await store.recent_call_ids(limit)
    by_call = rows_by_call(await store.events_of(call_ids))
    details = (summarize(by_call.get(call_id, []), now) for call_id in call_ids)
    return [d for d in details if d is not None]

"""One call's life as spans on two lanes, derived from its ledger rows alone (pure).

``GET /api/calls/{id}`` serves it as ``timeline``, and the dashboard draws it. Each span
is ``{"lane", "kind", "start", "end", "start_s", "end_s"}`` (ISO 8601 UTC, and float
seconds from the call's start), all spans of both lanes ordered by start.

- **call** lane: where the caller was. ``greeting`` (with ``cut_short``: a 3 stopped
  the consent greeting), ``ivr`` (menus, their prompts and the waits for a key),
  ``queue``, ``ringing`` (a hand-off to the dialplan, or an agent's outbound call,
  until the callee answers), ``talking`` (bridged to the agent or the callee),
  ``voicemail`` (its greeting and the message), ``hold`` (consentd holds an unrouted
  call after its greetings until the hangup). Spans never overlap; moments the ledger
  does not account for (answering, the hand-over into the queue) are left out.
- **recording** lane: ``recorded``, ``paused`` (an agent paused the recording, until
  the resume, the caller's refusal or the end) and ``not_recorded``. It covers the
  call from its start to its end (or ``now``) without gaps or overlaps, and its
  recorded spans are exactly ``recording_segments`` of ``consentd.call_details``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from consentd.call_details import Span, recorded_spans
from consentd.ledger import LedgerEvent

CALL_KINDS = ("greeting", "ivr", "queue", "ringing", "talking", "voicemail", "hold")
RECORDING_KINDS = ("recorded", "paused", "not_recorded")

#: Not drawn: between two phases (a greeting ended, the next one not begun yet).
_IDLE = "idle"

#: Rows that show the call went anywhere but consentd's hold.
_NOT_HELD = frozenset(
    {
        "routed",
        "queue_joined",
        "queue_left",
        "agent_connected",
        "outbound_dialled",
        "callee_answered",
        "voicemail_started",
        "call_unserved",
        "call_refused",
    }
)

#: Decisions that end an agent's pause: nothing is recorded after them anyway.
_REFUSALS = frozenset({"caller_opted_out", "caller_withdrew"})


def timeline(events: Iterable[LedgerEvent], now: datetime) -> list[dict[str, Any]]:
    """The spans of one call; ``now`` bounds a call in progress. [] without a start."""
    ordered = sorted(events, key=lambda e: e.seq)
    started = next((e for e in ordered if e.kind == "call_started"), None)
    if started is None:
        return []
    ended = next((e for e in ordered if e.kind == "call_ended"), None)
    start = started.occurred_at
    until = max(start, ended.occurred_at if ended else now)
    spans = _call_lane(ordered, started, start, until) + _recording_lane(ordered, start, until, now)
    lanes = {"call": 0, "recording": 1}
    spans.sort(key=lambda s: (s["start_s"], lanes[s["lane"]], s["end_s"]))
    return spans


def _span(
    lane: str, kind: str, begin: datetime, end: datetime, start: datetime, **extra: Any
) -> dict[str, Any]:
    return {
        "lane": lane,
        "kind": kind,
        "start": _iso(begin),
        "end": _iso(end),
        "start_s": (begin - start).total_seconds(),
        "end_s": (end - start).total_seconds(),
        **extra,
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


# ---------------------------------------------------------------- the call lane


class _CallLane:
    """Walks the rows in ledger order; each phase runs until the next one begins."""

    def __init__(self, start: datetime, until: datetime) -> None:
        self.start = start
        self.until = until
        self.state = _IDLE
        self.since = start
        self.cut_short = False
        self.consent_greeting = False
        self.spans: list[dict[str, Any]] = []

    def at(self, moment: datetime) -> datetime:
        """Clamped into the call and never before the phase it ends (clocks of ARI,
        AMI and the daemon differ by milliseconds)."""
        return min(max(moment, self.since), self.until)

    def switch(self, state: str, moment: datetime, *, consent_greeting: bool = False) -> None:
        moment = self.at(moment)
        self.close(moment)
        self.state, self.since = state, moment
        self.cut_short, self.consent_greeting = False, consent_greeting

    def close(self, moment: datetime) -> None:
        if self.state == _IDLE or moment <= self.since:
            return
        extra = {"cut_short": self.cut_short} if self.state == "greeting" else {}
        self.spans.append(_span("call", self.state, self.since, moment, self.start, **extra))


def _call_lane(
    ordered: list[LedgerEvent], started: LedgerEvent, start: datetime, until: datetime
) -> list[dict[str, Any]]:
    lane = _CallLane(start, until)
    prefix = f"{started.data.get('channel_id', '')}-"
    for event in ordered:
        kind, data, moment = event.kind, event.data, event.occurred_at
        if kind == "call_ended":
            break
        if kind == "greeting_played":
            suffix = str(data.get("playback_id", "")).removeprefix(prefix)
            what = _greeting_kind(suffix, str(data.get("kind", "")))
            if what == "greeting":
                lane.switch("greeting", moment, consent_greeting=suffix == "greeting")
            elif lane.state != what:
                lane.switch(what, moment)
        elif kind == "greeting_finished" and lane.state == "greeting":
            lane.switch(_IDLE, moment)
        elif kind == "consent_decided" and lane.state == "greeting" and lane.consent_greeting:
            lane.cut_short = True  # the flow stops the consent greeting on the first 3
        elif kind == "routed":
            target = data.get("to")
            phase = {"ivr": "ivr", "dialplan": "ringing", "voicemail": "voicemail"}
            if target in phase and lane.state != phase[str(target)]:
                lane.switch(phase[str(target)], moment)
            elif target not in phase:
                lane.switch(_IDLE, moment)  # a group (its greetings follow) or a hangup
        elif kind == "queue_joined":
            lane.switch("queue", moment)
        elif kind in ("agent_connected", "callee_answered"):
            lane.switch("talking", moment)
        elif kind in ("outbound_dialled", "callee_left"):
            lane.switch("ringing", moment)
        elif kind == "agent_completed" and lane.state == "talking":
            lane.switch(_IDLE, moment)
        elif kind in ("queue_abandoned", "queue_left") and lane.state == "queue":
            lane.switch(_IDLE, moment)
        elif kind == "voicemail_started" and lane.state != "voicemail":
            lane.switch("voicemail", moment)
        elif kind in ("voicemail_finished", "no_answer_hangup", "call_unserved", "call_refused"):
            lane.switch(_IDLE, moment)
    if lane.state == _IDLE and _held(ordered, started):
        lane.switch("hold", lane.since)
    lane.close(until)
    return lane.spans


def _greeting_kind(suffix: str, kind: str) -> str:
    """What a played prompt belongs to: an IVR menu, the voicemail, or a greeting.

    The playback id's suffix says it (consentd/call_flow.py numbers menu prompts
    ``ivr-N`` and ``invalid-N``); the media's kind is the fallback."""
    if suffix.startswith(("ivr-", "invalid-")) or kind in ("ivr", "ivr_invalid"):
        return "ivr"
    if suffix == "voicemail" or kind == "voicemail":
        return "voicemail"
    return "greeting"


def _held(ordered: list[LedgerEvent], started: LedgerEvent) -> bool:
    """consentd held the call after its greetings: an inbound call with no route."""
    data = started.data
    return (
        data.get("direction", "inbound") == "inbound"
        and not any(data.get(key) for key in ("group", "queue", "ivr"))
        and not any(e.kind in _NOT_HELD for e in ordered)
    )


# ---------------------------------------------------------------- the recording lane


def _recording_lane(
    ordered: list[LedgerEvent], start: datetime, until: datetime, now: datetime
) -> list[dict[str, Any]]:
    recorded = recorded_spans(ordered, now)
    paused = _cut(_paused(ordered, start, until), recorded)
    marked = sorted(
        [(b, e, "recorded") for b, e in recorded] + [(b, e, "paused") for b, e in paused]
    )
    spans = []
    cursor = start
    for begin, end, kind in marked:
        if begin > cursor:
            spans.append(_span("recording", "not_recorded", cursor, begin, start))
        spans.append(_span("recording", kind, begin, end, start))
        cursor = end
    if until > cursor:
        spans.append(_span("recording", "not_recorded", cursor, until, start))
    return spans


def _paused(ordered: list[LedgerEvent], start: datetime, until: datetime) -> list[Span]:
    """An agent's pauses, from the pause to the resume, the caller's refusal or the end."""
    spans: list[Span] = []
    since: datetime | None = None
    for event in ordered:
        kind = event.kind
        if kind == "recording_paused" and since is None:
            since = event.occurred_at
        elif since is not None and (
            kind in ("recording_resumed", "call_ended")
            or (kind == "consent_decided" and event.data.get("action") in _REFUSALS)
        ):
            spans.append((since, event.occurred_at))
            since = None
    if since is not None:
        spans.append((since, until))
    clipped = [(max(b, start), min(e, until)) for b, e in spans]
    return _merged([(b, e) for b, e in clipped if e > b])


def _merged(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for begin, end in sorted(spans):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def _cut(spans: list[Span], holes: list[Span]) -> list[Span]:
    """``spans`` without the ``holes`` (recorded time is never also paused)."""
    for hole_begin, hole_end in holes:
        kept: list[Span] = []
        for begin, end in spans:
            if end <= hole_begin or begin >= hole_end:
                kept.append((begin, end))
                continue
            if begin < hole_begin:
                kept.append((begin, hole_begin))
            if end > hole_end:
                kept.append((hole_end, end))
        spans = kept
    return spans

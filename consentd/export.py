"""Reports from the ledger, as pure functions: the Zendesk-compatible call record, the
incremental export's paging, the per-agent report, their parameters and CSV.

Nothing here does I/O. ``consentd/reports_pg.py`` reads the ledger and calls these;
``consentd/http_reports.py`` serves them.

The export pages by whole seconds of ``updated_at`` (when the ledger last learned
something about the call). A page never splits a second: it ends before the
first second it could not take whole, and when a single second holds more calls
than ``per_page`` the page is that whole second. So ``end_time`` (epoch seconds)
is exact: asking again with ``start_time=end_time`` neither skips nor repeats a
call, and ``next_page`` is nothing but that request.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from consentd.ledger import LedgerEvent

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_PER_PAGE = 1000

#: The hosted product's call fields, in its order; consentd's own follow them.
ZENDESK_FIELDS = (
    "id",
    "created_at",
    "updated_at",
    "direction",
    "phone_number",
    "duration",
    "wait_time",
    "talk_time",
    "hold_time",
    "time_to_answer",
    "agent_id",
    "call_group_id",
    "voicemail",
    "completion_status",
    "ivr_action",
    "ivr_hops",
    "ivr_routed_to",
    "ivr_time_spent",
    "exceeded_queue_wait_time",
    "call_recording_consent",
    "call_recording_consent_action",
    "call_recording_consent_keypress",
    "recording_control_interactions",
    "recording_time",
    "not_recording_time",
)
CONSENTD_FIELDS = (
    "call_id",
    "node",
    "caller",
    "callee",
    "agent_name",
    "group",
    "queue",
    "policy_source",
    "line",
    "started_at",
    "ended_at",
    "answered_at",
    "abandoned",
    "consentd_unavailable",
    "recording_segments",
)
CALL_FIELDS = ZENDESK_FIELDS + CONSENTD_FIELDS

#: ``routed`` rows' targets, as the hosted product names an IVR's action.
_IVR_ACTIONS = {
    "group": "group",
    "voicemail": "voicemail",
    "dialplan": "phone_number",
    "ivr": "menu",
    "hangup": "hangup",
}


class BadParameter(ValueError):
    """A request parameter that cannot be used; the message names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


# ---------------------------------------------------------------- time


def epoch_seconds(moment: datetime) -> int:
    """Whole seconds since the epoch, rounded down (exact: no float in between)."""
    return (moment - EPOCH) // timedelta(seconds=1)


def from_epoch(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


def zendesk_time(moment: datetime | None) -> str | None:
    """The hosted product's timestamps: ISO 8601, UTC, whole seconds, ``Z``."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- parameters


def parse_start_time(raw: str | None, now: datetime) -> int:
    """``start_time``: epoch seconds, an integer from 0 to now; missing means 0."""
    if raw is None:
        return 0
    text = raw.strip()
    if text.startswith("-") and text[1:].isdigit():
        raise BadParameter("start_time", f"start_time must not be negative, got {raw!r}")
    if not text.isascii() or not text.isdigit():
        raise BadParameter(
            "start_time", f"start_time must be an integer (epoch seconds), got {raw!r}"
        )
    value = int(text)
    if value > epoch_seconds(now):
        raise BadParameter(
            "start_time",
            f"start_time {value} is in the future (now is {epoch_seconds(now)})",
        )
    return value


def parse_per_page(raw: str | None) -> int:
    """``per_page``: an integer 1..1000; missing means 1000."""
    if raw is None:
        return MAX_PER_PAGE
    text = raw.strip()
    if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_PER_PAGE:
        return int(text)
    raise BadParameter(
        "per_page", f"per_page must be an integer from 1 to {MAX_PER_PAGE}, got {raw!r}"
    )


def parse_format(raw: str | None) -> str:
    """``format``: ``json`` (the default) or ``csv``."""
    if raw is None or raw == "json":
        return "json"
    if raw == "csv":
        return "csv"
    raise BadParameter("format", f"format must be json or csv, got {raw!r}")


def parse_moment(parameter: str, raw: str) -> datetime:
    """A point in time given as epoch seconds or ISO 8601 (a time without a zone is UTC)."""
    text = raw.strip()
    try:
        if text.isascii() and text.isdigit():
            moment: datetime | None = from_epoch(int(text))
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except (ValueError, OverflowError):
        moment = None
    if moment is None:
        raise BadParameter(parameter, f"{parameter} must be epoch seconds or ISO 8601, got {raw!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_window(
    raw_from: str | None, raw_to: str | None, now: datetime
) -> tuple[datetime, datetime]:
    """``from``/``to`` of a report: ``to`` defaults to now, ``from`` to a day before ``to``."""
    end = parse_moment("to", raw_to) if raw_to is not None else now
    start = parse_moment("from", raw_from) if raw_from is not None else end - timedelta(days=1)
    if start > end:
        raise BadParameter("from", f"from ({start.isoformat()}) is after to ({end.isoformat()})")
    return start, end


# ---------------------------------------------------------------- paging


@dataclass(frozen=True)
class Cut:
    """What of the fetched rows makes the page.

    ``keep`` rows of those fetched; or, when ``whole_second`` is set, every call of
    that second instead (one second held more calls than ``per_page``).
    """

    keep: int
    end_time: int
    end_of_stream: bool
    whole_second: int | None = None


def cut_page(seconds: Sequence[int], per_page: int, start: int, horizon: int) -> Cut:
    """Where a page ends.

    ``seconds``: the ``updated_at`` second of each call in ``[start, horizon)``, in
    order, at most ``per_page + 1`` of them (one more than a page tells whether the
    page's last second goes on). ``horizon``: the first second not yet complete
    (calls may still be written into it); nothing from it on is served yet.
    """
    if len(seconds) <= per_page:
        return Cut(len(seconds), max(start, horizon), True)
    last, following = seconds[per_page - 1], seconds[per_page]
    if following > last:
        return Cut(per_page, last + 1, False)
    whole = sum(1 for s in seconds[:per_page] if s < last)
    if whole:
        return Cut(whole, last, False)
    # One second alone holds more than a page: it is served whole, never split.
    return Cut(0, last + 1, last + 1 >= horizon, whole_second=last)


# ---------------------------------------------------------------- the call record


def call_record(
    details: Mapping[str, Any],
    events: Sequence[LedgerEvent],
    *,
    number: int,
    updated_at: datetime,
) -> dict[str, Any]:
    """One call as the hosted product's "Incremental Calls Export" has it, then consentd's
    own fields. ``details``: ``call_details.summarize`` of ``events``; ``number``: the
    call's stable integer id (its ``call_started`` row's id in the ledger)."""
    ordered = sorted(events, key=lambda e: e.seq)
    started = _moment(details.get("started_at"))
    ended = _moment(details.get("ended_at"))
    fallback = bool(details.get("consentd_unavailable"))
    answer = next((e for e in ordered if e.kind in ("agent_connected", "callee_answered")), None)
    ivr = _ivr(ordered, ended)
    queued = any(e.kind == "queue_joined" for e in ordered)
    record: dict[str, Any] = {
        "id": number,
        "created_at": zendesk_time(started),
        "updated_at": zendesk_time(updated_at),
        "direction": details.get("direction"),
        "phone_number": details.get("phone_number"),
        "duration": _seconds(started, ended),
        "wait_time": None if fallback else details.get("wait_time") or 0,
        "talk_time": None if fallback else details.get("talk_time") or 0,
        "hold_time": None,  # consentd does not see an agent's hold
        "time_to_answer": _seconds(started, answer.occurred_at) if answer else None,
        "agent_id": None,  # agents are names in consentd (``agent_name``), not numbers
        "call_group_id": None,  # likewise groups (``group``)
        "voicemail": bool(details.get("voicemail")),
        "completion_status": _completion(details, answer is not None, ivr, fallback),
        "ivr_action": ivr.action if ivr else None,
        "ivr_hops": ivr.hops if ivr else None,
        "ivr_routed_to": ivr.routed_to if ivr else None,
        "ivr_time_spent": ivr.time_spent if ivr else None,
        "exceeded_queue_wait_time": None
        if fallback
        else queued
        and any(e.kind == "queue_left" and e.data.get("status") == "TIMEOUT" for e in ordered),
        "call_recording_consent": details.get("call_recording_consent"),
        "call_recording_consent_action": details.get("call_recording_consent_action"),
        "call_recording_consent_keypress": details.get("call_recording_consent_keypress"),
        "recording_control_interactions": details.get("recording_control_interactions", 0),
        "recording_time": details.get("recording_time"),
        "not_recording_time": details.get("not_recording_time"),
        "call_id": details["id"],
        "node": details.get("node"),
        "caller": details.get("caller"),
        "callee": details.get("callee"),
        "agent_name": details.get("agent"),
        "group": details.get("group"),
        "queue": details.get("queue"),
        "policy_source": details.get("policy_source"),
        "line": details.get("line"),
        "started_at": details.get("started_at"),
        "ended_at": details.get("ended_at"),
        "answered_at": _iso(answer.occurred_at) if answer else None,
        "abandoned": bool(details.get("abandoned")),
        "consentd_unavailable": fallback,
        "recording_segments": list(details.get("recording_segments", [])),
    }
    return record


@dataclass(frozen=True)
class _Ivr:
    action: str | None
    hops: int
    routed_to: str | None
    time_spent: int | None
    left: bool


def _ivr(ordered: Sequence[LedgerEvent], ended: datetime | None) -> _Ivr | None:
    """The call's way through IVR menus: None when it never entered one."""
    routed = [e for e in ordered if e.kind == "routed"]
    entered = next((e for e in routed if e.data.get("to") == "ivr"), None)
    if entered is None:
        return None
    from_menus = [e for e in routed if str(e.data.get("source", "")).startswith("ivr:")]
    last = from_menus[-1] if from_menus else None
    left = last is not None and last.data.get("to") != "ivr"
    until = last.occurred_at if left and last is not None else ended
    return _Ivr(
        action=_IVR_ACTIONS.get(str(last.data.get("to"))) if last else None,
        hops=len(from_menus),
        routed_to=_routed_to(last.data) if last else None,
        time_spent=_seconds(entered.occurred_at, until),
        left=left,
    )


def _routed_to(data: Mapping[str, Any]) -> str | None:
    match data.get("to"):
        case "group":
            return str(data.get("group"))
        case "ivr":
            return str(data.get("ivr"))
        case "dialplan":
            return f"{data.get('context')},{data.get('extension')}"
        case "voicemail":
            return "voicemail"
    return None


def _completion(
    details: Mapping[str, Any], answered: bool, ivr: _Ivr | None, fallback: bool
) -> str | None:
    if fallback:
        return None
    if answered:
        return "completed"
    if details.get("voicemail"):
        return "voicemail"
    if details.get("abandoned"):
        return "abandoned_in_queue"
    if ivr is not None and not ivr.left:
        return "abandoned_in_ivr"
    return None


def _seconds(begin: datetime | None, end: datetime | None) -> int | None:
    if begin is None or end is None:
        return None
    return round(max(0.0, (end - begin).total_seconds()))


def _moment(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None


def _iso(value: datetime) -> str:
    return value.isoformat()


# ---------------------------------------------------------------- the agent report

#: Consent outcomes counted per agent: the call's latest decision, or none.
#: notice_failed is no decision of the caller's: the consent notice could not be
#: played (consent_notice_failed), so the call was never recorded.
OUTCOMES = (
    "caller_opted_in",
    "caller_opted_out",
    "caller_withdrew",
    "notice_failed",
    "no_decision",
)
AGENT_FIELDS = (
    "agent",
    "calls_answered",
    "calls_placed",
    "recording_control_interactions",
    "recording_time",
    "not_recording_time",
    "consent_outcomes",
)


def agent_report(calls: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per agent (by name), from call details: inbound calls answered, outbound calls
    placed, pauses and resumes, recorded and not-recorded seconds, and how the
    callers decided. Calls no agent took part in are left out. Sorted by agent."""
    rows: dict[str, dict[str, Any]] = {}
    for call in calls:
        agent = call.get("agent")
        if not agent:
            continue
        row = rows.setdefault(
            agent,
            {
                "agent": agent,
                "calls_answered": 0,
                "calls_placed": 0,
                "recording_control_interactions": 0,
                "recording_time": 0,
                "not_recording_time": 0,
                "consent_outcomes": dict.fromkeys(OUTCOMES, 0),
            },
        )
        row["calls_placed" if call.get("direction") == "outbound" else "calls_answered"] += 1
        row["recording_control_interactions"] += call.get("recording_control_interactions") or 0
        row["recording_time"] += call.get("recording_time") or 0
        row["not_recording_time"] += call.get("not_recording_time") or 0
        outcome = call.get("call_recording_consent_action") or "no_decision"
        row["consent_outcomes"][outcome if outcome in OUTCOMES else "no_decision"] += 1
    return [rows[name] for name in sorted(rows)]


# ---------------------------------------------------------------- CSV


def calls_csv(calls: Iterable[Mapping[str, Any]]) -> str:
    """The export's calls, one row each, every field a column (lists as JSON)."""
    return _csv(CALL_FIELDS, ([_cell(call.get(f)) for f in CALL_FIELDS] for call in calls))


def agents_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    header = (*AGENT_FIELDS[:-1], *OUTCOMES)
    return _csv(
        header,
        (
            [_cell(row[f]) for f in AGENT_FIELDS[:-1]]
            + [_cell(row["consent_outcomes"][o]) for o in OUTCOMES]
            for row in rows
        ),
    )


def _csv(header: Sequence[str], rows: Iterable[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)

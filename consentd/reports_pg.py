"""Reports read from the PostgreSQL ledger: the incremental export, one call, the agents.

A call's ``updated_at`` is the latest ``stored_at`` of its rows: when the ledger last
learned something about it. Paging on it, rather than on when things happened,
also finds rows that arrive late (a journal replayed after a database outage).

**The horizon.** A row's ``stored_at`` is its transaction's start (``now()``), so a
transaction still open may yet commit rows older than rows already visible. The
export serves only seconds before the horizon: the oldest start of any open
transaction in this database (``pg_stat_activity``; the ledger's writer uses
single-statement transactions) or the clock, whichever is earlier, read before
the rows are. Each second it serves is therefore complete, and paging by
``end_time`` never skips a row committed late. A session of another role, or an
idle-in-transaction session of consentd's role, holds the horizon back until it
ends: that only delays the export, it never loses a call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consentd.call_details import summarize
from consentd.export import (
    call_record,
    cut_page,
    epoch_seconds,
    from_epoch,
)
from consentd.ledger_pg import PostgresLedger, event_from_row
from consentd.timeline import timeline


@dataclass(frozen=True)
class ExportPage:
    calls: list[dict[str, Any]]
    end_time: int
    end_of_stream: bool


@dataclass(frozen=True)
class CallView:
    """One call: its export record, its details, and the ledger rows that prove them."""

    record: dict[str, Any]
    details: dict[str, Any]
    events: list[dict[str, Any]]
    #: Its spans on the call and recording lanes (consentd/timeline.py).
    timeline: list[dict[str, Any]] = field(default_factory=list)


_HORIZON = (
    "SELECT least(clock_timestamp(), (SELECT min(xact_start) FROM pg_stat_activity"
    "  WHERE datname = current_database() AND backend_type = 'client backend'"
    "  AND pid <> pg_backend_pid() AND xact_start IS NOT NULL))"
)

#: Calls (started and ended) with a row stored in [$1, $2), their updated_at and id.
_KEYS = (
    "WITH touched AS (SELECT DISTINCT call_id FROM call_events"
    "   WHERE stored_at >= $1 AND stored_at < $2)"
    " SELECT call_id, updated_at, number FROM ("
    "   SELECT e.call_id, max(e.stored_at) AS updated_at,"
    "     min(e.id) FILTER (WHERE e.kind = 'call_started') AS number"
    "   FROM call_events e JOIN touched USING (call_id) GROUP BY e.call_id"
    "   HAVING bool_or(e.kind = 'call_ended') AND bool_or(e.kind = 'call_started')) calls"
    " WHERE updated_at >= $1 AND updated_at < $2"
    " ORDER BY updated_at, call_id"
)

_ROWS = (
    "SELECT id, event_key, call_id, node, seq, kind, occurred_at, stored_at, data"
    " FROM call_events WHERE call_id = ANY($1::text[]) ORDER BY call_id, seq, id"
)


#: The most recently started calls, in progress or not, that match the filters: $2 a
#: number the DID, caller or callee contains; $3 the latest consent decision (or
#: no_decision); $4 the agent (the first to answer, else the outbound call's agent).
#: As ``call_details.summarize`` reads them, so the filter and the rows agree.
_RECENT = (
    "SELECT s.call_id FROM call_events s WHERE s.kind = 'call_started'"
    " AND ($2::text IS NULL OR strpos(s.data->>'did', $2) > 0"
    "   OR strpos(s.data->>'caller', $2) > 0 OR strpos(s.data->>'callee', $2) > 0)"
    " AND ($3::text IS NULL OR $3 = coalesce((SELECT d.data->>'action' FROM call_events d"
    "   WHERE d.call_id = s.call_id"
    "   AND d.kind IN ('consent_decided', 'consent_notice_failed')"
    "   ORDER BY d.seq DESC, d.id DESC LIMIT 1), 'no_decision'))"
    " AND ($4::text IS NULL OR $4 = coalesce((SELECT a.data->>'agent' FROM call_events a"
    "   WHERE a.call_id = s.call_id AND a.kind = 'agent_connected'"
    "   ORDER BY a.seq, a.id LIMIT 1), s.data->>'agent'))"
    " ORDER BY s.occurred_at DESC, s.id DESC LIMIT $1"
)

#: Calls started in [$1, $2) with an agent, as ``call_details.summarize`` names it: the
#: first to answer (``agent_connected``, its own partial index), else the outbound
#: call's agent.
_AGENT_CALLS = (
    "SELECT s.call_id FROM call_events s WHERE s.kind = 'call_started'"
    " AND s.occurred_at >= $1 AND s.occurred_at < $2"
    " AND (coalesce(s.data->>'agent', '') <> '' OR s.call_id IN ("
    "   SELECT a.call_id FROM call_events a WHERE a.kind = 'agent_connected'))"
)

#: What the dashboard's change feed polls: the latest stored_at, and how many rows were
#: stored after $1 (so a row stored late, behind the latest, still counts). Both
#: read the stored_at index.
_CHANGES = (
    "SELECT (SELECT max(stored_at) FROM call_events),"
    " (SELECT count(*) FROM call_events WHERE stored_at > $1::timestamptz)"
)


class LedgerReports:
    """The reports the HTTP API serves, read from ``store``'s database."""

    def __init__(self, store: PostgresLedger) -> None:
        self._store = store

    async def horizon(self) -> datetime:
        async with self._store.connection() as conn:
            value: datetime = await conn.fetchval(_HORIZON)
        return value

    async def export(self, start_time: int, per_page: int) -> ExportPage:
        """The calls whose ``updated_at`` is at or after ``start_time``, oldest first."""
        horizon = epoch_seconds(await self.horizon())  # first: see the module's docstring
        if start_time >= horizon:
            return ExportPage([], max(start_time, horizon), True)
        async with self._store.connection() as conn:
            keys = await conn.fetch(
                _KEYS + " LIMIT $3", from_epoch(start_time), from_epoch(horizon), per_page + 1
            )
            cut = cut_page(
                [epoch_seconds(k["updated_at"]) for k in keys], per_page, start_time, horizon
            )
            if cut.whole_second is not None:
                second = cut.whole_second
                keys = await conn.fetch(_KEYS, from_epoch(second), from_epoch(second + 1))
            else:
                keys = keys[: cut.keep]
            rows = await conn.fetch(_ROWS, [k["call_id"] for k in keys])
        by_call = _by_call(rows)
        now = datetime.now(tz=UTC)
        calls = []
        for key in keys:
            events = [event_from_row(r) for r in by_call.get(key["call_id"], [])]
            details = summarize(events, now)
            if details is not None:
                calls.append(
                    call_record(details, events, number=key["number"], updated_at=key["updated_at"])
                )
        return ExportPage(calls, cut.end_time, cut.end_of_stream)

    async def call(self, key: str, now: datetime) -> CallView | None:
        """One call by its id in the ledger (``node:channel``) or its integer ``id``."""
        async with self._store.connection() as conn:
            if key.isascii() and key.isdigit():
                call_id = await conn.fetchval(
                    "SELECT call_id FROM call_events WHERE id = $1 AND kind = 'call_started'",
                    int(key),
                )
                if call_id is None:
                    return None
            else:
                call_id = key
            rows = await conn.fetch(_ROWS, [call_id])
        events = [event_from_row(r) for r in rows]
        details = summarize(events, now)
        if details is None:
            return None
        number = min(r["id"] for r in rows if r["kind"] == "call_started")
        updated_at = max(r["stored_at"] for r in rows)
        return CallView(
            record=call_record(details, events, number=number, updated_at=updated_at),
            details=details,
            events=[
                {
                    "seq": r["seq"],
                    "kind": r["kind"],
                    "occurred_at": r["occurred_at"].isoformat(),
                    "stored_at": r["stored_at"].isoformat(),
                    "node": r["node"],
                    "data": r["data"],
                }
                for r in rows
            ],
            timeline=timeline(events, now),
        )

    async def agent_calls_started(
        self, start: datetime, end: datetime, now: datetime
    ) -> list[dict[str, Any]]:
        """Details of every call started in ``[start, end)`` that an agent took part in
        (one answered it, or placed it). Only those: on a busy day most calls had no
        agent, and summing all of them took seconds (10 s for 92,000 calls)."""
        async with self._store.connection() as conn:
            ids = await conn.fetch(_AGENT_CALLS, start, end)
            rows = await conn.fetch(_ROWS, [r["call_id"] for r in ids])
        # A day of a busy call centre is tens of thousands of calls: seconds of Python.
        # In a worker thread the event loop keeps handling calls meanwhile (it gets the
        # GIL back within the interpreter's switch interval).
        return await asyncio.to_thread(_summaries, rows, now)

    async def recent(
        self,
        limit: int,
        now: datetime,
        *,
        number: str | None = None,
        outcome: str | None = None,
        agent: str | None = None,
    ) -> list[dict[str, Any]]:
        """The export records of the ``limit`` most recently started calls that match,
        newest first; calls in progress included (``ended_at`` null)."""
        async with self._store.connection() as conn:
            ids = await conn.fetch(_RECENT, limit, number, outcome, agent)
            rows = await conn.fetch(_ROWS, [r["call_id"] for r in ids])
        by_call = _by_call(rows)
        calls = []
        for key in ids:
            call_rows = by_call.get(key["call_id"], [])
            events = [event_from_row(r) for r in call_rows]
            details = summarize(events, now)
            if details is None:
                continue
            calls.append(
                call_record(
                    details,
                    events,
                    number=min(r["id"] for r in call_rows if r["kind"] == "call_started"),
                    updated_at=max(r["stored_at"] for r in call_rows),
                )
            )
        return calls

    async def changes(self, after: datetime | None) -> tuple[datetime | None, int]:
        """(the latest ``stored_at`` of any row, how many rows were stored after ``after``)."""
        async with self._store.connection() as conn:
            row = await conn.fetchrow(_CHANGES, after)
        return row[0], int(row[1])


def _summaries(rows: Sequence[Any], now: datetime) -> list[dict[str, Any]]:
    """Each call's details, from all its rows (CPU only: run off the event loop)."""
    details = (
        summarize([event_from_row(r) for r in call_rows], now)
        for call_rows in _by_call(rows).values()
    )
    return [d for d in details if d is not None]


def _by_call(rows: Sequence[Any]) -> dict[str, list[Any]]:
    by_call: dict[str, list[Any]] = {}
    for row in rows:
        by_call.setdefault(row["call_id"], []).append(row)
    return by_call

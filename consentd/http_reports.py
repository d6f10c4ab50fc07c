"""The reporting routes of the HTTP API: the Zendesk-compatible incremental calls
export, one call, the agent report, the OpenAPI document, and for the dashboard the
recent calls (``GET /api/calls``) and the live feed (``GET /api/events``).

The token is checked for every route but ``/healthz`` by ``http_api``'s middleware;
parameters by ``consentd/export.py``; the ledger is read by a ``Reports``
(``consentd/reports_pg.py`` in the daemon).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web

from consentd.call_list import parse_filter, parse_limit, parse_outcome
from consentd.export import (
    BadParameter,
    agent_report,
    agents_csv,
    calls_csv,
    parse_format,
    parse_per_page,
    parse_start_time,
    parse_window,
)
from consentd.http_api import api_error
from consentd.http_dashboard import FEED, ChangeFeed, events
from consentd.ledger import LedgerUnavailable
from consentd.openapi import EXPORT_PATHS
from consentd.reports_pg import CallView, ExportPage


class Reports(Protocol):
    async def export(self, start_time: int, per_page: int) -> ExportPage: ...

    async def call(self, key: str, now: datetime) -> CallView | None: ...

    async def agent_calls_started(
        self, start: datetime, end: datetime, now: datetime
    ) -> list[dict[str, Any]]: ...

    async def recent(
        self,
        limit: int,
        now: datetime,
        *,
        number: str | None = None,
        outcome: str | None = None,
        agent: str | None = None,
    ) -> list[dict[str, Any]]: ...

    async def changes(self, after: datetime | None) -> tuple[datetime | None, int]: ...


REPORTS: web.AppKey[Reports] = web.AppKey("reports", Reports)
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock", Callable)  # type: ignore[arg-type]


def add_routes(
    app: web.Application, reports: Reports, clock: Callable[[], datetime] | None = None
) -> None:
    app[REPORTS] = reports
    app[CLOCK] = clock or (lambda: datetime.now(tz=UTC))
    for path in EXPORT_PATHS:
        app.router.add_get(path, _export)
    app.router.add_get("/api/calls/{id}", _call)
    app.router.add_get("/api/reports/agents", _agents)
    app.router.add_get("/api/calls", _recent)
    app[FEED] = ChangeFeed(lambda after: reports.changes(after))  # looked up when first polled
    app.router.add_get("/api/events", events)
    app.on_shutdown.append(_close_feed)  # open streams end before the server waits for them


async def _close_feed(app: web.Application) -> None:
    await app[FEED].close()


def _bad(exc: BadParameter) -> web.Response:
    return api_error(400, "invalid-parameter", str(exc), parameter=exc.parameter)


def _unavailable(exc: LedgerUnavailable) -> web.Response:
    return api_error(503, "database-unavailable", f"the ledger cannot be read now ({exc})")


async def _export(request: web.Request) -> web.Response:
    query = request.query
    try:
        start_time = parse_start_time(query.get("start_time"), request.app[CLOCK]())
        per_page = parse_per_page(query.get("per_page"))
        fmt = parse_format(query.get("format"))
    except BadParameter as exc:
        return _bad(exc)
    try:
        page = await request.app[REPORTS].export(start_time, per_page)
    except LedgerUnavailable as exc:
        return _unavailable(exc)
    next_page = None
    if not page.end_of_stream:
        params = {"start_time": str(page.end_time), "per_page": str(per_page)}
        if fmt == "csv":
            params["format"] = "csv"
        next_page = str(request.url.with_query(params))
    if fmt == "csv":
        headers = {
            "X-Count": str(len(page.calls)),
            "X-End-Time": str(page.end_time),
            "X-End-Of-Stream": "true" if page.end_of_stream else "false",
            **({"X-Next-Page": next_page} if next_page else {}),
        }
        return web.Response(
            text=calls_csv(page.calls), content_type="text/csv", charset="utf-8", headers=headers
        )
    return web.json_response(
        {
            "calls": page.calls,
            "count": len(page.calls),
            "end_time": page.end_time,
            "next_page": next_page,
            "end_of_stream": page.end_of_stream,
        }
    )


async def _call(request: web.Request) -> web.Response:
    key = request.match_info["id"]
    try:
        view = await request.app[REPORTS].call(key, request.app[CLOCK]())
    except LedgerUnavailable as exc:
        return _unavailable(exc)
    if view is None:
        return api_error(404, "no-such-call", f"no call {key!r} in the ledger")
    # One object of sections, each derived from the ledger rows in "events".
    return web.json_response(
        {
            "call": view.record,
            "details": view.details,
            "recording_segments": view.details["recording_segments"],
            "timeline": view.timeline,
            "events": view.events,
        }
    )


async def _agents(request: web.Request) -> web.Response:
    query = request.query
    now = request.app[CLOCK]()
    try:
        start, end = parse_window(query.get("from"), query.get("to"), now)
        fmt = parse_format(query.get("format"))
    except BadParameter as exc:
        return _bad(exc)
    try:
        calls = await request.app[REPORTS].agent_calls_started(start, end, now)
    except LedgerUnavailable as exc:
        return _unavailable(exc)
    rows = agent_report(calls)
    if fmt == "csv":
        return web.Response(text=agents_csv(rows), content_type="text/csv", charset="utf-8")
    return web.json_response({"from": start.isoformat(), "to": end.isoformat(), "agents": rows})


async def _recent(request: web.Request) -> web.Response:
    """The most recently started calls, in progress included, newest first, filtered by a
    number (DID, caller or callee contains it), a consent outcome and an agent."""
    query = request.query
    try:
        limit = parse_limit(query.get("limit"))
        number = parse_filter("number", query.get("number"))
        outcome = parse_outcome(query.get("outcome"))
        agent = parse_filter("agent", query.get("agent"), longest=128)
    except BadParameter as exc:
        return _bad(exc)
    try:
        calls = await request.app[REPORTS].recent(
            limit, request.app[CLOCK](), number=number, outcome=outcome, agent=agent
        )
    except LedgerUnavailable as exc:
        return _unavailable(exc)
    return web.json_response({"calls": calls, "count": len(calls)})

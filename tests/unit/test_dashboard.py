"""The dashboard's server side: its page and files without the token (and nothing else),
the recent calls with their filters and parameter errors, and the live feed of ledger
changes (one poller, late rows seen, streams ended on shutdown)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from consentd.export import CALL_FIELDS
from consentd.http_api import OPEN_PATHS, Health, init_app
from consentd.http_dashboard import DASHBOARD_PATHS, ChangeFeed
from consentd.http_reports import add_routes
from consentd.ledger import LedgerUnavailable
from consentd.openapi import EXPORT_PATHS, document
from consentd.reports_pg import CallView, ExportPage
from tests.api_schema import validate_response

TOKEN = "dashboard-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)
DOC = document()


def a_call(number: int, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(CALL_FIELDS)
    record.update(
        id=number,
        created_at="2026-11-30T07:59:00Z",
        updated_at="2026-11-30T07:59:30Z",
        direction="inbound",
        phone_number="+4930100001",
        voicemail=False,
        recording_control_interactions=0,
        recording_time=3,
        not_recording_time=4,
        call_id=f"pbx1:{number}",
        node="pbx1",
        started_at="2026-11-30T07:59:00+00:00",
        abandoned=False,
        consentd_unavailable=False,
        recording_segments=[],
    )
    record.update(fields)
    return record


class FakeReports:
    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []
        self.down = False
        #: What ``changes`` answers: (latest stored_at, rows stored after the bound).
        self.latest: datetime | None = NOW
        self.after: list[datetime] = [NOW - timedelta(seconds=1)]
        self.bounds: list[datetime | None] = []

    async def export(self, start_time: int, per_page: int) -> ExportPage:
        return ExportPage([], start_time, True)

    async def call(self, key: str, now: datetime) -> CallView | None:
        return None

    async def agent_calls_started(
        self, start: datetime, end: datetime, now: datetime
    ) -> list[dict[str, Any]]:
        return []

    async def recent(
        self,
        limit: int,
        now: datetime,
        *,
        number: str | None = None,
        outcome: str | None = None,
        agent: str | None = None,
    ) -> list[dict[str, Any]]:
        if self.down:
            raise LedgerUnavailable("ConnectionRefusedError: nobody home")
        self.asked.append({"limit": limit, "number": number, "outcome": outcome, "agent": agent})
        return [a_call(2, ended_at=None), a_call(1, ended_at="2026-11-30T07:59:20+00:00")]

    async def changes(self, after: datetime | None) -> tuple[datetime | None, int]:
        if self.down:
            raise LedgerUnavailable("ConnectionRefusedError: nobody home")
        self.bounds.append(after)
        return self.latest, sum(1 for t in self.after if after is not None and t > after)


def make_app(reports: FakeReports) -> Any:
    app = init_app(
        lambda: Health(True, True, True, 0, 0), CollectorRegistry(), _no_calls, api_token=TOKEN
    )
    add_routes(app, reports, clock=lambda: NOW)
    return app


async def _no_calls(limit: int) -> list[dict[str, Any]]:
    return []


@pytest.fixture
def reports() -> FakeReports:
    return FakeReports()


@pytest.fixture
async def anonymous(reports: FakeReports) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(reports))) as c:
        yield c


@pytest.fixture
async def client(reports: FakeReports) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(reports)), headers=AUTH) as c:
        yield c


# ---------------------------------------------------------------- the page, no token


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html", b'<script src="/dashboard/app.js"'),
        ("/dashboard/app.js", "text/javascript", b"sessionStorage"),
        ("/dashboard/app.css", "text/css", b".k-recorded"),
    ],
)
async def test_the_page_and_its_files_need_no_token(
    anonymous: TestClient[Any, Any], path: str, content_type: str, marker: bytes
) -> None:
    response = await anonymous.get(path)

    assert response.status == 200
    assert response.content_type == content_type
    assert marker in await response.read()
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_only_healthz_and_the_dashboards_files_are_open() -> None:
    assert OPEN_PATHS == {"/healthz", "/", "/dashboard/app.js", "/dashboard/app.css"}
    assert DASHBOARD_PATHS < OPEN_PATHS


def data_routes(app: Any) -> list[tuple[str, str]]:
    """Every route the app serves but the open ones, with a concrete path to ask."""
    routes = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method == "HEAD" or path in OPEN_PATHS:
            continue
        concrete = path.replace("{call_id}", "pbx1:1").replace("{id}", "1")
        routes.append((route.method, concrete.replace("{action}", "pause")))
    return routes


async def test_every_data_route_still_needs_the_token(reports: FakeReports) -> None:
    app = make_app(reports)
    app.router.add_post("/api/calls/{call_id}/recording/{action}", _no_route)  # as the daemon
    routes = data_routes(app)
    assert {("GET", "/api/calls"), ("GET", "/api/events"), ("GET", "/calls")} <= set(routes)
    assert ("GET", "/api/reports/agents") in routes and ("GET", EXPORT_PATHS[1]) in routes
    odd = ["/dashboard/", "/dashboard/app.js/", "/dashboard/app.js.map", "/index.html"]
    async with TestClient(TestServer(app)) as c:
        for method, path in [*routes, *(("GET", p) for p in odd)]:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                response = await c.request(method, path, headers=headers)
                assert response.status == 401, (method, path, headers)
    assert reports.asked == []


async def _no_route(request: Any) -> Any:
    raise AssertionError("reached without the token")


# ---------------------------------------------------------------- GET /api/calls


async def test_recent_calls_in_progress_included_match_the_document(
    client: TestClient[Any, Any], reports: FakeReports
) -> None:
    response = await client.get("/api/calls")

    body = await response.json()
    assert response.status == 200
    validate_response(DOC, "/api/calls", "GET", 200, body)
    assert body["count"] == 2 and body["calls"][0]["ended_at"] is None
    assert reports.asked == [{"limit": 50, "number": None, "outcome": None, "agent": None}]


async def test_recent_calls_pass_their_filters_and_blank_ones_mean_none(
    client: TestClient[Any, Any], reports: FakeReports
) -> None:
    params = {"limit": "7", "number": " +49301 ", "outcome": "caller_opted_out", "agent": "a 1"}
    await client.get("/api/calls", params=params)
    await client.get("/api/calls", params={"number": "", "outcome": "", "agent": "  "})

    assert reports.asked == [
        {"limit": 7, "number": "+49301", "outcome": "caller_opted_out", "agent": "a 1"},
        {"limit": 50, "number": None, "outcome": None, "agent": None},
    ]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"outcome": "opted_in"}, "outcome"),
        ({"outcome": "CALLER_OPTED_IN"}, "outcome"),
        ({"number": "1" * 65}, "number"),
        ({"number": "+49\x00"}, "number"),
        ({"agent": "a\nb"}, "agent"),
        ({"agent": "x" * 129}, "agent"),
    ],
)
async def test_every_bad_recent_calls_parameter_is_400_naming_it(
    client: TestClient[Any, Any], reports: FakeReports, params: dict[str, str], parameter: str
) -> None:
    response = await client.get("/api/calls", params=params)

    body = await response.json()
    assert response.status == 400
    validate_response(DOC, "/api/calls", "GET", 400, body)
    assert body["error"]["id"] == "invalid-parameter"
    assert body["error"]["parameter"] == parameter
    assert reports.asked == []


async def test_recent_calls_while_the_database_is_away_is_503(
    client: TestClient[Any, Any], reports: FakeReports
) -> None:
    reports.down = True

    response = await client.get("/api/calls")

    assert response.status == 503
    validate_response(DOC, "/api/calls", "GET", 503, await response.json())


# ---------------------------------------------------------------- the live feed


async def test_the_feed_wakes_every_subscriber_once_per_change_with_one_poller() -> None:
    reports = FakeReports()
    feed = ChangeFeed(reports.changes, interval=0.01)
    with feed.subscribe() as first, feed.subscribe() as second:
        assert not await first.wait(0.1)  # nothing new since it started
        reports.latest = NOW + timedelta(seconds=1)
        assert await first.wait(1) and await second.wait(1)
        assert not await first.wait(0.1)
        # A row stored late, behind the latest, changes the count after the bound.
        reports.after.append(NOW)
        assert await first.wait(1)
        polls = feed.polls
        await asyncio.sleep(0.1)
        assert 4 <= feed.polls - polls <= 12  # one poller, not one per subscriber
    await asyncio.sleep(0.05)
    polls = feed.polls
    await asyncio.sleep(0.05)
    assert feed.polls == polls  # no subscriber, no polling
    assert reports.bounds[-1] == NOW + timedelta(seconds=1) - timedelta(seconds=10)
    await feed.close()


async def test_the_feed_keeps_polling_through_a_database_outage() -> None:
    reports = FakeReports()
    feed = ChangeFeed(reports.changes, interval=0.01)
    with feed.subscribe() as subscription:
        await asyncio.sleep(0.05)
        reports.down = True
        await asyncio.sleep(0.05)
        reports.down = False
        reports.latest = NOW + timedelta(seconds=2)
        assert await subscription.wait(1)
    await feed.close()


async def test_the_feed_outlives_an_unexpected_error_in_a_poll() -> None:
    reports = FakeReports()
    failures = iter([RuntimeError("cannot perform operation: another operation is in progress")])

    async def changes(after: datetime | None) -> tuple[datetime | None, int]:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await reports.changes(after)

    feed = ChangeFeed(changes, interval=0.01)
    with feed.subscribe() as subscription:
        await asyncio.sleep(0.05)
        reports.latest = NOW + timedelta(seconds=3)
        assert await subscription.wait(1)  # the poller is still there after the error
    await feed.close()


async def read_events(response: Any, count: int) -> list[bytes]:
    blocks: list[bytes] = []
    buffer = b""
    while len(blocks) < count:
        buffer += await asyncio.wait_for(response.content.readany(), 5)
        *done, buffer = buffer.split(b"\n\n")
        blocks += done
    return blocks


async def test_the_event_stream_says_ready_then_calls_when_the_ledger_changes(
    reports: FakeReports,
) -> None:
    app = make_app(reports)
    async with TestClient(TestServer(app), headers=AUTH) as c:
        response = await c.get("/api/events")
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        (ready,) = await read_events(response, 1)
        assert b"event: ready" in ready
        await asyncio.sleep(1.2)  # the poller's first look
        reports.latest = NOW + timedelta(seconds=5)
        (change,) = await read_events(response, 1)
        assert change.startswith(b"event: calls\ndata: {")
        response.close()


async def test_shutdown_ends_open_event_streams_at_once(reports: FakeReports) -> None:
    app = make_app(reports)
    server = TestServer(app)
    async with TestClient(server, headers=AUTH) as c:
        response = await c.get("/api/events")
        await read_events(response, 1)
        started = asyncio.get_running_loop().time()
        await server.runner.shutdown()  # app.on_shutdown, as the daemon's cleanup runs it
        assert await asyncio.wait_for(response.content.read(), 2) == b""
        assert asyncio.get_running_loop().time() - started < 2


async def test_too_many_streams_is_503(reports: FakeReports) -> None:
    app = make_app(reports)
    from consentd.http_dashboard import FEED

    app[FEED].max_subscribers = 1
    async with TestClient(TestServer(app), headers=AUTH) as c:
        first = await c.get("/api/events")
        await read_events(first, 1)
        second = await c.get("/api/events")
        assert second.status == 503
        validate_response(DOC, "/api/events", "GET", 503, await second.json())
        first.close()

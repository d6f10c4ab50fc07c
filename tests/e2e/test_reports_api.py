"""The reporting API against the real PostgreSQL, holding a known ledger.

The ledger lives in a schema of its own in the stack's database (dropped after the
module), so the calls of other tests never mix in. The API runs in this process on
that ledger, exactly as the daemon wires it; the last tests ask the stack's own
daemon. Every answer is validated against ``/api/openapi.json``.
"""

from __future__ import annotations

import asyncio
import secrets
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from consentd.export import epoch_seconds, from_epoch
from consentd.http_api import Health, init_app
from consentd.http_reports import add_routes
from consentd.ledger_pg import PostgresLedger, migrate_database
from consentd.openapi import EXPORT_PATHS, document
from consentd.reports_pg import LedgerReports
from tests.api_schema import validate_response
from tests.e2e.harness import Stack, local_stack, migration_database_url

pytestmark = pytest.mark.e2e

TOKEN = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXPORT = EXPORT_PATHS[1]
DOC = document()

#: A day ago, on a whole second: every known row is stored in one of these seconds.
BASE = epoch_seconds(datetime.now(tz=UTC)) - 86_400
SECOND_A, SECOND_B, SECOND_C, SECOND_D = BASE, BASE + 5, BASE + 6, BASE + 20
#: More calls in second B than the largest page holds.
MANY = 1200


def rows_of_call(
    call_id: str, stored: int, *, ended: bool = True, agent: str | None = None
) -> list[tuple[Any, ...]]:
    """A short always-recorded call: started, (answered,) ended; each row stored at ``stored``."""
    at = from_epoch(stored) - timedelta(seconds=60)
    facts = {
        "did": "+4930100001",
        "caller": "+4915100000001",
        "direction": "inbound",
        "line": "phone",
        "policy": "always",
        "policy_source": "number",
    }
    events: list[tuple[str, float, dict[str, Any]]] = [("call_started", 0, facts)]
    if agent:
        events.append(("queue_joined", 2, {"queue": "support", "position": 1}))
        events.append(("agent_connected", 10, {"agent": agent, "queue_time": 8}))
        events.append(("agent_completed", 40, {"reason": "caller"}))
    if ended:
        events.append(("call_ended", 40, {"cause": "hangup"}))
    # Spread over the second, in no particular order of the call ids.
    moment = from_epoch(stored) + timedelta(microseconds=zlib.crc32(call_id.encode()) % 999_999)
    return [
        (f"{call_id}:{seq}", call_id, "test", seq, kind, at + timedelta(seconds=s), moment, data)
        for seq, (kind, s, data) in enumerate(events)
    ]


async def insert(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    columns = list(zip(*rows, strict=True))
    await conn.execute(
        "INSERT INTO call_events (event_key, call_id, node, seq, kind, occurred_at, stored_at,"
        " data) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[],"
        " $6::timestamptz[], $7::timestamptz[], $8::text[]::jsonb[])",
        *columns[:7],
        [orjson.dumps(d).decode() for d in columns[7]],
    )


#: The known ledger: call ids by the second their last row was stored.
KNOWN: dict[int, list[str]] = {
    SECOND_A: [f"test:a.{i}" for i in range(5)],
    SECOND_B: [f"test:b.{i}" for i in range(MANY)],
    SECOND_C: [f"test:c.{i}" for i in range(7)],
}
#: An agent's outbound call and a call without agent, stored long before the export's
#: seconds (the export tests page from BASE on): for the agents' report alone.
OUTBOUND_SECOND = BASE - 5000
#: Ended in second A, changed after ending in second D: served once, in D.
CHANGED = "test:a.changed"


@pytest.fixture(scope="module")
def schema_dsn(stack: Stack) -> Iterator[str]:
    schema = f"reports_test_{secrets.token_hex(4)}"
    # The schema owner's role: the daemon's may create no schema (least privilege).
    base = migration_database_url()

    async def create() -> None:
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}")
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()

    asyncio.run(create())
    separator = "&" if "?" in base else "?"
    dsn = f"{base}{separator}{urllib.parse.urlencode({'search_path': schema})}"

    async def fill() -> None:
        await migrate_database(dsn)  # the migrations, into the schema
        conn = await asyncpg.connect(dsn)
        try:
            rows = [
                r for second, ids in KNOWN.items() for c in ids for r in rows_of_call(c, second)
            ]
            rows += rows_of_call("test:a.999", SECOND_A, ended=False)  # still in progress
            rows += rows_of_call(CHANGED, SECOND_A, agent="agent7")
            rows += rows_of_call("test:agent.1", SECOND_C, agent="agent7")
            outbound = rows_of_call("test:out.1", OUTBOUND_SECOND)
            placed = {"direction": "outbound", "agent": "agent8", "callee": "+4930555"}
            outbound[0] = (*outbound[0][:7], {**outbound[0][7], **placed})
            rows += outbound + rows_of_call("test:out.none", OUTBOUND_SECOND)
            await insert(conn, rows)
            # The changed call's recording deleted after the call ended.
            await insert(
                conn,
                [(f"{CHANGED}:9", CHANGED, "test", 9, "recording_deleted",
                  from_epoch(SECOND_D), from_epoch(SECOND_D) + timedelta(milliseconds=5),
                  {"segment": 1, "file": "x.wav", "path": "/x.wav"})],
            )  # fmt: skip
            # Not a call: a policy reload.
            await insert(
                conn,
                [("policies:test:1", "policies:test", "test", 1, "policies_reloaded",
                  from_epoch(SECOND_C), from_epoch(SECOND_C), {"added": []})],
            )  # fmt: skip
        finally:
            await conn.close()

    try:
        asyncio.run(fill())
        yield dsn
    finally:
        asyncio.run(drop())


@pytest.fixture
async def client(schema_dsn: str) -> AsyncIterator[TestClient[Any, Any]]:
    store = PostgresLedger(schema_dsn)
    app = init_app(
        lambda: Health(True, True, True, 0, 0), CollectorRegistry(), _none, api_token=TOKEN
    )
    add_routes(app, LedgerReports(store))
    try:
        async with TestClient(TestServer(app), headers=AUTH) as c:
            yield c
    finally:
        await store.close()


async def _none(limit: int) -> list[dict[str, Any]]:
    return []


async def get(
    client: TestClient[Any, Any], path: str, doc_path: str | None = None, **params: str
) -> tuple[int, Any]:
    response = await client.get(path, params=params)
    body = await response.json()
    validate_response(DOC, doc_path or path, "GET", response.status, body)
    return response.status, body


async def test_following_next_page_serves_every_ended_call_once_oldest_first(
    client: TestClient[Any, Any],
) -> None:
    status, page = await get(client, EXPORT, start_time=str(BASE - 1))
    pages = [page]
    while not page["end_of_stream"]:
        assert status == 200
        url = urllib.parse.urlsplit(page["next_page"])
        status, page = await get(client, url.path, **dict(urllib.parse.parse_qsl(url.query)))
        pages.append(page)
        assert len(pages) < 10

    # Second A (5 calls) alone: the page stops before second B, which holds more than a
    # page; then second B whole (1200 calls, beyond per_page); then the rest.
    assert [p["count"] for p in pages] == [5, MANY, 9]
    assert [p["end_time"] for p in pages[:2]] == [SECOND_B, SECOND_B + 1]
    served = [c["call_id"] for p in pages for c in p["calls"]]
    assert len(served) == len(set(served))
    expected = {*KNOWN[SECOND_A], *KNOWN[SECOND_B], *KNOWN[SECOND_C], "test:agent.1", CHANGED}
    assert set(served) == expected  # not the call in progress, not the policy row
    assert served[-1] == CHANGED  # its change after the end makes it the newest
    updated = [c["updated_at"] for p in pages for c in p["calls"]]
    assert updated == sorted(updated)
    assert pages[-1]["next_page"] is None


@pytest.mark.parametrize("per_page", ["1", "3", "100", "1000"])
async def test_paging_by_end_time_neither_skips_nor_repeats(
    client: TestClient[Any, Any], per_page: str
) -> None:
    start, served, rounds = BASE - 1, [], 0
    while True:
        status, page = await get(client, EXPORT, start_time=str(start), per_page=per_page)
        assert status == 200
        served += [c["call_id"] for c in page["calls"]]
        assert page["count"] <= int(per_page) or {c["updated_at"] for c in page["calls"]} == {
            page["calls"][0]["updated_at"]
        }
        start = page["end_time"]
        rounds += 1
        if page["end_of_stream"]:
            break
        assert rounds < 60
    assert len(served) == len(set(served)) == 5 + MANY + 7 + 2


async def test_a_call_carries_the_zendesk_fields_and_its_own(client: TestClient[Any, Any]) -> None:
    _, page = await get(client, EXPORT, start_time=str(SECOND_D))
    [call] = page["calls"]

    assert call["call_id"] == CHANGED
    assert call["updated_at"] == from_epoch(SECOND_D).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (call["agent_name"], call["completion_status"], call["time_to_answer"]) == (
        "agent7",
        "completed",
        10,
    )
    assert (call["duration"], call["wait_time"], call["talk_time"]) == (40, 8, 30)
    assert call["exceeded_queue_wait_time"] is False
    assert call["call_recording_consent"] == "always"
    assert isinstance(call["id"], int)

    status, one = await get(client, f"/api/calls/{call['id']}", "/api/calls/{id}")
    assert status == 200
    assert one["call"] == call
    assert [e["kind"] for e in one["events"]] == [
        "call_started",
        "queue_joined",
        "agent_connected",
        "agent_completed",
        "call_ended",
        "recording_deleted",
    ]
    status, by_name = await get(client, f"/api/calls/{CHANGED}", "/api/calls/{id}")
    assert (status, by_name["call"]["id"]) == (200, call["id"])
    status, missing = await get(client, "/api/calls/987654321", "/api/calls/{id}")
    assert (status, missing["error"]["id"]) == (404, "no-such-call")


async def test_the_agent_report_over_the_known_ledger(client: TestClient[Any, Any]) -> None:
    status, report = await get(
        client,
        "/api/reports/agents",
        **{"from": str(BASE - 3600), "to": from_epoch(BASE + 3600).isoformat()},
    )

    assert status == 200
    assert report["agents"] == [
        {
            "agent": "agent7",
            "calls_answered": 2,
            "calls_placed": 0,
            "recording_control_interactions": 0,
            "recording_time": 0,
            "not_recording_time": 80,
            "consent_outcomes": {
                "caller_opted_in": 0,
                "caller_opted_out": 0,
                "caller_withdrew": 0,
                "notice_failed": 0,
                "no_decision": 2,
            },
        }
    ]


async def test_the_agent_report_counts_outbound_agents_and_leaves_agentless_calls_out(
    client: TestClient[Any, Any],
) -> None:
    """The report reads only calls an agent took part in (SQL picks them): an agent's
    outbound call names the agent on its start row, without any agent_connected."""
    status, report = await get(
        client,
        "/api/reports/agents",
        **{"from": str(OUTBOUND_SECOND - 1000), "to": str(OUTBOUND_SECOND + 1000)},
    )

    assert status == 200
    assert [(r["agent"], r["calls_placed"], r["calls_answered"]) for r in report["agents"]] == [
        ("agent8", 1, 0)
    ]


async def test_a_transaction_still_open_holds_the_export_back_until_it_commits(
    client: TestClient[Any, Any], schema_dsn: str
) -> None:
    """Rows committed late with an earlier stored_at are not skipped."""
    _, page = await get(client, EXPORT, start_time=str(SECOND_D))
    cursor = page["end_time"]
    late = await asyncpg.connect(schema_dsn)
    try:
        async with late.transaction():
            began = await late.fetchval("SELECT now()")
            await late.execute(
                "INSERT INTO call_events (event_key, call_id, node, seq, kind, occurred_at, data)"
                " SELECT 'test:late.1:' || s, 'test:late.1', 'test', s,"
                " (ARRAY['call_started','call_ended'])[s + 1], now(), $1::jsonb"
                " FROM generate_series(0, 1) s",
                orjson.dumps(
                    {"did": "+4930100001", "caller": "x", "direction": "inbound", "line": "phone",
                     "policy": "never", "policy_source": "number"}
                ).decode(),
            )  # fmt: skip
            await asyncio.sleep(1.2)  # the clock passes the second the rows will carry
            _, held = await get(client, EXPORT, start_time=str(cursor))
            assert held["end_time"] <= epoch_seconds(began)
            assert "test:late.1" not in [c["call_id"] for c in held["calls"]]
        await asyncio.sleep(1.1)
        _, after = await get(client, EXPORT, start_time=str(held["end_time"]))
    finally:
        await late.close()
    assert [c["call_id"] for c in after["calls"]] == ["test:late.1"]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"start_time": "-1"}, "start_time"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"start_time": "12.5"}, "start_time"),
        ({"start_time": str(epoch_seconds(datetime.now(tz=UTC)) + 3600)}, "start_time"),
        ({"per_page": "0"}, "per_page"),
        ({"per_page": "1001"}, "per_page"),
        ({"per_page": "many"}, "per_page"),
        ({"format": "xml"}, "format"),
    ],
)
async def test_every_bad_export_parameter_is_400_naming_it(
    client: TestClient[Any, Any], params: dict[str, str], parameter: str
) -> None:
    status, body = await get(client, EXPORT, **params)
    assert status == 400
    assert body["error"]["parameter"] == parameter
    assert body["error"]["id"] == "invalid-parameter"


@pytest.mark.parametrize(
    ("params", "parameter"),
    [({"from": "last week"}, "from"), ({"to": "2026-02-30"}, "to"),
     ({"from": "2026-11-30", "to": "2026-11-01"}, "from"), ({"format": "pdf"}, "format")],
)  # fmt: skip
async def test_every_bad_report_parameter_is_400_naming_it(
    client: TestClient[Any, Any], params: dict[str, str], parameter: str
) -> None:
    status, body = await get(client, "/api/reports/agents", **params)
    assert (status, body["error"]["parameter"]) == (400, parameter)


@pytest.mark.parametrize("header", [None, "Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}0"])
@pytest.mark.parametrize("path", [EXPORT, EXPORT_PATHS[0], "/api/reports/agents", "/api/calls/1"])
async def test_a_missing_or_wrong_token_is_401(
    client: TestClient[Any, Any], header: str | None, path: str
) -> None:
    response = await client.get(path, headers={"Authorization": header or ""})
    assert response.status == 401
    assert (await response.json())["error"]["id"] == "unauthorized"


# ---------------------------------------------------------------- the stack's own daemon


def ask_daemon(path: str, token: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(local_stack().http + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize(
    "path", ["/calls", "/metrics", "/api/openapi.json", EXPORT, "/api/reports/agents"]
)
def test_the_daemon_wants_its_token_on_every_route_but_healthz(stack: Stack, path: str) -> None:
    token = local_stack().api_token
    assert ask_daemon("/healthz", None)[0] == 200
    status, body = ask_daemon(path, None)
    assert status == 401
    assert orjson.loads(body)["error"]["id"] == "unauthorized"
    assert ask_daemon(path, "wrong-" + token)[0] == 401
    status, body = ask_daemon(path, token)
    assert status == 200, body[:300]
    if path.startswith("/api/") and path != "/api/openapi.json":
        validate_response(DOC, path, "GET", 200, orjson.loads(body))

"""Webhooks against the real stack: the outbox in PostgreSQL, and real calls delivered to
a real local HTTP receiver that is down while calls end and while consentd restarts.

The receiver (aiohttp, on a free loopback port) records every POST and dedups by
the delivery id, as a help desk would. Every call's ``call.ended`` (and the
voicemail call's ``voicemail.recorded``) must arrive with a valid signature,
once per id: repeats are allowed only under the same id.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from consentd.ledger import LedgerEvent
from consentd.ledger_pg import PostgresLedger, migrate_database
from consentd.sipp import CallPlan, place_call
from consentd.webhook_sender import Outbox
from consentd.webhooks import delivery_id, verify
from tests.e2e.harness import (
    SCENARIO,
    Stack,
    consentd_calls,
    database_url,
    migration_database_url,
    restart_daemon,
)

pytestmark = pytest.mark.e2e

SECRET = secrets.token_hex(24)


# ---------------------------------------------------------------- the outbox in PostgreSQL


@pytest.fixture
def schema_dsn(stack: Stack) -> Iterator[str]:
    """A fresh schema of the stack's database with every migration applied, as the
    schema's owner (the role that runs the migrations; the daemon's may create none)."""
    schema = f"webhook_test_{secrets.token_hex(4)}"
    base = migration_database_url()
    separator = "&" if "?" in base else "?"
    dsn = f"{base}{separator}{urllib.parse.urlencode({'search_path': schema})}"

    async def create() -> None:
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}")
        finally:
            await conn.close()
        await migrate_database(dsn)

    async def drop() -> None:
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()

    asyncio.run(create())
    try:
        yield dsn
    finally:
        asyncio.run(drop())


def _rows(call_id: str, kinds: list[str]) -> list[LedgerEvent]:
    at = datetime.now(tz=UTC) - timedelta(minutes=1)
    data: dict[str, dict[str, Any]] = {
        "voicemail_started": {"file": "recording/vm.wav", "path": "/x/vm.wav"},
        "voicemail_finished": {"file": "recording/vm.wav", "path": "/x/vm.wav", "state": "done"},
    }
    return [
        LedgerEvent(
            f"{call_id}:{seq}",
            call_id,
            "t",
            seq,
            kind,
            at + timedelta(seconds=seq),
            data.get(kind, {}),
        )
        for seq, kind in enumerate(kinds)
    ]


def test_the_database_fills_the_outbox_once_per_event_and_call(schema_dsn: str) -> None:
    async def scenario() -> None:
        store = PostgresLedger(schema_dsn)
        plain = _rows("t:1", ["call_started", "call_ended"])
        voicemail = _rows(
            "t:2", ["call_started", "voicemail_started", "voicemail_finished", "call_ended"]
        )
        open_call = _rows("t:3", ["call_started"])
        # As the writer stores them, and again as a journal replay after an outage would.
        await store.append(plain + voicemail + open_call)
        await store.append(plain + voicemail + open_call)
        pool = await store.connect()
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT delivery_id::text AS id, event_type, call_id, occurred_at,"
                " next_attempt_at > created_at AS settles, done_at, attempts"
                " FROM webhook_outbox ORDER BY call_id, event_type"
            )
            assert [(r["event_type"], r["call_id"]) for r in rows] == [
                ("call.ended", "t:1"),
                ("call.ended", "t:2"),
                ("voicemail.recorded", "t:2"),
            ]
            for r in rows:
                assert r["id"] == delivery_id(r["event_type"], r["call_id"])
                assert r["settles"] and r["done_at"] is None and r["attempts"] == 0
            assert rows[2]["occurred_at"] == voicemail[2].occurred_at  # voicemail_finished
            # Two senders (two nodes) at once never claim the same row.
            await conn.execute("UPDATE webhook_outbox SET next_attempt_at = now()")
            outbox = Outbox(store)
            other = Outbox(PostgresLedger(schema_dsn))
            first, second = await asyncio.gather(outbox.claim(2, 60), other.claim(2, 60))
            ids = [r.id for r in first[0]] + [r.id for r in second[0]]
            assert sorted(ids) == sorted(r.id for r in first[0] + second[0])
            assert len(ids) == len(set(ids)) == 3
            assert (await outbox.claim(10, 60))[0] == []  # leased
            claimed = first[0][0]
            await outbox.attempted(claimed, ["abc"], done=False, error="down", retry_after=4)
            state = await conn.fetchrow(
                "SELECT attempts, last_error, delivered_to,"
                " extract(epoch FROM next_attempt_at - last_attempt_at) AS wait"
                " FROM webhook_outbox WHERE id = $1",
                claimed.id,
            )
            assert (state["attempts"], state["last_error"], state["delivered_to"]) == (
                1,
                "down",
                ["abc"],
            )
            assert 3.9 < state["wait"] < 4.1
            await outbox.attempted(claimed, ["abc", "def"], done=True, error=None, retry_after=0)
            done = await conn.fetchrow(
                "SELECT outcome, delivered_to, attempts FROM webhook_outbox WHERE id = $1",
                claimed.id,
            )
            assert dict(done) == {
                "outcome": "delivered",
                "delivered_to": ["abc", "def"],
                "attempts": 2,
            }
            # The ledger itself stays append-only.
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute("UPDATE call_events SET kind = kind")
        await store.close()

    asyncio.run(scenario())


def test_the_daemons_role_reads_and_updates_the_outbox_and_the_trigger_is_pinned(
    schema_dsn: str,
) -> None:
    async def scenario() -> None:
        conn = await asyncpg.connect(schema_dsn)
        try:
            for privilege in ("SELECT", "UPDATE"):
                assert await conn.fetchval(
                    "SELECT has_table_privilege('consentd', 'webhook_outbox', $1)", privilege
                ), privilege
            # Runs as its owner, with this schema alone on its search path: the daemon's
            # role needs no INSERT on the outbox, and no other schema can stand in.
            definer, config = await conn.fetchrow(
                "SELECT prosecdef, proconfig FROM pg_proc WHERE proname = 'webhook_outbox_enqueue'"
                " AND pronamespace = current_schema()::regnamespace"
            )
            schema = await conn.fetchval("SELECT current_schema()")
            assert definer is True
            assert config == [f"search_path={schema}, pg_temp"]
        finally:
            await conn.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------- real calls, a real receiver


class Receiver:
    """A help desk's webhook endpoint on loopback that can be stopped and started."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.by_id: dict[str, dict[str, Any]] = {}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.posts.append((dict(request.headers), raw))
        if not verify(SECRET.encode(), raw, request.headers.get("X-Consentd-Signature")):
            return web.Response(status=401)
        payload = json.loads(raw)
        self.by_id.setdefault(payload["id"], payload)  # a repeat of an id is dropped
        return web.Response(status=202)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _outbox(call_ids: list[str]) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url())
    try:
        rows = await conn.fetch(
            "SELECT delivery_id::text AS id, event_type, call_id, attempts, last_error,"
            " outcome FROM webhook_outbox WHERE call_id = ANY($1::text[])",
            call_ids,
        )
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def _until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.3)


def _calls_of(callers: set[str], since: datetime) -> dict[str, dict[str, Any]]:
    return {c["caller"]: c for c in consentd_calls(since=since) if c["caller"] in callers}


def test_calls_reach_a_receiver_that_was_down_once_per_id_and_signed(
    stack: Stack, tmp_path: Path
) -> None:
    secret_file = tmp_path / "webhook_secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    receiver = Receiver(_free_port())
    env = {
        "CONSENTD_WEBHOOK_URLS": receiver.url,
        "CONSENTD_WEBHOOK_SECRET_FILE": str(secret_file),
        "CONSENTD_WEBHOOK_RETRY_MAX_SECONDS": "2",
        # The calls of earlier tests are in the outbox too: those older than this
        # expire at once instead of keeping the sender busy.
        "CONSENTD_WEBHOOK_MAX_AGE_SECONDS": "120",
    }
    since = datetime.now(tz=UTC)
    before = CallPlan("+4930100001", "+4915100000901", talk_ms=2000, speak=True)  # always
    refused = CallPlan("+4930100003", "+4915100000902", 1500, "3", talk_ms=2000, speak=True)
    # The IVR's key 2 is voicemail; the caller talks into it and hangs up.
    voicemail = CallPlan("+4930100020", "+4915100000903", 500, "2", talk_ms=5000, speak=True)

    async def ended(caller: str) -> dict[str, Any] | None:
        calls = await asyncio.to_thread(_calls_of, {caller}, since)
        call = calls.get(caller)
        return call if call and call["ended_at"] else None

    async def scenario() -> dict[str, dict[str, Any]]:
        try:
            return await calls_with_the_receiver_down()
        finally:
            await receiver.stop()

    async def calls_with_the_receiver_down() -> dict[str, dict[str, Any]]:
        await receiver.start()
        await asyncio.to_thread(restart_daemon, stack.policies, **env)
        # Up: the first call arrives on its own.
        result = await place_call(before, SCENARIO, sip_port=5340, media_port=18400)
        assert result.ok, result.output[-2000:]
        first = await _until("the first call ended", lambda: ended(before.caller), 15)
        first_id = delivery_id("call.ended", first["id"])
        await _until("the first call's webhook", _async(lambda: first_id in receiver.by_id), 15)

        # Down while two calls end: attempts fail and are retried.
        await receiver.stop()
        results = await asyncio.gather(
            place_call(refused, SCENARIO, sip_port=5341, media_port=18420),
            place_call(voicemail, SCENARIO, sip_port=5342, media_port=18440),
        )
        assert all(r.ok for r in results), [r.output[-2000:] for r in results]
        calls: dict[str, dict[str, Any]] = {}

        async def both_ended() -> bool:
            calls.update(
                await asyncio.to_thread(_calls_of, {refused.caller, voicemail.caller}, since)
            )
            return len(calls) == 2 and all(c["ended_at"] for c in calls.values())

        await _until("both calls ended", both_ended, 15)
        ids = [c["id"] for c in calls.values()]

        async def failed_attempts() -> bool:
            rows = await _outbox(ids)
            return len(rows) == 3 and all(r["attempts"] >= 1 for r in rows)

        await _until("failed attempts while the receiver is down", failed_attempts, 15)
        # consentd restarts meanwhile; what it has not delivered stays in the outbox.
        await asyncio.to_thread(restart_daemon, stack.policies, **env)
        await receiver.start()
        wanted = {
            delivery_id("call.ended", calls[refused.caller]["id"]),
            delivery_id("call.ended", calls[voicemail.caller]["id"]),
            delivery_id("voicemail.recorded", calls[voicemail.caller]["id"]),
        }
        await _until("every webhook", _async(lambda: wanted <= receiver.by_id.keys()), 20)
        return {before.caller: first, **calls}

    try:
        calls = asyncio.run(scenario())
    finally:
        stack.restart_daemon()

    expected = {
        (kind, call["id"])
        for call in calls.values()
        for kind in (("call.ended", "voicemail.recorded") if call["voicemail"] else ("call.ended",))
    }
    assert calls[voicemail.caller]["voicemail"] is True
    mine = {
        ident: payload
        for ident, payload in receiver.by_id.items()
        if payload["call"]["call_id"] in {c["id"] for c in calls.values()}
    }
    # Exactly the expected events, each under its own stable id.
    assert {(p["type"], p["call"]["call_id"]) for p in mine.values()} == expected
    assert set(mine) == {delivery_id(kind, call_id) for kind, call_id in expected}
    # Every POST was signed with the secret; a repeat carried the same id.
    for sent, raw in receiver.posts:
        assert verify(SECRET.encode(), raw, sent["X-Consentd-Signature"])
        assert json.loads(raw)["id"] == sent["X-Consentd-Delivery"]
    # The details are the ledger's.
    for payload in mine.values():
        call = calls[payload["call"]["caller"]]
        assert payload["call"]["call_recording_consent"] == call["call_recording_consent"]
        assert (
            payload["call"]["call_recording_consent_action"]
            == (call["call_recording_consent_action"])
        )
        assert payload["call"]["recordings"] == call["recordings"]
    assert calls[refused.caller]["call_recording_consent_action"] == "caller_opted_out"
    message = mine[delivery_id("voicemail.recorded", calls[voicemail.caller]["id"])]["voicemail"]
    assert message["path"] in calls[voicemail.caller]["recordings"]
    assert Path(message["path"]).stat().st_size > 44  # more than a WAV header
    rows = asyncio.run(_outbox([c["id"] for c in calls.values()]))
    assert {r["outcome"] for r in rows} == {"delivered"}
    assert all(r["attempts"] >= 2 for r in rows if r["call_id"] != calls[before.caller]["id"])


def _async(predicate: Any) -> Any:
    async def check() -> bool:
        return bool(predicate())

    return check

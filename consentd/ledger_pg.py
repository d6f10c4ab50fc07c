"""The PostgreSQL ledger store and its numbered migrations.

Migrations are SQL files applied in order, each in its own transaction, under
an advisory lock so that several PBX nodes sharing one database can migrate at
the same time. A released migration is never edited; a change is a new file.

Least privilege: the migrations run as the schema's owner (``consentd
migrate`` with ``CONSENTD_MIGRATION_DATABASE_URL``), never as the daemon. The
daemon's role (``consentd``) may only append to the ledger and read it: it
checks the schema's version at connect and refuses a schema behind its
migrations (SchemaBehind). A migration that creates a table grants role
``consentd`` exactly what the daemon needs on it, in the same file
(``tests/unit/test_migrations.py`` checks that every table has its grant).
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import asyncpg
import orjson
import structlog

from consentd.ledger import LedgerEvent, LedgerUnavailable

_MIGRATION_LOCK = 0x636F6E73  # "cons"

_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)


class DatabaseError(Exception):
    """A database problem explained for the operator."""


class SchemaBehind(DatabaseError):
    """The ledger's schema lacks migrations this consentd needs: run ``consentd migrate``."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration, in order."""
    found = []
    for entry in resources.files("consentd.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    for (a, first, _), (b, second, _) in itertools.pairwise(found):
        if a == b:  # the second would be skipped forever as "applied"
            raise ValueError(f"migrations {first} and {second} share version {a}")
    return found


def latest_version() -> int:
    """The schema version this consentd needs: its newest migration's."""
    return max(version for version, _, _ in migrations())


async def applied_versions(conn: asyncpg.Connection) -> set[int]:
    """The migrations applied to the database (none without a ledger schema)."""
    if await conn.fetchval("SELECT to_regclass('consentd_migrations')") is None:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM consentd_migrations")}


async def check_schema(conn: asyncpg.Connection, dsn: str) -> None:
    """SchemaBehind when the database lacks a migration this consentd needs.

    Migrations the database has and this consentd does not know (a newer node
    applied them) are accepted: migrations only add.
    """
    applied = await applied_versions(conn)
    missing = sorted({version for version, _, _ in migrations()} - applied)
    if missing:
        have = max(applied, default=0)
        raise SchemaBehind(
            f"the ledger's schema at {_redact(dsn)} lacks migration"
            f"{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
            f" (it is at version {have}, this consentd needs {latest_version()}):"
            " run `consentd migrate` with CONSENTD_MIGRATION_DATABASE_URL"
            " (the schema owner's URL) first"
        )


async def migrate_database(dsn: str, password: str | None = None) -> list[str]:
    """Connect as the schema's owner and apply pending migrations; the names applied.

    Raises DatabaseError with an explanation (unreachable, refused, a failed migration).
    """
    try:
        conn = await asyncpg.connect(dsn, password=password, timeout=10)
    except _CONNECTION_ERRORS as exc:
        raise DatabaseError(f"cannot reach the database at {_redact(dsn)}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"database at {_redact(dsn)} refused the connection: {exc}") from exc
    try:
        return await migrate(conn)
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"migrating the ledger at {_redact(dsn)} failed: {exc}") from exc
    finally:
        await conn.close()


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; returns the names applied."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS consentd_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM consentd_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO consentd_migrations (version, name) VALUES ($1, $2)",
                    version,
                    name,
                )
            applied.append(name)
    return applied


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_json_text, decoder=orjson.loads, schema="pg_catalog"
    )


async def connect_pool(
    dsn: str, *, password: str | None = None, timeout: float = 5.0
) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn,
            password=password,
            min_size=1,
            max_size=4,
            timeout=timeout,
            command_timeout=30,
            init=_init_connection,
        )
    except _CONNECTION_ERRORS as exc:
        raise DatabaseError(
            f"cannot reach the database at {_redact(dsn)}: {exc} "
            "(is it running? `make up` starts a local one)"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"database at {_redact(dsn)} refused the connection: {exc}") from exc
    assert pool is not None
    return pool


_KEYWORD_PASSWORD = re.compile(r"""(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)""", re.I)
_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)[^&#]*", re.I)


def _redact(dsn: str) -> str:
    """Never print a password into a log or terminal.

    Covers the URL's user information (``postgresql://user:pw@host``), a
    ``?password=`` parameter, and keyword DSNs (``host=h password=pw``).
    """
    if "://" not in dsn:
        return _KEYWORD_PASSWORD.sub(r"\1***", dsn)
    scheme, rest = dsn.split("://", 1)
    # The user information ends at the last "@" before the query; a password
    # with an unencoded "?" in it has no "@" before the first "?".
    head = rest.split("?", 1)[0]
    at = head.rfind("@") if "@" in head else rest.rfind("@")
    if at >= 0:
        creds, host = rest[:at], rest[at + 1 :]
        user = creds.split(":", 1)[0]
        rest = f"{user}{':***' if ':' in creds else ''}@{host}"
    return scheme + "://" + _QUERY_PASSWORD.sub(r"\1***", rest)


class NodeInUse(Exception):
    """Another live consentd already runs under this node name."""


class PostgresLedger:
    """The ledger in PostgreSQL; connects and migrates lazily, so consentd starts without it."""

    def __init__(self, dsn: str, password: str | None = None) -> None:
        self._dsn = dsn
        self._password = password  # when not in the URL (CONSENTD_DATABASE_PASSWORD)
        self._pool: asyncpg.Pool | None = None
        self._node_lock: asyncpg.Connection | None = None
        self._log = structlog.get_logger("consentd.ledger_pg")

    async def claim_node(self, node: str) -> None:
        """Hold the node's name for this process's life (a session advisory lock).

        Two daemons under one name would number their calls alike and their
        ledger rows would collide; the second is refused instead. PostgreSQL
        frees the lock when this process's connection goes, however it ends.
        Raises NodeInUse, or DatabaseError when the database cannot be asked.
        """
        try:
            conn = await asyncpg.connect(self._dsn, password=self._password, timeout=5)
            claimed = await conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtextextended('consentd-node:' || $1, 0))", node
            )
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            raise DatabaseError(f"could not claim node {node!r}: {exc}") from exc
        if not claimed:
            await conn.close()
            raise NodeInUse(
                f"node name {node!r} is in use by another running consentd"
                " (set CONSENTD_NODE to a name of its own for each daemon)"
            )
        self._node_lock = conn

    async def connect(self) -> asyncpg.Pool:
        """Connect and check the schema's version (never migrate: the daemon's
        role may not); raises DatabaseError, or SchemaBehind, with an explanation."""
        if self._pool is None:
            pool = await connect_pool(self._dsn, password=self._password)
            try:
                async with pool.acquire() as conn:
                    await check_schema(conn, self._dsn)
            except asyncpg.PostgresError as exc:
                await pool.close()
                raise DatabaseError(
                    f"reading the ledger's schema version at {_redact(self._dsn)} failed: {exc}"
                ) from exc
            except SchemaBehind:
                await pool.close()
                raise
            self._pool = pool
        return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for a read or a small update (reports, the outbox);
        any database failure comes out as LedgerUnavailable."""
        try:
            pool = await self.connect()
            async with pool.acquire(timeout=5) as conn:
                yield conn
        except (DatabaseError, asyncpg.PostgresError, OSError, TimeoutError) as exc:
            raise LedgerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._node_lock is not None:
            await self._node_lock.close()
            self._node_lock = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def append(self, events: Sequence[LedgerEvent]) -> None:
        # One statement per batch (arrays, unnest): executemany costs a round of
        # protocol messages per row, which at hundreds of calls a second showed.
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        for e in events:
            for column, value in zip(
                columns,
                (e.event_key, e.call_id, e.node, e.seq, e.kind, e.occurred_at, e.data),
                strict=True,
            ):
                column.append(value)
        try:
            pool = await self.connect()
            async with pool.acquire(timeout=5) as conn:
                await conn.execute(
                    "INSERT INTO call_events"
                    " (event_key, call_id, node, seq, kind, occurred_at, data)"
                    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[],"
                    "   $5::text[], $6::timestamptz[], $7::jsonb[])"
                    " ON CONFLICT (event_key) DO NOTHING",
                    *columns,
                    # A half-open connection (a firewall dropped it, the server
                    # froze) would hold the writer for good: give up, journal.
                    timeout=10,
                )
        except (
            DatabaseError,
            *_CONNECTION_ERRORS,
            asyncpg.PostgresError,  # disk full, read-only after a failover, shutting down, ...
            OSError,
            TimeoutError,
        ) as exc:
            # Every database failure degrades to journalling; none may stop the daemon.
            raise LedgerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # asyncpg's own client errors (InterfaceError, InternalClientError:
            # "another operation is in progress" after a server vanished mid-query)
            # leave a connection unusable: drop the pool's connections, journal.
            if self._pool is not None:
                await self._pool.expire_connections()
            raise LedgerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def recent_call_ids(self, limit: int) -> list[str]:
        pool = await self.connect()
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT call_id FROM call_events WHERE kind = 'call_started'"
                " ORDER BY occurred_at DESC, id DESC LIMIT $1",
                limit,
            )
        return [r["call_id"] for r in rows]

    async def events_of_channel(self, channel_id: str) -> list[LedgerEvent]:
        return await self._events_where(
            "call_id = (SELECT call_id FROM call_events WHERE kind = 'call_started'"
            " AND data->>'channel_id' = $1 ORDER BY occurred_at DESC, id DESC LIMIT 1)",
            channel_id,
        )

    async def open_calls(self, node: str, since: datetime) -> list[LedgerEvent]:
        return await self._events_where(
            "call_id IN (SELECT s.call_id FROM call_events s WHERE s.kind = 'call_started'"
            " AND s.node = $1 AND s.occurred_at >= $2"
            " AND NOT (s.data ? 'consentd_unavailable') AND NOT EXISTS ("
            "   SELECT 1 FROM call_events e WHERE e.call_id = s.call_id"
            "   AND e.kind = 'call_ended'))",
            node,
            since,
        )

    async def failed_deletions(self, node: str) -> list[LedgerEvent]:
        return await self._events_where(
            "call_id IN (SELECT f.call_id FROM call_events f"
            " WHERE f.kind = 'command_failed' AND f.data->>'command' = 'DeleteRecording'"
            " AND f.node = $1 AND EXISTS ("
            "   SELECT 1 FROM call_events e WHERE e.call_id = f.call_id"
            "   AND e.kind = 'call_ended')"
            " AND NOT EXISTS ("
            "   SELECT 1 FROM call_events d WHERE d.call_id = f.call_id"
            "   AND d.kind = 'recording_deleted' AND d.data->'segment' = f.data->'segment'))",
            node,
        )

    async def _events_where(self, condition: str, *args: Any) -> list[LedgerEvent]:
        """Rows matching ``condition``, by call and seq; any failure is LedgerUnavailable."""
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT event_key, call_id, node, seq, kind, occurred_at, data"
                f" FROM call_events WHERE {condition} ORDER BY call_id, seq, id",
                *args,
            )
        return [event_from_row(r) for r in rows]

    async def events_of(self, call_ids: Sequence[str]) -> list[LedgerEvent]:
        pool = await self.connect()
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT event_key, call_id, node, seq, kind, occurred_at, data"
                " FROM call_events WHERE call_id = ANY($1::text[]) ORDER BY call_id, seq, id",
                list(call_ids),
            )
        return [event_from_row(r) for r in rows]


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def event_from_row(row: Any) -> LedgerEvent:
    """A ``call_events`` row (any row with its columns) as a LedgerEvent."""
    return LedgerEvent(
        event_key=row["event_key"],
        call_id=row["call_id"],
        node=row["node"],
        seq=row["seq"],
        kind=row["kind"],
        occurred_at=row["occurred_at"],
        data=row["data"],
    )

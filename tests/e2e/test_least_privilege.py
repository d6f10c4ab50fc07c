"""Least privilege on the real stack (issue 11, points 2 and 4).

- The daemon's database role (``database_url`` in .state/stack.json) may
  append to the ledger and read it; UPDATE, DELETE, TRUNCATE and DDL fail
  with a permission error, and it owns nothing. A schema behind the
  migrations makes ``consentd run`` refuse to start, saying what to run.
- Asterisk runs as the root's user asterisk, whose ids are no host user's,
  with a procfs of its own where it sees only its own processes.
- A real recording is 0640 in a 2750 directory of the recordings' group; the
  journal is 0600 in a 0700 directory.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import secrets
import socket
import stat
import subprocess
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from consentd.sipp import CallPlan, place_call
from tests.e2e.harness import (
    REPO,
    ROOT,
    SCENARIO,
    Stack,
    consentd_calls,
    database_url,
    local_stack,
    migration_database_url,
)

pytestmark = pytest.mark.e2e

STATE = REPO / ".state"
CONSENTD = str(REPO / ".venv" / "bin" / "consentd")
#: PostgreSQL's SQLSTATE for "permission denied" / "must be owner".
INSUFFICIENT_PRIVILEGE = "42501"

FORBIDDEN = {
    "update": "UPDATE call_events SET kind = kind WHERE false",
    "delete": "DELETE FROM call_events WHERE false",
    "truncate": "TRUNCATE call_events",
    "drop_trigger": "DROP TRIGGER call_events_append_only ON call_events",
    "disable_trigger": "ALTER TABLE call_events DISABLE TRIGGER ALL",
    "alter_table": "ALTER TABLE call_events ADD COLUMN probe int",
    "drop_table": "DROP TABLE call_events",
    "create_index": "CREATE INDEX probe ON call_events (kind)",
    "create_table": "CREATE TABLE privilege_probe (a int)",
    "create_temp_table": "CREATE TEMP TABLE privilege_probe (a int)",
    "create_schema": "CREATE SCHEMA privilege_probe",
    "create_function": "CREATE FUNCTION privilege_probe() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "setval": "SELECT setval('call_events_id_seq', 1)",
    "forge_schema_version": "INSERT INTO consentd_migrations (version, name) VALUES (9999, 'x')",
    "forget_a_migration": "DELETE FROM consentd_migrations WHERE false",
    "set_role_owner": "SET ROLE consentd_owner",
}


async def _as_daemon(sql: str) -> None:
    conn = await asyncpg.connect(database_url())
    try:
        async with conn.transaction():
            await conn.execute(sql)
    finally:
        await conn.close()


@pytest.mark.parametrize("sql", FORBIDDEN.values(), ids=FORBIDDEN.keys())
def test_the_daemons_role_may_not(stack: Stack, sql: str) -> None:
    with pytest.raises(asyncpg.PostgresError) as refused:
        asyncio.run(_as_daemon(sql))
    assert refused.value.sqlstate == INSUFFICIENT_PRIVILEGE, refused.value


def test_the_daemons_role_appends_and_reads_and_owns_nothing(stack: Stack) -> None:
    async def probe() -> dict[str, Any]:
        conn = await asyncpg.connect(database_url())
        try:
            role = await conn.fetchrow(
                "SELECT current_user AS name, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls"
                " FROM pg_roles WHERE rolname = current_user"
            )
            owned = await conn.fetchval(
                "SELECT count(*) FROM pg_class WHERE relowner = current_user::regrole"
            )
            owner = await conn.fetchval(
                "SELECT tableowner FROM pg_tables WHERE tablename = 'call_events'"
            )
            # An INSERT (the id from the sequence) read back, then rolled back:
            # the ledger keeps no trace of the probe.
            transaction = conn.transaction()
            await transaction.start()
            key = f"privilege-probe:{secrets.token_hex(4)}"
            await conn.execute(
                "INSERT INTO call_events (event_key, call_id, node, seq, kind, occurred_at)"
                " VALUES ($1, 'privilege-probe', 'test', 1, 'probe', now())",
                key,
            )
            stored = await conn.fetchval("SELECT kind FROM call_events WHERE event_key = $1", key)
            await transaction.rollback()
            version = await conn.fetchval("SELECT max(version) FROM consentd_migrations")
        finally:
            await conn.close()
        return {"role": dict(role), "owned": owned, "owner": owner, "stored": stored, "v": version}

    found = asyncio.run(probe())
    assert found["role"] == {
        "name": "consentd",
        "rolsuper": False,
        "rolcreaterole": False,
        "rolcreatedb": False,
        "rolbypassrls": False,
    }
    assert found["owned"] == 0
    assert found["owner"] == "consentd_owner"
    assert found["stored"] == "probe"
    assert found["v"] >= 5


def test_the_daemon_refuses_a_schema_behind_its_migrations(stack: Stack, tmp_path: Path) -> None:
    """`consentd run` on a ledger at version 3: exit 1, one line saying what to run."""
    schema = f"behind_{secrets.token_hex(4)}"

    async def owner(*statements: str) -> None:
        conn = await asyncpg.connect(migration_database_url())
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(
        owner(
            f"CREATE SCHEMA {schema}",
            f"CREATE TABLE {schema}.consentd_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
            f"INSERT INTO {schema}.consentd_migrations (version, name)"
            " VALUES (1, '0001'), (2, '0002'), (3, '0003')",
            f"GRANT USAGE ON SCHEMA {schema} TO consentd",
            f"GRANT SELECT ON {schema}.consentd_migrations TO consentd",
        )
    )
    try:
        url = database_url()
        separator = "&" if "?" in url else "?"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CONSENTD_")},
            **local_stack().daemon_environment(),
            "CONSENTD_DATABASE_URL": url
            + separator
            + urllib.parse.urlencode({"search_path": schema}),
            "CONSENTD_NODE": "privilege-test",
            "CONSENTD_JOURNAL_DIR": str(tmp_path / "journal"),
            "CONSENTD_HTTP_PORT": "8099",
            "CONSENTD_LOG_FORMAT": "json",
        }
        result = subprocess.run(
            [CONSENTD, "run", "--policies", str(REPO / "examples" / "policies.yaml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    finally:
        asyncio.run(owner(f"DROP SCHEMA {schema} CASCADE"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "consentd: not starting: the ledger's schema" in result.stderr
    assert "at version 3" in result.stderr
    assert "run `consentd migrate` with CONSENTD_MIGRATION_DATABASE_URL" in result.stderr
    assert local_stack().secrets()["database_url.password"] not in result.stdout + result.stderr


def _root_id(database: str, name: str) -> int:
    for line in (ROOT / "etc" / database).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"no {name} in the Asterisk root's /etc/{database}")


def test_asterisk_runs_as_its_own_user_with_a_procfs_of_its_own(stack: Stack) -> None:
    uid, gid = _root_id("passwd", "asterisk"), _root_id("group", "asterisk")
    pid = int((STATE / "run" / "asterisk.pid").read_text())
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    assert status["Uid"].split() == [str(uid)] * 4
    assert status["Gid"].split() == [str(gid)] * 4
    assert uid != 0 and gid != 0
    # No host user or group has these ids (the root's uid 101 was the host's postgres).
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    with pytest.raises(KeyError):
        grp.getgrgid(gid)

    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    proc = [m for m in mounts if m[1] == str(ROOT / "proc")]
    assert len(proc) == 1 and proc[0][2] == "proc", proc
    assert {"hidepid=invisible", "subset=pid", "nosuid", "nodev", "noexec"} <= set(
        proc[0][3].split(",")
    )
    # What a process of user asterisk sees there: itself and nothing else; not
    # the host's processes (pid 1, PostgreSQL, consentd), not even Asterisk
    # (it changed its user, so it is not dumpable), and no kernel files.
    seen = subprocess.run(
        ["chroot", f"--userspec={uid}:{gid}", str(ROOT), "/bin/ls", "/proc"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len([entry for entry in seen if entry.isdigit()]) == 1, seen  # ls itself
    assert "1" not in seen and str(pid) not in seen
    assert (STATE / "run" / "consentd.pid").read_text().strip() not in seen
    assert not {"sys", "kcore", "sysrq-trigger", "meminfo"} & set(seen)


def test_a_recording_and_the_journal_are_private(stack: Stack) -> None:
    recording_gid = _root_id("group", os.environ.get("CONSENTD_RECORDING_GROUP", "asterisk"))
    asterisk_uid = _root_id("passwd", "asterisk")
    caller = "+4915100000977"
    since = datetime.now(UTC)
    result = asyncio.run(
        place_call(CallPlan("+4930100001", caller, talk_ms=2000, speak=True), SCENARIO)
    )
    assert result.ok, result.output
    call: dict[str, Any] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not call.get("ended_at"):
        call = next((c for c in consentd_calls(since=since) if c["caller"] == caller), {})
        time.sleep(0.3)
    assert call.get("recordings"), call
    path = stack.host_path(call["recordings"][0].removeprefix(str(stack.root)))

    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640, oct(info.st_mode)
    assert (info.st_uid, info.st_gid) == (asterisk_uid, recording_gid)
    directory = path.parent.stat()
    assert stat.S_IMODE(directory.st_mode) == 0o2750, oct(directory.st_mode)
    assert (directory.st_uid, directory.st_gid) == (asterisk_uid, recording_gid)
    # Members of the group reach it: the spool above is 0750 of that group.
    spool = path.parent.parent.stat()
    assert stat.S_IMODE(spool.st_mode) == 0o750 and spool.st_gid == recording_gid

    journal = STATE / "journal" / f"{socket.gethostname() or 'pbx'}.jsonl"
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.parent.stat().st_mode) == 0o700

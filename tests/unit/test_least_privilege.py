"""Least privilege without a database: the migrations' grant convention, the
schema check's verdicts, ``consentd migrate`` without its URL, and the journal's
file modes. The live privileges are tested in tests/e2e/test_least_privilege.py."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from consentd import cli
from consentd.journal import Journal
from consentd.ledger_pg import SchemaBehind, check_schema, latest_version, migrations

DAEMON_ROLE = "consentd"
#: What the daemon may never do to the ledger itself.
FORBIDDEN_ON_LEDGER = ("UPDATE", "DELETE", "TRUNCATE", "ALL", "REFERENCES", "TRIGGER")

_CREATE_TABLE = re.compile(
    r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s*\((.*?)\);", re.I | re.S
)
_GRANT = re.compile(
    r"GRANT\s+([\w\s,]+?)\s+ON\s+(?:TABLE\s+)?([\w\s,]+?)\s+TO\s+(\w+)", re.I | re.S
)
_GRANT_SEQUENCE = re.compile(r"GRANT\s+USAGE\s+ON\s+SEQUENCE\s+(\w+)\s+TO\s+(\w+)", re.I)


def _sql_without_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def _grants() -> dict[str, set[str]]:
    """Privileges granted to the daemon's role, by table, over every migration."""
    granted: dict[str, set[str]] = {}
    for _, _, sql in migrations():
        for privileges, tables, role in _GRANT.findall(_sql_without_comments(sql)):
            if role != DAEMON_ROLE or "SEQUENCE" in tables.upper().split():
                continue
            for table in (t.strip() for t in tables.split(",")):
                granted.setdefault(table, set()).update(
                    p.strip().upper() for p in privileges.split(",")
                )
    return granted


def test_every_table_a_migration_creates_is_granted_to_the_daemon_in_the_same_file() -> None:
    """The convention: a migration that creates a table grants role consentd what
    the daemon needs on it (0001's call_events was created before roles were
    split, and is granted by 0005); a serial column's sequence gets USAGE when
    the daemon may INSERT."""
    granted = _grants()
    for version, name, sql in migrations():
        text = _sql_without_comments(sql)
        for table, columns in _CREATE_TABLE.findall(text):
            assert table in granted, (
                f"{name} creates {table} and grants role consentd nothing on it"
            )
            if version > 1:
                in_file = {t.strip() for _, ts, r in _GRANT.findall(text) for t in ts.split(",")}
                assert table in in_file, f"{name} creates {table}: grant it in the same file"
            if "INSERT" in granted[table] and re.search(r"\b(big)?serial\b", columns, re.I):
                sequences = {s for s, role in _GRANT_SEQUENCE.findall(
                    "\n".join(_sql_without_comments(m[2]) for m in migrations())
                ) if role == DAEMON_ROLE}  # fmt: skip
                column = re.search(r"(\w+)\s+(?:big)?serial\b", columns, re.I)
                assert column is not None
                assert f"{table}_{column.group(1)}_seq" in sequences, (
                    f"the daemon inserts into {table}: grant USAGE on its sequence"
                )


def test_the_daemon_may_only_append_to_the_ledger_and_read_it() -> None:
    granted = _grants()
    assert granted["call_events"] == {"SELECT", "INSERT"}
    assert granted["consentd_migrations"] == {"SELECT"}
    for table, privileges in granted.items():
        assert "ALL" not in privileges, table
        assert not privileges & {"TRUNCATE", "REFERENCES", "TRIGGER", "DELETE"}, table
    for _, name, sql in migrations():
        # No blanket grants and no default privileges: each table is granted by name.
        assert not re.search(r"ON\s+ALL\s+TABLES|DEFAULT\s+PRIVILEGES", sql, re.I), name


def test_migration_versions_are_unique() -> None:
    versions = [version for version, _, _ in migrations()]
    assert len(versions) == len(set(versions))
    assert latest_version() == max(versions)


class _Conn:
    """What check_schema asks of a connection: the table's existence, the versions."""

    def __init__(self, versions: set[int] | None) -> None:
        self.versions = versions

    async def fetchval(self, query: str, *args: Any) -> Any:
        return None if self.versions is None else "consentd_migrations"

    async def fetch(self, query: str, *args: Any) -> list[dict[str, int]]:
        return [{"version": v} for v in sorted(self.versions or ())]


def _check(versions: set[int] | None) -> None:
    asyncio.run(check_schema(_Conn(versions), "postgresql://consentd:pw@db/consentd"))


def test_a_schema_behind_the_migrations_is_refused_with_what_to_run() -> None:
    every = {version for version, _, _ in migrations()}
    _check(every)
    _check(every | {max(every) + 1})  # a newer node migrated: fine
    for behind in (None, set(), every - {max(every)}, every - {min(every)}):
        with pytest.raises(SchemaBehind) as caught:
            _check(behind)
        message = str(caught.value)
        assert "consentd migrate" in message and "CONSENTD_MIGRATION_DATABASE_URL" in message
        assert f"needs {latest_version()}" in message
        assert "pw" not in message


def test_migrate_without_the_owners_url_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("CONSENTD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONSENTD_DATABASE_URL", "postgresql://consentd@db/consentd")
    assert cli.main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "CONSENTD_MIGRATION_DATABASE_URL" in err and "not the daemon's" in err


def test_migrate_reports_an_unreachable_database_with_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "CONSENTD_MIGRATION_DATABASE_URL", "postgresql://owner:hunter2@127.0.0.1:1/consentd"
    )
    assert cli.main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the database" in err and "hunter2" not in err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_journal_and_what_it_sets_aside_are_the_daemons_alone(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # the usual one: the modes must not come from it
    try:
        journal = Journal(tmp_path / "journal" / "pbx.jsonl")
        journal.append(['{"a": 1}', '{"a": 2}'])
    finally:
        os.umask(old_umask)
    assert _mode(tmp_path / "journal") == 0o700
    assert _mode(tmp_path / "journal" / "pbx.jsonl") == 0o600
    chunk = next(journal.chunks(1))
    chunk.done()
    journal.compact()  # rewritten through a temporary file
    assert _mode(tmp_path / "journal" / "pbx.jsonl") == 0o600
    # A torn tail is set aside (.torn), also 0600; an old 0644 journal is made 0600.
    path = tmp_path / "journal" / "pbx.jsonl"
    path.write_text('{"a": 2}\n{"a": 3')
    path.chmod(0o644)
    Journal(path)
    assert _mode(path) == 0o600
    assert _mode(path.with_suffix(".torn")) == 0o600

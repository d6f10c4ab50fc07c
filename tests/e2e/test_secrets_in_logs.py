"""No secret of the stack ever shows in a log, an error, a URL or a process's arguments.

Runs after every other end-to-end and fault test (tests/e2e/conftest.py), so
the logs it reads hold the whole run: consentd's, Asterisk's messages and
console logs, PostgreSQL's server log. It adds what an operator does (restart
the daemon, ``consentd calls``, ``consentd check --pbx``, ``stack.sh status``),
then greps all of that, and every process's argument list, for each password
and token in .state/stack.json.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import REPO, ROOT, STACK, Stack, local_stack

pytestmark = pytest.mark.e2e

CONSENTD = str(REPO / ".venv" / "bin" / "consentd")
STATE = REPO / ".state"


def _logs() -> list[Path]:
    files = [
        STATE / "consentd.log",
        STATE / "asterisk.console.log",
        STATE / "pg-initdb.log",
        *sorted((ROOT / "var" / "log" / "asterisk").rglob("*")),
        *sorted((STATE / "pg").glob("*.log")),
        *sorted((STATE / "pg" / "log").glob("*")),
    ]
    return [f for f in files if f.is_file()]


def _run(*args: str) -> str:
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    return result.stdout + result.stderr


def test_stack_json_is_private_and_complete(stack: Stack) -> None:
    file = STATE / "stack.json"
    described = local_stack()

    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE((STATE / "secrets").stat().st_mode) == 0o700
    assert described.sip == "127.0.0.1:5060"
    assert described.data["trunk"] == "127.0.0.1:5062"
    assert described.http == "http://127.0.0.1:8090"
    assert sorted(described.data["agents"]) == ["agent1", "agent2", "agent3"]
    assert {a["port"] for a in described.data["agents"].values()} == {5071, 5072, 5073}
    assert described.database_url.startswith("postgresql://consentd:")
    secrets = described.secrets()
    assert len(set(secrets.values())) == len(secrets)  # each generated on its own
    assert all(len(value) >= 32 for value in secrets.values())


def test_no_secret_in_any_log_or_argument_list(stack: Stack) -> None:
    secrets = local_stack().secrets()
    assert len(secrets) >= 8  # ari, ami, ami_tests, api token, 3 agents, database

    said = [
        _run(str(STACK), "up", str(stack.policies)),  # restarts the daemon
        _run(str(STACK), "status"),
        _run(CONSENTD, "calls", "--limit", "3"),
        _run(CONSENTD, "check", str(stack.policies), "--pbx"),
    ]
    processes = _run("ps", "-eo", "args")
    assert "consentd run" in processes  # the daemon is running while we look

    leaks = []
    for where, text in [
        *((str(log.relative_to(REPO)), log.read_text(errors="replace")) for log in _logs()),
        *((f"output of command {n}", out) for n, out in enumerate(said)),
        ("ps -eo args", processes),
    ]:
        leaks += [f"{name} in {where}" for name, value in secrets.items() if value in text]
    assert leaks == []
    assert (STATE / "consentd.log").stat().st_size > 0
    assert (ROOT / "var" / "log" / "asterisk" / "messages").stat().st_size > 0

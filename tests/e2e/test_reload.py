"""Live reload of the policy file against the real stack, with real SIP calls.

The module runs the daemon on a policy file of its own, rewrites that file
and reloads it the ways an operator would (``consentd reload``, SIGHUP), and
checks what the calls and the ledger show afterwards. The stack's own file is
restored at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from consentd.sipp import CallPlan, CallResult, place_call
from tests.e2e.harness import (
    REPO,
    SCENARIO,
    Stack,
    consentd_calls,
    database_url,
    ledger_rows,
    restart_daemon,
)

pytestmark = pytest.mark.e2e

CONSENTD = str(REPO / ".venv" / "bin" / "consentd")
PID_FILE = REPO / ".state" / "run" / "consentd.pid"
LOG_FILE = REPO / ".state" / "consentd.log"

#: The starting point of every test: each writes it and reloads before its own change.
BASE = """\
default: {recording: never}
numbers:
  "+4930100091": {recording: opt_in}
  "+4930100092": {recording: always}
  "+4930100093": {recording: never}
"""


@pytest.fixture(scope="module")
def policies(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    file = tmp_path_factory.mktemp("reload") / "policies.yaml"
    file.write_text(BASE)
    restart_daemon(file)
    try:
        yield file
    finally:
        stack.restart_daemon()  # back to the stack's own policies for the other tests


@pytest.fixture
def base(policies: Path) -> Path:
    policies.write_text(BASE)
    result = reload()
    assert result.returncode == 0, result.stdout + result.stderr
    return policies


def reload() -> subprocess.CompletedProcess[str]:
    """``consentd reload`` exactly as an operator runs it: no flags."""
    return subprocess.run(
        [CONSENTD, "reload"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )


async def _rows(query: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url())
    try:
        rows = await conn.fetch(query, *args)
    finally:
        await conn.close()
    return [{**dict(r), "data": json.loads(r["data"])} for r in rows]


def reload_rows(kind: str, since: datetime) -> list[dict[str, Any]]:
    return asyncio.run(
        _rows(
            "SELECT call_id, node, kind, occurred_at, data::text AS data FROM call_events"
            " WHERE kind = $1 AND occurred_at >= $2 ORDER BY occurred_at",
            kind,
            since,
        )
    )


def call_started(caller: str, since: datetime) -> dict[str, Any] | None:
    rows = asyncio.run(
        _rows(
            "SELECT call_id, data::text AS data FROM call_events WHERE kind = 'call_started'"
            " AND data->>'caller' = $1 AND occurred_at >= $2",
            caller,
            since,
        )
    )
    return rows[0] if rows else None


def wait_for(what: str, probe: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not seen within {timeout:.0f} s")


def details_of(callers: list[str], since: datetime) -> dict[str, dict[str, Any]]:
    """``consentd calls --json`` once every caller's call has ended."""

    def ended() -> dict[str, dict[str, Any]] | None:
        by_caller = {c["caller"]: c for c in consentd_calls(since=since) if c["ended_at"]}
        return by_caller if all(c in by_caller for c in callers) else None

    found: dict[str, dict[str, Any]] = wait_for("call details", ended)
    return found


def call(plan: CallPlan, port: int) -> CallResult:
    return asyncio.run(
        place_call(plan, SCENARIO, sip_port=port, media_port=16000 + 10 * (port - 5100))
    )


def test_a_reload_applies_to_new_calls_and_a_call_in_progress_keeps_its_policy(
    base: Path,
) -> None:
    since = datetime.now(UTC)
    # Opt-in, and the caller presses 3 four seconds in: after the reload below.
    early = CallPlan("+4930100091", "+4915100009101", 4000, "3", talk_ms=3000, speak=True)
    late = CallPlan("+4930100091", "+4915100009102", 1500, "3", talk_ms=2000, speak=True)

    async def scenario() -> tuple[CallResult, CallResult, subprocess.CompletedProcess[str]]:
        first = asyncio.create_task(place_call(early, SCENARIO, sip_port=5100, media_port=16000))
        started = await asyncio.to_thread(
            wait_for, "first call", lambda: call_started(early.caller, since)
        )
        base.write_text(
            BASE.replace(
                '"+4930100091": {recording: opt_in}', '"+4930100091": {recording: never}'
            ).replace('  "+4930100093": {recording: never}\n', "")
            + '  "+4930100094": {recording: opt_in}\n'
        )
        result = await asyncio.to_thread(reload)
        # The first call has not pressed 3 yet: the reload really happened mid-call.
        kinds = [r["kind"] for r in await asyncio.to_thread(ledger_rows, started["call_id"])]
        assert "keypress" not in kinds, kinds
        second = await place_call(late, SCENARIO, sip_port=5102, media_port=16020)
        return await first, second, result

    first, second, result = asyncio.run(scenario())

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"reloaded {base}: 1 number added (+4930100094), 1 removed (+4930100093), "
        "1 changed (+4930100091)\n"
    )
    assert first.ok, first.output[-2000:]
    assert second.ok, second.output[-2000:]
    details = details_of([early.caller, late.caller], since)
    kept, new = details[early.caller], details[late.caller]
    # The call in progress still offered opt-in, so its 3 after the reload started the recording.
    assert kept["call_recording_consent"] == "opt_in"
    assert kept["call_recording_consent_action"] == "caller_opted_in"
    assert len(kept["recordings"]) == 1 and kept["recording_time"] >= 2, kept
    # A call placed after the reload follows the new file: never recorded, the 3 changes nothing.
    assert new["call_recording_consent"] == "never"
    assert new["call_recording_consent_action"] is None
    assert (new["recordings"], new["recording_time"]) == ([], 0)
    assert ledger_rows(new["id"])[0]["data"]["policy"] == "never"
    assert ledger_rows(kept["id"])[0]["data"]["policy"] == "opt_in"


def test_an_invalid_file_is_refused_with_every_error_and_the_last_good_one_serves(
    base: Path,
) -> None:
    since = datetime.now(UTC)
    base.write_text(
        BASE.replace('"+4930100091": {recording: opt_in}', '"+4930100091": {recording: always}')
        + '  "4930100095": {recording: always}\n'
        + '  "+4930100096": {recording: opt_in, line: digital}\n'
        + '  "+4930100097": {recording: never, colour: red}\n'
    )

    result = reload()
    check = subprocess.run([CONSENTD, "check", str(base)], capture_output=True, text=True)

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    errors = result.stderr.splitlines()
    # Every error, as `consentd check` prints them, then one line that says what happened.
    assert check.returncode == 1
    assert errors[:-1] == check.stderr.splitlines()[:-1]
    assert [e.split(": ")[0] for e in errors[:-1]] == [f"{base}:6", f"{base}:7", f"{base}:8"]
    assert "is not E.164" in errors[0] and "digital line" in errors[1]
    assert "unknown key 'colour'" in errors[2]
    assert errors[-1] == (
        f"consentd reload: {base}: refused, 3 errors; the daemon keeps its last good policies"
    )
    [refused] = wait_for("refused row", lambda: reload_rows("policies_reload_refused", since))
    assert refused["data"]["errors"] == errors[:-1]

    plan = CallPlan("+4930100091", "+4915100009103", talk_ms=2000, speak=True)
    assert call(plan, 5104).ok
    details = details_of([plan.caller], since)[plan.caller]
    assert details["call_recording_consent"] == "opt_in"  # the last good file, not "always"
    assert ledger_rows(details["id"])[0]["data"]["policy"] == "opt_in"


def test_sighup_reloads_the_file_and_logs_it(base: Path) -> None:
    since = datetime.now(UTC)
    log_start = LOG_FILE.stat().st_size
    pid = int(PID_FILE.read_text())
    base.write_text(
        BASE.replace('"+4930100092": {recording: always}', '"+4930100092": {recording: never}')
    )

    os.kill(pid, signal.SIGHUP)

    [row] = wait_for("policies_reloaded row", lambda: reload_rows("policies_reloaded", since))
    assert row["data"]["trigger"] == "sighup"
    assert row["data"]["changed"] == ["+4930100092"]
    assert Path(f"/proc/{pid}").exists(), "SIGHUP must not stop consentd"
    with LOG_FILE.open("rb") as log:
        log.seek(log_start)
        logged = log.read().decode(errors="replace")
    assert "policies_reloaded" in logged
    assert f"reloaded {base}: 0 numbers added, 0 removed, 1 changed (+4930100092)" in logged

    plan = CallPlan("+4930100092", "+4915100009104", talk_ms=2000, speak=True)
    assert call(plan, 5106).ok
    details = details_of([plan.caller], since)[plan.caller]
    assert details["call_recording_consent"] == "never"
    assert details["recordings"] == []


def test_the_ledger_says_which_numbers_a_reload_added_removed_and_changed(base: Path) -> None:
    since = datetime.now(UTC)
    base.write_text(
        BASE.replace("default: {recording: never}", "default: {recording: always}")
        .replace('"+4930100092": {recording: always}', '"+4930100092": {recording: opt_out}')
        .replace('  "+4930100093": {recording: never}\n', "")
        + '  "+4930100098": {recording: never}\n'
        + "groups:\n  sales: {queue: support}\n"
    )

    result = reload()

    assert result.returncode == 0, result.stderr
    [row] = wait_for("policies_reloaded row", lambda: reload_rows("policies_reloaded", since))
    assert row["call_id"] == f"policies:{row['node']}"
    assert row["data"] == {
        "file": str(base),
        "trigger": "http",
        "numbers": 3,
        "added": ["+4930100098"],
        "removed": ["+4930100093"],
        "changed": ["+4930100092"],
        "default_changed": True,
        "groups_changed": True,
    }
    # Not a call: `consentd calls` does not list it (and does not trip over it).
    assert not [c for c in consentd_calls(since=since) if c["id"].startswith("policies:")]

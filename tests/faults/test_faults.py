"""Consent safety under faults: each case runs 200 calls with media while one thing breaks.

Half the callers press 3 (opt-in: consent; opt-out: refusal). In the middle
of the load one fault strikes and is then repaired. Afterwards, from the
ledger and the disk only:
- every call that reached consentd has one start, one end (or was handed on)
  and at most one consent decision;
- no recording is kept for an opt-in call without a 3, or an opt-out call
  after its 3;
- no duplicate rows, no process left behind.
The counts are printed per case (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from consentd.sipp import AgentResult, CallPlan, CallResult, place_call, run_agent
from tests.e2e.harness import (
    REPO,
    ROOT,
    SCENARIO,
    Stack,
    collect_outcomes,
    database_url,
    restart_daemon,
    stack_command,
    wav_seconds,
)
from tests.faults.load import REPORT, place_load, verdict
from tests.faults.proxy import Proxy

pytestmark = pytest.mark.e2e

RUN = REPO / ".state" / "run"
AGENT_SCENARIO = REPO / "sipp-scenarios" / "agent.xml"
CALLS_PER_GROUP, CPS_PER_GROUP = 50, 2.5
Fault = Callable[[], Awaitable[None]]


def _pid(name: str) -> int:
    return int((RUN / f"{name}.pid").read_text())


def _daemon(stack: Stack, **env: str) -> None:
    restart_daemon(stack.policies, **env)


def _wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)


def _asterisk(command: str) -> None:
    subprocess.run(
        ["chroot", str(ROOT), "/usr/sbin/asterisk", "-rx", command],
        capture_output=True,
        timeout=20,
        check=False,
    )


@pytest.fixture
def proxies(stack: Stack) -> Iterator[tuple[Proxy, Proxy]]:
    """consentd talks to ARI and AMI through proxies the test can cut."""
    with Proxy(18088, 8088) as ari, Proxy(15038, 5038) as ami:
        _daemon(stack, CONSENTD_ARI_URL="http://127.0.0.1:18088/ari", CONSENTD_AMI_PORT="15038")
        yield ari, ami
    _daemon(stack)


def _run_case(
    name: str, stack: Stack, tmp: Path, strike: Fault, repair: Fault, *, cuts_calls: bool = False
) -> None:
    since = time.time() - 1

    async def scenario() -> int:
        load = asyncio.create_task(
            place_load(tmp, calls_per_group=CALLS_PER_GROUP, cps_per_group=CPS_PER_GROUP)
        )
        await asyncio.sleep(7)
        await strike()
        await asyncio.sleep(5)
        await repair()
        results = await load
        return sum(r.offered for r in results)

    placed = asyncio.run(scenario())
    result = asyncio.run(verdict(since, placed, callers_hang_up=not cuts_calls))
    print(result.line(name))
    REPORT.append(result.line(name))
    assert placed >= 4 * CALLS_PER_GROUP * 0.95
    assert result.calls > 0
    assert result.forbidden == [], result.forbidden[:5]
    assert result.duplicates == [], result.duplicates[:5]
    assert result.unended == [], result.unended[:5]
    assert result.misdated == [], result.misdated[:5]
    stray = subprocess.run(["pgrep", "-x", "sipp"], capture_output=True, text=True).stdout
    assert stray == "", f"SIPp processes left: {stray.split()}"


def _thread(fn: Callable[[], object]) -> Fault:
    async def run() -> None:
        await asyncio.to_thread(fn)

    return run


def test_postgres_stops_and_restarts(stack: Stack, tmp_path: Path) -> None:
    _run_case(
        "postgres restart", stack, tmp_path,
        _thread(lambda: stack_command("db-stop")), _thread(lambda: stack_command("db-start")),
    )  # fmt: skip


def test_consentd_is_killed_and_restarted(stack: Stack, tmp_path: Path) -> None:
    def kill() -> None:
        pid = _pid("consentd")
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10)

    _run_case("consentd SIGKILL", stack, tmp_path, _thread(kill), _thread(lambda: _daemon(stack)))


def test_consentd_is_stopped_under_load_and_started_again(stack: Stack, tmp_path: Path) -> None:
    def term() -> None:
        pid = _pid("consentd")
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid, 30)

    _run_case("consentd SIGTERM", stack, tmp_path, _thread(term), _thread(lambda: _daemon(stack)))


def test_asterisk_restarts(stack: Stack, tmp_path: Path) -> None:
    def restart() -> None:
        stack_command("asterisk-restart")

    async def nothing() -> None:
        return None

    _run_case("asterisk restart", stack, tmp_path, _thread(restart), nothing, cuts_calls=True)


def test_the_ari_websocket_drops(
    stack: Stack, tmp_path: Path, proxies: tuple[Proxy, Proxy]
) -> None:
    ari, _ = proxies
    _run_case(
        "ARI drop", stack, tmp_path, _thread(lambda: ari.cut(refuse=True)), _thread(ari.restore)
    )


def test_ami_drops(stack: Stack, tmp_path: Path, proxies: tuple[Proxy, Proxy]) -> None:
    _, ami = proxies
    _run_case(
        "AMI drop", stack, tmp_path, _thread(lambda: ami.cut(refuse=True)), _thread(ami.restore)
    )


def test_the_journal_disk_fills_while_postgres_is_away(stack: Stack, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    journal.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(journal)], check=True)
    try:
        _daemon(stack, CONSENTD_JOURNAL_DIR=str(journal))

        def fill() -> None:
            stack_command("db-stop")
            fd = os.open(journal / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, bytes(4096))
            except OSError:
                pass  # full: every journal write fails from now on
            finally:
                os.close(fd)

        def repair() -> None:
            (journal / "filler").unlink()
            stack_command("db-start")

        log = REPO / ".state" / "consentd.log"
        before = log.read_text().count("journal_write_failed")
        _run_case("journal disk full", stack, tmp_path, _thread(fill), _thread(repair))
        # the fault really struck: the daemon had to keep events in memory
        assert log.read_text().count("journal_write_failed") > before
    finally:
        _daemon(stack)
        subprocess.run(["umount", "-l", str(journal)], check=False)


def _chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


async def _failed_deletes(since: float) -> tuple[int, int]:
    """(refused segments whose delete failed, how many of them have a recording_deleted
    since: tried again during the call, or late by the ledger sweep after it)."""
    conn = await asyncpg.connect(database_url())
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS failed, count(*) FILTER (WHERE EXISTS ("
            "   SELECT 1 FROM call_events d WHERE d.call_id = f.call_id"
            "   AND d.kind = 'recording_deleted' AND d.seq > f.seq"
            "   AND d.data->'segment' = f.data->'segment')) AS settled"
            " FROM call_events f WHERE f.kind = 'command_failed'"
            " AND f.data->>'command' = 'DeleteRecording' AND f.occurred_at >= to_timestamp($1)",
            since,
        )
    finally:
        await conn.close()
    return int(row["failed"]), int(row["settled"])


def test_the_recording_directory_refuses_deletes(stack: Stack, tmp_path: Path) -> None:
    """Refusals whose audio cannot be deleted during the call (the directory
    refuses unlinks: chattr +i here; a read-only remount or a stale NFS mount
    elsewhere) are deleted after the call, once it is writable again."""
    monitor = ROOT / "var/spool/asterisk/monitor"
    since = time.time() - 1
    try:
        _daemon(stack, CONSENTD_DELETE_RETRY_SECONDS="2")
        log = REPO / ".state" / "consentd.log"
        before = log.read_text().count("refused_audio_not_deleted")
        _run_case(
            "recording deletes refused", stack, tmp_path,
            _thread(lambda: _chattr("+i", monitor)), _thread(lambda: _chattr("-i", monitor)),
        )  # fmt: skip
        # the fault really struck, and the audio it left was deleted afterwards
        assert log.read_text().count("refused_audio_not_deleted") > before
        failed, settled = asyncio.run(_failed_deletes(since))
        assert failed > 0 and settled == failed, (failed, settled)
    finally:
        _chattr("-i", monitor)
        _daemon(stack)


def test_an_agent_answer_while_ami_is_down_is_recovered_from_the_bridge(
    stack: Stack, proxies: tuple[Proxy, Proxy]
) -> None:
    """app_queue's AgentConnect is sent while AMI is cut: without recovery the bridged
    audio of an "always" call would count as 0 s recorded."""
    _, ami = proxies
    since = datetime.now(UTC)
    # Long enough that AMI, back after 4 s, reconnects while the call is still up: its
    # backoff (jittered, doubling from 0.2 s) may wait almost 5 s after the restore.
    plan = CallPlan("+4930100012", "+4915100000501", talk_ms=16000, speak=True)

    async def scenario() -> tuple[CallResult, AgentResult]:
        agent = asyncio.create_task(
            run_agent(AGENT_SCENARIO, port=5071, answer_ms=3000, media_port=16150)
        )
        await asyncio.sleep(0.3)
        caller = asyncio.create_task(place_call(plan, SCENARIO, sip_port=5180, media_port=17800))
        await asyncio.sleep(2.0)  # greeting done, queued, agent1 ringing
        await asyncio.to_thread(ami.cut, refuse=True)
        await asyncio.sleep(4.0)  # agent1 answers meanwhile
        ami.restore()
        return await caller, await agent

    caller, agent = asyncio.run(scenario())
    outcome = collect_outcomes({"call": (caller, agent)}, since)["call"]

    assert caller.ok and agent.ok, caller.output[-1500:] + agent.output[-1500:]
    connected = outcome.first("agent_connected")
    assert connected["data"]["recovered"] is True
    assert connected["data"]["interface"] == "PJSIP/agent1"
    bridged = outcome.seconds("call_ended") - outcome.seconds("agent_connected")
    # The bridge's creation time: the answer came ~3 s into ringing, not at the reconnect.
    assert 2.0 <= outcome.seconds("agent_connected") <= 5.5
    assert abs(outcome.details["recording_time"] - bridged) <= 1.0
    (recording,) = outcome.details["recordings"]
    measured = wav_seconds(stack.host_path(recording.removeprefix(str(stack.root))))
    assert abs(measured - bridged) <= 0.6, (measured, bridged)

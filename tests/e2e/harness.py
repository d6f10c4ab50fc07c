"""Helpers for end-to-end tests: drive the real stack and read what it left behind."""

from __future__ import annotations

import asyncio
import json
import math
import os
import struct
import subprocess
import time
import wave
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from consentd.local_stack import LocalStack
from consentd.sipp import AgentResult, CallResult

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / ".cache" / "asterisk-root"
STACK = REPO / "scripts" / "stack.sh"
SCENARIO = REPO / "sipp-scenarios" / "caller.xml"


def local_stack() -> LocalStack:
    """Endpoints and credentials of the running stack (.state/stack.json, written by `up`)."""
    return LocalStack.load()


def database_url() -> str:
    """The ledger's database: $CONSENTD_DATABASE_URL if set, else the stack's own."""
    return os.environ.get("CONSENTD_DATABASE_URL") or local_stack().database_url


def migration_database_url() -> str:
    """The schema owner's URL (DDL: schemas of its own for a test), not the daemon's."""
    return os.environ.get("CONSENTD_MIGRATION_DATABASE_URL") or local_stack().migration_database_url


POLICIES = """\
default: {recording: never}
groups:
  support: {queue: support, timeout: 20, no_answer: voicemail}
  support-short: {queue: support, timeout: 4, no_answer: voicemail, voicemail_max_seconds: 30}
numbers:
  "+4930100001": {recording: always}
  "+4930100002": {recording: opt_in, language: de}
  "+4930100003": {recording: opt_out}
  "+4930100004": {recording: never}
  "+4930100005": {recording: always, line: digital}
  "+4930100006": {recording: opt_out, keep_partial_on_opt_out: true}
  "+4930100007": {recording: opt_in}
  "+4930100008": {recording: opt_in, greetings: {opt_in: custom-opt-in.wav}}
  "+4930100009": {recording: opt_in, greetings: {call_recording_opt_in: operator-greeting.mp3}}
  "+4930100015": {recording: opt_in, allow_withdrawal: true, greetings: {opt_in: short.wav}}
  "+4930100016": {recording: always, pause_gap: skip}
  # Its greeting is taken away from Asterisk before the call (test_consent_notice.py).
  "+4930100017": {recording: opt_out, greetings: {opt_out: notice-missing.wav}}
  # Operator numbers agents call out as (agents: below).
  "+4930100031": {recording: always}
  "+4930100032": {recording: opt_in}
  "+4930100033": {recording: opt_out}
  "+4930100034": {recording: never}
  "+4930100035": {recording: always, outbound_announcement: true}
  "+4930100036": {recording: always, pause_gap: skip}
  # Group-routed numbers; one-second greetings keep the tests short.
  "+4930100010": {recording: opt_in, routing: {group: support},
                  greetings: {available: short.wav, opt_in: short.wav}}
  "+4930100011": {recording: opt_out, routing: {group: support},
                  greetings: {available: short.wav, opt_out: short.wav}}
  "+4930100012": {recording: always, routing: {group: support}, greetings: {available: short.wav}}
  "+4930100013": {recording: never, routing: {group: support}, greetings: {available: short.wav}}
  "+4930100014": {recording: never, routing: {group: support-short},
                  greetings: {available: short.wav, voicemail: short.wav}}
  # IVR menus (no consent greeting: the menu's prompt mentions key 3) and a
  # hand-off to the PBX's own dialplan (extensions.conf, pbx-extensions).
  "+4930100020": {recording: opt_in, routing: {ivr: main},
                  greetings: {available: short.wav, voicemail: short.wav}}
  "+4930100021": {recording: opt_out, greetings: {opt_out: short.wav},
                  routing: {dialplan: {context: pbx-extensions, extension: "200"}}}
# Not the defaults (*1, *2): consentd must install these into Asterisk.
agent_controls: {pause: "*7", resume: "#8"}
agents:
  agent1: {outbound_number: "+4930100031"}
  agent2: {outbound_number: "+4930100032"}
ivr:
  main:
    greeting: {file: short.wav}
    invalid: {file: short.wav}
    options:
      "1": {group: support}
      "2": {voicemail: true}
      "4": {dialplan: {context: pbx-extensions, extension: "200"}}
      "9": {ivr: sub}
    timeout: 2
    retries: 1
    default: {hangup: true}
  sub:
    greeting: {file: short.wav}
    options: {"1": {group: support}, "0": {ivr: main}}
    timeout: 2
    retries: 0
"""

#: Length of short.wav, the greetings of the group-routed numbers.
SHORT_GREETING_S = 1.0
#: Length of operator-greeting.mp3 (44.1 kHz stereo MP3), +4930100009's greeting.
MP3_GREETING_S = 1.5


@dataclass(frozen=True)
class Stack:
    root: Path
    policies: Path
    custom_greeting: Path

    def host_path(self, asterisk_path: str) -> Path:
        return self.root / asterisk_path.lstrip("/")

    def greeting_seconds(self, language: str, kind: str = "opt_in") -> float:
        return wav_seconds(self.root / f"var/lib/asterisk/sounds/{language}/consentd/{kind}.wav")

    def restart_daemon(self) -> None:
        stack_command("up", str(self.policies))

    def stop_daemon(self) -> None:
        pid_file = REPO / ".state" / "run" / "consentd.pid"
        pid = int(pid_file.read_text())
        subprocess.run(["kill", "-TERM", str(pid)], check=True)
        for _ in range(150):
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.1)
        raise AssertionError(f"consentd (pid {pid}) did not stop within 15 s")


def restart_daemon(policies: Path, **env: str) -> None:
    """(Re)start consentd the way `make up` does, with extra settings in its environment."""
    subprocess.run(
        [str(STACK), "up", str(policies)],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
    )


def run_script(script: Path, *args: str) -> str:
    """Run one of scripts/*.sh with no input; its output, or RuntimeError with all of it."""
    result = subprocess.run(
        [str(script), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"scripts/{script.name} {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def stack_command(*args: str) -> None:
    run_script(STACK, *args)


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def write_tone(path: Path, seconds: float, freq: float = 660.0) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        frames = b"".join(
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / 8000)))
            for i in range(int(seconds * 8000))
        )
        wav.writeframes(frames)


def write_test_greetings(directory: Path) -> None:
    """The greeting files POLICIES names, beside it: operators' greetings as they come
    (WAV tones, and an MP3 at 44.1 kHz stereo, converted at load)."""
    write_tone(directory / "custom-opt-in.wav", 2.0)
    write_tone(directory / "short.wav", SHORT_GREETING_S, freq=500.0)
    write_tone(directory / "notice-missing.wav", SHORT_GREETING_S, freq=830.0)
    subprocess.run(
        ["sox", "-n", "-r", "44100", "-c", "2", str(directory / "operator-greeting.mp3"),
         "synth", str(MP3_GREETING_S), "sine", "700"],
        check=True,
    )  # fmt: skip


def consentd_calls(limit: int = 200, since: datetime | None = None) -> list[dict[str, Any]]:
    """The call details exactly as an operator gets them: the real CLI, no flags.

    ``since`` keeps calls of earlier runs (the database persists) out of the result.
    """
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "consentd"), "calls", "--json", "--limit", str(limit)],
        capture_output=True,
        text=True,
        check=True,
    )
    calls: list[dict[str, Any]] = json.loads(result.stdout)
    if since is None:
        return calls
    return [c for c in calls if datetime.fromisoformat(c["started_at"]) >= since]


async def _ledger_rows(call_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url())
    try:
        rows = await conn.fetch(
            "SELECT seq, kind, occurred_at, data::text AS data FROM call_events"
            " WHERE call_id = $1 ORDER BY seq",
            call_id,
        )
    finally:
        await conn.close()
    return [{**dict(r), "data": json.loads(r["data"])} for r in rows]


def ledger_rows(call_id: str) -> list[dict[str, Any]]:
    return asyncio.run(_ledger_rows(call_id))


@dataclass(frozen=True)
class CallOutcome:
    """One call as a test sees it afterwards: SIPp's results, the details, the ledger."""

    caller: CallResult
    agent: AgentResult | None
    details: dict[str, Any]
    ledger: list[dict[str, Any]]

    def rows(self, kind: str) -> list[dict[str, Any]]:
        return [row for row in self.ledger if row["kind"] == kind]

    def first(self, kind: str) -> dict[str, Any]:
        rows = self.rows(kind)
        assert rows, f"no {kind} in the ledger: {[r['kind'] for r in self.ledger]}"
        return rows[0]

    def seconds(self, kind: str) -> float:
        """When the first ``kind`` row happened, in seconds after the call started."""
        start = self.first("call_started")["occurred_at"]
        return float((self.first(kind)["occurred_at"] - start).total_seconds())


_Placed = TypeVar("_Placed")


async def beside_a_phone(
    phone: Awaitable[AgentResult], call: Awaitable[_Placed]
) -> tuple[_Placed, AgentResult]:
    """``call`` placed once ``phone`` (a SIPp UAS: an agent, a desk phone, the trunk's
    callee) listens, so Asterisk never rings a port nobody holds; both results."""
    answering = asyncio.ensure_future(phone)
    await asyncio.sleep(0.3)
    return await call, await answering


def ended_call_of(caller: str, since: datetime) -> dict[str, Any]:
    """The details of ``caller``'s call since ``since`` (an agent's outbound call shows
    the agent's name), once it has ended (15 s at most); {} if it never did."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ended = [c for c in consentd_calls(since=since) if c["caller"] == caller and c["ended_at"]]
        if ended:
            return ended[0]
        time.sleep(0.5)
    return {}


def collect_outcomes(
    results: dict[str, tuple[CallResult, AgentResult | None]], since: datetime
) -> dict[str, CallOutcome]:
    """Each case's outcome, once every caller's call has ended in the ledger (15 s at most)."""
    wanted = {caller.plan.caller for caller, _ in results.values()}
    by_caller: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        by_caller = {c["caller"]: c for c in consentd_calls(since=since) if c["ended_at"]}
        if wanted <= by_caller.keys():
            break
        time.sleep(0.5)
    found = {}
    for name, (caller, agent) in results.items():
        details = by_caller.get(caller.plan.caller, {})
        ledger = ledger_rows(details["id"]) if details else []
        found[name] = CallOutcome(caller, agent, details, ledger)
    return found

"""What one path did in one step: calls, recordings, latency, ledger, cost.

Every path is judged the same way from the outside: SIPp's record of the
calls, the WAV files Asterisk wrote, and for consentd also its ledger and its
process counters. The expected recording length comes from the plan: the
callers hang up a known time after the key, so a recording that starts late
is short by exactly its latency, for the baseline and consentd alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.fidelity import Fidelity, measure
from bench.sipp_load import REPO, LoadResult
from consentd.local_stack import LocalStack
from consentd.sipp_media import EVENT_PACKETS, PTIME_MS

ROOT = REPO / ".cache" / "asterisk-root"
MONITOR = ROOT / "var" / "spool" / "asterisk" / "monitor"


# Endpoints and credentials: the stack's .state/stack.json (written by `up`),
# read when needed; CONSENTD_DATABASE_URL still points the ledger elsewhere.
def _database_url() -> str:
    return os.environ.get("CONSENTD_DATABASE_URL") or LocalStack.load().database_url


def _ari() -> tuple[str, dict[str, str]]:
    stack = LocalStack.load()
    return stack.ari_url, stack.ari_headers()


def _healthz() -> str:
    return LocalStack.load().http + "/healthz"


#: Ledger kinds every call must have exactly once, and those its story adds.
EVERY_CALL = ("call_started", "call_ended")
DECIDED = ("consent_decided", "recording_started", "recording_stopped")
UNSERVED = ("call_unserved",)


@dataclass(frozen=True)
class Path_:
    name: str
    did: str
    file_prefix: str | None  # dialplan paths: their MixMonitor file names


PATHS = (
    Path_("floor", "+4930199000", "bench-floor-"),
    Path_("baseline", "+4930199001", "bench-baseline-"),
    Path_("consentd", "+4930199002", None),
)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


@dataclass
class StepMeasure:
    path: str
    cps: float
    media: str
    load: LoadResult
    #: Which run of this step this is, of how many (bench/repeats.py).
    run: int = 1
    runs: int = 1
    stranded: int = 0
    stranded_where: dict[str, int] = field(default_factory=dict)
    #: From SIPp's end to the moment Asterisk held no channel (None: some stranded).
    channels_gone_after_s: float | None = None
    fidelity: list[Fidelity] = field(default_factory=list)
    duration_errors: list[float] = field(default_factory=list)
    #: Per file, ms from its span's start to where its audio begins (see
    #: ``audio_start_late_ms``), and consentd's ledger stop minus the last write.
    audio_start_late_ms: list[float] = field(default_factory=list)
    stop_after_last_write_ms: list[float] = field(default_factory=list)
    latency_wav_ms: list[float] = field(default_factory=list)
    latency_ledger_ms: list[float] = field(default_factory=list)
    #: Per consentd call, how long its consent greeting still played after its
    #: recording began (``greeting_finished`` minus ``recording_started``, both
    #: Asterisk's times; 0 when it had ended). Over 80 ms, MixMonitor's pairing of
    #: the greeting with the caller's late RTP can insert silence (README).
    greeting_overlap_ms: list[float] = field(default_factory=list)
    keypress_late_ms: list[float] = field(default_factory=list)
    ledger_expected: int | None = None
    ledger_found: int | None = None
    ledger_duplicates: int | None = None
    ledger_calls: int | None = None
    ledger_backlog_left: int | None = None
    unserved: int = 0
    recording_failures: int = 0
    cpu_s: float | None = None
    rss_peak_mb: float | None = None
    ari_probes: int = 0
    others_cpu_s: dict[str, float] = field(default_factory=dict)
    ari_probe_failures: int = 0

    @property
    def keypress_late_p50_ms(self) -> float | None:
        """How late the key reached Asterisk against SIPp's plan, from the answer on.

        The ledger's times are Asterisk's own event times; SIPp's clock for the
        key starts at the 200 OK, so the median call setup time is taken off.
        """
        late, setup = _pct(self.keypress_late_ms, 50), _pct(self.load.setup_ms, 50)
        return None if late is None else late - (setup or 0.0)

    @property
    def generator_limited(self) -> bool:
        """Judged from SIPp's own record only (rate and call length): a key that
        reached the ledger late may be the path's own lag, which is measured."""
        return self.load.generator_limited

    def as_json(self) -> dict[str, Any]:
        load = self.load
        calls = max(1, load.completed + load.failed)

        def r(value: float | None, digits: int = 1) -> float | None:
            return None if value is None else round(value, digits)

        silent = [f.silent_block_share for f in self.fidelity]
        gaps = [f.longest_gap_ms for f in self.fidelity]
        cut = [f for f in self.fidelity if f.cuts]
        within = [e for e in self.duration_errors if abs(e) <= 0.3]
        middle = _pct(self.duration_errors, 50)
        close = [e for e in self.duration_errors if middle is not None and abs(e - middle) <= 0.3]
        return {
            "path": self.path,
            "cps": self.cps,
            "media": self.media,
            "run": self.run,
            "runs": self.runs,
            "offered": load.offered,
            "completed": load.completed,
            "failed": load.failed,
            "failure_reasons": dict(load.reasons),
            "stranded": self.stranded,
            "stranded_where": self.stranded_where,
            "channels_gone_after_s": r(self.channels_gone_after_s),
            "concurrent_calls": round(load.plan.cps * load.plan.call_ms / 1000),
            "generator_limited": self.generator_limited,
            "realised_cps": r(load.realised_cps, 2),
            "call_length_p50_s": r(_pct([c / 1000 for c in load.call_ms], 50), 2),
            "keypress_late_p50_ms": r(self.keypress_late_p50_ms),
            "setup_p50_ms": r(_pct(load.setup_ms, 50)),
            "setup_p99_ms": r(_pct(load.setup_ms, 99)),
            "hangup_p50_ms": r(_pct(load.bye_ms, 50)),
            "hangup_p99_ms": r(_pct(load.bye_ms, 99)),
            "latency_p50_ms": r(_pct(self.latency_wav_ms, 50)),
            "latency_p99_ms": r(_pct(self.latency_wav_ms, 99)),
            "ledger_latency_p50_ms": r(_pct(self.latency_ledger_ms, 50)),
            "ledger_latency_p99_ms": r(_pct(self.latency_ledger_ms, 99)),
            "greeting_overlap_ms_p99": r(_pct(self.greeting_overlap_ms, 99)),
            "greeting_overlap_ms_max": r(max(self.greeting_overlap_ms, default=None)),
            "recordings": len(self.fidelity),
            "duration_error_p50_s": r(_pct(self.duration_errors, 50), 3),
            "duration_error_p99_s": r(_pct([abs(e) for e in self.duration_errors], 99), 3),
            "duration_within_0_3s": r(100 * len(within) / len(self.duration_errors), 1)
            if self.duration_errors
            else None,
            # Share of files within 0.3 s of this step's median error: how evenly
            # the files came out, whatever the path's constant offset (the
            # floor's files come out 0.18 s shorter than their span at any rate).
            "duration_spread_within_0_3s": r(100 * len(close) / len(self.duration_errors), 1)
            if self.duration_errors
            else None,
            # Where a file's missing or extra audio sits: at the start (late first
            # audio) or the end (consentd's stop stamp against the file's last write).
            "audio_start_late_p50_ms": r(_pct(self.audio_start_late_ms, 50)),
            "audio_start_late_p99_ms": r(_pct(self.audio_start_late_ms, 99)),
            "stop_after_last_write_p50_ms": r(_pct(self.stop_after_last_write_ms, 50)),
            "stop_after_last_write_p99_ms": r(_pct(self.stop_after_last_write_ms, 99)),
            "silent_blocks_p99": r(_pct(silent, 99), 4),
            "longest_gap_ms_p99": r(_pct(gaps, 99)),
            "longest_gap_ms_max": r(max(gaps) if gaps else None),
            # Files whose tone was cut somewhere (bench/fidelity.py): audio lost
            # inside the recording rather than at its start.
            "files_with_cuts_percent": r(100 * len(cut) / len(self.fidelity), 1)
            if self.fidelity
            else None,
            "cuts_per_file_max": max((f.cuts for f in self.fidelity), default=None),
            "ledger_rows_expected": self.ledger_expected,
            "ledger_rows_found": self.ledger_found,
            "ledger_duplicates": self.ledger_duplicates,
            "ledger_calls": self.ledger_calls,
            "ledger_backlog_left": self.ledger_backlog_left,
            "unserved": self.unserved,
            "recording_failures": self.recording_failures,
            "cpu_s_per_1000_calls": r(1000 * self.cpu_s / calls, 2)
            if self.cpu_s is not None
            else None,
            "rss_peak_mb": r(self.rss_peak_mb),
            "asterisk_cpu_s_per_1000_calls": r(
                1000 * self.others_cpu_s.get("asterisk", 0.0) / calls, 2
            ),
            "postgres_cpu_s_per_1000_calls": r(
                1000 * self.others_cpu_s.get("postgres", 0.0) / calls, 2
            ),
            "sipp_cpu_s_per_1000_calls": r(1000 * self.others_cpu_s.get("sipp", 0.0) / calls, 2),
            # What the call cost every process that serves or makes it, on the
            # same cores: what bench/report.py::_cpu_ceiling compares.
            "stack_cpu_s_per_1000_calls": r(
                1000 * ((self.cpu_s or 0.0) + sum(self.others_cpu_s.values())) / calls, 2
            )
            if self.others_cpu_s
            else None,
            "fresh_ari_client_probes": self.ari_probes,
            "fresh_ari_client_failures": self.ari_probe_failures,
        }

    def one_line(self) -> str:
        j = self.as_json()
        parts = [
            f"{j['completed']}/{j['offered']} ok",
            f"{j['failed']} failed" + (f" {j['failure_reasons']}" if j["failure_reasons"] else ""),
            f"setup p50 {j['setup_p50_ms']} ms",
        ]
        if j["recordings"]:
            parts.append(
                f"{j['recordings']} files, dur err p50 {j['duration_error_p50_s']} s,"
                f" {j['duration_within_0_3s']} % within 0.3 s,"
                f" longest gap max {j['longest_gap_ms_max']} ms,"
                f" {j['files_with_cuts_percent']} % cut"
            )
        if j["latency_p50_ms"] is not None:
            parts.append(f"latency p50/p99 {j['latency_p50_ms']}/{j['latency_p99_ms']} ms")
        if j["ledger_rows_expected"] is not None:
            parts.append(
                f"ledger {j['ledger_rows_found']}/{j['ledger_rows_expected']} rows"
                f" for {j['ledger_calls']} calls, {j['unserved']} unserved"
            )
        parts.append(
            f"cpu s/1000 calls: asterisk {j['asterisk_cpu_s_per_1000_calls']}"
            f" consentd {j['cpu_s_per_1000_calls']} postgres {j['postgres_cpu_s_per_1000_calls']}"
            f" sipp {j['sipp_cpu_s_per_1000_calls']}, all {j['stack_cpu_s_per_1000_calls']}"
        )
        if j["rss_peak_mb"] is not None:
            parts.append(f"rss {j['rss_peak_mb']} MB")
        if j["fresh_ari_client_failures"]:
            parts.append(
                f"ARI LOCKOUT {j['fresh_ari_client_failures']}/{j['fresh_ari_client_probes']}"
            )
        if j["stranded"]:
            parts.append(f"STRANDED {j['stranded']}: {j['stranded_where']}")
        if j["generator_limited"]:
            parts.append("GENERATOR-LIMITED")
        return "; ".join(parts)


def _cpu_of(pid: int) -> float:
    """User plus system CPU seconds of a process, all its threads, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spent_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each part spent between two readings of StepMonitor._others.

    Each process counts only its own growth: a PostgreSQL backend that ended
    meanwhile is gone from the second reading (a sum over all of them would
    drop by its whole life and come out negative), one that began counts from
    zero. Readings keyed ``part:PID`` add up under ``part``.
    """
    spent: dict[str, float] = {"asterisk": 0.0, "postgres": 0.0, "sipp": 0.0}
    for key, now in after.items():
        part = key.split(":", 1)[0]
        spent[part] = spent.get(part, 0.0) + max(0.0, now - before.get(key, 0.0))
    return spent


class StepMonitor:
    """While a step runs: consentd's CPU seconds and peak RSS, and whether a
    fresh ARI client still gets an answer from Asterisk (a daemon that holds
    every HTTP session of Asterisk locks other ARI users out)."""

    def __init__(self) -> None:
        pid_file = REPO / ".state" / "run" / "consentd.pid"
        self.pid = int(pid_file.read_text()) if pid_file.exists() else None
        self.peak_kb = 0
        self._cpu0 = 0.0
        self.cpu_s: float | None = None
        self.probes = 0
        self.probe_failures = 0
        self._others0: dict[str, float] = {}
        self.others_cpu_s: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def _cpu(self) -> float:
        return _cpu_of(self.pid) if self.pid is not None else 0.0

    @staticmethod
    def _others() -> dict[str, float]:
        """CPU seconds so far of Asterisk, of each PostgreSQL process
        (``postgres:PID``) and of SIPp (the bench's own children, counted once
        reaped: after each load).

        Each process's own time, not /proc/stat's machine-wide ticks: those are
        sampled at the timer tick, which media work keyed to 20 ms timers
        dodges (seen here: a media step whose machine-wide busy time was less
        than Asterisk's own)."""
        pid_file = REPO / ".state" / "run" / "asterisk.pid"
        asterisk = _cpu_of(int(pid_file.read_text())) if pid_file.exists() else 0.0
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        found = {"asterisk": asterisk, "sipp": children.ru_utime + children.ru_stime}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "comm").read_text().strip() == "postgres":
                        found[f"postgres:{entry.name}"] = _cpu_of(int(entry.name))
                except OSError:
                    pass
        return found

    def _rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    async def _sample(self) -> None:
        while True:
            self.peak_kb = max(self.peak_kb, self._rss_kb())
            await asyncio.sleep(0.25)

    async def _probe(self) -> None:
        """Once a second, a new connection asks ARI for /asterisk/info (5 s to answer)."""
        ari, headers = _ari()
        while True:
            await asyncio.sleep(1.0)
            self.probes += 1
            try:
                async with (
                    aiohttp.ClientSession(
                        headers=headers, connector=aiohttp.TCPConnector(force_close=True)
                    ) as http,
                    http.get(f"{ari}/asterisk/info", timeout=aiohttp.ClientTimeout(total=5)) as r,
                ):
                    if r.status != 200:
                        self.probe_failures += 1
            except (aiohttp.ClientError, TimeoutError):
                self.probe_failures += 1

    async def __aenter__(self) -> StepMonitor:
        self._others0 = self._others()
        self._tasks.append(asyncio.create_task(self._probe()))
        if self.pid is not None:
            self._cpu0 = self._cpu()
            self._tasks.append(asyncio.create_task(self._sample()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        self.others_cpu_s = spent_between(self._others0, self._others())
        if self.pid is not None:
            self.cpu_s = self._cpu() - self._cpu0


def _where(channel: dict[str, Any]) -> str:
    """A stranded channel in a word: its state and where in the dialplan it sits."""
    plan = channel.get("dialplan") or {}
    app = plan.get("app_name") or "-"
    return f"{channel.get('state')} {plan.get('context')}/{app}"


#: How long after its load a step's channels may take to go before they count as
#: stranded. A call SIPp gave up on (no 200 within its 30 s) whose 200 Asterisk
#: still sent later is never ACKed; Asterisk ends it itself after SIP's Timer H,
#: 64 x T1 = 32 s after that late 200. On a saturated machine (answers 30-40 s
#: late, 2026-12-02) such channels went 35-40 s after the step, just past the
#: 40 s this once was: not stranded callers, but dead dialogs being cleaned up.
STRANDED_AFTER_S = 75.0


async def wait_idle(timeout: float = STRANDED_AFTER_S) -> Counter[str]:
    """Wait until Asterisk has no channels; hang up what is still there and say
    where those were (state, dialplan context and application), counted."""
    ari, headers = _ari()
    async with aiohttp.ClientSession(headers=headers) as http:
        deadline = time.monotonic() + timeout
        channels: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{ari}/channels") as resp:
                    channels = await resp.json()
            except (aiohttp.ClientError, TimeoutError):
                pass  # Asterisk busy or locked out: ask again
            else:
                if not channels:
                    return Counter()
            await asyncio.sleep(0.5)
        for channel in channels:
            async with http.delete(f"{ari}/channels/{channel['id']}"):
                pass
        await asyncio.sleep(2)  # their hangups reach the ledger before it is counted
        return Counter(_where(channel) for channel in channels)


async def measure_step(
    path: Path_,
    media: str,
    load: LoadResult,
    press_at_ms: int,
    monitor: StepMonitor,
    keep_wavs: Path | None = None,
) -> StepMeasure:
    """``keep_wavs``: move each measured recording there instead of deleting it."""
    step = StepMeasure(path.name, load.plan.cps, media, load)
    left = await wait_idle()
    step.stranded, step.stranded_where = sum(left.values()), dict(left)
    step.channels_gone_after_s = None if left else max(0.0, time.time() - load.finished)
    step.cpu_s = monitor.cpu_s
    step.rss_peak_mb = monitor.peak_kb / 1024 if monitor.pid else None
    step.ari_probes, step.ari_probe_failures = monitor.probes, monitor.probe_failures
    step.others_cpu_s = monitor.others_cpu_s
    plan = load.plan
    press_end_ms = (plan.lead_ms if media == "none" else press_at_ms) + EVENT_PACKETS * PTIME_MS
    expected_after_key_s = (plan.call_ms - press_end_ms) / 1000
    if path.file_prefix is not None:
        files = _new_files(path.file_prefix, load.started)
        # Every caller presses 3 (the floor records every call): a completed call
        # without a file is one the dialplan failed to record.
        step.recording_failures = max(0, load.completed - len(files))
        for wav in files:
            if media != "none":
                fid = measure(wav)
                step.fidelity.append(fid)
                planned = plan.hold_ms / 1000 if path.name == "floor" else expected_after_key_s
                closed_at = wav.stat().st_mtime
                span = dialplan_span(wav.name, closed_at)
                step.duration_errors.append(fid.duration_s - (planned if span is None else span))
                if span is not None:
                    step.audio_start_late_ms.append(
                        audio_start_late_ms(closed_at - span, closed_at, fid.duration_s)
                    )
                if path.name != "floor":
                    step.latency_wav_ms.append(1000 * (expected_after_key_s - fid.duration_s))
            done_with(wav, keep_wavs)
        return step
    await _measure_consentd(step, load, media, press_end_ms, expected_after_key_s, keep_wavs)
    return step


#: ``-<uniqueid>-<epoch.mmm>.wav``: the uniqueid (``epoch.n``) first, then the stamp.
_STAMPED = re.compile(r"-\d+\.\d+-(\d+\.\d{3})\.wav$")


def dialplan_span(name: str, closed_at: float) -> float | None:
    """Seconds from MixMonitor's start, which the dialplan puts in the file name
    (``bench-floor-<uniqueid>-<epoch.mmm>.wav``), to the file's last write (the
    hang-up). None for a name without the stamp: the plan's length is used then.

    This is the dialplan paths' own span, as the ledger's recording_started and
    recording_stopped are consentd's: each file is judged against the time it
    covers, not against a plan that assumes when MixMonitor began.
    """
    found = _STAMPED.search(name)
    return None if found is None else closed_at - float(found.group(1))


def audio_start_late_ms(span_start: float, closed_at: float, duration_s: float) -> float:
    """How long after its span began a file's audio begins, in ms: its last write
    (``closed_at``, the hang-up) minus its duration, against the span's start
    (epoch seconds). Positive: audio from the start of the span is missing (or
    frames were dropped on the way, which shows up here too); the stop is exact
    to a few ms on every path, so this is where a short file's loss sits."""
    return 1000 * (closed_at - duration_s - span_start)


def done_with(wav: Path, keep: Path | None) -> None:
    """A measured recording is deleted (a full run would otherwise leave gigabytes),
    or moved to ``keep`` for a closer look (where in a file the audio was cut)."""
    if keep is None:
        wav.unlink()
        return
    keep.mkdir(parents=True, exist_ok=True)
    shutil.move(wav, keep / wav.name)


def _new_files(prefix: str, since: float) -> list[Path]:
    return sorted(p for p in MONITOR.glob(f"{prefix}*.wav") if p.stat().st_mtime >= since - 1)


LedgerRow = tuple[str, datetime, dict[str, Any]]


async def ledger_calls(did: str, since: float) -> dict[str, list[LedgerRow]]:
    """Every ledger row, (kind, time, data) in order, of the calls to ``did`` since then."""
    conn = await asyncpg.connect(_database_url())
    try:
        rows = await conn.fetch(
            "SELECT call_id, kind, occurred_at, data::text AS data FROM call_events"
            " WHERE call_id IN (SELECT call_id FROM call_events WHERE kind = 'call_started'"
            "   AND data->>'did' = $1 AND occurred_at >= to_timestamp($2)"
            "   AND NOT (data ? 'consentd_unavailable'))"  # the dialplan's fallback calls
            " ORDER BY call_id, seq",
            did,
            since,
        )
    finally:
        await conn.close()
    calls: dict[str, list[LedgerRow]] = {}
    for row in rows:
        calls.setdefault(row["call_id"], []).append(
            (row["kind"], row["occurred_at"], json.loads(row["data"]))
        )
    return calls


async def ledger_drained(timeout: float = 60.0) -> int:
    """Wait until consentd has stored every ledger event; the backlog left, if any."""
    backlog = -1
    healthz = _healthz()
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                async with http.get(healthz) as resp:
                    backlog = int((await resp.json())["ledger_backlog"])
            except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
                pass
            if backlog == 0:
                return 0
            await asyncio.sleep(0.5)
    return backlog


def required_rows(events: list[LedgerRow]) -> tuple[str, ...]:
    """The kinds one call's ledger must hold, judged from what its own rows say happened."""
    kinds = [kind for kind, _, _ in events]
    failed_start = any(
        kind == "command_failed" and data.get("command") == "StartRecording"
        for kind, _, data in events
    )
    if "call_unserved" in kinds:
        return EVERY_CALL + UNSERVED
    if "consent_notice_failed" in kinds:
        # The greeting failed or its play went unanswered (overload): the caller was
        # never told, so a 3 decides nothing and nothing records. Not lost rows.
        return (*EVERY_CALL, "consent_notice_failed")
    if failed_start:
        return (*EVERY_CALL, "consent_decided")  # MixMonitor refused: no recording rows
    if "keypress" in kinds or "consent_decided" in kinds:
        return EVERY_CALL + DECIDED
    return EVERY_CALL


async def _measure_consentd(
    step: StepMeasure,
    load: LoadResult,
    media: str,
    press_end_ms: int,
    after_key_s: float,
    keep_wavs: Path | None,
) -> None:
    step.ledger_backlog_left = await ledger_drained()
    calls = await ledger_calls(load.plan.did, load.started - 1)
    expected = found = duplicates = 0
    for events in calls.values():
        kinds = [kind for kind, _, _ in events]
        required = required_rows(events)
        if "call_unserved" in kinds:
            step.unserved += 1
        elif "recording_started" not in kinds:
            # Every caller presses 3: a served call without a recording failed its
            # caller, whether MixMonitor was refused or the key never counted.
            step.recording_failures += 1
        expected += len(required)
        for kind in required:
            found += min(1, kinds.count(kind))
        duplicates += sum(max(0, kinds.count(k) - 1) for k in EVERY_CALL + DECIDED + UNSERVED)
        at = {kind: when for kind, when, _ in reversed(events)}
        if "call_started" in at and "keypress" in at:
            late = (at["keypress"] - at["call_started"]).total_seconds() * 1000 - press_end_ms
            step.keypress_late_ms.append(late)
        if "consent_decided" in at and "recording_started" in at:
            lat = (at["recording_started"] - at["consent_decided"]).total_seconds() * 1000
            step.latency_ledger_ms.append(lat)
        if "greeting_finished" in at and "recording_started" in at:
            overlap = (at["greeting_finished"] - at["recording_started"]).total_seconds() * 1000
            step.greeting_overlap_ms.append(max(0.0, overlap))
        started = next((e for e in events if e[0] == "recording_started"), None)
        stopped = next((e for e in events if e[0] == "recording_stopped"), None)
        if started is None or stopped is None:
            continue
        wav = ROOT / str(started[2]["file"]).lstrip("/")
        if not wav.exists():
            continue
        if media == "none":
            wav.unlink()  # nothing to judge without media; don't leave it behind
            continue
        fid = measure(wav)
        closed_at = wav.stat().st_mtime
        done_with(wav, keep_wavs)
        step.fidelity.append(fid)
        span = (stopped[1] - started[1]).total_seconds()
        step.audio_start_late_ms.append(
            audio_start_late_ms(started[1].timestamp(), closed_at, fid.duration_s)
        )
        step.stop_after_last_write_ms.append(1000 * (stopped[1].timestamp() - closed_at))
        step.duration_errors.append(fid.duration_s - span)
        step.latency_wav_ms.append(1000 * (after_key_s - fid.duration_s))
    step.ledger_calls = len(calls)
    step.ledger_expected = expected
    step.ledger_found = found
    step.ledger_duplicates = duplicates

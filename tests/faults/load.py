"""The fault suite's load and its verdict, both from outside the daemon.

A load is four SIPp processes at once, 50 calls each: opt-in with and without
key 3, opt-out with and without key 3. Every caller streams a tone with its key
in one RTP stream. The verdict reads only what an auditor could: the ledger in
PostgreSQL and the WAV files on disk.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.sipp_load import LoadPlan, LoadResult, run_load
from bench.step import ledger_drained, wait_idle
from consentd.sipp_media import MediaPlan, pcap_file
from tests.e2e.harness import ROOT, database_url

OPT_IN, OPT_OUT = "+4930100007", "+4930100003"
CALL_MS = 9000
#: Key 3 for opt-in at 2 s (during the greeting); for opt-out after its greeting.
PRESS_MS = {OPT_IN: 2000, OPT_OUT: 6000}


@dataclass(frozen=True)
class Group:
    did: str
    press: bool

    @property
    def name(self) -> str:
        kind = "opt_in" if self.did == OPT_IN else "opt_out"
        return f"{kind}_{'with' if self.press else 'without'}_3"


#: One line per fault case, printed at the end of the test run (conftest.py).
REPORT: list[str] = []

GROUPS = tuple(Group(did, press) for did in (OPT_IN, OPT_OUT) for press in (True, False))


async def place_load(
    workdir: Path, *, calls_per_group: int, cps_per_group: float
) -> list[LoadResult]:
    """All four groups at once, each its own SIPp process and ports."""
    loads = []
    for n, group in enumerate(GROUPS):
        media = MediaPlan(CALL_MS, PRESS_MS[group.did] if group.press else None)
        plan = LoadPlan(
            group.did, cps_per_group, calls_per_group, pcap_file(media, workdir), 0, CALL_MS
        )
        loads.append(run_load(plan, workdir / group.name, port=5600 + 20 * n))
    return list(await asyncio.gather(*loads))


@dataclass
class Verdict:
    placed: int
    calls: int = 0
    #: Calls the dialplan took while no consentd was connected (the fallback log's).
    fallback: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    forbidden: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unended: list[str] = field(default_factory=list)
    #: Calls whose hang-up consentd did not see (it was away, or ARI was), and of
    #: those the ones whose end the open recording dated (``time_from: recording``).
    ended_away: int = 0
    dated_by_recording: int = 0
    #: Those whose dated end is not where the caller hung up (CALL_MS after the start).
    misdated: list[str] = field(default_factory=list)

    def line(self, case: str) -> str:
        return (
            f"{case}: placed {self.placed}, reached consentd {self.calls},"
            f" dialplan fallback {self.fallback},"
            f" outcomes {dict(self.outcomes)}, forbidden recordings {len(self.forbidden)},"
            f" duplicates {len(self.duplicates)}, not ended {len(self.unended)},"
            f" hang-up unseen {self.ended_away}"
            f" ({self.dated_by_recording} dated by their recording, {len(self.misdated)} misdated)"
        )


async def verdict(since: float, placed: int, *, callers_hang_up: bool = True) -> Verdict:
    """What the ledger and the disk say about every call since ``since``.

    ``callers_hang_up``: every call ends where its caller hangs up (CALL_MS after
    the answer); not when the fault itself cuts calls (an Asterisk restart)."""
    await wait_idle(60)
    await ledger_drained(60)
    conn = await asyncpg.connect(database_url())
    try:
        rows = await conn.fetch(
            "SELECT event_key, call_id, seq, kind, occurred_at, data::text AS data"
            " FROM call_events"
            " WHERE call_id IN (SELECT call_id FROM call_events WHERE kind = 'call_started'"
            "   AND data->>'did' = ANY($1::text[]) AND occurred_at >= to_timestamp($2))"
            " ORDER BY call_id, seq",
            [OPT_IN, OPT_OUT],
            since,
        )
    finally:
        await conn.close()
    calls: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
    times: dict[tuple[str, str], datetime] = {}
    for row in rows:
        calls.setdefault(row["call_id"], []).append(
            (row["seq"], row["kind"], json.loads(row["data"]))
        )
        times[row["call_id"], row["kind"]] = row["occurred_at"]
    fallback = {
        call_id
        for call_id, events in calls.items()
        if any(
            kind == "call_started" and data.get("consentd_unavailable") for _, kind, data in events
        )
    }
    result = Verdict(placed, calls=len(calls) - len(fallback), fallback=len(fallback))
    for call_id, events in calls.items():
        if call_id not in fallback:
            _judge(result, call_id, events)
            _judge_end(result, call_id, events, times, callers_hang_up)
    return result


def _judge_end(
    result: Verdict,
    call_id: str,
    events: list[tuple[int, str, dict[str, Any]]],
    times: dict[tuple[str, str], datetime],
    callers_hang_up: bool,
) -> None:
    """A call whose hang-up nobody saw is dated by its recording: within a second of
    where SIPp hung up, CALL_MS after the answer (call_started)."""
    ended = next((data for _, kind, data in events if kind == "call_ended"), None)
    unseen = ("ended_while_consentd_was_away", "gone_while_disconnected")
    if ended is None or ended.get("cause") not in unseen:
        return
    result.ended_away += 1
    if ended.get("time_from") != "recording" or not callers_hang_up:
        return
    result.dated_by_recording += 1
    lasted = (times[call_id, "call_ended"] - times[call_id, "call_started"]).total_seconds()
    if abs(lasted - CALL_MS / 1000) > 1.0:
        result.misdated.append(f"{call_id}: ended {lasted:.2f} s after its start")


def _judge(result: Verdict, call_id: str, events: list[tuple[int, str, dict[str, Any]]]) -> None:
    kinds = Counter(kind for _, kind, _ in events)
    seqs = [seq for seq, _, _ in events]
    if len(seqs) != len(set(seqs)) or kinds["call_started"] != 1 or kinds["consent_decided"] > 1:
        result.duplicates.append(f"{call_id}: {dict(kinds)}")
    if kinds["call_ended"] != 1 and kinds["call_handed_off"] == 0:
        result.unended.append(f"{call_id}: {[k for _, k, _ in events]}")
    started = next(data for _, kind, data in events if kind == "call_started")
    decided = next((data for _, kind, data in events if kind == "consent_decided"), None)
    if "call_unserved" in kinds:
        result.outcomes["unserved"] += 1
    else:
        result.outcomes[decided["action"] if decided else f"{started['policy']}_undecided"] += 1
    refused = (started["policy"] == "opt_in" and decided is None) or (
        started["policy"] == "opt_out" and decided is not None
    )
    if not refused:
        return
    files = {data["file"] for _, kind, data in events if kind == "recording_started"}
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in call_id)
    files |= {
        str(p.relative_to(ROOT))
        for p in (ROOT / "var/spool/asterisk/monitor").glob(f"consentd-{safe}-*.wav")
    }
    for file in files:
        path = ROOT / str(file).lstrip("/")
        if path.exists() and path.stat().st_size > 44:
            result.forbidden.append(f"{call_id}: {path} kept ({path.stat().st_size} bytes)")


def now() -> float:
    return time.time()

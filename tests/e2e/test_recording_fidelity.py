"""Recordings stay faithful with about 40 calls in parallel, steady and jittered media.

Each caller streams a continuous tone (one RTP stream with key 3 in it, as
``make bench`` sends) for the whole call, so any silence inside a kept
recording was inserted by the PBX, and any difference between the file's
length and its ledger span (``recording_started`` to ``recording_stopped``)
was audio lost or added. The jittered media stalls 60-160 ms about 1.5 times a
second and then bursts, as SIPp's own ``rtp_stream`` and poor mobile links do;
the silence generator consentd used to hold calls with turned exactly that
into inserted silence and files up to 2 s too long.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench.fidelity import measure
from bench.sipp_load import LoadPlan, run_load
from bench.step import ledger_calls
from consentd.sipp_media import MediaPlan, pcap_file
from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e

CPS, CALLS, CALL_MS, PRESS_AT_MS = 5, 40, 8000, 2000  # 8 s calls at 5/s: ~40 at once
MAX_DURATION_ERROR_S = 0.3
MAX_INSERTED_SILENCE_MS = 60


async def _recordings(did: str, since: float) -> list[dict[str, Any]]:
    calls = []
    for rows in (await ledger_calls(did, since)).values():
        call: dict[str, Any] = {"kinds": [kind for kind, _, _ in rows]}
        for kind, at, data in rows:
            if kind in ("recording_started", "recording_stopped"):
                call[kind] = (at, data)
        calls.append(call)
    return calls


def _span(call: dict[str, Any]) -> float:
    started: datetime = call["recording_started"][0]
    stopped: datetime = call["recording_stopped"][0]
    return (stopped - started).total_seconds()


@pytest.mark.parametrize("media", ["steady", "jitter"])
@pytest.mark.parametrize(
    ("did", "press"), [("+4930100007", True), ("+4930100003", False)], ids=["opt_in_3", "opt_out"]
)
def test_kept_recordings_match_their_ledger_span_without_inserted_silence(
    stack: Stack, tmp_path: Path, media: str, did: str, press: bool
) -> None:
    since = time.time() - 1
    pcap = pcap_file(
        MediaPlan(CALL_MS, PRESS_AT_MS if press else None, jitter=media == "jitter"), tmp_path
    )
    load = asyncio.run(
        run_load(LoadPlan(did, CPS, CALLS, pcap, 0, CALL_MS), tmp_path / "sipp", port=5400)
    )
    assert load.completed == CALLS, f"SIPp: {load.failed} failed {dict(load.reasons)}"
    time.sleep(2)  # the last hangups reach the ledger

    calls = asyncio.run(_recordings(did, since))
    assert len(calls) == CALLS
    problems = []
    for call in calls:
        for kind in ("call_started", "recording_started", "recording_stopped", "call_ended"):
            assert call["kinds"].count(kind) == 1, f"{kind} in {call['kinds']}"
        wav = stack.host_path(call["recording_started"][1]["file"])
        fidelity = measure(wav)
        error = fidelity.duration_s - _span(call)
        if abs(error) > MAX_DURATION_ERROR_S or fidelity.longest_gap_ms > MAX_INSERTED_SILENCE_MS:
            problems.append(
                f"{wav.name}: {fidelity.duration_s:.2f} s for a {_span(call):.2f} s span,"
                f" longest silence {fidelity.longest_gap_ms:.0f} ms,"
                f" {fidelity.cuts} cuts in the tone (audio Asterisk's audiohook dropped)"
            )
    print(f"{did} {media}: {CALLS} recordings, {len(problems)} unfaithful")
    assert problems == []

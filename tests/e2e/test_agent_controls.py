"""Recording controls through the HTTP API on a real call, and every API error.

A caller streams a tone for the whole call on an "always" number. 3 s after
the answer the agent (the API, with the stack's token) pauses; 3 s later it
resumes. pause_gap is silence: the WAV keeps the call's timeline, with
silence where the pause was.
"""

from __future__ import annotations

import array
import asyncio
import wave
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from consentd.local_stack import LocalStack
from consentd.sipp import CallPlan, CallResult, place_call
from tests.e2e.harness import SCENARIO, Stack, collect_outcomes, wav_seconds

PAUSE_AT, RESUME_AT, TALK_S = 3.0, 6.0, 10.0


def silent_span(path: Path, block_s: float = 0.1) -> tuple[float, float]:
    """(start, end) in seconds of the longest run of silent blocks in a WAV."""
    with wave.open(str(path), "rb") as wav:
        rate = wav.getframerate()
        samples = array.array("h", wav.readframes(wav.getnframes()))
    size = int(rate * block_s)
    silent = [
        max((abs(x) for x in samples[i : i + size]), default=0) < 200
        for i in range(0, len(samples) - size + 1, size)
    ]
    best, start = (0, 0), None
    for n, quiet in enumerate([*silent, False]):
        if quiet and start is None:
            start = n
        elif not quiet and start is not None:
            if n - start > best[1] - best[0]:
                best = (start, n)
            start = None
    return best[0] * block_s, best[1] * block_s


async def _call_id(http: aiohttp.ClientSession, base: str, caller: str) -> str:
    auth = {"Authorization": f"Bearer {LocalStack.load().api_token}"}
    for _ in range(50):
        async with http.get(f"{base}/calls", params={"limit": "20"}, headers=auth) as response:
            calls = await response.json()
        found = [c for c in calls if c["caller"] == caller and not c["ended_at"]]
        if found:
            return str(found[0]["id"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no call in progress from {caller}")


async def _scenario() -> tuple[Any, dict[str, Any]]:
    stack = LocalStack.load()
    base, auth = stack.http, {"Authorization": f"Bearer {stack.api_token}"}
    plan = CallPlan("+4930100001", "+4915100000801", talk_ms=int(TALK_S * 1000), speak=True)
    never = CallPlan("+4930100004", "+4915100000802", talk_ms=9000, speak=True)
    # opt_out: the caller refuses (3, 1 s into the greeting) before anyone resumes.
    refused = CallPlan(
        "+4930100003", "+4915100000804", wait1_ms=1000, key1="3", talk_ms=8000, speak=True
    )
    replies: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        caller = asyncio.create_task(place_call(plan, SCENARIO, sip_port=5197, media_port=17970))
        other = asyncio.create_task(place_call(never, SCENARIO, sip_port=5198, media_port=17990))
        third = asyncio.create_task(place_call(refused, SCENARIO, sip_port=5199, media_port=18010))
        call_id = await _call_id(http, base, plan.caller)
        never_id = await _call_id(http, base, never.caller)
        refused_id = await _call_id(http, base, refused.caller)
        started = asyncio.get_running_loop().time()

        async def post(path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
            async with http.post(f"{base}{path}", headers=headers or {}) as response:
                return response.status, await response.json()

        await asyncio.sleep(PAUSE_AT - 0.3)
        replies["no_token"] = await post(f"/api/calls/{call_id}/recording/pause")
        replies["pause"] = await post(f"/api/calls/{call_id}/recording/pause", auth)
        replies["pause_again"] = await post(f"/api/calls/{call_id}/recording/pause", auth)
        await asyncio.sleep(RESUME_AT - (asyncio.get_running_loop().time() - started))
        replies["resume"] = await post(f"/api/calls/{call_id}/recording/resume", auth)
        replies["no_such_call"] = await post("/api/calls/pbx9:1/recording/pause", auth)
        replies["never_pause"] = await post(f"/api/calls/{never_id}/recording/pause", auth)
        replies["never_resume"] = await post(f"/api/calls/{never_id}/recording/resume", auth)
        replies["refused_resume"] = await post(f"/api/calls/{refused_id}/recording/resume", auth)
        replies["refused_pause"] = await post(f"/api/calls/{refused_id}/recording/pause", auth)
        await other
        assert (await third).ok
        return await caller, replies


def test_pause_and_resume_through_the_api_leave_silence_where_the_pause_was(
    stack: Stack,
) -> None:
    since = datetime.now(UTC)
    caller, replies = asyncio.run(_scenario())
    outcome = collect_outcomes({"call": (caller, None)}, since)["call"]

    assert caller.ok, caller.output[-1500:]
    assert replies["pause"] == (200, {"id": outcome.details["id"], "recording": "paused"})
    assert replies["resume"][0] == 200 and replies["resume"][1]["recording"] == "recording"
    errors = {name: (status, body["error"]["id"]) for name, (status, body) in replies.items()
              if status >= 400}  # fmt: skip
    assert errors == {
        "no_token": (401, "unauthorized"),
        "pause_again": (409, "recording-not-active"),
        "no_such_call": (404, "no-such-call"),
        "never_pause": (409, "recording-not-active"),
        "never_resume": (409, "consent-refused"),
        "refused_resume": (409, "consent-refused"),  # the caller's refusal wins
        "refused_pause": (409, "recording-not-active"),
    }
    paused = outcome.seconds("recording_paused")
    resumed = outcome.seconds("recording_resumed")
    assert outcome.details["recording_control_interactions"] == 2
    (recording,) = outcome.details["recordings"]
    wav = stack.host_path(recording.removeprefix(str(stack.root)))
    start, end = silent_span(wav)
    # The WAV starts with the recording (at the answer): positions match the ledger.
    offset = outcome.seconds("recording_started")
    assert abs(start - (paused - offset)) <= 0.3, (start, paused - offset)
    assert abs(end - (resumed - offset)) <= 0.3, (end, resumed - offset)
    total = outcome.details["recording_time"] + outcome.details["not_recording_time"]
    assert abs(outcome.details["not_recording_time"] - (resumed - paused)) <= 1.0
    assert abs(total - outcome.seconds("call_ended")) <= 1.0


async def _skip_scenario() -> CallResult:
    """An "always" number with pause_gap skip: the API pauses at 3 s, resumes at 6 s."""
    stack = LocalStack.load()
    base, auth = stack.http, {"Authorization": f"Bearer {stack.api_token}"}
    plan = CallPlan("+4930100016", "+4915100000803", talk_ms=int(TALK_S * 1000), speak=True)
    async with aiohttp.ClientSession() as http:
        caller = asyncio.create_task(place_call(plan, SCENARIO, sip_port=5197, media_port=17970))
        call_id = await _call_id(http, base, plan.caller)
        started = asyncio.get_running_loop().time()
        for action, due in (("pause", PAUSE_AT), ("resume", RESUME_AT)):
            await asyncio.sleep(due - (asyncio.get_running_loop().time() - started))
            path = f"{base}/api/calls/{call_id}/recording/{action}"
            async with http.post(path, headers=auth) as response:
                assert response.status == 200, await response.text()
        return await caller


def test_skip_mode_through_the_api_keeps_two_files_without_the_pause(stack: Stack) -> None:
    since = datetime.now(UTC)
    caller = asyncio.run(_skip_scenario())
    assert caller.ok, caller.output[-1500:]
    outcome = collect_outcomes({"call": (caller, None)}, since)["call"]

    t0 = outcome.first("call_started")["occurred_at"]
    starts = [(r["occurred_at"] - t0).total_seconds() for r in outcome.rows("recording_started")]
    stops = [(r["occurred_at"] - t0).total_seconds() for r in outcome.rows("recording_stopped")]
    files = [str(r["data"]["file"]) for r in outcome.rows("recording_started")]
    assert len(files) == 2, outcome.ledger
    paused = outcome.seconds("recording_paused")
    resumed = outcome.seconds("recording_resumed")
    assert abs(stops[0] - paused) <= 0.3 and abs(starts[1] - resumed) <= 0.3
    for start, stop, file in zip(starts, stops, files, strict=True):
        measured = wav_seconds(stack.host_path(file))
        assert abs(measured - (stop - start)) <= 0.3, (file, measured, stop - start)
        assert silent_span(stack.host_path(file))[1] - silent_span(stack.host_path(file))[0] < 0.3
    details = outcome.details
    assert details["recording_control_interactions"] == 2
    kept = sum(stop - start for start, stop in zip(starts, stops, strict=True))
    assert abs(details["recording_time"] - kept) <= 1.0
    total = details["recording_time"] + details["not_recording_time"]
    assert abs(total - outcome.seconds("call_ended")) <= 1.0

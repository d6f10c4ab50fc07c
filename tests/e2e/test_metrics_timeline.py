"""After real SIP calls, /metrics has counted them and /api/calls/{id} draws their timelines.

Two callers at once (about 8 s): an opt-in caller presses 3 during the greeting (the
recording starts, the greeting is cut short), an opt-out caller presses 3 after the
greeting (the recording stops and is deleted). /metrics is scraped before and after:
the calls-ended counter moved by policy and outcome, the keypress-to-recording
histogram saw one start and one stop, the ledger write lag saw the calls' rows, and
the connections, journal and active calls read as a healthy idle daemon. Each call's
timeline tiles the call, its recorded spans are the call details' recording_segments.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consentd.sipp import CallPlan, place_calls
from tests.e2e.harness import SCENARIO, Stack, consentd_calls, ledger_rows, local_stack

pytestmark = pytest.mark.e2e

#: Asterisk reports a digit when its RFC 2833 end packet arrives: 140 ms into the pcap.
DTMF_END_S = 0.14

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _get(path: str) -> bytes:
    stack = local_stack()
    request = urllib.request.Request(
        f"{stack.http}{path}", headers={"Authorization": f"Bearer {stack.api_token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        body: bytes = response.read()
    return body


def scrape() -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(_get("/metrics").decode())
        for sample in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


ENDED = "consentd_calls_ended_total"
LATENCY = "consentd_keypress_to_recording_seconds"
LAG = "consentd_ledger_write_lag_seconds"


def test_real_calls_move_the_metrics_and_draw_their_timelines(stack: Stack) -> None:
    opt_out_greeting_ms = int(stack.greeting_seconds("en", "opt_out") * 1000)
    plans = [
        replace(CallPlan("+4930100002", "+4915100000071", 1500, "3", talk_ms=4000), speak=True),
        replace(
            CallPlan(
                "+4930100003", "+4915100000072", opt_out_greeting_ms + 1000, "3", talk_ms=1500
            ),
            speak=True,
        ),
    ]
    before = scrape()
    since = datetime.now(UTC)

    results = asyncio.run(place_calls(plans, SCENARIO, first_sip_port=5470, first_media_port=18600))
    assert all(r.ok for r in results), [r.output[-1500:] for r in results if not r.ok]

    deadline = time.monotonic() + 15
    while True:
        after = scrape()
        counted = (
            metric(after, ENDED, policy="opt_in", outcome="caller_opted_in")
            - metric(before, ENDED, policy="opt_in", outcome="caller_opted_in"),
            metric(after, ENDED, policy="opt_out", outcome="caller_opted_out")
            - metric(before, ENDED, policy="opt_out", outcome="caller_opted_out"),
        )
        if counted == (1, 1) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert counted == (1, 1)

    for change in ("started", "stopped"):
        seen = metric(after, f"{LATENCY}_count", change=change) - metric(
            before, f"{LATENCY}_count", change=change
        )
        took = metric(after, f"{LATENCY}_sum", change=change) - metric(
            before, f"{LATENCY}_sum", change=change
        )
        assert seen == 1, change
        assert 0 <= took < 2.0, (change, took)  # key 3 to MixMonitor, on a loaded machine too

    calls = {c["caller"]: c for c in consentd_calls(since=since) if c["ended_at"]}
    opt_in, opt_out = (calls[p.caller] for p in plans)
    rows = len(ledger_rows(opt_in["id"])) + len(ledger_rows(opt_out["id"]))
    # The calls ended (and were counted) a moment before their last rows were
    # stored and timed: give the writer's batch that moment.
    deadline = time.monotonic() + 10
    while metric(after, f"{LAG}_count") - metric(before, f"{LAG}_count") < rows:
        assert time.monotonic() < deadline, (metric(after, f"{LAG}_count"), rows)
        time.sleep(0.2)
        after = scrape()
    assert metric(after, "consentd_journal_backlog") == 0
    for name in ("consentd_ari_up", "consentd_ami_up", "consentd_database_up"):
        assert metric(after, name) == 1, name
    # Idle once the calls of earlier tests in the session have ended too.
    deadline = time.monotonic() + 30
    while metric(after, "consentd_active_calls") != 0:
        assert time.monotonic() < deadline, metric(after, "consentd_active_calls")
        time.sleep(0.5)
        after = scrape()

    # The timelines, as the dashboard gets them.
    opt_in_view = json.loads(_get(f"/api/calls/{opt_in['id']}"))
    call_lane = lanes(opt_in_view, "call")
    assert [s["kind"] for s in call_lane] == ["greeting", "hold"]
    assert call_lane[0]["cut_short"] is True
    assert abs(call_lane[0]["end_s"] - (1.5 + DTMF_END_S)) < 0.5, call_lane[0]
    recording = check_recording_lane(opt_in_view)
    assert [s["kind"] for s in recording] == ["not_recorded", "recorded"]
    assert abs(recording[1]["start_s"] - (1.5 + DTMF_END_S)) < 0.5, recording[1]

    opt_out_view = json.loads(_get(f"/api/calls/{opt_out['id']}"))
    call_lane = lanes(opt_out_view, "call")
    assert [(s["kind"], s.get("cut_short")) for s in call_lane] == [
        ("greeting", False),
        ("hold", None),
    ]
    recording = check_recording_lane(opt_out_view)
    assert [s["kind"] for s in recording] == ["not_recorded"]  # refused: deleted


def lanes(view: dict[str, Any], lane: str) -> list[dict[str, Any]]:
    return [s for s in view["timeline"] if s["lane"] == lane]


def check_recording_lane(view: dict[str, Any]) -> list[dict[str, Any]]:
    """The recording lane covers the call without gaps; its recorded spans are the details'."""
    recording = lanes(view, "recording")
    details = view["details"]
    duration = (
        datetime.fromisoformat(details["ended_at"]) - datetime.fromisoformat(details["started_at"])
    ).total_seconds()
    assert recording[0]["start_s"] == 0
    assert recording[-1]["end_s"] == pytest.approx(duration, abs=1e-6)
    for before, after in pairwise(recording):
        assert before["end"] == after["start"]
    recorded = [
        {"start": s["start"], "end": s["end"]} for s in recording if s["kind"] == "recorded"
    ]
    assert recorded == view["recording_segments"] == details["recording_segments"]
    return recording

"""Agents' recording controls: pause and resume, the two gap modes, the refusals, the API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from consentd.call_details import summarize
from consentd.call_flow import Call, control_refusal, handle
from consentd.call_model import (
    Beep,
    CallFacts,
    DeleteRecording,
    MuteRecording,
    RecordingControl,
    RecordingStarted,
    RecordingStopped,
    StartRecording,
    StopRecording,
)
from consentd.http_api import Health, init_app
from consentd.ledger import LedgerEvent
from consentd.policy import PauseGap
from tests.unit.flow_helpers import T0, actions, arrived, at, greeted, kinds, ledger, press

Facts = Callable[..., CallFacts]
FILE = "/var/spool/asterisk/monitor/consentd-pbx1_1764432000.17-{}.wav"


def recording(call_facts: CallFacts) -> Call:
    """An always call, recording segment 1 (MixMonitor id 0x1) since the answer."""
    call = arrived(call_facts)
    call, _ = handle(call, RecordingStarted(1, at(0.1), "0x1"))
    return call


def control(call: Call, action: str, seconds: float) -> tuple[Call, list[Any]]:
    return handle(call, RecordingControl(action, "agent1", at(seconds)))


def test_pause_and_resume_in_silence_mode_mute_the_same_recording(facts: Facts) -> None:
    call = recording(facts("always"))

    call, commands = control(call, "pause", 5)
    # Both parties hear a tone, once the recording went quiet (so it keeps none).
    assert actions(commands) == [MuteRecording(1, "0x1", muted=True), Beep()]
    assert ledger(commands)[0].data == {
        "by": "agent1", "via": "api", "gap": "silence", "segment": 1,
    }  # fmt: skip
    assert control_refusal(call, "pause") == "recording-not-active"

    call, commands = control(call, "resume", 8)
    assert kinds(commands) == ["recording_resumed"]
    assert actions(commands) == [Beep(), MuteRecording(1, "0x1", muted=False)]
    assert control_refusal(call, "resume") == "recording-not-paused"


def test_skip_mode_stops_on_pause_and_resumes_into_a_new_file(facts: Facts) -> None:
    call_facts = facts("always")
    policy = call_facts.policy.model_copy(update={"pause_gap": PauseGap.SKIP})
    call = recording(CallFacts(**{**call_facts.__dict__, "policy": policy}))

    call, commands = control(call, "pause", 5)
    assert actions(commands) == [StopRecording(1, FILE.format(1), "0x1"), Beep()]
    call, _ = handle(call, RecordingStopped(1, at(5.1)))
    call, commands = control(call, "resume", 8)
    assert actions(commands) == [Beep(), StartRecording(2, FILE.format(2))]


def test_the_callers_refusal_wins_over_a_resume_and_deletes_every_segment(facts: Facts) -> None:
    call = greeted(facts("opt_out"))  # recording from the end of the greeting
    call, _ = handle(call, RecordingStarted(1, at(4.5), "0x1"))
    call, _ = control(call, "pause", 6)

    call, commands = press(call, "3", seconds=7)

    assert DeleteRecording(1, FILE.format(1)) in actions(commands)
    assert control_refusal(call, "resume") == "consent-refused"


@pytest.mark.parametrize(
    ("recording_policy", "pressed", "refusal"),
    [("never", False, "recording-not-active"), ("opt_in", False, "recording-not-active")],
)
def test_nothing_to_pause_on_a_call_that_is_not_recorded(
    facts: Facts, recording_policy: str, pressed: bool, refusal: str
) -> None:
    call_facts = facts(recording_policy)
    call = greeted(call_facts) if call_facts.greeting else arrived(call_facts)
    assert control_refusal(call, "pause") == refusal


def test_paused_time_is_not_recorded_time_and_each_control_counts() -> None:
    started = {
        "did": "+4930100001", "caller": "+49176", "direction": "inbound", "line": "phone",
        "policy_source": "number", "policy": "always",
    }  # fmt: skip
    segment = {"segment": 1, "file": "/m/1.wav", "path": "/r/m/1.wav"}
    spec = [
        (0, "call_started", started),
        (0, "recording_started", segment),
        (4, "recording_paused", {"by": "agent1", "gap": "silence", "segment": 1}),
        (7, "recording_resumed", {"by": "agent1"}),
        (12, "recording_stopped", segment),
        (12, "call_ended", {"cause": "hangup"}),
    ]
    events = [
        LedgerEvent(f"c/{n}", "c", "pbx1", n, kind, T0 + timedelta(seconds=s), data)
        for n, (s, kind, data) in enumerate(spec)
    ]

    details = summarize(events, T0)

    assert details is not None
    assert (details["recording_time"], details["not_recording_time"]) == (9, 3)
    assert details["recording_control_interactions"] == 2
    assert len(details["recording_segments"]) == 2


# ---------------------------------------------------------------- HTTP API

TOKEN = "t0ken-for-tests"


class Controls:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []

    def __call__(self, call_id: str, action: str, by: str) -> tuple[int, dict[str, Any]]:
        self.asked.append((call_id, action, by))
        if call_id == "gone":
            return 404, {"error": {"id": "no-such-call", "message": "no call"}}
        return 200, {"id": call_id, "recording": "paused" if action == "pause" else "recording"}


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient[Any, Any], Controls]]:
    controls = Controls()
    app = init_app(
        lambda: Health(True, True, True, 0, 0),
        CollectorRegistry(),
        lambda limit: _none(),
        control=controls,
        api_token=TOKEN,
    )
    async with TestClient(TestServer(app)) as c:
        yield c, controls


async def _none() -> list[dict[str, Any]]:
    return []


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"]
)
async def test_a_missing_or_wrong_token_is_401_and_nothing_happens(
    client: tuple[TestClient[Any, Any], Controls], header: str | None
) -> None:
    c, controls = client
    headers = {"Authorization": header} if header else {}
    response = await c.post("/api/calls/pbx1:1/recording/pause", headers=headers)
    assert response.status == 401
    assert (await response.json())["error"]["id"] == "unauthorized"
    assert controls.asked == []


async def test_a_valid_token_pauses_and_the_reply_is_the_new_state(
    client: tuple[TestClient[Any, Any], Controls],
) -> None:
    c, controls = client
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = await c.post("/api/calls/pbx1:17/recording/pause", headers=auth)
    assert (response.status, await response.json()) == (
        200, {"id": "pbx1:17", "recording": "paused"},
    )  # fmt: skip
    missing = await c.post("/api/calls/gone/recording/resume", headers=auth)
    assert (missing.status, (await missing.json())["error"]["id"]) == (404, "no-such-call")
    assert controls.asked == [("pbx1:17", "pause", "api"), ("gone", "resume", "api")]
    other = await c.post("/api/calls/pbx1:17/recording/stop", headers=auth)
    assert other.status == 404  # no such route

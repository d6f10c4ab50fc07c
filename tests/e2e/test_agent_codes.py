"""Agents pause and resume by DTMF on their own leg, over real SIP, in both gap modes.

The test policy file sets its own codes (agent_controls: pause "*7", resume
"#8"): consentd writes them into Asterisk's features and reloads them, so this
also proves the codes follow the policy file. Each agent's phone sends one RTP
stream: a tone from the answer, with the codes inside it at known times.

- A queue call on an "always" number (pause_gap silence): agent1 answers,
  pauses 3 s later and resumes 3 s after that; the WAV keeps its timeline with
  silence where the pause was.
- agent1's outbound call shown as an "always" number with pause_gap skip: the
  recording stops at the pause and a second file starts at the resume.

In both, Asterisk reports the codes received on the agent's channel, and sends
no DTMF to the other party: the caller never hears them. Both parties hear a
short tone at the pause and at the resume: the RTP each phone receives is
captured and searched for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from consentd.ami import AmiClient
from consentd.local_stack import LocalStack
from consentd.sipp import (
    AgentResult,
    CallPlan,
    CallResult,
    agent_media,
    place_agent_call,
    place_call,
    run_agent,
)
from tests.e2e.harness import (
    REPO,
    SCENARIO,
    CallOutcome,
    Stack,
    beside_a_phone,
    collect_outcomes,
    consentd_calls,
    ledger_rows,
    wav_seconds,
)
from tests.e2e.rtp_capture import RtpCapture, bursts, tone_times
from tests.e2e.test_agent_controls import silent_span
from tests.e2e.test_outbound import agent_password

AGENT_PHONE = REPO / "sipp-scenarios" / "agent.xml"
AGENT_CALL = REPO / "sipp-scenarios" / "agent-call.xml"
#: The agent's keys, in ms from the agent's answer: pause at 3 s, resume at 6 s.
CODES = ((3000, "*"), (3300, "7"), (6000, "#"), (6300, "8"))
PAUSE_S, RESUME_S = 3.3, 6.3
CALLEE = "+4917699990001"
#: consentd's pause/resume tone (scripts/setup.sh: 0.25 s of 1 kHz).
BEEP_HZ = 1000.0
T = TypeVar("T")


@dataclass(frozen=True)
class Dtmf:
    channel: str
    direction: str
    digit: str


class DtmfWatch:
    """Every DTMF end Asterisk reports during the scenario (the tests' AMI user)."""

    def __init__(self) -> None:
        stack = LocalStack.load()
        user, secret = stack.ami_tests
        self.client = AmiClient(stack.ami_host, stack.ami_port, user, secret, events="dtmf")
        self.seen: list[Dtmf] = []
        self.client.on_event(self._event)

    def _event(self, message: dict[str, str]) -> None:
        if message.get("Event") == "DTMFEnd":
            self.seen.append(
                Dtmf(message.get("Channel", ""), message.get("Direction", ""), message["Digit"])
            )

    def received_on(self, prefix: str) -> str:
        return "".join(d.digit for d in self.seen if d.direction == "Received" and
                       d.channel.startswith(prefix))  # fmt: skip

    def sent(self) -> list[Dtmf]:
        return [d for d in self.seen if d.direction == "Sent"]


async def _watching(
    scenario: Callable[[], Awaitable[T]], capture: RtpCapture
) -> tuple[T, DtmfWatch]:
    watch = DtmfWatch()
    task = asyncio.create_task(watch.client.run())
    try:
        await asyncio.wait_for(watch.client.connected.wait(), 10)
        with capture:
            result = await scenario()
        await asyncio.sleep(0.5)  # the last events
    finally:
        task.cancel()
    return result, watch


def _assert_beeps(capture: RtpCapture, outcome: CallOutcome) -> None:
    """Each party heard one short tone right after the pause and one after the resume."""
    controls = [
        outcome.first(kind)["occurred_at"].timestamp()
        for kind in ("recording_paused", "recording_resumed")
    ]
    for port, frames in capture.audio.items():
        assert len(frames) > 100, f"no audio reached port {port}"
        heard = bursts(tone_times(frames, BEEP_HZ, share=0.4))
        assert len(heard) == 2, (port, heard, controls)
        delays = [first - control for (first, _), control in zip(heard, controls, strict=True)]
        assert all(0 <= d <= 1.0 for d in delays), (port, delays)
        assert all(last - first <= 0.5 for first, last in heard), (port, heard)


def _segments(outcome: CallOutcome) -> list[tuple[float, float, str]]:
    """(start, stop, file) of each recording segment, in seconds after the call started."""
    t0 = outcome.first("call_started")["occurred_at"]
    starts = {r["data"]["segment"]: r for r in outcome.rows("recording_started")}
    stops = {r["data"]["segment"]: r for r in outcome.rows("recording_stopped")}
    return [
        (
            (starts[n]["occurred_at"] - t0).total_seconds(),
            (stops[n]["occurred_at"] - t0).total_seconds(),
            str(starts[n]["data"]["file"]),
        )
        for n in sorted(starts)
    ]


def _controls(outcome: CallOutcome) -> list[tuple[str, str]]:
    return [(r["kind"], r["data"]["by"]) for r in outcome.ledger
            if r["kind"] in ("recording_paused", "recording_resumed")]  # fmt: skip


def test_a_queue_agent_pauses_and_resumes_by_code_and_the_caller_hears_no_code(
    stack: Stack,
) -> None:
    since = datetime.now(UTC)
    plan = CallPlan("+4930100012", "+4915100000811", talk_ms=12_000, speak=True)

    async def scenario() -> tuple[CallResult, AgentResult]:
        return await beside_a_phone(
            run_agent(
                AGENT_PHONE,
                port=5071,
                answer_ms=1000,
                media_port=16100,
                media=agent_media(12_000, CODES),
            ),
            place_call(plan, SCENARIO, sip_port=5165, media_port=17600),
        )

    capture = RtpCapture((17600, 16100))  # what the caller and agent1 hear
    (caller, agent), watch = asyncio.run(_watching(scenario, capture))
    assert caller.ok, caller.output[-1500:]
    assert agent.ok, agent.output[:2500]
    outcome = collect_outcomes({"call": (caller, agent)}, since)["call"]

    assert watch.received_on("PJSIP/agent1-") == "*7#8"  # the agent did dial them
    assert watch.sent() == []  # and nobody got them: Asterisk swallowed the codes
    assert _controls(outcome) == [("recording_paused", "agent1"), ("recording_resumed", "agent1")]
    assert outcome.details["recording_control_interactions"] == 2
    _assert_beeps(capture, outcome)
    answered = outcome.seconds("agent_connected")
    paused, resumed = outcome.seconds("recording_paused"), outcome.seconds("recording_resumed")
    assert abs(paused - answered - PAUSE_S) <= 0.5, (paused, answered)
    assert abs(resumed - answered - RESUME_S) <= 0.5, (resumed, answered)

    # Silence mode: one file, its timeline kept. MixMonitor's option b keeps
    # the bridged audio only, so the file starts when agent1 answered.
    ((_, _, file),) = _segments(outcome)
    silent_from, silent_to = silent_span(stack.host_path(file))
    assert abs(silent_from - (paused - answered)) <= 0.3, (silent_from, paused - answered)
    assert abs(silent_to - (resumed - answered)) <= 0.3, (silent_to, resumed - answered)
    details = outcome.details
    ended = outcome.seconds("call_ended")
    assert abs(details["recording_time"] - (ended - answered - (resumed - paused))) <= 1.0
    assert abs(details["recording_time"] + details["not_recording_time"] - ended) <= 1.0


def test_an_outbound_agent_pauses_by_code_and_skip_mode_leaves_the_gap_out(
    stack: Stack,
) -> None:
    since = datetime.now(UTC)

    async def scenario() -> tuple[AgentResult, AgentResult]:
        return await beside_a_phone(
            run_agent(AGENT_PHONE, port=5062, answer_ms=1500, media_port=16620, timeout=30),
            place_agent_call(
                AGENT_CALL,
                agent="agent1",
                password=agent_password("agent1"),
                number=CALLEE,
                port=5071,
                media_port=16610,
                talk_ms=9000,
                header="X-Consentd-Number: +4930100036",
                media=agent_media(9000, CODES),
                timeout=30,
            ),
        )

    capture = RtpCapture((16620, 16610))  # what the callee and agent1 hear
    (agent, callee), watch = asyncio.run(_watching(scenario, capture))
    assert agent.ok, agent.output[:2500]
    assert callee.ok, callee.output[-1500:]
    details: dict[str, Any] = {}
    deadline = time.monotonic() + 15
    while not details and time.monotonic() < deadline:
        ended = [c for c in consentd_calls(since=since) if c["callee"] == CALLEE and c["ended_at"]]
        details = ended[0] if ended else {}
        time.sleep(0.3)
    assert details, "the outbound call did not end in the ledger"
    outcome = CallOutcome(
        CallResult(CallPlan(CALLEE, "agent1"), 0, 0, 0, ""), callee, details,
        ledger_rows(details["id"]),
    )  # fmt: skip

    assert watch.received_on("PJSIP/agent1-") == "*7#8"
    assert watch.sent() == []  # the callee heard no code
    assert _controls(outcome) == [("recording_paused", "agent1"), ("recording_resumed", "agent1")]
    _assert_beeps(capture, outcome)
    answered = outcome.seconds("callee_answered")
    paused, resumed = outcome.seconds("recording_paused"), outcome.seconds("recording_resumed")
    assert abs(paused - answered - PAUSE_S) <= 0.5, (paused, answered)

    # Skip mode: two files, the pause in neither. The first starts at the
    # callee's answer (MixMonitor's option b), the second at the resume.
    first, second = _segments(outcome)
    assert abs(first[1] - paused) <= 0.3 and abs(second[0] - resumed) <= 0.3
    spans = [(answered, first[1], first[2]), (second[0], second[1], second[2])]
    for start, stop, file in spans:
        measured = wav_seconds(stack.host_path(file))
        assert abs(measured - (stop - start)) <= 0.3, (file, measured, stop - start)
    assert [r["data"]["gap"] for r in outcome.rows("recording_paused")] == ["skip"]
    kept = sum(stop - start for start, stop, _ in spans)
    assert abs(details["recording_time"] - kept) <= 1.0
    total = details["recording_time"] + details["not_recording_time"]
    assert abs(total - outcome.seconds("call_ended")) <= 1.0

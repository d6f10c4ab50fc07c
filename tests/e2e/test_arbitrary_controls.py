"""An agent's pause and resume at arbitrary moments, over real SIP and the HTTP API.

test_agent_controls.py pauses at 3 s and resumes at 6 s. An agent clicks
whenever: twice in a row, resume first, right at the answer, as the caller
hangs up. Here ten speaking callers on "always" numbers (five with
pause_gap silence, five with skip) each get one to four pauses or resumes
at random moments (the seed is in every failure message;
``CONSENTD_CONTROLS_SEED`` replays one). Afterwards, from outside:

- every answer is 200, 404 (the call had ended) or 409 with its reason, and
  each 200 left its row in the ledger, once;
- pause_gap silence: one WAV holds the call's timeline, silent wherever the
  ledger says the recording was paused and holding the caller's tone
  wherever it was not;
- pause_gap skip: one file per recorded span, each as long as its span
  (``recording_started`` to ``recording_stopped``), with no silence inside;
- recorded and unrecorded seconds add up to the call.

Then three queue calls, one after the other, where agent1 dials its own codes
(pause ``*7``, resume ``#8``) at random moments from its answer: every code
in time makes its row, once, by agent1, a code that changes nothing makes
none, and the bridged WAV is silent exactly where the ledger says paused.
Last, three outbound calls of agent1's, the callee answering after a random
ring (and often hanging up first), with the same codes at random moments and
the same checks.
"""

from __future__ import annotations

import array
import asyncio
import os
import random
import time
import wave
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

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
    ended_call_of,
    ledger_rows,
    wav_seconds,
)
from tests.e2e.test_agent_controls import _call_id
from tests.e2e.test_outbound import agent_password

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("CONSENTD_CONTROLS_SEED") or time.time_ns() % 1_000_000)
SILENCE, SKIP = "+4930100001", "+4930100016"
CALLS = 10
BLOCK_S = 0.1
#: Around a pause or resume the file may go either way for this long; a resume's
#: beep (0.25 s, whispered to the caller) and a late first packet add to it.
EDGE_S = 0.35


@dataclass
class Control:
    at_s: float
    action: str
    status: int = 0
    error: str | None = None


@dataclass
class Plan:
    call: CallPlan
    controls: list[Control] = field(default_factory=list)


def draw_plans(seed: int) -> list[Plan]:
    rng = random.Random(seed)
    plans = []
    for n in range(CALLS):
        did = SILENCE if n % 2 == 0 else SKIP
        talk_ms = rng.randint(4000, 9000)
        caller = f"+491780{seed % 1000:03d}{n:03d}"
        moments = sorted(rng.uniform(0, talk_ms / 1000 + 0.5) for _ in range(rng.randint(1, 4)))
        controls = [Control(at, rng.choice(["pause", "resume"])) for at in moments]
        plans.append(Plan(CallPlan(did, caller, talk_ms=talk_ms, speak=True), controls))
    return plans


async def _agent(http: aiohttp.ClientSession, stack: LocalStack, plan: Plan) -> None:
    """Clicks the plan's controls, from the moment the call shows up as in progress."""
    auth = {"Authorization": f"Bearer {stack.api_token}"}
    call_id = await _call_id(http, stack.http, plan.call.caller)
    started = asyncio.get_running_loop().time()
    for control in plan.controls:
        await asyncio.sleep(max(0.0, control.at_s - (asyncio.get_running_loop().time() - started)))
        path = f"{stack.http}/api/calls/{call_id}/recording/{control.action}"
        async with http.post(path, headers=auth) as response:
            control.status = response.status
            body = await response.json()
        if response.status != 200:
            control.error = body["error"]["id"]


async def _run(plans: list[Plan]) -> list[CallResult]:
    stack = LocalStack.load()
    async with aiohttp.ClientSession() as http:
        callers = [
            asyncio.create_task(
                place_call(p.call, SCENARIO, sip_port=5400 + n, media_port=18100 + 10 * n)
            )
            for n, p in enumerate(plans)
        ]
        await asyncio.gather(*(_agent(http, stack, p) for p in plans))
        return list(await asyncio.gather(*callers))


@dataclass(frozen=True)
class Outcome:
    plan: Plan
    result: CallResult
    details: dict[str, Any]
    ledger: list[dict[str, Any]]

    def describe(self) -> str:
        controls = [(round(c.at_s, 2), c.action, c.status, c.error) for c in self.plan.controls]
        return (
            f"seed {SEED} ({self.plan.call.did}, caller {self.plan.call.caller}, "
            f"{self.plan.call.talk_ms} ms): controls {controls}; "
            f"ledger {[(r['kind'], r['occurred_at'].isoformat()) for r in self.ledger]}"
        )

    def at(self, row: dict[str, Any]) -> float:
        """A row's moment in seconds after the call's start."""
        start = self.ledger[0]["occurred_at"]
        return float((row["occurred_at"] - start).total_seconds())

    def rows(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.ledger if r["kind"] == kind]


@pytest.fixture(scope="module")
def outcomes(stack: Stack) -> list[Outcome]:
    plans = draw_plans(SEED)
    since = datetime.now(UTC)
    results = asyncio.run(_run(plans))
    found = collect_outcomes(
        {p.call.caller: (r, None) for p, r in zip(plans, results, strict=True)}, since
    )
    return [
        Outcome(p, r, found[p.call.caller].details, found[p.call.caller].ledger)
        for p, r in zip(plans, results, strict=True)
    ]


def silent_blocks(path: Path) -> list[bool]:
    """Per 100 ms block of the WAV: True where it holds no tone (peak under 200)."""
    with wave.open(str(path), "rb") as wav:
        rate = wav.getframerate()
        samples = array.array("h", wav.readframes(wav.getnframes()))
    size = int(rate * BLOCK_S)
    return [
        max((abs(x) for x in samples[i : i + size]), default=0) < 200
        for i in range(0, len(samples) - size + 1, size)
    ]


def paused_spans(
    ledger: list[dict[str, Any]], since: float, until: float
) -> list[tuple[float, float]]:
    """(pause, resume) from the ledger, in seconds after ``since``; a pause still open
    ends at ``until``. ``since`` and ``until`` in seconds after the call's start."""
    began = ledger[0]["occurred_at"]  # call_started
    spans, paused_at = [], None
    for row in ledger:
        at = (row["occurred_at"] - began).total_seconds() - since
        if row["kind"] == "recording_paused" and paused_at is None:
            paused_at = at
        elif row["kind"] == "recording_resumed" and paused_at is not None:
            spans.append((paused_at, at))
            paused_at = None
    if paused_at is not None:
        spans.append((paused_at, until - since))
    return spans


def test_every_answer_is_a_success_or_a_reason_and_each_success_is_in_the_ledger(
    outcomes: list[Outcome],
) -> None:
    for outcome in outcomes:
        assert outcome.result.ok, f"{outcome.describe()}\n{outcome.result.output[-1500:]}"
        controls = outcome.plan.controls
        for control in controls:
            assert (control.status, control.error) in {
                (200, None),
                (404, "no-such-call"),
                (409, "recording-not-active"),
                (409, "recording-not-paused"),
            }, outcome.describe()
        for action, kind in (("pause", "recording_paused"), ("resume", "recording_resumed")):
            done = sum(c.status == 200 and c.action == action for c in controls)
            assert len(outcome.rows(kind)) == done, outcome.describe()
        assert outcome.details["recording_control_interactions"] == sum(
            c.status == 200 for c in controls
        ), outcome.describe()
        total = outcome.details["recording_time"] + outcome.details["not_recording_time"]
        assert abs(total - outcome.at(outcome.rows("call_ended")[0])) <= 1.0, outcome.describe()


def assert_silent_where_paused(wav: Path, paused: list[tuple[float, float]], describe: str) -> None:
    """``paused``: (from, to) in seconds into the WAV. Silent inside each, the
    caller's tone everywhere else, ``EDGE_S`` either side of a change excepted."""
    blocks = silent_blocks(wav)
    edges = [t for span in paused for t in span]
    length = len(blocks) * BLOCK_S
    for n, silent in enumerate(blocks):
        start, stop = n * BLOCK_S, (n + 1) * BLOCK_S
        if start < EDGE_S or stop > length - EDGE_S:
            continue
        if any(start - EDGE_S < t < stop + EDGE_S for t in edges):
            continue
        inside = any(p <= start and stop <= r for p, r in paused)
        assert silent == inside, (
            f"{wav.name} at {start:.1f} s: {'silent' if silent else 'tone'} "
            f"(paused spans {paused}): {describe}"
        )


def test_silence_mode_is_silent_exactly_where_the_ledger_says_paused(
    outcomes: list[Outcome], stack: Stack
) -> None:
    for outcome in outcomes:
        if outcome.plan.call.did != SILENCE:
            continue
        (recording,) = outcome.details["recordings"]
        wav = stack.host_path(recording.removeprefix(str(stack.root)))
        offset = outcome.at(outcome.rows("recording_started")[0])
        end = outcome.at(outcome.rows("call_ended")[0])
        paused = paused_spans(outcome.ledger, offset, end)
        assert_silent_where_paused(wav, paused, outcome.describe())


def test_skip_mode_keeps_one_file_per_recorded_span_and_nothing_else(
    outcomes: list[Outcome], stack: Stack
) -> None:
    for outcome in outcomes:
        if outcome.plan.call.did != SKIP:
            continue
        starts = outcome.rows("recording_started")
        stops = outcome.rows("recording_stopped")
        assert len(starts) == len(stops), outcome.describe()
        listed = set(outcome.details["recordings"])
        kept = 0.0
        for start, stop in zip(starts, stops, strict=True):
            span = outcome.at(stop) - outcome.at(start)
            path = stack.host_path(start["data"]["file"])
            kept += span
            if span < 0.5:
                continue  # a click right after a resume: a file of a few frames, or none
            assert str(path) in listed, f"{path.name} not listed: {outcome.describe()}"
            measured = wav_seconds(path)
            assert abs(measured - span) <= 0.3, (
                f"{path.name}: {measured:.2f} s for a {span:.2f} s span: {outcome.describe()}"
            )
            quiet = silent_blocks(path)[3:-3]
            assert not any(all(quiet[i : i + 4]) for i in range(len(quiet))), (
                f"{path.name}: 0.4 s of silence inside: {outcome.describe()}"
            )
        assert abs(outcome.details["recording_time"] - kept) <= 1.0, outcome.describe()


# ---------------------------------------------------------------- the agent's own codes

AGENT_PHONE = REPO / "sipp-scenarios" / "agent.xml"
#: "always", routed to the support queue: bridged-only, the file starts at the answer.
QUEUED = "+4930100012"
#: The test policy's agent_controls (tests/e2e/harness.py).
CODES = {"pause": "*7", "resume": "#8"}
AGENT_CALLS = 3
#: The queue's greeting (short.wav) and agent1's ringing before it answers.
ANSWER_AFTER_MS = 2500


@dataclass(frozen=True)
class CodePlan:
    caller: CallPlan
    #: (ms after the agent's answer, action), at least 0.7 s apart.
    codes: tuple[tuple[int, str], ...]
    talk_ms: int

    def keys(self) -> tuple[tuple[int, str], ...]:
        return code_keys(self.codes)


def code_keys(codes: tuple[tuple[int, str], ...]) -> tuple[tuple[int, str], ...]:
    """(ms, key) of each code's keys, 300 ms apart."""
    return tuple((at + 300 * i, key) for at, action in codes for i, key in enumerate(CODES[action]))


def _draw_codes(rng: random.Random, talk_ms: int) -> tuple[tuple[int, str], ...]:
    """Codes from the answer on, at least 0.7 s apart, pause more often than resume."""
    codes, at = [], rng.choice([0, 200, 700, 1500])
    while at < talk_ms - 300 and len(codes) < 5:
        codes.append((at, rng.choice(["pause", "resume", "pause"])))
        at += rng.randint(700, 2500)
    return tuple(codes)


def draw_code_plans(seed: int) -> list[CodePlan]:
    rng = random.Random(seed + 1)
    plans = []
    for n in range(AGENT_CALLS):
        talk_ms = rng.randint(5000, 9000)  # from the agent's answer to the caller's hang-up
        codes = _draw_codes(rng, talk_ms)
        caller = f"+491781{seed % 1000:03d}{n:03d}"
        call = CallPlan(QUEUED, caller, talk_ms=ANSWER_AFTER_MS + talk_ms, speak=True)
        plans.append(CodePlan(call, codes, talk_ms))
    return plans


async def _code_calls(plans: list[CodePlan]) -> list[tuple[CallResult, AgentResult]]:
    """One call after the other: the ringall queue's one agent phone answers each."""
    done = []
    for n, plan in enumerate(plans):
        media = agent_media(plan.talk_ms + 1000, plan.keys())
        done.append(
            await beside_a_phone(
                run_agent(AGENT_PHONE, port=5071, answer_ms=1000, media_port=16100, media=media),
                place_call(plan.caller, SCENARIO, sip_port=5450 + n, media_port=18300),
            )
        )
    return done


@pytest.fixture(scope="module")
def code_outcomes(stack: Stack) -> list[tuple[CodePlan, CallOutcome]]:
    plans = draw_code_plans(SEED)
    since = datetime.now(UTC)
    results = asyncio.run(_code_calls(plans))
    found = collect_outcomes(
        {p.caller.caller: pair for p, pair in zip(plans, results, strict=True)}, since
    )
    return [(p, found[p.caller.caller]) for p in plans]


def _expected_controls(codes: tuple[tuple[int, str], ...], hangup_s: float) -> list[str]:
    """The rows the codes make, each changing the recording's state, if dialled in time."""
    rows, paused = [], False
    for at, action in codes:
        if at / 1000 + 0.3 > hangup_s - 0.7:
            break  # its last key may cross the hang-up
        if (action == "pause") != paused:
            rows.append(f"recording_{action}d")
            paused = action == "pause"
    return rows


def assert_codes_made_their_rows(
    codes: tuple[tuple[int, str], ...], outcome: CallOutcome, answered: float, describe: str
) -> None:
    """Every code in time made its row once, by agent1; a code that changed nothing
    made none. ``codes`` are in ms after ``answered`` (seconds into the call)."""
    controls = [r for r in outcome.ledger if r["kind"] in ("recording_paused", "recording_resumed")]
    kinds = [r["kind"] for r in controls]
    expected = _expected_controls(codes, outcome.seconds("call_ended") - answered)
    assert kinds[: len(expected)] == expected, describe
    assert len(kinds) <= len(expected) + 1, describe  # a code at the hang-up, perhaps
    assert {r["data"]["by"] for r in controls} <= {"agent1"}, describe


def test_agent_codes_at_any_moment_pause_and_resume_exactly_as_the_ledger_says(
    code_outcomes: list[tuple[CodePlan, CallOutcome]], stack: Stack
) -> None:
    for plan, outcome in code_outcomes:
        describe = (
            f"seed {SEED}: codes {plan.codes} ms after agent1's answer, hang-up "
            f"{plan.talk_ms} ms after it; ledger "
            f"{[(r['kind'], round(outcome.seconds(r['kind']), 2)) for r in outcome.ledger]}"
        )
        assert outcome.caller.ok, f"{describe}\n{outcome.caller.output[-1500:]}"
        assert outcome.agent is not None and outcome.agent.ok, describe
        answered = outcome.seconds("agent_connected")
        assert_codes_made_their_rows(plan.codes, outcome, answered, describe)
        # The bridged file begins at the agent's answer.
        paused = paused_spans(outcome.ledger, answered, outcome.seconds("call_ended"))
        ((_, file),) = [(r["data"]["segment"], r["data"]["file"]) for r in outcome.rows(
            "recording_started")]  # fmt: skip
        assert_silent_where_paused(stack.host_path(file), paused, describe)


# ---------------------------------------------------------------- the codes on outbound calls

AGENT_CALL = REPO / "sipp-scenarios" / "agent-call.xml"
#: agent1's own operator number ("always"): the file starts at the callee's answer.
OUTBOUND_CALLEE = "+4917699990001"


@dataclass(frozen=True)
class OutboundPlan:
    #: How long the callee's phone rings before it answers.
    ring_ms: int
    #: (ms after the callee's answer, action) of agent1's codes.
    codes: tuple[tuple[int, str], ...]
    #: From the answer to agent1's hang-up.
    talk_ms: int
    #: The callee hangs up this long after answering (0: it waits for agent1's BYE).
    callee_hangup_ms: int = 0

    def keys(self) -> tuple[tuple[int, str], ...]:
        return code_keys(self.codes)


def draw_outbound_plans(seed: int) -> list[OutboundPlan]:
    rng = random.Random(seed + 3)
    plans = []
    for _ in range(AGENT_CALLS):
        talk_ms = rng.randint(4000, 8000)
        codes = _draw_codes(rng, talk_ms)
        callee_hangup = rng.choice([0, rng.randint(1500, talk_ms)])
        plans.append(OutboundPlan(rng.randint(300, 3000), codes, talk_ms, callee_hangup))
    return plans


async def _outbound_call(plan: OutboundPlan) -> tuple[AgentResult, AgentResult]:
    return await beside_a_phone(
        run_agent(
            AGENT_PHONE,
            port=5062,
            answer_ms=plan.ring_ms,
            media_port=16620,
            timeout=30,
            hangup_ms=plan.callee_hangup_ms,
        ),
        place_agent_call(
            AGENT_CALL,
            agent="agent1",
            password=agent_password("agent1"),
            number=OUTBOUND_CALLEE,
            port=5071,
            media_port=16610,
            talk_ms=plan.talk_ms,
            timeout=30,
            media=agent_media(plan.talk_ms + 1000, plan.keys()),
        ),
    )


@pytest.fixture(scope="module")
def outbound_outcomes(stack: Stack) -> list[tuple[OutboundPlan, CallOutcome]]:
    done = []
    for plan in draw_outbound_plans(SEED):
        since = datetime.now(UTC)
        agent, callee = asyncio.run(_outbound_call(plan))
        details = ended_call_of("agent1", since)
        ledger = ledger_rows(details["id"]) if details else []
        as_call = CallResult(
            CallPlan(OUTBOUND_CALLEE, "agent1"), agent.returncode, 0, 0, agent.output
        )
        done.append((plan, CallOutcome(as_call, callee, details, ledger)))
    return done


def test_agent_codes_on_an_outbound_call_pause_and_resume_exactly_as_the_ledger_says(
    outbound_outcomes: list[tuple[OutboundPlan, CallOutcome]], stack: Stack
) -> None:
    for plan, outcome in outbound_outcomes:
        describe = (
            f"seed {SEED}: callee rings {plan.ring_ms} ms; codes {plan.codes} ms after its "
            f"answer, agent1 hangs up {plan.talk_ms} ms after it, the callee "
            f"{plan.callee_hangup_ms or 'never'}; ledger "
            f"{[(r['kind'], round(outcome.seconds(r['kind']), 2)) for r in outcome.ledger]}"
        )
        assert outcome.caller.ok, f"{describe}\n{outcome.caller.output[-1500:]}"
        assert outcome.details["direction"] == "outbound", describe
        answered = outcome.seconds("callee_answered")
        ended = outcome.seconds("call_ended")
        assert_codes_made_their_rows(plan.codes, outcome, answered, describe)
        (recording,) = [p for p in outcome.details["recordings"] if "/monitor/" in p]
        wav = stack.host_path(recording.removeprefix(str(stack.root)))
        assert abs(wav_seconds(wav) - (ended - answered)) <= 0.5, describe
        assert_silent_where_paused(wav, paused_spans(outcome.ledger, answered, ended), describe)

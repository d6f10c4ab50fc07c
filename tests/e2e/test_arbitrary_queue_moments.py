"""Queue callers who press keys at arbitrary moments, and an agent who answers at one.

A caller on a group-routed number hears the availability greeting and the
consent greeting, waits in the queue while the agent's phone rings, then talks
to the agent. Real callers press 3 in any of those phases, or another key, or
none, and hang up whenever they like: while still queued, or mid-conversation.
The agent picks up after a ring of its own, and half the time hangs up first
(the PBX then ends the caller's call). Every caller streams audio for the whole
call; the seed is in every failure message (``CONSENTD_MOMENTS_SEED``).

The rules checked are the product's: a 3 decides (consent on the opt-in
number, refusal on the opt-out one) in whichever phase it comes, nothing
decides without one, and what is kept is the talk time with the agent alone,
from the agent's answer (or the consent, if that came later) to the hang-up.
A call that never reached the agent keeps nothing. Calls to the hand-off
number go the same way through the PBX's own dialplan to a desk phone, and
are recorded from the end of their opt-out greeting unless refused.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from consentd.sipp import AgentResult, CallPlan, CallResult, place_call, run_agent
from tests.e2e.harness import (
    REPO,
    SCENARIO,
    SHORT_GREETING_S,
    CallOutcome,
    Stack,
    beside_a_phone,
    collect_outcomes,
    wav_seconds,
)

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("CONSENTD_MOMENTS_SEED") or time.time_ns() % 1_000_000)
AGENT_PHONE = REPO / "sipp-scenarios" / "agent.xml"
#: The availability greeting, then the consent greeting: the caller joins the queue.
QUEUED_AFTER_MS = int(2 * SHORT_GREETING_S * 1000)
#: The hand-off number's opt-out greeting, then the PBX's dialplan rings the desk phone.
HANDED_OFF_AFTER_MS = int(SHORT_GREETING_S * 1000)
#: (number, policy, when the phone starts ringing, the phone's port): two numbers
#: routed to the support queue (agent1), and one handed to the PBX's own dialplan
#: (pbx-extensions 200: Dial() of the desk phone agent-ext200).
NUMBERS = [
    ("+4930100010", "opt_in", QUEUED_AFTER_MS, 5071),
    ("+4930100011", "opt_out", QUEUED_AFTER_MS, 5071),
    ("+4930100021", "handoff_opt_out", HANDED_OFF_AFTER_MS, 5074),
]
CALLS = 9
#: A press this close to the hang-up may arrive after it.
UNSURE_MS = 700
#: How far the agent's hang-up may land from where the plan puts it.
AGENT_END_SLACK_MS = 1000
#: Asterisk reports a digit when its RFC 2833 end packet arrives: 140 ms into the pcap.
DTMF_END_S = 0.14
TOLERANCE_S = 0.5
OTHER_KEYS = "0124567"


@dataclass(frozen=True)
class Draw:
    policy: str
    plan: CallPlan
    #: When the phone starts ringing, in ms after the caller's answer.
    rings_at_ms: int
    #: Its SIP port (asterisk-conf/pjsip.conf): agent1, or the desk phone.
    phone_port: int
    #: How long the phone rings before it answers.
    answer_ms: int
    #: The phone hangs up this long after answering (0: it waits for the caller's BYE).
    agent_hangup_ms: int = 0

    def presses(self) -> list[tuple[int, str]]:
        return self.plan.presses()

    @property
    def hangup_ms(self) -> int:
        return self.plan.hangup_ms

    @property
    def agent_ends(self) -> bool:
        """agent1 hangs up before the caller would (about when: the queue's ringing
        adds its own latency to the answer, hence ``AGENT_END_SLACK_MS``)."""
        answered = self.rings_at_ms + self.answer_ms
        return bool(self.agent_hangup_ms) and answered + self.agent_hangup_ms < self.hangup_ms

    @property
    def end_ms(self) -> int:
        if self.agent_ends:
            return self.rings_at_ms + self.answer_ms + self.agent_hangup_ms
        return self.hangup_ms

    def threes(self) -> list[int]:
        """Every 3 the caller means to press (a press after the call's end never is)."""
        return [at for at, key in self.presses() if key == "3"]

    def decided_threes(self) -> list[int]:
        """The 3s surely pressed before the call ended."""
        margin = UNSURE_MS + (AGENT_END_SLACK_MS if self.agent_ends else 0)
        return [at for at in self.threes() if at < self.end_ms - margin]

    def unsure(self) -> bool:
        """A press near the end may or may not be in the call."""
        slack = AGENT_END_SLACK_MS if self.agent_ends else 0
        margin = UNSURE_MS + slack
        return any(self.end_ms - margin <= at < self.end_ms + slack for at, _ in self.presses())

    def describe(self) -> str:
        return (
            f"seed {SEED} ({self.policy} {self.plan.did}, caller {self.plan.caller}): presses "
            f"{self.presses()} ms after the answer, agent answers {self.answer_ms} ms after "
            f"the ring and hangs up {self.agent_hangup_ms or 'never'} ms after that, "
            f"the caller's hang-up at {self.hangup_ms} ms"
        )


def _moment(rng: random.Random, rings_at: int, answer_ms: int) -> int:
    """At the answer, at a greeting's end, while the phone rings, or in the talk."""
    phase = rng.random()
    if phase < 0.2:
        return rng.choice([0, 60, 250])
    if phase < 0.4:
        return max(0, rng.choice([1000, rings_at]) + rng.randint(-300, 300))
    if phase < 0.6:
        return rings_at + rng.randint(0, answer_ms)
    return rings_at + answer_ms + rng.randint(0, 4000)


def draw_calls(seed: int) -> list[Draw]:
    rng = random.Random(seed + 2)
    draws = []
    for n in range(CALLS):
        did, policy, rings_at, port = NUMBERS[n % len(NUMBERS)]
        answer_ms = rng.choice([300, rng.randint(500, 4000)])
        key1 = rng.choices(["3", rng.choice(OTHER_KEYS), "none"], [5, 2, 2])[0]
        key2 = "none" if key1 == "none" else rng.choices(["3", "none"], [2, 3])[0]
        wait1 = _moment(rng, rings_at, answer_ms) if key1 != "none" else 0
        wait2 = rng.randint(300, 3000) if key2 != "none" else 0
        # Hang up while the phone rings (its INVITE was sent), or talking.
        end = rng.choice([rings_at + 800 + rng.randint(0, answer_ms), rings_at + answer_ms + 4000])
        talk = end - wait1 - wait2
        if talk < 200:  # the keys come later: hang up soon after them
            talk = rng.randint(200, 3000)
        caller = f"+491790{seed % 1000:03d}{n:03d}"
        plan = CallPlan(did, caller, wait1, key1, wait2, key2, talk_ms=talk, speak=True)
        agent_hangup = rng.choice([0, rng.randint(500, 4000)])
        draws.append(Draw(policy, plan, rings_at, port, answer_ms, agent_hangup))
    return draws


async def _calls(draws: list[Draw]) -> list[tuple[CallResult, AgentResult]]:
    """One call after the other: the one listening phone takes each (for the queue,
    agent1: the ringall queue's other members do not answer)."""
    done = []
    for n, draw in enumerate(draws):
        phone = run_agent(
            AGENT_PHONE,
            port=draw.phone_port,
            answer_ms=draw.answer_ms,
            media_port=16100,
            timeout=draw.hangup_ms / 1000 + 10,
            hangup_ms=draw.agent_hangup_ms,
        )
        call = place_call(draw.plan, SCENARIO, sip_port=5480 + n, media_port=18500)
        done.append(await beside_a_phone(phone, call))
    return done


@pytest.fixture(scope="module")
def outcomes(stack: Stack) -> list[tuple[Draw, CallOutcome]]:
    draws = draw_calls(SEED)
    since = datetime.now(UTC)
    results = asyncio.run(_calls(draws))
    found = collect_outcomes(
        {d.plan.caller: pair for d, pair in zip(draws, results, strict=True)}, since
    )
    return [(d, found[d.plan.caller]) for d in draws]


def _describe(draw: Draw, outcome: CallOutcome) -> str:
    rows = [(r["kind"], round(outcome.seconds(r["kind"]), 2)) for r in outcome.ledger]
    return f"{draw.describe()}; details {outcome.details}; ledger {rows}"


def test_every_call_ends_in_the_ledger_once(outcomes: list[tuple[Draw, CallOutcome]]) -> None:
    for draw, outcome in outcomes:
        assert outcome.caller.ok, f"{_describe(draw, outcome)}\n{outcome.caller.output[-1500:]}"
        kinds = [r["kind"] for r in outcome.ledger]
        assert kinds.count("call_started") == 1, _describe(draw, outcome)
        assert kinds.count("call_ended") == 1, _describe(draw, outcome)


def test_a_3_in_any_phase_decides_and_nothing_else_does(
    outcomes: list[tuple[Draw, CallOutcome]],
) -> None:
    for draw, outcome in outcomes:
        action = outcome.details.get("call_recording_consent_action")
        if action is not None:
            assert draw.threes(), f"a decision without a 3: {_describe(draw, outcome)}"
        if draw.unsure():
            continue
        expected = None
        if draw.decided_threes():
            expected = "caller_opted_in" if draw.policy == "opt_in" else "caller_opted_out"
        assert action == expected, _describe(draw, outcome)


def _expected_talk(draw: Draw, outcome: CallOutcome) -> float | None:
    """Seconds the kept recording holds, from the ledger's own times; None: nothing kept."""
    if draw.policy == "handoff_opt_out":
        # Not a queue: recorded from the opt-out greeting's end, ringing included.
        refused = outcome.details.get("call_recording_consent_action") == "caller_opted_out"
        if refused or not outcome.rows("greeting_finished"):
            return None
        return outcome.seconds("call_ended") - outcome.seconds("greeting_finished")
    if not outcome.rows("agent_connected"):
        return None  # hung up in the queue: no talk time
    answered, ended = outcome.seconds("agent_connected"), outcome.seconds("call_ended")
    action = outcome.details.get("call_recording_consent_action")
    if draw.policy == "opt_out":
        return None if action == "caller_opted_out" else ended - answered
    if action != "caller_opted_in":
        return None
    consented = outcome.seconds("consent_decided")
    return ended - max(answered, consented)


def test_only_the_talk_with_the_agent_after_consent_is_kept(
    outcomes: list[tuple[Draw, CallOutcome]], stack: Stack
) -> None:
    for draw, outcome in outcomes:
        if draw.unsure():
            continue
        listed = outcome.details.get("recordings") or []
        expected = _expected_talk(draw, outcome)
        if expected is None or expected < TOLERANCE_S:
            if expected is None:
                assert listed == [], _describe(draw, outcome)
            continue
        assert len(listed) == 1, _describe(draw, outcome)
        measured = wav_seconds(stack.host_path(listed[0].removeprefix(str(stack.root))))
        assert abs(measured - expected) <= TOLERANCE_S, (
            f"WAV {measured:.2f} s, expected {expected:.2f} s: {_describe(draw, outcome)}"
        )


def test_no_file_is_left_that_the_details_do_not_list(
    outcomes: list[tuple[Draw, CallOutcome]], stack: Stack
) -> None:
    """A call that never reached the agent leaves its bridged-only file (a bare
    header) for consentd to remove once MixMonitor has closed it: a moment after
    the hangup, so each unlisted file gets a few seconds to go."""
    for draw, outcome in outcomes:
        listed = set(outcome.details.get("recordings") or [])
        for row in outcome.rows("recording_started"):
            path = stack.host_path(row["data"]["file"])
            if str(path) not in listed:
                deadline = time.monotonic() + 5
                while path.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert not path.exists(), f"{path} kept, not listed: {_describe(draw, outcome)}"

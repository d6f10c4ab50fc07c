"""Agents' outbound calls over real SIP: digest auth, the operator number, the recording.

agent1 dials from 127.0.0.1:5071 with its password from .state/stack.json; a
SIPp UAS on the trunk (127.0.0.1:5062) plays the callee, answers after a ring
and talks. One call at a time.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from consentd.sipp import (
    AgentResult,
    CallPlan,
    CallResult,
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

AGENT_CALL = REPO / "sipp-scenarios" / "agent-call.xml"
CALLEE_PHONE = REPO / "sipp-scenarios" / "agent.xml"
CALLEE = "+4917699990000"
RING_MS, TALK_MS = 1500, 4000


def agent_password(agent: str) -> str:
    stack_file = json.loads((REPO / ".state" / "stack.json").read_text())
    return str(stack_file["agents"][agent]["password"])


@dataclass(frozen=True)
class Dialled:
    agent: AgentResult
    callee: AgentResult


async def _dial(
    header: str | None, *, password: str | None = None, trunk_wait: float = 30
) -> Dialled:
    agent, callee = await beside_a_phone(
        run_agent(CALLEE_PHONE, port=5062, answer_ms=RING_MS, media_port=16620, timeout=trunk_wait),
        place_agent_call(
            AGENT_CALL,
            agent="agent1",
            password=password or agent_password("agent1"),
            number=CALLEE,
            port=5071,
            media_port=16610,
            talk_ms=TALK_MS,
            header=header,
            timeout=30,
        ),
    )
    return Dialled(agent, callee)


def _outcome(dialled: Dialled, since: datetime) -> CallOutcome:
    """agent1's call since ``since`` (its details show the agent's number, "agent1")."""
    details = ended_call_of("agent1", since)
    ledger = ledger_rows(details["id"]) if details else []
    return CallOutcome(_no_call(dialled), dialled.callee, details, ledger)


def _no_call(dialled: Dialled) -> CallResult:
    plan = CallPlan(CALLEE, "agent1")
    return CallResult(plan, dialled.agent.returncode, 0.0, 0.0, dialled.agent.output)


@pytest.mark.parametrize(
    ("number", "policy", "recorded"),
    [
        ("+4930100031", "always", True),
        ("+4930100032", "opt_in", False),
        ("+4930100033", "opt_out", True),
        ("+4930100034", "never", False),
    ],
)
def test_an_outbound_call_follows_the_policy_of_the_operator_number(
    stack: Stack, number: str, policy: str, recorded: bool
) -> None:
    since = datetime.now(UTC)
    dialled = asyncio.run(_dial(f"X-Consentd-Number: {number}"))
    assert dialled.agent.ok, dialled.agent.output[-2000:]
    assert dialled.callee.ok, dialled.callee.output[-2000:]
    outcome = _outcome(dialled, since)
    details = outcome.details

    assert (details["direction"], details["phone_number"], details["callee"]) == (
        "outbound", number, CALLEE,
    )  # fmt: skip
    assert details["agent"] == "agent1"
    assert details["call_recording_consent"] == policy
    answered = outcome.seconds("callee_answered")
    talked = outcome.seconds("call_ended") - answered
    assert abs(talked - TALK_MS / 1000) <= 1.0
    assert abs(details["talk_time"] - talked) <= 1.0
    files = [p for p in details["recordings"] if "/monitor/" in p]
    if not recorded:
        assert files == [] and details["recording_time"] == 0
        return
    (recording,) = files
    measured = wav_seconds(stack.host_path(recording.removeprefix(str(stack.root))))
    assert abs(measured - talked) <= 0.5, (measured, talked)  # from the callee's answer
    assert details["recording_time"] + details["not_recording_time"] == pytest.approx(
        outcome.seconds("call_ended"), abs=1.0
    )


def test_a_phone_that_sends_no_header_calls_as_its_agents_own_number(stack: Stack) -> None:
    """Ordinary phones send no X-Consentd-Number. Asterisk then fails to read the
    header (ARI 500), which consentd once took for a failed lookup: every such
    call was refused with 403."""
    since = datetime.now(UTC)
    dialled = asyncio.run(_dial(None))
    assert dialled.agent.ok, dialled.agent.output[-2000:]
    assert dialled.callee.ok, dialled.callee.output[-2000:]
    details = _outcome(dialled, since).details
    assert (details["direction"], details["phone_number"], details["agent"]) == (
        "outbound", "+4930100031", "agent1",
    )  # fmt: skip
    assert len([p for p in details["recordings"] if "/monitor/" in p]) == 1  # "always"


def test_a_number_that_is_not_the_operators_is_refused_and_the_trunk_never_rings(
    stack: Stack,
) -> None:
    since = datetime.now(UTC)
    dialled = asyncio.run(_dial("X-Consentd-Number: +4930199999", trunk_wait=8))

    assert "403" in dialled.agent.output
    assert not dialled.callee.ok  # the trunk's phone waited in vain
    outcome = _outcome(dialled, since)
    assert outcome.first("call_refused")["data"] == {"reason": "requested_number_not_ours"}
    assert outcome.rows("outbound_dialled") == []


def test_a_wrong_password_never_reaches_consentd_or_the_trunk(stack: Stack) -> None:
    since = datetime.now(UTC)
    dialled = asyncio.run(_dial(None, password="not-the-password", trunk_wait=8))

    assert not dialled.callee.ok
    outcome = _outcome(dialled, since)
    assert outcome.details == {}  # no call at all in the ledger


def test_an_unauthenticated_invite_from_another_port_is_an_inbound_caller(stack: Stack) -> None:
    """Toll-fraud protection: only an agent's endpoint, authenticated, reaches the trunk."""
    since = datetime.now(UTC)

    async def scenario() -> tuple[Any, AgentResult]:
        callee = asyncio.create_task(
            run_agent(CALLEE_PHONE, port=5062, answer_ms=RING_MS, media_port=16620, timeout=8)
        )
        await asyncio.sleep(0.3)
        plan = CallPlan(CALLEE, "+4915100000701", talk_ms=3000, speak=True)
        caller = await place_call(plan, SCENARIO, sip_port=5195, media_port=17950)
        return caller, await callee

    caller, callee = asyncio.run(scenario())

    assert not callee.ok  # never rang
    outcome = collect_outcomes({"c": (caller, None)}, since)["c"]
    assert outcome.details["direction"] == "inbound"
    assert outcome.details["phone_number"] == CALLEE


def test_an_outbound_announcement_plays_to_the_callee_before_the_recording(stack: Stack) -> None:
    """+4930100035 (always, outbound_announcement): the callee hears the bundled
    notice at answer (Dial A()); the two are bridged, and recorded, after it."""
    since = datetime.now(UTC)
    dialled = asyncio.run(_dial("X-Consentd-Number: +4930100035"))
    assert dialled.agent.ok, dialled.agent.output[-2000:]
    outcome = _outcome(dialled, since)
    assert outcome.first("outbound_dialled")["data"]["announcement"] is True

    notice = wav_seconds(stack.root / "var/lib/asterisk/sounds/en/consentd/outbound_notice.wav")
    (recording,) = [p for p in outcome.details["recordings"] if "/monitor/" in p]
    measured = wav_seconds(stack.host_path(recording.removeprefix(str(stack.root))))
    # The callee answered after RING_MS; Dial bridged the two (and answered the
    # agent) only once the notice had played to the callee: that is when the
    # ledger's callee_answered and the recording start.
    assert abs(outcome.seconds("callee_answered") - (RING_MS / 1000 + notice)) <= 0.5
    assert abs(measured - TALK_MS / 1000) <= 0.5, (measured, notice)

"""IVR menus and the hand-off to the PBX's own dialplan, over real SIP.

Callers (SIPp UAC) stream audio and press keys into menus whose prompts are
one-second tones (harness.POLICIES: menu "main" with a nested "sub"; timeout
2 s, one retry). Agents and the desk phone of extension 200 are SIPp UAS
phones that answer and talk. One case at a time: the queue rings agent1.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from consentd.sipp import AgentResult, CallPlan, CallResult, place_call, run_agent
from tests.e2e.harness import (
    REPO,
    SCENARIO,
    CallOutcome,
    Stack,
    collect_outcomes,
    wav_seconds,
)

AGENT_SCENARIO = REPO / "sipp-scenarios" / "agent.xml"
IVR_NUMBER = "+4930100020"  # opt_in, routing {ivr: main}
HAND_OFF_NUMBER = "+4930100021"  # opt_out, routing {dialplan: pbx-extensions 200}


@dataclass(frozen=True)
class IvrCase:
    name: str
    plan: CallPlan
    #: (SIP port, ring time before answering) of the phone that should answer.
    phone: tuple[int, int] | None


def _caller(n: int) -> str:
    return f"+49151000003{n:02d}"


CASES = [
    IvrCase("press_1_then_3_in_the_queue",
            CallPlan(IVR_NUMBER, _caller(1), 1500, "1", 2500, "3", talk_ms=5000, speak=True),
            (5071, 3000)),
    IvrCase("3_in_the_menu_then_1",
            CallPlan(IVR_NUMBER, _caller(2), 500, "3", 2000, "1", talk_ms=5000, speak=True),
            (5071, 2500)),
    IvrCase("invalid_key_then_voicemail",
            CallPlan(IVR_NUMBER, _caller(3), 500, "7", 3000, "2", talk_ms=4500, speak=True),
            None),
    IvrCase("no_key_retries_then_default",
            CallPlan(IVR_NUMBER, _caller(4), talk_ms=14000, speak=True), None),
    IvrCase("nested_menu",
            CallPlan(IVR_NUMBER, _caller(5), 1500, "9", 2000, "1", talk_ms=4000, speak=True),
            (5071, 2000)),
    IvrCase("hand_off_opt_out_3_while_talking",
            CallPlan(HAND_OFF_NUMBER, _caller(6), 5000, "3", talk_ms=3000, speak=True),
            (5074, 1000)),
]  # fmt: skip


Outcome = CallOutcome


async def _run(case: IvrCase) -> tuple[CallResult, AgentResult | None]:
    phone = None
    if case.phone is not None:
        port, answer_ms = case.phone
        phone = asyncio.create_task(
            run_agent(AGENT_SCENARIO, port=port, answer_ms=answer_ms, media_port=16100 + port % 10)
        )
        await asyncio.sleep(0.3)  # listening before Asterisk rings it
    caller = await place_call(case.plan, SCENARIO, sip_port=5165, media_port=17600)
    return caller, (await phone if phone else None)


@pytest.fixture(scope="module")
def outcomes(stack: Stack) -> dict[str, Outcome]:
    since = datetime.now(UTC)
    return collect_outcomes({case.name: asyncio.run(_run(case)) for case in CASES}, since)


def _phones_ok(outcome: Outcome) -> None:
    assert outcome.details, "the call never reached the ledger"
    assert outcome.caller.ok, f"SIPp caller failed:\n{outcome.caller.output[-2000:]}"
    if outcome.agent is not None:
        assert outcome.agent.ok, f"SIPp phone failed:\n{outcome.agent.output[-2000:]}"


def _played(outcome: Outcome) -> list[str]:
    return [row["data"]["kind"] for row in outcome.rows("greeting_played")]


def test_an_ivr_number_plays_the_menu_instead_of_the_consent_greeting(
    outcomes: dict[str, Outcome],
) -> None:
    for name in ("press_1_then_3_in_the_queue", "nested_menu", "no_key_retries_then_default"):
        played = _played(outcomes[name])
        assert played[0] == "ivr", (name, played)
        assert "opt_in" not in played and "call_recording_opt_in" not in played


def test_press_1_then_3_in_the_queue_records_from_the_agents_answer(
    outcomes: dict[str, Outcome], stack: Stack
) -> None:
    outcome = outcomes["press_1_then_3_in_the_queue"]
    _phones_ok(outcome)
    routed = outcome.first("routed")["data"]
    assert routed == {"to": "ivr", "ivr": "main", "source": "number"}
    chosen = outcome.rows("routed")[1]["data"]
    assert (chosen["to"], chosen["group"], chosen["source"], chosen["digit"]) == (
        "group", "support", "ivr:main", "1",
    )  # fmt: skip
    decided = outcome.first("consent_decided")["data"]
    assert (decided["action"], decided["where"]) == ("caller_opted_in", "queue")
    assert outcome.details["call_recording_consent_action"] == "caller_opted_in"
    assert outcome.details["agent"] == "agent1"
    # Bridged-only: audio from the agent's answer to the hangup.
    bridged = outcome.seconds("call_ended") - outcome.seconds("agent_connected")
    (recording,) = [p for p in outcome.details["recordings"] if "/monitor/" in p]
    measured = wav_seconds(stack.host_path(recording.removeprefix(str(stack.root))))
    assert abs(measured - bridged) <= 0.6, (measured, bridged)


def test_3_in_the_menu_is_consent_and_the_caller_still_reaches_the_group(
    outcomes: dict[str, Outcome], stack: Stack
) -> None:
    outcome = outcomes["3_in_the_menu_then_1"]
    _phones_ok(outcome)
    decided = outcome.first("consent_decided")["data"]
    assert (decided["action"], decided["where"]) == ("caller_opted_in", "ivr:main")
    assert outcome.rows("ivr_missed") == []  # never an invalid option
    assert "ivr_invalid" not in _played(outcome)
    assert outcome.rows("routed")[1]["data"]["group"] == "support"
    assert outcome.details["agent"] == "agent1"
    # Consent given in the menu: recorded from the press to the hangup.
    span = outcome.seconds("call_ended") - outcome.seconds("consent_decided")
    (recording,) = [p for p in outcome.details["recordings"] if "/monitor/" in p]
    measured = wav_seconds(stack.host_path(recording.removeprefix(str(stack.root))))
    assert abs(measured - span) <= 0.6, (measured, span)


def test_an_invalid_key_plays_invalid_then_the_menu_and_a_valid_key_still_counts(
    outcomes: dict[str, Outcome], stack: Stack
) -> None:
    outcome = outcomes["invalid_key_then_voicemail"]
    _phones_ok(outcome)
    (missed,) = outcome.rows("ivr_missed")
    assert missed["data"] == {"menu": "main", "reason": "invalid_key", "digit": "7", "misses": 1}
    assert _played(outcome)[:3] == ["ivr", "ivr_invalid", "ivr"]
    assert outcome.rows("routed")[1]["data"]["to"] == "voicemail"
    assert outcome.details["voicemail"] is True
    (message,) = [p for p in outcome.details["recordings"] if "/recording/" in p]
    assert wav_seconds(stack.host_path(message.removeprefix(str(stack.root)))) > 1.0


def test_no_key_plays_the_menu_per_retry_then_takes_the_default(
    outcomes: dict[str, Outcome],
) -> None:
    outcome = outcomes["no_key_retries_then_default"]
    assert outcome.details, "the call never reached the ledger"
    missed = [r["data"] for r in outcome.rows("ivr_missed")]
    assert [(m["reason"], m["misses"]) for m in missed] == [("no_key", 1), ("no_key", 2)]
    assert _played(outcome) == ["ivr", "ivr"]
    assert outcome.rows("routed")[-1]["data"] == {"to": "hangup", "source": "ivr:main"}
    # 2 x (1 s prompt + 2 s wait): the PBX hung up long before the caller would have.
    assert 5.0 <= outcome.seconds("call_ended") <= 8.0
    assert outcome.details["recording_time"] == 0


def test_a_nested_menu_leads_on_to_its_own_options(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["nested_menu"]
    _phones_ok(outcome)
    routes = [r["data"] for r in outcome.rows("routed")]
    assert [(r["to"], r["source"], r.get("digit")) for r in routes] == [
        ("ivr", "number", None),
        ("ivr", "ivr:main", "9"),
        ("group", "ivr:sub", "1"),
    ]
    assert outcome.details["agent"] == "agent1"
    assert outcome.details["call_recording_consent_action"] is None
    assert [p for p in outcome.details["recordings"] if "/monitor/" in p] == []


def test_opt_out_3_during_a_call_handed_to_the_dialplan_stops_and_deletes_the_recording(
    outcomes: dict[str, Outcome], stack: Stack
) -> None:
    outcome = outcomes["hand_off_opt_out_3_while_talking"]
    _phones_ok(outcome)
    handed = outcome.first("routed")["data"]
    assert (handed["to"], handed["context"], handed["extension"]) == (
        "dialplan", "pbx-extensions", "200",
    )  # fmt: skip
    started = outcome.first("recording_started")["data"]
    decided = outcome.first("consent_decided")["data"]
    assert (decided["action"], decided["where"]) == ("caller_opted_out", "talking")
    assert outcome.first("recording_stopped")["data"]["reason"] == "caller_opted_out"
    assert outcome.first("recording_deleted")["data"]["file"] == started["file"]
    assert not stack.host_path(started["file"]).exists()
    assert outcome.details["recordings"] == []
    assert outcome.details["call_recording_consent_action"] == "caller_opted_out"
    # The caller talked to the desk phone until it hung up: the call lasted its plan.
    assert abs(outcome.seconds("call_ended") - outcome.caller.plan.duration_s) <= 1.0
    # The dialplan saw the outcome at the hand-off (its Log() line in Asterisk's log).
    channel = outcome.first("call_started")["data"]["channel_id"]
    log = (stack.root / "var/log/asterisk/messages").read_text(errors="replace")
    assert f"call {channel} from consentd: policy opt_out action none recording on" in log

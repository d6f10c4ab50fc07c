"""Real SIP calls through the containers: one call per policy and one group call.

The same outcomes the chroot suite checks (tests/e2e/test_inbound_consent.py,
test_group_routing.py), read the same way: ``consentd calls --json``, the
ledger rows, and each recording's WAV on the host, here in the spool volume
the two containers share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from consentd.sipp import AgentResult, CallPlan, CallResult, place_call, place_calls, run_agent
from tests.containers.conftest import (
    ASTERISK_UID,
    CONSENTD_UID,
    Containers,
    podman,
)
from tests.e2e.harness import REPO, SCENARIO, CallOutcome, collect_outcomes, wav_seconds

AGENT_SCENARIO = REPO / "sipp-scenarios" / "agent.xml"
#: Asterisk reports a digit when its RFC 2833 end packet arrives: 140 ms into the pcap.
DTMF_END_S = 0.14
TOLERANCE_S = 0.5
OPT_OUT = "+4930100003"


@dataclass(frozen=True)
class Case:
    name: str
    #: The call, given the opt-out greeting's length in seconds.
    plan: Callable[[float], CallPlan]
    consent: str
    action: str | None
    #: Where the kept recording starts, in seconds after the call's start
    #: (given the opt-out greeting's length); None: nothing is kept.
    recorded_from: Callable[[float], float] | None


def _caller(n: int) -> str:
    return f"+49151000009{n:02d}"


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


# One call per policy; opt_out twice: kept (recorded from the end of its
# greeting), and deleted by a 3 two seconds after the greeting.
CASES = [
    Case("always", lambda g: CallPlan("+4930100001", _caller(1), talk_ms=4000, speak=True),
         "always", None, lambda g: 0.0),
    Case("never_with_key_3",
         lambda g: CallPlan("+4930100004", _caller(2), 1500, "3", talk_ms=2500, speak=True),
         "never", None, None),
    Case("opt_in_key_3",
         lambda g: CallPlan("+4930100002", _caller(3), 1500, "3", talk_ms=4000, speak=True),
         "opt_in", "caller_opted_in", lambda g: 1.5 + DTMF_END_S),
    Case("opt_out_key_3_deletes",
         lambda g: CallPlan(OPT_OUT, _caller(4), _ms(g) + 2000, "3", talk_ms=2500, speak=True),
         "opt_out", "caller_opted_out", None),
    Case("opt_out_without_key",
         lambda g: CallPlan(OPT_OUT, _caller(5), talk_ms=_ms(g) + 4000, speak=True),
         "opt_out", None, lambda g: g),
]  # fmt: skip


def opt_out_greeting_s() -> float:
    """The bundled English opt-out greeting's length (the file the Asterisk image holds)."""
    return wav_seconds(REPO / ".cache" / "sounds" / "en" / "consentd" / "opt_out.wav")


#: The group call: opt_in, a 3 while queued, agent1 answers after 3 s.
GROUP = CallPlan("+4930100010", _caller(6), 3000, "3", talk_ms=6500, speak=True)
GROUP_ANSWER_MS = 3000


async def _group_call() -> tuple[CallResult, AgentResult | None]:
    agent = asyncio.create_task(
        run_agent(AGENT_SCENARIO, port=5071, answer_ms=GROUP_ANSWER_MS, media_port=16100)
    )
    await asyncio.sleep(0.3)  # listening before Asterisk rings it
    caller = await place_call(GROUP, SCENARIO, sip_port=5150, media_port=17500)
    return caller, await agent


async def _all_calls() -> dict[str, tuple[CallResult, AgentResult | None]]:
    greeting = opt_out_greeting_s()
    single, group = await asyncio.gather(
        place_calls([case.plan(greeting) for case in CASES], SCENARIO), _group_call()
    )
    results: dict[str, tuple[CallResult, AgentResult | None]] = {
        case.name: (result, None) for case, result in zip(CASES, single, strict=True)
    }
    results["group"] = group
    return results


@pytest.fixture(scope="module")
def outcomes(containers: Containers) -> dict[str, CallOutcome]:
    since = datetime.now(UTC)
    return collect_outcomes(asyncio.run(_all_calls()), since)


def test_both_containers_run_as_their_unprivileged_users(containers: Containers) -> None:
    for name, uid in (
        (containers.consentd_name, CONSENTD_UID),
        (containers.asterisk_name, ASTERISK_UID),
    ):
        ids = podman("exec", name, "id", "-u").stdout.strip()
        assert ids == str(uid), (name, ids)
        top = podman("top", name, "user", "comm").stdout.splitlines()[1:]
        assert top and all(not line.split()[0] == "root" for line in top), (name, top)


def test_the_consentd_healthcheck_passes(containers: Containers) -> None:
    result = podman("healthcheck", "run", containers.consentd_name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_policy_through_the_containers(
    case: Case, outcomes: dict[str, CallOutcome], containers: Containers
) -> None:
    outcome = outcomes[case.name]
    assert outcome.caller.ok, f"SIPp call failed:\n{outcome.caller.output[-2000:]}"
    details = outcome.details
    log = containers.logs(containers.consentd_name)[-3000:]
    assert details, f"no call details for {outcome.caller.plan.caller}\n{log}"
    assert details["phone_number"] == outcome.caller.plan.did
    assert details["call_recording_consent"] == case.consent
    assert details["call_recording_consent_action"] == case.action
    total = details["recording_time"] + details["not_recording_time"]
    assert abs(total - outcome.caller.plan.duration_s) <= 1.5, details

    if case.recorded_from is None:
        assert details["recordings"] == []
        assert details["recording_time"] == 0
        for row in outcome.rows("recording_started"):
            path = containers.host_path(row["data"]["file"])
            assert not path.exists(), f"{path} should have been deleted"
        if case.action == "caller_opted_out":
            assert outcome.rows("recording_started"), "opt_out records from the greeting's end"
            assert outcome.first("recording_deleted")
        return
    expected = outcome.caller.plan.duration_s - case.recorded_from(opt_out_greeting_s())
    assert len(details["recordings"]) == 1, details["recordings"]
    path = containers.host_path(details["recordings"][0])
    measured = wav_seconds(path)
    assert abs(measured - expected) <= TOLERANCE_S, (
        f"{path}: WAV holds {measured:.2f} s, expected {expected:.2f} s"
    )
    assert abs(details["recording_time"] - expected) <= 1.0
    # Asterisk (uid 10002) wrote it, group-readable for consentd, nothing for others.
    stat = path.stat()
    assert stat.st_uid == ASTERISK_UID and stat.st_mode & 0o007 == 0, oct(stat.st_mode)


def test_a_group_call_through_the_containers(
    outcomes: dict[str, CallOutcome], containers: Containers
) -> None:
    outcome = outcomes["group"]
    assert outcome.caller.ok, f"SIPp caller failed:\n{outcome.caller.output[-2000:]}"
    assert outcome.agent is not None and outcome.agent.ok, outcome.agent
    details = outcome.details
    assert details, f"no call details for {GROUP.caller}"
    assert details["call_recording_consent"] == "opt_in"
    assert details["call_recording_consent_action"] == "caller_opted_in"
    assert details["queue"] == "support" and details["agent"] == "agent1"
    presses = outcome.rows("keypress")
    assert [(p["data"]["digit"], p["data"]["phase"]) for p in presses] == [("3", "queued")]
    # Recorded from the agent's answer (MixMonitor b): the bridged time only.
    connected = outcome.first("agent_connected")["occurred_at"]
    ended = outcome.first("call_ended")["occurred_at"]
    bridged = (ended - connected).total_seconds()
    assert len(details["recordings"]) == 1, details["recordings"]
    measured = wav_seconds(containers.host_path(details["recordings"][0]))
    assert abs(measured - bridged) <= TOLERANCE_S, (measured, bridged)
    assert abs(details["recording_time"] - bridged) <= 1.0


def test_consentd_installed_the_agents_codes_for_asterisk(containers: Containers) -> None:
    """consentd-features.conf, written by consentd's container into the shared
    directory, is what Asterisk's container reads (the policies' *7 and #8)."""
    text = podman(
        "exec", containers.asterisk_name, "cat", "/etc/asterisk/consentd-features.conf"
    ).stdout  # fmt: skip
    assert "*7" in text and "#8" in text, text

"""Real SIP calls through the containers: one call per policy and one group call.

The same outcomes the chroot suite checks (tests/e2e/test_inbound_consent.py,
test_group_routing.py), read the same way: ``consentd calls --json``, the
ledger rows, and each recording's WAV on the host, here in Asterisk's spool,
which only Asterisk's container mounts: consentd shares no volume with it, so
refused audio that is gone was deleted by Asterisk (over ARI), and each kept
file is found where the call's details locate it (``asterisk://NODE/PATH``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consentd.sipp import AgentResult, CallPlan, CallResult, place_call, place_calls, run_agent
from tests.api_schema import validate_response
from tests.containers.conftest import (
    ASTERISK_UID,
    CONSENTD_UID,
    NODE,
    RECORDING_DIR,
    Containers,
    podman,
)
from tests.e2e.harness import (
    REPO,
    SCENARIO,
    CallOutcome,
    collect_outcomes,
    consentd_calls,
    ledger_rows,
    wav_seconds,
)

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

    for row in outcome.rows("recording_started"):
        # MixMonitor writes where ARI's stored recordings are (CONSENTD_RECORDING_STORE=ari).
        assert row["data"]["file"].startswith(RECORDING_DIR + "/consentd-"), row["data"]
    if case.recorded_from is None:
        assert details["recordings"] == [] and details["recording_locations"] == []
        assert details["recording_time"] == 0
        for row in outcome.rows("recording_started"):
            path = containers.host_path(row["data"]["file"])
            assert not path.exists(), f"{path} should have been deleted"
        if case.action == "caller_opted_out":
            # consentd cannot reach that disk: Asterisk deleted it, asked over ARI.
            assert outcome.rows("recording_started"), "opt_out records from the greeting's end"
            assert outcome.first("recording_deleted")
            assert [s["kept"] for s in details["segments"]] == [False]
            assert outcome.rows("command_failed") == []
        return
    expected = outcome.caller.plan.duration_s - case.recorded_from(opt_out_greeting_s())
    assert len(details["recordings"]) == 1, details["recordings"]
    path = _located(outcome, containers)
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
    measured = wav_seconds(_located(outcome, containers))
    assert abs(measured - bridged) <= TOLERANCE_S, (measured, bridged)
    assert abs(details["recording_time"] - bridged) <= 1.0


def _located(outcome: CallOutcome, containers: Containers) -> Path:
    """The one kept recording, found on Asterisk's disk where the details locate it."""
    details = outcome.details
    (file,) = [row["data"]["file"] for row in outcome.rows("recording_started")]
    location = f"asterisk://{NODE}{file}"
    assert details["recording_locations"] == [location], details["recording_locations"]
    assert [s["location"] for s in details["segments"]] == [location]
    path = containers.located(location)
    assert path.is_file(), f"{location}: no such file on Asterisk's disk ({path})"
    return path


def test_the_call_api_locates_each_recording_on_asterisk(
    outcomes: dict[str, CallOutcome], containers: Containers
) -> None:
    """GET /api/calls/{id} from consentd's container, as the OpenAPI document says."""
    stack = json.loads(Path(os.environ["CONSENTD_STACK_JSON"]).read_text())
    headers = {"Authorization": f"Bearer {stack['api_token']}"}
    with urllib.request.urlopen(
        urllib.request.Request(f"{stack['http']}/api/openapi.json", headers=headers), timeout=10
    ) as response:
        doc = json.load(response)
    for name in ("always", "opt_out_key_3_deletes", "group"):
        call_id = outcomes[name].details["id"]
        request = urllib.request.Request(
            f"{stack['http']}/api/calls/{urllib.parse.quote(call_id, safe='')}", headers=headers
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.load(response)
        validate_response(doc, "/api/calls/{id}", "GET", 200, body)
        details = body["details"]
        assert details["recording_locations"] == outcomes[name].details["recording_locations"]
        for location, segment in zip(
            details["recording_locations"],
            [s for s in details["segments"] if s["kept"]],
            strict=True,
        ):
            assert segment["location"] == location
            assert containers.located(location).stat().st_size > 44 * 10
        for segment in details["segments"]:
            if not segment["kept"]:
                assert not containers.located(segment["location"]).exists(), segment


def test_an_empty_recording_is_removed_by_asterisk(containers: Containers) -> None:
    """opt_in routed to the queue, 3 while queued, hung up before any agent (none
    runs): MixMonitor b held only a WAV header, which consentd sized over ARI
    (at most 45 bytes read) and had Asterisk delete."""
    since = datetime.now(UTC)
    plan = CallPlan("+4930100010", _caller(7), 3000, "3", talk_ms=5000, speak=True)
    result = asyncio.run(place_call(plan, SCENARIO, sip_port=5150, media_port=17500))
    assert result.ok, result.output[-2000:]
    details: dict[str, Any] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = [c for c in consentd_calls(since=since) if c["caller"] == plan.caller]
        if found and found[0]["ended_at"]:
            rows = ledger_rows(found[0]["id"])
            if any(r["kind"] == "empty_file_deleted" for r in rows):
                details = found[0]
                break
        time.sleep(0.5)
    assert details, f"no empty_file_deleted for {plan.caller}"
    assert details["call_recording_consent_action"] == "caller_opted_in"
    assert details["abandoned"] is True and details["agent"] is None
    assert details["recordings"] == [] and details["recording_locations"] == []
    rows = ledger_rows(details["id"])
    (started,) = [r for r in rows if r["kind"] == "recording_started"]
    file = started["data"]["file"]
    assert started["data"]["bridged_only"] is True
    assert [r["data"]["file"] for r in rows if r["kind"] == "empty_file_deleted"] == [file]
    assert not containers.host_path(file).exists()


def test_consentd_shares_no_volume_with_asterisk(containers: Containers) -> None:
    def mounts(name: str) -> dict[str, str]:
        found = json.loads(podman("inspect", "--format", "{{json .Mounts}}", name).stdout)
        return {m["Destination"]: m["Source"] for m in found}

    consentd, asterisk = mounts(containers.consentd_name), mounts(containers.asterisk_name)
    assert set(consentd) == {"/etc/consentd", "/run/secrets", "/var/lib/consentd/journal"}
    assert not set(consentd.values()) & set(asterisk.values()), (consentd, asterisk)
    groups = podman("exec", containers.consentd_name, "id", "-G").stdout.split()
    assert str(ASTERISK_UID) not in groups, groups


def test_consentd_says_what_it_leaves_to_the_operator(containers: Containers) -> None:
    log = containers.logs(containers.consentd_name)
    started = [json.loads(line) for line in log.splitlines() if '"consentd_started"' in line]
    assert started and started[0]["recording_store"] == "ari", log[-3000:]
    assert started[0]["recording_dir"] == RECORDING_DIR
    for event in (
        "greetings_not_installed",
        "agent_controls_not_installed",
        "fallback_log_not_read",
    ):
        assert f'"{event}"' in log, f"{event} not logged:\n{log[-3000:]}"
    for problem in ("refused_audio_not_deleted", "recording_purge_unconfirmed", "Traceback"):
        assert problem not in log, log[-3000:]


def test_the_agents_codes_the_operator_installed_are_asterisks(containers: Containers) -> None:
    """consentd-features.conf from `consentd features` (the policies' *7 and #8),
    installed on Asterisk's side only, is what Asterisk's feature map holds."""
    shown = podman(
        "exec", containers.asterisk_name, "asterisk", "-rx", "features show"
    ).stdout  # fmt: skip
    pause = [line for line in shown.splitlines() if "consentd_pause" in line]
    resume = [line for line in shown.splitlines() if "consentd_resume" in line]
    assert pause and "*7" in pause[0], shown
    assert resume and "#8" in resume[0], shown

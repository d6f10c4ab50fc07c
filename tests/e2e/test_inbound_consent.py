"""Inbound calls on every policy, with and without key 3, over real SIP.

All calls of the module run at once (one SIPp process each), then every test
checks one call the way an operator would: ``consentd calls --json``, the
ledger rows, and the recording on disk with its duration read from the WAV.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from consentd.sipp import CallPlan, CallResult, place_calls, place_info_call
from tests.e2e.harness import (
    REPO,
    SCENARIO,
    Stack,
    collect_outcomes,
    consentd_calls,
    ledger_rows,
    wav_seconds,
)

#: Asterisk reports a digit when its RFC 2833 end packet arrives: 140 ms into the pcap.
DTMF_END_S = 0.14
TOLERANCE_S = 0.5


@dataclass(frozen=True)
class Case:
    name: str
    plan: Callable[[Stack], CallPlan]
    consent: str
    action: str | None = None
    keypress: str | None = None
    #: Seconds of audio the kept recording must hold, or None for no recording.
    recorded: Callable[[CallPlan, Stack], float] | None = None


def _caller(n: int) -> str:
    return f"+49151000000{n:02d}"


def _whole_call(plan: CallPlan, stack: Stack) -> float:
    return plan.duration_s


def _after_first_key(plan: CallPlan, stack: Stack) -> float:
    return plan.duration_s - plan.wait1_ms / 1000 - DTMF_END_S


def _after_second_key(plan: CallPlan, stack: Stack) -> float:
    return plan.talk_ms / 1000 - DTMF_END_S


def _opt_out_greeting(stack: Stack) -> float:
    return stack.greeting_seconds("en", "opt_out")


def _after_opt_out_greeting(plan: CallPlan, stack: Stack) -> float:
    """An opt-out call held by consentd records from the end of its greeting."""
    return plan.duration_s - _opt_out_greeting(stack)


def _from_greeting_to_first_key(plan: CallPlan, stack: Stack) -> float:
    return plan.wait1_ms / 1000 + DTMF_END_S - _opt_out_greeting(stack)


def _after_greeting_ms(stack: Stack, extra_ms: int) -> int:
    return int(_opt_out_greeting(stack) * 1000) + extra_ms


CASES = [
    Case("always_without_key", lambda s: CallPlan("+4930100001", _caller(1), talk_ms=5000),
         "always", recorded=_whole_call),
    Case("always_with_key_3", lambda s: CallPlan("+4930100001", _caller(2), 2000, "3", talk_ms=3000),
         "always", recorded=_whole_call),
    Case("never_without_key", lambda s: CallPlan("+4930100004", _caller(3), talk_ms=4000), "never"),
    Case("never_with_key_3", lambda s: CallPlan("+4930100004", _caller(4), 1500, "3", talk_ms=2500),
         "never"),
    Case("opt_in_without_key",
         lambda s: CallPlan("+4930100002", _caller(5), talk_ms=int(s.greeting_seconds("de") * 1000) + 2000),
         "opt_in"),
    Case("opt_in_key_3_after_greeting",
         lambda s: CallPlan("+4930100007", _caller(6), int(s.greeting_seconds("en") * 1000) + 1000, "3",
                            talk_ms=3000),
         "opt_in", "caller_opted_in", "3", _after_first_key),
    Case("opt_in_key_3_during_greeting",
         lambda s: CallPlan("+4930100002", _caller(7), 1500, "3", talk_ms=4000),
         "opt_in", "caller_opted_in", "3", _after_first_key),
    Case("opt_in_second_key_3_changes_nothing",
         lambda s: CallPlan("+4930100007", _caller(8), 1500, "3", 2000, "3", talk_ms=2000),
         "opt_in", "caller_opted_in", "3", _after_first_key),
    Case("opt_in_other_key_then_3",
         lambda s: CallPlan("+4930100007", _caller(9), 1000, "1", 1500, "3", talk_ms=3000),
         "opt_in", "caller_opted_in", "3", _after_second_key),
    Case("opt_out_without_key", lambda s: CallPlan("+4930100003", _caller(10), talk_ms=8000),
         "opt_out", recorded=_after_opt_out_greeting),
    Case("opt_out_key_3_deletes_recording",
         lambda s: CallPlan("+4930100003", _caller(11), _after_greeting_ms(s, 2000), "3", talk_ms=2500),
         "opt_out", "caller_opted_out", "3"),
    Case("opt_out_key_3_during_greeting_records_nothing",
         lambda s: CallPlan("+4930100003", _caller(17), 1500, "3", talk_ms=6000),
         "opt_out", "caller_opted_out", "3"),
    Case("opt_out_second_key_3_changes_nothing",
         lambda s: CallPlan("+4930100003", _caller(12), _after_greeting_ms(s, 1000), "3", 1500, "3",
                            talk_ms=1500),
         "opt_out", "caller_opted_out", "3"),
    Case("opt_out_keep_partial",
         lambda s: CallPlan("+4930100006", _caller(13), _after_greeting_ms(s, 2500), "3", talk_ms=2000),
         "opt_out", "caller_opted_out", "3", _from_greeting_to_first_key),
    Case("digital_line_always", lambda s: CallPlan("+4930100005", _caller(14), talk_ms=3000),
         "always", recorded=_whole_call),
    Case("unknown_number_follows_default",
         lambda s: CallPlan("+4930199999", _caller(15), 1000, "3", talk_ms=2000), "never"),
    Case("custom_greeting",
         lambda s: CallPlan("+4930100008", _caller(16), 3000, "3", talk_ms=2000),
         "opt_in", "caller_opted_in", "3", _after_first_key),
]  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    result: CallResult
    details: dict[str, Any]
    ledger: list[dict[str, Any]]

    def kinds(self) -> list[str]:
        return [row["kind"] for row in self.ledger]

    def rows(self, kind: str) -> list[dict[str, Any]]:
        return [row for row in self.ledger if row["kind"] == kind]


@pytest.fixture(scope="module")
def outcomes(stack: Stack) -> dict[str, Outcome]:
    # Every caller streams audio for the whole call, as real phones do: a held
    # call is recorded as the caller's audio arrives (no silence generator).
    plans = [replace(case.plan(stack), speak=True) for case in CASES]
    since = datetime.now(UTC)  # the database outlives test runs
    results = asyncio.run(place_calls(plans, SCENARIO))
    by_caller: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        by_caller = {c["caller"]: c for c in consentd_calls(since=since) if c["ended_at"]}
        if all(p.caller in by_caller for p in plans):
            break
        time.sleep(0.5)
    return {
        case.name: Outcome(
            result,
            by_caller.get(plan.caller, {}),
            ledger_rows(by_caller[plan.caller]["id"]) if plan.caller in by_caller else [],
        )
        for case, plan, result in zip(CASES, plans, results, strict=True)
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_call_details_and_recording_match_the_policy(
    case: Case, outcomes: dict[str, Outcome], stack: Stack
) -> None:
    outcome = outcomes[case.name]
    assert outcome.result.ok, f"SIPp call failed:\n{outcome.result.output[-2000:]}"
    details = outcome.details
    assert details, f"no call details for {outcome.result.plan.caller}"
    plan = outcome.result.plan
    assert details["phone_number"] == plan.did
    assert details["direction"] == "inbound"
    assert details["call_recording_consent"] == case.consent
    assert details["call_recording_consent_action"] == case.action
    assert details["call_recording_consent_keypress"] == case.keypress
    assert details["recording_control_interactions"] == 0
    total = details["recording_time"] + details["not_recording_time"]
    assert abs(total - plan.duration_s) <= 1.5, details

    if case.recorded is None:
        assert details["recordings"] == []
        assert details["recording_time"] == 0
        for row in outcome.rows("recording_started"):
            path = stack.host_path(row["data"]["file"])
            assert not path.exists(), f"{path} should have been deleted"
        return
    expected = case.recorded(plan, stack)
    assert len(details["recordings"]) == 1, details["recordings"]
    path = details["recordings"][0]
    assert path.startswith(str(stack.root)), path
    measured = wav_seconds(stack.host_path(path.removeprefix(str(stack.root))))
    assert abs(measured - expected) <= TOLERANCE_S, (
        f"{path}: WAV holds {measured:.2f} s, expected {expected:.2f} s"
    )
    assert abs(details["recording_time"] - expected) <= 1.0


def test_answered_calls_write_the_ledger_in_order(outcomes: dict[str, Outcome]) -> None:
    kinds = outcomes["opt_in_key_3_after_greeting"].kinds()
    assert kinds == [
        "call_started",
        "greeting_played",
        "greeting_finished",
        "keypress",
        "consent_decided",
        "recording_started",
        "recording_stopped",
        "call_ended",
    ]
    assert [r["seq"] for r in outcomes["opt_in_key_3_after_greeting"].ledger] == list(range(8))


def test_opt_out_key_3_stops_and_deletes_what_was_captured(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["opt_out_key_3_deletes_recording"]
    assert outcome.kinds()[:4] == [
        "call_started", "greeting_played", "greeting_finished", "recording_started",
    ]  # fmt: skip
    stopped = outcome.rows("recording_stopped")
    deleted = outcome.rows("recording_deleted")
    assert [r["data"]["reason"] for r in stopped] == ["caller_opted_out"]
    assert len(deleted) == 1
    assert deleted[0]["data"]["file"] == stopped[0]["data"]["file"]
    assert outcome.details["segments"][0]["kept"] is False


def test_a_3_during_the_greeting_counts_and_cuts_the_greeting_short(
    outcomes: dict[str, Outcome], stack: Stack
) -> None:
    outcome = outcomes["opt_in_key_3_during_greeting"]
    press = outcome.rows("keypress")[0]
    assert press["data"] == {"digit": "3", "duration_ms": press["data"]["duration_ms"],
                             "phase": "greeting", "where": "greeting", "decides": True}  # fmt: skip
    played = outcome.rows("greeting_played")[0]
    finished = outcome.rows("greeting_finished")[0]
    assert played["data"]["language"] == "de"
    heard = (finished["occurred_at"] - played["occurred_at"]).total_seconds()
    assert heard < stack.greeting_seconds("de") - 1.0


@pytest.mark.parametrize(
    "name", ["opt_in_second_key_3_changes_nothing", "opt_out_second_key_3_changes_nothing"]
)
def test_only_the_first_3_decides(name: str, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[name]
    presses = outcome.rows("keypress")
    assert [(p["data"]["digit"], p["data"]["decides"]) for p in presses] == [
        ("3", True),
        ("3", False),
    ]
    assert len(outcome.rows("consent_decided")) == 1
    assert len(outcome.rows("recording_started")) == 1


def test_other_digits_are_logged_and_change_nothing(outcomes: dict[str, Outcome]) -> None:
    presses = outcomes["opt_in_other_key_then_3"].rows("keypress")
    assert [(p["data"]["digit"], p["data"]["decides"]) for p in presses] == [
        ("1", False),
        ("3", True),
    ]
    keys = outcomes["always_with_key_3"].rows("keypress")
    assert [(p["data"]["digit"], p["data"]["decides"]) for p in keys] == [("3", False)]


def test_unknown_number_is_logged_as_following_the_default(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["unknown_number_follows_default"]
    started = outcome.rows("call_started")[0]["data"]
    assert started["policy_source"] == "default"
    assert started["policy"] == "never"
    assert outcome.details["policy_source"] == "default"


def test_digital_line_is_recorded_and_marked_digital(outcomes: dict[str, Outcome]) -> None:
    assert outcomes["digital_line_always"].details["line"] == "digital"


def test_custom_greeting_is_played_and_its_hash_proven(
    outcomes: dict[str, Outcome], stack: Stack
) -> None:
    import hashlib

    played = outcomes["custom_greeting"].rows("greeting_played")[0]["data"]
    assert played["source"] == str(stack.custom_greeting)
    assert played["sha256"] == hashlib.sha256(stack.custom_greeting.read_bytes()).hexdigest()
    finished = outcomes["custom_greeting"].rows("greeting_finished")[0]["data"]
    assert finished["state"] == "done"


def test_greetings_without_a_key_play_to_the_end(outcomes: dict[str, Outcome]) -> None:
    for name, language in (("opt_in_without_key", "de"), ("opt_out_without_key", "en")):
        outcome = outcomes[name]
        assert outcome.rows("greeting_played")[0]["data"]["language"] == language
        assert outcome.rows("greeting_finished")[0]["data"]["state"] == "done"
    assert outcomes["always_without_key"].rows("greeting_played") == []
    assert outcomes["never_without_key"].rows("greeting_played") == []


def test_opt_out_3_during_the_greeting_means_nothing_was_recorded(
    outcomes: dict[str, Outcome],
) -> None:
    outcome = outcomes["opt_out_key_3_during_greeting_records_nothing"]
    assert outcome.rows("consent_decided")[0]["data"]["phase"] == "greeting"
    assert outcome.rows("recording_started") == []
    assert outcome.details["segments"] == []


def test_a_3_sent_as_sip_info_consents_like_an_rtp_one(stack: Stack) -> None:
    """Many desk phones send keys as SIP INFO (application/dtmf-relay), not in the
    RTP stream: Asterisk turns them into the same keypress, and the 3 consents."""
    plan = CallPlan("+4930100007", _caller(90), wait1_ms=1500, key1="3", talk_ms=3000)
    since = datetime.now(UTC)
    caller = asyncio.run(
        place_info_call(
            plan, REPO / "sipp-scenarios" / "info-caller.xml", sip_port=5197, media_port=17970
        )
    )
    outcome = collect_outcomes({"info": (caller, None)}, since)["info"]
    assert caller.ok, caller.output[-2000:]
    assert outcome.details["call_recording_consent_action"] == "caller_opted_in"
    assert outcome.details["call_recording_consent_keypress"] == "3"
    (recording,) = outcome.details["recordings"]
    measured = wav_seconds(stack.host_path(recording.removeprefix(str(stack.root))))
    assert abs(measured - plan.talk_ms / 1000) <= 0.5, measured  # from the key to the hang-up

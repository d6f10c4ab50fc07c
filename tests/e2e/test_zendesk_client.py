"""A real Zendesk client reads the export after real calls.

zenpy, the Zendesk API library from PyPI, unchanged, is pointed at the stack's
daemon by its own settings only: ``ZENPY_FORCE_NETLOC`` and ``ZENPY_FORCE_SCHEME``
(zenpy's "custom domains") and an OAuth token, which zenpy sends as
``Authorization: Bearer``: the stack's ``api_token``. One call per policy goes
through Asterisk over SIPp; then ``read_calls`` (the README's example, verbatim)
reads the incremental calls export until ``end_of_stream`` and every call must
come back once, with the consent fields of what the caller did.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from zenpy import Zenpy

from consentd.sipp import CallPlan, place_calls
from tests.e2e.harness import SCENARIO, Stack, collect_outcomes, local_stack

pytestmark = pytest.mark.e2e

#: Asterisk reports a digit when its RFC 2833 end packet arrives: 140 ms into the pcap.
DTMF_END_S = 0.14


# The README's example ("An existing Zendesk reporting script"), verbatim. zenpy follows
# next_page by itself but stops early when a page's end_time is within 5 minutes of now
# (the hosted API's rule for polling), so the loop asks again from end_time until
# consentd says end_of_stream.
def read_calls(zenpy_client, start_time, per_page=None):
    calls = []
    while True:
        page = zenpy_client.talk.calls.incremental(start_time=start_time, per_page=per_page)
        calls += list(page)
        start_time = page.end_time
        if page.end_of_stream:
            return calls, start_time


@dataclass(frozen=True)
class Case:
    plan: CallPlan
    consent: str
    action: str | None = None
    keypress: str | None = None
    #: Seconds the kept recording holds (0: nothing kept).
    recorded_s: float = 0.0


def _cases(stack: Stack) -> dict[str, Case]:
    greeting_ms = int(stack.greeting_seconds("en", "opt_out") * 1000)
    always = CallPlan("+4930100001", "+4915122200001", talk_ms=3000)
    opt_in_3 = CallPlan("+4930100007", "+4915122200002", 1000, "3", talk_ms=2500)
    return {
        "always": Case(always, "always", recorded_s=always.duration_s),
        "opt_in_with_3": Case(
            opt_in_3, "opt_in", "caller_opted_in", "3",
            recorded_s=opt_in_3.duration_s - opt_in_3.wait1_ms / 1000 - DTMF_END_S,
        ),
        "opt_in_without_key": Case(CallPlan("+4930100007", "+4915122200003", talk_ms=3000),
                                   "opt_in"),
        "opt_out_with_3": Case(
            CallPlan("+4930100003", "+4915122200004", greeting_ms + 1000, "3", talk_ms=1500),
            "opt_out", "caller_opted_out", "3",
        ),
        "never": Case(CallPlan("+4930100004", "+4915122200005", talk_ms=3000), "never"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def placed(stack: Stack) -> tuple[datetime, dict[str, Case], dict[str, Any]]:
    """The calls, all at once, ended in the ledger; with consentd's own details of each."""
    cases = _cases(stack)
    since = datetime.now(UTC)  # the database outlives test runs
    plans = [replace(case.plan, speak=True) for case in cases.values()]
    results = asyncio.run(place_calls(plans, SCENARIO, first_sip_port=5400, first_media_port=18400))
    for result in results:
        assert result.ok, f"SIPp call failed:\n{result.output[-2000:]}"
    outcomes = collect_outcomes({r.plan.caller: (r, None) for r in results}, since)
    details = {caller: o.details for caller, o in outcomes.items()}
    for case in cases.values():
        assert details[case.plan.caller], f"no call details for {case.plan.caller}"
    return since, cases, details


@pytest.fixture
def zenpy_client(monkeypatch: pytest.MonkeyPatch) -> Any:
    """zenpy, set up as the README says: its own settings, the stack's API token."""
    stack = local_stack()
    monkeypatch.setenv("ZENPY_FORCE_NETLOC", stack.http.removeprefix("http://"))
    monkeypatch.setenv("ZENPY_FORCE_SCHEME", "http")
    monkeypatch.setenv("CONSENTD_API_TOKEN", stack.api_token)
    return Zenpy(subdomain="consentd", oauth_token=os.environ["CONSENTD_API_TOKEN"])


def _ours(calls: list[Any], cases: dict[str, Case]) -> dict[str, list[Any]]:
    callers = {case.plan.caller for case in cases.values()}
    by_caller: dict[str, list[Any]] = {}
    for call in calls:
        caller = call.to_dict().get("caller")
        if caller in callers:
            by_caller.setdefault(caller, []).append(call)
    return by_caller


def _read_until_all_there(
    zenpy_client: Any, since: datetime, cases: dict[str, Case], per_page: int | None
) -> tuple[list[Any], dict[str, list[Any]], int]:
    """The export serves whole seconds only, after the call's last row is stored: the
    calls appear about a second after they end. Each try is a full read from ``since``."""
    deadline = time.monotonic() + 10
    while True:
        calls, end_time = read_calls(zenpy_client, since, per_page)
        ours = _ours(calls, cases)
        if len(ours) == len(cases) or time.monotonic() > deadline:
            return calls, ours, end_time
        time.sleep(0.5)


@pytest.mark.parametrize("per_page", [None, 2])
def test_zenpy_reads_every_call_with_its_consent_fields(
    placed: tuple[datetime, dict[str, Case], dict[str, Any]],
    zenpy_client: Any,
    per_page: int | None,
) -> None:
    since, cases, details = placed
    started = time.monotonic()
    calls, ours, end_time = _read_until_all_there(zenpy_client, since, cases, per_page)
    assert time.monotonic() - started < 15  # the loop ends: end_of_stream

    ids = [call.id for call in calls]
    assert len(ids) == len(set(ids)), "a call came twice"
    if per_page is not None:
        # Five calls ending in more than one second cannot share a page of 2: the
        # reader went through several pages (each ends on a whole second).
        assert len({call.updated_at for found in ours.values() for call in found}) > 1
    assert isinstance(end_time, int) and end_time >= int(since.timestamp())
    for name, case in cases.items():
        plan = case.plan
        got = ours.get(plan.caller, [])
        assert len(got) == 1, f"{name}: {len(got)} calls from {plan.caller} in the export"
        [call] = got
        raw = call.to_dict()  # everything consentd sent, as zenpy holds it
        # The hosted product's fields, as attributes of zenpy's Call.
        assert (
            call.call_recording_consent,
            call.call_recording_consent_action,
            call.call_recording_consent_keypress,
        ) == (case.consent, case.action, case.keypress), name
        assert call.direction == "inbound"
        assert raw["phone_number"] == plan.did  # zenpy's phone_number is a look-up
        assert call.recording_control_interactions == 0
        assert isinstance(call.id, int)
        assert since.replace(microsecond=0) <= call.created <= call.updated
        assert call.agent_id is None and call.agent is None and raw["agent_name"] is None
        assert abs(call.duration - plan.duration_s) <= 1.5, (name, call.duration)
        assert abs(call.recording_time - case.recorded_s) <= 1.0, (name, call.recording_time)
        total = call.recording_time + call.not_recording_time
        assert abs(total - plan.duration_s) <= 1.5, (name, total)
        # The same call as consentd's own details tell it.
        mine = details[plan.caller]
        assert raw["call_id"] == mine["id"]
        assert (raw["recording_time"], raw["not_recording_time"]) == (
            mine["recording_time"],
            mine["not_recording_time"],
        )
        assert raw["consentd_unavailable"] is False

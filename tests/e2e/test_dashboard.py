"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against the
running stack, while real SIPp calls run and after they ended.

The page is opened and given the token before the calls start, so their rows must
arrive by the live feed (no reload) and show "in progress" first. Then: the rows
against the calls placed, the recorded spans of each call's timeline, measured in
pixels, against the ledger's rows in PostgreSQL, the filters, and the agents' table.
A screenshot goes to .state/artifacts/dashboard.png.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Request, sync_playwright

from consentd.sipp import AgentResult, CallPlan, CallResult, place_calls, run_agent
from tests.e2e.harness import REPO, SCENARIO, Stack, ledger_rows, local_stack

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / ".state" / "artifacts"
AGENT_SCENARIO = REPO / "sipp-scenarios" / "agent.xml"
#: A pixel of the 1100-pixel-wide lane is at most 0.02 s of these calls; one second is
#: 50 pixels and more, so 0.15 s tells a span off by a second (or a rounding) at once.
TOLERANCE_S = 0.15


@dataclass(frozen=True)
class Case:
    plan: CallPlan
    outcome: str
    agent: str | None = None


def cases(stack: Stack) -> dict[str, Case]:
    # Callers of this run only (the database keeps earlier runs' calls): the number
    # filter on the prefix shows exactly these.
    prefix = f"+4915108{int(time.time()) % 10000:04d}"
    opt_out_ms = int(stack.greeting_seconds("en", "opt_out") * 1000) + 800
    return {
        "always": Case(CallPlan("+4930100001", f"{prefix}1", talk_ms=7000, speak=True),
                       "no_decision"),
        "opt_in": Case(CallPlan("+4930100015", f"{prefix}2", 2500, "3", talk_ms=5000,
                                speak=True), "caller_opted_in"),
        "opt_out": Case(CallPlan("+4930100003", f"{prefix}3", opt_out_ms, "3", talk_ms=2000,
                                 speak=True), "caller_opted_out"),
        "never": Case(CallPlan("+4930100004", f"{prefix}4", talk_ms=4000, speak=True),
                      "no_decision"),
        "queue": Case(CallPlan("+4930100012", f"{prefix}5", talk_ms=9000, speak=True),
                      "no_decision", agent="agent1"),
    }  # fmt: skip


async def _place(plans: list[CallPlan]) -> tuple[list[CallResult], AgentResult]:
    agent = asyncio.create_task(
        run_agent(AGENT_SCENARIO, port=5071, answer_ms=1500, media_port=16700)
    )
    await asyncio.sleep(0.3)  # listening before Asterisk rings it
    results = await place_calls(plans, SCENARIO, first_sip_port=5180, first_media_port=18200)
    return results, await agent


@pytest.fixture
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (Debian package chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


def rows(page: Page) -> list[dict[str, str]]:
    result: list[dict[str, str]] = page.eval_on_selector_all(
        "#calls tbody tr",
        "rows => rows.map(r => ({...r.dataset, status: r.querySelector('.status').textContent,"
        " agent: r.querySelector('.agent').textContent,"
        " recorded: r.querySelector('.recorded').textContent}))",
    )
    return result


def wait_rows(
    page: Page, good: Callable[[list[dict[str, str]]], bool], what: str, timeout: float = 10
) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    seen = rows(page)
    while not good(seen):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: the dashboard shows {seen}; live indicator"
                f" {page.get_attribute('#live', 'class')!r}, error line"
                f" {page.text_content('#error')!r}"
            )
        page.wait_for_timeout(100)
        seen = rows(page)
    return seen


def recorded_in_ledger(call_id: str) -> list[tuple[float, float]]:
    """The kept recorded spans, in seconds from the call's start, read off its ledger rows:
    each segment from its start to its stop (or the hangup), not deleted; a bridged-only
    (MixMonitor b) segment only while the caller talked to the agent."""
    # Playwright's sync API keeps an event loop running in this thread: asyncio.run elsewhere.
    with ThreadPoolExecutor(1) as pool:
        ledger = pool.submit(ledger_rows, call_id).result(timeout=30)
    first = {r["kind"]: r["occurred_at"] for r in reversed(ledger)}
    start: datetime = first["call_started"]
    ended: datetime = first["call_ended"]
    assert not {"recording_paused", "voicemail_started"} & first.keys()  # not in these calls
    deleted = {r["data"]["segment"] for r in ledger if r["kind"] == "recording_deleted"}
    spans = []
    for row in ledger:
        if row["kind"] != "recording_started" or row["data"]["segment"] in deleted:
            continue
        segment = row["data"]["segment"]
        stop = next(
            (r["occurred_at"] for r in ledger
             if r["kind"] == "recording_stopped" and r["data"].get("segment") == segment),
            ended,
        )  # fmt: skip
        begin, stop = row["occurred_at"], min(stop, ended)  # nothing is recorded after hangup
        if row["data"].get("bridged_only"):
            begin = max(begin, first["agent_connected"])
            stop = min(stop, first.get("agent_completed", ended))
        if stop > begin:
            spans.append(((begin - start).total_seconds(), (stop - start).total_seconds()))
    return sorted(spans)


def drawn(page: Page, call_id: str) -> dict[str, Any]:
    """The detail's timeline as drawn: the recording lane's box and each span's box."""
    page.locator(f'#calls tbody tr[data-call-id="{call_id}"]').click()
    page.wait_for_function(
        "id => document.getElementById('detail-facts').textContent.includes(id)"
        " && document.querySelector('#timeline .lane[data-lane=recording]')",
        arg=call_id,
    )
    result: dict[str, Any] = page.evaluate(
        """() => {
          const lane = document.querySelector('#timeline .lane[data-lane=recording]');
          const box = lane.getBoundingClientRect();
          return {
            length: parseFloat(document.getElementById('timeline').dataset.lengthS),
            lanes: [...document.querySelectorAll('#timeline .lane')].map(l => l.dataset.lane),
            width: box.width,
            spans: [...lane.querySelectorAll('.span')].map(s => {
              const r = s.getBoundingClientRect();
              return {kind: s.dataset.kind, left: r.left - box.left, width: r.width,
                      colour: getComputedStyle(s).backgroundColor};
            }),
          };
        }"""
    )
    return result


def test_the_dashboard_shows_live_calls_their_timelines_and_filters(
    stack: Stack, browser: Browser
) -> None:
    endpoints = local_stack()
    known = cases(stack)
    prefix = known["always"].plan.caller[:-1]
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))

    page.goto(endpoints.http + "/")
    page.fill("#token", "not-the-token")
    page.press("#token", "Enter")
    page.wait_for_selector("#login-error:text('refused')")
    page.fill("#token", endpoints.api_token)
    page.press("#token", "Enter")
    page.wait_for_selector("#board:not([hidden])")
    page.wait_for_selector("#live.on")
    page.fill("#f-number", prefix)
    wait_rows(page, lambda seen: seen == [], "no call of this run before it starts")

    with ThreadPoolExecutor(1) as pool:
        placed: Future[tuple[list[CallResult], AgentResult]] = pool.submit(
            asyncio.run, _place([c.plan for c in known.values()])
        )
        # The rows arrive by the live feed while the calls run.
        wait_rows(page, lambda seen: any(r["status"] == "in progress" for r in seen),
                  "a call in progress")  # fmt: skip
        results, agent = placed.result(timeout=60)
    for result in results:
        assert result.ok, result.output[-1500:]
    assert agent.ok, agent.output[-1500:]
    ended = wait_rows(
        page, lambda seen: len(seen) == len(known) and
        all(r["status"] != "in progress" for r in seen), "every call ended",
    )  # fmt: skip

    by_caller = {r["caller"]: r for r in ended}
    assert set(by_caller) == {c.plan.caller for c in known.values()}
    for name, case in known.items():
        row = by_caller[case.plan.caller]
        assert row["outcome"] == case.outcome, (name, row)
        assert row["agent"] == (case.agent or ""), (name, row)

    # Each call's recorded spans, as wide and as placed as the ledger says.
    colours = {}
    for name, case in known.items():
        call_id = by_caller[case.plan.caller]["callId"]
        expected = recorded_in_ledger(call_id)
        timeline = drawn(page, call_id)
        assert set(timeline["lanes"]) <= {"call", "recording"}
        scale = timeline["length"] / timeline["width"]
        recorded = [s for s in timeline["spans"] if s["kind"] == "recorded"]
        got = [(s["left"] * scale, (s["left"] + s["width"]) * scale) for s in recorded]
        assert len(got) == len(expected), (name, got, expected)
        for (begin, stop), (want_begin, want_stop) in zip(got, expected, strict=True):
            assert abs(begin - want_begin) <= TOLERANCE_S, (name, got, expected)
            assert abs(stop - want_stop) <= TOLERANCE_S, (name, got, expected)
        # The lane is covered end to end, recorded or not.
        covered = sum(s["width"] for s in timeline["spans"]) * scale
        assert abs(covered - timeline["length"]) <= TOLERANCE_S, (name, timeline)
        colours.update({s["kind"]: s["colour"] for s in timeline["spans"]})
        if name == "queue":
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert colours.keys() >= {"recorded", "not_recorded"}
    assert len(set(colours.values())) == len(colours), colours  # distinct colours
    # opt_in: recorded from the 3 on; opt_out with a 3: nothing kept; never: nothing.
    assert recorded_in_ledger(by_caller[known["opt_in"].plan.caller]["callId"])
    assert not recorded_in_ledger(by_caller[known["opt_out"].plan.caller]["callId"])

    # The filters: outcome, agent, and a whole number.
    page.select_option("#f-outcome", "caller_opted_in")
    wait_rows(page, lambda seen: [r["caller"] for r in seen] == [known["opt_in"].plan.caller],
              "outcome opted in")  # fmt: skip
    page.select_option("#f-outcome", "no_decision")
    wait_rows(page, lambda seen: len(seen) == 3 and
              all(r["outcome"] == "no_decision" for r in seen), "outcome no decision")  # fmt: skip
    page.fill("#f-agent", "agent1")
    wait_rows(page, lambda seen: [r["caller"] for r in seen] == [known["queue"].plan.caller],
              "agent1, no decision")  # fmt: skip
    page.select_option("#f-outcome", "")
    page.fill("#f-agent", "")
    page.fill("#f-number", known["never"].plan.caller)
    wait_rows(page, lambda seen: [r["caller"] for r in seen] == [known["never"].plan.caller],
              "one caller's number")  # fmt: skip
    page.fill("#f-number", "+4930100001")  # a DID: of this run's calls, only the one to it
    ours = {c.plan.caller for c in known.values()}
    only_always = {known["always"].plan.caller}
    wait_rows(page, lambda seen: {r["caller"] for r in seen} & ours == only_always, "a DID")

    # The agents' table is the agent report; it loads on its own, at most every 15 s.
    deadline = time.monotonic() + 30
    while True:
        agents = page.eval_on_selector_all(
            "#agents tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
        )
        agent1 = next((row for row in agents if row[0] == "agent1"), None)
        if agent1 is not None and int(agent1[1]) >= 1:
            break  # answered: this run's queue call at least
        assert time.monotonic() < deadline, f"agent1 answered nothing: {agents}"
        page.wait_for_timeout(200)

    # The token went only in the Authorization header, never in an address.
    api_calls = [r for r in requests if "/api/" in r.url]
    assert api_calls and {r.all_headers().get("authorization") for r in api_calls} == {
        f"Bearer {endpoints.api_token}", "Bearer not-the-token"}  # fmt: skip
    assert not any(endpoints.api_token in r.url for r in requests)
    assert errors == []
    page.close()


def _status(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_stacks_daemon_serves_the_page_openly_and_its_data_only_with_the_token(
    stack: Stack,
) -> None:
    endpoints = local_stack()
    for path in ("/", "/dashboard/app.js", "/dashboard/app.css"):
        assert _status(endpoints.http + path) == 200, path
    for path in ("/api/calls", "/api/events", "/calls", "/api/reports/agents", "/dashboard/x"):
        assert _status(endpoints.http + path) == 401, path
        assert _status(endpoints.http + path, "wrong") == 401, path
    assert _status(endpoints.http + "/api/calls?limit=1", endpoints.api_token) == 200

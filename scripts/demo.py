"""make demo: bring the stack up, place one real SIP call per policy (with and
without key 3), print the call details, and bring the stack down again.

make demo KEEP=1 (``--keep``): leave the stack up afterwards and say where the
dashboard is and where its token is kept (never the token itself)."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import wave
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from consentd.cli import render_table
from consentd.local_stack import LocalStack, stack_file
from consentd.sipp import AgentResult, CallPlan, CallResult, place_calls, run_agent

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / ".cache" / "asterisk-root"
POLICIES = REPO / "examples" / "policies.yaml"


def greeting_ms(language: str, kind: str) -> int:
    path = ROOT / f"var/lib/asterisk/sounds/{language}/consentd/{kind}.wav"
    with wave.open(str(path), "rb") as wav:
        return int(1000 * wav.getnframes() / wav.getframerate())


def plans() -> list[tuple[CallPlan, str, str | None]]:
    """(call, policy expected, consent action expected)."""
    opt_in = greeting_ms("de", "opt_in") + 1000
    opt_out = greeting_ms("en", "opt_out") + 1000
    return [
        (CallPlan("+4930100001", "+4915100000101", talk_ms=4000), "always", None),
        (CallPlan("+4930100001", "+4915100000102", 2000, "3", talk_ms=2000), "always", None),
        (CallPlan("+4930100002", "+4915100000103", talk_ms=opt_in + 2000), "opt_in", None),
        (
            CallPlan("+4930100002", "+4915100000104", opt_in, "3", talk_ms=3000),
            "opt_in",
            "caller_opted_in",
        ),
        (CallPlan("+4930100003", "+4915100000105", talk_ms=opt_out + 2000), "opt_out", None),
        (
            CallPlan("+4930100003", "+4915100000106", opt_out, "3", talk_ms=3000),
            "opt_out",
            "caller_opted_out",
        ),
        (CallPlan("+4930100004", "+4915100000107", talk_ms=3000), "never", None),
        (CallPlan("+4930100004", "+4915100000108", 1500, "3", talk_ms=1500), "never", None),
        (CallPlan("+4930100005", "+4915100000109", talk_ms=3000), "always", None),
    ]


def routed_plan() -> CallPlan:
    """+4930100010 routes to the group "support": greetings, queue, agent1 answers."""
    queued = greeting_ms("en", "available") + greeting_ms("en", "opt_in") + 1000
    return CallPlan("+4930100010", "+4915100000110", queued, "3", talk_ms=6000, speak=True)


def ivr_plan() -> CallPlan:
    """+4930100021 (opt_in) starts in menu "main": 3 while the prompt plays is consent
    (never a menu choice), then 2 after the prompt picks voicemail."""
    prompt = greeting_ms("en", "ivr")
    return CallPlan(
        "+4930100021", "+4915100000111", 1500, "3", prompt, "2", talk_ms=6000, speak=True
    )


async def calls_with_agent(plans: list[CallPlan]) -> tuple[list[CallResult], AgentResult]:
    """All calls at once, and agent1's phone (SIPp on 127.0.0.1:5071) answering after 2 s."""
    agent = asyncio.create_task(
        run_agent(
            REPO / "sipp-scenarios" / "agent.xml", port=5071, answer_ms=2000, media_port=16900
        )
    )
    await asyncio.sleep(0.3)
    results = await place_calls(plans, REPO / "sipp-scenarios" / "caller.xml")
    return results, await agent


def stack(*args: str) -> None:
    subprocess.run(
        [str(REPO / "scripts" / "stack.sh"), *args], check=True, stdin=subprocess.DEVNULL
    )


def fetch_calls() -> list[dict[str, object]]:
    import json

    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "consentd"), "calls", "--json", "--limit", "100"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    calls: list[dict[str, object]] = json.loads(out)
    return calls


def dashboard_notice() -> str:
    """Where the dashboard is, and where its token is: the token itself is never printed."""
    stack_json = stack_file()
    return (
        f"==> the stack stays up (make down stops it)\n"
        f"    dashboard: {LocalStack.load().http}/\n"
        f"    its token: api_token in {stack_json} (jq -r .api_token {stack_json})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    keep = parser.parse_args(argv).keep
    started = time.monotonic()
    stack("up", str(POLICIES))
    try:
        group_call = routed_plan()
        # Every caller streams audio for the whole call, as a real phone does.
        cases = [(replace(p, speak=True), policy, action) for p, policy, action in plans()]
        cases.append((group_call, "opt_in", "caller_opted_in"))
        menu_call = ivr_plan()
        cases.append((menu_call, "opt_in", "caller_opted_in"))
        since = datetime.now(UTC).isoformat()  # the database keeps earlier demos' calls
        longest = max(p.duration_s for p, _, _ in cases)
        print(f"==> placing {len(cases)} SIP calls at once (about {longest:.0f} s) ...", flush=True)
        results, agent = asyncio.run(calls_with_agent([p for p, _, _ in cases]))
        callers = {p.caller for p, _, _ in cases}
        for _ in range(30):
            calls = [
                c
                for c in fetch_calls()
                if c["caller"] in callers and c["ended_at"] and str(c["started_at"]) >= since
            ]
            if len(calls) == len(cases):
                break
            time.sleep(0.5)
        print(render_table(calls))
        by_caller = {c["caller"]: c for c in calls}
        problems = [f"SIPp call from {r.plan.caller} failed" for r in results if not r.ok]
        if not agent.ok:
            problems.append(f"SIPp agent failed: {agent.output[-500:]}")
        routed = by_caller.get(group_call.caller)
        if routed is not None and routed.get("agent") != "agent1":
            problems.append(f"group call was not answered by agent1: {routed}")
        menu = by_caller.get(menu_call.caller)
        if menu is not None and not menu.get("voicemail"):
            problems.append(f"IVR call did not reach voicemail with key 2: {menu}")
        for plan, policy, action in cases:
            got = by_caller.get(plan.caller)
            if got is None:
                problems.append(f"no call details for {plan.caller}")
            elif (got["call_recording_consent"], got["call_recording_consent_action"]) != (
                policy,
                action,
            ):
                problems.append(f"{plan.caller}: expected {policy}/{action}, got {got}")
        for problem in problems:
            print(f"demo: {problem}", file=sys.stderr)
        verdict = "as expected" if not problems else f"{len(problems)} problem(s)"
        print(f"==> {len(cases)} calls, {verdict}, in {time.monotonic() - started:.0f} s")
        if keep:
            print(dashboard_notice())
        return 1 if problems else 0
    finally:
        if not keep:
            stack("down")


if __name__ == "__main__":
    sys.exit(main())

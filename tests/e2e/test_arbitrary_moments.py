"""Callers who press keys at arbitrary moments, over real SIP, all at once.

The other e2e modules place each key at a chosen moment. Real callers press
right at the answer, on the greeting's last syllable, twice in a row, another
key first, or just before they hang up. Here every caller streams audio for
the whole call and draws its keys, their moments and its hang-up at random
(the seed is in every failure message; ``CONSENTD_MOMENTS_SEED`` replays one),
and every call is checked the way an operator would check it:

- the call is in ``consentd calls``, ended, with its number's policy;
- consent was decided exactly when the caller pressed 3 with time to spare
  (and never without a 3), withdrawn by a second 3 where the number allows it;
- what is kept matches: a recording only where the policy and the decision
  want one, its WAV as long as the span the caller allowed, and no file left
  of any recording the details do not list;
- recorded and unrecorded seconds add up to the call.

A press within ``UNSURE_MS`` of the hang-up may or may not reach consentd
before the hangup does: only the safety checks apply to such a call. So do
they to eight more callers who key through the IVR menu, whose routes decide
what a 3 then means: no decision without a 3, no file unlisted, and without
consent nothing kept but their own voicemail (which found a hang-up during
the voicemail beep listed as a message Asterisk never wrote). Many of them
wait long enough for the PBX to hang up first: the menu's timeouts, its last
miss after two wrong keys, the nested menu's timeout. Callers of the hand-off
number hang up while the PBX's own dialplan rings the desk phone.

They call into a busy PBX: a load of opt-in callers (tone, key 3 at 2 s, 9 s
calls, 10 a second: about 90 at once; ``CONSENTD_MOMENTS_LOAD_CPS``, 0 for
none) runs beside them. (At 20 a second this 2-core machine ran out of CPU on
some days, and SIPp and Asterisk then ran up to 1.5 s late: the timing checks
below measured the machine, not consentd.) Only under load did a caller who hung up during the
opt-out greeting get a recording started on the dying channel (the ledger then
named a file that never existed).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench.sipp_load import LoadPlan, run_load
from consentd.sipp import CallPlan, CallResult, place_calls
from consentd.sipp_media import MediaPlan, pcap_file
from tests.e2e.harness import (
    SCENARIO,
    SHORT_GREETING_S,
    Stack,
    consentd_calls,
    ledger_rows,
    wav_seconds,
)

pytestmark = pytest.mark.e2e

#: Asterisk reports a digit when its RFC 2833 end packet arrives: 140 ms into the pcap.
DTMF_END_S = 0.14
TOLERANCE_S = 0.5
#: A press this close to the hang-up may arrive after it.
UNSURE_MS = 700
CALLS = 42
SEED = int(os.environ.get("CONSENTD_MOMENTS_SEED") or time.time_ns() % 1_000_000)
LOAD_CPS = float(os.environ.get("CONSENTD_MOMENTS_LOAD_CPS") or 10)

#: (number, what it does): the policies of tests/e2e/harness.py's POLICIES.
NUMBERS = [
    ("+4930100001", "always"),
    ("+4930100002", "opt_in"),  # German greeting, 6.4 s
    ("+4930100007", "opt_in"),
    ("+4930100003", "opt_out"),
    ("+4930100006", "opt_out_keep"),  # keep_partial_on_opt_out: the audio before the 3 stays
    ("+4930100004", "never"),
    ("+4930100015", "withdrawable"),  # opt_in, a second 3 withdraws; 1 s greeting
    # opt_out, 1 s greeting, then handed to the PBX's dialplan (pbx-extensions 200),
    # whose Dial() rings a desk phone nobody answers for 30 s: a 3 still decides.
    ("+4930100021", "handoff_opt_out"),
]
OTHER_KEYS = "0124567"
#: The IVR number (opt_in; menu main: 1 the support group, 2 voicemail, 3 consent,
#: 4 the hand-off, 9 the nested menu; 2 s timeout, one retry, then the PBX hangs up).
#: Its callers stay up to 9 s: long enough for the PBX to end many of the calls.
IVR, IVR_CALLS, IVR_LONGEST_MS = "+4930100020", 8, 9000
IVR_KEYS, IVR_INVALID = "12349", "5678"
#: "never", routed to support-short: nobody answers in 4 s, so the caller is asked
#: for a message. Its callers hang up anywhere from the greeting to well into the
#: message: before the beep, during it, or after some words.
VOICEMAIL, VOICEMAIL_CALLS = "+4930100014", 6
#: A caller who talked this long after the recording began surely left a message.
SURELY_A_MESSAGE_S = 1.5


@dataclass(frozen=True)
class Draw:
    kind: str
    plan: CallPlan
    #: Drawn so that the PBX hangs up well before the caller would.
    pbx_ends: bool = False

    def presses(self) -> list[tuple[int, str]]:
        return self.plan.presses()

    @property
    def hangup_ms(self) -> int:
        return self.plan.hangup_ms

    def threes(self) -> list[int]:
        return [at for at, key in self.presses() if key == "3"]

    def unsure(self) -> bool:
        return any(self.hangup_ms - at < UNSURE_MS for at, _ in self.presses())


def _moment(rng: random.Random, greeting_ms: int) -> int:
    """Mostly anywhere in the first seven seconds; often right at the answer or
    around the greeting's end, where the call changes state."""
    edge = rng.random()
    if edge < 0.2:
        return rng.choice([0, 20, 60, 120, 250])
    if edge < 0.4:
        return max(0, greeting_ms + rng.randint(-300, 300))
    return rng.randint(0, 7000)


def draw_calls(stack: Stack, seed: int, count: int) -> list[Draw]:
    rng = random.Random(seed)
    greetings = {
        "+4930100002": stack.greeting_seconds("de"),
        "+4930100007": stack.greeting_seconds("en"),
        "+4930100003": stack.greeting_seconds("en", "opt_out"),
        "+4930100006": stack.greeting_seconds("en", "opt_out"),
        "+4930100015": SHORT_GREETING_S,
        "+4930100021": SHORT_GREETING_S,
    }
    draws = []
    for n in range(count):
        did, kind = NUMBERS[n % len(NUMBERS)]
        greeting_ms = int(greetings.get(did, 0.0) * 1000)
        key1 = rng.choices(["3", rng.choice(OTHER_KEYS), "none"], [5, 2, 3])[0]
        key2 = (
            "none"
            if key1 == "none"
            else rng.choices(["3", rng.choice(OTHER_KEYS), "none"], [4, 1, 5])[0]
        )
        wait1 = _moment(rng, greeting_ms) if key1 != "none" else 0
        wait2 = rng.randint(300, 3000) if key2 != "none" else 0
        talk = rng.choice([rng.randint(200, 1000), rng.randint(1000, 5000)])
        caller = f"+491770{seed % 1000:03d}{n:03d}"
        plan = CallPlan(did, caller, wait1, key1, wait2, key2, talk_ms=talk, speak=True)
        draws.append(Draw(kind, plan))
    # Two IVR callers always outstay the menu: one presses nothing (the PBX hangs
    # up after the retry, about 7 s in), one presses 9 (the nested menu's single
    # 2 s timeout ends the call about 3 s later).
    for n, key in ((count, "none"), (count + 1, "9")):
        wait1 = rng.randint(0, 1500) if key != "none" else 0
        caller = f"+491770{seed % 1000:03d}{n:03d}"
        plan = CallPlan(IVR, caller, wait1, key, talk_ms=IVR_LONGEST_MS - wait1, speak=True)
        draws.append(Draw("ivr", plan, pbx_ends=True))
    for n in range(count + 2, count + IVR_CALLS):
        key1 = rng.choice([*IVR_KEYS, *IVR_INVALID, "3", "none"])
        key2 = "none" if key1 == "none" else rng.choice([*IVR_KEYS, *IVR_INVALID, "none"])
        wait1 = rng.choice([0, 60, rng.randint(0, 4000)]) if key1 != "none" else 0
        wait2 = rng.randint(300, 3000) if key2 != "none" else 0
        talk = rng.randint(200, max(200, IVR_LONGEST_MS - wait1 - wait2))
        caller = f"+491770{seed % 1000:03d}{n:03d}"
        plan = CallPlan(IVR, caller, wait1, key1, wait2, key2, talk_ms=talk, speak=True)
        draws.append(Draw("ivr", plan))
    for n in range(count + IVR_CALLS, count + IVR_CALLS + VOICEMAIL_CALLS):
        key1 = rng.choice(["3", rng.choice(OTHER_KEYS), "none"])
        wait1 = rng.randint(0, 8000) if key1 != "none" else 0
        talk = max(200, rng.randint(1000, 12000) - wait1)
        caller = f"+491770{seed % 1000:03d}{n:03d}"
        plan = CallPlan(VOICEMAIL, caller, wait1, key1, talk_ms=talk, speak=True)
        draws.append(Draw("voicemail", plan))
    return draws


@dataclass(frozen=True)
class Outcome:
    draw: Draw
    result: CallResult
    details: dict[str, Any]
    ledger: list[dict[str, Any]]

    def describe(self) -> str:
        plan = self.draw.plan
        return (
            f"seed {SEED} ({self.draw.kind} {plan.did}, caller {plan.caller}): presses "
            f"{self.draw.presses()} ms after the answer, hang-up at {self.draw.hangup_ms} ms; "
            f"SIPp ran {self.result.finished - self.result.started:.2f} s; "
            f"details {self.details}; ledger {[r['kind'] for r in self.ledger]}"
        )


@pytest.fixture(scope="module")
def outcomes(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    draws = draw_calls(stack, SEED, CALLS)  # and IVR_CALLS and VOICEMAIL_CALLS more
    since = datetime.now(UTC)
    results = asyncio.run(
        _placed_with_load([d.plan for d in draws], tmp_path_factory.mktemp("load"))
    )
    wanted = {d.plan.caller for d in draws}
    by_caller: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        calls = consentd_calls(limit=200 + int(LOAD_CPS * 25), since=since)
        by_caller = {c["caller"]: c for c in calls if c["ended_at"]}
        if wanted <= by_caller.keys():
            break
        time.sleep(0.5)
    return [
        Outcome(
            draw,
            result,
            by_caller.get(draw.plan.caller, {}),
            ledger_rows(by_caller[draw.plan.caller]["id"]) if draw.plan.caller in by_caller else [],
        )
        for draw, result in zip(draws, results, strict=True)
    ]


async def _placed_with_load(plans: list[CallPlan], workdir: Path) -> list[CallResult]:
    if not LOAD_CPS:
        return await place_calls(plans, SCENARIO, first_sip_port=5300)
    media = MediaPlan(9000, 2000)
    load = LoadPlan("+4930100007", LOAD_CPS, int(LOAD_CPS * 25), pcap_file(media, workdir), 0, 9000)
    loading = asyncio.create_task(run_load(load, workdir, port=5700))
    await asyncio.sleep(8)  # the PBX busy before the first caller dials
    results = await place_calls(plans, SCENARIO, first_sip_port=5300)
    await loading
    return results


def _expected_action(draw: Draw) -> str | None:
    """The decision the caller's keys make; the draw is not unsure."""
    threes = draw.threes()
    if draw.kind in ("opt_in", "withdrawable") and threes:
        return (
            "caller_withdrew"
            if draw.kind == "withdrawable" and len(threes) > 1
            else "caller_opted_in"
        )
    if draw.kind in ("opt_out", "opt_out_keep", "handoff_opt_out") and threes:
        return "caller_opted_out"
    return None


def _expected_audio(draw: Draw, stack: Stack) -> float | None:
    """Seconds of audio the kept recording holds, or None for no recording; the
    draw is not unsure. An opt-out call records from the end of its greeting."""
    duration = draw.hangup_ms / 1000
    action = _expected_action(draw)
    if draw.kind == "always":
        return duration
    if action == "caller_opted_in":
        return duration - draw.threes()[0] / 1000 - DTMF_END_S
    greeting = (
        SHORT_GREETING_S
        if draw.kind == "handoff_opt_out"
        else stack.greeting_seconds("en", "opt_out")
    )
    # Within the tolerance of the greeting's end either outcome is right: the
    # greeting's start lags the answer SIPp times from, so a hang-up (or a 3)
    # "just before" its end may reach Asterisk just after it. A value in
    # (-TOLERANCE_S, TOLERANCE_S) lets the check accept both.
    if draw.kind in ("opt_out", "opt_out_keep", "handoff_opt_out") and action is None:
        left = duration - greeting
        return left if left > -TOLERANCE_S else None
    if draw.kind == "opt_out_keep" and action == "caller_opted_out":
        kept = draw.threes()[0] / 1000 + DTMF_END_S - greeting
        return kept if kept > -TOLERANCE_S else None
    return None


def test_every_call_is_answered_and_ends_in_the_ledger(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        assert outcome.result.ok, f"{outcome.describe()}\n{outcome.result.output[-1500:]}"
        assert outcome.details.get("ended_at"), outcome.describe()
        kinds = [r["kind"] for r in outcome.ledger]
        assert kinds.count("call_started") == 1 and kinds.count("call_ended") == 1, (
            outcome.describe()
        )
        if outcome.draw.kind in ("ivr", "voicemail"):
            continue  # a voicemail's seconds count apart
        total = outcome.details["recording_time"] + outcome.details["not_recording_time"]
        assert abs(total - outcome.draw.hangup_ms / 1000) <= 1.5, outcome.describe()


def test_the_pbx_may_hang_up_first(outcomes: list[Outcome]) -> None:
    """The menu's timeouts end the call from the PBX's side, while the caller
    still streams audio: the caller takes that BYE (sipp-scenarios/caller.xml)."""
    ended_by_pbx = [o for o in outcomes if o.draw.pbx_ends]
    assert len(ended_by_pbx) == 2
    for outcome in ended_by_pbx:
        lasted = outcome.result.finished - outcome.result.started
        assert lasted < outcome.draw.hangup_ms / 1000 - 1.0, (
            f"the call lasted {lasted:.1f} s: {outcome.describe()}"
        )


def test_no_file_is_left_that_the_details_do_not_list(
    outcomes: list[Outcome], stack: Stack
) -> None:
    """Whatever the moments: refused, withdrawn or never-wanted audio is gone."""
    for outcome in outcomes:
        listed = set(outcome.details.get("recordings") or [])
        for path in listed:
            assert stack.host_path(path.removeprefix(str(stack.root))).exists(), (
                f"{path} listed but missing: {outcome.describe()}"
            )
        for row in outcome.ledger:
            if row["kind"] != "recording_started":
                continue
            path = stack.host_path(row["data"]["file"])
            if str(path) not in listed:
                assert not path.exists(), f"{path} kept but not listed: {outcome.describe()}"
        action = outcome.details.get("call_recording_consent_action")
        refused = action == "caller_withdrew" or (
            action == "caller_opted_out" and outcome.draw.kind != "opt_out_keep"
        )
        if outcome.draw.kind == "never" or refused:
            assert not listed, outcome.describe()
        if outcome.draw.kind in ("opt_in", "withdrawable") and action != "caller_opted_in":
            assert not listed, outcome.describe()
        if outcome.draw.kind in ("ivr", "voicemail") and action != "caller_opted_in":
            # A message left after key 2 (or the empty group's voicemail) is the
            # caller's own choice; no call recording without their 3.
            assert all("/consentd-vm-" in path for path in listed), outcome.describe()


def test_consent_follows_the_keys_and_nothing_else(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        action = outcome.details.get("call_recording_consent_action")
        if action is not None:
            assert outcome.draw.threes(), f"a decision without a 3: {outcome.describe()}"
        if outcome.draw.unsure() or outcome.draw.kind == "ivr":
            continue  # the menu's routes decide what a 3 then means
        assert action == _expected_action(outcome.draw), outcome.describe()


def test_a_kept_recording_holds_the_span_the_caller_allowed(
    outcomes: list[Outcome], stack: Stack
) -> None:
    for outcome in outcomes:
        if outcome.draw.unsure() or outcome.draw.kind in ("ivr", "voicemail"):
            continue
        expected = _expected_audio(outcome.draw, stack)
        listed = outcome.details.get("recordings") or []
        if expected is None or expected < TOLERANCE_S:
            if expected is None:
                assert listed == [], outcome.describe()
            continue
        assert len(listed) == 1, outcome.describe()
        measured = wav_seconds(stack.host_path(listed[0].removeprefix(str(stack.root))))
        assert abs(measured - expected) <= TOLERANCE_S, (
            f"WAV {measured:.2f} s, expected {expected:.2f} s: {outcome.describe()}"
        )


def test_a_voicemail_is_listed_exactly_when_the_caller_left_one(
    outcomes: list[Outcome], stack: Stack
) -> None:
    """Hung up before the recording began: no message, no file. Talked a while
    after it: the message is listed, as long as the caller talked. In between
    (hung up on the beep) either may be, but a message not listed has no file."""
    drawn = [o for o in outcomes if o.draw.kind == "voicemail"]
    assert len(drawn) == VOICEMAIL_CALLS
    for outcome in drawn:
        messages = [p for p in outcome.details.get("recordings") or [] if "/consentd-vm-" in p]
        started = [r for r in outcome.ledger if r["kind"] == "voicemail_started"]
        if not started:
            assert not outcome.details["voicemail"] and messages == [], outcome.describe()
            continue
        (row,) = started
        ended = next(r for r in outcome.ledger if r["kind"] == "call_ended")
        talked = (ended["occurred_at"] - row["occurred_at"]).total_seconds()
        if talked >= SURELY_A_MESSAGE_S:
            assert outcome.details["voicemail"], f"talked {talked:.2f} s: {outcome.describe()}"
        if outcome.details["voicemail"]:
            (message,) = messages
            measured = wav_seconds(stack.host_path(message.removeprefix(str(stack.root))))
            assert abs(measured - talked) <= TOLERANCE_S, (
                f"message {measured:.2f} s, talked {talked:.2f} s: {outcome.describe()}"
            )
        else:
            assert messages == [], outcome.describe()
            file = stack.host_path(row["data"]["file"])
            deadline = time.monotonic() + 5  # an empty file is removed after the hangup
            while file.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not file.exists(), f"{file} left, not listed: {outcome.describe()}"

"""A call's timeline from its ledger: concrete calls played through the real call flow,
and properties that hold for any call (the recording lane tiles the call, its recorded
spans are call details' recording_segments) and for any ledger, however odd."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import ValidationError

from consentd.call_details import summarize
from consentd.call_flow import control_refusal
from consentd.call_model import (
    AgentCompleted,
    AgentConnected,
    Bridged,
    CallFacts,
    QueueAbandoned,
    QueueJoined,
    RecordingControl,
    ReturnedFromQueue,
    VoicemailFinished,
    VoicemailStarted,
)
from consentd.export import call_record
from consentd.greetings import GreetingLibrary
from consentd.ledger import LedgerEvent
from consentd.openapi import document
from consentd.policy import Group, PolicyBook, load_policies
from consentd.timeline import CALL_KINDS, RECORDING_KINDS, timeline
from tests.api_schema import validate_response
from tests.unit.conftest import CallScript, FakeClock, make_facts, write_wav
from tests.unit.flow_helpers import routed_facts as facts_for

T0 = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)
SUPPORT = Group(queue="support", timeout=20)
DOC = document()

Facts = Callable[..., CallFacts]
Script = Callable[..., Any]


def spans_of(call: CallScript, now: datetime | None = None) -> list[dict[str, Any]]:
    return timeline(call.ledger_events(), now or call.clock())


def lane(spans: list[dict[str, Any]], name: str) -> list[tuple[Any, ...]]:
    """(kind, start_s, end_s[, cut_short]) of one lane, rounded to the millisecond."""
    return [
        (
            s["kind"],
            round(s["start_s"], 3),
            round(s["end_s"], 3),
            *((s["cut_short"],) if "cut_short" in s else ()),
        )
        for s in spans
        if s["lane"] == name
    ]


def iso(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


# ---------------------------------------------------------------- calls held by consentd


def test_opt_in_with_3_during_the_greeting_cuts_it_short(facts: Facts, script: Script) -> None:
    call = script(facts("opt_in"))
    call.arrive()
    call.wait(2)
    call.press("3")  # the flow stops the greeting and starts MixMonitor
    call.wait(0.1)
    call.greeting_ends()  # ARI's PlaybackFinished of the stopped greeting
    call.wait(17.9)
    call.hang_up()

    spans = spans_of(call)

    assert lane(spans, "call") == [("greeting", 0, 2.1, True), ("hold", 2.1, 20)]
    assert lane(spans, "recording") == [("not_recorded", 0, 2), ("recorded", 2, 20)]
    assert [s["kind"] for s in spans] == ["greeting", "not_recorded", "recorded", "hold"]
    recorded = spans[2]
    assert recorded == {
        "lane": "recording",
        "kind": "recorded",
        "start": "2026-11-29T16:00:02+00:00",
        "end": "2026-11-29T16:00:20+00:00",
        "start_s": 2.0,
        "end_s": 20.0,
    }


def test_a_greeting_played_to_its_end_is_not_cut_short(facts: Facts, script: Script) -> None:
    call = script(facts("opt_out"))
    call.arrive()
    call.wait(5)
    call.press("1")  # not the consent key
    call.greeting_ends()  # opt-out records from here
    call.wait(10)
    call.hang_up()

    spans = spans_of(call)

    assert lane(spans, "call") == [("greeting", 0, 5, False), ("hold", 5, 15)]
    assert lane(spans, "recording") == [("not_recorded", 0, 5), ("recorded", 5, 15)]


def test_opt_out_refused_after_the_greeting_keeps_nothing(facts: Facts, script: Script) -> None:
    call = script(facts("opt_out"))
    call.arrive()
    call.wait(5)
    call.greeting_ends()
    call.wait(3)
    call.press("3")  # stops and deletes
    call.wait(4)
    call.hang_up()

    spans = spans_of(call)

    assert lane(spans, "call") == [("greeting", 0, 5, False), ("hold", 5, 12)]
    assert lane(spans, "recording") == [("not_recorded", 0, 12)]


def test_an_always_call_without_greeting_is_held_and_recorded_whole(
    facts: Facts, script: Script
) -> None:
    call = script(facts("always"))
    call.arrive()
    call.wait(9)
    call.hang_up()

    spans = spans_of(call)

    assert lane(spans, "call") == [("hold", 0, 9)]
    assert lane(spans, "recording") == [("recorded", 0, 9)]


def test_an_agents_pause_and_resume_split_the_recording(facts: Facts, script: Script) -> None:
    call = script(facts("always"))
    call.arrive()
    call.wait(5)
    call.send(RecordingControl("pause", "agent1", call.clock()))
    call.wait(4)
    call.send(RecordingControl("resume", "agent1", call.clock()))
    call.wait(6)
    call.hang_up()

    spans = spans_of(call)

    assert lane(spans, "recording") == [
        ("recorded", 0, 5),
        ("paused", 5, 9),
        ("recorded", 9, 15),
    ]
    details = summarize(call.ledger_events(), call.clock())
    assert details is not None
    assert details["recording_segments"] == [
        {"start": iso(0), "end": iso(5)},
        {"start": iso(9), "end": iso(15)},
    ]


def test_a_pause_ends_where_the_caller_refuses(facts: Facts, script: Script) -> None:
    call = script(facts("opt_out"))
    call.arrive()
    call.wait(5)
    call.greeting_ends()  # recording from 5 s
    call.wait(5)
    call.send(RecordingControl("pause", "agent1", call.clock()))  # 10 s
    call.wait(2)
    call.press("3")  # 12 s: refused, everything deleted; the resume is refused too
    call.wait(3)
    call.hang_up()

    spans = spans_of(call)

    assert lane(spans, "recording") == [
        ("not_recorded", 0, 10),
        ("paused", 10, 12),
        ("not_recorded", 12, 15),
    ]


def test_a_call_in_progress_runs_to_now(facts: Facts, script: Script) -> None:
    call = script(facts("always"))
    call.arrive()

    spans = spans_of(call, now=T0 + timedelta(seconds=7.5))

    assert lane(spans, "call") == [("hold", 0, 7.5)]
    assert lane(spans, "recording") == [("recorded", 0, 7.5)]


def test_no_call_started_row_means_no_timeline() -> None:
    assert timeline([], T0) == []


# ---------------------------------------------------------------- calls routed to a group


def routed_call(facts: Facts, script: Script, recording: str) -> CallScript:
    """Availability greeting 0-5 s, consent greeting 5-9 s (if any), queue from 10 s."""
    call: CallScript = script(facts(recording, group=SUPPORT, did="+4930100010"))
    call.arrive()
    call.wait(5)
    call.greeting_ends()
    if call.call.greeting_playback is not None:
        call.wait(4)
        call.greeting_ends()
    call.clock.now = T0 + timedelta(seconds=10)
    call.send(QueueJoined("support", 1, call.clock()))
    return call


def test_a_group_call_greets_queues_and_talks_recorded_from_the_answer(
    facts: Facts, script: Script
) -> None:
    call = routed_call(facts, script, "opt_in")
    call.wait(4)
    call.press("3")  # 14 s, in the queue: MixMonitor b waits for the bridge
    call.wait(16)
    call.send(AgentConnected("agent1", "PJSIP/agent1", 20, 3, call.clock()))  # 30 s
    call.wait(40)
    call.send(AgentCompleted("caller", 40, call.clock()))  # 70 s
    call.wait(0.2)
    call.hang_up()

    spans = spans_of(call)

    assert lane(spans, "call") == [
        ("greeting", 0, 5, False),
        ("greeting", 5, 9, False),
        ("queue", 10, 30),
        ("talking", 30, 70),
    ]
    assert lane(spans, "recording") == [
        ("not_recorded", 0, 30),
        ("recorded", 30, 70),
        ("not_recorded", 70, 70.2),
    ]


def test_a_3_during_the_availability_greeting_does_not_cut_it(facts: Facts, script: Script) -> None:
    call = script(facts("opt_in", group=SUPPORT, did="+4930100010"))
    call.arrive()
    call.wait(2)
    call.press("3")  # the consent greeting is skipped; the availability one goes on
    call.wait(3)
    call.greeting_ends()  # 5 s
    call.wait(1)
    call.send(QueueJoined("support", 1, call.clock()))  # 6 s
    call.wait(4)
    call.hang_up()  # abandoned in the queue

    spans = spans_of(call)

    assert lane(spans, "call") == [("greeting", 0, 5, False), ("queue", 6, 10)]
    assert lane(spans, "recording") == [("not_recorded", 0, 10)]


def test_a_group_call_nobody_answered_goes_to_voicemail(facts: Facts, script: Script) -> None:
    call = script(facts("never", group=SUPPORT, did="+4930100011"))
    call.arrive()
    call.wait(5)
    call.greeting_ends()  # the availability greeting
    call.wait(1)
    call.send(QueueJoined("support", 1, call.clock()))  # 6 s
    call.wait(20)
    call.send(QueueAbandoned(20, call.clock()))  # app_queue's timeout, 26 s
    call.send(ReturnedFromQueue("TIMEOUT", call.clock()))  # the voicemail greeting
    call.wait(3)
    call.greeting_ends()  # 29 s
    call.wait(1)
    call.send(VoicemailStarted(call.clock()))  # 30 s
    call.wait(14)
    call.send(VoicemailFinished("done", 14, call.clock()))  # 44 s
    call.wait(0.2)
    call.hang_up()

    spans = spans_of(call)

    assert lane(spans, "call") == [
        ("greeting", 0, 5, False),
        ("queue", 6, 26),
        ("voicemail", 26, 44),
    ]
    assert lane(spans, "recording") == [
        ("not_recorded", 0, 30),
        ("recorded", 30, 44),
        ("not_recorded", 44, 44.2),
    ]


# ---------------------------------------------------------------- IVR menus

POLICIES = """\
default: {recording: never}
numbers:
  "+4930100021": {recording: opt_in, routing: {ivr: main}}
  "+4930100022": {recording: opt_out, routing: {dialplan: {context: pbx, extension: "200"}}}
groups:
  support: {queue: support, timeout: 20}
ivr:
  main:
    options:
      "1": {group: support}
      "2": {voicemail: true}
      "9": {ivr: other}
    timeout: 5
    retries: 2
  other:
    options: {"0": {ivr: main}}
    timeout: 3
"""


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> PolicyBook:
    path = tmp_path_factory.mktemp("timeline") / "policies.yaml"
    path.write_text(textwrap.dedent(POLICIES))
    write_wav(path.parent / "tone.wav", seconds=0.5)
    return load_policies(path)


@pytest.fixture(scope="module")
def routed_facts(book: PolicyBook, tmp_path_factory: pytest.TempPathFactory) -> Facts:
    library = GreetingLibrary.install(
        book, "/var/lib/asterisk/sounds", tmp_path_factory.mktemp("root")
    )

    def make(did: str) -> CallFacts:
        return facts_for(book, library, did)

    return make


def test_an_ivr_call_consents_in_the_menu_and_leaves_a_voicemail(routed_facts: Facts) -> None:
    call = CallScript(routed_facts("+4930100021"), FakeClock())
    call.arrive()  # routed to the menu "main", its prompt plays
    call.wait(3)
    call.press("3")  # consent in the menu: recorded from here
    call.wait(1)
    call.greeting_ends()  # 4 s: the menu waits for a key
    call.wait(2)
    call.press("9")  # 6 s: the menu "other"
    call.wait(2)
    call.press("0")  # 8 s: back to "main"
    call.wait(1)
    call.press("2")  # 9 s: voicemail
    call.wait(3)
    call.greeting_ends()  # 12 s: the beep, the message
    call.wait(0.5)
    call.send(VoicemailStarted(call.clock()))
    call.wait(10)
    call.send(VoicemailFinished("done", 10, call.clock()))  # 22.5 s
    call.wait(0.1)
    call.hang_up()

    spans = spans_of(call)

    assert lane(spans, "call") == [("ivr", 0, 9), ("voicemail", 9, 22.5)]
    assert lane(spans, "recording") == [("not_recorded", 0, 3), ("recorded", 3, 22.6)]


def test_a_call_handed_to_the_dialplan_rings_then_talks(routed_facts: Facts) -> None:
    call = CallScript(routed_facts("+4930100022"), FakeClock())
    call.arrive()
    call.wait(4)
    call.greeting_ends()  # 4 s: opt-out greeting over, handed to the dialplan, recording
    call.wait(5)
    call.send(Bridged(True, call.clock()))  # 9 s: the callee answers
    call.wait(5)
    call.send(Bridged(False, call.clock()))  # 14 s: the callee hangs up
    call.wait(1)
    call.hang_up()

    spans = spans_of(call)

    assert lane(spans, "call") == [
        ("greeting", 0, 4, False),
        ("ringing", 4, 9),
        ("talking", 9, 14),
        ("ringing", 14, 15),
    ]
    assert lane(spans, "recording") == [("not_recorded", 0, 4), ("recorded", 4, 15)]


# ---------------------------------------------------------------- rows written by hand

D0 = T0


def rows(*spec: tuple[float, str, dict[str, Any]], **started: Any) -> list[LedgerEvent]:
    data = {
        "did": "+4930100010", "caller": "+4917612345678", "direction": "inbound",
        "line": "phone", "policy_source": "number", "policy": "always",
        "channel_id": "1.1", **started,
    }  # fmt: skip
    out = [LedgerEvent("c/0", "c", "pbx1", 0, "call_started", D0, data)]
    for seq, (seconds, kind, more) in enumerate(spec, start=1):
        out.append(
            LedgerEvent(f"c/{seq}", "c", "pbx1", seq, kind, D0 + timedelta(seconds=seconds), more)
        )
    return out


def segment(n: int, **more: Any) -> dict[str, Any]:
    return {"segment": n, "file": f"/m/{n}.wav", "path": f"/root/m/{n}.wav", **more}


def test_an_outbound_call_rings_until_the_callee_answers() -> None:
    events = rows(
        (0, "outbound_dialled", {"callee": "+4917699990000"}),
        (0, "recording_started", segment(1, bridged_only=True)),
        (2, "callee_answered", {}),
        (6, "recording_stopped", segment(1, bridged_only=True)),
        (6, "call_ended", {"cause": "hangup"}),
        direction="outbound",
    )

    spans = timeline(events, D0)

    assert lane(spans, "call") == [("ringing", 0, 2), ("talking", 2, 6)]
    assert lane(spans, "recording") == [("not_recorded", 0, 2), ("recorded", 2, 6)]


def test_a_stop_confirmed_after_the_hangup_counts_to_the_hangup() -> None:
    events = rows(
        (2, "recording_started", segment(1)),
        (10, "call_ended", {"cause": "hangup"}),
        (10.3, "recording_stopped", segment(1)),
    )

    spans = timeline(events, D0)
    details = summarize(events, D0)

    assert details is not None
    assert lane(spans, "recording") == [("not_recorded", 0, 2), ("recorded", 2, 10)]
    assert details["recording_segments"] == [{"start": iso(2), "end": iso(10)}]
    assert details["recording_time"] == 8


def test_rows_from_clocks_a_little_apart_never_make_a_span_run_backwards() -> None:
    events = rows(
        (1, "queue_joined", {"queue": "support"}),
        (5, "agent_connected", {"agent": "agent1"}),
        (4.98, "agent_completed", {"reason": "agent"}),  # AMI's clock, 20 ms behind
        (6, "call_ended", {"cause": "hangup"}),
        group="support",
        queue="support",
    )

    spans = timeline(events, D0)

    assert lane(spans, "call") == [("queue", 1, 5)]
    assert all(s["end_s"] >= s["start_s"] for s in spans)


# ---------------------------------------------------------------- properties


def check_invariants(events: list[LedgerEvent], now: datetime) -> list[dict[str, Any]]:
    """What holds for every call: returns the spans."""
    spans = timeline(events, now)
    details = summarize(events, now)
    assert details is not None
    start = datetime.fromisoformat(details["started_at"])
    end = datetime.fromisoformat(details["ended_at"]) if details["ended_at"] else now
    duration = max(0.0, (end - start).total_seconds())

    assert [s["start_s"] for s in spans] == sorted(s["start_s"] for s in spans)
    for span in spans:
        assert span["kind"] in (CALL_KINDS if span["lane"] == "call" else RECORDING_KINDS)
        assert 0 <= span["start_s"] < span["end_s"] <= duration
        assert ("cut_short" in span) == (span["kind"] == "greeting")
        assert datetime.fromisoformat(span["start"]) == start + timedelta(seconds=span["start_s"])

    recording = [s for s in spans if s["lane"] == "recording"]
    if duration > 0:  # the recording lane tiles [0, duration]
        assert recording[0]["start_s"] == 0
        assert recording[-1]["end_s"] == duration
        for before, after in pairwise(recording):
            assert before["end"] == after["start"]
            assert before["kind"] != after["kind"] or before["kind"] == "recorded"
    recorded = [
        {"start": s["start"], "end": s["end"]} for s in recording if s["kind"] == "recorded"
    ]
    assert recorded == details["recording_segments"]
    seconds = sum(
        (datetime.fromisoformat(s["end"]) - datetime.fromisoformat(s["start"])).total_seconds()
        for s in recorded
    )
    assert round(seconds) == details["recording_time"]

    calls = [s for s in spans if s["lane"] == "call"]
    for before, after in pairwise(calls):
        assert before["end_s"] <= after["start_s"]  # the call lane never overlaps
    return spans


MS = st.integers(min_value=0, max_value=30_000)
ACTION = st.one_of(
    st.tuples(st.just("wait"), MS),
    st.tuples(st.just("press"), st.sampled_from(["3", "1", "2", "9", "0"])),
    st.tuples(st.just("greeting_ends"), st.just(0)),
    st.tuples(st.just("pause"), st.just(0)),
    st.tuples(st.just("resume"), st.just(0)),
    st.tuples(st.just("queue"), st.just(0)),
    st.tuples(st.just("agent"), st.just(0)),
    st.tuples(st.just("agent_done"), st.just(0)),
)


def play(call: CallScript, actions: list[tuple[str, Any]]) -> None:
    """Whatever the caller, the agent and Asterisk do, in any order the flow allows."""
    call.arrive()
    for what, value in actions:
        if what == "wait":
            call.clock.advance(value / 1000)
        elif what == "press":
            call.press(value)
        elif what == "greeting_ends" and call.call.greeting_playback is not None:
            call.greeting_ends()
        elif what in ("pause", "resume") and control_refusal(call.call, what) is None:
            call.send(RecordingControl(what, "agent1", call.clock()))
        elif what == "queue":
            call.send(QueueJoined("support", 1, call.clock()))
        elif what == "agent":
            call.send(AgentConnected("agent1", "PJSIP/agent1", 1, 1, call.clock()))
        elif what == "agent_done":
            call.send(AgentCompleted("caller", 1, call.clock()))
    call.hang_up()


@settings(max_examples=300, deadline=None)
@given(
    policy=st.sampled_from(["always", "never", "opt_in", "opt_out"]),
    keep_partial=st.booleans(),
    withdrawal=st.booleans(),
    routed=st.booleans(),
    actions=st.lists(ACTION, max_size=14),
)
def test_any_call_tiles_its_recording_lane_and_matches_its_details(
    policy: str, keep_partial: bool, withdrawal: bool, routed: bool, actions: list[Any]
) -> None:
    call_facts = make_facts(
        policy,
        keep_partial_on_opt_out=keep_partial,
        allow_withdrawal=withdrawal and policy == "opt_in",
        group=SUPPORT if routed else None,
    )
    call = CallScript(call_facts, FakeClock())
    play(call, actions)

    check_invariants(call.ledger_events(), call.clock())


KINDS = [
    "greeting_played", "greeting_finished", "keypress", "consent_decided", "recording_started",
    "recording_stopped", "recording_deleted", "recording_paused", "recording_resumed",
    "queue_joined", "agent_connected", "agent_completed", "queue_abandoned", "queue_left",
    "voicemail_started", "voicemail_finished", "routed", "callee_answered", "callee_left",
    "outbound_dialled", "call_unserved", "no_answer_hangup", "call_adopted", "call_handed_off",
    "call_ended",
]  # fmt: skip


def _data(kind: str, n: int) -> dict[str, Any]:
    if kind.startswith("recording_") and kind not in ("recording_paused", "recording_resumed"):
        return segment(n % 3 + 1, bridged_only=n % 2 == 0)
    if kind == "greeting_played":
        suffix = ["greeting", "available", "voicemail", "ivr-1", "invalid-2", "hold"][n % 6]
        return {"playback_id": f"1.1-{suffix}", "kind": "x"}
    if kind == "consent_decided":
        action = ["caller_opted_in", "caller_opted_out", "caller_withdrew"][n % 3]
        return {"action": action, "digit": "3"}
    if kind == "keypress":
        return {"digit": "3", "decides": bool(n % 2)}
    if kind in ("voicemail_started", "voicemail_finished"):
        return {"path": "/root/vm.wav", "file": "/vm.wav"}
    if kind == "routed":
        return {"to": ["group", "ivr", "dialplan", "voicemail", "hangup"][n % 5]}
    if kind == "agent_connected":
        return {"agent": "agent1"}
    if kind == "call_ended":
        return {"cause": "hangup"}
    return {}


ROW = st.tuples(st.integers(min_value=-2_000, max_value=60_000), st.sampled_from(KINDS), MS)


@settings(max_examples=400, deadline=None)
@given(spec=st.lists(ROW, max_size=25), now_ms=st.integers(min_value=0, max_value=90_000))
def test_any_ledger_whatever_its_order_gives_a_consistent_timeline(
    spec: list[tuple[int, str, int]], now_ms: int
) -> None:
    """Rows in any order and at any time (clocks apart, rows after the hangup, none)."""
    events = rows(*((ms / 1000, kind, _data(kind, n)) for ms, kind, n in spec))

    check_invariants(events, D0 + timedelta(milliseconds=now_ms))


# ---------------------------------------------------------------- the served document


def call_view(events: list[LedgerEvent], now: datetime) -> dict[str, Any]:
    """The body of GET /api/calls/{id} for these rows, as the daemon builds it."""
    details = summarize(events, now)
    assert details is not None
    return {
        "call": call_record(details, events, number=1, updated_at=now),
        "details": details,
        "recording_segments": details["recording_segments"],
        "timeline": timeline(events, now),
        "events": [
            {
                "seq": e.seq,
                "kind": e.kind,
                "occurred_at": e.occurred_at.isoformat(),
                "stored_at": now.isoformat(),
                "node": e.node,
                "data": e.data,
            }
            for e in events
        ],
    }


@settings(max_examples=60, deadline=None)
@given(
    policy=st.sampled_from(["always", "never", "opt_in", "opt_out"]),
    routed=st.booleans(),
    actions=st.lists(ACTION, max_size=10),
)
def test_the_served_call_with_its_timeline_is_what_the_openapi_document_says(
    policy: str, routed: bool, actions: list[Any]
) -> None:
    call = CallScript(make_facts(policy, group=SUPPORT if routed else None), FakeClock())
    play(call, actions)

    validate_response(DOC, "/api/calls/{id}", "GET", 200, call_view(call.ledger_events(), T0))


@pytest.mark.parametrize(
    "span",
    [
        {"lane": "recording", "kind": "greeting", "cut_short": False},  # a call-lane kind
        {"lane": "call", "kind": "recorded"},  # a recording-lane kind
        {"lane": "call", "kind": "greeting"},  # a greeting says whether it was cut short
        {"lane": "call", "kind": "queue", "cut_short": True},  # only a greeting does
        {"lane": "call", "kind": "parked"},
    ],
)
def test_the_document_refuses_spans_outside_the_contract(span: dict[str, Any]) -> None:
    call = CallScript(make_facts("always"), FakeClock())
    play(call, [("wait", 3000)])
    body = call_view(call.ledger_events(), T0)
    times = {"start": iso(0), "end": iso(1), "start_s": 0.0, "end_s": 1.0}
    body["timeline"].append({**times, **span})

    with pytest.raises(ValidationError):
        validate_response(DOC, "/api/calls/{id}", "GET", 200, body)


def test_a_resume_stamped_before_its_pause_cuts_nothing_and_overlaps_nothing() -> None:
    """Found by hypothesis: two clocks a millisecond apart made recorded spans overlap."""
    events = rows(
        (0, "voicemail_started", {"path": "/root/vm.wav"}),
        (0.002, "recording_paused", {}),
        (0.001, "recording_resumed", {}),
        (3, "call_ended", {"cause": "hangup"}),
    )

    spans = check_invariants(events, D0)

    assert lane(spans, "recording") == [("recorded", 0, 3)]

"""The reports' pure parts: the Zendesk-compatible call record, the export's paging,
its parameters, the agent report and CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consentd.call_details import summarize
from consentd.export import (
    CALL_FIELDS,
    ZENDESK_FIELDS,
    BadParameter,
    Cut,
    agent_report,
    agents_csv,
    call_record,
    calls_csv,
    cut_page,
    epoch_seconds,
    parse_format,
    parse_moment,
    parse_per_page,
    parse_start_time,
    parse_window,
)
from consentd.ledger import LedgerEvent

T0 = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)
UPDATED = datetime(2026, 11, 29, 16, 5, 0, 250000, tzinfo=UTC)
CALL_ID = "pbx1:1764432000.17"
FILE = "/var/spool/asterisk/monitor/consentd-pbx1_1764432000.17-1.wav"


class Ledger:
    """Hand-written ledger rows of one call, seconds after T0."""

    def __init__(self, call_id: str = CALL_ID, **facts: Any) -> None:
        self.call_id = call_id
        self.events: list[LedgerEvent] = []
        self.add(
            "call_started",
            0,
            **{
                "did": "+4930100010",
                "caller": "+4917612345678",
                "direction": "inbound",
                "line": "phone",
                "policy": "opt_in",
                "policy_source": "number",
                **facts,
            },
        )

    def add(self, kind: str, at: float, **data: Any) -> Ledger:
        self.events.append(
            LedgerEvent(
                event_key=f"{self.call_id}:{len(self.events)}",
                call_id=self.call_id,
                node="pbx1",
                seq=len(self.events),
                kind=kind,
                occurred_at=T0 + timedelta(seconds=at),
                data=data,
            )
        )
        return self

    def record(self, number: int = 7) -> dict[str, Any]:
        details = summarize(self.events, T0 + timedelta(hours=1))
        assert details is not None
        return call_record(details, self.events, number=number, updated_at=UPDATED)


def segment(number: int = 1, **extra: Any) -> dict[str, Any]:
    return {"segment": number, "file": FILE.rsplit("/", 1)[1], "path": FILE, **extra}


def zendesk(record: dict[str, Any]) -> dict[str, Any]:
    return {field: record[field] for field in ZENDESK_FIELDS}


def test_a_queue_call_answered_by_an_agent_who_paused_once() -> None:
    ledger = (
        Ledger(group="support", queue="support")
        .add("routed", 0.5, to="group", group="support", queue="support", source="number")
        .add("keypress", 3, digit="3", decides=True, where="greeting")
        .add("consent_decided", 3, action="caller_opted_in", digit="3", where="greeting")
        .add("queue_joined", 5, queue="support", position=1)
        .add("recording_started", 5.2, bridged_only=True, **segment())
        .add("agent_connected", 17, agent="agent1", interface="PJSIP/agent1", queue_time=12)
        .add("recording_paused", 27, by="agent1", gap="silence", segment=1)
        .add("recording_resumed", 32, by="agent1", gap="silence", segment=1)
        .add("agent_completed", 47, reason="caller", talk_time=30)
        .add("recording_stopped", 47, reason="stopped", bridged_only=True, **segment())
        .add("call_ended", 47.4, cause="hangup")
    )

    record = ledger.record()

    assert tuple(record) == CALL_FIELDS
    assert zendesk(record) == {
        "id": 7,
        "created_at": "2026-11-29T16:00:00Z",
        "updated_at": "2026-11-29T16:05:00Z",
        "direction": "inbound",
        "phone_number": "+4930100010",
        "duration": 47,
        "wait_time": 12,
        "talk_time": 30,
        "hold_time": None,
        "time_to_answer": 17,
        "agent_id": None,
        "call_group_id": None,
        "voicemail": False,
        "completion_status": "completed",
        "ivr_action": None,
        "ivr_hops": None,
        "ivr_routed_to": None,
        "ivr_time_spent": None,
        "exceeded_queue_wait_time": False,
        "call_recording_consent": "opt_in",
        "call_recording_consent_action": "caller_opted_in",
        "call_recording_consent_keypress": "3",
        "recording_control_interactions": 2,
        "recording_time": 25,
        "not_recording_time": 22,
    }
    assert record["call_id"] == CALL_ID
    assert record["node"] == "pbx1"
    assert record["agent_name"] == "agent1"
    assert record["caller"] == "+4917612345678"
    assert record["answered_at"] == "2026-11-29T16:00:17+00:00"
    assert record["recording_segments"] == [
        {"start": "2026-11-29T16:00:17+00:00", "end": "2026-11-29T16:00:27+00:00"},
        {"start": "2026-11-29T16:00:32+00:00", "end": "2026-11-29T16:00:47+00:00"},
    ]


def test_an_ivr_call_routed_to_a_group_after_a_submenu() -> None:
    ledger = (
        Ledger(policy="opt_out")
        .add("routed", 0.2, to="ivr", ivr="main", source="number")
        .add("routed", 6, to="ivr", ivr="sub", source="ivr:main", digit="9")
        .add(
            "routed", 11, to="group", group="support", queue="support", source="ivr:sub", digit="1"
        )
        .add("queue_joined", 12, queue="support", position=1)
        .add("queue_abandoned", 20, queue_time=8)
        .add("call_ended", 20, cause="hangup")
    )

    record = ledger.record()

    assert (
        record["ivr_action"],
        record["ivr_hops"],
        record["ivr_routed_to"],
        record["ivr_time_spent"],
    ) == ("group", 2, "support", 11)
    assert record["completion_status"] == "abandoned_in_queue"
    assert record["abandoned"] is True
    assert record["time_to_answer"] is None
    assert record["call_recording_consent_action"] is None
    assert record["exceeded_queue_wait_time"] is False


def test_a_caller_who_hangs_up_in_a_menu_abandoned_in_the_ivr() -> None:
    ledger = (
        Ledger()
        .add("routed", 0.2, to="ivr", ivr="main", source="number")
        .add("ivr_missed", 5, menu="main", reason="no_key", digit=None, misses=1)
        .add("call_ended", 9, cause="hangup")
    )

    record = ledger.record()

    assert (record["ivr_action"], record["ivr_hops"], record["ivr_routed_to"]) == (None, 0, None)
    assert record["ivr_time_spent"] == 9
    assert record["completion_status"] == "abandoned_in_ivr"


def test_a_queue_timeout_into_voicemail_exceeded_the_queue_wait() -> None:
    ledger = (
        Ledger(group="support", queue="support")
        .add("queue_joined", 2, queue="support", position=1)
        .add("queue_left", 22, status="TIMEOUT")
        .add("voicemail_started", 24, path="/var/spool/asterisk/recording/vm-1.wav")
        .add("voicemail_finished", 34)
        .add("call_ended", 34, cause="hangup")
    )

    record = ledger.record()

    assert record["exceeded_queue_wait_time"] is True
    assert record["voicemail"] is True
    assert record["completion_status"] == "voicemail"
    assert record["wait_time"] == 32  # from joining the queue to the end: nobody answered
    assert record["talk_time"] == 0
    assert record["recording_time"] == 10


def test_an_outbound_call_answered_by_the_callee() -> None:
    ledger = (
        Ledger(
            did="+4930100031",
            caller="agent1",
            direction="outbound",
            policy="always",
            agent="agent1",
            callee="+4915100000009",
        )
        .add("outbound_dialled", 0.5, number="+4915100000009")
        .add("callee_answered", 6)
        .add("callee_left", 26)
        .add("call_ended", 26.2, cause="hangup")
    )

    record = ledger.record()

    assert record["direction"] == "outbound"
    assert (record["time_to_answer"], record["wait_time"], record["talk_time"]) == (6, 6, 20)
    assert record["completion_status"] == "completed"
    assert record["callee"] == "+4915100000009"
    assert record["agent_name"] == "agent1"
    assert record["exceeded_queue_wait_time"] is False


def test_a_call_the_dialplan_handled_without_consentd_has_nulls_where_nothing_is_known() -> None:
    ledger = Ledger(
        "fallback:pbx1:1764432000.99",
        line=None,
        policy=None,
        policy_source="none",
        consentd_unavailable=True,
        fallback="unrecorded",
    ).add("call_ended", 30, cause="hangup")

    record = ledger.record(number=12)

    assert record["id"] == 12
    assert record["consentd_unavailable"] is True
    assert record["duration"] == 30
    for field in ("wait_time", "talk_time", "completion_status", "exceeded_queue_wait_time"):
        assert record[field] is None, field
    assert record["call_recording_consent"] is None


# ---------------------------------------------------------------- paging


def test_a_short_stream_is_one_page_that_ends_at_the_horizon() -> None:
    assert cut_page([10, 10, 11], 5, start=3, horizon=20) == Cut(3, 20, True)


def test_an_empty_stream_ends_at_the_horizon_or_the_start_whichever_is_later() -> None:
    assert cut_page([], 5, start=3, horizon=20) == Cut(0, 20, True)
    assert cut_page([], 5, start=25, horizon=20) == Cut(0, 25, True)


def test_a_page_whose_next_call_is_in_a_later_second_ends_after_its_last_second() -> None:
    assert cut_page([1, 2, 3, 7], 3, start=0, horizon=20) == Cut(3, 4, False)


def test_a_page_never_splits_a_second() -> None:
    # per_page 4: the fifth call shares second 3 with the fourth; second 3 goes to the next page.
    assert cut_page([1, 2, 3, 3, 3], 4, start=0, horizon=20) == Cut(2, 3, False)


def test_a_second_with_more_calls_than_a_page_is_served_whole() -> None:
    assert cut_page([5, 5, 5, 5], 3, start=0, horizon=20) == Cut(0, 6, False, whole_second=5)
    assert cut_page([5, 5, 5, 5], 3, start=0, horizon=6) == Cut(0, 6, True, whole_second=5)


@settings(max_examples=300, deadline=None)
@given(
    seconds=st.lists(st.integers(min_value=0, max_value=12), max_size=60),
    per_page=st.integers(min_value=1, max_value=7),
    horizon=st.integers(min_value=0, max_value=14),
    start=st.integers(min_value=0, max_value=14),
)
def test_paging_by_end_time_returns_every_call_once_in_order(
    seconds: list[int], per_page: int, horizon: int, start: int
) -> None:
    """A reference model of the store: calls (second, name), paged the way
    ``reports_pg`` pages them. Following end_time yields each served call exactly once."""
    calls = sorted((s, f"c{i:03}") for i, s in enumerate(seconds))

    def keys(low: int, high: int, limit: int | None = None) -> list[tuple[int, str]]:
        found = [c for c in calls if low <= c[0] < high]
        return found if limit is None else found[:limit]

    served: list[tuple[int, str]] = []
    cursor = start
    for _ in range(len(calls) + 20):
        if cursor >= horizon:
            page, end, done = [], cursor, True
        else:
            fetched = keys(cursor, horizon, per_page + 1)
            cut = cut_page([s for s, _ in fetched], per_page, cursor, horizon)
            if cut.whole_second is not None:
                page = keys(cut.whole_second, cut.whole_second + 1)
            else:
                page = fetched[: cut.keep]
                assert len(page) <= per_page
            end, done = cut.end_time, cut.end_of_stream
        assert end >= cursor
        served += page
        cursor = end
        if done:
            break
    else:
        raise AssertionError("the stream never ended")
    assert served == [c for c in calls if start <= c[0] < horizon]


# ---------------------------------------------------------------- parameters

NOW = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)


def test_start_time_defaults_to_0_and_takes_any_second_up_to_now() -> None:
    assert parse_start_time(None, NOW) == 0
    assert parse_start_time("0", NOW) == 0
    assert parse_start_time(str(epoch_seconds(NOW)), NOW) == epoch_seconds(NOW)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("-1", "start_time must not be negative, got '-1'"),
        ("abc", "start_time must be an integer (epoch seconds), got 'abc'"),
        ("1.5", "start_time must be an integer (epoch seconds), got '1.5'"),
        ("", "start_time must be an integer (epoch seconds), got ''"),
        ("١٢", "start_time must be an integer (epoch seconds), got '١٢'"),
        (
            str(epoch_seconds(NOW) + 1),
            f"start_time {epoch_seconds(NOW) + 1} is in the future (now is {epoch_seconds(NOW)})",
        ),
    ],
)
def test_bad_start_times_name_the_parameter(raw: str, message: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_start_time(raw, NOW)
    assert (caught.value.parameter, str(caught.value)) == ("start_time", message)


@pytest.mark.parametrize("raw", ["0", "1001", "-3", "x", "", "2.0", "1e3"])
def test_bad_per_page_names_the_parameter(raw: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_per_page(raw)
    assert caught.value.parameter == "per_page"
    assert str(caught.value) == f"per_page must be an integer from 1 to 1000, got {raw!r}"


def test_per_page_defaults_to_1000_and_takes_1_to_1000() -> None:
    assert (parse_per_page(None), parse_per_page("1"), parse_per_page("1000")) == (1000, 1, 1000)


def test_format_is_json_or_csv() -> None:
    assert (parse_format(None), parse_format("json"), parse_format("csv")) == (
        "json",
        "json",
        "csv",
    )
    with pytest.raises(BadParameter, match="format must be json or csv, got 'xml'"):
        parse_format("xml")


def test_moments_are_epoch_seconds_or_iso_8601_utc_unless_a_zone_is_given() -> None:
    assert parse_moment("from", "1764432000") == datetime(2025, 11, 29, 16, 0, tzinfo=UTC)
    assert parse_moment("from", "2026-11-29T16:00:00Z") == NOW
    assert parse_moment("from", "2026-11-29T16:00:00") == NOW
    assert parse_moment("from", "2026-11-29T17:00:00+01:00") == NOW


@pytest.mark.parametrize("raw", ["", "yesterday", "2026-13-01", "99999999999999999999", "-5"])
def test_bad_moments_name_the_parameter(raw: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_moment("to", raw)
    assert caught.value.parameter == "to"


def test_a_report_window_defaults_to_the_day_before_now_and_must_not_run_backwards() -> None:
    assert parse_window(None, None, NOW) == (NOW - timedelta(days=1), NOW)
    with pytest.raises(BadParameter) as caught:
        parse_window("2026-11-30", "2026-11-29", NOW)
    assert caught.value.parameter == "from"


# ---------------------------------------------------------------- agents and CSV


def details(agent: str | None, **fields: Any) -> dict[str, Any]:
    return {
        "agent": agent,
        "direction": "inbound",
        "recording_control_interactions": 0,
        "recording_time": 10,
        "not_recording_time": 5,
        "call_recording_consent_action": None,
        **fields,
    }


def test_the_agent_report_adds_up_each_agents_calls() -> None:
    rows = agent_report(
        [
            details("agent2", call_recording_consent_action="caller_opted_in"),
            details("agent2", call_recording_consent_action="notice_failed"),
            details("agent1", recording_control_interactions=2),
            details("agent1", direction="outbound", recording_time=0, not_recording_time=40),
            details(None),  # nobody answered: in no agent's row
            details("agent1", call_recording_consent_action="caller_withdrew"),
        ]
    )

    assert rows == [
        {
            "agent": "agent1",
            "calls_answered": 2,
            "calls_placed": 1,
            "recording_control_interactions": 2,
            "recording_time": 20,
            "not_recording_time": 50,
            "consent_outcomes": {
                "caller_opted_in": 0,
                "caller_opted_out": 0,
                "caller_withdrew": 1,
                "notice_failed": 0,
                "no_decision": 2,
            },
        },
        {
            "agent": "agent2",
            "calls_answered": 2,
            "calls_placed": 0,
            "recording_control_interactions": 0,
            "recording_time": 20,
            "not_recording_time": 10,
            "consent_outcomes": {
                "caller_opted_in": 1,
                "caller_opted_out": 0,
                "caller_withdrew": 0,
                "notice_failed": 1,
                "no_decision": 0,
            },
        },
    ]
    table = list(csv.reader(io.StringIO(agents_csv(rows))))
    assert table[0] == [
        "agent",
        "calls_answered",
        "calls_placed",
        "recording_control_interactions",
        "recording_time",
        "not_recording_time",
        "caller_opted_in",
        "caller_opted_out",
        "caller_withdrew",
        "notice_failed",
        "no_decision",
    ]
    assert table[1] == ["agent1", "2", "1", "2", "20", "50", "0", "0", "1", "0", "2"]


def test_calls_csv_has_every_field_as_a_column_with_nulls_empty_and_lists_as_json() -> None:
    record = Ledger().add("call_ended", 12, cause="hangup").record()

    table = list(csv.reader(io.StringIO(calls_csv([record]))))

    assert table[0] == list(CALL_FIELDS)
    row = dict(zip(table[0], table[1], strict=True))
    assert row["id"] == "7"
    assert row["hold_time"] == ""
    assert row["voicemail"] == "false"
    assert row["recording_segments"] == "[]"
    assert row["call_id"] == CALL_ID

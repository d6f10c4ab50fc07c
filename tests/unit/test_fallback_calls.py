"""Calls handled by the dialplan while consentd was away: the fallback log into the ledger."""

from __future__ import annotations

import asyncio
import base64
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from consentd.call_details import recent_calls, summarize
from consentd.fallback_calls import (
    FallbackLog,
    FallbackReconciler,
    MalformedLine,
    ledger_events,
    parse_line,
)
from consentd.journal import Journal
from consentd.ledger import LedgerEvent, LedgerWriter, MemoryLedger, open_calls_of

NOW = datetime(2026, 11, 29, 17, 0, 0, tzinfo=UTC)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def started(uid: str = "1764432000.17", caller: str = "+4915199990001") -> str:
    return f"1|started|2026-11-29T16:00:00.250|{uid}|{uid}|+4930100001|{b64(caller)}|"


def ended(uid: str = "1764432000.17", cause: str = "16", vm: str = "") -> str:
    caller = b64("+4915199990001")
    return f"1|ended|2026-11-29T16:00:12.750|{uid}|{uid}|+4930100001|{caller}|{cause}|{vm}"


def voicemail(uid: str = "1764432001.18") -> str:
    return (
        f"1|voicemail|2026-11-29T16:01:00.000|{uid}|{uid}|+4930100014|"
        f"{b64('+4915199990002')}|{b64('support@groups')}"
    )


# -- parser


def test_a_started_line_is_read_as_written() -> None:
    record = parse_line(started())
    assert record.event == "started"
    assert record.at == datetime(2026, 11, 29, 16, 0, 0, 250_000, tzinfo=UTC)
    assert (record.uniqueid, record.linkedid, record.did) == (
        "1764432000.17",
        "1764432000.17",
        "+4930100001",
    )
    assert record.caller == "+4915199990001"


def test_ended_and_voicemail_lines_carry_their_extras() -> None:
    end = parse_line(ended(cause="16", vm="SUCCESS"))
    assert (end.hangup_cause, end.voicemail_status) == ("16", "SUCCESS")
    assert parse_line(ended(cause="", vm="")).voicemail_status is None
    assert parse_line(ended(cause="0")).hangup_cause is None  # AST_CAUSE_NOTDEFINED
    assert parse_line(voicemail()).mailbox == "support@groups"


@pytest.mark.parametrize(
    "caller",
    ["", 'Anna "the caller", Ltd.', "a|b|c", "line\nbreak", "(x)}{$", "Zoë 漢字", "=" * 3],
)
def test_odd_caller_ids_cannot_break_a_line(caller: str) -> None:
    assert parse_line(started(caller=caller)).caller == caller


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("3|started|2026-11-29T16:00:00.000|1.1|1.1|+49|", "format version"),
        ("2|started|2026-11-29T16:00:00.000|1.1|1.1|+49|", "did is not base64"),
        ("1|started|2026-11-29T16:00:00.000|1.1", "fields"),
        ("1|hung|2026-11-29T16:00:00.000|1.1|1.1|+49||", "unknown event"),
        ("1|started|yesterday|1.1|1.1|+49||", "bad time"),
        ("1|started|2026-11-29T16:00:00.000||1.1|+49||", "UNIQUEID"),
        ("1|started|2026-11-29T16:00:00.000|1.1|1.1|+49|not base64!|", "not base64"),
        ("1|ended|2026-11-29T16:00:00.000|1.1|1.1|+49||16", "expected 9"),
        ("1|voicemail|2026-11-29T16:00:00.000|1.1|1.1|+49||@@", "mailbox is not base64"),
    ],
)
def test_a_malformed_line_is_refused_with_its_number(line: str, reason: str) -> None:
    with pytest.raises(MalformedLine) as error:
        parse_line(line, 42)
    assert error.value.line_no == 42
    assert reason in str(error.value)
    assert str(error.value).startswith("line 42: ")


def test_version_2_lines_carry_the_dialled_number_in_base64() -> None:
    line = f"2|started|2026-11-29T16:00:00.250|1.1|1.1|{b64('+4930100001')}|{b64('+4915')}|"
    record = parse_line(line)
    assert (record.did, record.caller) == ("+4930100001", "+4915")
    ended = f"2|ended|2026-11-29T16:00:01.000|1.1|1.1|{b64('+4930100001')}|{b64('+4915')}|16|"
    assert parse_line(ended).did == "+4930100001"


def test_a_hostile_dialled_number_cannot_forge_a_line_and_is_cleaned_in_the_ledger() -> None:
    """_X. takes a newline and '|': written as it came (version 1), such a number ended the
    line and wrote a call of the caller's choosing. In base64 it stays one field."""
    forged = "\n1|ended|2026-11-29T16:00:00.000|1764432000.17|x|+49||16|"
    did = "1\x1b[2J|" + forged + "9" * 100
    caller = b64("+49\x1b]0;x\x07")
    line = f"2|started|2026-11-29T16:00:00.250|1.2|1.2|{b64(did)}|{caller}|"
    assert "\n" not in line

    (row,) = rows_of(line)
    assert row.call_id == "fallback:pbx1:1.2"
    assert row.data["did"].startswith("1\\u001b[2J|\\u000a1|ended|2026-11-29T16:00:00")
    assert row.data["did"].endswith("\u2026") and len(row.data["did"]) == 64
    assert row.data["caller"] == "+49\\u001b]0;x\\u0007"
    assert row.data["did"].isprintable() and len(row.data["did"]) <= 64


# -- the ledger rows and the call details


def test_rows_have_deterministic_keys_and_no_channel_id() -> None:
    first = ledger_events(parse_line(started()), "pbx1")
    again = ledger_events(parse_line(started()), "pbx1")
    assert first == again
    (row,) = first
    assert row.event_key == "fallback:pbx1:1764432000.17:started"
    assert row.call_id == "fallback:pbx1:1764432000.17"
    assert row.kind == "call_started"
    assert "channel_id" not in row.data  # adoption finds consentd's calls by it
    (end,) = ledger_events(parse_line(ended()), "pbx1")
    assert (end.call_id, end.kind, end.seq) == (row.call_id, "call_ended", 1)


def rows_of(*lines: str, node: str = "pbx1") -> list[LedgerEvent]:
    return [e for line in lines for e in ledger_events(parse_line(line), node)]


def test_details_of_a_fallback_call_say_consentd_was_unavailable() -> None:
    details = summarize(rows_of(started(), ended()), NOW)
    assert details is not None
    assert details["consentd_unavailable"] is True
    assert details["id"] == "fallback:pbx1:1764432000.17"
    assert details["phone_number"] == "+4930100001"
    assert details["caller"] == "+4915199990001"
    assert details["direction"] == "inbound"
    assert details["policy_source"] == "none"
    assert details["call_recording_consent"] is None
    assert details["recordings"] == []
    assert details["recording_time"] == 0
    assert details["not_recording_time"] == 12  # 16:00:00.25 to 16:00:12.75, rounded
    assert details["started_at"] == "2026-11-29T16:00:00.250000+00:00"
    assert details["ended_at"] == "2026-11-29T16:00:12.750000+00:00"
    assert details["fallback"] == {
        "branch": "stasis_failed",
        "uniqueid": "1764432000.17",
        "linkedid": "1764432000.17",
        "mailbox": None,
        "hangup_cause": "16",
        "voicemail_status": None,
    }


def test_a_voicemail_fallback_names_the_mailbox_but_invents_no_file() -> None:
    details = summarize(rows_of(voicemail(), ended("1764432001.18", vm="SUCCESS")), NOW)
    assert details is not None
    assert details["consentd_unavailable"] is True
    assert details["fallback"]["branch"] == "voicemail"
    assert details["fallback"]["mailbox"] == "support@groups"
    assert details["fallback"]["voicemail_status"] == "SUCCESS"
    assert details["recordings"] == []
    assert details["voicemail"] is False  # consentd recorded no message


def test_a_call_consentd_handled_is_not_unavailable(facts: object, script: object) -> None:
    call = script(facts("always"))  # type: ignore[operator]
    call.arrive()
    call.wait(5)
    call.hang_up()
    details = summarize(call.ledger_events(), call.clock())
    assert details is not None
    assert details["consentd_unavailable"] is False
    assert details["fallback"] is None


def test_fallback_calls_are_never_open_calls_of_the_node() -> None:
    """Without its end line yet, a fallback call must not be closed or adopted by consentd."""
    rows = rows_of(started())
    assert rows[0].node == "pbx1"
    assert open_calls_of(rows, "pbx1", datetime(2026, 1, 1, tzinfo=UTC)) == []


async def test_memory_ledger_open_calls_skip_fallback_calls() -> None:
    store = MemoryLedger()
    await store.append(rows_of(started()))
    assert await store.open_calls("pbx1", datetime(2026, 1, 1, tzinfo=UTC)) == []


# -- following the file


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def test_a_missing_file_gives_nothing_and_is_picked_up_once_it_exists(tmp_path: Path) -> None:
    log = FallbackLog(tmp_path / "consentd-fallback.log")
    assert log.read() == []
    append(log.path, started() + "\n")
    assert [n for n, _ in log.read()] == [1]


def test_a_torn_tail_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    line = started()
    append(path, line + "\n" + line[:20])
    log = FallbackLog(path)
    assert log.read() == [(1, line)]
    assert log.read() == []
    append(path, line[20:] + "\n")
    assert log.read() == [(2, line)]


def test_truncation_starts_again_from_the_top(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    append(path, started("1.1") + "\n" + started("1.2") + "\n")
    log = FallbackLog(path)
    assert len(log.read()) == 2
    path.write_text(started("2.1") + "\n")  # shorter than what was read
    assert log.read() == [(1, started("2.1"))]


def test_rotation_reads_the_rest_of_the_old_file_then_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    append(path, started("1.1") + "\n")
    log = FallbackLog(path)
    assert len(log.read()) == 1
    append(path, ended("1.1") + "\n")  # written just before the rotation
    os.rename(path, tmp_path / "f.log.1")
    append(path, started("2.1") + "\n")
    assert log.read() == [(2, ended("1.1")), (1, started("2.1"))]
    assert log.read() == []


def test_a_long_file_is_read_in_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("consentd.fallback_calls.MAX_READ", 100)
    path = tmp_path / "f.log"
    lines = [started(f"1.{i}") for i in range(10)]
    append(path, "".join(line + "\n" for line in lines))
    log = FallbackLog(path)
    got: list[str] = []
    for _ in range(50):
        got += [text for _, text in log.read()]
        if not log.behind:
            break
    assert got == lines


# -- the reconciler


def test_malformed_lines_are_logged_with_file_and_line_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    append(path, started() + "\n" + "garbage\n" + "\n" + ended() + "\n")
    submitted: list[LedgerEvent] = []
    reconciler = FallbackReconciler(path, "pbx1", submitted.append)
    with structlog.testing.capture_logs() as logs:
        count = reconciler.take(reconciler.log_file.read())
    assert count == 2
    assert [e.kind for e in submitted] == ["call_started", "call_ended"]
    assert reconciler.malformed == 1
    (warning,) = [entry for entry in logs if entry["event"] == "fallback_line_malformed"]
    assert warning["file"] == str(path)
    assert warning["line"] == 2


async def test_reading_the_file_again_never_duplicates_a_call(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    append(path, started() + "\n" + ended() + "\n" + voicemail() + "\n")
    store = MemoryLedger()
    writer = LedgerWriter(store, Journal(None), linger_seconds=0)
    task = asyncio.create_task(writer.run())
    try:
        for _ in range(2):  # as after a restart: a new reader, from the top
            assert await FallbackReconciler(path, "pbx1", writer.submit).poll() == 3
        await writer.close()
        await task
    finally:
        task.cancel()
    assert len(store.events) == 3
    calls = await recent_calls(store, 10, NOW)
    assert [c["id"] for c in calls] == [
        "fallback:pbx1:1764432001.18",
        "fallback:pbx1:1764432000.17",
    ]
    assert all(c["consentd_unavailable"] for c in calls)


async def test_the_reader_survives_a_failure_and_stops_on_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.log"
    append(path, started() + "\n")
    submitted: list[LedgerEvent] = []
    reconciler = FallbackReconciler(path, "pbx1", submitted.append, interval=0.01)
    real_read = reconciler.log_file.read
    failures = iter([OSError("disk gone")])

    def flaky() -> list[tuple[int, str]]:
        for exc in failures:
            raise exc
        return real_read()

    monkeypatch.setattr(reconciler.log_file, "read", flaky)
    task = asyncio.create_task(reconciler.run())
    for _ in range(200):
        if submitted:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e.kind for e in submitted] == ["call_started"]

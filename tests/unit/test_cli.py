"""The ``consentd`` command line: call tables, argument errors, and database trouble."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from consentd.cli import main, render_table

CALL = {
    "id": "pbx1:1764432000.17",
    "phone_number": "+4930100002",
    "caller": "+4917612345678",
    "call_recording_consent": "opt_in",
    "call_recording_consent_action": "caller_opted_in",
    "call_recording_consent_keypress": "3",
    "recording_time": 26,
    "not_recording_time": 4,
    "recordings": ["/var/spool/asterisk/monitor/consentd-pbx1_1764432000.17-1.wav"],
    "started_at": "2026-11-29T16:00:00+00:00",
}


@pytest.fixture(autouse=True)
def no_consentd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from CONSENTD_* variables; the host's must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("CONSENTD_"):
            monkeypatch.delenv(name)


def test_table_of_no_calls_says_there_are_none() -> None:
    assert render_table([]) == "no calls recorded yet"


def test_table_shows_one_row_per_call_under_a_header() -> None:
    unrecorded = {
        **CALL,
        "id": "pbx1:1764432100.18",
        "call_recording_consent_action": None,
        "call_recording_consent_keypress": None,
        "recording_time": 0,
        "not_recording_time": 30,
        "recordings": [],
    }

    lines = render_table([CALL, unrecorded]).splitlines()

    assert lines[0].split() == [
        "started",
        "number",
        "caller",
        "consent",
        "action",
        "key",
        "rec",
        "s",
        "not",
        "rec",
        "s",
        "agent",
        "recordings",
        "id",
    ]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == [
        "2026-11-29",
        "16:00:00",
        "+4930100002",
        "+4917612345678",
        "opt_in",
        "caller_opted_in",
        "3",
        "26",
        "4",
        "-",
        "consentd-pbx1_1764432000.17-1.wav",
        "pbx1:1764432000.17",
    ]
    assert lines[3].split()[5:11] == ["-", "-", "0", "30", "-", "-"]


def test_calls_with_limit_0_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["calls", "--limit", "0"])

    assert caught.value.code == 2
    assert "must be at least 1, got 0" in capsys.readouterr().err


def test_calls_with_a_limit_that_is_not_a_number_is_an_argument_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["calls", "--limit", "ten"])

    assert caught.value.code == 2
    assert "expected a whole number, got 'ten'" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: consentd" in capsys.readouterr().err


def test_calls_without_a_database_names_it_and_exits_1_without_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["calls", "--database-url", "postgresql://x@127.0.0.1:1/x"])

    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.startswith(
        "consentd calls: cannot reach the database at postgresql://x@127.0.0.1:1/x"
    )
    assert "Traceback" not in err


def test_database_error_never_prints_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["calls", "--database-url", "postgresql://x:hunter2@127.0.0.1:1/x"])

    err = capsys.readouterr().err
    assert code == 1
    assert "hunter2" not in err
    assert "postgresql://x:***@127.0.0.1:1/x" in err


def test_greetings_export_writes_the_files_a_remote_asterisk_must_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], wav: Callable[..., Path]
) -> None:
    wav(tmp_path / "mine.wav", seconds=0.3)
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        'default: {recording: never}\nnumbers:\n  "+4930100003":\n'
        "    {recording: opt_out, greetings: {opt_out: mine.wav}}\n"
    )

    assert main(["greetings", str(policies), "--export", str(tmp_path / "out")]) == 0

    out, err = capsys.readouterr()
    (written,) = [Path(line) for line in out.splitlines()]
    assert written.parent == tmp_path / "out" and written.suffix == ".wav"
    assert len(written.stem) == 24 and written.stat().st_size > 44
    assert "copy them to /var/lib/asterisk/sounds/consentd-custom/ on the PBX" in err
    (tmp_path / "blocked").write_text("a file, not a directory")
    assert main(["greetings", str(policies), "--export", str(tmp_path / "blocked")]) == 2

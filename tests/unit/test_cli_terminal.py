"""No CLI output path sends a terminal control character (issue 11, hostile callers).

Caller IDs and dialled numbers come from SIP, agents' names from the PBX,
YAML keys and file names from files: each command is fed such values and
its stdout and stderr must hold none of them raw, only their escapes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

import consentd.cli as cli
from consentd.cli import main, render_table
from consentd.export import CALL_FIELDS
from tests.e2e.harness import write_tone

ESCAPES = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202e\r\x00\x7f"
HOSTILE_CALLER = "+49151\x1b[2J'; DROP TABLE call_events;--\u202e"
HOSTILE_NUMBER = "1\x1b]52;c;cm0gLXJmIH4=\x07/../../etc/passwd\n"


def _raw_controls(text: str) -> list[str]:
    """Every character that would reach the terminal raw: all but printable, newline, tab."""
    return [ch for ch in text if not (ch.isprintable() or ch in "\n\t")]


def _call(**changes: Any) -> dict[str, Any]:
    call = {
        "id": "pbx1:1764432000.17",
        "phone_number": HOSTILE_NUMBER,
        "caller": HOSTILE_CALLER,
        "call_recording_consent": "opt_in",
        "call_recording_consent_action": None,
        "call_recording_consent_keypress": None,
        "recording_time": 0,
        "not_recording_time": 4,
        "recordings": [],
        "agent": "agent\x1b[8m1",
        "started_at": "2026-11-29T16:00:00+00:00",
        "ended_at": "2026-11-29T16:00:04+00:00",
    }
    return {**call, **changes}


@pytest.fixture(autouse=True)
def no_consentd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CONSENTD_"):
            monkeypatch.delenv(name)


def test_calls_table_cells_are_escaped_and_stay_on_one_line() -> None:
    table = render_table([_call(), _call(id="pbx1:2")])

    assert _raw_controls(table) == []
    assert len(table.splitlines()) == 4  # header, rule, two calls: the \n did not split a row
    assert "+49151\\u001b[2J'; DROP TABLE call_events;--\\u202e" in table
    assert "1\\u001b]52;c;cm0gLXJmIH4=\\u0007/../../etc/passwd\\u000a" in table


@pytest.mark.parametrize("as_json", [False, True])
def test_consentd_calls_prints_no_control_character(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    async def fetch(dsn: str, password: str | None, limit: int) -> list[dict[str, Any]]:
        return [_call()]

    monkeypatch.setattr(cli, "_fetch_calls", fetch)
    flags = ["--json"] if as_json else []
    assert main(["calls", "--database-url", "postgresql://x@127.0.0.1:1/x", *flags]) == 0

    out, err = capsys.readouterr()
    assert _raw_controls(out + err) == []
    if as_json:  # still JSON, and it reads back as exactly what was stored
        assert json.loads(out)[0]["caller"] == HOSTILE_CALLER


def test_check_prints_hostile_yaml_keys_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        'default: {recording: never}\nnumbers:\n  "\\e[2J\\e]0;owned\\a+49": {recording: always}\n'
        '  "+4930100001": {recording: always, "\\e[31mcolour": 1}\n'
    )

    assert main(["check", str(policies)]) == 1

    out, err = capsys.readouterr()
    assert _raw_controls(out + err) == []
    assert "\\u001b[2J" in err and "\\u001b[31mcolour" in err


def test_greetings_prints_hostile_file_names_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tone(tmp_path / "hi\x1b[2J.wav", 0.5)
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        "default: {recording: never}\nnumbers:\n"
        '  "+4930100001": {recording: opt_in, greetings: {opt_in: "hi\\e[2J.wav"}}\n'
    )

    main(["greetings", str(policies), "--sounds", str(tmp_path / "sounds")])

    out, err = capsys.readouterr()
    assert _raw_controls(out + err) == []
    assert "\\u001b[2J" in out + err


@pytest.mark.parametrize("as_json", [False, True])
def test_export_and_report_agents_print_no_control_character(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    call: dict[str, Any] = dict.fromkeys(CALL_FIELDS)
    call.update(
        id=1,
        updated_at="2026-11-29T16:00:00Z",
        phone_number=HOSTILE_NUMBER,
        caller=HOSTILE_CALLER,
        recording_time=0,
        not_recording_time=4,
        agent="agent\x1b[8m1",
        agent_name="agent\x1b[8m1",
        call_id="pbx1:1",
    )
    outcomes = dict.fromkeys(("caller_opted_in", "caller_opted_out", "caller_withdrew"), 0)
    agent = {
        "agent": "agent\x1b]0;x\x07",
        "calls_answered": 1,
        "calls_placed": 0,
        "recording_control_interactions": 0,
        "recording_time": 0,
        "not_recording_time": 4,
        "consent_outcomes": {**outcomes, "no_decision": 1},
    }
    answers = {
        "export": {"calls": [call], "count": 1, "end_time": 5, "end_of_stream": True},
        "agents": {"from": "2026-11-28\x1b[2J", "to": "2026-11-29", "agents": [agent]},
    }

    def get_json(self: Any, path: str) -> tuple[int, Any]:
        return 0, answers["agents" if "agents" in path else "export"]

    monkeypatch.setenv("CONSENTD_API_TOKEN", "t" * 32)
    monkeypatch.setattr(cli._Daemon, "get_json", get_json)
    flags = ["--json"] if as_json else []
    assert main(["export", "--since", "0", *flags]) == 0
    assert main(["report", "agents", *flags]) == 0

    out, err = capsys.readouterr()
    assert _raw_controls(out + err) == []
    assert out.count("agent") >= 2


def test_error_messages_are_escaped_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["calls", "--limit", "\x1b[2J"])
    assert main(["check", str(tmp_path / "no\x1b[2Jsuch.yaml")]) != 0

    out, err = capsys.readouterr()
    assert _raw_controls(out + err) == []


def test_the_streams_are_given_back_after_each_command(tmp_path: Path) -> None:
    out, err = sys.stdout, sys.stderr
    main(["check", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit):
        main(["calls", "--limit", "0"])
    assert (sys.stdout, sys.stderr) == (out, err)

"""The one rule for hostile text (consentd/safe_text.py): stored, shown and logged safely."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import PurePosixPath

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from consentd.call_model import CallFacts, Direction
from consentd.logs import configure_logging
from consentd.policy import NumberPolicy, Recording
from consentd.safe_text import (
    ELLIPSIS,
    NETWORK_TEXT_LIMIT,
    SafeStream,
    clean_network_text,
    escape_controls,
)

HOSTILE = [
    "\x1b[2J\x1b[H",  # clear the screen
    "\x1b]0;owned\x07",  # set the window title (OSC)
    "\x1b]52;c;cm0gLXJmIH4=\x07",  # write the clipboard (OSC 52)
    "\x9b31m",  # C1 CSI
    "evil\u202egnp.exe",  # right-to-left override
    "a\x00b\x7fc\rd\ne\tf\x08",
    "\ud800",  # a lone surrogate cannot even be encoded
    "\U000e0041",  # a tag character (Cf, above U+FFFF)
]


def test_printable_text_is_unchanged() -> None:
    for text in ("+4930100001", "Zoë 'O''Brien'; DROP TABLE call_events;--", "电话", ""):
        assert escape_controls(text) == text
        assert clean_network_text(text) == text


def test_every_control_character_becomes_a_visible_json_compatible_escape() -> None:
    assert escape_controls("\x1b[2J") == "\\u001b[2J"
    assert escape_controls("\x9b31m") == "\\u009b31m"
    assert escape_controls("a\u202eb") == "a\\u202eb"
    assert escape_controls("\U000e0041") == "\\udb40\\udc41"
    for text in HOSTILE:
        escaped = escape_controls(text)
        assert escaped.isprintable()
        escaped.encode("ascii" if text.isascii() else "utf-8")  # never a lone surrogate
        # Inside a JSON string the escape reads back as the very character.
        if "\ud800" not in text:
            assert json.loads(f'"{escaped}"') == text


def test_newlines_and_tabs_may_be_kept_for_multi_line_output() -> None:
    assert escape_controls("a\nb\tc\x1b", keep="\n\t") == "a\nb\tc\\u001b"
    assert escape_controls("über\n\u202e", keep="\n") == "über\n\\u202e"


def test_network_text_is_bounded_and_marked_when_cut() -> None:
    thousand = "1" * 1000
    assert clean_network_text(thousand) == "1" * (NETWORK_TEXT_LIMIT - 1) + ELLIPSIS
    assert clean_network_text("1" * NETWORK_TEXT_LIMIT) == "1" * NETWORK_TEXT_LIMIT
    assert clean_network_text(None) == ""
    assert clean_network_text(4930100001) == "4930100001"
    # Never half an escape: the cut comes before an escape that does not fit.
    assert clean_network_text("1" * 60 + "\x1b" * 10) == "1" * 60 + ELLIPSIS
    assert clean_network_text("1" * 57 + "\x1b") == "1" * 57 + "\\u001b"


@given(st.text(max_size=300))
def test_network_text_of_anything_is_printable_bounded_and_stable(text: str) -> None:
    clean = clean_network_text(text)
    assert clean.isprintable()
    assert len(clean) <= NETWORK_TEXT_LIMIT
    clean.encode("utf-8")
    assert clean_network_text(clean) == clean  # adoption cleans the ledger's value again
    if text.isprintable() and len(text) <= NETWORK_TEXT_LIMIT:
        assert clean == text  # a real number still finds its policy
    else:
        assert clean != text  # and a hostile one never becomes a real one


@given(st.text())
def test_escaped_text_never_holds_a_control_character(text: str) -> None:
    assert escape_controls(text).isprintable()
    assert all(ch.isprintable() or ch in "\n\t" for ch in escape_controls(text, "\n\t"))


def test_a_safe_stream_escapes_what_it_is_given_and_keeps_lines() -> None:
    out = io.StringIO()
    stream = SafeStream(out)
    print("caller \x1b]0;x\x07", "table\tcell", file=stream)  # type: ignore[arg-type]
    stream.writelines(["\x9b2J\n"])
    stream.flush()
    assert out.getvalue() == "caller \\u001b]0;x\\u0007 table\tcell\n\\u009b2J\n"
    assert stream.isatty() is False  # everything else is the stream's


def _facts(call_id: str, node: str = "pbx1") -> CallFacts:
    return CallFacts(
        call_id=call_id,
        node=node,
        channel_id="1764432000.1",
        did="1/../../etc/passwd",
        caller="1",
        direction=Direction.INBOUND,
        policy=NumberPolicy(recording=Recording.ALWAYS),
        policy_source="number",
        greeting=None,
        recording_dir="/var/spool/asterisk/monitor",
        voicemail_dir="/var/spool/asterisk/recording",
    )


@given(st.text(min_size=1, max_size=200))
def test_recording_files_stay_in_their_directory_whatever_the_call_id(call_id: str) -> None:
    """File names come from the call id (node and Asterisk's channel id), never the DID;
    and even a hostile id cannot leave the recording directory."""
    facts = _facts(call_id)
    for file, directory in (
        (facts.recording_file(1), facts.recording_dir),
        (facts.voicemail_file, facts.voicemail_dir),
    ):
        path = PurePosixPath(file)
        assert str(path.parent) == directory
        assert path.name not in ("", ".", "..") and "/" not in path.name and "\x00" not in file
        assert os.path.normpath(file) == file
    assert "passwd" not in facts.recording_file(1)


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_logs_hold_no_raw_control_character_in_either_format(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = structlog.get_config()
    try:
        configure_logging(fmt, "info")
        structlog.get_logger().info("call_started", caller="+49\x1b[2J\x7f\u202e", did="1\x9b")
    finally:
        structlog.configure(**saved)

    line = capsys.readouterr().out
    text = re.sub("\x1b\\[[0-9;]*m", "", line)  # the console renderer's own colours
    assert "\\u001b[2J" in line and "\\u202e" in line
    assert [ch for ch in text if not (ch.isprintable() or ch == "\n")] == []
    if fmt == "json":
        assert json.loads(line)["caller"] == "+49\x1b[2J\x7f\u202e"

"""consentd greetings: what each number and menu plays, per language, with durations."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from consentd.cli import main
from consentd.greeting_files import GreetingCategory, bundled_greeting
from consentd.greeting_listing import GreetingListing
from consentd.policy import load_policies

POLICIES = """\
default: {recording: never}
numbers:
  "+4930100001": {recording: always}
  "+4930100002": {recording: opt_in, language: de}
  "+4930100010":
    recording: opt_in
    routing: {group: support}
    greetings: {available: welcome.wav}
  "+4930100020": {recording: opt_out, language: de, routing: {ivr: main}}
groups:
  support: {queue: support, no_answer: voicemail}
  sales: {queue: sales, no_answer: hangup}
ivr:
  main:
    options: {"1": {group: sales}, "2": {ivr: sub}}
  sub:
    invalid: {file: welcome.wav}
    options: {"9": {voicemail: true}}
"""


def tone(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "sox",
            "-n",
            "-r",
            "8000",
            "-c",
            "1",
            "-b",
            "16",
            str(path),
            "synth",
            str(seconds),
            "sine",
            "440",
        ],
        check=True,
    )


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A policy file with one custom greeting (1.5 s), and bundled sounds of 1 s each (en, de)."""
    policy = tmp_path / "policies.yaml"
    policy.write_text(textwrap.dedent(POLICIES))
    tone(tmp_path / "welcome.wav", 1.5)
    sounds = tmp_path / "sounds"
    for lang in ("en", "de"):
        for category in GreetingCategory:
            tone(bundled_greeting(sounds, lang, category), 1.0)
    return policy, sounds


def rows(listing: GreetingListing, number: str) -> list[tuple[str, str, bool, str | None]]:
    policy = listing.book.lookup(number).policy
    return [(p.category.value, p.language, p.custom, p.menu) for p in listing.number(policy)]


def test_each_number_lists_what_its_callers_hear_in_order(setup: tuple[Path, Path]) -> None:
    policy, sounds = setup
    listing = GreetingListing(load_policies(policy), sounds)
    assert rows(listing, "+4930100001") == []
    assert rows(listing, "+4930100002") == [("call_recording_opt_in", "de", False, None)]
    assert rows(listing, "+4930100010") == [
        ("available", "en", True, None),
        ("call_recording_opt_in", "en", False, None),
        ("voicemail", "en", False, None),
    ]
    # A menu number: no consent greeting (the prompt mentions 3); the menus it reaches,
    # the group behind key 1 (availability, no voicemail: sales hangs up), voicemail via sub.
    assert rows(listing, "+4930100020") == [
        ("available", "de", False, None),
        ("ivr", "de", False, "main"),
        ("ivr_invalid", "de", False, "main"),
        ("ivr", "de", False, "sub"),
        ("ivr_invalid", "de", True, "sub"),
        ("voicemail", "de", False, None),
    ]
    played = listing.number(listing.book.lookup("+4930100010").policy)
    assert [p.duration for p in played] == pytest.approx([1.5, 1.0, 1.0])
    assert played[1].path == sounds / "en" / "consentd" / "call_recording_opt_in.wav"


def test_menus_are_listed_per_language_of_the_numbers_reaching_them(
    setup: tuple[Path, Path],
) -> None:
    policy, sounds = setup
    text = policy.read_text().replace(
        '"+4930100001": {recording: always}',
        '"+4930100001": {recording: always, routing: {ivr: sub}}',
    )
    policy.write_text(text)
    listing = GreetingListing(load_policies(policy), sounds)
    assert listing.menu_languages("main") == ["de"]
    assert listing.menu_languages("sub") == ["de", "en"]
    assert [(p.category.value, p.language) for p in listing.menu("sub")] == [
        ("ivr", "de"),
        ("ivr_invalid", "de"),
        ("ivr", "en"),
        ("ivr_invalid", "en"),
    ]


def test_cli_prints_the_listing(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    policy, sounds = setup
    assert main(["greetings", str(policy), "--sounds", str(sounds)]) == 0
    out = capsys.readouterr().out
    assert "+4930100010: opt_in, language en, routing: group support" in out
    assert f"available              en  custom   1.5 s  {policy.parent / 'welcome.wav'}" in out
    assert 'menu "main": languages de' in out
    assert f"ivr (main)          de  bundled  1.0 s  {sounds}/de/consentd/ivr.wav" in out


def test_cli_names_missing_bundled_files(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy, _ = setup
    assert main(["greetings", str(policy), "--sounds", str(tmp_path / "none")]) == 1
    captured = capsys.readouterr()
    assert "MISSING" in captured.out
    assert f"{tmp_path}/none/de/consentd/call_recording_opt_in.wav" in captured.err


def test_cli_reports_policy_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("default: {recording: sometimes}\n")
    assert main(["greetings", str(policy)]) == 1
    assert "recording" in capsys.readouterr().err

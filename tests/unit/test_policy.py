"""The policy loader: what a valid file gives, and how every mistake is reported."""

from __future__ import annotations

import os
import tempfile
import textwrap
import wave
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from consentd.cli import main
from consentd.policy import (
    Group,
    NoAnswer,
    PolicyError,
    PolicyProblem,
    Recording,
    load_policies,
)

MINIMAL = """\
default: {recording: never}
numbers:
  "+4930100001": {recording: always}
  "+4930100002": {recording: opt_in, language: de}
  "+4930100003": {recording: opt_out}
  "+4930100004": {recording: never}
  "+4930100005": {recording: always, line: digital}
"""


def write(tmp_path: Path, text: str, name: str = "policies.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[PolicyProblem]:
    with pytest.raises(PolicyError) as caught:
        load_policies(path)
    return caught.value.problems


def only_problem(path: Path) -> PolicyProblem:
    problems = problems_of(path)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


# ---------------------------------------------------------------- valid files


def test_minimal_file_is_valid_and_summary_counts_five_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)

    book = load_policies(path)

    assert book.summary() == (
        f"{path}: OK, 5 numbers (always 2, opt_in 1, opt_out 1, never 1); unknown numbers: never"
    )


def test_summary_of_a_single_number_says_number_not_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'default: {recording: opt_out}\nnumbers: {"+4930100001": {recording: always}}\n'
    )

    summary = load_policies(path).summary()

    assert summary.startswith(f"{path}: OK, 1 number (")
    assert summary.endswith("unknown numbers: opt_out")


def test_listed_number_is_found_with_source_number(tmp_path: Path) -> None:
    book = load_policies(write(tmp_path, MINIMAL))

    match = book.lookup("+4930100002")

    assert match.source == "number"
    assert match.policy.recording is Recording.OPT_IN
    assert match.policy.language == "de"


def test_unlisted_number_falls_back_to_default_with_source_default(tmp_path: Path) -> None:
    book = load_policies(write(tmp_path, MINIMAL))

    match = book.lookup("+4930999999")

    assert match.source == "default"
    assert match.policy.recording is Recording.NEVER
    assert match.policy is book.config.default


def test_numbers_get_defaults_for_keys_they_leave_out(tmp_path: Path) -> None:
    book = load_policies(write(tmp_path, MINIMAL))

    policy = book.lookup("+4930100003").policy

    assert policy.line.value == "phone"
    assert policy.language == "en"
    assert policy.keep_partial_on_opt_out is False


# ---------------------------------------------------------------- digital lines


def test_opt_in_on_a_digital_line_is_rejected_naming_file_line_number_and_key(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          "+4930100001": {recording: always}
          "+4930100005":
            recording: opt_in
            line: digital
        """,
    )

    problem = only_problem(path)

    assert problem.file == path
    assert problem.line == 4
    assert problem.location == 'number "+4930100005"'
    assert problem.message == (
        "recording: opt_in is not available on a digital line (use always or never)"
    )
    assert str(problem).startswith(f'{path}:4: number "+4930100005": recording: opt_in ')


def test_opt_out_on_a_digital_line_is_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          "+4930100005": {recording: opt_out, line: digital}
        """,
    )

    problem = only_problem(path)

    assert (problem.line, problem.location) == (3, 'number "+4930100005"')
    assert "recording: opt_out is not available on a digital line" in problem.message


def test_opt_in_as_default_on_a_digital_line_is_rejected_naming_default(tmp_path: Path) -> None:
    path = write(tmp_path, "default: {recording: opt_in, line: digital}\n")

    problem = only_problem(path)

    assert (problem.line, problem.location) == (1, "default")
    assert "not available on a digital line" in problem.message


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "line", "location", "key"),
    [
        pytest.param(
            """\
            default: {recording: never}
            numbers:
              "+4930100001":
                recording: always
                colour: red
            """,
            5,
            'number "+4930100001", key colour',
            "colour",
            id="in-a-number",
        ),
        pytest.param(
            """\
            default:
              recording: never
              langauge: de
            """,
            3,
            "default, key langauge",
            "langauge",
            id="in-default",
        ),
        pytest.param(
            """\
            default: {recording: never}
            numbers: {}
            number: {"+4930100001": {recording: always}}
            """,
            3,
            "key number",
            "number",
            id="at-top-level",
        ),
        pytest.param(
            """\
            default: {recording: never}
            numbers:
              "+4930100002":
                recording: opt_in
                greetings:
                  welcome: hello.wav
            """,
            6,
            'number "+4930100002", key greetings.welcome',
            "welcome",
            id="inside-greetings",
        ),
    ],
)
def test_unknown_key_is_reported_with_its_line_and_where_it_is(
    tmp_path: Path, text: str, line: int, location: str, key: str
) -> None:
    path = write(tmp_path, text)

    problem = only_problem(path)

    assert problem.file == path
    assert problem.line == line
    assert problem.location == location
    assert problem.message == f"unknown key {key!r}"
    assert str(problem) == f"{path}:{line}: {location}: unknown key {key!r}"


# ---------------------------------------------------------------- number keys


@pytest.mark.parametrize(
    "number",
    ["4930100003", "+0123", "+49 30 1", "+4", "+4930100001234567", "0049301000", "+49-30-1"],
)
def test_number_that_is_not_e164_is_rejected_naming_the_number(tmp_path: Path, number: str) -> None:
    path = write(
        tmp_path,
        f"""\
        default: {{recording: never}}
        numbers:
          "+4930100001": {{recording: always}}
          "{number}": {{recording: opt_in}}
        """,
    )

    problem = only_problem(path)

    assert problem.line == 4
    assert problem.location == f'number "{number}"'
    assert problem.message == f"number {number!r} is not E.164 (expected + and 2-15 digits)"


def test_unquoted_number_without_plus_is_reported_as_written(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          04930100003: {recording: opt_out}
        """,
    )

    problem = only_problem(path)

    assert problem.line == 3
    assert problem.location == 'number "04930100003"'
    assert "is not E.164" in problem.message


def test_unquoted_e164_number_is_taken_as_written(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          +4930100003: {recording: opt_out}
        """,
    )

    book = load_policies(path)

    assert book.lookup("+4930100003").source == "number"


def test_empty_numbers_section_means_no_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "default: {recording: always}\nnumbers:\n")

    book = load_policies(path)

    assert book.config.numbers == {}
    assert book.lookup("+4930100001").policy.recording.value == "always"


def test_duplicate_number_reports_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          "+4930100001": {recording: always}
          "+4930100002": {recording: opt_in}
          "+4930100001": {recording: never}
        """,
    )

    problem = only_problem(path)

    assert problem.line == 5
    assert problem.location == 'number "+4930100001"'
    assert problem.message == "duplicate entry (first at line 3)"


def test_duplicate_key_inside_a_number_reports_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          "+4930100001":
            recording: always
            recording: never
        """,
    )

    problem = only_problem(path)

    assert (problem.line, problem.location) == (5, 'number "+4930100001", key recording')
    assert problem.message == "duplicate entry (first at line 4)"


def test_first_of_two_duplicate_numbers_is_the_one_that_counts(tmp_path: Path) -> None:
    """The duplicate is an error, so this only matters for the errors reported alongside."""
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          "+4930100001": {recording: opt_in, line: digital}
          "+4930100001": {recording: always}
        """,
    )

    problems = problems_of(path)

    assert [(p.line, p.message) for p in problems] == [
        (3, "recording: opt_in is not available on a digital line (use always or never)"),
        (4, "duplicate entry (first at line 3)"),
    ]


# ---------------------------------------------------------------- values


def test_bad_recording_value_lists_the_allowed_ones(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          "+4930100001":
            recording: sometimes
        """,
    )

    problem = only_problem(path)

    assert problem.line == 4
    assert problem.location == 'number "+4930100001", key recording'
    for allowed in ("'always'", "'opt_in'", "'opt_out'", "'never'"):
        assert allowed in problem.message


def test_bad_line_value_is_reported_on_its_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          "+4930100001":
            recording: always
            line: isdn
        """,
    )

    problem = only_problem(path)

    assert (problem.line, problem.location) == (5, 'number "+4930100001", key line')
    assert "'phone'" in problem.message and "'digital'" in problem.message


def test_language_without_bundled_greeting_or_custom_greeting_is_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          "+4930100003": {recording: opt_out, language: it}
        """,
    )

    problem = only_problem(path)

    assert (problem.line, problem.location) == (3, 'number "+4930100003"')
    assert problem.message == (
        "language: no bundled call_recording_opt_out greeting for 'it' (bundled: de, en, fr); "
        "set greetings.call_recording_opt_out to a file of your own"
    )


def test_language_without_bundled_greeting_is_fine_when_nothing_is_played(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers: {"+4930100001": {recording: always, language: it}}
        """,
    )

    assert load_policies(path).lookup("+4930100001").policy.language == "it"


def test_language_without_bundled_greeting_is_fine_with_a_custom_greeting(
    tmp_path: Path, wav: Callable[..., Path]
) -> None:
    greeting = wav(tmp_path / "it-opt-in.wav")
    path = write(
        tmp_path,
        f"""\
        default: {{recording: never}}
        numbers:
          "+4930100002":
            recording: opt_in
            language: it
            greetings: {{opt_in: {greeting}}}
        """,
    )

    book = load_policies(path)

    assert book.lookup("+4930100002").policy.greetings.call_recording_opt_in == greeting.resolve()
    assert book.custom_greeting_files() == {greeting.resolve()}


def test_language_that_is_not_a_language_code_is_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers: {"+4930100001": {recording: always, language: German}}
        """,
    )

    problem = only_problem(path)

    assert (problem.line, problem.location) == (2, 'number "+4930100001", key language')


# ---------------------------------------------------------------- custom greetings


def greeting_policy(tmp_path: Path, greeting: object) -> Path:
    return write(
        tmp_path,
        f"""\
        default: {{recording: never}}
        numbers:
          "+4930100002":
            recording: opt_in
            greetings:
              opt_in: {greeting}
        """,
    )


GREETING_KEY = 'number "+4930100002", key greetings.opt_in'


@pytest.mark.parametrize("empty", ["null", "", "~"])
def test_a_greeting_key_left_empty_names_no_file_and_the_bundled_greeting_plays(
    tmp_path: Path, empty: str
) -> None:
    # Found by the policy fuzz: ``opt_in: null`` raised AttributeError, not a clear result.
    book = load_policies(greeting_policy(tmp_path, empty))

    assert book.lookup("+4930100002").policy.greetings.call_recording_opt_in is None


def test_custom_greeting_that_is_missing_is_reported_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "greetings" / "hello.wav"

    problem = only_problem(greeting_policy(tmp_path, missing))

    assert (problem.line, problem.location) == (6, GREETING_KEY)
    assert problem.message == f"greeting file {str(missing)!r} does not exist"


def test_custom_greeting_that_is_a_directory_is_rejected(tmp_path: Path) -> None:
    directory = tmp_path / "hello.wav"
    directory.mkdir()

    problem = only_problem(greeting_policy(tmp_path, directory))

    assert (problem.line, problem.location) == (6, GREETING_KEY)
    assert problem.message.startswith(f"greeting file {str(directory)!r} ")


def test_custom_greeting_that_cannot_be_read_is_rejected(
    tmp_path: Path, wav: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, for whom chmod 000 still reads; pretend the permission is missing.
    greeting = wav(tmp_path / "hello.wav")
    real_access = os.access
    monkeypatch.setattr(
        "consentd.greeting_files.os.access",
        lambda path, mode: False if Path(path) == greeting else real_access(path, mode),
    )

    problem = only_problem(greeting_policy(tmp_path, greeting))

    assert (problem.line, problem.location) == (6, GREETING_KEY)
    assert problem.message == f"greeting file {str(greeting)!r} is not readable (permission denied)"


def test_custom_greeting_that_is_neither_wav_nor_mp3_by_name_is_rejected(
    tmp_path: Path, wav: Callable[..., Path]
) -> None:
    greeting = wav(tmp_path / "hello.ogg")

    problem = only_problem(greeting_policy(tmp_path, greeting))

    assert problem.message == (
        f"greeting file {str(greeting)!r} has '.ogg'; a greeting must be a .wav or .mp3 file"
    )


def test_custom_greeting_of_random_bytes_named_wav_is_rejected_as_invalid_wav(
    tmp_path: Path,
) -> None:
    greeting = tmp_path / "hello.wav"
    greeting.write_bytes(bytes(range(256)) * 4)

    problem = only_problem(greeting_policy(tmp_path, greeting))

    assert (problem.line, problem.location) == (6, GREETING_KEY)
    assert problem.message.startswith(
        f"greeting file {str(greeting)!r} is corrupt or not a supported audio file: "
    )


def test_custom_greeting_cut_off_inside_its_header_is_rejected_as_invalid_wav(
    tmp_path: Path, wav: Callable[..., Path]
) -> None:
    greeting = wav(tmp_path / "hello.wav")
    greeting.write_bytes(greeting.read_bytes()[:30])

    problem = only_problem(greeting_policy(tmp_path, greeting))

    assert "is corrupt or not a supported audio file" in problem.message


@pytest.mark.parametrize(
    "shape", [{"rate": 16000, "channels": 2}, {"width": 1}, {"rate": 44100}], ids=str
)
def test_custom_greeting_of_any_wav_shape_is_converted_at_load_for_asterisk(
    tmp_path: Path, wav: Callable[..., Path], shape: dict[str, int]
) -> None:
    greeting = wav(tmp_path / "hello.wav", seconds=1, **shape)

    book = load_policies(greeting_policy(tmp_path, greeting), cache_dir=tmp_path / "cache")

    prepared = book.prepared[greeting.resolve()]
    with wave.open(str(prepared.path), "rb") as converted:
        assert (converted.getframerate(), converted.getnchannels(), converted.getsampwidth()) == (
            8000,
            1,
            2,
        )
    assert prepared.duration == pytest.approx(1.0, abs=0.01)
    assert prepared.path.parent == tmp_path / "cache"


def test_custom_greeting_longer_than_max_greeting_seconds_is_rejected(
    tmp_path: Path, wav: Callable[..., Path]
) -> None:
    greeting = wav(tmp_path / "hello.wav", seconds=3)
    path = greeting_policy(tmp_path, greeting)
    path.write_text("max_greeting_seconds: 2\n" + path.read_text())

    problem = only_problem(path)

    assert problem.location == GREETING_KEY
    assert problem.message == (
        f"greeting file {str(greeting)!r} is 3.0 s long, longer than the limit "
        "max_greeting_seconds=2"
    )


def test_a_menu_prompt_set_on_a_number_is_in_the_wrong_place(
    tmp_path: Path, wav: Callable[..., Path]
) -> None:
    greeting = wav(tmp_path / "menu.wav")
    path = write(
        tmp_path,
        f"""\
        default: {{recording: never}}
        numbers:
          "+4930100002": {{recording: opt_in, greetings: {{ivr: {greeting}}}}}
        """,
    )

    problem = only_problem(path)

    assert problem.location == 'number "+4930100002", key greetings'
    assert f"greeting file {str(greeting)!r} is set as 'ivr', which a number does not play" in (
        problem.message
    )


def test_custom_greeting_without_audio_is_rejected(
    tmp_path: Path, wav: Callable[..., Path]
) -> None:
    greeting = wav(tmp_path / "hello.wav", seconds=0)

    problem = only_problem(greeting_policy(tmp_path, greeting))

    assert problem.message == f"greeting file {str(greeting)!r} contains no audio (0 frames)"


def test_relative_greeting_path_is_resolved_from_the_policy_files_directory(
    tmp_path: Path, wav: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc" / "consentd"
    greeting = wav(conf / "greetings" / "hello.wav")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    book = load_policies(greeting_policy(conf, "greetings/hello.wav"))

    assert book.lookup("+4930100002").policy.greetings.call_recording_opt_in == greeting.resolve()


def test_relative_greeting_path_that_is_missing_names_the_resolved_path(tmp_path: Path) -> None:
    conf = tmp_path / "etc"

    problem = only_problem(greeting_policy(conf, "greetings/hello.wav"))

    expected = conf / "greetings" / "hello.wav"
    assert problem.message == f"greeting file {str(expected)!r} does not exist"


def test_custom_greeting_in_default_is_reported_on_default(tmp_path: Path) -> None:
    path = write(
        tmp_path, "default:\n  recording: opt_out\n  greetings:\n    opt_out: nothere.wav\n"
    )

    problem = only_problem(path)

    assert (problem.line, problem.location) == (4, "default, key greetings.opt_out")
    assert "does not exist" in problem.message


# ---------------------------------------------------------------- groups and routing

ROUTED = """\
default: {recording: never}
numbers:
  "+4930100010": {recording: opt_in, routing: {group: support}}
groups:
  support: {queue: support, timeout: 20, no_answer: voicemail}
"""


def test_routed_number_loads_with_its_group(tmp_path: Path) -> None:
    book = load_policies(write(tmp_path, ROUTED))

    policy = book.lookup("+4930100010").policy
    group = book.group_of(policy)

    assert policy.routing is not None and policy.routing.group == "support"
    assert group == Group(queue="support", timeout=20, no_answer=NoAnswer.VOICEMAIL)
    assert group.voicemail_max_seconds == 120
    assert book.group_of(book.config.default) is None


def test_group_gets_defaults_for_keys_it_leaves_out(tmp_path: Path) -> None:
    path = write(tmp_path, "default: {recording: never}\ngroups:\n  sales: {queue: sales-q}\n")

    group = load_policies(path).config.groups["sales"]

    assert (group.queue, group.timeout, group.no_answer, group.voicemail_max_seconds) == (
        "sales-q",
        30,
        NoAnswer.VOICEMAIL,
        120,
    )


def test_routed_number_needs_the_availability_and_voicemail_greetings_besides_consent(
    tmp_path: Path,
) -> None:
    policy = load_policies(write(tmp_path, ROUTED)).lookup("+4930100010").policy

    assert [k.value for k in policy.greeting_kinds_needed] == [
        "available",
        "call_recording_opt_in",
        "voicemail",
    ]


def test_route_to_an_undefined_group_names_file_line_number_key_and_the_defined_groups(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          "+4930100010": {recording: opt_in, routing: {group: support}}
          "+4930100011":
            recording: always
            routing:
              group: sales
        groups:
          support: {queue: support}
          billing: {queue: billing}
        """,
    )

    problem = only_problem(path)

    assert problem.file == path
    assert problem.line == 7
    assert problem.location == 'number "+4930100011", key routing.group'
    assert problem.message == (
        "group 'sales' is not defined under groups (defined: billing, support)"
    )
    assert str(problem) == (
        f'{path}:7: number "+4930100011", key routing.group: '
        "group 'sales' is not defined under groups (defined: billing, support)"
    )


def test_route_without_any_groups_says_none_are_defined(tmp_path: Path) -> None:
    path = write(tmp_path, "default:\n  recording: never\n  routing: {group: support}\n")

    problem = only_problem(path)

    assert (problem.line, problem.location) == (3, "default, key routing.group")
    assert problem.message == "group 'support' is not defined under groups (defined: none)"


@pytest.mark.parametrize(
    ("group", "key", "message"),
    [
        pytest.param(
            "{queue: support, no_answer: busy}",
            "no_answer",
            "Input should be 'voicemail' or 'hangup'",
            id="bad-no-answer",
        ),
        pytest.param(
            "{queue: support, timeout: 0}",
            "timeout",
            "Input should be greater than or equal to 1",
            id="timeout-0",
        ),
        pytest.param(
            "{queue: support, timeout: -5}",
            "timeout",
            "Input should be greater than or equal to 1",
            id="timeout-negative",
        ),
        pytest.param(
            "{queue: support, colour: red}",
            "colour",
            "unknown key 'colour'",
            id="unknown-key",
        ),
        pytest.param(
            "{queue: 'support;Dial(PJSIP/x)'}",
            "queue",
            "String should match pattern '^[A-Za-z0-9_.-]+$'",
            id="queue-with-dialplan-characters",
        ),
        pytest.param(
            "{queue: sup port}",
            "queue",
            "String should match pattern '^[A-Za-z0-9_.-]+$'",
            id="queue-with-a-space",
        ),
    ],
)
def test_bad_group_setting_is_reported_on_its_key(
    tmp_path: Path, group: str, key: str, message: str
) -> None:
    path = write(
        tmp_path,
        f"""\
        default: {{recording: never}}
        numbers:
          "+4930100010": {{recording: opt_in, routing: {{group: support}}}}
        groups:
          support: {group}
        """,
    )

    problem = only_problem(path)

    assert problem.line == 5
    assert problem.location == f"key groups.support.{key}"
    assert problem.message == message


def test_group_without_a_queue_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "default: {recording: never}\ngroups:\n  support: {timeout: 20}\n")

    problem = only_problem(path)

    assert (problem.line, problem.location, problem.message) == (
        3,
        "key groups.support.queue",
        "Field required",
    )


@pytest.mark.parametrize("kind", ["available", "voicemail"])
def test_custom_availability_and_voicemail_greetings_are_validated_like_opt_in(
    tmp_path: Path, wav: Callable[..., Path], kind: str
) -> None:
    empty = wav(tmp_path / f"{kind}.wav", seconds=0)
    path = write(
        tmp_path,
        f"""\
        default: {{recording: never}}
        numbers:
          "+4930100010":
            recording: opt_in
            routing: {{group: support}}
            greetings:
              {kind}: {empty}
        groups:
          support: {{queue: support}}
        """,
    )

    problem = only_problem(path)

    assert (problem.line, problem.location) == (7, f'number "+4930100010", key greetings.{kind}')
    assert problem.message == f"greeting file {str(empty)!r} contains no audio (0 frames)"


def test_custom_availability_and_voicemail_greetings_are_installed_like_opt_in(
    tmp_path: Path, wav: Callable[..., Path]
) -> None:
    available = wav(tmp_path / "available.wav")
    voicemail = wav(tmp_path / "voicemail.wav", seconds=0.2)
    path = write(
        tmp_path,
        f"""\
        default: {{recording: never}}
        numbers:
          "+4930100010":
            recording: never
            routing: {{group: support}}
            greetings: {{available: {available}, voicemail: {voicemail}}}
        groups:
          support: {{queue: support}}
        """,
    )

    book = load_policies(path)

    policy = book.lookup("+4930100010").policy
    assert (policy.greetings.available, policy.greetings.voicemail) == (
        available.resolve(),
        voicemail.resolve(),
    )
    assert book.custom_greeting_files() == {available.resolve(), voicemail.resolve()}


def routed_in_french(tmp_path: Path, greetings: dict[str, Path]) -> Path:
    listed = ", ".join(f"{kind}: {file}" for kind, file in greetings.items())
    return write(
        tmp_path,
        f"""\
        default: {{recording: never}}
        numbers:
          "+4930100010":
            recording: opt_in
            language: it
            routing: {{group: support}}
            greetings: {{{listed}}}
        groups:
          support: {{queue: support}}
        """,
    )


def test_routed_number_in_a_language_without_bundled_greetings_names_every_missing_one(
    tmp_path: Path,
) -> None:
    problem = only_problem(routed_in_french(tmp_path, {}))

    assert (problem.line, problem.location) == (3, 'number "+4930100010"')
    assert problem.message == (
        "language: no bundled available, call_recording_opt_in and voicemail greetings for 'it' "
        "(bundled: de, en, fr); set greetings.available, greetings.call_recording_opt_in and "
        "greetings.voicemail to files of your own"
    )


@pytest.mark.parametrize("missing", ["available", "opt_in", "voicemail"])
def test_routed_number_in_a_language_without_bundled_greetings_needs_each_of_the_three(
    tmp_path: Path, wav: Callable[..., Path], missing: str
) -> None:
    given = {
        kind: wav(tmp_path / f"it-{kind}.wav")
        for kind in ("available", "opt_in", "voicemail")
        if kind != missing
    }

    problem = only_problem(routed_in_french(tmp_path, given))

    assert (problem.line, problem.location) == (3, 'number "+4930100010"')
    name = {"opt_in": "call_recording_opt_in"}.get(missing, missing)
    assert problem.message == (
        f"language: no bundled {name} greeting for 'it' (bundled: de, en, fr); "
        f"set greetings.{name} to a file of your own"
    )


def test_routed_number_in_a_language_without_bundled_greetings_loads_with_all_three(
    tmp_path: Path, wav: Callable[..., Path]
) -> None:
    given = {
        kind: wav(tmp_path / f"it-{kind}.wav") for kind in ("available", "opt_in", "voicemail")
    }

    book = load_policies(routed_in_french(tmp_path, given))

    assert book.lookup("+4930100010").policy.language == "it"
    assert book.custom_greeting_files() == {file.resolve() for file in given.values()}


# ---------------------------------------------------------------- whole-file problems


def test_yaml_syntax_error_reports_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          "+4930100001": {recording: always}
         "+4930100002": {recording: opt_in}
        """,
    )

    problem = only_problem(path)

    assert problem.line == 4
    assert problem.message.startswith("invalid YAML: ")
    assert str(problem).startswith(f"{path}:4: invalid YAML: ")


def test_tab_indentation_is_a_yaml_error_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text('default: {recording: never}\nnumbers:\n\t"+4930100001": {recording: always}\n')

    problem = only_problem(path)

    assert problem.line == 3
    assert "invalid YAML" in problem.message


def test_empty_file_is_rejected_as_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "")

    problem = only_problem(path)

    assert problem.line is None
    assert str(problem) == f"{path}: expected a mapping with 'default' and 'numbers'"


def test_file_holding_a_list_is_rejected_as_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- default\n- numbers\n")

    problem = only_problem(path)

    assert problem.message == "expected a mapping with 'default' and 'numbers'"


def test_missing_default_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, 'numbers:\n  "+4930100001": {recording: always}\n')

    problem = only_problem(path)

    assert (problem.location, problem.message) == ("default", "Field required")


def test_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    problem = only_problem(path)

    assert str(problem) == f"{path}: file not found"


def test_directory_given_as_policy_file_cannot_be_read(tmp_path: Path) -> None:
    problem = only_problem(tmp_path)

    assert problem.file == tmp_path
    assert problem.message.startswith("cannot read file: ")


def test_file_that_is_not_utf8_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"default: {recording: n\xe9ver}\n")

    problem = only_problem(path)

    assert problem.message.startswith("cannot read file: ")
    assert "utf-8" in problem.message


def test_every_error_in_a_file_is_reported_at_once_in_line_order(
    tmp_path: Path, wav: Callable[..., Path]
) -> None:
    stereo = wav(tmp_path / "stereo.wav", seconds=0)  # no audio: refused
    path = write(
        tmp_path,
        f"""\
        default: {{recording: never, colour: red}}
        numbers:
          "+4930100001": {{recording: always}}
          "4930100002": {{recording: opt_in}}
          4930100003: {{recording: opt_out}}
          "+4930100004": {{recording: opt_in, line: digital}}
          "+4930100005": {{recording: sometimes}}
          "+4930100006": {{recording: opt_in, language: it}}
          "+4930100001": {{recording: never}}
          "+4930100007": {{recording: opt_in, greetings: {{opt_in: {stereo}}}}}
        extra: 1
        """,
    )

    problems = problems_of(path)

    assert [(p.line, p.location) for p in problems] == [
        (1, "default, key colour"),
        (4, 'number "4930100002"'),
        (5, 'number "4930100003"'),
        (6, 'number "+4930100004"'),
        (7, 'number "+4930100005", key recording'),
        (8, 'number "+4930100006"'),
        (9, 'number "+4930100001"'),
        (10, 'number "+4930100007", key greetings.opt_in'),
        (11, "key extra"),
    ]
    assert all(p.file == path for p in problems)


# ---------------------------------------------------------------- consentd check


def test_check_of_a_valid_file_exits_0_with_a_one_line_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MINIMAL)

    code = main(["check", str(path)])

    out, err = capsys.readouterr()
    assert code == 0
    assert out == (
        f"{path}: OK, 5 numbers (always 2, opt_in 1, opt_out 1, never 1); unknown numbers: never\n"
    )
    assert err == ""


def test_check_of_a_bad_file_prints_every_error_and_the_count_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          "+4930100001": {recording: always, foo: 1}
          "+4930100005": {recording: opt_out, line: digital}
          "+4930100001": {recording: never}
        """,
    )

    code = main(["check", str(path)])

    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    assert err.splitlines() == [
        f"{path}:3: number \"+4930100001\", key foo: unknown key 'foo'",
        f'{path}:4: number "+4930100005": recording: opt_out is not available on a digital line'
        " (use always or never)",
        f'{path}:5: number "+4930100001": duplicate entry (first at line 3)',
        f"{path}: 3 errors",
    ]


def test_check_of_a_missing_file_says_so_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nope.yaml"

    code = main(["check", str(path)])

    err = capsys.readouterr().err
    assert code == 2  # could not be read: not "the file has errors" (1)
    assert err.splitlines() == [f"{path}: file not found"]


# ---------------------------------------------------------------- properties

E164 = st.from_regex(r"\+[1-9][0-9]{1,14}", fullmatch=True)


@st.composite
def not_e164(draw: st.DrawFn) -> str:
    """A valid number with at least one character that is not a digit put into it."""
    number = draw(E164)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(number)))
        stray = draw(st.characters(exclude_characters="0123456789", exclude_categories=["Cs"]))
        number = number[:at] + stray + number[at:]
    return number


def load_single_number(number: str) -> list[PolicyProblem]:
    """Load a file whose only number is ``number``, written as a double-quoted YAML string."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policies.yaml"
        key = yaml.safe_dump(number, default_style='"', width=1_000_000).strip()
        path.write_text(
            f"default: {{recording: never}}\nnumbers:\n  {key}: {{recording: always}}\n",
            encoding="utf-8",
        )
        try:
            book = load_policies(path)
        except PolicyError as exc:
            return exc.problems
        assert book.lookup(number).source == "number"
        return []


@given(E164)
def test_any_e164_number_is_accepted_as_a_number_key(number: str) -> None:
    assert load_single_number(number) == []


@given(not_e164())
@example("+4930100001\n")  # `$` in a Python regex also matches before a final newline
def test_number_with_any_other_character_is_rejected_naming_that_number(number: str) -> None:
    problems = load_single_number(number)

    assert len(problems) == 1
    assert problems[0].line == 3
    assert problems[0].location == f'number "{number}"'
    assert problems[0].message == f"number {number!r} is not E.164 (expected + and 2-15 digits)"

"""Hostile policy files (issue 11, point 5): each is refused quickly with one clear
error naming the line, by every command that loads a policy file, and by a reload.

Exit codes: 0 valid, 1 the file has errors, 2 it could not be read (missing,
unreadable, too big, not a regular file) or a setting is wrong.
"""

from __future__ import annotations

import os
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from consentd import yaml_source
from consentd.cli import main
from consentd.http_api import Health, init_app
from consentd.ledger import LedgerEvent
from consentd.policy import PolicyError, load_policies
from consentd.reload import PolicyReloader
from tests.unit.conftest import T0
from tests.unit.time_bounds import alarm_after, cpu_bound

VALID = 'default: {recording: never}\nnumbers:\n  "+4930100001": {recording: always}\n'

#: The classic "billion laughs", 366 bytes: nine levels of nine aliases, 10^9 strings.
LAUGHS = (
    "# 9 levels of 9 aliases\n"
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
    "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
)
LAUGHS_ERROR = (
    "7: aliases expand to more than 100000 values (at alias *e); "
    "write the values out or use fewer aliases"
)
TOO_DEEP = "nested deeper than 64 levels (lists and mappings)"
TAG_REFUSED = (
    "is not allowed in a policy file (only plain text, numbers, true/false, lists and mappings)"
)


@pytest.fixture(autouse=True)
def no_consentd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits and greeting directories come from CONSENTD_* variables: not the host's."""
    for name in list(os.environ):
        if name.startswith("CONSENTD_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "policies.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of ``consentd ARGV``, within a second of CPU time."""
    with alarm_after(5), cpu_bound(1):
        code = main(list(argv))
    return code, capsys.readouterr().err.splitlines()


def only_error(path: Path) -> str:
    with alarm_after(5), pytest.raises(PolicyError) as caught:
        load_policies(path)
    [problem] = caught.value.problems
    return str(problem)


# ---------------------------------------------------------------- aliases and nesting


def test_billion_laughs_of_366_bytes_fails_fast_at_the_alias_that_crosses_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, LAUGHS)
    assert path.stat().st_size == 366

    code, err = check(capsys, "check", str(path))

    assert code == 1
    assert err == [f"{path}:{LAUGHS_ERROR}", f"{path}: 1 error"]


def test_recursive_alias_is_refused_naming_its_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "default: {recording: never}\nnumbers: &n\n  x: [*n]\n")

    code, err = check(capsys, "check", str(path))

    assert code == 1
    assert err == [
        f"{path}:3: alias *n is recursive: it is inside the value it refers to (&n at line 2)",
        f"{path}: 1 error",
    ]


def test_alias_to_an_anchor_not_defined_yet_is_a_yaml_error(tmp_path: Path) -> None:
    path = write(tmp_path, "default: *d\nnumbers: &d {}\n")

    assert only_error(path) == f"{path}:1: alias *d refers to no anchor defined above it"


def test_an_anchor_defined_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "default: &d {recording: never}\nnumbers: &d {}\n")

    assert only_error(path) == f"{path}:2: anchor &d is defined twice (first at line 1)"


@pytest.mark.parametrize("parser", ["libyaml", "pyyaml"])
def test_twenty_thousand_nested_brackets_are_refused_without_recursion_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, parser: str
) -> None:
    if parser == "pyyaml":
        monkeypatch.setattr(yaml_source, "PARSER", yaml.SafeLoader)
    path = write(tmp_path, "default: {recording: never}\nnumbers: " + "[" * 20_000 + "\n")

    code, err = check(capsys, "check", str(path))

    assert code == 1
    assert err == [f"{path}:2: {TOO_DEEP}", f"{path}: 1 error"]


def test_nesting_by_indentation_is_limited_too(tmp_path: Path) -> None:
    path = write(tmp_path, "".join(f"{'  ' * i}k:\n" for i in range(100)))

    assert only_error(path) == f"{path}:64: {TOO_DEEP}"


def test_a_chain_of_aliases_cannot_nest_deeper_than_the_limit(tmp_path: Path) -> None:
    chain = "l0: &l0 [x]\n" + "".join(f"l{i}: &l{i} [*l{i - 1}]\n" for i in range(1, 200))
    path = write(tmp_path, chain)

    assert only_error(path) == f"{path}:63: {TOO_DEEP}"


def test_nesting_up_to_the_limit_is_read(tmp_path: Path) -> None:
    # The top mapping (1), x (2), then 62 lists: 64 levels in all.
    path = write(tmp_path, "default: {recording: never}\nx: " + "[" * 62 + "]" * 62 + "\n")

    assert only_error(path) == f"{path}:2: key x: unknown key 'x'"


def test_aliases_a_policy_file_uses_are_fine(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "default: &plain {recording: never}\n"
        "numbers:\n"
        + "".join(f'  "+49301000{i:02d}": *plain\n' for i in range(50))
        + '  "+4930100099": {recording: opt_in, greetings: &g {}}\n',
    )

    book = load_policies(path)

    assert len(book.config.numbers) == 51


# ---------------------------------------------------------------- merge keys and tags


def test_merge_keys_are_supported_and_the_keys_written_out_win(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "default: &base {recording: opt_in, keep_partial_on_opt_out: true}\n"
        "numbers:\n"
        '  "+4930100001": {<<: *base, recording: opt_out}\n'
        '  "+4930100002":\n'
        "    <<: [{language: de}, *base, {language: fr}]\n",
    )

    book = load_policies(path)

    first = book.lookup("+4930100001").policy
    assert (first.recording.value, first.keep_partial_on_opt_out) == ("opt_out", True)
    second = book.lookup("+4930100002").policy
    assert (second.recording.value, second.language) == ("opt_in", "de")


def test_a_mistake_brought_in_by_a_merge_key_is_reported_on_the_merge_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "default: &base {recording: never}\n"
        "numbers:\n"
        '  "+4930100001": {recording: always}\n'
        '  "+4930100002":\n'
        "    line: digital\n"
        "    <<: [{recording: opt_in, colour: red}, *base]\n",
    )

    code, err = check(capsys, "check", str(path))

    assert code == 1
    assert err == [
        f"{path}:6: number \"+4930100002\", key colour: unknown key 'colour'",
        f"{path}: 1 error",
    ]


def test_a_merge_key_takes_only_mappings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "default: {<<: [never]}\n")

    code, err = check(capsys, "check", str(path))

    assert code == 1
    assert err == [
        f"{path}:1: a merge key (<<) takes a mapping or a list of mappings, "
        "such as <<: *defaults or <<: [*a, *b]",
        f"{path}: 1 error",
    ]


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/name:os.system never", "!!python/name:os.system"),
        ("!!python/object/apply:os.system [id]", "!!python/object/apply:os.system"),
        ("!!binary bmV2ZXI=", "!!binary"),
        ("!custom never", "!custom"),
        ("!!set {never: null}", "!!set"),
        ("!!omap [{a: 1}]", "!!omap"),
    ],
)
def test_tags_beyond_plain_values_are_refused_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, tag: str
) -> None:
    path = write(tmp_path, f"numbers: {{}}\ndefault: {{recording: {value}}}\n")

    code, err = check(capsys, "check", str(path))

    assert code == 1
    assert err == [f"{path}:2: tag {tag} {TAG_REFUSED}", f"{path}: 1 error"]


def test_a_python_tag_on_a_key_is_refused_too(tmp_path: Path) -> None:
    path = write(tmp_path, "default: {recording: never}\n!!python/name:os.system x: 1\n")

    assert only_error(path) == f"{path}:2: tag !!python/name:os.system {TAG_REFUSED}"


def test_plain_tags_are_read_as_their_type(tmp_path: Path) -> None:
    path = write(tmp_path, "default: !!map {recording: !!str never}\nnumbers: !!map {}\n")

    assert load_policies(path).config.default.recording.value == "never"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-13-45", "'2026-13-45' is not a valid date or time; quote it to use it as text"),
        ("!!timestamp soon", "'soon' is not a valid date or time; quote it to use it as text"),
        ("!!int twelve", "'twelve' is not a valid whole number"),
        ("1" * 5000, f"'{'1' * 40}...' is not a valid whole number"),
        ("!!bool maybe", "'maybe' is not a valid true/false value; quote it to use it as text"),
    ],
)
def test_a_value_its_type_cannot_hold_is_refused_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    path = write(tmp_path, f"default: {{recording: never}}\nmax_greeting_seconds: {value}\n")

    code, err = check(capsys, "check", str(path))

    assert code == 1
    assert err == [f"{path}:2: {message}", f"{path}: 1 error"]


def test_a_valid_date_is_just_a_wrong_value(tmp_path: Path) -> None:
    path = write(tmp_path, "default: {recording: 2026-11-30}\n")

    assert only_error(path).startswith(f"{path}:1: default, key recording: Input should be ")


def test_a_second_document_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "---\n" + VALID)

    assert only_error(path) == (
        f"{path}:4: a second YAML document (---) in the file; a policy file is one document"
    )


def test_a_control_character_is_a_yaml_error_on_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "# \x1b[2J\n")

    assert only_error(path) == f"{path}:4: invalid YAML: #x001b is not allowed"


# ---------------------------------------------------------------- what is read at all


def test_dev_zero_is_refused_without_reading_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = check(capsys, "check", "/dev/zero")

    assert code == 2
    assert err == ["/dev/zero: cannot read file: it is not a regular file (a character device)"]


def test_a_fifo_is_refused_without_waiting_for_a_writer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "policies.yaml"
    os.mkfifo(fifo)

    code, err = check(capsys, "check", str(fifo))

    assert code == 2
    assert err == [f"{fifo}: cannot read file: it is not a regular file (a FIFO)"]


def test_a_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = check(capsys, "check", str(tmp_path))

    assert code == 2
    assert err == [f"{tmp_path}: cannot read file: it is not a regular file (a directory)"]


def test_a_missing_file_is_an_io_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = check(capsys, "check", str(tmp_path / "nope.yaml"))

    assert code == 2
    assert err == [f"{tmp_path / 'nope.yaml'}: file not found"]


def test_an_unreadable_file_is_an_io_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, VALID)
    real_open = os.open

    def refuse(file: Any, flags: int, *args: Any) -> int:
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", refuse)

    code, err = check(capsys, "check", str(path))

    assert code == 2
    assert err == [f"{path}: cannot read file: Permission denied"]


def test_a_file_over_the_default_10_mb_is_refused_without_reading_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policies.yaml"
    with path.open("wb") as file:
        file.truncate(10 * 1024 * 1024 + 1)  # sparse: nothing to write or read
    reads: list[int] = []
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read)

    code, err = check(capsys, "check", str(path))

    assert code == 2
    assert err == [
        f"{path}: cannot read file: it is larger than 10485760 bytes, the most a policy file "
        "may hold (CONSENTD_MAX_POLICY_BYTES)"
    ]
    assert reads == []


def test_the_size_limit_is_configurable_and_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, VALID)
    size = path.stat().st_size
    monkeypatch.setenv("CONSENTD_MAX_POLICY_BYTES", str(size))
    assert check(capsys, "check", str(path))[0] == 0

    monkeypatch.setenv("CONSENTD_MAX_POLICY_BYTES", str(size - 1))
    code, err = check(capsys, "check", str(path))

    assert code == 2
    assert err == [
        f"{path}: cannot read file: it is larger than {size - 1} bytes, the most a policy "
        "file may hold (CONSENTD_MAX_POLICY_BYTES)"
    ]


def test_a_file_growing_past_the_limit_while_read_is_cut_at_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)

    with pytest.raises(yaml_source.YamlSourceError) as caught:
        yaml_source.read_limited(path, 10)

    assert caught.value.io_error
    assert "larger than 10 bytes" in caught.value.message


@pytest.mark.parametrize("value", ["ten", "0", "-5"])
def test_a_size_limit_that_is_no_size_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    path = write(tmp_path, VALID)
    monkeypatch.setenv("CONSENTD_MAX_POLICY_BYTES", value)

    code, err = check(capsys, "check", str(path))

    assert code == 2
    assert err == [f"{path}: CONSENTD_MAX_POLICY_BYTES must be a positive number of bytes"]


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"default: {recording: never}\nnumbers:\n  x: n\xe9ver\n")

    assert only_error(path) == (
        f"{path}:3: cannot read file: it is not UTF-8 text (byte 0xe9 is not valid utf-8 there)"
    )


# ---------------------------------------------------------------- every command


@pytest.fixture
def daemon_secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What `consentd run` wants before it reads the policy file; its logging set back after."""
    for name in ("ARI_PASSWORD", "AMI_SECRET", "API_TOKEN"):
        monkeypatch.setenv(f"CONSENTD_{name}", "x" * 48)
    monkeypatch.setenv("CONSENTD_DATABASE_URL", "postgresql://consentd@127.0.0.1:1/consentd")
    logging = structlog.get_config()
    yield
    structlog.configure(**logging)


@pytest.mark.usefixtures("daemon_secrets")
@pytest.mark.parametrize("command", ["run", "greetings", "features", "check"])
def test_every_command_that_loads_a_policy_file_exits_1_on_errors_and_2_when_unreadable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    laughs = write(tmp_path, LAUGHS, "laughs.yaml")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)

    def argv(file: Path) -> list[str]:
        return ["run", "--policies", str(file)] if command == "run" else [command, str(file)]

    code, err = check(capsys, *argv(laughs))
    assert code == 1
    assert f"{laughs}:{LAUGHS_ERROR}" in err
    assert not any("Traceback" in line for line in err)

    code, err = check(capsys, *argv(fifo))
    assert code == 2
    assert err[-1] == f"{fifo}: cannot read file: it is not a regular file (a FIFO)"


@pytest.mark.usefixtures("daemon_secrets")
def test_run_says_why_it_does_not_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    laughs = write(tmp_path, LAUGHS)

    code, err = check(capsys, "run", "--policies", str(laughs))
    assert (code, err) == (
        1,
        [
            "consentd: not starting, the policy file has errors:",
            f"{laughs}:{LAUGHS_ERROR}",
            f"{laughs}: 1 error",
        ],
    )

    code, err = check(capsys, "run", "--policies", str(tmp_path / "nope.yaml"))
    assert (code, err) == (
        2,
        [
            "consentd: not starting, the policy file cannot be read:",
            f"{tmp_path / 'nope.yaml'}: file not found",
        ],
    )


class Installed:
    pass


def reloader_for(file: Path) -> tuple[PolicyReloader, list[LedgerEvent]]:
    rows: list[LedgerEvent] = []
    reloader = PolicyReloader(
        load_policies(file),
        install=lambda book: Installed(),  # type: ignore[arg-type,return-value]
        apply=lambda book, greetings: None,
        submit=rows.append,
        clock=lambda: T0,
        node="pbx1",
        boot_id="b007",
    )
    return reloader, rows


@pytest.mark.parametrize(
    ("hostile", "error"),
    [
        ("laughs", LAUGHS_ERROR),
        ("deep", f"2: {TOO_DEEP}"),
        ("python", f"2: tag !!python/name:os.system {TAG_REFUSED}"),
        ("fifo", ": cannot read file: it is not a regular file (a FIFO)"),
    ],
)
async def test_a_hostile_file_on_reload_is_a_422_with_the_error_and_the_daemon_goes_on(
    tmp_path: Path, hostile: str, error: str
) -> None:
    file = write(tmp_path, VALID)
    reloader, rows = reloader_for(file)
    good = reloader.book
    file.unlink()
    if hostile == "fifo":
        os.mkfifo(file)
    else:
        file.write_text(
            {
                "laughs": LAUGHS,
                "deep": "numbers: {}\ndefault: " + "[" * 20_000 + "\n",
                "python": "numbers: {}\ndefault: !!python/name:os.system x\n",
            }[hostile]
        )
    app = init_app(
        lambda: Health(ari=True, ami=True, database=True, active_calls=0, ledger_backlog=0),
        CollectorRegistry(),
        no_calls,
        reload=lambda: reloader.reload("http"),
        api_token="t",
    )

    async with TestClient(TestServer(app), headers={"Authorization": "Bearer t"}) as client:
        with cpu_bound(1):
            response = await client.post("/reload")

        assert response.status == 422
        assert (await response.json())["errors"] == [
            f"{file}{':' if error[0] != ':' else ''}{error}"
        ]
    assert reloader.book is good
    assert [row.kind for row in rows] == ["policies_reload_refused"]


async def no_calls(limit: int) -> list[dict[str, Any]]:
    return []


# ---------------------------------------------------------------- greeting paths


def write_wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x01\x00" * 4000)
    return path


def greeting_policy(directory: Path, greeting: str | Path) -> Path:
    return write(
        directory,
        'default: {recording: never}\nnumbers:\n  "+4930100002":\n'
        f"    recording: opt_in\n    greetings: {{opt_in: '{greeting}'}}\n",
    )


def outside(path: Path, written: str | Path, *allowed: Path) -> str:
    shown = ", ".join(str(d) for d in (path.parent, *allowed))
    return (
        f'{path}:5: number "+4930100002", key greetings.opt_in: greeting file '
        f"'{written}' is outside the directories greetings may come from ({shown}; "
        "more with CONSENTD_GREETING_DIRS)"
    )


@pytest.mark.parametrize("exists", [True, False])
def test_an_absolute_greeting_path_outside_is_refused_alike_whether_it_exists_or_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exists: bool
) -> None:
    secret = tmp_path / "elsewhere" / "secret.wav"
    if exists:
        write_wav(secret)
    path = greeting_policy(tmp_path / "policies", secret)

    code, err = check(capsys, "check", str(path))

    assert code == 1
    assert err == [outside(path, secret), f"{path}: 1 error"]


@pytest.mark.parametrize("exists", [True, False])
def test_a_dotdot_greeting_path_escaping_the_directory_is_refused_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exists: bool
) -> None:
    if exists:
        write_wav(tmp_path / "secret.wav")
    path = greeting_policy(tmp_path / "policies", "greetings/../../secret.wav")

    code, err = check(capsys, "check", str(path))

    assert code == 1
    assert err == [
        outside(path, tmp_path / "policies" / "greetings/../../secret.wav"),
        f"{path}: 1 error",
    ]


def test_a_symlink_inside_pointing_outside_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = write_wav(tmp_path / "elsewhere" / "secret.wav")
    link = tmp_path / "policies" / "greetings" / "hello.wav"
    link.parent.mkdir(parents=True)
    link.symlink_to(secret)
    path = greeting_policy(tmp_path / "policies", "greetings/hello.wav")

    code, err = check(capsys, "check", str(path))

    assert code == 1
    assert err == [outside(path, link), f"{path}: 1 error"]


def test_a_symlink_loop_is_refused_like_a_path_outside(tmp_path: Path) -> None:
    loop = tmp_path / "policies" / "loop.wav"
    loop.parent.mkdir()
    loop.symlink_to(loop)
    path = greeting_policy(tmp_path / "policies", "loop.wav")

    assert only_error(path) == outside(path, loop)


def test_a_greeting_inside_the_directory_loads_also_by_a_symlink_and_an_absolute_path(
    tmp_path: Path,
) -> None:
    real = write_wav(tmp_path / "policies" / "greetings" / "hello.wav")
    (tmp_path / "policies" / "link.wav").symlink_to("greetings/hello.wav")
    for written in ("greetings/hello.wav", "link.wav", str(real), "greetings/./../link.wav"):
        path = greeting_policy(tmp_path / "policies", written)

        book = load_policies(path, cache_dir=tmp_path / "cache")

        assert book.lookup("+4930100002").policy.greetings.call_recording_opt_in == real


def test_configured_greeting_directories_are_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = write_wav(tmp_path / "shared" / "hello.wav")
    other = tmp_path / "other"
    monkeypatch.setenv("CONSENTD_GREETING_DIRS", f"{other}:{shared.parent}")
    path = greeting_policy(tmp_path / "policies", shared)

    book = load_policies(path, cache_dir=tmp_path / "cache")
    assert book.lookup("+4930100002").policy.greetings.call_recording_opt_in == shared

    path = greeting_policy(tmp_path / "policies", tmp_path / "secret.wav")
    code, err = check(capsys, "check", str(path))
    assert code == 1
    assert err == [
        outside(path, tmp_path / "secret.wav", other, shared.parent),
        f"{path}: 1 error",
    ]


def test_a_recording_in_asterisks_spool_can_never_be_a_greeting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "asterisk-root"
    spool = root / "var" / "spool" / "asterisk"
    recording = write_wav(spool / "monitor" / "consentd-pbx1_1764432000.17-1.wav")
    voicemail = write_wav(spool / "recording" / "vm-1764432000.18.wav")
    monkeypatch.setenv("CONSENTD_ASTERISK_ROOT", str(root))
    # Even a greeting directory that holds the spool does not let a recording through.
    monkeypatch.setenv("CONSENTD_GREETING_DIRS", str(root))
    link = tmp_path / "policies" / "hello.wav"
    link.parent.mkdir()
    link.symlink_to(recording)
    for written, shown in ((recording, recording), (voicemail, voicemail), ("hello.wav", link)):
        path = greeting_policy(tmp_path / "policies", written)

        code, err = check(capsys, "check", str(path))

        assert code == 1
        assert err == [
            f'{path}:5: number "+4930100002", key greetings.opt_in: greeting file '
            f"'{shown}' is in Asterisk's spool of recordings and voicemail, "
            "which can never be a greeting",
            f"{path}: 1 error",
        ]


def test_a_recording_dir_moved_elsewhere_is_still_no_greeting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_wav(tmp_path / "policies" / "recordings" / "call.wav")
    monkeypatch.setenv("CONSENTD_ASTERISK_ROOT", str(tmp_path))
    monkeypatch.setenv("CONSENTD_RECORDING_DIR", "/policies/recordings")
    path = greeting_policy(tmp_path / "policies", "recordings/call.wav")

    assert only_error(path).endswith(
        "is in Asterisk's spool of recordings and voicemail, which can never be a greeting"
    )


def test_menu_greetings_are_confined_too(tmp_path: Path) -> None:
    path = write(
        tmp_path / "policies",
        "default: {recording: never, routing: {ivr: main}}\n"
        "ivr:\n  main:\n    greeting: {file: /etc/passwd.wav}\n"
        "    options: {'1': {hangup: true}}\n",
    )

    assert only_error(path) == (
        f"{path}:4: menu \"main\", key greeting.file: greeting file '/etc/passwd.wav' is "
        f"outside the directories greetings may come from ({path.parent}; "
        "more with CONSENTD_GREETING_DIRS)"
    )


def test_loading_never_raises_anything_but_policy_error_on_these(tmp_path: Path) -> None:
    """A summary of the cases above through the Python API (what reload uses)."""
    for text in (LAUGHS, "default: &a [*a]\n", "a: " + "{" * 20_000, "!!python/name:os.system"):
        path = write(tmp_path, text)
        with alarm_after(5), pytest.raises(PolicyError):
            load_policies(path)


def test_a_greeting_name_longer_than_the_file_system_takes_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the fuzz: stat() of a 3,000-character name raised ENAMETOOLONG."""
    name = "1" * 3000 + ".wav"
    file = tmp_path / "policies.yaml"
    file.write_text(f"default: {{recording: opt_in, greetings: {{opt_in: {name}}}}}\n")

    with pytest.raises(PolicyError) as caught:
        load_policies(file, cache_dir=tmp_path / "cache")
    (problem,) = caught.value.problems
    assert "cannot be read (File name too long)" in str(problem)
    assert main(["check", str(file)]) == 1
    assert "Traceback" not in capsys.readouterr().err

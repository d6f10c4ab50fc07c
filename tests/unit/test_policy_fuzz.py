"""A fuzz of the policy loader (issue 11, point 5): whatever a file holds, loading it
raises nothing but PolicyError, and takes well under a second of CPU time.

Four kinds of input: arbitrary bytes; "YAML-ish" text built from the pieces
hostile files are made of (anchors, aliases, merge keys, tags, brackets, dates,
long numbers, control characters) between the policy file's own keys;
policy-shaped data dumped as YAML with anchors and aliases; and valid policy
files with a few pieces inserted, spans deleted or repeated, which reach the
validators behind the parser. Each example must take under a second of CPU
time (not wall-clock time, which a busy shared machine stretches), and runs
under a hard wall-clock bound (SIGALRM), so a hang fails the test instead of
stalling `make test`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consentd.greeting_files import GreetingPlaces
from consentd.policy import PolicyError, load_policies
from tests.unit.time_bounds import alarm_after, cpu_bound

REPO = Path(__file__).resolve().parents[2]

#: Valid files to mutate: the example, and one with greetings, groups, menus and agents.
SEEDS = [
    (REPO / "examples" / "policies.yaml").read_text(encoding="utf-8"),
    """\
default: &base {recording: never}
numbers:
  "+4930100001": {<<: *base, recording: always, outbound_announcement: true}
  "+4930100002": {recording: opt_in, language: it, greetings: {opt_in: greetings/it.wav}}
  "+4930100003": {recording: opt_out, routing: {ivr: main}, pause_gap: skip}
  "+4930100004": {recording: opt_in, allow_withdrawal: true, routing: {group: support}}
groups:
  support: {queue: support, timeout: 20, no_answer: voicemail, voicemail_max_seconds: 60}
ivr:
  main:
    greeting: {file: ../outside.wav, category: ivr}
    options: {"1": {group: support}, "2": {voicemail: true}, "9": {ivr: main}}
    default: {dialplan: {context: pbx-extensions, extension: "200", priority: 1}}
agents:
  agent1: {outbound_number: "+4930100001"}
agent_controls: {pause: "*1", resume: "*2"}
max_greeting_seconds: 30
""",
]

#: Per example, in CPU time (a busy shared machine stalls the wall clock, not
#: this); the alarm, on the wall clock, stops a hang outright.
DEADLINE = timedelta(seconds=1)
HARD_LIMIT_SECONDS = 5.0

FUZZ = settings(
    max_examples=600,
    deadline=None,  # hypothesis's is wall-clock time: load_only_policy_error checks CPU time
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

KEYS = [
    "default",
    "numbers",
    "recording",
    "line",
    "language",
    "greetings",
    "opt_in",
    "opt_out",
    "available",
    "voicemail",
    "routing",
    "group",
    "groups",
    "queue",
    "timeout",
    "no_answer",
    "ivr",
    "options",
    "retries",
    "invalid",
    "file",
    "category",
    "dialplan",
    "context",
    "extension",
    "priority",
    "hangup",
    "agents",
    "outbound_number",
    "agent_controls",
    "pause",
    "resume",
    "max_greeting_seconds",
    "keep_partial_on_opt_out",
    "allow_withdrawal",
    "pause_gap",
    "outbound_announcement",
    '"+4930100001"',
    "+4930100002",
    "4930100003",
]
VALUES = [
    "always",
    "opt_in",
    "opt_out",
    "never",
    "digital",
    "de",
    "true",
    "null",
    "~",
    "yes",
    "0x1F",
    "0o17",
    "1_000",
    "1:30",
    "1e400",
    ".nan",
    "-.inf",
    "2026-11-30",
    "2026-13-45",
    "2026-11-30T25:61:00Z",
    "1" * 4400,
    "*1",
    "'3'",
    "=",
    "<<",
    "../../etc/passwd.wav",
    "/dev/zero",
    "greetings/hello.wav",
    "support",
    "main",
]
PIECES = [
    *KEYS,
    *VALUES,
    ": ",
    ":",
    ", ",
    "\n",
    "\n  ",
    "\n    ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "? ",
    "&a ",
    "&b ",
    "*a",
    "*b",
    "<<: ",
    "<<: *a",
    "<<: [*a, *b]",
    "!!python/name:os.system ",
    "!!python/object/apply:os.system [id]",
    "!!timestamp ",
    "!!binary ",
    "!!set ",
    "!!omap ",
    "!!merge ",
    "!!str ",
    "!!int ",
    "!custom ",
    "! ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "%TAG !e! tag:example.com,2000:\n",
    "!e!x ",
    "# comment",
    "'",
    '"',
    '"\\x1b[2J"',
    "|\n  ",
    ">-\n  ",
    "\t",
    "\x1b[2J",
    "\x00",
    "\ufeff",
    "\u2028",
    "é",
    "\U0001f600",
]

yamlish = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=80).map(
    "".join
)

scalars = st.one_of(
    st.sampled_from(VALUES),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)
policy_like = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS).map(lambda k: k.strip('"')), inner, max_size=5),
    ),
    max_leaves=30,
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid file with up to six pieces inserted, spans deleted or repeated."""
    text: str = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        change = draw(st.sampled_from(["insert", "delete", "repeat"]))
        if change == "insert":
            text = text[:at] + draw(st.sampled_from(PIECES)) + text[at:]
        elif change == "delete":
            end = draw(st.integers(at, min(len(text), at + 20)))
            text = text[:at] + text[end:]
        else:
            end = draw(st.integers(at, min(len(text), at + 200)))
            text = text[:end] + text[at:end] + text[end:]
    return text


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="consentd-fuzz-") as directory:
        yield Path(directory)


def load_only_policy_error(workdir: Path, data: bytes) -> None:
    """Load ``data`` as a policy file: a book or PolicyError, nothing else, in time."""
    file = workdir / "policies" / "policies.yaml"
    file.parent.mkdir(exist_ok=True)
    file.write_bytes(data)
    with alarm_after(HARD_LIMIT_SECONDS), cpu_bound(DEADLINE.total_seconds()):
        try:
            load_policies(
                file,
                cache_dir=workdir / "cache",
                greeting_places=GreetingPlaces(forbidden=(workdir / "spool",)),
            )
        except PolicyError as exc:
            assert exc.problems, "a PolicyError names at least one problem"
            for problem in exc.problems:
                str(problem)


@FUZZ
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_only_ever_raise_policy_error(workdir: Path, data: bytes) -> None:
    load_only_policy_error(workdir, data)


@FUZZ
@given(text=yamlish)
def test_yaml_ish_text_only_ever_raises_policy_error(workdir: Path, text: str) -> None:
    load_only_policy_error(workdir, text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(
    data=st.fixed_dictionaries(
        {"default": policy_like},
        optional={
            "numbers": st.dictionaries(st.sampled_from(KEYS[-3:]), policy_like, max_size=3),
            "groups": policy_like,
            "ivr": policy_like,
            "agents": policy_like,
            "agent_controls": policy_like,
        },
    ),
    aliases=st.booleans(),
)
def test_policy_shaped_yaml_with_aliases_only_ever_raises_policy_error(
    workdir: Path, data: dict[str, Any], aliases: bool
) -> None:
    if aliases:  # the same object twice: PyYAML writes an anchor and an alias
        data = {**data, "numbers": {"+4930100001": data["default"], "+4930100002": data["default"]}}
    text = yaml.dump(data, Dumper=yaml.SafeDumper, allow_unicode=True)
    load_only_policy_error(workdir, text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(text=mutated())
def test_mutated_valid_files_only_ever_raise_policy_error(workdir: Path, text: str) -> None:
    load_only_policy_error(workdir, text.encode("utf-8"))

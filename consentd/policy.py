"""Per-number recording policies, validated once at load into frozen objects.

A bad policy file must never surface as a KeyError in the middle of a call, so
everything an operator can get wrong is checked here, and every problem is
reported with the file, the line, the number and the key.
"""

from __future__ import annotations

import os
import re
import wave
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from consentd.yaml_source import KeyPath, YamlDocument, YamlSourceError, load_yaml

E164_PATTERN = re.compile(r"^\+[1-9][0-9]{1,14}$")

#: Languages for which setup generates the default consent greetings.
BUNDLED_GREETING_LANGUAGES = frozenset({"en", "de"})


class Recording(StrEnum):
    ALWAYS = "always"
    OPT_IN = "opt_in"
    OPT_OUT = "opt_out"
    NEVER = "never"

    @property
    def asks_caller(self) -> bool:
        return self in (Recording.OPT_IN, Recording.OPT_OUT)


class Line(StrEnum):
    PHONE = "phone"
    DIGITAL = "digital"


class GreetingKind(StrEnum):
    OPT_IN = "opt_in"
    OPT_OUT = "opt_out"
    AVAILABLE = "available"
    VOICEMAIL = "voicemail"


class NoAnswer(StrEnum):
    VOICEMAIL = "voicemail"
    HANGUP = "hangup"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_greeting_file(value: Path, info: ValidationInfo) -> Path:
    """Asterisk plays 8 kHz mono 16-bit WAV natively; anything else fails mid-call."""
    base = (info.context or {}).get("base_dir")
    path = value if value.is_absolute() or base is None else Path(base) / value
    if not path.is_file():
        raise ValueError(f"greeting file {str(path)!r} does not exist")
    if not os.access(path, os.R_OK):
        raise ValueError(f"greeting file {str(path)!r} is not readable")
    if path.suffix.lower() != ".wav":
        raise ValueError(f"greeting file {str(path)!r} must be a .wav file")
    try:
        with wave.open(str(path), "rb") as wav:
            shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
            frames = wav.getnframes()
    except (wave.Error, EOFError, OSError) as exc:
        raise ValueError(f"greeting file {str(path)!r} is not a valid WAV file: {exc}") from None
    if shape != (8000, 1, 2):
        rate, channels, width = shape
        raise ValueError(
            f"greeting file {str(path)!r} is {rate} Hz, {channels} channel(s), "
            f"{8 * width}-bit; Asterisk needs 8000 Hz mono 16-bit "
            f"(convert with: sox IN -r 8000 -c 1 -b 16 OUT.wav)"
        )
    if frames == 0:
        raise ValueError(f"greeting file {str(path)!r} contains no audio")
    return path.resolve()


class Greetings(_Frozen):
    """Custom greeting files that replace the bundled ones for one number."""

    opt_in: Path | None = None
    opt_out: Path | None = None
    available: Path | None = None
    voicemail: Path | None = None

    _check = field_validator("opt_in", "opt_out", "available", "voicemail")(_check_greeting_file)

    def custom(self, kind: GreetingKind) -> Path | None:
        value: Path | None = getattr(self, kind.value)
        return value


class Routing(_Frozen):
    group: str


class Group(_Frozen):
    """A group of agents: one app_queue queue, and what happens when nobody answers."""

    queue: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    timeout: int = Field(default=30, ge=1, le=3600)
    no_answer: NoAnswer = NoAnswer.VOICEMAIL
    voicemail_max_seconds: int = Field(default=120, ge=5, le=3600)


class NumberPolicy(_Frozen):
    recording: Recording
    line: Line = Line.PHONE
    language: str = Field(default="en", pattern=r"^[a-z]{2,3}(_[A-Za-z0-9]+)?$")
    keep_partial_on_opt_out: bool = False
    greetings: Greetings = Greetings()
    routing: Routing | None = None

    @model_validator(mode="after")
    def _consistent(self) -> NumberPolicy:
        if self.line is Line.DIGITAL and self.recording.asks_caller:
            raise ValueError(
                f"recording: {self.recording.value} is not available on a digital line "
                "(use always or never)"
            )
        if self.language in BUNDLED_GREETING_LANGUAGES:
            return self
        # Name every missing greeting at once, so the operator can fix them in one pass.
        missing = [k.value for k in self.greeting_kinds_needed if self.greetings.custom(k) is None]
        if missing:
            one = len(missing) == 1
            raise ValueError(
                f"language: no bundled {_and(missing)} greeting{'' if one else 's'} "
                f"for {self.language!r} "
                f"(bundled: {', '.join(sorted(BUNDLED_GREETING_LANGUAGES))}); "
                f"set {_and([f'greetings.{m}' for m in missing])} "
                f"to {'a file' if one else 'files'} of your own"
            )
        return self

    @property
    def greeting_kinds_needed(self) -> list[GreetingKind]:
        kinds = [GreetingKind.AVAILABLE] if self.routing else []
        if self.greeting_kind is not None:
            kinds.append(self.greeting_kind)
        if self.routing:
            kinds.append(GreetingKind.VOICEMAIL)
        return kinds

    @property
    def greeting_kind(self) -> GreetingKind | None:
        """Which consent greeting this policy plays, if any."""
        if self.recording is Recording.OPT_IN:
            return GreetingKind.OPT_IN
        if self.recording is Recording.OPT_OUT:
            return GreetingKind.OPT_OUT
        return None


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _e164_key(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            f'number {value} was read as an integer; quote it with its leading +, e.g. "+{value}"'
        )
    if not isinstance(value, str) or not E164_PATTERN.fullmatch(value):
        raise ValueError(f"number {value!r} is not E.164 (expected + and 2-15 digits)")
    return value


E164 = Annotated[str, BeforeValidator(_e164_key)]


class PolicyFile(_Frozen):
    default: NumberPolicy
    numbers: dict[E164, NumberPolicy] = Field(default_factory=dict)
    groups: dict[str, Group] = Field(default_factory=dict)

    @field_validator("numbers", "groups", mode="before")
    @classmethod
    def _empty_numbers(cls, value: Any) -> Any:
        """``numbers:`` with nothing under it means no numbers, not an error."""
        return {} if value is None else value


@dataclass(frozen=True)
class PolicyMatch:
    """The policy that governs one call, and why."""

    policy: NumberPolicy
    source: str  # "number" or "default"


@dataclass(frozen=True)
class PolicyBook:
    """A validated policy file, ready for look-ups during calls."""

    file: Path
    config: PolicyFile

    def lookup(self, number: str) -> PolicyMatch:
        policy = self.config.numbers.get(number)
        if policy is None:
            return PolicyMatch(self.config.default, "default")
        return PolicyMatch(policy, "number")

    def group_of(self, policy: NumberPolicy) -> Group | None:
        if policy.routing is None:
            return None
        return self.config.groups[policy.routing.group]

    def custom_greeting_files(self) -> set[Path]:
        policies = [self.config.default, *self.config.numbers.values()]
        return {
            path
            for policy in policies
            for kind in GreetingKind
            if (path := policy.greetings.custom(kind)) is not None
        }

    def summary(self) -> str:
        counts = Counter(p.recording.value for p in self.config.numbers.values())
        parts = ", ".join(f"{name} {counts[name]}" for name in (r.value for r in Recording))
        total = len(self.config.numbers)
        noun = "number" if total == 1 else "numbers"
        return (
            f"{self.file}: OK, {total} {noun} ({parts}); "
            f"unknown numbers: {self.config.default.recording.value}"
        )


@dataclass(frozen=True)
class PolicyProblem:
    file: Path
    line: int | None
    location: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return (
            f"{where}: {self.location}: {self.message}"
            if self.location
            else (f"{where}: {self.message}")
        )


class PolicyError(Exception):
    """Every problem found in a policy file, so the operator can fix them in one pass."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def load_policies(file: Path) -> PolicyBook:
    try:
        doc = load_yaml(file)
    except YamlSourceError as exc:
        raise PolicyError([PolicyProblem(file, exc.line, "", exc.message)]) from None
    problems = [
        PolicyProblem(file, second, _describe(path), f"duplicate entry (first at line {first})")
        for path, first, second in doc.duplicates
    ]
    if not isinstance(doc.data, dict):
        problems.append(
            PolicyProblem(
                file, doc.line_of(()), "", "expected a mapping with 'default' and 'numbers'"
            )
        )
        raise PolicyError(problems)
    try:
        config = PolicyFile.model_validate(doc.data, context={"base_dir": file.parent})
    except ValidationError as exc:
        problems.extend(_problems_from(exc, doc))
    else:
        problems.extend(_undefined_groups(config, doc))
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise PolicyError(problems)
    return PolicyBook(file=file, config=config)


def _undefined_groups(config: PolicyFile, doc: YamlDocument) -> list[PolicyProblem]:
    entries: list[tuple[KeyPath, NumberPolicy]] = [(("default",), config.default)]
    entries += [(("numbers", number), policy) for number, policy in config.numbers.items()]
    problems = []
    defined = ", ".join(sorted(config.groups)) or "none"
    for path, policy in entries:
        if policy.routing and policy.routing.group not in config.groups:
            loc = (*path, "routing", "group")
            problems.append(
                PolicyProblem(
                    doc.file,
                    doc.line_of(loc),
                    _describe(loc),
                    f"group {policy.routing.group!r} is not defined under groups "
                    f"(defined: {defined})",
                )
            )
    return problems


def _problems_from(exc: ValidationError, doc: YamlDocument) -> list[PolicyProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc: KeyPath = tuple(error["loc"])
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key {loc[-1]!r}"
        problems.append(PolicyProblem(doc.file, doc.line_of(loc), _describe(loc), message))
    return problems


def _describe(loc: KeyPath) -> str:
    """Render a key path the way an operator reads the file: number, then key."""
    if len(loc) >= 2 and loc[0] == "numbers":
        rest = ".".join(str(p) for p in loc[2:])
        where = f'number "{loc[1]}"'
        return f"{where}, key {rest}" if rest else where
    if loc and loc[0] == "default":
        rest = ".".join(str(p) for p in loc[1:])
        return f"default, key {rest}" if rest else "default"
    return "key " + ".".join(str(p) for p in loc) if loc else ""

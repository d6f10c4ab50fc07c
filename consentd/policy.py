"""Per-number recording policies, validated once at load into frozen objects.

A bad policy file must never surface as a KeyError in the middle of a call, so
everything an operator can get wrong is checked here, and every problem is
reported with the file, the line, the number and the key.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from consentd.greeting_files import (
    DEFAULT_MAX_GREETING_SECONDS,
    GreetingFileError,
    GreetingPlaces,
    PreparedGreeting,
    prepare_greeting,
)
from consentd.policy_references import CONSENT_KEY, check_references
from consentd.yaml_source import KeyPath, YamlDocument, YamlSourceError, load_yaml

E164_PATTERN = re.compile(r"^\+[1-9][0-9]{1,14}$")

#: Languages for which setup generates every bundled greeting (greetings/texts.tsv).
BUNDLED_GREETING_LANGUAGES = frozenset({"en", "de", "fr"})

#: Where operators' greetings are kept once converted (by content hash).
DEFAULT_GREETING_CACHE = Path(
    os.environ.get("CONSENTD_GREETING_CACHE", Path.home() / ".cache" / "consentd" / "greetings")
)


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
    """The greetings a number plays; each value is a category of the bundled set."""

    OPT_IN = "call_recording_opt_in"
    OPT_OUT = "call_recording_opt_out"
    AVAILABLE = "available"
    VOICEMAIL = "voicemail"
    WAIT = "wait"
    HOLD = "hold"


#: Categories only a menu plays: set on a number, they are in the wrong place.
MENU_CATEGORIES = {"ivr": "greeting", "ivr_invalid": "invalid"}


class PauseGap(StrEnum):
    """What an agent's pause leaves in the kept audio."""

    #: One file with its timeline kept: silence in the gap (MixMonitorMute).
    SILENCE = "silence"
    #: The gap left out: the recording stops, and a resume starts a new file.
    SKIP = "skip"


class NoAnswer(StrEnum):
    VOICEMAIL = "voicemail"
    HANGUP = "hangup"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_greeting_file(value: Path | None, info: ValidationInfo) -> Path | None:
    """Convert an operator's WAV (any shape) or MP3 now, not mid-call.

    Errors name the file and the reason (missing, empty, corrupt, too long);
    the converted file waits in the cache for ``GreetingLibrary.install``.
    A file named in a policy file must lie in its directory or a configured
    greeting directory (``GreetingPlaces``), symbolic links resolved. A key
    left empty (``opt_in:``, YAML's null) names no file: the bundled greeting.
    """
    if value is None:
        return None
    context = info.context or {}
    base = context.get("base_dir")
    path = value if value.is_absolute() or base is None else Path(base) / value
    try:
        if base is None:  # a model built in code, not read from a file
            source = path.resolve()
        else:
            places: GreetingPlaces = context.get("greeting_places") or GreetingPlaces()
            source = places.confine(Path(base), value)
        prepared = prepare_greeting(
            source,
            max_seconds=context.get("max_greeting_seconds", DEFAULT_MAX_GREETING_SECONDS),
            cache_dir=context.get("cache_dir", DEFAULT_GREETING_CACHE),
        )
    except GreetingFileError as exc:
        # Named as the operator wrote it (joined to the file's directory), not as resolved.
        raise ValueError(str(GreetingFileError(path, exc.problem, exc.reason))) from None
    context.setdefault("prepared", {})[source] = prepared
    return source


class Greetings(_Frozen):
    """Operators' own greetings that replace the bundled ones for one number.

    ``opt_in`` and ``opt_out`` are accepted for the consent greetings' older names.
    """

    available: Path | None = None
    wait: Path | None = None
    hold: Path | None = None
    voicemail: Path | None = None
    call_recording_opt_in: Path | None = Field(
        default=None, validation_alias=AliasChoices("call_recording_opt_in", "opt_in")
    )
    call_recording_opt_out: Path | None = Field(
        default=None, validation_alias=AliasChoices("call_recording_opt_out", "opt_out")
    )

    _check = field_validator(
        "available", "wait", "hold", "voicemail", "call_recording_opt_in", "call_recording_opt_out"
    )(_check_greeting_file)

    @model_validator(mode="before")
    @classmethod
    def _menu_categories_belong_to_menus(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for category, key in MENU_CATEGORIES.items():
                if category in value:
                    raise ValueError(
                        f"greeting file {str(value[category])!r} is set as {category!r}, "
                        f"which a number does not play (allowed there: "
                        f"{', '.join(k.value for k in GreetingKind)}); "
                        f"set it as a menu's {key}: {{file: ...}}"
                    )
        return value

    def custom(self, kind: GreetingKind) -> Path | None:
        value: Path | None = getattr(self, kind.value)
        return value


class GroupTarget(_Frozen):
    """Queue the caller for a group of agents (app_queue)."""

    group: str


class IvrTarget(_Frozen):
    """Offer the caller a menu."""

    ivr: str


class DialplanPlace(_Frozen):
    context: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    extension: str = Field(pattern=r"^[A-Za-z0-9_.+*#-]+$")
    priority: int = Field(default=1, ge=1)


class DialplanTarget(_Frozen):
    """Hand the call to the PBX's own dialplan; consentd stays subscribed for key 3."""

    dialplan: DialplanPlace


class VoicemailTarget(_Frozen):
    voicemail: Literal[True]


class HangupTarget(_Frozen):
    hangup: Literal[True]


#: The key of each routing target, in the order the error message lists them.
TARGET_KEYS = ("group", "ivr", "dialplan", "voicemail", "hangup")


def _target_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        keys = [k for k in value if k in TARGET_KEYS]
        return str(keys[0]) if len(value) == 1 and keys else None
    for key in TARGET_KEYS:
        if hasattr(value, key):
            return key
    return None


RoutingTarget = Annotated[
    Annotated[GroupTarget, Tag("group")]
    | Annotated[IvrTarget, Tag("ivr")]
    | Annotated[DialplanTarget, Tag("dialplan")]
    | Annotated[VoicemailTarget, Tag("voicemail")]
    | Annotated[HangupTarget, Tag("hangup")],
    Discriminator(
        _target_tag,
        custom_error_type="routing_target",
        custom_error_message=(
            "a routing target is exactly one of {group: NAME}, {ivr: NAME}, "
            "{dialplan: {context: CTX, extension: EXTEN, priority: 1}}, "
            "{voicemail: true} or {hangup: true}"
        ),
    ),
]

#: Keys a caller can press; 3 is reserved for consent on opt_in and opt_out numbers.
DTMF_KEYS = "0123456789*#"


def _dtmf_key(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) != 1 or value not in DTMF_KEYS:
        raise ValueError(f"option key {value!r} is not a single key (one of {DTMF_KEYS})")
    return value


DtmfKey = Annotated[str, BeforeValidator(_dtmf_key)]


class GreetingFile(_Frozen):
    """An operator's own prompt, in place of the bundled one.

    ``category`` is optional; when given it must fit the place (a menu's
    greeting is ``ivr``, its invalid-choice prompt ``ivr_invalid``).
    """

    file: Path
    category: str | None = None

    _check = field_validator("file")(_check_greeting_file)

    def check_place(self, category: str, place: str) -> None:
        if self.category is not None and self.category != category:
            raise ValueError(
                f"greeting file {str(self.file)!r} is set as {self.category!r}, "
                f"which a menu's {place} does not play (allowed there: {category!r})"
            )


class IvrMenu(_Frozen):
    """A menu: its prompt, then one key picks where the call goes.

    Key 3 is never an option on a number that asks for consent: there it
    always decides consent, in any menu, and the menu waits on.
    """

    greeting: GreetingFile | None = None
    options: dict[DtmfKey, RoutingTarget] = Field(min_length=1)
    timeout: float = Field(default=5.0, gt=0, le=60)
    retries: int = Field(default=2, ge=0, le=10)
    invalid: GreetingFile | None = None
    default: RoutingTarget = HangupTarget(hangup=True)

    def targets(self) -> list[RoutingTarget]:
        return [*self.options.values(), self.default]

    @model_validator(mode="after")
    def _prompts_in_their_place(self) -> IvrMenu:
        if self.greeting is not None:
            self.greeting.check_place("ivr", "greeting")
        if self.invalid is not None:
            self.invalid.check_place("ivr_invalid", "invalid")
        return self


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
    #: An opt-in caller who consented may press 3 again to take it back.
    allow_withdrawal: bool = False
    greetings: Greetings = Greetings()
    routing: RoutingTarget | None = None
    #: Agents' outbound calls from this number play a recording notice to the
    #: callee when they answer (bundled "outbound_notice").
    outbound_announcement: bool = False
    #: What a pause (agent controls) leaves in the kept audio.
    pause_gap: PauseGap = PauseGap.SILENCE

    @model_validator(mode="after")
    def _consistent(self) -> NumberPolicy:
        if self.allow_withdrawal and self.recording is not Recording.OPT_IN:
            raise ValueError(
                f"allow_withdrawal: only an opt_in number asks for consent that can be "
                f"withdrawn (this one is {self.recording.value})"
            )
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
    def menu(self) -> str | None:
        """The IVR menu the call starts in, if its routing is one."""
        return self.routing.ivr if isinstance(self.routing, IvrTarget) else None

    @property
    def greeting_kind(self) -> GreetingKind | None:
        """Which consent greeting this policy plays, if any.

        None for IVR-routed numbers: the menu's own prompt mentions key 3.
        """
        if self.menu is not None:
            return None
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


class Agent(_Frozen):
    """An agent phone (a PJSIP endpoint of the same name) that places calls."""

    #: The operator number outbound calls show and follow the policy of.
    outbound_number: E164 | None = None


#: What an agent may dial as a control code (Asterisk's feature-code keys).
CONTROL_KEYS = "0123456789*#ABCD"


def _control_code(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 1 <= len(value) <= 8:
        raise ValueError(f"a control code is 1 to 8 keys, got {value!r}")
    if any(key not in CONTROL_KEYS for key in value):
        raise ValueError(f"control code {value!r} may hold only the keys {CONTROL_KEYS}")
    return value


ControlCode = Annotated[str, BeforeValidator(_control_code)]


class AgentControls(_Frozen):
    """The codes an agent dials on their own leg to pause and resume the recording.

    Asterisk swallows them (feature codes), so the other party never hears them.
    The consent key alone is never a code: on a call whose agent sends DTMF to
    the caller's side it would look like the caller's decision.
    """

    pause: ControlCode = "*1"
    resume: ControlCode = "*2"

    @model_validator(mode="after")
    def _distinct_codes(self) -> AgentControls:
        for name, code, usual in (("pause", self.pause, "*1"), ("resume", self.resume, "*2")):
            if code == CONSENT_KEY:
                raise ValueError(
                    f"{name} code {code!r} is the consent key on its own; "
                    f"use a code of two or more keys, such as {usual!r}"
                )
        if self.pause.startswith(self.resume) or self.resume.startswith(self.pause):
            raise ValueError(
                f"pause {self.pause!r} and resume {self.resume!r} must differ, "
                "and neither may begin with the other"
            )
        return self


class PolicyFile(_Frozen):
    #: Longer operator greetings are refused at load (read before the rest).
    max_greeting_seconds: float = Field(default=DEFAULT_MAX_GREETING_SECONDS, gt=0, le=3600)
    default: NumberPolicy
    numbers: dict[E164, NumberPolicy] = Field(default_factory=dict)
    groups: dict[str, Group] = Field(default_factory=dict)
    ivr: dict[str, IvrMenu] = Field(default_factory=dict)
    agents: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")], Agent] = Field(
        default_factory=dict
    )
    agent_controls: AgentControls = AgentControls()

    @field_validator("numbers", "groups", "ivr", "agents", mode="before")
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
    #: Legal but probably unintended (a menu nothing leads to).
    warnings: tuple[PolicyProblem, ...] = ()
    #: Operators' greetings converted for Asterisk, by their source path.
    prepared: Mapping[Path, PreparedGreeting] = field(default_factory=dict)

    def lookup(self, number: str) -> PolicyMatch:
        policy = self.config.numbers.get(number)
        if policy is None:
            return PolicyMatch(self.config.default, "default")
        return PolicyMatch(policy, "number")

    def outbound_number(self, agent: str, requested: str | None) -> tuple[str | None, str]:
        """(operator number, why) for an agent's outbound call.

        ``requested`` is the X-Consentd-Number header, if the agent's phone sent
        one. None as number means the call is refused, and ``why`` says why.
        """
        if requested:
            if requested in self.config.numbers:
                return requested, "header"
            return None, "requested_number_not_ours"
        configured = self.config.agents.get(agent)
        if configured is None:
            return None, "unknown_agent"
        if configured.outbound_number is None:
            return None, "no_outbound_number"
        return configured.outbound_number, "agent"

    def group_of(self, policy: NumberPolicy) -> Group | None:
        if not isinstance(policy.routing, GroupTarget):
            return None
        return self.config.groups[policy.routing.group]

    def custom_greeting_files(self) -> set[Path]:
        policies = [self.config.default, *self.config.numbers.values()]
        files = {
            path
            for policy in policies
            for kind in GreetingKind
            if (path := policy.greetings.custom(kind)) is not None
        }
        for menu in self.config.ivr.values():
            files.update(g.file for g in (menu.greeting, menu.invalid) if g is not None)
        return files

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
    """Every problem found in a policy file, so the operator can fix them in one pass.

    ``io_error``: the file could not be read at all (missing, unreadable, too
    big, not a regular file), rather than read and found wrong.
    """

    def __init__(self, problems: list[PolicyProblem], *, io_error: bool = False) -> None:
        self.problems = problems
        self.io_error = io_error
        super().__init__("\n".join(str(p) for p in problems))


def load_policies(
    file: Path,
    *,
    cache_dir: Path | None = None,
    greeting_places: GreetingPlaces | None = None,
) -> PolicyBook:
    """Validate ``file`` and convert its greetings (cached in ``cache_dir``).

    Greeting files must lie where ``greeting_places`` allows (by default the
    file's directory and ``CONSENTD_GREETING_DIRS``, never Asterisk's spool).
    Raises PolicyError with every problem found, each with its line, and
    nothing else, whatever the file holds.
    """
    try:
        doc = load_yaml(file)
    except YamlSourceError as exc:
        raise PolicyError(
            [PolicyProblem(file, exc.line, "", exc.message)], io_error=exc.io_error
        ) from None
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
    # References are checked on the raw data, so an undefined group is reported
    # in the same pass as every other mistake, even when those break the model.
    references = check_references(doc.data)
    problems += [
        PolicyProblem(file, doc.line_of(loc), _describe(loc), message)
        for loc, message in references.problems
    ]
    warnings = [
        PolicyProblem(file, doc.line_of(loc), _describe(loc), message)
        for loc, message in references.warnings
    ]
    limit = doc.data.get("max_greeting_seconds", DEFAULT_MAX_GREETING_SECONDS)
    context: dict[str, Any] = {
        "base_dir": file.parent,
        "cache_dir": cache_dir or DEFAULT_GREETING_CACHE,
        "max_greeting_seconds": limit
        if isinstance(limit, int | float) and not isinstance(limit, bool) and limit > 0
        else DEFAULT_MAX_GREETING_SECONDS,
        "prepared": {},
        "greeting_places": greeting_places or GreetingPlaces.from_environment(),
    }
    try:
        config = PolicyFile.model_validate(doc.data, context=context)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, doc))
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise PolicyError(problems)
    return PolicyBook(
        file=file, config=config, warnings=tuple(warnings), prepared=context["prepared"]
    )


def _problems_from(exc: ValidationError, doc: YamlDocument) -> list[PolicyProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc: KeyPath = tuple(error["loc"])
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key {loc[-1]!r}"
        loc = _without_union_tags(loc)
        problems.append(PolicyProblem(doc.file, doc.line_of(loc), _describe(loc), message))
    return problems


def _without_union_tags(loc: KeyPath) -> KeyPath:
    """pydantic names the union member too: routing.dialplan.dialplan.context."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if part in TARGET_KEYS and i + 1 < len(loc) and loc[i + 1] == part:
            continue
        out.append(part)
    return tuple(out)


def _describe(loc: KeyPath) -> str:
    """Render a key path the way an operator reads the file: number, then key."""
    if len(loc) >= 2 and loc[0] == "numbers":
        rest = ".".join(str(p) for p in loc[2:])
        where = f'number "{loc[1]}"'
        return f"{where}, key {rest}" if rest else where
    if loc and loc[0] == "default":
        rest = ".".join(str(p) for p in loc[1:])
        return f"default, key {rest}" if rest else "default"
    if len(loc) >= 2 and loc[0] == "ivr":
        rest = ".".join(str(p) for p in loc[2:])
        where = f'menu "{loc[1]}"'
        return f"{where}, key {rest}" if rest else where
    return "key " + ".".join(str(p) for p in loc) if loc else ""

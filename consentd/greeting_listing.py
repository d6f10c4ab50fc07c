"""What each number and each IVR menu of a policy file plays, per language, with durations.

Read from the validated policy objects; nothing here talks to a PBX. A number
lists every greeting a caller can hear on it, in the order the call flow plays
them: the availability greeting when its routing (or a menu it leads to)
reaches a group, the consent greeting (not on numbers that start in a menu:
the menu's prompt mentions key 3), the prompts of the menus it reaches, and
the voicemail greeting when a path ends in voicemail. A menu's bundled prompts
follow the caller's language, so each menu is listed per language of the
numbers that reach it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

from consentd.greeting_files import (
    BUNDLED_LANGUAGES,
    GreetingCategory,
    bundled_greeting,
    describe_duration,
    probe_duration,
)
from consentd.policy import (
    GreetingFile,
    GreetingKind,
    GroupTarget,
    IvrTarget,
    NoAnswer,
    NumberPolicy,
    PolicyBook,
    RoutingTarget,
    VoicemailTarget,
)

#: The policy's greeting keys, and the category of the bundled file that stands in for each.
_CATEGORY_OF = {
    GreetingKind.OPT_IN: GreetingCategory.CALL_RECORDING_OPT_IN,
    GreetingKind.OPT_OUT: GreetingCategory.CALL_RECORDING_OPT_OUT,
    GreetingKind.AVAILABLE: GreetingCategory.AVAILABLE,
    GreetingKind.VOICEMAIL: GreetingCategory.VOICEMAIL,
    GreetingKind.WAIT: GreetingCategory.WAIT,
    GreetingKind.HOLD: GreetingCategory.HOLD,
}


@dataclass(frozen=True)
class Played:
    """One greeting a caller can hear."""

    category: GreetingCategory
    language: str
    custom: bool
    path: Path
    duration: float | None  # None: missing or unreadable
    menu: str | None = None  # the menu whose prompt this is


@dataclass(frozen=True)
class Reach:
    """Where a call can go from a routing target, following menus."""

    groups: tuple[str, ...]
    menus: tuple[str, ...]
    voicemail: bool


def reach(book: PolicyBook, start: RoutingTarget | None) -> Reach:
    groups: list[str] = []
    menus: list[str] = []
    voicemail = False
    queue: deque[RoutingTarget] = deque([start] if start is not None else [])
    while queue:
        target = queue.popleft()
        if isinstance(target, GroupTarget):
            if target.group not in groups:
                groups.append(target.group)
                group = book.config.groups.get(target.group)
                voicemail |= group is not None and group.no_answer is NoAnswer.VOICEMAIL
        elif isinstance(target, IvrTarget):
            if target.ivr not in menus:
                menus.append(target.ivr)
                menu = book.config.ivr.get(target.ivr)
                if menu is not None:
                    queue.extend(menu.targets())
        elif isinstance(target, VoicemailTarget):
            voicemail = True
    return Reach(tuple(groups), tuple(menus), voicemail)


class GreetingListing:
    def __init__(self, book: PolicyBook, sounds_root: Path) -> None:
        self.book = book
        self.sounds_root = sounds_root
        self._durations: dict[Path, float | None] = {}

    def _played(
        self,
        category: GreetingCategory,
        language: str,
        custom: Path | None,
        menu: str | None = None,
    ) -> Played:
        path = (
            custom if custom is not None else bundled_greeting(self.sounds_root, language, category)
        )
        if path not in self._durations:
            self._durations[path] = probe_duration(path)
        return Played(category, language, custom is not None, path, self._durations[path], menu)

    def _policy_greeting(self, policy: NumberPolicy, kind: GreetingKind) -> Played:
        return self._played(_CATEGORY_OF[kind], policy.language, policy.greetings.custom(kind))

    def _menu_prompts(self, name: str, language: str) -> list[Played]:
        menu = self.book.config.ivr.get(name)
        if menu is None:
            return []

        def custom(file: GreetingFile | None) -> Path | None:
            return file.file if file is not None else None

        return [
            self._played(GreetingCategory.IVR, language, custom(menu.greeting), name),
            self._played(GreetingCategory.IVR_INVALID, language, custom(menu.invalid), name),
        ]

    def number(self, policy: NumberPolicy) -> list[Played]:
        """Every greeting a caller of this number can hear, in the order they come."""
        where = reach(self.book, policy.routing)
        played: list[Played] = []
        if where.groups:
            played.append(self._policy_greeting(policy, GreetingKind.AVAILABLE))
        if policy.greeting_kind is not None:
            played.append(self._policy_greeting(policy, policy.greeting_kind))
        for kind in (GreetingKind.WAIT, GreetingKind.HOLD):  # played only where set
            if policy.greetings.custom(kind) is not None:
                played.append(self._policy_greeting(policy, kind))
        for name in where.menus:
            played += self._menu_prompts(name, policy.language)
        if where.voicemail:
            played.append(self._policy_greeting(policy, GreetingKind.VOICEMAIL))
        return played

    def menu_languages(self, name: str) -> list[str]:
        """Languages of the numbers (and the default) whose calls reach menu ``name``."""
        config = self.book.config
        policies = [config.default, *config.numbers.values()]
        return sorted({p.language for p in policies if name in reach(self.book, p.routing).menus})

    def menu(self, name: str) -> list[Played]:
        languages = self.menu_languages(name) or list(BUNDLED_LANGUAGES)
        return [played for lang in languages for played in self._menu_prompts(name, lang)]

    def render(self) -> str:
        config = self.book.config
        blocks = []
        entries = [("default", config.default), *sorted(config.numbers.items())]
        for label, policy in entries:
            routing = _describe_routing(policy.routing)
            head = f"{label}: {policy.recording.value}, language {policy.language}{routing}"
            blocks.append(_block(head, self.number(policy)))
        for name in sorted(config.ivr):
            languages = self.menu_languages(name)
            reached = (
                f"languages {', '.join(languages)}"
                if languages
                else "reached by no number; bundled prompts in every language"
            )
            blocks.append(_block(f'menu "{name}": {reached}', self.menu(name)))
        return "\n\n".join(blocks)

    @property
    def missing(self) -> list[Path]:
        """Files listed that could not be read as audio."""
        return sorted(path for path, seconds in self._durations.items() if seconds is None)


def _describe_routing(target: RoutingTarget | None) -> str:
    if target is None:
        return ""
    if isinstance(target, GroupTarget):
        return f", routing: group {target.group}"
    if isinstance(target, IvrTarget):
        return f", routing: menu {target.ivr}"
    if isinstance(target, VoicemailTarget):
        return ", routing: voicemail"
    return f", routing: {type(target).__name__.removesuffix('Target').lower()}"


def _block(head: str, played: list[Played]) -> str:
    if not played:
        return f"{head}\n  (no greetings)"
    rows = [
        [
            p.category.value + (f" ({p.menu})" if p.menu else ""),
            p.language,
            "custom" if p.custom else "bundled",
            describe_duration(p.duration) if p.duration is not None else "MISSING",
            str(p.path),
        ]
        for p in played
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  "
        + "  ".join(
            cell.rjust(w) if i == 3 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        )
        + "  "
        + row[-1]
        for row in rows
    ]
    return "\n".join([head, *lines])

"""Live reload of the policy file: ``consentd reload`` (HTTP ``POST /reload``) and SIGHUP.

The daemon re-reads the file it was started with. A file with errors is
refused whole, with every problem listed, and the last good policies keep
serving. A valid file has its custom greetings installed first (a failure
there refuses it too), then replaces the policies for new calls only: a call
in progress keeps the ``CallFacts`` (policy, greetings, group) it started
with. Every attempt is logged and written to the ledger under the call id
``policies:<node>`` (``policies_reloaded`` with what changed, or
``policies_reload_refused`` with the errors); such rows have no
``call_started``, so call details and open-call recovery never see them.

``diff_books`` and ``describe`` are pure; ``PolicyReloader`` holds the I/O
(reading the file, installing greetings, the switch and the ledger row) at
its edges, each passed in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from consentd.greetings import GreetingLibrary
from consentd.ledger import LedgerEvent
from consentd.policy import PolicyBook, PolicyError, load_policies

RELOADED = "policies_reloaded"
REFUSED = "policies_reload_refused"


@dataclass(frozen=True)
class PolicyDiff:
    """What a new policy file changes, compared with the one serving."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    default_changed: bool = False
    groups_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (
            self.added
            or self.removed
            or self.changed
            or self.default_changed
            or self.groups_changed
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": list(self.changed),
            "default_changed": self.default_changed,
            "groups_changed": self.groups_changed,
        }


def diff_books(old: PolicyBook, new: PolicyBook) -> PolicyDiff:
    """Numbers added, removed and changed (by model equality), and whether default or
    groups changed. Only the public ``config`` fields are read."""
    before, after = old.config.numbers, new.config.numbers
    return PolicyDiff(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        changed=tuple(sorted(n for n in before.keys() & after.keys() if before[n] != after[n])),
        default_changed=old.config.default != new.config.default,
        groups_changed=old.config.groups != new.config.groups,
    )


def _part(numbers: tuple[str, ...], what: str, *, noun: bool = False) -> str:
    n = len(numbers)
    text = f"{n} {'number ' if n == 1 else 'numbers '}{what}" if noun else f"{n} {what}"
    return f"{text} ({', '.join(numbers)})" if numbers else text


def describe(file: str, diff: PolicyDiff) -> str:
    """One line for the operator: ``reloaded FILE: 1 number added (+49...), 0 removed, ...``."""
    parts = [
        _part(diff.added, "added", noun=True),
        _part(diff.removed, "removed"),
        _part(diff.changed, "changed"),
    ]
    line = f"reloaded {file}: {', '.join(parts)}"
    flags = (("default", diff.default_changed), ("groups", diff.groups_changed))
    also = [name for name, changed in flags if changed]
    if also:
        line += f"; {' and '.join(also)} changed"
    if diff.empty:
        line += " (no changes)"
    return line


@dataclass(frozen=True)
class ReloadOutcome:
    file: str
    trigger: str
    diff: PolicyDiff | None = None
    errors: tuple[str, ...] = field(default=())
    numbers: int = 0

    @property
    def ok(self) -> bool:
        return self.diff is not None

    def as_dict(self) -> dict[str, Any]:
        if self.diff is None:
            return {"file": self.file, "trigger": self.trigger, "errors": list(self.errors)}
        return {
            "file": self.file,
            "trigger": self.trigger,
            "numbers": self.numbers,
            **self.diff.as_dict(),
            "summary": describe(self.file, self.diff),
        }


class PolicyReloader:
    """Re-reads one policy file on request; one reload at a time."""

    def __init__(
        self,
        book: PolicyBook,
        *,
        install: Callable[[PolicyBook], GreetingLibrary],
        apply: Callable[[PolicyBook, GreetingLibrary], None],
        submit: Callable[[LedgerEvent], None],
        clock: Callable[[], datetime],
        node: str,
        boot_id: str,
        load: Callable[[Path], PolicyBook] = load_policies,
    ) -> None:
        self.book = book
        self._install = install
        self._apply = apply
        self._submit = submit
        self._clock = clock
        self._node = node
        self._boot_id = boot_id
        self._load = load
        self._lock = asyncio.Lock()
        self._count = 0
        self._log = structlog.get_logger("consentd.reload")

    async def reload(self, trigger: str) -> ReloadOutcome:
        """Read, validate and install the file the daemon was started with, then switch."""
        async with self._lock:
            file = self.book.file
            errors: list[str] = []
            new: PolicyBook | None = None
            greetings: GreetingLibrary | None = None
            try:
                new = await asyncio.to_thread(self._load, file)
            except PolicyError as exc:
                errors = [str(p) for p in exc.problems] or [str(exc)]
            except Exception as exc:  # never let a reload take the daemon down
                errors = [f"{file}: cannot load: {type(exc).__name__}: {exc}"]
            if new is not None:
                try:
                    greetings = await asyncio.to_thread(self._install, new)
                except Exception as exc:  # anything at all: the last good policies keep serving
                    errors = [f"{file}: installing the custom greetings failed: {exc}"]
            if errors or new is None or greetings is None:
                outcome = ReloadOutcome(str(file), trigger, errors=tuple(errors))
                self._record(REFUSED, {"file": str(file), "trigger": trigger, "errors": errors})
                self._log.warning(
                    "policies_reload_refused", file=str(file), trigger=trigger, errors=errors
                )
                return outcome
            diff = diff_books(self.book, new)
            self._apply(new, greetings)
            self.book = new
            outcome = ReloadOutcome(str(file), trigger, diff, numbers=len(new.config.numbers))
            self._record(
                RELOADED,
                {"file": str(file), "trigger": trigger, "numbers": outcome.numbers}
                | diff.as_dict(),
            )
            self._log.info("policies_reloaded", summary=describe(str(file), diff), trigger=trigger)
            return outcome

    def _record(self, kind: str, data: dict[str, Any]) -> None:
        self._count += 1
        self._submit(
            LedgerEvent(
                event_key=f"reload:{self._node}:{self._boot_id}:{self._count}",
                call_id=f"policies:{self._node}",
                node=self._node,
                seq=self._count,
                kind=kind,
                occurred_at=self._clock(),
                data=data,
            )
        )

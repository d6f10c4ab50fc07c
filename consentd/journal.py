"""A durable on-disk queue of ledger lines, used while the database is away.

Lines are appended and fsynced before the writer moves on, so a crash of the
daemon while PostgreSQL is down loses nothing; the next start replays them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog


@dataclass
class JournalChunk:
    lines: list[str]
    _journal: Journal

    def done(self) -> None:
        """The lines are stored elsewhere now; drop them from the journal."""
        self._journal._drop(len(self.lines))


class Journal:
    def __init__(self, path: Path | None) -> None:
        """``path=None`` keeps the journal in memory (tests, or no writable disk)."""
        self._path = path
        self._lines: list[str] = []
        self._log = structlog.get_logger("consentd.journal")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                self._lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln]
                if self._lines:
                    self._log.info("journal_found", path=str(path), pending=len(self._lines))

    def pending(self) -> int:
        return len(self._lines)

    def append(self, lines: list[str]) -> None:
        if self._path is not None:
            with self._path.open("a", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in lines))
                fh.flush()
                os.fsync(fh.fileno())
        self._lines.extend(lines)

    def chunks(self, size: int) -> Iterator[JournalChunk]:
        """Oldest lines first; stop when a chunk is not marked done."""
        while self._lines:
            before = len(self._lines)
            yield JournalChunk(self._lines[:size], self)
            if len(self._lines) == before:
                return

    def _drop(self, count: int) -> None:
        del self._lines[:count]
        if self._path is None:
            return
        if not self._lines:
            self._path.unlink(missing_ok=True)
            return
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in self._lines), encoding="utf-8")
        os.replace(tmp, self._path)

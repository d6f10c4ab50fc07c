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
        #: Why the last write to disk failed, while it does (the lines are in memory).
        self.disk_error: str | None = None
        self._log = structlog.get_logger("consentd.journal")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                self._lines = self._read(path)
                if self._lines:
                    self._log.info("journal_found", path=str(path), pending=len(self._lines))

    def _read(self, path: Path) -> list[str]:
        """The journal's lines; a torn last line (a crash or a full disk mid-write) is set aside.

        Only the last line can be torn: every earlier one was fsynced whole.
        It is kept next to the journal (``.torn``) for a person to look at.
        """
        data = path.read_bytes()
        lines = [ln for ln in data.decode("utf-8", errors="replace").splitlines() if ln]
        if lines and not data.endswith(b"\n"):
            torn = lines.pop()
            aside = path.with_suffix(".torn")
            with aside.open("a", encoding="utf-8") as fh:
                fh.write(torn + "\n")
            self._log.warning("journal_torn_tail", path=str(path), set_aside=str(aside))
        return lines

    def lines(self) -> list[str]:
        """Every line not yet stored elsewhere, oldest first."""
        return list(self._lines)

    def pending(self) -> int:
        return len(self._lines)

    def append(self, lines: list[str]) -> None:
        """Append durably; if the disk refuses (full, read-only), keep them in memory.

        The daemon must go on taking calls either way: the lines are replayed
        from memory once the database is back, and rewritten to disk with the
        next successful write.
        """
        if self._path is not None:
            try:
                with self._path.open("a", encoding="utf-8") as fh:
                    fh.write("".join(line + "\n" for line in lines))
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                if self.disk_error is None:
                    self._log.error("journal_write_failed", path=str(self._path), error=str(exc))
                self.disk_error = str(exc)
            else:
                self.disk_error = None
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
        try:
            if not self._lines:
                self._path.unlink(missing_ok=True)
                return
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in self._lines), encoding="utf-8")
            os.replace(tmp, self._path)
        except OSError as exc:
            self.disk_error = str(exc)
            self._log.error("journal_write_failed", path=str(self._path), error=str(exc))

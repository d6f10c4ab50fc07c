"""A durable on-disk queue of ledger lines: the write-ahead outbox of the ledger.

Every batch is appended and fsynced here (file, and directory when the file
is new) before it is sent to PostgreSQL, so a crash of the daemon loses
nothing that reached the writer, whether the database is up or away; the next
start replays what was not stored. Once everything is stored the file is
truncated (no fsync needed: a replay of stored lines is ignored by their
keys). A torn last line (a crash
or a full disk mid-write) is set aside, never fatal. Replay is linear: stored
lines are only counted while the replay runs, and the file is rewritten once
at its end. The journal is bounded: past ``max_lines`` it is full, and the
daemon takes no new calls until it drains (its health says so).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import structlog

#: About 0.5 KB a line: a million lines is half a gigabyte of disk.
DEFAULT_MAX_LINES = 1_000_000


@dataclass
class JournalChunk:
    lines: list[str]
    _journal: Journal

    def done(self) -> None:
        """The lines are stored elsewhere now; the next ``compact()`` drops them."""
        self._journal._consumed += len(self.lines)


class Journal:
    def __init__(self, path: Path | None, *, max_lines: int = DEFAULT_MAX_LINES) -> None:
        """``path=None`` keeps the journal in memory (tests, or no writable disk)."""
        self._path = path
        self._lines: list[str] = []
        self._consumed = 0
        self.max_lines = max_lines
        #: Why the last write to disk failed, while it does (the lines are in memory).
        self.disk_error: str | None = None
        self._log = structlog.get_logger("consentd.journal")
        if path is not None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.exists():
                path.chmod(0o600)  # callers' numbers: the daemon's alone (older ones were 0644)
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
            with _private(aside, "a") as fh:
                fh.write(torn + "\n")
            self._log.warning("journal_torn_tail", path=str(path), set_aside=str(aside))
        return lines

    def lines(self) -> list[str]:
        """Every line not yet stored elsewhere, oldest first."""
        return self._lines[self._consumed :]

    def pending(self) -> int:
        return len(self._lines) - self._consumed

    @property
    def full(self) -> bool:
        return self.pending() >= self.max_lines

    def append(self, lines: list[str]) -> None:
        """Append durably; if the disk refuses (full, read-only), keep them in memory.

        The daemon must go on taking calls either way: the lines are replayed
        from memory once the database is back, and rewritten to disk with the
        next successful write. Blocking: call it off the event loop.
        """
        if self._path is not None:
            try:
                new = not self._path.exists()
                with _private(self._path, "a") as fh:
                    fh.write("".join(line + "\n" for line in lines))
                    fh.flush()
                    os.fsync(fh.fileno())
                if new:
                    _fsync_dir(self._path.parent)
            except OSError as exc:
                if self.disk_error is None:
                    self._log.error("journal_write_failed", path=str(self._path), error=str(exc))
                self.disk_error = str(exc)
            else:
                self.disk_error = None
        self._lines.extend(lines)
        if self.full:
            self._log.error("journal_full", pending=self.pending(), max_lines=self.max_lines)

    def chunks(self, size: int) -> Iterator[JournalChunk]:
        """Oldest lines first; stop when a chunk is not marked done. Then ``compact()``."""
        while self.pending():
            before = self._consumed
            start = self._consumed
            yield JournalChunk(self._lines[start : start + size], self)
            if self._consumed == before:
                return

    def compact(self) -> None:
        """Drop the lines marked done, from memory and disk, in one rewrite. Blocking."""
        if not self._consumed:
            return
        del self._lines[: self._consumed]
        self._consumed = 0
        if self._path is None:
            return
        try:
            if not self._lines:
                # The common case, once per stored batch: cheap, and safe
                # unsynced (lines replayed after a crash are stored once). A
                # truncate changes no directory entry: no directory fsync either.
                if self._path.exists():
                    os.truncate(self._path, 0)
            else:
                tmp = self._path.with_suffix(".tmp")
                with _private(tmp, "w") as fh:
                    fh.write("".join(line + "\n" for line in self._lines))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self._path)
                _fsync_dir(self._path.parent)
        except OSError as exc:
            self.disk_error = str(exc)
            self._log.error("journal_write_failed", path=str(self._path), error=str(exc))


def _private(path: Path, mode: Literal["a", "w"]) -> TextIO:
    """Open for appending or rewriting; a file it creates is mode 0600 (the daemon's alone)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    return open(os.open(path, flags, 0o600), mode, encoding="utf-8")


def _fsync_dir(directory: Path) -> None:
    """A new or renamed file survives a power cut only once its directory is synced too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

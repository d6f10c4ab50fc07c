"""Calls Asterisk handled while consentd was away, put into the ledger from the fallback log.

When no consentd is connected, ``Stasis()`` returns at once and the dialplan
carries the call on unrecorded (``[consentd-after-stasis-FAILED]``), or takes
a message with ``VoiceMail()`` after the queue (``[consentd-queue]``). Those
branches append one line per fact to a log file with ``FILE()``, and a hangup
handler appends the end (``[consentd-fallback-log]`` in extensions.conf); no
CDR or CEL engine is needed. A line is::

    2|EVENT|2026-11-29T16:00:00.123|UNIQUEID|LINKEDID|DID_B64|CALLER_B64|EXTRA...

The dialled number is base64 like the caller ID: the dialplan's ``_X.`` takes
anything after the first digit, a newline or a ``|`` included, and a number
written as it came could end the line and forge the next (version 1 wrote it
so; such lines are still read). Both are cleaned like a live call's
(consentd/safe_text.py) before they reach the ledger.

``EVENT`` is ``started`` (no extra), ``voicemail`` (extra: the mailbox, base64)
or ``ended`` (extras: ``HANGUPCAUSE``, ``VMSTATUS``); the time is UTC.

``parse_line`` is pure. ``FallbackLog`` follows the file like ``tail -F``:
only complete lines (a torn tail waits for its newline), from the start again
when the file is truncated, and on to the new file when it is rotated (after
what the old one still held). ``FallbackReconciler`` turns each record into
ledger rows with deterministic keys, so reading the file again (every start
reads it from the beginning) never duplicates a row. Only what the lines say
is written: no policy, no recording, no voicemail file name.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from consentd.ledger import LedgerEvent
from consentd.safe_text import clean_network_text

FORMAT_VERSION = "2"
#: Version 1 lines (the dialled number as it came) are still read.
_VERSIONS = ("1", FORMAT_VERSION)
#: Bytes read per poll (some 10,000 lines): a long file is taken in steps.
MAX_READ = 1 << 20
#: Extra fields after the seven common ones, per event.
_EXTRAS = {"started": (0, 1), "voicemail": (1, 1), "ended": (2, 2)}
#: How the dialplan branch that wrote a call's first line is named in the ledger.
BRANCHES = {"started": "stasis_failed", "voicemail": "voicemail"}


@dataclass(frozen=True)
class FallbackRecord:
    event: str
    at: datetime
    uniqueid: str
    linkedid: str
    did: str
    caller: str
    mailbox: str | None = None
    hangup_cause: str | None = None
    voicemail_status: str | None = None


class MalformedLine(ValueError):
    """A line of the fallback log that is not a record; ``line_no`` counts from 1."""

    def __init__(self, line_no: int, reason: str) -> None:
        super().__init__(f"line {line_no}: {reason}")
        self.line_no = line_no
        self.reason = reason


def parse_line(text: str, line_no: int = 0) -> FallbackRecord:
    """One line (without its newline) as a record; raises MalformedLine."""
    fields = text.rstrip("\r").split("|")
    if fields[0] not in _VERSIONS:
        raise MalformedLine(line_no, f"unknown format version {fields[0][:20]!r}")
    if len(fields) < 7:
        raise MalformedLine(line_no, f"{len(fields)} fields, expected at least 7")
    _, event, stamp, uniqueid, linkedid, did, caller_b64, *extra = fields
    if event not in _EXTRAS:
        raise MalformedLine(line_no, f"unknown event {event[:20]!r}")
    least, most = _EXTRAS[event]
    if not least <= len(extra) <= most:
        raise MalformedLine(line_no, f"{event}: {len(fields)} fields, expected {7 + most}")
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        raise MalformedLine(line_no, f"bad time {stamp[:40]!r}") from None
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if not uniqueid:
        raise MalformedLine(line_no, "empty UNIQUEID")
    record = FallbackRecord(
        event=event,
        at=at,
        uniqueid=uniqueid,
        linkedid=linkedid,
        did=did if fields[0] == "1" else _decode(did, line_no, "did"),
        caller=_decode(caller_b64, line_no, "caller"),
    )
    if event == "voicemail":
        return _with(record, mailbox=_decode(extra[0], line_no, "mailbox") or None)
    if event == "ended":
        # HANGUPCAUSE 0 is Asterisk's "not defined" (a caller's BYE often leaves it so).
        cause = extra[0] if extra[0] not in ("", "0") else None
        return _with(record, hangup_cause=cause, voicemail_status=extra[1] or None)
    return record


def _with(record: FallbackRecord, **changes: Any) -> FallbackRecord:
    return FallbackRecord(**{**record.__dict__, **changes})


def _decode(value: str, line_no: int, what: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        raise MalformedLine(line_no, f"{what} is not base64: {value[:40]!r}") from None


def ledger_events(record: FallbackRecord, node: str) -> list[LedgerEvent]:
    """The ledger rows that say what ``record`` says; the same record gives the same keys."""
    call_id = f"fallback:{node}:{record.uniqueid}"
    if record.event == "ended":
        kind, seq = "call_ended", 1
        data: dict[str, Any] = {
            "cause": "hangup",
            "hangup_cause": record.hangup_cause,
            "voicemail_status": record.voicemail_status,
        }
    else:
        kind, seq = "call_started", 0
        # Deliberately no channel_id: adoption finds a channel's consentd call by
        # that key, and this call is not one.
        data = {
            "did": clean_network_text(record.did),
            "caller": clean_network_text(record.caller),
            "direction": "inbound",
            "line": None,
            "policy": None,
            "policy_source": "none",
            "consentd_unavailable": True,
            "fallback": BRANCHES[record.event],
            "uniqueid": record.uniqueid,
            "linkedid": record.linkedid,
            "mailbox": record.mailbox,
            "node": node,
        }
    return [
        LedgerEvent(
            event_key=f"{call_id}:{record.event}",
            call_id=call_id,
            node=node,
            seq=seq,
            kind=kind,
            occurred_at=record.at,
            data=data,
        )
    ]


class FallbackLog:
    """Complete new lines of a file that is appended to, truncated and rotated."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._inode: tuple[int, int] | None = None
        self._offset = 0
        self._line_no = 0
        self._partial = b""
        self._unread = False
        self._log = structlog.get_logger("consentd.fallback")

    @property
    def behind(self) -> bool:
        """The last read stopped before the end of the file."""
        return self._unread

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None

    def read(self) -> list[tuple[int, str]]:
        """(line number, text) of every complete line written since the last call."""
        lines: list[tuple[int, str]] = []
        if self._file is None and not self._open():
            return lines
        lines += self._drain()
        if self._unread:
            return lines  # the rest of this file first, at the next read
        try:
            now = os.stat(self.path)
            rotated = (now.st_dev, now.st_ino) != self._inode
        except FileNotFoundError:
            return lines  # moved away, nothing new yet: keep reading the old one
        if rotated:
            if self._partial:
                self._log.warning(
                    "fallback_line_torn",
                    file=str(self.path),
                    line=self._line_no + 1,
                    action="dropped at rotation",
                )
            self.close()
            if self._open():
                lines += self._drain()
        return lines

    def _open(self) -> bool:
        try:
            handle = open(self.path, "rb")  # kept open between reads, like tail -F
        except FileNotFoundError:
            return False
        stat = os.fstat(handle.fileno())
        self._file, self._inode = handle, (stat.st_dev, stat.st_ino)
        self._offset, self._line_no, self._partial = 0, 0, b""
        return True

    def _drain(self) -> list[tuple[int, str]]:
        assert self._file is not None
        if os.fstat(self._file.fileno()).st_size < self._offset:
            self._log.info("fallback_log_truncated", file=str(self.path), action="from the start")
            self._offset, self._line_no, self._partial = 0, 0, b""
        self._file.seek(self._offset)
        data = self._file.read(MAX_READ)
        self._unread = len(data) == MAX_READ
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        lines = []
        for raw in complete:
            self._line_no += 1
            lines.append((self._line_no, raw.decode("utf-8", errors="replace")))
        return lines


class FallbackReconciler:
    """Reads the fallback log at start and every ``interval`` seconds into the ledger."""

    def __init__(
        self,
        path: Path,
        node: str,
        submit: Callable[[LedgerEvent], None],
        *,
        interval: float = 3.0,
    ) -> None:
        self.log_file = FallbackLog(path)
        self._node = node
        self._submit = submit
        self._interval = interval
        self.submitted = 0
        self.malformed = 0
        self._log = structlog.get_logger("consentd.fallback")

    def take(self, lines: list[tuple[int, str]]) -> int:
        """Submit the rows of these lines; a malformed line is logged and skipped."""
        count = 0
        for line_no, text in lines:
            if not text.strip():
                continue
            try:
                record = parse_line(text, line_no)
            except MalformedLine as exc:
                self.malformed += 1
                self._log.warning(
                    "fallback_line_malformed",
                    file=str(self.log_file.path),
                    line=exc.line_no,
                    reason=exc.reason,
                    action="skipped",
                )
                continue
            for event in ledger_events(record, self._node):
                self._submit(event)
                count += 1
        self.submitted += count
        return count

    async def poll(self) -> int:
        """Read what is new (off the event loop) and submit it; returns rows submitted."""
        return self.take(await asyncio.to_thread(self.log_file.read))

    async def run(self) -> None:
        """Until cancelled. No failure here may stop the daemon: log it and try again."""
        try:
            while True:
                try:
                    count = await self.poll()
                    if count:
                        self._log.info("fallback_calls_reconciled", rows=count)
                except Exception:
                    self._log.exception("fallback_log_read_failed", file=str(self.log_file.path))
                    self.log_file.close()  # start over from a fresh open; keys dedupe
                # A long file is read in steps, without waiting between them.
                await asyncio.sleep(0 if self.log_file.behind else self._interval)
        finally:
            self.log_file.close()

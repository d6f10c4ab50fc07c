"""Refused audio whose delete failed is deleted again, until it is gone.

A call's runner deletes a refused recording at once and, when the recording
store fails (Asterisk's ARI away for longer than its 10 s of retries, a disk
that refuses), leaves ``command_failed`` (command ``DeleteRecording``, with
the segment and file) and no ``recording_deleted``. The call may end long
before the store is back. Nobody may have to notice that by hand: this task
looks in the ledger every ``interval`` seconds for such segments of this
node's ended calls, deletes them through the same store and writes the
``recording_deleted`` row (``late: true``) the call could not. Only ended
calls whose runner has returned: a running call's rows are numbered by its
runner, and adoption after a restart settles its owed deletions itself.

``owed_deletions`` is pure; ``OwedDeletionSweeper`` does the I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from consentd.ledger import LedgerEvent, LedgerWriter
from consentd.recording_store import STORE_ERRORS, RecordingStore

#: How often the ledger is searched for refused audio still on the PBX.
SWEEP_SECONDS = 30.0


@dataclass(frozen=True)
class OwedDeletion:
    call_id: str
    node: str
    segment: int
    file: str
    #: The seq the ``recording_deleted`` row takes: after every row of the call.
    seq: int
    #: Where consentd sees the file and whether it was bridged-only, as the
    #: segment's other rows say (the row carries what theirs carry).
    path: str
    bridged_only: bool = False

    def row_data(self, found: bool) -> dict[str, object]:
        return {
            "segment": self.segment,
            "file": self.file,
            "path": self.path,
            "bridged_only": self.bridged_only,
            "late": True,
            "found": found,
        }


def owed_deletions(rows: Sequence[LedgerEvent]) -> list[OwedDeletion]:
    """The segments of one ended call whose delete failed and that no row says are
    deleted since; rows in any order. A call still running owes nothing here."""
    ordered = sorted(rows, key=lambda e: e.seq)
    if not ordered or "call_ended" not in {e.kind for e in ordered}:
        return []
    deleted = {e.data.get("segment") for e in ordered if e.kind == "recording_deleted"}
    started = {e.data.get("segment"): e.data for e in ordered if e.kind == "recording_started"}
    failed: dict[int, OwedDeletion] = {}
    next_seq = ordered[-1].seq + 1
    for event in ordered:
        data = event.data
        if event.kind != "command_failed" or data.get("command") != "DeleteRecording":
            continue
        segment, file = data.get("segment"), data.get("file")
        if not isinstance(segment, int) or not isinstance(file, str) or segment in deleted:
            continue  # an older row names no file: nothing to find it by
        if segment not in failed:
            began = started.get(segment, {})
            failed[segment] = OwedDeletion(
                event.call_id,
                event.node,
                segment,
                file,
                next_seq + len(failed),
                path=str(began.get("path") or file),
                bridged_only=bool(began.get("bridged_only")),
            )
    return list(failed.values())


class OwedDeletionSweeper:
    """Deletes refused audio the calls could not, from the ledger; runs beside them."""

    def __init__(
        self,
        node: str,
        writer: LedgerWriter,
        recordings: RecordingStore,
        clock: Callable[[], datetime],
        *,
        running: Callable[[str], bool] = lambda call_id: False,
        interval: float = SWEEP_SECONDS,
    ) -> None:
        """``running(call_id)``: the call's runner is still at work; its rows are
        numbered by it until it returns, so the call waits for the next sweep."""
        self._node = node
        self._running = running
        self._writer = writer
        self._recordings = recordings
        self._clock = clock
        self._interval = interval
        #: Segments deleted by this process whose row may not be stored yet.
        self._settled: set[tuple[str, int]] = set()
        #: Refused recordings still on the PBX after the last sweep (a gauge).
        self.owed = 0
        self._log = structlog.get_logger("consentd.owed_deletions")

    async def run(self) -> None:
        while True:
            await self.sweep()
            await asyncio.sleep(self._interval)

    async def sweep(self) -> int | None:
        """One pass; how many refused recordings are still not deleted, or None
        when the ledger could not say."""
        calls = await self._writer.failed_deletions(self._node)
        if calls is None:
            return None  # the store is away: next time
        owed = [
            d
            for call_id, rows in calls.items()
            if not self._running(call_id)
            for d in owed_deletions(rows)
            if (d.call_id, d.segment) not in self._settled
        ]
        left = 0
        for deletion in owed:
            if not await self._delete(deletion):
                left += 1
        self.owed = left
        return left

    async def _delete(self, owed: OwedDeletion) -> bool:
        try:
            found = await self._recordings.delete(owed.file)
        except STORE_ERRORS as exc:
            self._log.error(
                "refused_audio_still_not_deleted",
                call_id=owed.call_id,
                file=owed.file,
                store=self._recordings.kind,
                error=str(exc),
                action=f"tried again every {self._interval:g} s; or delete it on the PBX",
            )
            return False
        self._settled.add((owed.call_id, owed.segment))
        self._writer.submit(
            LedgerEvent(
                # One key per segment: a second sweep (or a restart's) cannot add another.
                event_key=f"{owed.call_id}/late-delete-{owed.segment}",
                call_id=owed.call_id,
                node=owed.node,
                seq=owed.seq,
                kind="recording_deleted",
                occurred_at=self._clock(),
                data=owed.row_data(found),
            )
        )
        self._log.warning(
            "refused_audio_deleted_late", call_id=owed.call_id, file=owed.file, found=found
        )
        return True

"""The consent ledger: events, the store interface, and the writer that never blocks calls.

Call control must not wait for PostgreSQL, and nothing may be lost while the
database is away. So the call flow hands events to ``LedgerWriter.submit``
(a queue put), and a background task writes them in batches, first to an
on-disk journal (write-ahead, fsynced) and then to the store; what the store
cannot take stays journalled and is replayed when the database is back.
Every event carries an idempotency key, so a replay never duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from consentd.journal import Journal


@dataclass(frozen=True)
class LedgerEvent:
    event_key: str
    call_id: str
    node: str
    seq: int
    kind: str
    occurred_at: datetime
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """One journal line. Built field by field: ``asdict`` deep-copies ``data``
        first, and that copy was 5 % of the daemon's CPU samples at 300 calls/s."""
        raw = {
            "call_id": self.call_id,
            "data": self.data,
            "event_key": self.event_key,
            "kind": self.kind,
            "node": self.node,
            "occurred_at": self.occurred_at.isoformat(),
            "seq": self.seq,
        }
        return json.dumps(raw, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> LedgerEvent:
        raw = json.loads(line)
        raw["occurred_at"] = datetime.fromisoformat(raw["occurred_at"])
        return cls(**raw)


class LedgerUnavailable(Exception):
    """The store cannot be reached; the caller should journal and retry."""


class LedgerStore(Protocol):
    async def append(self, events: Sequence[LedgerEvent]) -> None:
        """Store events; already stored keys are ignored. Raises LedgerUnavailable."""

    async def recent_call_ids(self, limit: int) -> list[str]:
        """Call ids, most recently started first."""

    async def events_of(self, call_ids: Sequence[str]) -> list[LedgerEvent]:
        """All events of these calls in ledger order."""

    async def events_of_channel(self, channel_id: str) -> list[LedgerEvent]:
        """All events of the latest call on this Asterisk channel, in ledger order."""

    async def open_calls(self, node: str, since: datetime) -> list[LedgerEvent]:
        """All events of this node's calls started since then that never ended."""

    async def failed_deletions(self, node: str) -> list[LedgerEvent]:
        """All events of this node's ended calls with a refused recording whose
        delete failed (``command_failed``, command ``DeleteRecording``) and that
        has no ``recording_deleted`` since. Raises LedgerUnavailable."""


class MemoryLedger:
    """An in-process store with the same semantics, for unit tests and dry runs."""

    def __init__(self) -> None:
        self.events: dict[str, LedgerEvent] = {}
        self.available = True

    async def append(self, events: Sequence[LedgerEvent]) -> None:
        if not self.available:
            raise LedgerUnavailable("memory ledger switched off")
        for event in events:
            self.events.setdefault(event.event_key, event)

    async def recent_call_ids(self, limit: int) -> list[str]:
        starts = [e for e in self.events.values() if e.kind == "call_started"]
        starts.sort(key=lambda e: e.occurred_at, reverse=True)
        return [e.call_id for e in starts[:limit]]

    async def events_of(self, call_ids: Sequence[str]) -> list[LedgerEvent]:
        wanted = set(call_ids)
        found = [e for e in self.events.values() if e.call_id in wanted]
        return sorted(found, key=lambda e: (e.call_id, e.seq))

    async def events_of_channel(self, channel_id: str) -> list[LedgerEvent]:
        if not self.available:
            raise LedgerUnavailable("memory ledger switched off")
        return latest_call_of_channel(list(self.events.values()), channel_id)

    async def open_calls(self, node: str, since: datetime) -> list[LedgerEvent]:
        if not self.available:
            raise LedgerUnavailable("memory ledger switched off")
        return open_calls_of(list(self.events.values()), node, since)

    async def failed_deletions(self, node: str) -> list[LedgerEvent]:
        if not self.available:
            raise LedgerUnavailable("memory ledger switched off")
        found = []
        for rows in rows_by_call(self.events.values()).values():
            kinds = {e.kind for e in rows}
            failed = any(
                e.kind == "command_failed"
                and e.node == node
                and e.data.get("command") == "DeleteRecording"
                for e in rows
            )
            if failed and "call_ended" in kinds:
                found.extend(rows)
        return found


def rows_by_call(events: Iterable[LedgerEvent]) -> dict[str, list[LedgerEvent]]:
    """Each call's rows, by call id, in seq order."""
    by_call: dict[str, list[LedgerEvent]] = {}
    for event in events:
        by_call.setdefault(event.call_id, []).append(event)
    for rows in by_call.values():
        rows.sort(key=lambda e: e.seq)
    return by_call


def open_calls_of(events: Sequence[LedgerEvent], node: str, since: datetime) -> list[LedgerEvent]:
    """Rows of ``node``'s calls started since ``since`` that have no ``call_ended``.

    Calls the dialplan handled without consentd (``consentd_unavailable``) are
    never this node's to close or adopt.
    """
    found = []
    for rows in rows_by_call(events).values():
        first = rows[0]
        if (
            first.kind == "call_started"
            and first.node == node
            and not first.data.get("consentd_unavailable")
            and first.occurred_at >= since
            and "call_ended" not in {e.kind for e in rows}
        ):
            found.extend(rows)
    return found


def latest_call_of_channel(events: Sequence[LedgerEvent], channel_id: str) -> list[LedgerEvent]:
    """The rows of the most recently started call on ``channel_id``, by seq."""
    starts = [
        e for e in events if e.kind == "call_started" and e.data.get("channel_id") == channel_id
    ]
    if not starts:
        return []
    call_id = max(starts, key=lambda e: e.occurred_at).call_id
    return sorted((e for e in events if e.call_id == call_id), key=lambda e: e.seq)


class LedgerWriter:
    """Stores events in the background; journals them while the store is away."""

    def __init__(
        self,
        store: LedgerStore,
        journal: Journal,
        *,
        batch_size: int = 200,
        retry_seconds: float = 2.0,
        linger_seconds: float = 0.05,
        observe_lag: Callable[[float], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``linger_seconds``: after the first event, wait this long for more to share
        its transaction. A commit per handful of rows cost PostgreSQL a WAL flush each.

        ``observe_lag`` hears, for every stored event, the seconds from its
        ``occurred_at`` to the store taking it (``clock``): the ledger write lag."""
        self._store = store
        self._journal = journal
        self._queue: asyncio.Queue[LedgerEvent | None] = asyncio.Queue()
        self._batch_size = batch_size
        self._retry_seconds = retry_seconds
        self._linger = linger_seconds
        self._observe_lag = observe_lag
        self._clock = clock
        self._log = structlog.get_logger("consentd.ledger")
        self.store_reachable = True
        self.stored = 0
        self.journalled = 0
        #: Events taken from the queue and not yet in the journal.
        self._in_flight = 0
        #: Set once the journal left by an earlier run has been replayed (or tried).
        self.ready = asyncio.Event()

    def submit(self, event: LedgerEvent) -> None:
        self._queue.put_nowait(event)

    @property
    def backlog(self) -> int:
        return self._queue.qsize() + self._in_flight + self._journal.pending()

    @property
    def journal_backlog(self) -> int:
        """Events in the journal (on disk, or in memory while the disk refuses) not stored yet."""
        return self._journal.pending()

    async def run(self) -> None:
        """Drain the queue until ``close()``; replay the journal whenever the store is back."""
        await self._replay_journal()
        self.ready.set()
        closing = False
        while not closing:
            try:
                first = await asyncio.wait_for(self._queue.get(), self._retry_seconds)
            except TimeoutError:
                if self._journal.pending():
                    await self._replay_journal()
                continue
            if first is not None and self._linger > 0 and self._queue.qsize() < self._batch_size:
                await asyncio.sleep(self._linger)
            batch: list[LedgerEvent] = []
            item: LedgerEvent | None = first
            while True:
                if item is None:
                    closing = True
                else:
                    batch.append(item)
                if closing or len(batch) >= self._batch_size or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if batch:
                try:
                    await self._store_or_journal(batch)
                except Exception:
                    # Never lose the writer: the batch is in the journal (or in its
                    # memory while the disk refuses) and is stored on a later pass.
                    self._log.exception("ledger_writer_failed", events=len(batch))
                    self.store_reachable = False
        if self._journal.pending():
            await self._replay_journal()

    async def history_of(self, channel_id: str) -> list[LedgerEvent]:
        """What the ledger knows of the call on this channel: stored, journalled or queued."""
        known = await self._known(lambda: self._store.events_of_channel(channel_id))
        return latest_call_of_channel(known, channel_id)

    async def open_calls(self, node: str, since: datetime) -> dict[str, list[LedgerEvent]]:
        """This node's calls that never ended, by call id (stored, journalled or queued).

        Rows still on their way count too: a call whose call_ended waits in the
        queue has ended, and must not be closed a second time.
        """
        known = await self._known(lambda: self._store.open_calls(node, since))
        return rows_by_call(open_calls_of(known, node, since))

    async def failed_deletions(self, node: str) -> dict[str, list[LedgerEvent]] | None:
        """This node's ended calls with a failed delete of refused audio, by call id;
        None while the store cannot answer or rows wait in the journal.

        A row written for such a call needs the call's next seq, and that is only
        known from all its rows: a guess from the journal's alone could collide
        with a stored row and be dropped as a duplicate. Rows still queued count.
        """
        if not self.store_reachable or self._journal.pending():
            return None
        try:
            stored = await self._store.failed_deletions(node)
        except LedgerUnavailable as exc:
            self._log.warning("ledger_history_unavailable", error=str(exc))
            return None
        calls: dict[str, dict[str, LedgerEvent]] = {}
        for event in stored:
            calls.setdefault(event.call_id, {})[event.event_key] = event
        for event in self._queued():
            if event.call_id in calls:
                calls[event.call_id].setdefault(event.event_key, event)
        return {call_id: list(rows.values()) for call_id, rows in calls.items()}

    async def _known(
        self, stored: Callable[[], Awaitable[list[LedgerEvent]]], *, wait: float = 5.0
    ) -> list[LedgerEvent]:
        """The store's answer to ``stored`` plus every row not stored yet, once each.

        Waits (up to ``wait`` s) for the journal of an earlier run to be
        replayed, so a call is never rebuilt from half its rows.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self.ready.wait()
        known: dict[str, LedgerEvent] = {}
        try:
            for event in await stored():
                known[event.event_key] = event
        except LedgerUnavailable as exc:
            self._log.warning("ledger_history_unavailable", error=str(exc))
        pending = [LedgerEvent.from_json(line) for line in self._journal.lines()]
        pending += self._queued()
        for event in pending:
            known.setdefault(event.event_key, event)
        return list(known.values())

    def _queued(self) -> list[LedgerEvent]:
        """Events submitted and not yet taken by the writer."""
        return [e for e in self._queue._queue if e is not None]  # type: ignore[attr-defined]

    async def close(self) -> None:
        """Ask ``run()`` to store what is queued and return."""
        self._queue.put_nowait(None)

    async def _store_or_journal(self, batch: list[LedgerEvent]) -> None:
        """Journal the batch (write-ahead, durable), then store the journal in order.

        The fsync runs off the event loop: calls must not wait for the disk.
        One write and one fsync per batch, like PostgreSQL's own commit.
        """
        self._in_flight = len(batch)
        lines = [event.to_json() for event in batch]
        try:
            await asyncio.to_thread(self._journal.append, lines)
        finally:
            self._in_flight = 0
        # The replay stores these lines as the events they came from: parsing
        # back what was serialised a moment ago was half the writer's CPU.
        await self._replay_journal(dict(zip(lines, batch, strict=True)))
        if self._journal.pending():
            # Replay stops at the first failure, so this batch is still waiting.
            self.journalled += len(batch)

    @property
    def full(self) -> bool:
        """The journal reached its bound: take no new calls until it drains."""
        return self._journal.full

    async def _replay_journal(self, parsed: Mapping[str, LedgerEvent] | None = None) -> None:
        """Store the journal in order; ``parsed`` gives lines' events already in memory."""
        parsed = parsed or {}
        try:
            for chunk in self._journal.chunks(self._batch_size):
                events = [parsed.get(line) or LedgerEvent.from_json(line) for line in chunk.lines]
                try:
                    await self._store.append(events)
                except LedgerUnavailable as exc:
                    self._went_away(exc)
                    return
                chunk.done()
                self.stored += len(events)
                if self._observe_lag is not None:
                    stored_at = self._clock()
                    for event in events:
                        self._observe_lag((stored_at - event.occurred_at).total_seconds())
        finally:
            await asyncio.to_thread(self._journal.compact)  # one rewrite, not one per chunk
        if not self.store_reachable:
            self.store_reachable = True
            self._log.info("ledger_store_back", journal_replayed=True)

    def _went_away(self, exc: Exception) -> None:
        if self.store_reachable:
            self._log.warning("ledger_store_unavailable", error=str(exc), action="journalling")
        self.store_reachable = False

"""The ledger writer: nothing is lost or duplicated while the store comes and goes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consentd.journal import Journal
from consentd.ledger import LedgerEvent, LedgerUnavailable, LedgerWriter, MemoryLedger
from consentd.ledger_pg import PostgresLedger

T0 = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)


class WatchedLedger(MemoryLedger):
    """A memory store that remembers every key it was asked to store, repeats included."""

    def __init__(self) -> None:
        super().__init__()
        self.appended: list[str] = []

    async def append(self, events: Sequence[LedgerEvent]) -> None:
        await super().append(events)
        self.appended += [e.event_key for e in events]


def event(seq: int, call_id: str = "pbx1:1764432000.17") -> LedgerEvent:
    return LedgerEvent(
        event_key=f"{call_id}/{seq}",
        call_id=call_id,
        node="pbx1",
        seq=seq,
        kind="keypress" if seq else "call_started",
        occurred_at=T0 + timedelta(seconds=seq),
        data={"digit": str(seq % 10), "decides": False},
    )


def keys(events: Sequence[LedgerEvent]) -> list[str]:
    return [e.event_key for e in events]


async def until(condition: Callable[[], bool], timeout: float = 1.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running(writer: LedgerWriter) -> AsyncIterator[asyncio.Task[None]]:
    """Run the writer for the block, then close it and wait until it has drained."""
    task = asyncio.create_task(writer.run())
    try:
        yield task
    finally:
        await writer.close()
        await asyncio.wait_for(task, 1.0)


def journal_empty(path: Path) -> bool:
    """Nothing left to replay: the file is gone or truncated."""
    return not path.exists() or path.read_bytes() == b""


def journal_on_disk(path: Path) -> list[LedgerEvent]:
    return [LedgerEvent.from_json(line) for line in path.read_text().splitlines()]


async def test_submitted_events_are_stored(tmp_path: Path) -> None:
    store = WatchedLedger()
    writer = LedgerWriter(store, Journal(tmp_path / "pbx1.jsonl"), retry_seconds=0.05)
    events = [event(n) for n in range(3)]

    async with running(writer):
        for e in events:
            writer.submit(e)
        await until(lambda: len(store.events) == 3)

    assert list(store.events.values()) == events
    # The journal line is the durable copy; the store gets the submitted events
    # themselves (parsing each line back cost as much as writing it).
    assert all(store.events[e.event_key] is e for e in events)
    assert writer.stored == 3 and writer.journalled == 0
    assert (tmp_path / "pbx1.jsonl").read_bytes() == b""  # stored, so truncated


async def test_a_fresh_batch_behind_an_older_journal_is_stored_after_it_in_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pbx1.jsonl"
    earlier = [event(n, call_id="pbx1:old") for n in range(3)]
    Journal(path).append([e.to_json() for e in earlier])
    store = WatchedLedger()
    store.available = False
    writer = LedgerWriter(store, Journal(path), retry_seconds=30)
    fresh = [event(n, call_id="pbx1:new") for n in range(2)]

    async with running(writer):
        await until(lambda: writer.ready.is_set())
        store.available = True
        for e in fresh:
            writer.submit(e)
        await until(lambda: len(store.events) == 5)

    assert store.appended == keys(earlier) + keys(fresh)
    assert journal_empty(path)


class DiskCheckingLedger(WatchedLedger):
    """Records, at each append, which of the batch's events the journal file held."""

    def __init__(self, journal_path: Path) -> None:
        super().__init__()
        self.journal_path = journal_path
        self.on_disk_when_stored: list[bool] = []

    async def append(self, events: Sequence[LedgerEvent]) -> None:
        on_disk = set(keys(journal_on_disk(self.journal_path)))
        self.on_disk_when_stored += [e.event_key in on_disk for e in events]
        await super().append(events)


async def test_every_event_is_on_disk_before_it_is_sent_to_the_store(tmp_path: Path) -> None:
    """Write-ahead: a crash at any moment loses nothing that reached the writer."""
    path = tmp_path / "pbx1.jsonl"
    store = DiskCheckingLedger(path)
    writer = LedgerWriter(store, Journal(path), retry_seconds=0.05, linger_seconds=0.0)

    async with running(writer):
        for n in range(20):
            writer.submit(event(n))
            await asyncio.sleep(0.005)
        await until(lambda: len(store.events) == 20)

    assert len(store.on_disk_when_stored) == 20
    assert all(store.on_disk_when_stored)


async def test_events_go_to_the_journal_on_disk_in_order_while_the_store_is_away(
    tmp_path: Path,
) -> None:
    store = WatchedLedger()
    store.available = False
    path = tmp_path / "journal" / "pbx1.jsonl"
    writer = LedgerWriter(store, Journal(path), retry_seconds=0.05)
    events = [event(n) for n in range(5)]

    async with running(writer):
        for e in events:
            writer.submit(e)
            await asyncio.sleep(0)
        await until(lambda: writer.journalled == 5)

        assert journal_on_disk(path) == events
        assert store.events == {}
        assert writer.store_reachable is False
        assert writer.backlog == 5

    assert journal_on_disk(path) == events  # closing while away keeps them on disk


async def test_journalled_events_are_replayed_in_order_without_duplicates_when_store_is_back(
    tmp_path: Path,
) -> None:
    store = WatchedLedger()
    path = tmp_path / "pbx1.jsonl"
    writer = LedgerWriter(store, Journal(path), retry_seconds=0.05)
    events = [event(n) for n in range(8)]

    async with running(writer):
        writer.submit(events[0])
        await until(lambda: len(store.events) == 1)
        store.available = False
        for e in events[1:5]:
            writer.submit(e)
            await asyncio.sleep(0)
        await until(lambda: writer.journalled == 4)
        store.available = True
        await until(lambda: len(store.events) == 5)  # replayed by the retry timer
        for e in events[5:]:
            writer.submit(e)
        await until(lambda: len(store.events) == 8)

    assert store.appended == keys(events)
    assert list(store.events.values()) == events
    assert writer.store_reachable is True
    assert writer.backlog == 0
    assert journal_empty(path)


async def test_new_event_after_an_outage_waits_for_older_journalled_events(
    tmp_path: Path,
) -> None:
    store = WatchedLedger()
    # A retry timer far away: only the new event can trigger the replay.
    writer = LedgerWriter(store, Journal(tmp_path / "pbx1.jsonl"), retry_seconds=30)
    events = [event(n) for n in range(4)]

    async with running(writer):
        store.available = False
        writer.submit(events[0])
        writer.submit(events[1])
        await until(lambda: writer.journalled == 2)
        store.available = True
        writer.submit(events[2])
        writer.submit(events[3])
        await until(lambda: len(store.events) == 4)

    assert store.appended == keys(events)


async def test_journal_left_by_a_previous_run_is_replayed_at_start(tmp_path: Path) -> None:
    path = tmp_path / "pbx1.jsonl"
    earlier = [event(n, call_id="pbx1:old") for n in range(3)]
    Journal(path).append([e.to_json() for e in earlier])
    store = WatchedLedger()
    writer = LedgerWriter(store, Journal(path), retry_seconds=30)

    async with running(writer):
        await until(lambda: len(store.events) == 3)
        assert journal_empty(path)
        writer.submit(event(0))

    assert store.appended == [*keys(earlier), event(0).event_key]


async def test_replaying_an_event_the_store_already_has_keeps_one_copy(tmp_path: Path) -> None:
    path = tmp_path / "pbx1.jsonl"
    events = [event(n) for n in range(3)]
    store = WatchedLedger()
    await store.append(events[:2])  # stored, but the daemon died before dropping the journal
    Journal(path).append([e.to_json() for e in events])
    writer = LedgerWriter(store, Journal(path), retry_seconds=30)

    async with running(writer):
        await until(lambda: journal_empty(path))

    assert list(store.events.values()) == events


async def test_close_stores_everything_still_queued(tmp_path: Path) -> None:
    store = WatchedLedger()
    writer = LedgerWriter(store, Journal(tmp_path / "pbx1.jsonl"), batch_size=2)
    task = asyncio.create_task(writer.run())
    events = [event(n) for n in range(5)]
    for e in events:
        writer.submit(e)

    await writer.close()
    await asyncio.wait_for(task, 1.0)

    assert store.appended == keys(events)
    assert writer.stored == 5


async def test_events_journalled_at_shutdown_are_stored_by_the_next_run(tmp_path: Path) -> None:
    path = tmp_path / "pbx1.jsonl"
    down = WatchedLedger()
    down.available = False
    first = LedgerWriter(down, Journal(path), retry_seconds=30)
    task = asyncio.create_task(first.run())
    events = [event(n) for n in range(3)]
    for e in events:
        first.submit(e)
    await first.close()
    await asyncio.wait_for(task, 1.0)
    assert journal_on_disk(path) == events

    store = WatchedLedger()
    async with running(LedgerWriter(store, Journal(path), retry_seconds=30)):
        await until(lambda: len(store.events) == 3)

    assert store.appended == keys(events)


def test_journal_in_memory_keeps_lines_without_a_file() -> None:
    journal = Journal(None)
    journal.append(["a", "b", "c"])

    chunk = next(journal.chunks(2))
    assert chunk.lines == ["a", "b"]
    chunk.done()

    assert journal.pending() == 1
    assert [c.lines for c in journal.chunks(2)] == [["c"]]


def test_journal_chunks_stop_at_the_first_chunk_not_marked_done(tmp_path: Path) -> None:
    path = tmp_path / "pbx1.jsonl"
    journal = Journal(path)
    journal.append(["a", "b", "c"])

    seen = [chunk.lines for chunk in journal.chunks(2)]

    assert seen == [["a", "b"]]
    assert path.read_text() == "a\nb\nc\n"


# ---------------------------------------------------------------- serialisation

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
ZONES = st.one_of(
    st.just(UTC),
    st.integers(min_value=-14 * 60, max_value=14 * 60).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    ),
)


@given(
    st.builds(
        LedgerEvent,
        event_key=st.text(min_size=1, max_size=40),
        call_id=st.text(max_size=40),
        node=st.text(max_size=20),
        seq=st.integers(min_value=0, max_value=10**6),
        kind=st.sampled_from(["call_started", "keypress", "consent_decided", "call_ended"]),
        occurred_at=st.datetimes(timezones=ZONES),
        data=st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=6),
    )
)
def test_ledger_event_survives_a_json_round_trip(original: LedgerEvent) -> None:
    line = original.to_json()

    copy = LedgerEvent.from_json(line)

    assert "\n" not in line
    assert sorted(json.loads(line)) == sorted(f.name for f in fields(LedgerEvent))
    assert copy == original
    assert copy.occurred_at.utcoffset() == original.occurred_at.utcoffset()


class BatchCountingLedger(WatchedLedger):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def append(self, events: Sequence[LedgerEvent]) -> None:
        self.batches.append(len(events))
        await super().append(events)


async def test_events_arriving_within_the_linger_share_one_store_call(tmp_path: Path) -> None:
    store = BatchCountingLedger()
    writer = LedgerWriter(store, Journal(tmp_path / "pbx1.jsonl"), linger_seconds=0.2)
    events = [event(n) for n in range(6)]

    async with running(writer):
        writer.submit(events[0])
        await asyncio.sleep(0.05)  # the rest trickle in while the first waits
        for e in events[1:]:
            writer.submit(e)
        await until(lambda: len(store.events) == 6)

    assert store.batches == [6]
    assert store.appended == keys(events)


async def test_a_torn_last_line_is_set_aside_and_the_rest_replayed(tmp_path: Path) -> None:
    path = tmp_path / "journal" / "pbx1.jsonl"
    earlier = [event(n) for n in range(3)]
    Journal(path).append([e.to_json() for e in earlier])
    with path.open("a") as fh:
        fh.write(event(3).to_json()[:25])  # the crash came mid-write: no newline

    store = WatchedLedger()
    writer = LedgerWriter(store, Journal(path), retry_seconds=30)
    async with running(writer):
        await until(lambda: len(store.events) == 3)

    assert store.appended == keys(earlier)
    assert path.with_suffix(".torn").read_text() == event(3).to_json()[:25] + "\n"


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.DiskFullError("could not extend file: No space left on device"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"),
        asyncpg.exceptions.AdminShutdownError("terminating connection (57P01)"),
        asyncpg.exceptions.CrashShutdownError("57P02"),
        OSError(28, "No space left on device"),
        # Seen in the fault suite when PostgreSQL stopped mid-query.
        asyncpg.exceptions._base.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        asyncpg.exceptions.InterfaceError("connection is closed"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_every_database_failure_degrades_to_journalling(error: Exception) -> None:
    class FailingConnection:
        async def execute(self, *args: object, **kwargs: object) -> None:
            raise error

    class FailingPool:
        @asynccontextmanager
        async def acquire(self, timeout: float = 0) -> AsyncIterator[FailingConnection]:
            yield FailingConnection()

    store = PostgresLedger("postgresql://nowhere")

    async def pool() -> FailingPool:
        return FailingPool()

    store.connect = pool  # type: ignore[assignment,method-assign]

    with pytest.raises(LedgerUnavailable, match=type(error).__name__):
        await store.append([event(0)])


async def test_a_journal_whose_disk_refuses_keeps_events_in_memory_and_replays_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pbx1.jsonl"
    store = WatchedLedger()
    store.available = False
    journal = Journal(path)
    path.mkdir()  # every write now fails, as on a full or read-only disk
    writer = LedgerWriter(store, journal, retry_seconds=0.05)
    events = [event(n) for n in range(3)]

    async with running(writer):
        for e in events:
            writer.submit(e)
        await until(lambda: writer.journalled == 3)
        assert journal.disk_error is not None and writer.backlog == 3
        store.available = True
        await until(lambda: len(store.events) == 3)

    assert store.appended == keys(events)


async def test_a_long_journal_replays_in_one_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pbx1.jsonl"
    events = [event(n, call_id=f"pbx1:c{n // 10}") for n in range(5000)]
    Journal(path).append([e.to_json() for e in events])
    rewrites: list[int] = []
    original = Journal.compact

    def counting(self: Journal) -> None:
        rewrites.append(self.pending())
        original(self)

    monkeypatch.setattr(Journal, "compact", counting)
    store = WatchedLedger()
    writer = LedgerWriter(store, Journal(path), batch_size=200, retry_seconds=30)

    async with running(writer):
        await until(lambda: len(store.events) == 5000, timeout=10)

    assert len(rewrites) == 1  # not once per chunk of 200: the replay is linear
    assert journal_empty(path)


async def test_a_full_journal_says_so(tmp_path: Path) -> None:
    store = WatchedLedger()
    store.available = False
    writer = LedgerWriter(store, Journal(tmp_path / "pbx1.jsonl", max_lines=3), retry_seconds=30)

    async with running(writer):
        for n in range(3):
            writer.submit(event(n))
        await until(lambda: writer.journalled == 3)
        assert writer.full
        store.available = True


class FlakyLedger(WatchedLedger):
    """Fails once with an error nobody foresaw, then works."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def append(self, events: Sequence[LedgerEvent]) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("a bug in a driver")
        await super().append(events)


async def test_an_unforeseen_store_error_neither_kills_the_writer_nor_loses_the_batch(
    tmp_path: Path,
) -> None:
    store = FlakyLedger()
    writer = LedgerWriter(store, Journal(tmp_path / "pbx1.jsonl"), retry_seconds=0.05)
    events = [event(n) for n in range(4)]

    async with running(writer) as task:
        writer.submit(events[0])
        writer.submit(events[1])
        await asyncio.sleep(0.1)
        assert not task.done()  # still running after the error
        writer.submit(events[2])
        writer.submit(events[3])
        await until(lambda: len(store.events) == 4)

    assert list(store.events.values()) == events

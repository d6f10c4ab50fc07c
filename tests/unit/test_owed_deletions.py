"""Refused audio whose delete failed during the call is deleted after it, from the ledger.

The pure rule (which segments are owed, under which seq) on ledger rows; the
sweeper on a memory ledger with a store that fails and recovers; and whole
calls through the dispatcher, where Asterisk's ARI refuses the delete until
after the hangup, with the call's details before and after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest

from consentd.ari import CONNECTED, AriNotSent
from consentd.call_details import summarize
from consentd.journal import Journal
from consentd.ledger import LedgerEvent, LedgerWriter, MemoryLedger
from consentd.metrics import Metrics
from consentd.owed_deletions import OwedDeletion, OwedDeletionSweeper, owed_deletions
from consentd.recording_store import ASTERISK_RECORDING_DIR
from tests.unit.test_dispatcher import (
    POLICIES,
    Node,
    by_kind,
    dtmf,
    earlier_run,
    playback_finished,
    running_node,
    stasis_end,
    stasis_start,
    until,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
FILE = f"{ASTERISK_RECORDING_DIR}/consentd-pbx1_1764.1-1.wav"


def row(seq: int, kind: str, node: str = "pbx1", **data: Any) -> LedgerEvent:
    return LedgerEvent(f"c1/{seq}", "c1", node, seq, kind, T0 + timedelta(seconds=seq), dict(data))


def failed_delete(seq: int, segment: int = 1, file: str = FILE) -> LedgerEvent:
    return row(
        seq,
        "command_failed",
        command="DeleteRecording",
        error="refused",
        segment=segment,
        file=file,
    )


REFUSED_CALL = [
    row(0, "call_started", did="+4930100003"),
    row(1, "recording_started", segment=1, file=FILE),
    row(2, "consent_decided", action="opt_out"),
    row(3, "recording_stopped", segment=1, file=FILE),
    failed_delete(4),
]

LATE = {"segment": 1, "file": FILE, "path": FILE, "bridged_only": False, "late": True}

# ---------------------------------------------------------------- the rule


def test_an_ended_call_owes_the_segment_whose_delete_failed_under_its_next_seq() -> None:
    rows = [*REFUSED_CALL, row(5, "call_ended", cause="normal")]
    assert owed_deletions(list(reversed(rows))) == [OwedDeletion("c1", "pbx1", 1, FILE, 6, FILE)]


def test_a_running_call_owes_nothing_here_its_runner_or_adoption_does() -> None:
    assert owed_deletions(REFUSED_CALL) == []


def test_a_segment_deleted_since_is_owed_no_more() -> None:
    rows = [
        *REFUSED_CALL,
        row(5, "call_ended"),
        row(6, "recording_deleted", segment=1, file=FILE, late=True),
    ]
    assert owed_deletions(rows) == []


def test_two_failures_of_one_segment_owe_one_delete_and_two_segments_two_seqs() -> None:
    file_2 = FILE.replace("-1.wav", "-2.wav")
    rows = [
        *REFUSED_CALL,
        failed_delete(5),
        failed_delete(6, 2, file_2),
        row(7, "call_ended"),
    ]
    assert owed_deletions(rows) == [
        OwedDeletion("c1", "pbx1", 1, FILE, 8, FILE),
        OwedDeletion("c1", "pbx1", 2, file_2, 9, file_2),
    ]


def test_a_failure_row_naming_no_file_is_not_guessed_at() -> None:
    rows = [
        *REFUSED_CALL[:4],
        row(4, "command_failed", command="DeleteRecording", error="x"),
        row(5, "command_failed", command="StopRecording", error="x", segment=1, file=FILE),
        row(6, "call_ended"),
    ]
    assert owed_deletions(rows) == []


# ---------------------------------------------------------------- the sweeper


class FlakyStore:
    """A recording store that fails until ``working``; remembers what it deleted."""

    kind = "ari"

    def __init__(self, files: set[str], *, working: bool = False) -> None:
        self.files = files
        self.working = working
        self.deletes: list[str] = []

    async def delete(self, file: str) -> bool:
        self.deletes.append(file)
        if not self.working:
            raise AriNotSent("DELETE: connection refused")
        found = file in self.files
        self.files.discard(file)
        return found

    async def holds_no_audio(self, file: str) -> bool | None:
        raise AssertionError("not asked")

    async def audio_seconds(self, file: str) -> float | None:
        raise AssertionError("not asked")


@pytest.fixture
async def ledger() -> AsyncIterator[tuple[MemoryLedger, LedgerWriter]]:
    """A ledger holding one ended opt-out call whose refused audio could not be deleted."""
    store = MemoryLedger()
    await store.append([*REFUSED_CALL, row(5, "call_ended")])
    writer = LedgerWriter(store, Journal(None), retry_seconds=0.05, linger_seconds=0)
    task = asyncio.create_task(writer.run())
    yield store, writer
    await writer.close()
    await asyncio.wait_for(task, 1.0)


async def stored(writer: LedgerWriter) -> None:
    await until(lambda: writer.backlog == 0)


async def test_the_sweeper_deletes_once_the_store_is_back_and_writes_the_row_once(
    ledger: tuple[MemoryLedger, LedgerWriter],
) -> None:
    store, writer = ledger
    files = FlakyStore({FILE})
    registry = CollectorRegistry()
    sweeper = OwedDeletionSweeper("pbx1", writer, files, lambda: T0, interval=0.01)
    Metrics(registry).watch_owed_deletions(lambda: sweeper.owed)

    with structlog.testing.capture_logs() as logs:
        assert await sweeper.sweep() == 1
    assert FILE in files.files
    assert b"consentd_refused_recordings_not_deleted 1.0" in generate_latest(registry)
    errors = [e for e in logs if e["event"] == "refused_audio_still_not_deleted"]
    assert [(e["file"], e["log_level"]) for e in errors] == [(FILE, "error")]

    files.working = True
    assert await sweeper.sweep() == 0
    await stored(writer)
    assert files.files == set()
    deleted = by_kind(list(store.events.values()), "recording_deleted")
    assert [(e.seq, e.event_key, e.data) for e in deleted] == [
        (6, "c1/late-delete-1", {**LATE, "found": True})
    ]
    assert b"consentd_refused_recordings_not_deleted 0.0" in generate_latest(registry)

    assert await sweeper.sweep() == 0  # nothing owed now: not deleted or written again
    await stored(writer)
    assert files.deletes.count(FILE) == 2
    assert len(by_kind(list(store.events.values()), "recording_deleted")) == 1


async def test_a_restarted_daemon_neither_deletes_again_nor_writes_a_second_row(
    ledger: tuple[MemoryLedger, LedgerWriter],
) -> None:
    """The process that deleted is killed; the next one reads the ledger afresh."""
    store, writer = ledger
    files = FlakyStore({FILE}, working=True)
    assert await OwedDeletionSweeper("pbx1", writer, files, lambda: T0).sweep() == 0
    await stored(writer)
    restarted = OwedDeletionSweeper("pbx1", writer, files, lambda: T0)
    assert await restarted.sweep() == 0
    await stored(writer)
    assert files.deletes == [FILE]
    assert len(by_kind(list(store.events.values()), "recording_deleted")) == 1


async def test_a_call_whose_runner_is_still_at_work_waits_for_the_next_sweep(
    ledger: tuple[MemoryLedger, LedgerWriter],
) -> None:
    _, writer = ledger
    files = FlakyStore({FILE}, working=True)
    busy = {"c1"}
    sweeper = OwedDeletionSweeper("pbx1", writer, files, lambda: T0, running=busy.__contains__)
    assert await sweeper.sweep() == 0
    assert files.deletes == []
    busy.clear()
    assert await sweeper.sweep() == 0
    assert files.deletes == [FILE] and files.files == set()


async def test_a_file_already_gone_is_recorded_as_deleted_and_not_found(
    ledger: tuple[MemoryLedger, LedgerWriter],
) -> None:
    store, writer = ledger
    files = FlakyStore(set(), working=True)  # an operator deleted it by hand
    sweeper = OwedDeletionSweeper("pbx1", writer, files, lambda: T0)
    assert await sweeper.sweep() == 0
    await stored(writer)
    (deleted,) = by_kind(list(store.events.values()), "recording_deleted")
    assert deleted.data["found"] is False


async def test_another_nodes_calls_and_an_unreachable_ledger_are_left_alone(
    ledger: tuple[MemoryLedger, LedgerWriter],
) -> None:
    store, writer = ledger
    files = FlakyStore({FILE}, working=True)
    assert await OwedDeletionSweeper("pbx2", writer, files, lambda: T0).sweep() == 0
    store.available = False
    assert await OwedDeletionSweeper("pbx1", writer, files, lambda: T0).sweep() is None
    assert files.deletes == []  # a row it could write might collide: it waits


# ---------------------------------------------------------------- whole calls


def kept(rows: list[LedgerEvent]) -> list[bool]:
    details = summarize(rows, T0)
    assert details is not None
    return [segment["kept"] for segment in details["segments"]]


@pytest.fixture
async def ari_node(tmp_path: Path) -> AsyncIterator[Node]:
    async for pbx in running_node(tmp_path, POLICIES, recording_store="ari"):
        yield pbx


async def refused_with_asterisk_away(node: Node, chan: str) -> Path:
    """An opt-out caller presses 3 while Asterisk refuses every delete: the refused
    recording's file, which is still there."""
    file = f"{ASTERISK_RECORDING_DIR}/consentd-pbx1_{chan}-1.wav"
    await node.feed(stasis_start(chan, "+4930100003"), playback_finished(chan, f"{chan}-greeting"))
    node.ari.failing["delete_stored_recording"] = AriNotSent("DELETE: connection refused")
    await node.feed(dtmf(chan, "3"))
    await until(lambda: "command_failed" in [e.kind for e in node.store.events.values()])
    audio = node.recorder.host_path(file)
    assert audio.exists()
    return audio


async def test_a_refusal_asterisk_could_not_delete_during_the_call_is_deleted_after_it(
    ari_node: Node,
) -> None:
    chan = "1764432100.9"
    file = f"{ASTERISK_RECORDING_DIR}/consentd-pbx1_{chan}-1.wav"
    audio = await refused_with_asterisk_away(ari_node, chan)
    await ari_node.feed(stasis_end(chan))
    await ari_node.calls_done()
    rows = await ari_node.ledger()
    (failed,) = by_kind(rows, "command_failed")
    assert (failed.data["segment"], failed.data["file"]) == (1, file)
    assert kept(rows) == [True]  # still there: the call's details say so
    assert audio.exists()

    sweeper = OwedDeletionSweeper("pbx1", ari_node.writer, ari_node.store_of_recordings, lambda: T0)
    assert await sweeper.sweep() == 1  # Asterisk still refuses
    del ari_node.ari.failing["delete_stored_recording"]
    assert await sweeper.sweep() == 0

    assert not audio.exists()
    rows = await ari_node.ledger()
    (late,) = by_kind(rows, "recording_deleted")
    assert late.data == {
        "segment": 1,
        "file": file,
        "path": str(audio),
        "bridged_only": False,
        "late": True,
        "found": True,
    }
    assert late.seq == max(e.seq for e in rows if e is not late) + 1
    assert kept(rows) == [False]


async def test_a_failed_delete_is_tried_again_while_the_call_lasts(ari_node: Node) -> None:
    """Refused audio must not wait for the end of a long call."""
    chan = "1764432100.10"
    audio = await refused_with_asterisk_away(ari_node, chan)

    del ari_node.ari.failing["delete_stored_recording"]  # Asterisk is back, the call goes on
    await until(lambda: not audio.exists())
    await until(lambda: "recording_deleted" in [e.kind for e in ari_node.store.events.values()])
    await ari_node.feed(stasis_end(chan))
    await ari_node.calls_done()

    kinds = [e.kind for e in await ari_node.ledger()]
    assert kinds.index("command_failed") < kinds.index("recording_deleted")
    assert kinds.index("recording_deleted") < kinds.index("call_ended")
    assert kinds.count("recording_deleted") == 1


async def test_a_recording_found_after_a_restart_whose_delete_failed_is_deleted_later(
    ari_node: Node,
) -> None:
    """A SIGKILL right after MixMonitor began, the caller gone before a consentd came
    back, and Asterisk refusing the delete of the file no ledger row ever named:
    the failure row names segment and file, so the sweep finds it like any other."""
    chan = "1764432100.11"
    file = f"{ASTERISK_RECORDING_DIR}/consentd-pbx1_{chan}-1.wav"
    call_id = earlier_run(ari_node.store, chan, "+4930100002", policy="opt_in")
    audio = ari_node.recorder.host_path(file)
    audio.parent.mkdir(parents=True, exist_ok=True)
    audio.write_bytes(b"audio" * 100)
    ari_node.ari.live_channels = []
    ari_node.ari.failing["delete_stored_recording"] = AriNotSent("DELETE: connection refused")

    await ari_node.feed({"type": CONNECTED})
    await ari_node.calls_done()
    rows = [e for e in await ari_node.ledger() if e.call_id == call_id]
    assert [e.kind for e in rows][-2:] == ["call_ended", "command_failed"]
    assert rows[-2].data["untracked_recordings"] == [1]
    assert (rows[-1].data["segment"], rows[-1].data["file"]) == (1, file)
    assert audio.exists()

    sweeper = OwedDeletionSweeper("pbx1", ari_node.writer, ari_node.store_of_recordings, lambda: T0)
    assert await sweeper.sweep() == 1  # Asterisk still refuses
    del ari_node.ari.failing["delete_stored_recording"]
    assert await sweeper.sweep() == 0
    await stored(ari_node.writer)

    assert not audio.exists()
    rows = [e for e in await ari_node.ledger() if e.call_id == call_id]
    assert rows[-1].kind == "recording_deleted"
    assert rows[-1].data == {
        "segment": 1,
        "file": file,
        "path": file,
        "bridged_only": False,
        "late": True,
        "found": True,
    }

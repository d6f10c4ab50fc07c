"""A MixMonitor whose AMI answer never comes: Asterisk's id variable still tells.

Under overload AMI answers later than its timeout, although Asterisk started
the recording. The ledger must still say when the recording began (and the
segment must still know its MixMonitor's id): the ChannelVarset of the id variable,
which MixMonitor sets just before it attaches, gives both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consentd.ami import AmiNotSent, AmiUnavailable
from consentd.runner import MIXMONITOR_ID_PREFIX
from tests.unit.test_dispatcher import (
    POLICIES,
    Node,
    by_kind,
    dtmf,
    recording_file,
    running_node,
    stasis_end,
    stasis_start,
    until,
)

OPT_IN = "+4930100002"
CHAN = "1764432300.1"
MIXMONITOR_ID = f"mm-{recording_file(CHAN).rsplit('/', 1)[1]}"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async for pbx in running_node(tmp_path, POLICIES):
        yield pbx


async def test_an_answer_lost_after_the_id_variable_came_is_a_late_start(node: Node) -> None:
    node.recorder.answer_lost = AmiUnavailable("MixMonitor: no answer within 5s")
    await node.feed(stasis_start(CHAN, OPT_IN), dtmf(CHAN, "3"))
    await node.feed(stasis_end(CHAN))
    await node.calls_done()

    rows = await node.ledger()
    assert by_kind(rows, "command_failed") == []
    (started,) = by_kind(rows, "recording_started")
    assert started.data["late"] is True
    assert started.data["mixmonitor_id"] == MIXMONITOR_ID
    assert started.occurred_at.isoformat() == "2026-11-29T16:00:08.400000+00:00"


async def test_an_id_variable_after_the_timeout_still_writes_the_start(node: Node) -> None:
    node.recorder.failing = AmiUnavailable("MixMonitor: no answer within 5s")
    await node.feed(stasis_start(CHAN, OPT_IN), dtmf(CHAN, "3"))
    await until(lambda: "command_failed" in [e.kind for e in node.store.events.values()])
    # Asterisk did start it; its ChannelVarset arrives after consentd gave up waiting.
    await node._mixmonitor_began(CHAN, f"{MIXMONITOR_ID_PREFIX}1", MIXMONITOR_ID)
    await until(lambda: "recording_started" in [e.kind for e in node.store.events.values()])
    await node.feed(stasis_end(CHAN))
    await node.calls_done()

    rows = await node.ledger()
    kinds = [e.kind for e in rows]
    assert kinds.index("command_failed") < kinds.index("recording_started")
    (failed,) = by_kind(rows, "command_failed")
    assert failed.data["outcome"] == "unknown"
    (started,) = by_kind(rows, "recording_started")
    assert (started.data["late"], started.data["mixmonitor_id"]) == (True, MIXMONITOR_ID)


async def test_a_start_never_sent_waits_for_no_variable(node: Node) -> None:
    node.recorder.failing = AmiNotSent("MixMonitor: not connected to AMI")
    await node.feed(stasis_start(CHAN, OPT_IN), dtmf(CHAN, "3"))
    await node._mixmonitor_began(CHAN, f"{MIXMONITOR_ID_PREFIX}1", "mm-stray")
    await node.feed(stasis_end(CHAN))
    await node.calls_done()

    assert by_kind(await node.ledger(), "recording_started") == []

"""Agents' outbound calls: the operator number, the policy, the recording and refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.test_dispatcher import Node, by_kind, running_node, stasis_start

POLICIES = """\
default: {recording: never}
numbers:
  "+4930100001": {recording: always, outbound_announcement: true}
  "+4930100002": {recording: opt_in}
  "+4930100003": {recording: opt_out}
  "+4930100004": {recording: never}
agents:
  agent1: {outbound_number: "+4930100001"}
  agent2: {outbound_number: "+4930100002"}
  agent3: {}
"""
CALLEE = "+4917699999999"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async for pbx in running_node(tmp_path, POLICIES):
        yield pbx


async def dial_out(node: Node, chan: str, agent: str, header: str | None = None) -> None:
    node.ari.variables[(chan, "CHANNEL(endpoint)")] = agent
    if header is not None:
        node.ari.variables[(chan, "PJSIP_HEADER(read,X-Consentd-Number)")] = header
    await node.feed(stasis_start(chan, CALLEE, caller=agent, args=["outbound"]))


async def test_an_always_number_records_from_the_callees_answer_with_its_caller_id(
    node: Node,
) -> None:
    chan = "1764432020.1"
    await dial_out(node, chan, "agent1")

    assert node.recorder.requests[0][:2] == ("start", chan)
    runner = node.dispatcher.calls[chan]
    assert runner.call.bridged_segments == (1,)  # MixMonitor b: from the answer
    assert node.ari.of("continue_in_dialplan") == [
        (
            "continue_in_dialplan", chan, "consentd-outbound", CALLEE, "1",
            "CONSENTD_CALLER_ID=+4930100001",
            "CONSENTD_DIAL_OPTIONS=A(consentd/outbound_notice)",
            f"CONSENTD_CALL_ID=pbx1:{chan}",
        )
    ]  # fmt: skip
    ledger = await node.ledger()
    started = by_kind(ledger, "call_started")[0].data
    assert (started["direction"], started["did"], started["callee"], started["agent"]) == (
        "outbound", "+4930100001", CALLEE, "agent1",
    )  # fmt: skip
    dialled = by_kind(ledger, "outbound_dialled")[0].data
    assert dialled == {
        "callee": CALLEE, "caller_id": "+4930100001", "recorded": True, "announcement": True,
    }  # fmt: skip


@pytest.mark.parametrize("agent", ["agent2"])
async def test_an_opt_in_number_is_not_recorded_outbound(node: Node, agent: str) -> None:
    chan = "1764432020.2"
    await dial_out(node, chan, agent)

    assert node.recorder.requests == []
    dialled = by_kind(await node.ledger(), "outbound_dialled")[0].data
    assert (dialled["caller_id"], dialled["recorded"]) == ("+4930100002", False)


async def test_a_header_naming_another_operator_number_is_used(node: Node) -> None:
    chan = "1764432020.3"
    await dial_out(node, chan, "agent1", header="+4930100003")

    dialled = by_kind(await node.ledger(), "outbound_dialled")[0].data
    assert (dialled["caller_id"], dialled["recorded"]) == ("+4930100003", True)


@pytest.mark.parametrize(
    ("agent", "header", "reason"),
    [
        ("agent1", "+4930199999", "requested_number_not_ours"),
        ("agent3", None, "no_outbound_number"),
        ("stranger", None, "unknown_agent"),
    ],
)
async def test_a_call_as_no_operator_number_is_refused_with_403_and_the_reason(
    node: Node, agent: str, header: str | None, reason: str
) -> None:
    chan = "1764432020.4"
    await dial_out(node, chan, agent, header=header)

    assert ("hangup", chan, "rejected") in node.ari.requests
    assert node.recorder.requests == []
    ledger = await node.ledger()
    assert by_kind(ledger, "call_refused")[0].data == {"reason": reason}
    assert by_kind(ledger, "outbound_dialled") == []

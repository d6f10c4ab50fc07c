"""The shipped SIPp callers hang up the way a phone does.

Without SIP transactions SIPp accepts any 200 whose CSeq method it has sent
before as the answer it is waiting for. On a busy PBX the INVITE's 200 is
still being retransmitted when the caller hangs up; SIPp took that late 200
as the BYE's answer, stopped retransmitting a BYE the PBX had dropped, and the
PBX kept a channel whose caller was gone (the bench's "ghost" channels at
500-600 calls/s). So every BYE a caller scenario sends must start a
transaction, and the answer it waits for must name it.
"""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).resolve().parents[2] / "sipp-scenarios"


def _request_method(send: ET.Element) -> str:
    return (send.text or "").strip().split(" ", 1)[0]


def _messages(path: Path) -> list[ET.Element]:
    """The scenario's sent and expected messages, in order."""
    return [m for m in ET.parse(path).getroot() if m.tag in ("send", "recv")]


def _callers() -> list[Path]:
    """Scenarios that place calls: their first message is a sent INVITE."""
    found = []
    for path in sorted(SCENARIOS.glob("*.xml")):
        messages = _messages(path)
        if messages and messages[0].tag == "send" and _request_method(messages[0]) == "INVITE":
            found.append(path)
    return found


def test_the_callers_are_found() -> None:
    names = {p.name for p in _callers()}
    assert {"caller.xml", "bench-caller.xml", "agent-call.xml"} <= names


@pytest.mark.parametrize("path", _callers(), ids=lambda p: p.name)
def test_a_bye_is_answered_only_by_its_own_answer(path: Path) -> None:
    messages = _messages(path)
    byes = [i for i, m in enumerate(messages) if m.tag == "send" and _request_method(m) == "BYE"]
    assert byes, f"{path.name} sends no BYE"
    for i in byes:
        txn = messages[i].get("start_txn")
        assert txn, f"{path.name}: the BYE (message {i}) starts no transaction"
        answers = []
        for later in messages[i + 1 :]:
            if later.tag != "recv":
                break
            answers.append(later)
        assert answers, f"{path.name}: nothing waits for the BYE's answer"
        for answer in answers:
            assert answer.get("response_txn") == txn, (
                f"{path.name}: the answer {answer.attrib} to the BYE is not bound to "
                f"transaction {txn!r}"
            )


def _bound_invites() -> list[Path]:
    """Callers whose INVITE starts a transaction (agent-call.xml binds only its
    BYE: digest authentication restarts the INVITE in a second one)."""
    return [p for p in _callers() if _messages(p)[0].get("start_txn")]


def test_the_plain_callers_bind_their_invite() -> None:
    assert {"caller.xml", "bench-caller.xml"} <= {p.name for p in _bound_invites()}


@pytest.mark.parametrize("path", _bound_invites(), ids=lambda p: p.name)
def test_an_invite_answered_in_a_transaction_is_acked_in_it(path: Path) -> None:
    """The ACK names the INVITE's transaction, so SIPp ACKs a retransmitted 200
    again instead of failing the call, and every answer to the INVITE is bound."""
    messages = _messages(path)
    txn = messages[0].get("start_txn")
    acks = [m for m in messages if m.tag == "send" and _request_method(m) == "ACK"]
    assert acks and [a.get("ack_txn") for a in acks] == [txn] * len(acks)
    first_ack = messages.index(acks[0])
    for answer in messages[1:first_ack]:
        assert answer.get("response_txn") == txn, f"{path.name}: {answer.attrib} is not bound"

"""Withdrawal: an opt-in caller who consented presses 3 again (policy allow_withdrawal)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from consentd.adoption import rebuild
from consentd.call_flow import handle
from consentd.call_model import (
    CallEnded,
    CallFacts,
    DeleteRecording,
    RecordingStarted,
    RecordingStopped,
    StartRecording,
    StopRecording,
)
from consentd.ledger import LedgerEvent
from consentd.policy import PolicyError, load_policies
from tests.unit.flow_helpers import actions, at, greeted, kinds, ledger, press

Facts = Callable[..., CallFacts]
FILE = "/var/spool/asterisk/monitor/consentd-pbx1_1764432000.17-{}.wav"


def test_a_second_3_withdraws_consent_stops_and_deletes_everything_captured(
    facts: Facts,
) -> None:
    call = greeted(facts("opt_in", allow_withdrawal=True))
    call, commands = press(call, "3", seconds=5)
    assert actions(commands) == [StartRecording(1, FILE.format(1))]
    call, _ = handle(call, RecordingStarted(1, at(5.1), "0x1"))

    call, commands = press(call, "3", seconds=9)

    assert kinds(commands) == ["keypress", "consent_decided"]
    assert ledger(commands)[0].data["decides"] is True
    assert ledger(commands)[1].data["action"] == "caller_withdrew"
    assert actions(commands) == [
        StopRecording(1, FILE.format(1), "0x1"),
        DeleteRecording(1, FILE.format(1)),
    ]
    call, commands = handle(call, RecordingStopped(1, at(9.1)))
    assert ledger(commands)[0].data["reason"] == "caller_withdrew"

    # A third 3 changes nothing: no new consent, no recording.
    call, commands = press(call, "3", seconds=12)
    assert kinds(commands) == ["keypress"] and actions(commands) == []
    assert ledger(commands)[0].data["decides"] is False


def test_without_the_flag_a_second_3_changes_nothing(facts: Facts) -> None:
    call = greeted(facts("opt_in"))
    call, _ = press(call, "3", seconds=5)
    call, commands = press(call, "3", seconds=9)
    assert kinds(commands) == ["keypress"] and actions(commands) == []
    assert call.decision is not None and call.decision.value == "caller_opted_in"


def test_a_withdrawal_found_after_a_restart_deletes_what_is_still_on_disk(facts: Facts) -> None:
    call_facts = facts("opt_in", allow_withdrawal=True)
    call = greeted(call_facts)
    call, first = press(call, "3", seconds=5)
    call, more = handle(call, RecordingStarted(1, at(5.1), "0x1"))
    call, last = press(call, "3", seconds=9)  # the process died before the delete
    rows = [
        LedgerEvent(f"k/{w.seq}", call_facts.call_id, "pbx1", w.seq, w.kind, w.at, w.data)
        for w in ledger(first + more + last)
    ]

    adopted = rebuild(call_facts, rows)
    _, commands = handle(adopted, CallEnded(at(20)))

    assert adopted.decision is not None and adopted.decision.value == "caller_withdrew"
    assert DeleteRecording(1, FILE.format(1)) in actions(commands)


@pytest.mark.parametrize("recording", ["opt_out", "always", "never"])
def test_allow_withdrawal_on_a_number_that_does_not_ask_for_consent_is_an_error(
    tmp_path: Path, recording: str
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(
        "default: {recording: never}\n"
        f'numbers: {{"+4930100002": {{recording: {recording}, allow_withdrawal: true}}}}\n'
    )
    with pytest.raises(PolicyError) as caught:
        load_policies(path)
    (problem,) = caught.value.problems
    assert problem.location == 'number "+4930100002"'
    assert (
        f"only an opt_in number asks for consent that can be withdrawn (this one is {recording})"
        in (problem.message)
    )

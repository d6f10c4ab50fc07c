"""IVR menus and routing targets in the pure call flow.

The facts come from a real policy file through the real greeting library, as
the dispatcher builds them, so the menu wiring is tested end to end in-process.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from consentd.adoption import rebuild
from consentd.call_flow import Call, handle, new_call
from consentd.call_model import (
    Adopted,
    Answered,
    Bridged,
    CallArrived,
    CallFacts,
    Command,
    ContinueToDialplan,
    ContinueToQueue,
    DeleteRecording,
    DtmfReceived,
    Hangup,
    LeftStasis,
    Phase,
    Play,
    PlaybackFinished,
    PlaybackStarted,
    RecordingStarted,
    SetVariables,
    StartRecording,
    StartTimer,
    StartVoicemail,
    StopPlayback,
    StopRecording,
    TimerFired,
    WriteLedger,
)
from consentd.greetings import GreetingLibrary
from consentd.ledger import LedgerEvent
from consentd.policy import PolicyBook, load_policies
from tests.unit.conftest import write_wav
from tests.unit.flow_helpers import CHANNEL, T0, actions, at, kinds, ledger, routed_facts, run

POLICIES = """\
default: {recording: never}
numbers:
  "+4930100020": {recording: opt_out, routing: {ivr: main}}
  "+4930100021": {recording: opt_in, routing: {ivr: main}}
  "+4930100022": {recording: opt_out, routing: {dialplan: {context: pbx, extension: "200"}}}
  "+4930100023": {recording: always, routing: {ivr: main}}
  "+4930100024": {recording: never, greetings: {wait: tone.wav},
                  routing: {dialplan: {context: pbx, extension: "200"}}}
  "+4930100025": {recording: never, greetings: {hold: tone.wav}}
groups:
  support: {queue: support, timeout: 20}
ivr:
  main:
    options:
      "1": {group: support}
      "2": {voicemail: true}
      "4": {dialplan: {context: pbx, extension: "200", priority: 1}}
      "9": {ivr: other}
    timeout: 5
    retries: 2
  other:
    options: {"0": {ivr: main}, "5": {hangup: true}}
    timeout: 3
    retries: 0
    default: {ivr: main}
"""

FILE_1 = "/var/spool/asterisk/monitor/consentd-pbx1_1764432000.17-1.wav"


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> PolicyBook:
    path = tmp_path_factory.mktemp("ivr") / "policies.yaml"
    path.write_text(textwrap.dedent(POLICIES))
    write_wav(path.parent / "tone.wav", seconds=0.5)
    return load_policies(path)


@pytest.fixture(scope="module")
def library(book: PolicyBook, tmp_path_factory: pytest.TempPathFactory) -> GreetingLibrary:
    return GreetingLibrary.install(
        book, "/var/lib/asterisk/sounds", tmp_path_factory.mktemp("root")
    )


@pytest.fixture
def facts(book: PolicyBook, library: GreetingLibrary) -> Any:
    def make(did: str) -> CallFacts:
        return routed_facts(book, library, did)

    return make


def in_menu(call_facts: CallFacts) -> tuple[Call, list[Command]]:
    call, _ = handle(new_call(call_facts), CallArrived(T0))
    return handle(call, Answered(T0))


def key(digit: str, seconds: float) -> DtmfReceived:
    return DtmfReceived(digit, at(seconds), duration_ms=100)


def plays(commands: list[Command]) -> list[tuple[str, str]]:
    return [(c.playback_id, c.media.uri) for c in commands if isinstance(c, Play)]


def of_kind(commands: list[Command], kind: str) -> list[dict[str, Any]]:
    return [w.data for w in ledger(commands) if w.kind == kind]


def test_an_ivr_number_skips_the_consent_greeting_and_plays_the_menu(facts: Any) -> None:
    call, commands = in_menu(facts("+4930100021"))

    assert plays(commands) == [
        (f"{CHANNEL}-ivr-1", "sound:/var/lib/asterisk/sounds/en/consentd/ivr")
    ]
    assert of_kind(commands, "routed") == [{"to": "ivr", "ivr": "main", "source": "number"}]
    assert call.phase is Phase.IVR and call.menu == "main"


def test_3_in_the_menu_is_consent_not_a_choice_and_the_menu_waits_on(facts: Any) -> None:
    call, _ = in_menu(facts("+4930100021"))

    call, commands = run(call, key("3", 1))

    assert kinds(commands) == ["keypress", "consent_decided"]
    assert of_kind(commands, "consent_decided")[0]["where"] == "ivr:main"
    # The menu prompt goes on (no stop, no "invalid choice"); recording starts.
    assert actions(commands) == [StartRecording(1, FILE_1)]
    assert call.phase is Phase.IVR

    call, commands = run(call, PlaybackFinished(f"{CHANNEL}-ivr-1", at(4)), key("1", 5))

    assert of_kind(commands, "routed")[0] == {
        "to": "group", "group": "support", "queue": "support", "source": "ivr:main", "digit": "1",
    }  # fmt: skip
    assert plays(commands) == [
        (f"{CHANNEL}-available", "sound:/var/lib/asterisk/sounds/en/consentd/available")
    ]
    call, commands = run(call, PlaybackFinished(f"{CHANNEL}-available", at(7)))
    assert actions(commands) == [ContinueToQueue("support", 20)]
    assert call.recording is not None and call.recording.number == 1  # still recording


def test_press_1_then_3_in_the_queue_records_bridged_only(facts: Any) -> None:
    call, _ = in_menu(facts("+4930100021"))
    call, _ = run(call, key("1", 2), PlaybackFinished(f"{CHANNEL}-available", at(4)))
    assert call.phase is Phase.QUEUED

    call, commands = run(call, key("3", 9))

    assert of_kind(commands, "keypress")[0]["where"] == "queue"
    assert actions(commands) == [StartRecording(1, FILE_1, bridged_only=True)]


def test_an_invalid_key_plays_the_invalid_prompt_then_the_menu_again(facts: Any) -> None:
    call, _ = in_menu(facts("+4930100020"))

    call, commands = run(call, key("7", 2))

    assert StopPlayback(f"{CHANNEL}-ivr-1") in actions(commands)
    assert of_kind(commands, "ivr_missed") == [
        {"menu": "main", "reason": "invalid_key", "digit": "7", "misses": 1}
    ]
    assert plays(commands) == [
        (f"{CHANNEL}-invalid-2", "sound:/var/lib/asterisk/sounds/en/consentd/ivr_invalid")
    ]
    call, commands = run(call, PlaybackFinished(f"{CHANNEL}-invalid-2", at(4)))
    assert plays(commands) == [
        (f"{CHANNEL}-ivr-2", "sound:/var/lib/asterisk/sounds/en/consentd/ivr")
    ]
    # The stopped first prompt finishing late changes nothing.
    call, commands = run(call, PlaybackFinished(f"{CHANNEL}-ivr-1", at(4.1)))
    assert commands == []

    call, commands = run(call, key("2", 6))
    assert of_kind(commands, "routed")[0]["to"] == "voicemail"
    call, commands = run(call, PlaybackFinished(f"{CHANNEL}-voicemail", at(9)))
    assert actions(commands) == [
        StartVoicemail("consentd-vm-pbx1_1764432000.17", 120, beep=False)  # the greeting's beep
    ]


def test_no_key_replays_the_menu_per_retry_then_takes_the_default(facts: Any) -> None:
    call, _ = in_menu(facts("+4930100020"))
    tokens = []
    for n in range(1, 4):  # retries: 2, so three prompts
        call, commands = run(call, PlaybackFinished(f"{CHANNEL}-ivr-{n}", at(10 * n)))
        (timer,) = [c for c in commands if isinstance(c, StartTimer)]
        assert timer.seconds == 5
        tokens.append(timer.token)
        call, commands = run(call, TimerFired(timer.token, at(10 * n + 5)))
        assert of_kind(commands, "ivr_missed")[0]["reason"] == "no_key"

    # The default of "main" is a hangup.
    assert of_kind(commands, "routed") == [{"to": "hangup", "source": "ivr:main"}]
    assert Hangup() in actions(commands)
    assert len(set(tokens)) == 3


def test_a_consent_press_while_waiting_restarts_the_wait_and_the_old_timer_is_ignored(
    facts: Any,
) -> None:
    call, _ = in_menu(facts("+4930100021"))
    call, commands = run(call, PlaybackFinished(f"{CHANNEL}-ivr-1", at(4)))
    (first,) = [c for c in commands if isinstance(c, StartTimer)]

    call, commands = run(call, key("3", 6))
    (second,) = [c for c in commands if isinstance(c, StartTimer)]
    call, commands = run(call, TimerFired(first.token, at(9)))

    assert second.token != first.token
    assert commands == []  # stale
    call, commands = run(call, TimerFired(second.token, at(11)))
    assert of_kind(commands, "ivr_missed")[0]["misses"] == 1


def test_a_nested_menu_plays_its_own_prompt_and_its_default_leads_back(facts: Any) -> None:
    call, _ = in_menu(facts("+4930100023"))

    call, commands = run(call, key("9", 2))

    assert of_kind(commands, "routed")[0] == {
        "to": "ivr", "ivr": "other", "source": "ivr:main", "digit": "9",
    }  # fmt: skip
    assert call.menu == "other" and plays(commands)[0][0] == f"{CHANNEL}-ivr-2"
    # retries 0: the first miss takes the default, back to main.
    call, commands = run(call, PlaybackFinished(f"{CHANNEL}-ivr-2", at(5)))
    (timer,) = [c for c in commands if isinstance(c, StartTimer)]
    assert timer.seconds == 3
    call, commands = run(call, TimerFired(timer.token, at(8)))
    assert of_kind(commands, "routed")[0]["ivr"] == "main"
    assert call.menu == "main" and call.menu_misses == 0
    # 3 on an "always" number is just a key: here no option, so invalid.
    call, commands = run(call, key("3", 9))
    assert of_kind(commands, "ivr_missed")[0]["reason"] == "invalid_key"


def test_a_dialplan_hand_off_sets_the_outcome_and_key_3_still_refuses(facts: Any) -> None:
    call, _ = in_menu(facts("+4930100022"))
    assert call.greeting_playback == f"{CHANNEL}-greeting"  # not an IVR: consent greeting

    call, commands = run(call, PlaybackFinished(f"{CHANNEL}-greeting", at(5)))

    assert actions(commands) == [
        StartRecording(1, FILE_1),
        ContinueToDialplan(
            "pbx",
            "200",
            1,
            (
                ("CONSENTD_CONSENT", "opt_out"),
                ("CONSENTD_ACTION", "none"),
                ("CONSENTD_RECORDING", "on"),
                ("CONSENTD_CALL_ID", "pbx1:1764432000.17"),
            ),
        ),
    ]
    call, _ = run(call, LeftStasis(at(5.1)))
    assert call.phase is Phase.DIALPLAN  # leaving Stasis does not end the call

    call, commands = run(call, key("3", 8))
    assert of_kind(commands, "keypress")[0]["where"] == "ringing"

    call, _ = run(call, Bridged(True, at(9)))
    assert of_kind(run(call, key("5", 10))[1], "keypress")[0]["where"] == "talking"


def test_opt_out_3_while_talking_after_a_hand_off_stops_deletes_and_tells_the_dialplan(
    facts: Any,
) -> None:
    call, _ = in_menu(facts("+4930100022"))
    call, _ = run(
        call,
        PlaybackFinished(f"{CHANNEL}-greeting", at(5)),
        LeftStasis(at(5.1)),
        Bridged(True, at(8)),
    )

    call, commands = run(call, key("3", 12))

    assert of_kind(commands, "consent_decided")[0]["where"] == "talking"
    assert actions(commands) == [
        StopRecording(1, FILE_1),
        DeleteRecording(1, FILE_1),
        SetVariables(
            (
                ("CONSENTD_CONSENT", "opt_out"),
                ("CONSENTD_ACTION", "caller_opted_out"),
                ("CONSENTD_RECORDING", "off"),
                ("CONSENTD_CALL_ID", "pbx1:1764432000.17"),
            )
        ),
    ]


def test_a_call_in_a_menu_during_a_restart_hears_the_menu_again_and_keeps_its_consent(
    facts: Any,
) -> None:
    call, first = in_menu(facts("+4930100021"))
    call, more = run(
        call,
        PlaybackStarted(f"{CHANNEL}-ivr-1", at(0.1)),
        key("3", 1),
        RecordingStarted(1, at(1.1), "0x1"),
    )
    rows = [
        LedgerEvent(f"pbx1:1764432000.17/{w.seq}", "pbx1:1764432000.17", "pbx1", w.seq, w.kind,
                    w.at, w.data)
        for w in ledger(first + more)
    ]  # fmt: skip

    adopted = rebuild(facts("+4930100021"), rows)
    assert adopted.phase is Phase.IVR and adopted.menu == "main"
    call, commands = run(adopted, Adopted(at(30), "stasis", untracked_recordings=()))

    assert call.decision is not None and call.decision.value == "caller_opted_in"
    assert [p for p, _ in plays(commands)] == [f"{CHANNEL}-ivr-2"]
    assert not [c for c in commands if isinstance(c, StartRecording)]  # still recording


def test_a_call_handed_to_the_dialplan_is_adopted_there_and_resubscribed(facts: Any) -> None:
    call, first = in_menu(facts("+4930100022"))
    call, more = run(
        call, PlaybackFinished(f"{CHANNEL}-greeting", at(5)), RecordingStarted(1, at(5), "0x1")
    )
    rows = [
        LedgerEvent(f"k/{w.seq}", "pbx1:1764432000.17", "pbx1", w.seq, w.kind, w.at, w.data)
        for w in ledger(first + more)
    ]

    adopted = rebuild(facts("+4930100022"), rows)
    assert adopted.phase is Phase.DIALPLAN
    call, commands = run(adopted, Adopted(at(30), "dialplan"), LeftStasis(at(31)))

    assert call.phase is Phase.DIALPLAN
    assert [type(c).__name__ for c in actions(commands)] == ["Subscribe"]


def test_every_ledger_row_of_an_ivr_call_is_json_plain(facts: Any) -> None:
    """Routing targets are pydantic models in the policy; the ledger gets plain values."""
    call, commands = in_menu(facts("+4930100021"))
    call, more = run(call, key("4", 2))
    for write in ledger(commands + more):
        assert isinstance(write, WriteLedger)
        for value in write.data.values():
            assert value is None or isinstance(value, str | int | float | bool | list)


def test_a_wait_greeting_plays_before_the_hand_off_and_a_hold_greeting_before_holding(
    facts: Any,
) -> None:
    call, commands = in_menu(facts("+4930100024"))
    assert [p for p, _ in plays(commands)] == [f"{CHANNEL}-wait"]
    call, commands = run(call, PlaybackFinished(f"{CHANNEL}-wait", at(1)))
    assert [type(c).__name__ for c in actions(commands)] == ["ContinueToDialplan"]

    call, commands = in_menu(facts("+4930100025"))
    assert [p for p, _ in plays(commands)] == [f"{CHANNEL}-hold"]
    call, _ = run(call, PlaybackFinished(f"{CHANNEL}-hold", at(1)))
    assert call.phase is Phase.HOLDING

"""Agents' pause and resume codes: the policy's agent_controls, the feature-code file
consentd writes for Asterisk, the AMI UserEvent that reports a code, and the tone."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from consentd.adoption import rebuild
from consentd.agent_features import CONTROL_USER_EVENT, FEATURES_FILE, install, render
from consentd.ari import AriError
from consentd.call_flow import control_refusal, handle
from consentd.call_model import CallFacts, Direction, DtmfReceived
from consentd.ledger import LedgerEvent
from consentd.policy import AgentControls, PolicyError, load_policies
from tests.unit.flow_helpers import arrived, at
from tests.unit.test_dispatcher import (
    POLICIES,
    Node,
    ami_event,
    by_kind,
    channel,
    dtmf,
    queued_call,
    running_node,
    settle,
    stasis_start,
    until,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async for pbx in running_node(tmp_path, POLICIES):
        yield pbx


def policy_errors(tmp_path: Path, controls: str) -> list[str]:
    file = tmp_path / "policies.yaml"
    file.write_text(
        textwrap.dedent(f"""\
            default: {{recording: opt_in}}
            agent_controls: {controls}
            """)
    )
    with pytest.raises(PolicyError) as caught:
        load_policies(file)
    return [str(p) for p in caught.value.problems]


def test_the_codes_default_to_star_1_and_star_2(tmp_path: Path) -> None:
    file = tmp_path / "policies.yaml"
    file.write_text("default: {recording: opt_in}\n")
    assert load_policies(file).config.agent_controls == AgentControls(pause="*1", resume="*2")


@pytest.mark.parametrize(
    ("controls", "message"),
    [
        ('{pause: "3"}', "pause code '3' is the consent key on its own"),
        ("{resume: 3}", "resume code '3' is the consent key on its own"),
        ('{pause: "*1", resume: "*1"}', "pause '*1' and resume '*1' must differ"),
        ('{pause: "*1", resume: "*12"}', "neither may begin with the other"),
        ('{pause: "*x"}', "control code '*x' may hold only the keys"),
        ('{pause: ""}', "a control code is 1 to 8 keys"),
        ('{pause: "*1", stop: "*3"}', "stop"),
    ],
)
def test_bad_codes_are_refused_naming_the_line_and_why(
    tmp_path: Path, controls: str, message: str
) -> None:
    errors = policy_errors(tmp_path, controls)
    assert len(errors) == 1
    assert f"{tmp_path / 'policies.yaml'}:2:" in errors[0]
    assert "agent_controls" in errors[0]
    assert message in errors[0]


def test_the_consent_key_inside_a_longer_code_is_fine(tmp_path: Path) -> None:
    file = tmp_path / "policies.yaml"
    file.write_text('default: {recording: opt_in}\nagent_controls: {pause: "#3", resume: "#4"}\n')
    assert load_policies(file).config.agent_controls.pause == "#3"


def test_the_feature_file_maps_each_code_to_a_user_event() -> None:
    text = render(AgentControls(pause="#7", resume="#8"))
    assert "[applicationmap]" in text
    assert f"consentd_pause => #7,self,UserEvent({CONTROL_USER_EVENT},Control: pause)" in text
    assert f"consentd_resume => #8,self,UserEvent({CONTROL_USER_EVENT},Control: resume)" in text


def test_the_shipped_asterisk_file_holds_the_default_codes() -> None:
    shipped = (REPO / "asterisk-conf" / FEATURES_FILE).read_text()
    assert shipped == render(AgentControls())
    assert f'#include "{FEATURES_FILE}"' in (REPO / "asterisk-conf/features.conf").read_text()


def test_install_writes_only_when_the_codes_change(tmp_path: Path) -> None:
    assert install(tmp_path, AgentControls()) is True
    assert install(tmp_path, AgentControls()) is False
    assert install(tmp_path, AgentControls(pause="#1", resume="#2")) is True
    assert "#1,self" in (tmp_path / FEATURES_FILE).read_text()
    assert [p.name for p in tmp_path.iterdir()] == [FEATURES_FILE]  # no temporary left


def test_install_into_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        install(tmp_path / "absent", AgentControls())


def test_an_outbound_agents_own_keys_decide_nothing_and_are_not_kept(
    facts: Callable[..., CallFacts],
) -> None:
    inbound = facts("opt_out")
    outbound = CallFacts(**{**inbound.__dict__, "direction": Direction.OUTBOUND})
    call = arrived(outbound)
    after, commands = handle(call, DtmfReceived("3", at(4)))
    assert commands == []
    assert after.decision is None


# ---------------------------------------------------------------- the daemon side


def agent_event(control: str, uniqueid: str, linkedid: str) -> dict[str, str]:
    """What AMI sends when an agent's channel runs the feature's UserEvent."""
    return {
        "Event": "UserEvent",
        "Privilege": "user,all",
        "Timestamp": "1795969623.25",
        "Channel": "PJSIP/agent2-0000000c",
        "Uniqueid": uniqueid,
        "Linkedid": linkedid,
        "UserEvent": CONTROL_USER_EVENT,
        "Control": control,
    }


async def test_a_code_on_the_agents_leg_pauses_and_resumes_the_linked_call(
    node: Node,
) -> None:
    call = "1764432000.40"
    await node.feed(stasis_start(call, "+4930100001"))  # always: recording from the answer
    node.ari.live_bridges = [{"id": "b1", "channels": [call, "1764432000.41"]}]

    node.dispatcher.handle_ami(agent_event("pause", "1764432000.41", call))
    await settle()
    await until(lambda: len(node.ari.of("hangup")) == 2)
    node.dispatcher.handle_ami(agent_event("resume", "1764432000.41", call))
    await settle()

    ledger = await node.ledger()
    assert [(e.data["by"], e.data["via"]) for e in by_kind(ledger, "recording_paused")] == [
        ("agent2", "dtmf")
    ]
    assert [e.data["by"] for e in by_kind(ledger, "recording_resumed")] == ["agent2"]
    assert ("mute", call, "mm-consentd-pbx1_1764432000.40-1.wav") in node.recorder.requests
    # The tone: a whispering snoop on each party of the bridge, played, then hung up.
    whispered = [r[1] for r in node.ari.of("whisper")]
    assert sorted(whispered[:2]) == sorted([call, "1764432000.41"])
    snoops = [r[2] for r in node.ari.of("whisper")]
    assert [r[1] for r in node.ari.of("play")] == snoops[: len(node.ari.of("play"))]
    assert all(r[3] == "sound:consentd/beep" for r in node.ari.of("play"))
    await until(lambda: len(node.ari.of("hangup")) == 4)
    assert sorted(r[1] for r in node.ari.of("hangup")) == sorted(snoops)


async def test_a_code_refused_by_the_call_changes_nothing(node: Node) -> None:
    call = "1764432000.42"
    await node.feed(stasis_start(call, "+4930100004"))  # never: nothing to pause
    node.dispatcher.handle_ami(agent_event("pause", call, call))
    await settle()
    assert by_kind(await node.ledger(), "recording_paused") == []
    assert node.ari.of("whisper") == []


async def test_a_code_from_a_channel_of_no_call_is_ignored(node: Node) -> None:
    node.dispatcher.handle_ami(agent_event("pause", "1764432999.1", "1764432999.0"))
    await settle()
    assert await node.ledger() == []


async def test_consentds_own_whisper_channels_are_not_calls(node: Node) -> None:
    snoop = stasis_start("1764432000.50-beep1-0", "", args=["whisper"])
    snoop["channel"] = {**channel("1764432000.50-beep1-0"), "name": "Snoop/1764432000.50-00000001"}
    await node.feed(snoop)
    assert node.dispatcher.calls == {}
    assert await node.ledger() == []


async def test_through_the_api_the_ledger_names_the_agent_who_answered(node: Node) -> None:
    chan = "1764432000.60"
    await node.feed(stasis_start(chan, "+4930100010"), dtmf(chan, "3"))  # opt_in: consented
    await queued_call(node, chan)
    node.dispatcher.handle_ami(ami_event("AgentConnect", chan, MemberName="agent3"))
    await settle()
    call_id = node.dispatcher.calls[chan].call.facts.call_id

    assert node.dispatcher.control(call_id, "pause", "api")[0] == 200
    await settle()

    (paused,) = by_kind(await node.ledger(), "recording_paused")
    assert (paused.data["by"], paused.data["via"]) == ("agent3", "api")


def test_a_restarted_daemon_knows_the_call_is_paused_and_by_whom(
    facts: Callable[..., CallFacts],
) -> None:
    call_facts = facts("always")
    rows = [
        ("call_started", {"policy": "always"}),
        ("recording_started", {"segment": 1, "file": "/m/1.wav", "mixmonitor_id": "0x9"}),
        ("agent_connected", {"agent": "agent2"}),
        ("recording_paused", {"by": "agent2", "via": "dtmf", "gap": "silence", "segment": 1}),
    ]
    events = [
        LedgerEvent(f"c/{n}", "c", "pbx1", n, kind, at(n), data)
        for n, (kind, data) in enumerate(rows)
    ]
    call = rebuild(call_facts, events)

    assert (call.paused, call.agent) == (True, "agent2")
    assert control_refusal(call, "pause") == "recording-not-active"
    assert control_refusal(call, "resume") is None  # the muted recording can be resumed


async def test_the_tone_waits_for_the_whisper_channel_to_enter_stasis(node: Node) -> None:
    call = "1764432000.70"
    await node.feed(stasis_start(call, "+4930100001"))
    refused: list[str] = []
    play = node.ari.play

    async def not_in_stasis_at_first(channel_id: str, *args: str) -> None:
        if "-beep" in channel_id and channel_id not in refused:
            refused.append(channel_id)
            raise AriError("Channel not in Stasis application", 409)
        await play(channel_id, *args)

    node.ari.play = not_in_stasis_at_first  # type: ignore[method-assign]
    node.dispatcher.handle_ami(agent_event("pause", call, call))
    await until(lambda: len(node.ari.of("hangup")) == 1)

    assert refused == [f"{call}-beep1-0"]
    assert [r[1] for r in node.ari.of("play") if "-beep" in r[1]] == [f"{call}-beep1-0"]


def test_consentd_features_prints_the_file_for_a_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from consentd.cli import main

    file = tmp_path / "policies.yaml"
    file.write_text('default: {recording: opt_in}\nagent_controls: {pause: "#5", resume: "#6"}\n')
    assert main(["features", str(file)]) == 0
    assert capsys.readouterr().out == render(AgentControls(pause="#5", resume="#6"))

    file.write_text('default: {recording: opt_in}\nagent_controls: {pause: "3"}\n')
    assert main(["features", str(file)]) == 1
    assert "consent key on its own" in capsys.readouterr().err

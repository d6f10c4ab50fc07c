"""The AMI client against a fake Asterisk manager: answers, refusals, silence and drops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from consentd.ami import AmiClient, AmiError, AmiNotSent, AmiUnavailable, Recorder
from consentd.cli import main
from consentd.pbx_check import missing_queues
from consentd.policy import load_policies

BANNER = b"Asterisk Call Manager/9.0.0\r\n"
#: What the CLI tests give consentd as CONSENTD_AMI_SECRET (there is no default secret).
AMI_SECRET = "test-ami-secret"


def parse(block: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.decode().split("\r\n"):
        key, sep, value = line.partition(": ")
        if sep:
            fields[key] = value
    return fields


def message(**fields: str) -> bytes:
    return ("".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n").encode()


class FakeAmi:
    """Answers each action by its ActionID, the way it is told to for that action name.

    ``behaviour[action]`` is "success", "error", "silent" (never answers) or
    "drop" (closes the connection instead of answering).
    """

    def __init__(self, secret: str = "secret", login_delay: float = 0.0) -> None:
        self.secret = secret
        self.login_delay = login_delay
        #: What QueueSummary lists; None means the list is never completed.
        self.queues: list[str] | None = []
        self.logins_to_drop = 0
        self.behaviour: dict[str, str] = {}
        self.received: list[dict[str, str]] = []
        self.connections: list[asyncio.StreamWriter] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    def count(self, action: str) -> int:
        return sum(1 for m in self.received if m.get("Action") == action)

    async def __aenter__(self) -> FakeAmi:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Asterisk goes away: no more connections, and the open ones are closed."""
        assert self._server is not None
        self._server.close()
        for writer in self.connections:
            writer.close()
        await self._server.wait_closed()

    async def send_event(self, **fields: str) -> None:
        for writer in self.connections:
            if not writer.is_closing():
                writer.write(message(**fields))
                await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        writer.write(BANNER)
        try:
            while True:
                request = parse(await reader.readuntil(b"\r\n\r\n"))
                self.received.append(request)
                if not await self._answer(request, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, request: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        action, action_id = request.get("Action", ""), request.get("ActionID", "")
        if action == "Login":
            if self.logins_to_drop:
                self.logins_to_drop -= 1
                return False
            await asyncio.sleep(self.login_delay)
            if request.get("Secret") == self.secret:
                writer.write(
                    message(
                        Response="Success", ActionID=action_id, Message="Authentication accepted"
                    )
                )
            else:
                writer.write(
                    message(Response="Error", ActionID=action_id, Message="Authentication failed")
                )
            return True
        how = self.behaviour.get(action, "success")
        if how == "drop":
            return False
        if action == "QueueSummary" and how == "success":
            self._queue_summary(action_id, writer)
            return True
        if how == "error":
            writer.write(message(Response="Error", ActionID=action_id, Message="No such channel"))
        elif how == "success" and action == "MixMonitor" and "i(" in request.get("Options", ""):
            # Asterisk answers with the id when option i(VAR) asks for it
            writer.write(message(Response="Success", ActionID=action_id, MixMonitorID="0x5617"))
        elif how == "success":
            writer.write(message(Response="Success", ActionID=action_id, Message="Done"))
        return True

    def _queue_summary(self, action_id: str, writer: asyncio.StreamWriter) -> None:
        """A list action: a start response, one event per queue, then the completion."""
        writer.write(
            message(
                Response="Success",
                ActionID=action_id,
                EventList="start",
                Message="Queue summary will follow",
            )
        )
        for queue in self.queues or []:
            writer.write(
                message(
                    Event="QueueSummary",
                    ActionID=action_id,
                    Queue=queue,
                    LoggedIn="3",
                    Available="3",
                    Callers="0",
                    HoldTime="0",
                    TalkTime="0",
                    LongestHoldTime="0",
                )
            )
        if self.queues is not None:
            writer.write(
                message(
                    Event="QueueSummaryComplete",
                    ActionID=action_id,
                    EventList="Complete",
                    ListItems=str(len(self.queues)),
                )
            )


@pytest.fixture
async def ami() -> AsyncIterator[FakeAmi]:
    async with FakeAmi() as server:
        yield server


@asynccontextmanager
async def client_of(
    server: FakeAmi, *, secret: str = "secret", wait: bool = True, **options: Any
) -> AsyncIterator[AmiClient]:
    options.setdefault("action_timeout", 0.3)
    options.setdefault("ping_interval", 30.0)
    client = AmiClient("127.0.0.1", server.port, "consentd", secret, **options)
    task = asyncio.create_task(client.run(min_backoff=0.01, max_backoff=0.05))
    try:
        if wait:
            await asyncio.wait_for(client.connected.wait(), 1.0)
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Any, timeout: float = 1.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_client_logs_in_with_its_credentials_and_event_mask(ami: FakeAmi) -> None:
    async with client_of(ami, events="call"):
        login = ami.received[0]

    assert login["Action"] == "Login"
    assert login["Username"] == "consentd"
    assert login["Secret"] == "secret"
    assert login["Events"] == "call"


async def test_action_gets_its_own_response(ami: FakeAmi) -> None:
    async with client_of(ami) as client:
        response = await client.send("Ping")

    assert response["Response"] == "Success"
    assert response["ActionID"] == ami.received[-1]["ActionID"]


async def test_refused_action_raises_ami_error_with_asterisks_message(ami: FakeAmi) -> None:
    ami.behaviour["MixMonitor"] = "error"
    async with client_of(ami) as client:
        with pytest.raises(AmiError) as caught:
            await client.send("MixMonitor", Channel="PJSIP/alice-00000001", File="/tmp/x.wav")

    assert not isinstance(caught.value, AmiUnavailable)
    assert str(caught.value) == "MixMonitor: No such channel"


async def test_unanswered_action_raises_ami_unavailable_after_the_timeout(ami: FakeAmi) -> None:
    ami.behaviour["MixMonitor"] = "silent"
    async with client_of(ami, action_timeout=0.2) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(AmiUnavailable) as caught:
            await client.send("MixMonitor", Channel="PJSIP/alice-00000001", File="/tmp/x.wav")
        waited = loop.time() - started

    assert str(caught.value) == "MixMonitor: no answer within 0.2s"
    assert 0.15 <= waited < 0.5


async def test_dropped_connection_fails_the_pending_action_at_once_and_never_resends_it(
    ami: FakeAmi,
) -> None:
    ami.behaviour["MixMonitor"] = "drop"
    async with client_of(ami, action_timeout=2.0) as client:
        with pytest.raises(AmiUnavailable) as caught:
            # Far less than the action timeout: the drop itself must fail the action.
            await asyncio.wait_for(
                client.send("MixMonitor", Channel="PJSIP/alice-00000001", File="/tmp/x.wav"),
                0.5,
            )
        assert str(caught.value) == "AMI connection lost"

        await until(lambda: ami.count("Login") == 2 and client.connected.is_set())
        await asyncio.sleep(0.1)
        assert ami.count("MixMonitor") == 1

        ami.behaviour["MixMonitor"] = "success"
        response = await client.send("MixMonitor", Channel="PJSIP/alice-00000001", File="/b.wav")

    assert response["Response"] == "Success"
    assert ami.count("MixMonitor") == 2


async def test_drop_while_a_ping_is_in_flight_fails_pending_actions_at_once(
    ami: FakeAmi,
) -> None:
    ami.behaviour["MixMonitor"] = "silent"
    ami.behaviour["Ping"] = "drop"
    async with client_of(ami, action_timeout=2.0, ping_interval=0.1) as client:
        with pytest.raises(AmiUnavailable) as caught:
            await asyncio.wait_for(
                client.send("MixMonitor", Channel="PJSIP/alice-00000001", File="/tmp/x.wav"),
                0.6,
            )

    assert str(caught.value) == "AMI connection lost"
    assert ami.count("MixMonitor") == 1


async def test_drop_during_login_is_retried_without_waiting_for_the_action_timeout(
    ami: FakeAmi,
) -> None:
    ami.logins_to_drop = 1
    async with client_of(ami, action_timeout=2.0, wait=False) as client:
        await asyncio.wait_for(client.connected.wait(), 0.6)

    assert ami.count("Login") == 2


async def test_sending_while_disconnected_fails_at_once() -> None:
    client = AmiClient("127.0.0.1", 9, "consentd", "secret", action_timeout=5.0)

    with pytest.raises(AmiUnavailable) as caught:
        await asyncio.wait_for(client.send("MixMonitor", Channel="PJSIP/a", File="/a.wav"), 0.1)

    assert str(caught.value) == "MixMonitor: not connected to AMI"


async def test_sending_after_the_server_went_away_fails_at_once(ami: FakeAmi) -> None:
    async with client_of(ami, action_timeout=5.0) as client:
        await ami.stop()
        await until(lambda: not client.connected.is_set())

        with pytest.raises(AmiUnavailable):
            await asyncio.wait_for(client.send("Ping"), 0.1)


async def test_events_are_delivered_to_every_handler(ami: FakeAmi) -> None:
    seen: list[dict[str, str]] = []
    also: list[str] = []
    async with client_of(ami) as client:
        client.on_event(seen.append)
        client.on_event(lambda m: also.append(m["Event"]))
        await ami.send_event(Event="MixMonitorStart", Channel="PJSIP/alice-00000001")
        await until(lambda: len(seen) == 1)

    assert seen == [{"Event": "MixMonitorStart", "Channel": "PJSIP/alice-00000001"}]
    assert also == ["MixMonitorStart"]


async def test_a_failing_handler_costs_neither_the_event_nor_the_connection(ami: FakeAmi) -> None:
    seen: list[str] = []

    def broken(message: dict[str, str]) -> None:
        raise ValueError("handler bug")

    with capture_logs() as logs:
        async with client_of(ami) as client:
            client.on_event(broken)
            client.on_event(lambda m: seen.append(m["Event"]))
            await ami.send_event(Event="AgentConnect", Uniqueid="1")
            await ami.send_event(Event="AgentComplete", Uniqueid="1")
            await until(lambda: len(seen) == 2)
            assert client.connected.is_set()

    assert seen == ["AgentConnect", "AgentComplete"]
    assert ami.count("Login") == 1  # never reconnected
    failed = [e for e in logs if e["event"] == "ami_event_handler_failed"]
    assert [e["ami_event"] for e in failed] == ["AgentConnect", "AgentComplete"]


async def test_bad_login_keeps_retrying_logs_why_and_never_counts_as_connected(
    ami: FakeAmi,
) -> None:
    with capture_logs() as logs:
        async with client_of(ami, secret="wrong", wait=False) as client:
            states = []
            while ami.count("Login") < 3:
                states.append(client.connected.is_set())
                await asyncio.sleep(0.005)

            assert not any(states)
            with pytest.raises(AmiUnavailable):
                await client.send("Ping")

    failures = [entry for entry in logs if entry["event"] == "ami_connection_failed"]
    assert len(failures) >= 2
    assert failures[0]["error"] == ("AMI login as 'consentd' failed: Login: Authentication failed")
    assert failures[0]["log_level"] == "warning"


async def test_client_is_not_connected_until_login_is_accepted(ami: FakeAmi) -> None:
    ami.login_delay = 0.2
    async with client_of(ami, wait=False) as client:
        await until(lambda: ami.count("Login") == 1)

        assert not client.connected.is_set()
        with pytest.raises(AmiUnavailable):
            await client.send("MixMonitor", Channel="PJSIP/a", File="/a.wav")

        await asyncio.wait_for(client.connected.wait(), 1.0)
    assert ami.count("MixMonitor") == 0


async def test_silent_server_is_noticed_by_the_ping_and_reconnected(ami: FakeAmi) -> None:
    ami.behaviour["Ping"] = "silent"
    async with client_of(ami, ping_interval=0.05, action_timeout=0.1):
        await until(lambda: ami.count("Login") >= 2)

    assert ami.count("Ping") >= 1


async def test_a_busy_session_whose_ping_waits_behind_other_answers_is_kept(
    ami: FakeAmi,
) -> None:
    """Asterisk answers a session's actions in order: under load a Ping waits behind
    hundreds of MixMonitors, while their answers keep arriving. Dropping the
    session then would fail every MixMonitor in flight."""
    ami.behaviour["Ping"] = "silent"

    async def talking() -> None:
        while True:
            await ami.send_event(Event="DTMFEnd", Digit="3")
            await asyncio.sleep(0.02)

    chatter = asyncio.create_task(talking())
    try:
        with capture_logs() as logs:
            async with client_of(ami, ping_interval=0.05, action_timeout=0.1) as client:
                await until(lambda: ami.count("Ping") >= 3)
                await client.send("MixMonitor", Channel="PJSIP/a-1", File="/a.wav")
    finally:
        chatter.cancel()
    assert ami.count("Login") == 1
    assert [e for e in logs if e["event"] == "ami_connection_failed"] == []
    assert any(e["event"] == "ami_busy" for e in logs)


async def test_unexpected_banner_is_refused_and_retried() -> None:
    attempts = 0

    async def not_asterisk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_asterisk, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = AmiClient("127.0.0.1", port, "consentd", "secret")
    task = asyncio.create_task(client.run(min_backoff=0.01, max_backoff=0.02))
    try:
        await until(lambda: attempts >= 2)
        assert not client.connected.is_set()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- Recorder


async def test_recorder_start_sends_mixmonitor_with_channel_and_file(ami: FakeAmi) -> None:
    async with client_of(ami) as client:
        await Recorder(client).start("PJSIP/alice-00000001", "/var/spool/monitor/a-1.wav")

    sent = ami.received[-1]
    assert sent["Action"] == "MixMonitor"
    assert sent["Channel"] == "PJSIP/alice-00000001"
    assert sent["File"] == "/var/spool/monitor/a-1.wav"
    assert "Options" not in sent


async def test_recorder_start_passes_options_when_given(ami: FakeAmi) -> None:
    async with client_of(ami) as client:
        await Recorder(client).start("PJSIP/alice-00000001", "/a.wav", options="b")

    assert ami.received[-1]["Options"] == "b"


async def test_recorder_stop_sends_stopmixmonitor_for_the_channel(ami: FakeAmi) -> None:
    async with client_of(ami) as client:
        await Recorder(client).stop("PJSIP/alice-00000001")

    assert ami.received[-1]["Action"] == "StopMixMonitor"
    assert ami.received[-1]["Channel"] == "PJSIP/alice-00000001"


async def test_recorder_mute_sends_the_direction_and_state(ami: FakeAmi) -> None:
    async with client_of(ami) as client:
        await Recorder(client).mute("PJSIP/alice-00000001", True, direction="read")

    sent = ami.received[-1]
    assert (sent["Action"], sent["Direction"], sent["State"]) == ("MixMonitorMute", "read", "1")


async def test_recorder_reports_a_refused_start_as_ami_error(ami: FakeAmi) -> None:
    ami.behaviour["MixMonitor"] = "error"
    async with client_of(ami) as client:
        recorder = Recorder(client)
        assert recorder.connected is True
        with pytest.raises(AmiError, match="MixMonitor: No such channel"):
            await recorder.start("PJSIP/gone-00000009", "/a.wav")


async def test_recorder_keeps_each_channel_on_one_session_and_spreads_channels(
    ami: FakeAmi,
) -> None:
    async with FakeAmi() as other, client_of(ami) as first, client_of(other) as second:
        recorder = Recorder(first, [second])
        channels = [f"PJSIP/caller-{n:08x}" for n in range(40)]
        for channel in channels:
            await recorder.start(channel, f"/{channel[-8:]}.wav", id_variable="V")
            await recorder.mute(channel, True)
            await recorder.stop(channel, "0x5617")
        on_first = {m["Channel"] for m in ami.received if "Channel" in m}
        on_second = {m["Channel"] for m in other.received if "Channel" in m}

    assert on_first and on_second  # both sessions work
    assert on_first.isdisjoint(on_second)  # a channel's start, mute and stop stay together
    assert on_first | on_second == set(channels)
    for server in (ami, other):
        for channel in {m["Channel"] for m in server.received if "Channel" in m}:
            actions = [m["Action"] for m in server.received if m.get("Channel") == channel]
            assert actions == ["MixMonitor", "MixMonitorMute", "StopMixMonitor"]


async def test_a_channel_whose_session_is_down_is_never_sent_on_another(ami: FakeAmi) -> None:
    down = AmiClient("127.0.0.1", 9, "consentd", "secret")  # never connected
    async with client_of(ami) as up:
        recorder = Recorder(up, [down])
        channels = [f"PJSIP/caller-{n:08x}" for n in range(20)]
        refused = 0
        for channel in channels:
            try:
                await recorder.stop(channel)
            except AmiNotSent:
                refused += 1
    sent = [m["Channel"] for m in ami.received if m.get("Action") == "StopMixMonitor"]
    assert 0 < refused < len(channels)
    assert len(sent) == len(channels) - refused  # none of the refused went to the other


# ---------------------------------------------------------------- list actions


def summary_of(queue: str, action_id: str) -> dict[str, str]:
    return {
        "Event": "QueueSummary",
        "ActionID": action_id,
        "Queue": queue,
        "LoggedIn": "3",
        "Available": "3",
        "Callers": "0",
        "HoldTime": "0",
        "TalkTime": "0",
        "LongestHoldTime": "0",
    }


async def test_list_action_returns_every_event_up_to_the_completion(ami: FakeAmi) -> None:
    ami.queues = ["support", "sales"]
    async with client_of(ami) as client:
        items = await client.send_list("QueueSummary", "QueueSummaryComplete")

    sent = ami.received[-1]
    assert sent["Action"] == "QueueSummary"
    assert items == [
        summary_of("support", sent["ActionID"]),
        summary_of("sales", sent["ActionID"]),
    ]


async def test_list_events_are_not_delivered_to_event_handlers(ami: FakeAmi) -> None:
    ami.queues = ["support"]
    seen: list[dict[str, str]] = []
    async with client_of(ami) as client:
        client.on_event(seen.append)
        await client.send_list("QueueSummary", "QueueSummaryComplete")
        await ami.send_event(Event="FullyBooted", Status="Fully Booted")
        await until(lambda: len(seen) == 1)

    assert seen == [{"Event": "FullyBooted", "Status": "Fully Booted"}]


async def test_refused_list_action_raises_ami_error(ami: FakeAmi) -> None:
    ami.behaviour["QueueSummary"] = "error"
    async with client_of(ami) as client:
        with pytest.raises(AmiError) as caught:
            await client.send_list("QueueSummary", "QueueSummaryComplete")

    assert not isinstance(caught.value, AmiUnavailable)
    assert str(caught.value) == "QueueSummary: No such channel"


async def test_list_that_never_completes_raises_ami_unavailable(ami: FakeAmi) -> None:
    ami.queues = None
    async with client_of(ami, action_timeout=0.2) as client:
        with pytest.raises(AmiUnavailable) as caught:
            await client.send_list("QueueSummary", "QueueSummaryComplete")

    assert str(caught.value) == "QueueSummary: list not complete within 0.2s"


async def test_list_action_while_disconnected_fails_at_once() -> None:
    client = AmiClient("127.0.0.1", 9, "consentd", "secret")

    with pytest.raises(AmiUnavailable) as caught:
        await asyncio.wait_for(client.send_list("QueueSummary", "QueueSummaryComplete"), 0.1)

    assert str(caught.value) == "QueueSummary: not connected to AMI"


# ---------------------------------------------------------------- queues on the PBX

GROUPS = """\
default: {recording: never}
numbers:
  "+4930100010": {recording: opt_in, routing: {group: support}}
  "+4930100020": {recording: always, routing: {group: sales}}
groups:
  support: {queue: support}
  sales: {queue: sales-de}
"""


@pytest.fixture
def groups_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(GROUPS)
    return path


def test_missing_queue_is_named_with_its_group_and_the_queues_the_pbx_has(
    groups_file: Path,
) -> None:
    book = load_policies(groups_file)

    assert missing_queues(book, {"support", "default"}) == [
        f"{groups_file}: group 'sales': queue 'sales-de' does not exist on the PBX "
        "(it has: default, support)"
    ]
    assert missing_queues(book, {"support", "sales-de"}) == []


def test_pbx_without_queues_misses_every_group_in_name_order(groups_file: Path) -> None:
    book = load_policies(groups_file)

    assert missing_queues(book, set()) == [
        f"{groups_file}: group 'sales': queue 'sales-de' does not exist on the PBX "
        "(it has: no queues)",
        f"{groups_file}: group 'support': queue 'support' does not exist on the PBX "
        "(it has: no queues)",
    ]


@pytest.fixture
def cli_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CONSENTD_* from the host (nor its stack's .state/stack.json), the AMI secret set;
    the CLI's logging set-up is undone afterwards."""
    for name in list(os.environ):
        if name.startswith("CONSENTD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONSENTD_STACK_JSON", "/nonexistent/stack.json")
    monkeypatch.setenv("CONSENTD_AMI_SECRET", AMI_SECRET)
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.usefixtures("cli_environment")
async def test_check_with_ami_exits_0_when_every_groups_queue_exists(
    groups_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeAmi(secret=AMI_SECRET) as server:  # CONSENTD_AMI_SECRET
        server.queues = ["default", "support", "sales-de"]
        code = await asyncio.to_thread(
            main, ["check", str(groups_file), "--ami", f"127.0.0.1:{server.port}"]
        )

    out, err = capsys.readouterr()
    assert code == 0
    assert out == (
        f"{groups_file}: OK, 2 numbers (always 1, opt_in 1, opt_out 0, never 0); "
        f"unknown numbers: never; queues on the PBX at 127.0.0.1:{server.port}: OK\n"
    )
    assert err == ""
    assert server.received[0]["Username"] == "consentd"
    assert server.count("QueueSummary") == 1


@pytest.mark.usefixtures("cli_environment")
async def test_check_with_ami_exits_1_naming_the_missing_queue(
    groups_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeAmi(secret=AMI_SECRET) as server:
        server.queues = ["support"]
        code = await asyncio.to_thread(
            main, ["check", str(groups_file), "--ami", f"127.0.0.1:{server.port}"]
        )

    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err == (
        f"{groups_file}: group 'sales': queue 'sales-de' does not exist on the PBX "
        "(it has: support)\n"
    )


@pytest.mark.usefixtures("cli_environment")
@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:", ":5038", "127.0.0.1:port"])
def test_check_with_an_ami_address_that_is_not_host_port_exits_2(
    groups_file: Path, capsys: pytest.CaptureFixture[str], address: str
) -> None:
    code = main(["check", str(groups_file), "--ami", address])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err == f"consentd check: --ami must be HOST:PORT, got {address!r}\n"


@pytest.mark.usefixtures("cli_environment")
def test_check_with_an_unreachable_ami_exits_2_saying_so(
    groups_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    code = main(["check", str(groups_file), "--ami", f"127.0.0.1:{port}"])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err == (
        f"consentd check: cannot log in to AMI at 127.0.0.1:{port} as 'consentd' within 5 s\n"
    )
    assert "Traceback" not in err


async def test_recorder_start_returns_the_mixmonitor_id_and_stop_names_it(ami: FakeAmi) -> None:
    async with client_of(ami) as client:
        recorder = Recorder(client)
        mixmonitor_id = await recorder.start(
            "1764432000.1", "/var/spool/x.wav", "b", id_variable="CONSENTD_MIXMONITOR_1"
        )
        await recorder.stop("1764432000.1", mixmonitor_id)

    start, stop = [m for m in ami.received if m["Action"] in ("MixMonitor", "StopMixMonitor")]
    assert mixmonitor_id == "0x5617"
    assert start["Options"] == "bi(CONSENTD_MIXMONITOR_1)"
    assert stop["MixMonitorID"] == "0x5617" and stop["Channel"] == "1764432000.1"

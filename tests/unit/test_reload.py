"""Live reload of the policy file: the diff, the reloader, the dispatcher's switch, HTTP, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from consentd.call_details import recent_calls
from consentd.cli import main
from consentd.greetings import GreetingLibrary
from consentd.http_api import Health, init_app
from consentd.ledger import LedgerEvent, MemoryLedger, open_calls_of
from consentd.policy import PolicyBook, PolicyError, load_policies
from consentd.reload import PolicyDiff, PolicyReloader, ReloadOutcome, describe, diff_books
from tests.e2e.harness import write_tone
from tests.unit.test_dispatcher import (
    SOUNDS,
    Node,
    by_kind,
    dtmf,
    node,
    queued_call,
    recording_file,
    stasis_start,
)

__all__ = ["node"]  # the fixture, imported for the dispatcher tests below

T0 = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)

OLD = """\
default: {recording: never}
numbers:
  "+4930100001": {recording: always}
  "+4930100002": {recording: opt_in}
  "+4930100003": {recording: opt_out}
groups:
  support: {queue: support, timeout: 20}
"""


def book(tmp_path: Path, text: str, name: str = "policies.yaml") -> PolicyBook:
    file = tmp_path / name
    file.write_text(text)
    return load_policies(file)


# ---------------------------------------------------------------- the diff (pure)


def test_diff_lists_added_removed_and_changed_numbers_and_nothing_else(tmp_path: Path) -> None:
    old = book(tmp_path, OLD, "old.yaml")
    new = book(
        tmp_path,
        OLD.replace('"+4930100001": {recording: always}', '"+4930100001": {recording: never}')
        .replace('  "+4930100003": {recording: opt_out}\n', "")
        .replace("numbers:\n", 'numbers:\n  "+4930100009": {recording: opt_in}\n'),
        "new.yaml",
    )

    assert diff_books(old, new) == PolicyDiff(
        added=("+4930100009",), removed=("+4930100003",), changed=("+4930100001",)
    )


def test_a_changed_key_other_than_recording_counts_as_a_change(tmp_path: Path) -> None:
    old = book(tmp_path, OLD, "old.yaml")
    new = book(
        tmp_path,
        OLD.replace("{recording: opt_out}", "{recording: opt_out, keep_partial_on_opt_out: true}"),
        "new.yaml",
    )

    assert diff_books(old, new).changed == ("+4930100003",)


def test_the_same_file_twice_is_no_change(tmp_path: Path) -> None:
    diff = diff_books(book(tmp_path, OLD, "a.yaml"), book(tmp_path, OLD, "b.yaml"))

    assert diff.empty
    assert (
        describe("p.yaml", diff)
        == "reloaded p.yaml: 0 numbers added, 0 removed, 0 changed (no changes)"
    )


def test_diff_says_when_the_default_and_the_groups_changed(tmp_path: Path) -> None:
    new = OLD.replace("default: {recording: never}", "default: {recording: always}").replace(
        "timeout: 20", "timeout: 25"
    )

    diff = diff_books(book(tmp_path, OLD, "old.yaml"), book(tmp_path, new, "new.yaml"))

    assert (diff.default_changed, diff.groups_changed, diff.changed) == (True, True, ())


def test_summary_line_names_the_numbers() -> None:
    diff = PolicyDiff(
        added=("+4930100009",), changed=("+4930100001", "+4930100002"), default_changed=True
    )

    assert describe("/etc/consentd/policies.yaml", diff) == (
        "reloaded /etc/consentd/policies.yaml: 1 number added (+4930100009), 0 removed, "
        "2 changed (+4930100001, +4930100002); default changed"
    )


# ---------------------------------------------------------------- the reloader


class Daemon:
    """What the reloader talks to: the switch, the ledger, the greeting installer."""

    def __init__(self, tmp_path: Path) -> None:
        self.file = tmp_path / "policies.yaml"
        self.file.write_text(OLD)
        self.sounds_root = tmp_path / "asterisk"
        self.applied: list[tuple[PolicyBook, GreetingLibrary]] = []
        self.rows: list[LedgerEvent] = []
        self.install_error: Exception | None = None
        self.reloader = PolicyReloader(
            load_policies(self.file),
            install=self.install,
            apply=lambda b, g: self.applied.append((b, g)),
            submit=self.rows.append,
            clock=lambda: T0,
            node="pbx1",
            boot_id="b007",
        )

    def install(self, new: PolicyBook) -> GreetingLibrary:
        if self.install_error is not None:
            raise self.install_error
        return GreetingLibrary.install(new, SOUNDS, self.sounds_root)


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    return Daemon(tmp_path)


async def test_a_valid_file_is_switched_to_and_written_to_the_ledger(daemon: Daemon) -> None:
    daemon.file.write_text(OLD.replace("{recording: always}", "{recording: never}"))

    outcome = await daemon.reloader.reload("http")

    assert outcome.ok
    assert outcome.diff == PolicyDiff(changed=("+4930100001",))
    [(applied, _)] = daemon.applied
    assert applied.lookup("+4930100001").policy.recording.value == "never"
    assert daemon.reloader.book is applied
    assert daemon.rows == [
        LedgerEvent(
            event_key="reload:pbx1:b007:1",
            call_id="policies:pbx1",
            node="pbx1",
            seq=1,
            kind="policies_reloaded",
            occurred_at=T0,
            data={
                "file": str(daemon.file),
                "trigger": "http",
                "numbers": 3,
                "added": [],
                "removed": [],
                "changed": ["+4930100001"],
                "default_changed": False,
                "groups_changed": False,
            },
        )
    ]


async def test_an_invalid_file_is_refused_with_every_error_and_nothing_switches(
    daemon: Daemon,
) -> None:
    daemon.file.write_text(
        OLD.replace(
            '"+4930100001": {recording: always}', '"4930100001": {recording: always}'
        ).replace("numbers:\n", 'numbers:\n  "+4930100004": {recording: opt_in, line: digital}\n')
    )

    outcome = await daemon.reloader.reload("sighup")

    assert not outcome.ok
    with pytest.raises(PolicyError) as check:  # what `consentd check` prints, one per line
        load_policies(daemon.file)
    assert outcome.errors == tuple(str(p) for p in check.value.problems)
    assert [e.split(": ")[0] for e in outcome.errors] == [f"{daemon.file}:3", f"{daemon.file}:4"]
    assert "4930100001" in outcome.errors[1] and "is not E.164" in outcome.errors[1]
    assert "+4930100004" in outcome.errors[0] and "digital line" in outcome.errors[0]
    assert daemon.applied == []
    assert daemon.reloader.book.lookup("+4930100001").policy.recording.value == "always"
    [row] = daemon.rows
    assert (row.kind, row.call_id, row.event_key) == (
        "policies_reload_refused",
        "policies:pbx1",
        "reload:pbx1:b007:1",
    )
    assert row.data == {
        "file": str(daemon.file),
        "trigger": "sighup",
        "errors": list(outcome.errors),
    }


async def test_a_greeting_that_cannot_be_installed_refuses_the_reload(
    daemon: Daemon, tmp_path: Path
) -> None:
    write_tone(tmp_path / "hello.wav", 0.5)
    daemon.file.write_text(
        OLD.replace("{recording: opt_in}", "{recording: opt_in, greetings: {opt_in: hello.wav}}")
    )
    daemon.install_error = PermissionError(13, "Permission denied", "/var/lib/asterisk/sounds")

    outcome = await daemon.reloader.reload("http")

    assert outcome.errors == (
        f"{daemon.file}: installing the custom greetings failed: [Errno 13] Permission denied: "
        "'/var/lib/asterisk/sounds'",
    )
    assert daemon.applied == []
    assert [r.kind for r in daemon.rows] == ["policies_reload_refused"]


async def test_custom_greetings_of_the_new_file_are_installed_before_the_switch(
    daemon: Daemon, tmp_path: Path
) -> None:
    write_tone(tmp_path / "hello.wav", 0.5)
    daemon.file.write_text(
        OLD.replace("{recording: opt_in}", "{recording: opt_in, greetings: {opt_in: hello.wav}}")
    )

    assert (await daemon.reloader.reload("http")).ok

    [(new, greetings)] = daemon.applied
    media = greetings.consent_greeting(new.lookup("+4930100002").policy)
    assert media is not None and media.source == str((tmp_path / "hello.wav").resolve())
    installed = daemon.sounds_root / SOUNDS.lstrip("/") / "consentd-custom"
    assert [p.suffix for p in installed.iterdir()] == [".wav"]


async def test_concurrent_reloads_run_one_after_the_other(daemon: Daemon) -> None:
    running = 0
    overlap = False
    real_install = daemon.install

    def slow_install(new: PolicyBook) -> GreetingLibrary:
        nonlocal running, overlap
        running += 1
        overlap = overlap or running > 1
        threading.Event().wait(0.05)
        running -= 1
        return real_install(new)

    daemon.reloader._install = slow_install

    outcomes = await asyncio.gather(*(daemon.reloader.reload("http") for _ in range(3)))

    assert all(o.ok for o in outcomes)
    assert not overlap
    assert [r.event_key for r in daemon.rows] == [f"reload:pbx1:b007:{n}" for n in (1, 2, 3)]


# ---------------------------------------------------------------- the dispatcher's switch


def reloaded(node: Node, text: str) -> PolicyBook:
    file = node.book.file
    file.write_text(text)
    new = load_policies(file)
    node.dispatcher.replace_policies(new, GreetingLibrary.install(new, SOUNDS, node.root))
    return new


async def test_a_call_in_progress_keeps_its_policy_and_a_new_call_gets_the_new_one(
    node: Node,
) -> None:
    await node.feed(stasis_start("1764432000.1", "+4930100002"))  # opt_in, de
    reloaded(
        node, OLD.replace('"+4930100002": {recording: opt_in}', '"+4930100002": {recording: never}')
    )

    await node.feed(dtmf("1764432000.1", "3"), stasis_start("1764432000.2", "+4930100002"))
    await node.feed(dtmf("1764432000.2", "3"))

    assert node.recorder.requests == [("start", "1764432000.1", recording_file("1764432000.1"))]
    started = {e.call_id: e.data["policy"] for e in by_kind(await node.ledger(), "call_started")}
    assert started == {"pbx1:1764432000.1": "opt_in", "pbx1:1764432000.2": "never"}
    decided = by_kind(await node.ledger(), "consent_decided")
    assert [e.call_id for e in decided] == ["pbx1:1764432000.1"]


async def test_a_call_back_from_the_queue_keeps_its_group_and_greetings(node: Node) -> None:
    chan = "1764432003.4"
    await queued_call(node, chan)
    reloaded(node, OLD)  # +4930100010 and its group are gone from the new file

    await node.feed(stasis_start(chan, "+4930100010", args=["after-queue", "TIMEOUT"]))

    assert node.ari.of("play")[-1] == (
        "play",
        chan,
        f"{chan}-voicemail",
        f"sound:{SOUNDS}/en/consentd/voicemail,sound:beep",
        "en",
    )
    assert node.dispatcher.calls[chan].call.facts.group is not None


# ---------------------------------------------------------------- the ledger rows are no calls


def test_reload_rows_are_neither_calls_nor_open_calls() -> None:
    row = LedgerEvent("reload:pbx1:b007:1", "policies:pbx1", "pbx1", 1, "policies_reloaded", T0)

    assert open_calls_of([row], "pbx1", T0 - timedelta(hours=1)) == []
    store = MemoryLedger()
    asyncio.run(store.append([row]))
    assert asyncio.run(recent_calls(store, 20, T0)) == []


# ---------------------------------------------------------------- HTTP


class Reloads:
    def __init__(self, outcome: ReloadOutcome) -> None:
        self.outcome = outcome
        self.count = 0

    async def __call__(self) -> ReloadOutcome:
        self.count += 1
        return self.outcome


TOKEN = "reload-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def health() -> Health:
    return Health(ari=True, ami=True, database=True, active_calls=0, ledger_backlog=0)


async def no_calls(limit: int) -> list[dict[str, Any]]:
    return []


@pytest.fixture
async def reloads() -> Reloads:
    return Reloads(ReloadOutcome("/p.yaml", "http", PolicyDiff(added=("+4930100009",)), numbers=4))


@pytest.fixture
async def client(reloads: Reloads) -> AsyncIterator[TestClient[Any, Any]]:
    app = init_app(health, CollectorRegistry(), no_calls, reload=reloads, api_token=TOKEN)
    async with TestClient(TestServer(app), headers=AUTH) as c:
        yield c


async def test_post_reload_answers_200_with_what_changed(
    client: TestClient[Any, Any], reloads: Reloads
) -> None:
    response = await client.post("/reload")

    assert response.status == 200
    assert await response.json() == {
        "file": "/p.yaml",
        "trigger": "http",
        "numbers": 4,
        "added": ["+4930100009"],
        "removed": [],
        "changed": [],
        "default_changed": False,
        "groups_changed": False,
        "summary": "reloaded /p.yaml: 1 number added (+4930100009), 0 removed, 0 changed",
    }
    assert reloads.count == 1


async def test_post_reload_answers_422_with_the_errors_of_a_refused_file(
    client: TestClient[Any, Any], reloads: Reloads
) -> None:
    reloads.outcome = ReloadOutcome(
        "/p.yaml", "http", errors=("/p.yaml:3: bad", "/p.yaml:5: worse")
    )

    response = await client.post("/reload")

    assert response.status == 422
    assert await response.json() == {
        "file": "/p.yaml",
        "trigger": "http",
        "errors": ["/p.yaml:3: bad", "/p.yaml:5: worse"],
    }


async def test_get_reload_is_not_a_reload(client: TestClient[Any, Any], reloads: Reloads) -> None:
    response = await client.get("/reload")

    assert response.status == 405
    assert reloads.count == 0


async def test_without_a_reloader_there_is_no_reload_route() -> None:
    app = init_app(health, CollectorRegistry(), no_calls, api_token=TOKEN)
    async with TestClient(TestServer(app), headers=AUTH) as c:
        assert (await c.post("/reload")).status == 404


# ---------------------------------------------------------------- the CLI


class FakeDaemon(BaseHTTPRequestHandler):
    status = 200
    body: bytes = b""
    posts: ClassVar[list[str]] = []
    tokens: ClassVar[list[str | None]] = []

    def do_POST(self) -> None:
        FakeDaemon.posts.append(self.path)
        FakeDaemon.tokens.append(self.headers.get("Authorization"))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeDaemon]]:
    for name in list(os.environ):
        if name.startswith("CONSENTD_"):
            monkeypatch.delenv(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeDaemon)
    monkeypatch.setenv("CONSENTD_HTTP_PORT", str(server.server_address[1]))
    monkeypatch.setenv("CONSENTD_API_TOKEN", TOKEN)
    FakeDaemon.posts = []
    FakeDaemon.tokens = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeDaemon
    finally:
        server.shutdown()
        server.server_close()


def answer(fake: type[FakeDaemon], status: int, body: dict[str, Any]) -> None:
    fake.status = status
    fake.body = json.dumps(body).encode()


def test_cli_reload_prints_the_one_line_summary_and_exits_0(
    fake_daemon: type[FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = ReloadOutcome(
        "/etc/p.yaml", "http", PolicyDiff(added=("+4930100009",), changed=("+4930100001",))
    )
    answer(fake_daemon, 200, outcome.as_dict())

    assert main(["reload"]) == 0

    out, err = capsys.readouterr()
    assert out == (
        "reloaded /etc/p.yaml: 1 number added (+4930100009), 0 removed, 1 changed (+4930100001)\n"
    )
    assert err == ""
    assert fake_daemon.posts == ["/reload"]
    assert fake_daemon.tokens == [f"Bearer {TOKEN}"]


def test_cli_reload_of_a_refused_file_prints_every_error_and_exits_1(
    fake_daemon: type[FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    errors = ['/etc/p.yaml:3: number "4930": not E.164', "/etc/p.yaml:9: unknown key 'x'"]
    answer(fake_daemon, 422, {"file": "/etc/p.yaml", "trigger": "http", "errors": errors})

    assert main(["reload"]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        *errors,
        "consentd reload: /etc/p.yaml: refused, 2 errors; the daemon keeps its last good policies",
    ]


def test_cli_reload_with_no_daemon_says_so_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeDaemon)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    monkeypatch.setenv("CONSENTD_API_TOKEN", TOKEN)

    assert main(["reload", "--http", f"127.0.0.1:{port}"]) == 2

    err = capsys.readouterr().err
    assert err.startswith(f"consentd reload: the daemon at 127.0.0.1:{port} is not reachable (")
    assert "Traceback" not in err


def test_cli_reload_of_a_daemon_without_the_route_exits_2(
    fake_daemon: type[FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    answer(fake_daemon, 404, {"error": "not found"})

    assert main(["reload"]) == 2

    assert "unexpected answer" in capsys.readouterr().err


def test_cli_reload_with_a_token_the_daemon_refuses_says_so_and_exits_2(
    fake_daemon: type[FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    answer(fake_daemon, 401, {"error": {"id": "unauthorized", "message": "no"}})

    assert main(["reload"]) == 2

    assert capsys.readouterr().err == (
        "consentd reload: the daemon refused the API token (HTTP 401); "
        "CONSENTD_API_TOKEN[_FILE] must hold the daemon's token\n"
    )


def test_cli_reload_without_any_token_says_which_variable_and_exits_2(
    fake_daemon: type[FakeDaemon],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("CONSENTD_API_TOKEN")
    monkeypatch.setenv("CONSENTD_STACK_JSON", str(tmp_path / "no-stack.json"))

    assert main(["reload"]) == 2

    assert capsys.readouterr().err.startswith(
        "consentd reload: no API token: missing CONSENTD_API_TOKEN"
    )
    assert fake_daemon.posts == []


def test_cli_reload_with_a_malformed_address_is_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["reload", "--http", "localhost"]) == 2
    assert "--http must be HOST:PORT" in capsys.readouterr().err

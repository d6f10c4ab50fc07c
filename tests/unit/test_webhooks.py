"""Webhooks without a database: configuration and its errors, the signature, the ids,
the retry schedule, the body, and the sender against a real loopback HTTP receiver
with a stand-in outbox (acknowledged URLs, failures and their retry delay, expiry,
an empty voicemail skipped)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from consentd.ledger import LedgerEvent
from consentd.reports_pg import CallView
from consentd.settings import Settings, SettingsProblem
from consentd.webhook_sender import OutboxRow, WebhookSender
from consentd.webhooks import (
    WebhookConfig,
    body,
    delivery_id,
    headers,
    redact_url,
    retry_delay,
    sign,
    url_fingerprint,
    verify,
    voicemail_of,
    webhook_config,
)

SECRET = "whsec-0123456789abcdef0123456789abcdef"
T0 = datetime(2026, 11, 30, 7, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CONSENTD_"):
            monkeypatch.delenv(name)


# ---------------------------------------------------------------- configuration


def test_no_urls_and_no_secret_is_no_webhooks() -> None:
    assert webhook_config(Settings()) is None


def test_urls_are_comma_separated_and_the_secret_may_come_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret_file = tmp_path / "webhook_secret"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.setenv(
        "CONSENTD_WEBHOOK_URLS", " https://desk.example/hook , http://127.0.0.1:9/x,"
    )
    monkeypatch.setenv("CONSENTD_WEBHOOK_SECRET_FILE", str(secret_file))

    config = webhook_config(Settings())

    assert config is not None
    assert config.urls == ("https://desk.example/hook", "http://127.0.0.1:9/x")
    assert config.secret == SECRET.encode()
    assert (config.timeout, config.retry_max) == (10.0, 300.0)
    assert config.warnings == ()
    assert SECRET not in repr(config)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONSENTD_WEBHOOK_URLS": "https://a.example/h"}, "CONSENTD_WEBHOOK_SECRET is not"),
        ({"CONSENTD_WEBHOOK_SECRET": SECRET}, "CONSENTD_WEBHOOK_URLS is not"),
        (
            {"CONSENTD_WEBHOOK_URLS": "https://a.example/h", "CONSENTD_WEBHOOK_SECRET": "short"},
            "too short",
        ),
        (
            {"CONSENTD_WEBHOOK_URLS": "ftp://a.example/h", "CONSENTD_WEBHOOK_SECRET": SECRET},
            "'ftp://a.example/h' is not an http:// or https:// URL",
        ),
        (
            {"CONSENTD_WEBHOOK_URLS": "a.example/h", "CONSENTD_WEBHOOK_SECRET": SECRET},
            "is not an http:// or https:// URL",
        ),
        (
            {"CONSENTD_WEBHOOK_URLS": "https:///h", "CONSENTD_WEBHOOK_SECRET": SECRET},
            "has no host",
        ),
        (
            {
                "CONSENTD_WEBHOOK_URLS": "https://a.example:99999/",
                "CONSENTD_WEBHOOK_SECRET": SECRET,
            },
            "is not a URL",
        ),
        (
            {
                "CONSENTD_WEBHOOK_URLS": "https://a.example/h,https://a.example/h",
                "CONSENTD_WEBHOOK_SECRET": SECRET,
            },
            "listed twice",
        ),
        (
            {
                "CONSENTD_WEBHOOK_URLS": "https://a.example/h",
                "CONSENTD_WEBHOOK_SECRET": SECRET,
                "CONSENTD_WEBHOOK_RETRY_MAX_SECONDS": "0",
            },
            "CONSENTD_WEBHOOK_RETRY_MAX_SECONDS must be from 1",
        ),
        (
            {
                "CONSENTD_WEBHOOK_URLS": "https://a.example/h",
                "CONSENTD_WEBHOOK_SECRET": SECRET,
                "CONSENTD_WEBHOOK_TIMEOUT": "-1",
            },
            "CONSENTD_WEBHOOK_TIMEOUT must be from",
        ),
    ],
)
def test_a_configuration_that_cannot_work_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(SettingsProblem, match="CONSENTD_WEBHOOK") as caught:
        webhook_config(Settings())

    assert message in str(caught.value)
    assert SECRET not in str(caught.value)


def test_consentd_run_refuses_a_bad_webhook_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from consentd.cli import main

    monkeypatch.setenv("CONSENTD_ARI_PASSWORD", "ari")
    monkeypatch.setenv("CONSENTD_AMI_SECRET", "ami")
    monkeypatch.setenv("CONSENTD_DATABASE_URL", "postgresql://consentd@127.0.0.1:1/x")
    monkeypatch.setenv("CONSENTD_API_TOKEN", "token")
    monkeypatch.setenv("CONSENTD_WEBHOOK_URLS", "https://user:pw@desk.example/hook?key=k1")

    assert main(["run", "--policies", "/nonexistent.yaml"]) == 2

    err = capsys.readouterr().err
    assert "not starting" in err and "CONSENTD_WEBHOOK_SECRET is not" in err


def test_a_url_in_a_log_line_or_error_keeps_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    assert redact_url("https://user:pw@desk.example:8443/hook?key=k1#f") == (
        "https://desk.example:8443/hook?..."
    )
    assert redact_url("http://[::1]:8080/h") == "http://[::1]:8080/h"
    monkeypatch.setenv("CONSENTD_WEBHOOK_URLS", "gopher://user:pw@desk.example/?key=k1")
    monkeypatch.setenv("CONSENTD_WEBHOOK_SECRET", SECRET)
    with pytest.raises(SettingsProblem) as caught:
        webhook_config(Settings())
    assert "pw" not in str(caught.value) and "k1" not in str(caught.value)


def test_plain_http_to_another_host_is_allowed_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "CONSENTD_WEBHOOK_URLS", "http://desk.example/h,http://localhost:1/h,http://127.0.0.2/h"
    )
    monkeypatch.setenv("CONSENTD_WEBHOOK_SECRET", SECRET)
    config = webhook_config(Settings())
    assert config is not None
    assert len(config.warnings) == 1 and "http://desk.example/h" in config.warnings[0]


# ---------------------------------------------------------------- signature, ids, retries


def test_the_signature_is_hex_hmac_sha256_of_the_raw_body() -> None:
    raw = b'{"id":"x","type":"call.ended"}'
    expected = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()

    assert sign(SECRET.encode(), raw) == f"sha256={expected}"
    assert verify(SECRET.encode(), raw, f"sha256={expected}")
    assert not verify(SECRET.encode(), raw + b" ", f"sha256={expected}")
    assert not verify(b"another-secret-0123456789", raw, f"sha256={expected}")
    assert not verify(SECRET.encode(), raw, None)


def test_the_delivery_id_is_stable_per_event_and_call_and_what_the_trigger_computes() -> None:
    one = delivery_id("call.ended", "pbx1:1796017592.2")

    assert one == delivery_id("call.ended", "pbx1:1796017592.2")
    assert one != delivery_id("voicemail.recorded", "pbx1:1796017592.2")
    assert one != delivery_id("call.ended", "pbx1:1796017592.3")
    # PostgreSQL: md5('consentd-webhook:call.ended:' || call_id)::uuid
    digest = hashlib.md5(b"consentd-webhook:call.ended:pbx1:1796017592.2").hexdigest()
    assert one == f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


def test_retries_back_off_exponentially_from_one_second_to_the_cap() -> None:
    assert [retry_delay(n, 300) for n in range(1, 12)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300,
    ]  # fmt: skip
    assert retry_delay(0, 300) == 0
    assert retry_delay(10_000, 300) == 300  # no overflow after days of failures
    assert [retry_delay(n, 2) for n in range(1, 5)] == [1, 2, 2, 2]


# ---------------------------------------------------------------- the body


def _event(seq: int, kind: str, seconds: float, **data: Any) -> LedgerEvent:
    return LedgerEvent(
        f"k{seq}", "pbx1:1.1", "pbx1", seq, kind, T0 + timedelta(seconds=seconds), data
    )


VOICEMAIL = {"file": "recording/consentd-vm-1.wav", "path": "/var/spool/rec/consentd-vm-1.wav"}


def test_the_voicemail_comes_from_the_ledger_and_an_empty_one_is_none() -> None:
    events = [
        _event(1, "call_started", 0),
        _event(2, "voicemail_started", 10, **VOICEMAIL),
        _event(3, "voicemail_finished", 14, state="done", duration=4, **VOICEMAIL),
        _event(4, "call_ended", 14.2),
    ]

    assert voicemail_of(events) == {
        "file": VOICEMAIL["file"],
        "path": VOICEMAIL["path"],
        "location": "asterisk://pbx1/recording/consentd-vm-1.wav",
        "started_at": (T0 + timedelta(seconds=10)).isoformat(),
        "finished_at": (T0 + timedelta(seconds=14)).isoformat(),
        "duration": 4,
        "state": "done",
    }
    assert voicemail_of(events[:1]) is None
    emptied = [*events, _event(5, "empty_file_deleted", 14.3, file=VOICEMAIL["file"])]
    assert voicemail_of(emptied) is None
    # Hung up during the beep: ARI never opened the file, and gives no duration.
    unwritten = [*events[:2], _event(3, "voicemail_finished", 10.2, state="done", duration=None,
                                     **VOICEMAIL), events[3]]  # fmt: skip
    assert voicemail_of(unwritten) is None


def test_the_body_carries_id_type_time_and_the_call_record_with_its_recordings() -> None:
    record = {"id": 4711, "call_id": "pbx1:1.1", "call_recording_consent": "opt_in"}
    where = "asterisk://pbx1/var/spool/monitor/a.wav"
    details = {
        "recordings": ["/var/spool/monitor/a.wav"],
        "recording_locations": [where],
        "id": "pbx1:1.1",
    }
    ident = delivery_id("call.ended", "pbx1:1.1")

    raw = body("call.ended", ident, T0, record, details)

    assert json.loads(raw) == {
        "id": ident,
        "type": "call.ended",
        "occurred_at": "2026-11-30T07:00:00+00:00",
        "call": {
            **record,
            "recordings": ["/var/spool/monitor/a.wav"],
            "recording_locations": [where],
        },
    }
    sent = headers(SECRET.encode(), "call.ended", ident, raw)
    assert verify(SECRET.encode(), raw, sent["X-Consentd-Signature"])
    assert sent["X-Consentd-Delivery"] == ident
    assert sent["X-Consentd-Event"] == "call.ended"
    assert sent["Content-Type"] == "application/json"

    voicemail = json.loads(body("voicemail.recorded", ident, T0, record, details, {"path": "/v"}))
    assert voicemail["type"] == "voicemail.recorded" and voicemail["voicemail"] == {"path": "/v"}
    with pytest.raises(ValueError, match="unknown webhook event"):
        body("call.started", ident, T0, record, details)


# ---------------------------------------------------------------- the sender


class FakeOutbox:
    def __init__(self) -> None:
        self.attempts: list[dict[str, Any]] = []
        self.finished: list[tuple[int, str, str]] = []
        self.released: list[int] = []

    async def attempted(
        self,
        row: OutboxRow,
        acknowledged: Sequence[str],
        *,
        done: bool,
        error: str | None,
        retry_after: float,
    ) -> None:
        self.attempts.append(
            {
                "id": row.id,
                "acknowledged": list(acknowledged),
                "done": done,
                "error": error,
                "retry_after": retry_after,
            }
        )

    async def finish(self, row: OutboxRow, outcome: str, reason: str) -> None:
        self.finished.append((row.id, outcome, reason))

    async def release(self, ids: Sequence[int]) -> None:
        self.released.extend(ids)


class FakeReports:
    def __init__(self, events: list[LedgerEvent]) -> None:
        self.events = events

    async def call(self, key: str, now: datetime) -> CallView | None:
        if not self.events:
            return None
        return CallView(
            record={"id": 1, "call_id": key, "voicemail": True},
            details={"id": key, "recordings": [VOICEMAIL["path"]]},
            events=[
                {
                    "seq": e.seq,
                    "kind": e.kind,
                    "occurred_at": e.occurred_at.isoformat(),
                    "stored_at": e.occurred_at.isoformat(),
                    "node": e.node,
                    "data": e.data,
                }
                for e in self.events
            ],
        )


class Receiver:
    """A loopback HTTP receiver answering each path with the status set for it."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.got: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.got.append((request.path, dict(request.headers), raw))
        return web.Response(status=self.status.get(request.path, 204))


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, TestServer]]:
    got = Receiver()
    app = web.Application()
    app.router.add_post("/{name}", got.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield got, server
    finally:
        await server.close()


ENDED = [
    _event(1, "call_started", 0),
    _event(2, "voicemail_started", 10, **VOICEMAIL),
    _event(3, "voicemail_finished", 14, state="done", duration=4, **VOICEMAIL),
    _event(4, "call_ended", 14.2),
]


def _row(event_type: str = "call.ended", **changes: Any) -> OutboxRow:
    row = OutboxRow(
        id=7,
        delivery_id=delivery_id(event_type, "pbx1:1.1"),
        event_type=event_type,
        call_id="pbx1:1.1",
        occurred_at=T0,
        created_at=T0,
        attempts=0,
        delivered_to=(),
    )
    return replace(row, **changes)


def _sender(
    server: TestServer, paths: Sequence[str], outbox: FakeOutbox, events: list[LedgerEvent]
) -> WebhookSender:
    config = WebhookConfig(
        urls=tuple(str(server.make_url(p)) for p in paths), secret=SECRET.encode(), retry_max=300
    )
    return WebhookSender(config, outbox, FakeReports(events))  # type: ignore[arg-type]


async def _deliver(sender: WebhookSender, row: OutboxRow, now: datetime = T0) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        await sender._deliver(session, row, now)


async def test_a_delivery_posts_the_signed_body_to_every_url_and_is_marked_done(
    receiver: tuple[Receiver, TestServer],
) -> None:
    got, server = receiver
    outbox = FakeOutbox()
    sender = _sender(server, ["/a", "/b"], outbox, ENDED)

    await _deliver(sender, _row("voicemail.recorded"))

    assert sorted(path for path, _, _ in got.got) == ["/a", "/b"]
    for _, sent, raw in got.got:
        assert verify(SECRET.encode(), raw, sent["X-Consentd-Signature"])
        payload = json.loads(raw)
        assert (
            payload["id"] == sent["X-Consentd-Delivery"] == _row("voicemail.recorded").delivery_id
        )
        assert payload["voicemail"]["path"] == VOICEMAIL["path"]
        assert payload["call"]["recordings"] == [VOICEMAIL["path"]]
    assert outbox.attempts == [
        {
            "id": 7,
            "acknowledged": [url_fingerprint(str(server.make_url(p))) for p in ("/a", "/b")],
            "done": True,
            "error": None,
            "retry_after": 0,
        }
    ]


async def test_a_failed_url_is_retried_alone_after_the_backoff(
    receiver: tuple[Receiver, TestServer],
) -> None:
    got, server = receiver
    got.status["/b"] = 503
    outbox = FakeOutbox()
    sender = _sender(server, ["/a", "/b"], outbox, ENDED)

    await _deliver(sender, _row(attempts=3))

    attempt = outbox.attempts[-1]
    assert attempt["done"] is False
    assert attempt["retry_after"] == 8  # the 4th failure: 1, 2, 4, 8
    assert attempt["acknowledged"] == [url_fingerprint(str(server.make_url("/a")))]
    assert attempt["error"] == f"{server.make_url('/b')}: HTTP 503"

    got.got.clear()
    got.status.clear()
    await _deliver(sender, _row(attempts=4, delivered_to=tuple(attempt["acknowledged"])))
    assert [path for path, _, _ in got.got] == ["/b"]
    assert outbox.attempts[-1]["done"] is True


async def test_a_receiver_that_is_down_is_a_failed_attempt(
    receiver: tuple[Receiver, TestServer],
) -> None:
    _, server = receiver
    outbox = FakeOutbox()
    sender = _sender(server, ["/a"], outbox, ENDED)
    await server.close()  # nothing listens on the port now

    await _deliver(sender, _row())

    assert outbox.attempts[-1]["done"] is False
    assert outbox.attempts[-1]["retry_after"] == 1
    assert "ClientConnectorError" in outbox.attempts[-1]["error"]


async def test_too_old_rows_expire_and_an_empty_voicemail_is_skipped(
    receiver: tuple[Receiver, TestServer],
) -> None:
    got, server = receiver
    outbox = FakeOutbox()
    emptied = [*ENDED, _event(5, "empty_file_deleted", 14.3, file=VOICEMAIL["file"])]
    sender = _sender(server, ["/a"], outbox, emptied)

    await _deliver(sender, _row(), now=T0 + timedelta(days=4))
    await _deliver(sender, _row("voicemail.recorded", id=8))

    assert [(i, outcome) for i, outcome, _ in outbox.finished] == [(7, "expired"), (8, "skipped")]
    assert got.got == [] and outbox.attempts == []


async def test_a_call_missing_from_the_ledger_is_retried(
    receiver: tuple[Receiver, TestServer],
) -> None:
    _, server = receiver
    outbox = FakeOutbox()
    sender = _sender(server, ["/a"], outbox, [])

    await _deliver(sender, _row())

    assert outbox.attempts[-1]["done"] is False
    assert outbox.attempts[-1]["error"] == "the call is not in the ledger"

"""``consentd export`` and ``consentd report agents`` against a stand-in daemon."""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from consentd.cli import main
from consentd.export import CALL_FIELDS

TOKEN = "cli-reports-token"


def a_call(number: int) -> dict[str, Any]:
    call: dict[str, Any] = dict.fromkeys(CALL_FIELDS)
    call.update(
        id=number,
        updated_at="2026-11-29T16:00:00Z",
        phone_number="+4930100001",
        caller="+4915100000001",
        call_recording_consent="opt_in",
        call_recording_consent_action="caller_opted_in",
        recording_time=20,
        not_recording_time=4,
        completion_status="completed",
        agent_name="agent1",
        call_id=f"pbx1:{number}",
    )
    return call


class Daemon(BaseHTTPRequestHandler):
    asked: ClassVar[list[tuple[str, dict[str, str], str | None]]] = []

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        Daemon.asked.append((url.path, query, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._answer(401, {"error": {"id": "unauthorized", "message": "no"}})
        elif url.path.startswith("/api/v2/channels/voice/stats/incremental/calls"):
            first = query["start_time"] == "100"
            self._answer(
                200,
                {
                    "calls": [a_call(1), a_call(2)] if first else [a_call(3)],
                    "count": 2 if first else 1,
                    "end_time": 200 if first else 300,
                    "next_page": "http://x/?start_time=200" if first else None,
                    "end_of_stream": not first,
                },
            )
        elif url.path == "/api/reports/agents":
            row = {
                "agent": "agent1",
                "calls_answered": 4,
                "calls_placed": 1,
                "recording_control_interactions": 2,
                "recording_time": 90,
                "not_recording_time": 30,
                "consent_outcomes": {
                    "caller_opted_in": 3,
                    "caller_opted_out": 1,
                    "caller_withdrew": 0,
                    "no_decision": 1,
                },
            }
            self._answer(
                200,
                {"from": "2026-11-28T00:00:00+00:00", "to": "2026-11-29T00:00:00+00:00",
                 "agents": [row]},
            )  # fmt: skip
        else:
            self._answer(404, {"error": {"id": "not-found", "message": "no"}})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Daemon]]:
    for name in list(os.environ):
        if name.startswith("CONSENTD_"):
            monkeypatch.delenv(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Daemon)
    monkeypatch.setenv("CONSENTD_HTTP_PORT", str(server.server_address[1]))
    monkeypatch.setenv("CONSENTD_API_TOKEN", TOKEN)
    Daemon.asked = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Daemon
    finally:
        server.shutdown()
        server.server_close()


def test_export_pages_to_the_end_of_the_stream_and_prints_json(
    daemon: type[Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--since", "100", "--json"]) == 0

    printed = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in printed["calls"]] == [1, 2, 3]
    assert (printed["count"], printed["end_time"]) == (3, 300)
    assert [(path.endswith("calls.json"), q["start_time"]) for path, q, _ in daemon.asked] == [
        (True, "100"),
        (True, "200"),
    ]
    assert {token for _, _, token in daemon.asked} == {f"Bearer {TOKEN}"}


def test_export_takes_iso_8601_and_prints_a_table(
    daemon: type[Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--since", "1970-01-01T00:01:40Z"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "id", "updated", "number", "caller", "consent", "action", "rec", "s", "not", "rec", "s",
        "status", "agent", "call", "id",
    ]  # fmt: skip
    assert len(lines) == 2 + 3
    assert lines[2].split()[0] == "1"
    assert daemon.asked[0][1]["start_time"] == "100"


def test_export_with_a_bad_since_exits_2_before_asking(
    daemon: type[Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--since", "last tuesday"]) == 2

    assert capsys.readouterr().err == (
        "consentd export: --since must be epoch seconds or ISO 8601, got 'last tuesday'\n"
    )
    assert daemon.asked == []


def test_a_refused_token_exits_2_and_says_so(
    daemon: type[Daemon], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENTD_API_TOKEN", "wrong")

    assert main(["report", "agents"]) == 2

    assert "refused the API token (HTTP 401)" in capsys.readouterr().err


def test_report_agents_passes_the_window_and_prints_a_row_per_agent(
    daemon: type[Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "agents", "--from", "2025-11-28", "--to", "1764374400"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == "agents, calls started from 2026-11-28T00:00:00+00:00 to 2026-11-29T00:00:00+00:00"
    )
    assert out[3].split() == ["agent1", "4", "1", "2", "90", "30", "3", "1", "0", "0", "1"]
    [(path, query, _)] = daemon.asked
    assert (path, query) == ("/api/reports/agents", {"from": "1764288000", "to": "1764374400"})


def test_report_agents_as_json(daemon: type[Daemon], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "agents", "--json"]) == 0

    assert json.loads(capsys.readouterr().out)["agents"][0]["agent"] == "agent1"

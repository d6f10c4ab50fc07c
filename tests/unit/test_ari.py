"""The ARI client against a fake Asterisk that speaks REST over the events websocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from consentd.ari import CONNECTED, AriClient, AriNotFound, AriUnavailable


class FakeAsterisk:
    """Answers RESTRequest frames on /ari/events; counts plain HTTP requests too."""

    def __init__(self) -> None:
        self.ws_requests: list[dict[str, Any]] = []
        self.http_requests: list[str] = []
        self.silent = False  # stop answering requests (a stalled Asterisk)
        self.sockets: list[web.WebSocketResponse] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ari/events", self.events)
        app.router.add_route("*", "/ari/{tail:.*}", self.http)
        return app

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.send_str("this is not JSON")  # must not end the stream
        await ws.send_str(json.dumps({"type": "StasisStart", "channel": {"id": "c1"}}))
        async for msg in ws:
            frame = json.loads(msg.data)
            self.ws_requests.append(frame)
            if self.silent:
                continue
            status, body = (404, '{"message": "Channel not found"}')
            if frame["uri"] == "channels":
                status, body = 200, '[{"id": "c1"}]'
            elif frame["uri"].startswith("channels/c1/"):
                status, body = 204, ""
            await ws.send_str(
                json.dumps(
                    {
                        "type": "RESTResponse",
                        "request_id": frame["request_id"],
                        "status_code": status,
                        "message_body": body,
                    }
                )
            )
        return ws

    async def http(self, request: web.Request) -> web.Response:
        self.http_requests.append(f"{request.method} {request.path}")
        return web.json_response({})


@pytest.fixture
async def asterisk() -> AsyncIterator[tuple[FakeAsterisk, AriClient, list[dict[str, Any]]]]:
    fake = FakeAsterisk()
    async with TestServer(fake.app()) as server, aiohttp.ClientSession() as session:
        ari = AriClient(session, str(server.make_url("/ari")), "consentd", request_timeout=0.5)
        events: list[dict[str, Any]] = []
        connected = asyncio.Event()

        async def consume() -> None:
            async for event in ari.events(min_backoff=0.01, max_backoff=0.02):
                events.append(event)
                if event["type"] == CONNECTED:
                    connected.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(connected.wait(), 2)
        yield fake, ari, events
        task.cancel()


async def test_requests_travel_on_the_events_websocket_and_events_still_arrive(
    asterisk: tuple[FakeAsterisk, AriClient, list[dict[str, Any]]],
) -> None:
    fake, ari, events = asterisk

    channels = await ari.channels()
    await ari.play("c1", "c1-greeting", "sound:consentd/opt_in", "de")

    assert channels == [{"id": "c1"}]
    assert [(r["method"], r["uri"]) for r in fake.ws_requests] == [
        ("GET", "channels"),
        ("POST", "channels/c1/play/c1-greeting?media=sound%3Aconsentd%2Fopt_in&lang=de"),
    ]
    assert fake.http_requests == []  # no HTTP session used for either
    assert [e["type"] for e in events] == [CONNECTED, "StasisStart"]  # the bad frame skipped


async def test_a_404_over_the_websocket_is_not_found(
    asterisk: tuple[FakeAsterisk, AriClient, list[dict[str, Any]]],
) -> None:
    _, ari, _ = asterisk

    with pytest.raises(AriNotFound, match="Channel not found"):
        await ari.answer("gone")


async def test_a_request_with_a_body_goes_over_http(
    asterisk: tuple[FakeAsterisk, AriClient, list[dict[str, Any]]],
) -> None:
    fake, ari, _ = asterisk

    await ari.filter_events(("StasisStart",))

    assert fake.http_requests == ["PUT /ari/applications/consentd/eventFilter"]
    assert fake.ws_requests == []


async def test_an_unanswered_request_fails_as_unavailable_within_the_timeout(
    asterisk: tuple[FakeAsterisk, AriClient, list[dict[str, Any]]],
) -> None:
    fake, ari, _ = asterisk
    fake.silent = True

    with pytest.raises(AriUnavailable, match="GET /channels"):
        await ari.channels()


async def test_requests_waiting_when_the_socket_drops_fail_at_once(
    asterisk: tuple[FakeAsterisk, AriClient, list[dict[str, Any]]],
) -> None:
    fake, ari, _ = asterisk
    fake.silent = True
    pending = asyncio.create_task(ari.channels())
    await asyncio.sleep(0.05)

    await fake.sockets[0].close()

    with pytest.raises(AriUnavailable, match="websocket lost"):
        await asyncio.wait_for(pending, 0.4)

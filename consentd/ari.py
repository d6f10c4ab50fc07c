"""A thin ARI client: REST calls plus the events websocket, on aiohttp.

The Python ARI libraries are unmaintained or broken (credentials in URLs, no
reconnect), so consentd owns this small client. It is the only module that
knows about HTTP statuses and sockets: everything above it sees ``AriError``
subclasses, and the events stream survives Asterisk restarts by reconnecting
with backoff and announcing each new connection so the caller can resync.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import structlog

#: Synthetic event yielded after every (re)connection of the events websocket.
CONNECTED = "consentd.Connected"
#: Synthetic event yielded when the websocket is lost.
DISCONNECTED = "consentd.Disconnected"


class AriError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AriNotFound(AriError):
    """The channel, playback or bridge no longer exists (usually: the caller hung up)."""


class AriUnavailable(AriError):
    """Asterisk did not answer: not running, restarting, or too slow. It may have acted."""


class AriNotSent(AriUnavailable):
    """The request never reached Asterisk (no connection): it surely did not act."""


#: The Stasis argument of consentd's own whisper (snoop) channels: never a call.
WHISPER_ARGS = "whisper"


class AriClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        app: str,
        *,
        request_timeout: float = 5.0,
        rest_over_websocket: bool = True,
    ) -> None:
        """``session`` must carry the credentials as its Authorization header.

        With ``rest_over_websocket`` (Asterisk 22.4 and later), requests travel on
        the events websocket while it is up: no HTTP session per request on
        Asterisk's side, and none of its HTTP sessions held. Plain HTTP is the
        fallback while the websocket is down or when Asterisk refuses the form.
        """
        self._session = session
        self._base = base_url.rstrip("/")
        self.app = app
        self._request_timeout = request_timeout
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._log = structlog.get_logger("consentd.ari")
        self.connected = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ws_requests = rest_over_websocket
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    # ------------------------------------------------------------ REST

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        json_body: Any = None,
    ) -> Any:
        ws = self._ws
        # A RESTRequest with a message_body went unanswered on Asterisk 22.10 and
        # stalled every request after it on that socket: bodies go over HTTP.
        if ws is not None and self._ws_requests and not ws.closed and json_body is None:
            return await self._ws_request(ws, method, path, params)
        url = f"{self._base}{path}"
        try:
            async with self._session.request(
                method, url, params=params, json=json_body, timeout=self._timeout
            ) as resp:
                body = await resp.text()
                if resp.status == 404:
                    raise AriNotFound(f"{method} {path}: not found ({body.strip()})", 404)
                if resp.status >= 400:
                    raise AriError(
                        f"{method} {path}: HTTP {resp.status} {body.strip()}", resp.status
                    )
                if not body or resp.content_type != "application/json":
                    return None
                return await resp.json()
        except aiohttp.ClientConnectorError as exc:
            raise AriNotSent(f"{method} {path}: {type(exc).__name__} {exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AriUnavailable(f"{method} {path}: {type(exc).__name__} {exc}") from exc

    async def _ws_request(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        method: str,
        path: str,
        params: dict[str, str] | None,
    ) -> Any:
        request_id = f"c{next(self._ids)}"
        uri = path.lstrip("/") + (f"?{urlencode(params)}" if params else "")
        message: dict[str, Any] = {
            "type": "RESTRequest",
            "request_id": request_id,
            "method": method,
            "uri": uri,
        }
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            await ws.send_str(orjson.dumps(message).decode())
            async with asyncio.timeout(self._request_timeout):
                reply = await future
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            raise AriUnavailable(f"{method} {path}: {type(exc).__name__} {exc}") from exc
        finally:
            self._waiting.pop(request_id, None)
        status = int(reply.get("status_code", 0))
        body = reply.get("message_body")
        if isinstance(body, str):
            body = orjson.loads(body) if body.strip() else None
        if status == 404:
            raise AriNotFound(f"{method} {path}: not found ({body})", 404)
        if status >= 400 or status == 0:
            raise AriError(f"{method} {path}: status {status} {body}", status)
        return body

    def _fail_waiting(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(AriUnavailable("ARI websocket lost"))
        self._waiting.clear()

    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/answer")

    async def play(self, channel_id: str, playback_id: str, media: str, lang: str) -> None:
        await self.request(
            "POST",
            f"/channels/{channel_id}/play/{playback_id}",
            {"media": media, "lang": lang},
        )

    async def whisper(self, channel_id: str, snoop_id: str) -> None:
        """A snoop channel that speaks into ``channel_id`` (its party hears it).

        Works on any channel, in Stasis or not (a queue or Dial() bridge): the
        snoop channel itself enters this app, with the argument "whisper".
        """
        await self.request(
            "POST",
            f"/channels/{channel_id}/snoop/{snoop_id}",
            {"whisper": "out", "app": self.app, "appArgs": WHISPER_ARGS},
        )

    async def stop_playback(self, playback_id: str) -> None:
        try:
            await self.request("DELETE", f"/playbacks/{playback_id}")
        except AriNotFound:
            pass  # it finished on its own meanwhile

    async def playback_exists(self, playback_id: str) -> bool:
        try:
            await self.request("GET", f"/playbacks/{playback_id}")
        except AriNotFound:
            return False
        return True

    async def hangup(self, channel_id: str, reason: str | None = None) -> None:
        """``reason`` is ARI's (e.g. "rejected": SIP 403); none is a normal clearing."""
        try:
            await self.request(
                "DELETE", f"/channels/{channel_id}", {"reason": reason} if reason else None
            )
        except AriNotFound:
            pass

    async def subscribe(self, channel_id: str) -> None:
        """Keep receiving this channel's events after it leaves Stasis (the queue)."""
        await self.request(
            "POST",
            f"/applications/{self.app}/subscription",
            {"eventSource": f"channel:{channel_id}"},
        )

    async def variable(self, channel_id: str, name: str) -> str | None:
        """A channel variable's value, or None when it is not set."""
        try:
            result = await self.request(
                "GET", f"/channels/{channel_id}/variable", {"variable": name}
            )
        except AriNotFound:
            return None
        value = (result or {}).get("value")
        return str(value) if value else None

    async def continue_to_queue(self, channel_id: str, did: str, queue: str, timeout: int) -> None:
        """Hand the caller to app_queue, staying subscribed so key 3 is still seen."""
        await self.subscribe(channel_id)
        for name, value in (("QUEUE_NAME", queue), ("QUEUE_TIMEOUT", str(timeout))):
            await self.request(
                "POST", f"/channels/{channel_id}/variable", {"variable": name, "value": value}
            )
        await self.request(
            "POST",
            f"/channels/{channel_id}/continue",
            {"context": "consentd-queue", "extension": did, "priority": "1"},
        )

    async def set_variables(self, channel_id: str, variables: tuple[tuple[str, str], ...]) -> None:
        for name, value in variables:
            await self.request(
                "POST", f"/channels/{channel_id}/variable", {"variable": name, "value": value}
            )

    async def continue_in_dialplan(
        self,
        channel_id: str,
        place: tuple[str, str, int],
        variables: tuple[tuple[str, str], ...],
    ) -> None:
        """Hand the call to the PBX's own dialplan, staying subscribed so key 3 is still seen."""
        context, extension, priority = place
        await self.subscribe(channel_id)
        await self.set_variables(channel_id, variables)
        await self.request(
            "POST",
            f"/channels/{channel_id}/continue",
            {"context": context, "extension": extension, "priority": str(priority)},
        )

    async def continue_unrecorded(self, channel_id: str, did: str) -> None:
        """Leave Stasis into the dialplan's unrecorded path (consentd-unrecorded)."""
        await self.request(
            "POST",
            f"/channels/{channel_id}/continue",
            {"context": "consentd-unrecorded", "extension": did, "priority": "1"},
        )

    async def record(
        self, channel_id: str, name: str, max_seconds: int, *, beep: bool = True
    ) -> None:
        """Record what the caller says (voicemail) into Asterisk's recording dir; with
        ``beep``, Asterisk beeps first (after sending RecordingStarted)."""
        await self.request(
            "POST",
            f"/channels/{channel_id}/record",
            {
                "name": name,
                "format": "wav",
                "maxDurationSeconds": str(max_seconds),
                "beep": "true" if beep else "false",
                "ifExists": "overwrite",
                "terminateOn": "none",
            },
        )

    # ------------------------------------------------------------ stored recordings
    # Names are relative to Asterisk's recording directory, without the extension
    # (res/stasis_recording/stored.c), and already URL-escaped by the caller.

    async def delete_stored_recording(self, name: str) -> bool:
        """Asterisk deletes the file; False when there was none (404)."""
        try:
            await self.request("DELETE", f"/recordings/stored/{name}")
        except AriNotFound:
            return False
        return True

    async def stored_recording_size(self, name: str, limit: int) -> int | None:
        """The stored file's size, capped at ``limit``; None when there is no such file.

        Plain HTTP, never the websocket (whose reply would carry the whole file):
        the Content-Length when Asterisk sends one, else at most ``limit`` bytes
        are read, and the connection is closed rather than drained.
        """
        path = f"/recordings/stored/{name}/file"
        try:
            async with self._session.get(f"{self._base}{path}", timeout=self._timeout) as resp:
                try:
                    if resp.status == 404:
                        return None
                    if resp.status >= 400:
                        body = (await resp.content.read(500)).decode("utf-8", "replace")
                        raise AriError(
                            f"GET {path}: HTTP {resp.status} {body.strip()}", resp.status
                        )
                    if resp.content_length is not None:
                        return min(resp.content_length, limit)
                    read = 0
                    while read < limit:
                        chunk = await resp.content.read(limit - read)
                        if not chunk:
                            break
                        read += len(chunk)
                    return read
                finally:
                    resp.close()
        except aiohttp.ClientConnectorError as exc:
            raise AriNotSent(f"GET {path}: {type(exc).__name__} {exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AriUnavailable(f"GET {path}: {type(exc).__name__} {exc}") from exc

    async def filter_events(self, types: tuple[str, ...]) -> None:
        """Ask Asterisk to send this app only these event types.

        A subscribed channel otherwise raises a dozen events per call that
        consentd ignores (ChannelVarset, ChannelStateChange, ...): serialised
        by Asterisk and parsed here for nothing.
        """
        # The filter applies to every message on the socket: replies to requests
        # sent over it must stay allowed.
        allowed = (*types, "RESTResponse")
        await self.request(
            "PUT",
            f"/applications/{self.app}/eventFilter",
            json_body={"allowed": [{"type": t} for t in allowed]},
        )

    async def channels(self) -> list[dict[str, Any]]:
        result = await self.request("GET", "/channels")
        return list(result or [])

    async def channel(self, channel_id: str) -> dict[str, Any] | None:
        """One channel's snapshot, or None once it is gone."""
        try:
            result = await self.request("GET", f"/channels/{channel_id}")
        except AriNotFound:
            return None
        return dict(result or {})

    async def bridges(self) -> list[dict[str, Any]]:
        """Every bridge in Asterisk, app_queue's caller-agent bridges included."""
        result = await self.request("GET", "/bridges")
        return list(result or [])

    # ------------------------------------------------------------ events

    async def _read(
        self, ws: aiohttp.ClientWebSocketResponse, events: asyncio.Queue[dict[str, Any] | None]
    ) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    if msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                        break
                    continue
                try:
                    message = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    self._log.warning("ari_event_not_json", frame=str(msg.data)[:200])
                    continue
                if message.get("type") == "RESTResponse":
                    future = self._waiting.get(str(message.get("request_id")))
                    if future is not None and not future.done():
                        future.set_result(message)
                else:
                    events.put_nowait(message)
        finally:
            events.put_nowait(None)

    async def events(
        self, *, min_backoff: float = 0.2, max_backoff: float = 5.0
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield ARI events forever, reconnecting with jittered exponential backoff.

        Each successful connection first yields ``{"type": CONNECTED}``: events
        sent while disconnected are lost, so the consumer must resync then.
        """
        backoff = min_backoff
        params = {"app": self.app, "subscribeAll": "false"}
        while True:
            try:
                async with self._session.ws_connect(
                    f"{self._base}/events", params=params, heartbeat=15.0
                ) as ws:
                    self.connected = True
                    self._ws = ws
                    backoff = min_backoff
                    self._log.info("ari_connected", app=self.app)
                    # A reader of its own: the consumer of these events may itself
                    # await a request whose answer arrives on this same socket.
                    events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
                    reader = asyncio.create_task(self._read(ws, events))
                    try:
                        yield {"type": CONNECTED}
                        while (event := await events.get()) is not None:
                            yield event
                    finally:
                        reader.cancel()
                        self._ws = None
                        self._fail_waiting()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._log.warning("ari_connect_failed", error=str(exc) or type(exc).__name__)
            if self.connected:
                self.connected = False
                self._log.warning("ari_disconnected")
                yield {"type": DISCONNECTED}
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(max_backoff, backoff * 2)

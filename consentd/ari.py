"""A thin ARI client: REST calls plus the events websocket, on aiohttp.

The Python ARI libraries are unmaintained or broken (credentials in URLs, no
reconnect), so consentd owns this small client. It is the only module that
knows about HTTP statuses and sockets: everything above it sees ``AriError``
subclasses, and the events stream survives Asterisk restarts by reconnecting
with backoff and announcing each new connection so the caller can resync.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

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
    """Asterisk did not answer: not running, restarting, or too slow."""


class AriClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        app: str,
        *,
        request_timeout: float = 5.0,
    ) -> None:
        """``session`` must carry the credentials as its Authorization header."""
        self._session = session
        self._base = base_url.rstrip("/")
        self.app = app
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._log = structlog.get_logger("consentd.ari")
        self.connected = False

    # ------------------------------------------------------------ REST

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        json_body: Any = None,
    ) -> Any:
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
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AriUnavailable(f"{method} {path}: {type(exc).__name__} {exc}") from exc

    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/answer")

    async def play(self, channel_id: str, playback_id: str, media: str, lang: str) -> None:
        await self.request(
            "POST",
            f"/channels/{channel_id}/play/{playback_id}",
            {"media": media, "lang": lang},
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

    async def hangup(self, channel_id: str) -> None:
        try:
            await self.request("DELETE", f"/channels/{channel_id}")
        except AriNotFound:
            pass

    async def continue_to_queue(self, channel_id: str, did: str, queue: str, timeout: int) -> None:
        """Hand the caller to app_queue, staying subscribed so key 3 is still seen."""
        await self.request(
            "POST",
            f"/applications/{self.app}/subscription",
            {"eventSource": f"channel:{channel_id}"},
        )
        for name, value in (("QUEUE_NAME", queue), ("QUEUE_TIMEOUT", str(timeout))):
            await self.request(
                "POST", f"/channels/{channel_id}/variable", {"variable": name, "value": value}
            )
        await self.request(
            "POST",
            f"/channels/{channel_id}/continue",
            {"context": "consentd-queue", "extension": did, "priority": "1"},
        )

    async def continue_unrecorded(self, channel_id: str, did: str) -> None:
        """Leave Stasis into the dialplan's unrecorded path (consentd-unrecorded)."""
        await self.request(
            "POST",
            f"/channels/{channel_id}/continue",
            {"context": "consentd-unrecorded", "extension": did, "priority": "1"},
        )

    async def record(self, channel_id: str, name: str, max_seconds: int) -> None:
        """Record what the caller says (voicemail), after a beep, into Asterisk's recording dir."""
        await self.request(
            "POST",
            f"/channels/{channel_id}/record",
            {
                "name": name,
                "format": "wav",
                "maxDurationSeconds": str(max_seconds),
                "beep": "true",
                "ifExists": "overwrite",
                "terminateOn": "none",
            },
        )

    async def filter_events(self, types: tuple[str, ...]) -> None:
        """Ask Asterisk to send this app only these event types.

        A subscribed channel otherwise raises a dozen events per call that
        consentd ignores (ChannelVarset, ChannelStateChange, ...): serialised
        by Asterisk and parsed here for nothing.
        """
        await self.request(
            "PUT",
            f"/applications/{self.app}/eventFilter",
            json_body={"allowed": [{"type": t} for t in types]},
        )

    async def channels(self) -> list[dict[str, Any]]:
        result = await self.request("GET", "/channels")
        return list(result or [])

    # ------------------------------------------------------------ events

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
                    backoff = min_backoff
                    self._log.info("ari_connected", app=self.app)
                    yield {"type": CONNECTED}
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            try:
                                yield orjson.loads(msg.data)
                            except orjson.JSONDecodeError:
                                self._log.warning("ari_event_not_json", frame=msg.data[:200])
                        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                            break
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._log.warning("ari_connect_failed", error=str(exc) or type(exc).__name__)
            if self.connected:
                self.connected = False
                self._log.warning("ari_disconnected")
                yield {"type": DISCONNECTED}
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(max_backoff, backoff * 2)

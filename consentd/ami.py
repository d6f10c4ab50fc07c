"""A small AMI client, and the recording actions consentd needs from it.

panoramisk re-sends unanswered actions after a reconnect (a second MixMonitor
on the same call) and leaves actions sent while disconnected pending forever.
This client does the opposite on purpose: an action is written once, waits
with a timeout, and fails at once with ``AmiUnavailable`` when the connection
is down or drops, so the call flow can record the failure in the ledger.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import zlib
from collections.abc import Callable, Sequence

import structlog

Message = dict[str, str]
EventHandler = Callable[[Message], None]


class AmiError(Exception):
    """An AMI action was refused (``Response: Error``)."""


class AmiUnavailable(AmiError):
    """No AMI connection, or no answer within the timeout: the action may have run."""


class AmiNotSent(AmiUnavailable):
    """No AMI connection: the action was never sent, so it surely did not run."""


def encode(fields: dict[str, str]) -> bytes:
    lines = [f"{key}: {value}" for key, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def decode(block: bytes) -> Message:
    message: Message = {}
    for line in block.decode(errors="replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if sep:
            message.setdefault(key.strip(), value.strip())
    return message


class AmiClient:
    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        events: str = "off",
        action_timeout: float = 5.0,
        ping_interval: float = 10.0,
        session: str = "events",
    ) -> None:
        """``events`` is the AMI event mask to log in with ("off", or e.g. "call,agent");
        ``session`` names this connection in log lines (consentd opens several)."""
        self._addr = (host, port)
        self._login = {"Username": username, "Secret": secret, "Events": events}
        self._timeout = action_timeout
        self._ping_interval = ping_interval
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._lists: dict[str, asyncio.Queue[Message]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._handlers: list[EventHandler] = []
        self._on_connect: list[Callable[[], None]] = []
        self._log = structlog.get_logger("consentd.ami").bind(session=session)
        self.connected = asyncio.Event()
        #: Loop time of the last message read: a busy session still talks.
        self._last_read = 0.0

    def on_event(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def on_connect(self, callback: Callable[[], None]) -> None:
        """Called after each login: events sent while disconnected are lost for good."""
        self._on_connect.append(callback)

    async def send(self, action: str, **fields: str) -> Message:
        """Send one action once; raise AmiError on refusal, AmiUnavailable on no answer."""
        writer = self._writer
        if writer is None or not self.connected.is_set():
            raise AmiNotSent(f"{action}: not connected to AMI")
        return await self._exchange(writer, action, fields)

    async def send_list(self, action: str, complete: str, **fields: str) -> list[Message]:
        """An action answered by a list of events ending in ``complete`` (e.g. QueueSummary)."""
        writer = self._writer
        if writer is None or not self.connected.is_set():
            raise AmiNotSent(f"{action}: not connected to AMI")
        action_id = f"consentd-{next(self._ids)}"
        items: asyncio.Queue[Message] = asyncio.Queue()
        self._lists[action_id] = items
        try:
            await self._exchange(writer, action, fields, action_id)
            found: list[Message] = []
            async with asyncio.timeout(self._timeout):
                while (item := await items.get()).get("Event") != complete:
                    found.append(item)
            return found
        except TimeoutError:
            raise AmiUnavailable(f"{action}: list not complete within {self._timeout:g}s") from None
        finally:
            self._lists.pop(action_id, None)

    async def _exchange(
        self,
        writer: asyncio.StreamWriter,
        action: str,
        fields: dict[str, str],
        action_id: str | None = None,
    ) -> Message:
        action_id = action_id or f"consentd-{next(self._ids)}"
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[action_id] = future
        try:
            writer.write(encode({"Action": action, "ActionID": action_id, **fields}))
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the awaited result does.
            async with asyncio.timeout(self._timeout):
                response = await future
        except TimeoutError:
            raise AmiUnavailable(f"{action}: no answer within {self._timeout:g}s") from None
        finally:
            self._pending.pop(action_id, None)
        if response.get("Response", "").lower() == "error":
            raise AmiError(f"{action}: {response.get('Message', 'refused')}")
        return response

    async def run(self, *, min_backoff: float = 0.2, max_backoff: float = 5.0) -> None:
        """Stay connected forever, reconnecting with backoff."""
        backoff = min_backoff
        while True:
            try:
                await self._session()
                backoff = min_backoff
            except (
                OSError,
                AmiError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ) as exc:
                self._log.warning("ami_connection_failed", error=str(exc) or type(exc).__name__)
            finally:
                self._disconnected()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(max_backoff, backoff * 2)

    async def _session(self) -> None:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(*self._addr, limit=1 << 20)
        self._writer = writer
        try:
            async with asyncio.timeout(5):
                banner = await reader.readline()
            if not banner.startswith(b"Asterisk Call Manager"):
                raise AmiError(f"unexpected AMI banner {banner[:60]!r}")
            reading = asyncio.create_task(self._read(reader))
            try:
                try:
                    # Not via send(): nothing else may use the connection before login.
                    await self._exchange(writer, "Login", self._login)
                except AmiError as exc:
                    raise AmiError(
                        f"AMI login as {self._login['Username']!r} failed: {exc}"
                    ) from None
                self.connected.set()
                self._log.info("ami_connected", host=self._addr[0], port=self._addr[1])
                for callback in self._on_connect:
                    callback()
                await self._keepalive(reading)
            finally:
                reading.cancel()
        finally:
            writer.close()

    async def _keepalive(self, reading: asyncio.Task[None]) -> None:
        """Ping and check the reply: a silent half-open socket must count as lost.

        Asterisk works one session's actions in order, so under load a Ping
        waits behind hundreds of MixMonitors. A Ping unanswered while other
        answers keep arriving is a busy session, not a lost one: dropping it
        would fail every action in flight (the MixMonitors of every caller who
        just pressed 3) although Asterisk was about to answer them.
        """
        loop = asyncio.get_running_loop()
        while not reading.done():
            done, _ = await asyncio.wait({reading}, timeout=self._ping_interval)
            if done:
                break
            try:
                await self.send("Ping")
            except AmiUnavailable:
                if reading.done():
                    break
                quiet = loop.time() - self._last_read
                if quiet >= self._timeout:
                    raise
                self._log.info("ami_busy", ping_unanswered_s=self._timeout, last_read_s=quiet)
        reading.result()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            await self._read_messages(reader)
        finally:
            # Fail waiting actions now, even while the session itself awaits one (Login, Ping).
            self._fail_pending()

    async def _read_messages(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        while True:
            block = await reader.readuntil(b"\r\n\r\n")
            self._last_read = loop.time()
            message = decode(block)
            action_id = message.get("ActionID", "")
            if "Response" in message:
                future = self._pending.get(action_id)
                if future is not None and not future.done():
                    future.set_result(message)
            elif action_id in self._lists:
                self._lists[action_id].put_nowait(message)
            elif "Event" in message:
                for handler in self._handlers:
                    try:
                        handler(message)
                    except Exception:
                        # A bad handler must not cost every call its AMI connection.
                        self._log.exception("ami_event_handler_failed", ami_event=message["Event"])

    def _disconnected(self) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._writer = None
        self._fail_pending()
        if was_connected:
            self._log.warning("ami_disconnected")

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(AmiUnavailable("AMI connection lost"))
        self._pending.clear()


class Recorder:
    """MixMonitor control for one PBX: the only place that speaks these AMI actions.

    Asterisk works each AMI session's actions one after another in one thread,
    so one session queues them under load: in the bench at 300 calls/s, a 3
    waited a median 1 s for its recording with one session, 0.1 s with four.
    With ``more`` sessions the actions spread over several threads. Each
    channel keeps to one session, chosen by its name, so a channel's start,
    mute and stop reach Asterisk in the order sent, even when an earlier one
    is still waiting for its answer; a channel whose session is down fails at
    once (``AmiNotSent``) rather than overtaking its own earlier action on
    another session.
    """

    def __init__(self, ami: AmiClient, more: Sequence[AmiClient] = ()) -> None:
        self._ami = ami
        self._sessions = (ami, *more)

    def _session(self, channel: str) -> AmiClient:
        return self._sessions[zlib.crc32(channel.encode()) % len(self._sessions)]

    async def start(
        self, channel: str, file: str, options: str = "", *, id_variable: str | None = None
    ) -> str | None:
        """Start MixMonitor; returns its MixMonitorID when ``id_variable`` names one.

        Option ``i(VAR)`` makes Asterisk answer with the id and also keep it in
        the channel variable VAR, where it can be read back after a restart.
        """
        if id_variable:
            options += f"i({id_variable})"
        fields = {"Channel": channel, "File": file}
        if options:
            fields["Options"] = options
        response = await self._session(channel).send("MixMonitor", **fields)
        return response.get("MixMonitorID") or None

    async def stop(self, channel: str, mixmonitor_id: str | None = None) -> None:
        """Stop one recording: with its id, never another one on the same channel."""
        fields = {"Channel": channel}
        if mixmonitor_id:
            fields["MixMonitorID"] = mixmonitor_id
        await self._session(channel).send("StopMixMonitor", **fields)

    async def mute(
        self,
        channel: str,
        muted: bool,
        direction: str = "both",
        mixmonitor_id: str | None = None,
    ) -> None:
        """Silence a running MixMonitor (its file keeps the timeline); the id names which."""
        ids = {"MixMonitorID": mixmonitor_id} if mixmonitor_id else {}
        await self._session(channel).send(
            "MixMonitorMute",
            Channel=channel,
            Direction=direction,
            State="1" if muted else "0",
            **ids,
        )

    def on_event(self, handler: EventHandler) -> None:
        self._ami.on_event(handler)

    @property
    def connected(self) -> bool:
        return self._ami.connected.is_set()

"""The dashboard: a page and its two static files (``consentd/dashboard/``), and the live
feed that tells open pages when the ledger stored new rows (``GET /api/events``).

The page and its files hold no data, so they are served without the token
(``http_api.OPEN_PATHS``); the page asks for the token once, keeps it in the
tab's ``sessionStorage`` and sends it as ``Authorization: Bearer`` with every API
call, the event stream included (read with ``fetch``, since ``EventSource`` cannot
send headers).

**The feed.** One poller for all open streams asks PostgreSQL once a second for the
latest ``stored_at`` and for how many rows were stored after a bound some seconds
behind it (both read the ``stored_at`` index). A ledger row's ``stored_at`` is its
transaction's start, so a transaction that commits late can add a row behind the
latest one: the count still sees it. The poller runs only while a stream is open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from importlib import resources

import orjson
import structlog
from aiohttp import web

from consentd.ledger import LedgerUnavailable

#: Path -> (file in consentd/dashboard, content type).
_FILES = {
    "/": ("index.html", "text/html"),
    "/dashboard/app.js": ("app.js", "text/javascript"),
    "/dashboard/app.css": ("app.css", "text/css"),
}
#: Served without the token: they hold no data.
DASHBOARD_PATHS = frozenset(_FILES)

#: The page runs only its own script and talks only to this daemon.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

#: (latest stored_at, rows stored after the bound given) -- ``LedgerReports.changes``.
Poll = Callable[[datetime | None], Awaitable[tuple[datetime | None, int]]]


def add_static_routes(app: web.Application) -> None:
    for path in _FILES:
        app.router.add_get(path, _static)


async def _static(request: web.Request) -> web.Response:
    name, content_type = _FILES[request.path]
    body = (resources.files("consentd") / "dashboard" / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)


class _Subscription:
    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.closed = False

    async def wait(self, timeout: float) -> bool:
        """True when the ledger changed (or the feed closed) within ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.changed.wait()
        changed = self.changed.is_set()
        self.changed.clear()
        return changed


class ChangeFeed:
    """Wakes every subscriber when the ledger stored rows; one poller for all of them."""

    def __init__(
        self,
        poll: Poll,
        *,
        interval: float = 1.0,
        slack: timedelta = timedelta(seconds=10),
        max_subscribers: int = 64,
    ) -> None:
        self._poll = poll
        self._interval = interval
        self._slack = slack
        self.max_subscribers = max_subscribers
        self._subscribers: set[_Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.polls = 0

    @property
    def full(self) -> bool:
        return self._closed or len(self._subscribers) >= self.max_subscribers

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[_Subscription]:
        subscription = _Subscription()
        subscription.closed = self._closed
        self._subscribers.add(subscription)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="dashboard-change-feed"
            )
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    async def close(self) -> None:
        """Ends every stream (on shutdown) and the poller."""
        self._closed = True
        for subscription in self._subscribers:
            subscription.closed = True
            subscription.changed.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        log = structlog.get_logger("consentd.dashboard")
        latest: datetime | None = None
        bound: datetime | None = None
        count = 0
        known = False
        while self._subscribers:
            try:
                newest, stored = await self._poll(bound)
                self.polls += 1
                if known and (newest != latest or stored != count):
                    for subscription in self._subscribers:
                        subscription.changed.set()
                if newest != latest or not known:
                    # Count from a new bound, some seconds behind the newest row.
                    latest, bound = newest, newest - self._slack if newest else None
                    _, stored = await self._poll(bound)
                count, known = stored, True
            except LedgerUnavailable as exc:
                log.debug("change_feed_poll_failed", error=str(exc))
            except Exception as exc:
                # Anything else must not end the one poller every open page relies on:
                # its pages would stay "live" and never hear of a call again.
                log.warning("change_feed_poll_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self._interval)


FEED: web.AppKey[ChangeFeed] = web.AppKey("change_feed", ChangeFeed)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``ready`` when subscribed (load everything now), ``calls`` when
    the ledger stored rows (load again), a comment every 15 s to keep the line open."""
    feed = request.app[FEED]
    if feed.full:
        return web.json_response(
            {"error": {"id": "too-many-streams", "message": "too many open event streams"}},
            status=503,
        )
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    with feed.subscribe() as subscription:
        await response.prepare(request)
        try:
            await response.write(b"retry: 2000\nevent: ready\ndata: {}\n\n")
            while not subscription.closed:
                changed = await subscription.wait(15.0)
                if subscription.closed:
                    break
                if changed:
                    data = orjson.dumps({"polls": feed.polls})
                    await response.write(b"event: calls\ndata: " + data + b"\n\n")
                else:
                    await response.write(b": keep-alive\n\n")
        except ConnectionError:
            pass  # the page went away (aiohttp's ClientConnectionResetError is one)
    return response

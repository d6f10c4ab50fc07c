"""The daemon's small HTTP surface: health for orchestration, metrics, recent calls, the
policy reload behind ``consentd reload``, agents' recording controls, the dashboard's
page (``consentd/http_dashboard.py``), and (added by ``consentd/http_reports.py``) the
reports.

Every route but ``/healthz`` and the dashboard's page and static files needs
``Authorization: Bearer <api_token>``, compared in constant time; errors are JSON
``{"error": {"id", "message"}}``."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from consentd.http_dashboard import DASHBOARD_PATHS, add_static_routes
from consentd.openapi import document
from consentd.reload import ReloadOutcome


@dataclass(frozen=True)
class Health:
    ari: bool
    ami: bool
    database: bool
    active_calls: int
    ledger_backlog: int
    calls_started: int = 0
    calls_unserved: int = 0
    #: The journal reached its bound (database away too long): no new calls are taken.
    ledger_full: bool = False

    @property
    def ready(self) -> bool:
        """Calls are handled as long as ARI is up and the ledger can take their rows;
        AMI or database trouble alone degrades, not stops."""
        return self.ari and not self.ledger_full


HEALTH: web.AppKey[Callable[[], Health]] = web.AppKey("health", Callable)  # type: ignore[arg-type]
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
RECENT_CALLS: web.AppKey[Callable[[int], Awaitable[list[dict[str, Any]]]]] = web.AppKey(
    "recent_calls",
    Callable,  # type: ignore[arg-type]
)
RELOAD: web.AppKey[Callable[[], Awaitable[ReloadOutcome]]] = web.AppKey(
    "reload",
    Callable,  # type: ignore[arg-type]
)


#: (call id, "pause"|"resume", who) -> (HTTP status, JSON body)
RecordingControl = Callable[[str, str, str], tuple[int, dict[str, Any]]]
CONTROL: web.AppKey[RecordingControl] = web.AppKey("control", Callable)  # type: ignore[arg-type]
API_TOKEN: web.AppKey[str] = web.AppKey("api_token", str)


def api_error(
    status: int, error_id: str, message: str, *, parameter: str | None = None
) -> web.Response:
    """A JSON error; ``parameter`` names the request parameter at fault, if one is."""
    error = {"id": error_id, "message": message}
    if parameter is not None:
        error["parameter"] = parameter
    return web.json_response({"error": error}, status=status)


#: Open without the token: /healthz (orchestration probes it), and the dashboard's page
#: and static files, exactly those paths (they hold no data; the page sends the token).
OPEN_PATHS = frozenset({"/healthz", *DASHBOARD_PATHS})


@web.middleware
async def _require_token(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path not in OPEN_PATHS and not _authorized(request):
        return api_error(401, "unauthorized", "a valid Authorization: Bearer token is required")
    return await handler(request)


def init_app(
    health: Callable[[], Health],
    registry: CollectorRegistry,
    recent_calls: Callable[[int], Awaitable[list[dict[str, Any]]]],
    reload: Callable[[], Awaitable[ReloadOutcome]] | None = None,
    *,
    control: RecordingControl | None = None,
    api_token: str,
) -> web.Application:
    if not api_token:
        raise ValueError("the HTTP API needs an API token")
    app = web.Application(middlewares=[_require_token])
    app[API_TOKEN] = api_token
    app[HEALTH] = health
    app[REGISTRY] = registry
    app[RECENT_CALLS] = recent_calls
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/calls", _calls)
    app.router.add_get("/api/openapi.json", _openapi)
    add_static_routes(app)  # the dashboard at /
    if reload is not None:
        app[RELOAD] = reload
        app.router.add_post("/reload", _reload)
    if control is not None:
        app[CONTROL] = control
        app.router.add_post(r"/api/calls/{call_id}/recording/{action:pause|resume}", _control)
    return app


def _authorized(request: web.Request) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    expected = request.app[API_TOKEN]
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected.encode()
    )


async def _control(request: web.Request) -> web.Response:
    call_id = request.match_info["call_id"]
    action = request.match_info["action"]
    status, body = request.app[CONTROL](call_id, action, "api")
    return web.json_response(body, status=status)


def register_gauges(registry: CollectorRegistry, health: Callable[[], Health]) -> None:
    Gauge("consentd_active_calls", "Calls in progress", registry=registry).set_function(
        lambda: health().active_calls
    )
    Gauge(
        "consentd_ledger_backlog", "Ledger events not yet stored in the database", registry=registry
    ).set_function(lambda: health().ledger_backlog)
    for name in ("ari", "ami", "database"):
        gauge = Gauge(f"consentd_{name}_up", f"1 while {name} is reachable", registry=registry)
        gauge.set_function(_health_flag(health, name))

    registry.register(_CallCounters(health))


class _CallCounters(Collector):
    """Totals since start, read from the dispatcher when scraped."""

    def __init__(self, health: Callable[[], Health]) -> None:
        self._health = health

    def collect(self) -> list[Metric]:
        health = self._health()
        return [
            CounterMetricFamily(
                "consentd_calls", "Calls consentd took on", value=health.calls_started
            ),
            CounterMetricFamily(
                "consentd_calls_unserved",
                "Calls handed back to the dialplan unrecorded (overload, answer failed)",
                value=health.calls_unserved,
            ),
        ]


def _health_flag(health: Callable[[], Health], name: str) -> Callable[[], float]:
    return lambda: float(getattr(health(), name))


async def _healthz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]()
    body = {
        "ready": health.ready,
        "ari": "connected" if health.ari else "disconnected",
        "ami": "connected" if health.ami else "disconnected",
        "database": (
            "journal full"
            if health.ledger_full
            else "connected"
            if health.database
            else "journalling"
        ),
        "active_calls": health.active_calls,
        "ledger_backlog": health.ledger_backlog,
        "calls_unserved": health.calls_unserved,
    }
    return web.json_response(body, status=200 if health.ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[REGISTRY])
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _calls(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "20")
    try:
        limit = int(raw)
        if not 1 <= limit <= 1000:
            raise ValueError
    except ValueError:
        return api_error(
            400,
            "invalid-limit",
            f"limit must be an integer 1..1000, got {raw!r}",
            parameter="limit",
        )
    return web.json_response(await request.app[RECENT_CALLS](limit))


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


async def _reload(request: web.Request) -> web.Response:
    """Re-read the daemon's policy file: 200 and what changed, or 422 and every error."""
    # Shielded: a client that gives up must not cut a reload in half.
    outcome = await asyncio.shield(request.app[RELOAD]())
    return web.json_response(outcome.as_dict(), status=200 if outcome.ok else 422)

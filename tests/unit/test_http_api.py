"""The daemon's HTTP surface: health for orchestration, metrics, and recent calls; every
route but /healthz behind the API token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from consentd.http_api import Health, init_app, register_gauges

TOKEN = "unit-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CALL = {"id": "pbx1:1764432000.17", "phone_number": "+4930100002", "recording_time": 26}


class Backend:
    """What the daemon would report: changeable by the test between requests."""

    def __init__(self) -> None:
        self.health = Health(ari=True, ami=True, database=True, active_calls=2, ledger_backlog=0)
        self.limits: list[int] = []

    async def recent_calls(self, limit: int) -> list[dict[str, Any]]:
        self.limits.append(limit)
        return [CALL][:limit]


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
async def client(backend: Backend) -> AsyncIterator[TestClient[Any, Any]]:
    health: Callable[[], Health] = lambda: backend.health  # noqa: E731
    registry = CollectorRegistry()
    register_gauges(registry, health)
    app = init_app(health, registry, backend.recent_calls, api_token=TOKEN)
    async with TestClient(TestServer(app), headers=AUTH) as c:
        yield c


@pytest.fixture
async def anonymous(backend: Backend) -> AsyncIterator[TestClient[Any, Any]]:
    """A client that sends no token of its own (each test sets the header it means)."""
    health: Callable[[], Health] = lambda: backend.health  # noqa: E731
    app = init_app(health, CollectorRegistry(), backend.recent_calls, api_token=TOKEN)
    async with TestClient(TestServer(app)) as c:
        yield c


BAD_HEADERS = [
    None,
    "Bearer wrong",
    f"Basic {TOKEN}",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}",
    "Bearer",
    TOKEN,
]


@pytest.mark.parametrize("header", BAD_HEADERS)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/calls"),
        ("GET", "/metrics"),
        ("GET", "/api/openapi.json"),
        ("POST", "/reload"),
        ("GET", "/api/v2/channels/voice/stats/incremental/calls.json"),
        ("GET", "/no/such/route"),
    ],
)
async def test_every_route_but_healthz_is_401_without_the_right_token(
    anonymous: TestClient[Any, Any], backend: Backend, method: str, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}

    response = await anonymous.request(method, path, headers=headers)

    assert response.status == 401
    assert await response.json() == {
        "error": {
            "id": "unauthorized",
            "message": "a valid Authorization: Bearer token is required",
        }
    }
    assert backend.limits == []


async def test_healthz_needs_no_token(anonymous: TestClient[Any, Any]) -> None:
    assert (await anonymous.get("/healthz")).status == 200


async def test_the_bearer_scheme_is_case_insensitive(anonymous: TestClient[Any, Any]) -> None:
    response = await anonymous.get("/calls", headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status == 200


def test_an_app_without_a_token_is_refused() -> None:
    with pytest.raises(ValueError, match="needs an API token"):
        init_app(
            lambda: Backend().health, CollectorRegistry(), Backend().recent_calls, api_token=""
        )


async def test_healthz_is_200_with_every_field_while_ari_is_connected(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/healthz")

    assert response.status == 200
    assert await response.json() == {
        "ready": True,
        "ari": "connected",
        "ami": "connected",
        "database": "connected",
        "active_calls": 2,
        "ledger_backlog": 0,
        "calls_unserved": 0,
    }


async def test_healthz_is_503_while_ari_is_disconnected(
    client: TestClient[Any, Any], backend: Backend
) -> None:
    backend.health = Health(ari=False, ami=True, database=True, active_calls=0, ledger_backlog=0)

    response = await client.get("/healthz")

    assert response.status == 503
    body = await response.json()
    assert body["ready"] is False
    assert body["ari"] == "disconnected"


async def test_healthz_stays_200_but_says_journalling_while_the_database_is_away(
    client: TestClient[Any, Any], backend: Backend
) -> None:
    backend.health = Health(ari=True, ami=False, database=False, active_calls=1, ledger_backlog=7)

    response = await client.get("/healthz")

    assert response.status == 200
    body = await response.json()
    assert (body["ami"], body["database"], body["ledger_backlog"]) == (
        "disconnected",
        "journalling",
        7,
    )


@pytest.mark.parametrize("limit", ["abc", "0", "1001", "-5", "2.5", ""])
async def test_calls_with_a_bad_limit_is_400_invalid_limit(
    client: TestClient[Any, Any], backend: Backend, limit: str
) -> None:
    response = await client.get("/calls", params={"limit": limit})

    assert response.status == 400
    assert await response.json() == {
        "error": {
            "id": "invalid-limit",
            "message": f"limit must be an integer 1..1000, got {limit!r}",
            "parameter": "limit",
        }
    }
    assert backend.limits == []


async def test_calls_returns_recent_calls_as_json(
    client: TestClient[Any, Any], backend: Backend
) -> None:
    response = await client.get("/calls", params={"limit": "5"})

    assert response.status == 200
    assert await response.json() == [CALL]
    assert backend.limits == [5]


async def test_calls_without_a_limit_asks_for_20(
    client: TestClient[Any, Any], backend: Backend
) -> None:
    response = await client.get("/calls")

    assert response.status == 200
    assert backend.limits == [20]


async def test_metrics_expose_active_calls_backlog_and_connection_gauges(
    client: TestClient[Any, Any], backend: Backend
) -> None:
    backend.health = Health(ari=True, ami=False, database=True, active_calls=3, ledger_backlog=9)

    response = await client.get("/metrics")

    text = await response.text()
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert "consentd_active_calls 3.0" in text
    assert "consentd_ledger_backlog 9.0" in text
    assert "consentd_ari_up 1.0" in text
    assert "consentd_ami_up 0.0" in text
    assert "consentd_database_up 1.0" in text


async def test_healthz_is_503_when_the_journal_is_full(
    client: TestClient[Any, Any], backend: Backend
) -> None:
    backend.health = Health(
        ari=True, ami=True, database=False, active_calls=0, ledger_backlog=10, ledger_full=True
    )

    response = await client.get("/healthz")

    assert response.status == 503
    assert (await response.json())["database"] == "journal full"

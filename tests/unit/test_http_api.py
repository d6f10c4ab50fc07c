"""The daemon's HTTP surface: health for orchestration, metrics, and recent calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from consentd.http_api import Health, init_app, register_gauges

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
    async with TestClient(TestServer(init_app(health, registry, backend.recent_calls))) as c:
        yield c


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
    body = await response.json()
    assert body["error"] == "invalid-limit"
    assert body["message"] == f"limit must be an integer 1..1000, got {limit!r}"
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

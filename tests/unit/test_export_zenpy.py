"""A real Zendesk client reads the export: zenpy (PyPI), pointed at consentd's HTTP
routes by its own settings only (``ZENPY_FORCE_NETLOC``, ``ZENPY_FORCE_SCHEME``, an
OAuth token), gets every field of every call as consentd sent it and follows
``next_page`` until ``end_of_stream``. tests/e2e/test_zendesk_client.py does the same
against the running stack after real calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from zenpy import Zenpy

from consentd.export import ZENDESK_FIELDS, from_epoch
from consentd.http_api import Health, init_app
from consentd.http_reports import add_routes
from consentd.reports_pg import ExportPage
from tests.unit.test_export import Ledger, segment
from tests.unit.test_http_reports import FakeReports

TOKEN = "zenpy-token"


def answered_by_an_agent() -> dict[str, Any]:
    """A queue call agent1 answered and paused once: every field has a value."""
    return (
        Ledger(group="support", queue="support")
        .add("routed", 0.5, to="group", group="support", queue="support", source="number")
        .add("consent_decided", 3, action="caller_opted_in", digit="3", where="greeting")
        .add("keypress", 3, digit="3", decides=True, where="greeting")
        .add("queue_joined", 5, queue="support", position=1)
        .add("recording_started", 5.2, bridged_only=True, **segment())
        .add("agent_connected", 17, agent="agent1", interface="PJSIP/agent1", queue_time=12)
        .add("recording_paused", 27, by="agent1", gap="silence", segment=1)
        .add("recording_resumed", 32, by="agent1", gap="silence", segment=1)
        .add("agent_completed", 47, reason="caller", talk_time=30)
        .add("recording_stopped", 47, reason="stopped", bridged_only=True, **segment())
        .add("call_ended", 47.4, cause="hangup")
        .record(number=1)
    )


def placed_by_an_agent() -> dict[str, Any]:
    return (
        Ledger("pbx1:2", did="+4930100031", caller="agent1", direction="outbound",
               policy="always", agent="agent1", callee="+4915100000009")
        .add("outbound_dialled", 0.5, number="+4915100000009")
        .add("callee_answered", 6)
        .add("callee_left", 26)
        .add("call_ended", 26.2, cause="hangup")
        .record(number=2)
    )  # fmt: skip


def never_answered() -> dict[str, Any]:
    return Ledger("pbx1:3", policy="never").add("call_ended", 4, cause="hangup").record(number=3)


class PagedReports(FakeReports):
    """The export's pages by ``start_time``, as the daemon's ledger would cut them."""

    def __init__(self, pages: dict[int, ExportPage]) -> None:
        super().__init__()
        self.pages = pages
        self.asked: list[tuple[int, int]] = []

    async def export(self, start_time: int, per_page: int) -> ExportPage:
        self.asked.append((start_time, per_page))
        return self.pages[start_time]


@pytest.fixture
async def daemon(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PagedReports]:
    calls = [answered_by_an_agent(), placed_by_an_agent(), never_answered()]
    # end_time 1764432000 (long past): zenpy follows next_page and stops on
    # end_of_stream, not on its own "end_time within 5 minutes of now" rule.
    reports = PagedReports(
        {
            1764431000: ExportPage(calls[:2], 1764432000, False),
            1764432000: ExportPage(calls[2:], 1764432001, True),
        }
    )
    app = init_app(
        lambda: Health(True, True, True, 0, 0), CollectorRegistry(), _no_calls, api_token=TOKEN
    )
    add_routes(app, reports)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    monkeypatch.setenv("ZENPY_FORCE_NETLOC", f"127.0.0.1:{server.port}")
    monkeypatch.setenv("ZENPY_FORCE_SCHEME", "http")
    try:
        yield reports
    finally:
        await server.close()


async def _no_calls(limit: int) -> list[dict[str, Any]]:
    return []


def read_with_zenpy(start_time: int) -> list[Any]:
    zenpy_client = Zenpy(subdomain="consentd", oauth_token=TOKEN)
    return list(zenpy_client.talk.calls.incremental(start_time=start_time))


async def test_zenpy_gets_every_call_with_every_field_as_sent(daemon: PagedReports) -> None:
    calls = await asyncio.to_thread(read_with_zenpy, 1764431000)

    sent = [c for page in daemon.pages.values() for c in page.calls]
    assert [call.id for call in calls] == [1, 2, 3]
    for call, record in zip(calls, sent, strict=True):
        # zenpy's model: the hosted product's fields are attributes of its Call
        # (phone_number is a property resolving phone_number_id; to_dict has it).
        for field in ZENDESK_FIELDS:
            if field != "phone_number":
                assert getattr(call, field) == record[field], field
        assert call.created == datetime.fromisoformat(record["created_at"])
        assert call.created.tzinfo is not None
        # Everything consentd sent, its own fields too, as to_dict() gives it back.
        as_dict = call.to_dict()
        assert {k: as_dict.get(k) for k in record} == record
    assert calls[0].agent_name == "agent1"
    assert calls[1].to_dict()["callee"] == "+4915100000009"
    assert daemon.asked == [(1764431000, 1000), (1764432000, 1000)]


async def test_a_call_with_an_agent_does_not_break_zenpys_call_model(
    daemon: PagedReports,
) -> None:
    """zenpy's Call has an ``agent`` property (a user looked up by ``agent_id``) whose
    setter wants an object: a field named ``agent`` holding a name made zenpy raise
    AttributeError on the first call an agent took. consentd names it ``agent_name``."""
    record = answered_by_an_agent()
    assert "agent" not in record
    [call, *_] = await asyncio.to_thread(read_with_zenpy, 1764431000)
    assert call.agent is None  # agent_id is null: zenpy looks nobody up
    assert call.agent_name == "agent1"


async def test_a_start_time_given_as_a_datetime_arrives_as_whole_seconds(
    daemon: PagedReports,
) -> None:
    """zenpy turns an aware datetime into integer epoch seconds, which the export takes."""
    since = from_epoch(1764431000) + timedelta(milliseconds=750)
    zenpy_client = Zenpy(subdomain="consentd", oauth_token=TOKEN)
    calls = await asyncio.to_thread(lambda: list(zenpy_client.talk.calls.incremental(since)))
    assert len(calls) == 3
    assert daemon.asked[0] == (1764431000, 1000)

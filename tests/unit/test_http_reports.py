"""The reporting routes over HTTP with a stand-in ledger: parameters, errors, CSV, the
OpenAPI document, and a hypothesis fuzz of the export's and the report's parameters
whose every answer must be what the document promises."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import ValidationError
from prometheus_client import CollectorRegistry

from consentd.export import CALL_FIELDS, epoch_seconds
from consentd.http_api import Health, init_app
from consentd.http_reports import add_routes
from consentd.ledger import LedgerUnavailable
from consentd.openapi import EXPORT_PATHS, document
from consentd.reports_pg import CallView, ExportPage
from tests.api_schema import check_document, validate_response

TOKEN = "reports-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)
EXPORT = EXPORT_PATHS[0]


def a_call(number: int, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(CALL_FIELDS)
    record.update(
        id=number,
        created_at="2026-11-29T15:00:00Z",
        updated_at="2026-11-29T15:01:00Z",
        direction="inbound",
        phone_number="+4930100001",
        voicemail=False,
        recording_control_interactions=0,
        recording_time=3,
        not_recording_time=4,
        call_id=f"pbx1:{number}",
        node="pbx1",
        started_at="2026-11-29T15:00:00+00:00",
        abandoned=False,
        consentd_unavailable=False,
        recording_segments=[],
        **fields,
    )
    return record


GREETING_SPAN = {
    "lane": "call",
    "kind": "greeting",
    "cut_short": True,
    "start": "2026-11-29T15:00:00+00:00",
    "end": "2026-11-29T15:00:02.500000+00:00",
    "start_s": 0.0,
    "end_s": 2.5,
}


class FakeReports:
    def __init__(self) -> None:
        self.exports: list[tuple[int, int]] = []
        self.windows: list[tuple[datetime, datetime]] = []
        self.page = ExportPage([a_call(1), a_call(2)], 1764428461, False)
        self.down = False

    async def export(self, start_time: int, per_page: int) -> ExportPage:
        if self.down:
            raise LedgerUnavailable("ConnectionRefusedError: nobody home")
        self.exports.append((start_time, per_page))
        return self.page

    async def call(self, key: str, now: datetime) -> CallView | None:
        if key not in ("1", "pbx1:1"):
            return None
        file = "/var/spool/asterisk/recording/consentd-pbx1_1-1.wav"
        details = {
            "id": "pbx1:1",
            "node": "pbx1",
            "recordings": [file],
            "recording_locations": [f"asterisk://pbx1{file}"],
            "segments": [
                {
                    "segment": 1,
                    "file": file,
                    "location": f"asterisk://pbx1{file}",
                    "started_at": "2026-11-29T16:00:05+00:00",
                    "stopped_at": None,
                    "kept": True,
                }
            ],
            "recording_segments": [],
        }
        return CallView(a_call(1), details, [], timeline=[GREETING_SPAN])

    async def agent_calls_started(
        self, start: datetime, end: datetime, now: datetime
    ) -> list[dict[str, Any]]:
        self.windows.append((start, end))
        return [
            {
                "agent": "agent1",
                "direction": "inbound",
                "recording_control_interactions": 2,
                "recording_time": 30,
                "not_recording_time": 5,
                "call_recording_consent_action": "caller_opted_in",
            }
        ]


def make_app(reports: FakeReports) -> Any:
    app = init_app(
        lambda: Health(True, True, True, 0, 0),
        CollectorRegistry(),
        _no_calls,
        api_token=TOKEN,
    )
    add_routes(app, reports, clock=lambda: NOW)
    return app


async def _no_calls(limit: int) -> list[dict[str, Any]]:
    return []


@pytest.fixture
def reports() -> FakeReports:
    return FakeReports()


@pytest.fixture
async def client(reports: FakeReports) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(reports)), headers=AUTH) as c:
        yield c


DOC = document()


def test_the_openapi_document_is_valid_json_schema_throughout() -> None:
    check_document(DOC)


async def test_the_document_is_served_behind_the_token(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    assert await response.json() == DOC


@pytest.mark.parametrize("path", EXPORT_PATHS)
async def test_the_export_answers_on_both_paths_with_a_next_page(
    client: TestClient[Any, Any], reports: FakeReports, path: str
) -> None:
    response = await client.get(path, params={"start_time": "1764428000", "per_page": "2"})

    assert response.status == 200
    body = await response.json()
    validate_response(DOC, path, "GET", 200, body)
    assert body["count"] == 2
    assert [c["id"] for c in body["calls"]] == [1, 2]
    assert body["end_time"] == 1764428461
    assert body["end_of_stream"] is False
    assert body["next_page"] == (f"{client.make_url(path)}?start_time=1764428461&per_page=2")
    assert reports.exports == [(1764428000, 2)]


async def test_at_the_end_of_the_stream_next_page_is_null(
    client: TestClient[Any, Any], reports: FakeReports
) -> None:
    reports.page = ExportPage([], 1764428461, True)

    body = await (await client.get(EXPORT)).json()

    assert body == {
        "calls": [],
        "count": 0,
        "end_time": 1764428461,
        "next_page": None,
        "end_of_stream": True,
    }
    assert reports.exports == [(0, 1000)]  # the defaults


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"start_time": "-1"}, "start_time"),
        ({"start_time": "soon"}, "start_time"),
        ({"start_time": "1.5"}, "start_time"),
        ({"start_time": str(epoch_seconds(NOW) + 60)}, "start_time"),
        ({"per_page": "0"}, "per_page"),
        ({"per_page": "1001"}, "per_page"),
        ({"per_page": "ten"}, "per_page"),
        ({"format": "xml"}, "format"),
    ],
)
async def test_every_bad_export_parameter_is_400_naming_it(
    client: TestClient[Any, Any], reports: FakeReports, params: dict[str, str], parameter: str
) -> None:
    response = await client.get(EXPORT, params=params)

    assert response.status == 400
    body = await response.json()
    validate_response(DOC, EXPORT, "GET", 400, body)
    assert body["error"]["id"] == "invalid-parameter"
    assert body["error"]["parameter"] == parameter
    assert body["error"]["message"].startswith(parameter)
    assert reports.exports == []


async def test_the_export_as_csv_carries_the_paging_in_headers(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get(EXPORT, params={"format": "csv", "per_page": "2"})

    assert response.status == 200
    assert response.content_type == "text/csv"
    rows = list(csv.reader(io.StringIO(await response.text())))
    assert rows[0] == list(CALL_FIELDS)
    assert [r[0] for r in rows[1:]] == ["1", "2"]
    assert response.headers["X-End-Time"] == "1764428461"
    assert response.headers["X-End-Of-Stream"] == "false"
    assert response.headers["X-Next-Page"].endswith("start_time=1764428461&per_page=2&format=csv")


async def test_a_database_outage_is_503(client: TestClient[Any, Any], reports: FakeReports) -> None:
    reports.down = True

    response = await client.get(EXPORT)

    assert response.status == 503
    body = await response.json()
    validate_response(DOC, EXPORT, "GET", 503, body)
    assert body["error"]["id"] == "database-unavailable"


@pytest.mark.parametrize("key", ["1", "pbx1:1"])
async def test_one_call_by_its_number_or_its_ledger_id(
    client: TestClient[Any, Any], key: str
) -> None:
    response = await client.get(f"/api/calls/{key}")

    assert response.status == 200
    body = await response.json()
    validate_response(DOC, "/api/calls/{id}", "GET", 200, body)
    assert body["call"]["call_id"] == "pbx1:1"
    assert body["timeline"] == [GREETING_SPAN]
    # The document promises where each recording lives: a path instead is refused.
    wrong = {**body, "details": {**body["details"], "recording_locations": ["/var/spool/x.wav"]}}
    with pytest.raises(ValidationError, match="does not match"):
        validate_response(DOC, "/api/calls/{id}", "GET", 200, wrong)


async def test_an_unknown_call_is_404(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/calls/pbx9:404")

    assert response.status == 404
    body = await response.json()
    validate_response(DOC, "/api/calls/{id}", "GET", 404, body)
    assert body["error"] == {"id": "no-such-call", "message": "no call 'pbx9:404' in the ledger"}


async def test_the_agent_report_reads_the_window_it_was_given(
    client: TestClient[Any, Any], reports: FakeReports
) -> None:
    response = await client.get(
        "/api/reports/agents", params={"from": "2025-11-28T00:00:00Z", "to": "1764432000"}
    )

    assert response.status == 200
    body = await response.json()
    validate_response(DOC, "/api/reports/agents", "GET", 200, body)
    assert body["from"] == "2025-11-28T00:00:00+00:00"
    assert body["to"] == "2025-11-29T16:00:00+00:00"
    assert reports.windows == [
        (datetime(2025, 11, 28, tzinfo=UTC), datetime(2025, 11, 29, 16, tzinfo=UTC))
    ]
    assert [row["agent"] for row in body["agents"]] == ["agent1"]
    assert body["agents"][0]["consent_outcomes"]["caller_opted_in"] == 1


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-02-30"}, "to"),
        ({"from": "2026-11-29", "to": "2026-11-28"}, "from"),
        ({"format": "pdf"}, "format"),
    ],
)
async def test_every_bad_report_parameter_is_400_naming_it(
    client: TestClient[Any, Any], reports: FakeReports, params: dict[str, str], parameter: str
) -> None:
    response = await client.get("/api/reports/agents", params=params)

    assert response.status == 400
    assert (await response.json())["error"]["parameter"] == parameter
    assert reports.windows == []


async def test_the_agent_report_as_csv(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/reports/agents", params={"format": "csv"})

    rows = list(csv.reader(io.StringIO(await response.text())))
    assert rows[1] == ["agent1", "1", "0", "2", "30", "5", "1", "0", "0", "0", "0"]


# ---------------------------------------------------------------- the fuzz

_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.text(max_size=12),
    st.sampled_from(["json", "csv", "", "0", "1000", "1001", "2026-11-29T10:00:00Z"]),
)


@settings(max_examples=150, deadline=None)
@given(
    path=st.sampled_from([*EXPORT_PATHS, "/api/reports/agents"]),
    values=st.fixed_dictionaries(
        {"start_time": _VALUES, "per_page": _VALUES, "format": _VALUES, "from": _VALUES,
         "to": _VALUES}
    ),
)  # fmt: skip
def test_fuzzed_parameters_get_200_or_a_400_naming_one_and_match_the_document(
    path: str, values: dict[str, str | None]
) -> None:
    params = {k: v for k, v in values.items() if v is not None}

    async def ask() -> tuple[int, str, Any]:
        async with TestClient(TestServer(make_app(FakeReports())), headers=AUTH) as c:
            response = await c.get(path, params=params)
            if response.content_type == "text/csv":
                return response.status, response.content_type, await response.text()
            return response.status, response.content_type, await response.json()

    status, content_type, body = asyncio.run(ask())

    assert status in (200, 400), (status, body)
    validate_response(DOC, path, "GET", status, body, content_type)
    if status == 400:
        assert body["error"]["parameter"] in params
    else:
        assert content_type == ("text/csv" if params.get("format") == "csv" else "application/json")

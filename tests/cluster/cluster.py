"""Helpers for the cluster tests: drive scripts/cluster.sh, call through Kamailio,
and read what the shared ledger, the nodes' spools and the daemons' APIs say."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.sipp_load import LoadPlan, LoadResult, run_load
from consentd.sipp_media import MediaPlan, pcap_file
from tests.e2e.harness import run_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "cluster.sh"
SCENARIO = REPO / "sipp-scenarios" / "cluster-caller.xml"
STATE = REPO / ".state" / "cluster"
SECRETS = REPO / ".state" / "secrets"

OPT_IN = "+4930100007"
POLICIES = f"""\
default: {{recording: never}}
numbers:
  "{OPT_IN}": {{recording: opt_in}}
"""
#: Each caller presses 3 two seconds in (during the opt-in greeting), hangs up at six.
CALL_MS, PRESS_MS = 6000, 2000

#: One line per test, printed at the end of the run (conftest.py).
REPORT: list[str] = []


def cluster_command(*args: str) -> str:
    return run_script(SCRIPT, *args)


@dataclass
class LedgerCall:
    """One call as the shared ledger has it."""

    call_id: str
    node: str
    started_at: datetime
    caller: str
    #: The node column of every row of the call (one node, if all is well).
    row_nodes: set[str] = field(default_factory=set)
    kinds: Counter[str] = field(default_factory=Counter)
    decisions: list[str] = field(default_factory=list)
    end_causes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Cluster:
    proxy: str
    #: Node name: (its consentd's base URL, its spool and its log directory on the host).
    nodes: dict[str, tuple[str, Path, Path]]
    ctl: str
    token: str
    database_url: str
    workdir: Path

    @classmethod
    def load(cls, workdir: Path) -> Cluster:
        data = json.loads((STATE / "cluster.json").read_text())
        password = urllib.parse.quote((SECRETS / "database_password").read_text().strip(), safe="")
        return cls(
            proxy=data["proxy"],
            nodes={
                name: (node["http"], Path(node["spool"]), Path(node["log"]))
                for name, node in data["nodes"].items()
            },
            ctl=data["kamailio_ctl"],
            token=(SECRETS / "api_token").read_text().strip(),
            database_url=f"postgresql://consentd:{password}@127.0.0.1:55432/consentd",
            workdir=workdir,
        )

    async def place(self, name: str, calls: int, cps: float, port: int) -> LoadResult:
        """``calls`` opt-in callers through Kamailio, each pressing 3 (one RTP stream)."""
        media = MediaPlan(CALL_MS, PRESS_MS)
        plan = LoadPlan(OPT_IN, cps, calls, pcap_file(media, self.workdir), 0, CALL_MS)
        return await run_load(
            plan, self.workdir / name, port=port, target=self.proxy, scenario=SCENARIO
        )

    def api(self, node: str, path: str, **params: str) -> Any:
        url = self.nodes[node][0] + path + ("?" + urllib.parse.urlencode(params) if params else "")
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def export(self, node: str, since: datetime) -> dict[str, str]:
        """Call id -> node of every call the node's export lists from ``since`` on."""
        found: dict[str, str] = {}
        start = str(int(since.timestamp()) - 1)
        for _ in range(50):
            page = self.api(
                node, "/api/v2/channels/voice/stats/incremental/calls.json",
                start_time=start, per_page="100",
            )  # fmt: skip
            found |= {call["call_id"]: call["node"] for call in page["calls"]}
            if page["end_of_stream"]:
                return found
            start = str(page["end_time"])
        raise AssertionError("the export did not reach its end in 50 pages")

    def dispatcher_flags(self) -> dict[str, str]:
        """Kamailio's view of each node: sip URI -> flags (AP: up, IP: down, probing)."""
        out = subprocess.run(
            ["kamcmd", "-s", self.ctl, "dispatcher.list"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
        flags: dict[str, str] = {}
        uri = ""
        for line in out.splitlines():
            words = line.split()
            if words[:1] == ["URI:"]:
                uri = words[1]
            elif words[:1] == ["FLAGS:"]:
                flags[uri] = words[1]
        return flags

    def wait_flags(self, uri: str, first: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while True:
            flags = self.dispatcher_flags().get(uri, "")
            if flags.startswith(first) or time.monotonic() > deadline:
                return flags
            time.sleep(0.2)


async def ledger_calls(database_url: str, since: datetime) -> dict[str, LedgerCall]:
    """Every opt-in test call started since ``since``, from the shared ledger."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT call_id, node, kind, occurred_at, data::text AS data FROM call_events"
            " WHERE call_id IN (SELECT call_id FROM call_events WHERE kind = 'call_started'"
            "   AND data->>'did' = $1 AND occurred_at >= $2)"
            " ORDER BY call_id, seq",
            OPT_IN,
            since,
        )
    finally:
        await conn.close()
    calls: dict[str, LedgerCall] = {}
    for row in rows:
        data = json.loads(row["data"])
        if row["kind"] == "call_started":
            calls[row["call_id"]] = LedgerCall(
                row["call_id"], row["node"], row["occurred_at"], str(data.get("caller"))
            )
        call = calls[row["call_id"]]
        call.row_nodes.add(row["node"])
        call.kinds[row["kind"]] += 1
        if row["kind"] == "consent_decided":
            call.decisions.append(str(data.get("action")))
        elif row["kind"] == "call_ended":
            call.end_causes.append(str(data.get("cause")))
        elif row["kind"] == "recording_started":
            call.files.append(str(data.get("file")))
    return calls


async def wait_for_ledger(
    database_url: str,
    since: datetime,
    count: int,
    seconds: float,
    *,
    ended: Callable[[LedgerCall], bool] = lambda call: True,
) -> dict[str, LedgerCall]:
    """The calls once ``count`` of them are in the ledger and each call ``ended``
    selects has its ``call_ended`` (all of them by default)."""
    deadline = time.monotonic() + seconds
    while True:
        calls = await ledger_calls(database_url, since)
        waiting = [c for c in calls.values() if ended(c) and not c.end_causes]
        if (len(calls) >= count and not waiting) or time.monotonic() > deadline:
            return calls
        await asyncio.sleep(0.5)

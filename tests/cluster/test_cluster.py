"""Several PBX nodes: SIPp calls through Kamailio to two Asterisk nodes, each with
its own consentd, one shared ledger.

1. A load spreads over both nodes; every call has exactly one consent outcome,
   its rows name the node that took it, its recording lies in that node's spool,
   and either consentd's API (recent calls, export, one call) shows both nodes.
2. One node's Asterisk is killed mid-load: Kamailio's OPTIONS probes mark it
   down, the later calls all go to the other node and complete; no outcome is
   lost for a call that reached a daemon, and the calls cut off end in the
   ledger with cause ``gone_while_disconnected`` once the node is back (its
   consentd closes them when it reconnects), which the API shows.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.cluster.cluster import (
    REPORT,
    SECRETS,
    STATE,
    Cluster,
    cluster_command,
    wait_for_ledger,
)

NODES = ("pbx-a", "pbx-b")
#: Kamailio probes every second and times a silent node out after 2 s (fr_timer):
#: calls started later than this after the kill must all be on the other node.
DETECT_S = 4.0


def _other(node: str) -> str:
    return NODES[1 - NODES.index(node)]


async def test_load_spreads_over_both_nodes(cluster: Cluster) -> None:
    calls_placed, cps = 80, 8.0
    since = datetime.now(UTC)
    started = time.monotonic()
    result = await cluster.place("spread", calls_placed, cps, port=5700)
    assert (result.offered, result.completed, result.failed) == (calls_placed, calls_placed, 0), (
        f"SIPp: {result.offered} offered, {result.completed} completed, {result.failed} failed:"
        f" {dict(result.reasons)}"
    )
    calls = await wait_for_ledger(cluster.database_url, since, calls_placed, 30)
    assert len(calls) == calls_placed, f"{len(calls)} calls in the ledger, {calls_placed} placed"

    per_node = Counter(call.node for call in calls.values())
    assert set(per_node) == set(NODES), per_node
    assert min(per_node.values()) >= 0.35 * calls_placed, f"unfair spread: {dict(per_node)}"
    for call in calls.values():
        assert call.row_nodes == {call.node}, f"{call.call_id}: rows of {call.row_nodes}"
        assert call.call_id.startswith(f"{call.node}:"), call.call_id
        assert call.decisions == ["caller_opted_in"], f"{call.call_id}: {call.decisions}"
        assert call.end_causes == ["hangup"], f"{call.call_id}: {call.end_causes}"
        assert len(call.files) == 1, f"{call.call_id}: recordings {call.files}"
        name = Path(call.files[0]).name
        own, other = cluster.nodes[call.node][1], cluster.nodes[_other(call.node)][1]
        assert (own / "monitor" / name).stat().st_size > 44, f"{call.call_id}: {name} empty"
        assert not (other / "monitor" / name).exists(), f"{name} in {_other(call.node)}'s spool"

    ids = {call.call_id: call.node for call in calls.values()}
    for node in NODES:
        recent = cluster.api(node, "/api/calls", limit="1000")
        listed = {c["call_id"]: c["node"] for c in recent["calls"] if c["call_id"] in ids}
        assert listed == ids, f"{node}'s /api/calls: {len(listed)} of {len(ids)} calls"
        # The export serves whole seconds before its horizon (consentd/reports_pg.py):
        # the last calls' second comes a moment after they ended.
        deadline = time.monotonic() + 5
        while True:
            exported = {k: v for k, v in cluster.export(node, since).items() if k in ids}
            if exported == ids or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert exported == ids, f"{node}'s export: {len(exported)} of {len(ids)} calls"
        foreign = next(call_id for call_id, owner in ids.items() if owner != node)
        one = cluster.api(node, f"/api/calls/{foreign}")
        assert one["details"]["node"] == _other(node)
        assert one["details"]["call_recording_consent_action"] == "caller_opted_in"
    REPORT.append(
        f"spread: {calls_placed} calls at {cps:g}/s through Kamailio: per node {dict(per_node)},"
        f" consent outcomes {dict(Counter(c.decisions[0] for c in calls.values()))},"
        f" {time.monotonic() - started:.1f} s"
    )


async def test_stopped_node_sends_new_calls_to_the_other(cluster: Cluster) -> None:
    calls_placed, cps, victim, survivor = 60, 6.0, "pbx-b", "pbx-a"
    victim_uri = "sip:127.0.0.1:5260"
    assert cluster.dispatcher_flags()[victim_uri].startswith("A")
    since = datetime.now(UTC)
    started = time.monotonic()
    load = asyncio.create_task(cluster.place("node-stop", calls_placed, cps, port=5740))
    await asyncio.sleep(4.0)
    killed_at = datetime.now(UTC)
    await asyncio.to_thread(cluster_command, "stop-node", victim)
    flags = await asyncio.to_thread(cluster.wait_flags, victim_uri, "I", 10)
    marked_down_s = (datetime.now(UTC) - killed_at).total_seconds()
    assert flags.startswith("I"), f"Kamailio still has {victim} as {flags!r}"
    result = await load

    # The victim's calls in progress stay open until its consentd sees its Asterisk again.
    before = await wait_for_ledger(
        cluster.database_url, since, calls_placed, 20, ended=lambda call: call.node == survivor
    )
    open_calls = {k for k, c in before.items() if not c.end_causes}
    assert all(before[k].node == victim for k in open_calls), "open calls on the survivor"
    await asyncio.to_thread(cluster_command, "start-node", victim)
    calls = await wait_for_ledger(cluster.database_url, since, calls_placed, 30)
    flags = await asyncio.to_thread(cluster.wait_flags, victim_uri, "A", 10)
    assert flags.startswith("A"), f"Kamailio did not take {victim} back: {flags!r}"

    late = [c for c in calls.values() if c.started_at > killed_at + timedelta(seconds=DETECT_S)]
    assert late, "no call started after the node was marked down"
    assert {c.node for c in late} == {survivor}, Counter(c.node for c in late)
    cut = {k: c for k, c in calls.items() if c.end_causes != ["hangup"]}
    for call in calls.values():
        assert call.row_nodes == {call.node}, f"{call.call_id}: rows of {call.row_nodes}"
        assert len(call.end_causes) == 1, f"{call.call_id}: ended {call.end_causes}"
        assert len(call.decisions) <= 1, f"{call.call_id}: {call.decisions}"
        if call.call_id in cut:
            assert call.node == victim and call.started_at < killed_at, call
            assert call.end_causes == ["gone_while_disconnected"], call
        else:
            assert call.decisions == ["caller_opted_in"], f"{call.call_id}: {call.decisions}"
    assert set(cut) == open_calls
    assert cut, "the kill cut off no call"
    # SIPp's failures are the calls cut off, and at most a call or two whose INVITE
    # reached the victim as it died (then no daemon saw it: not in the ledger).
    unseen = result.offered - len(calls)
    assert 0 <= unseen <= 2, f"{result.offered} placed, {len(calls)} in the ledger"
    assert result.failed == len(cut) + unseen, (
        f"SIPp failed {result.failed}, cut off {len(cut)}, unseen {unseen}: {dict(result.reasons)}"
    )
    one = cluster.api(survivor, f"/api/calls/{next(iter(cut))}")
    ended = [e for e in one["events"] if e["kind"] == "call_ended"]
    assert [e["data"]["cause"] for e in ended] == ["gone_while_disconnected"]
    assert one["details"]["node"] == victim

    per_node = Counter(c.node for c in calls.values())
    REPORT.append(
        f"node stop: {calls_placed} calls at {cps:g}/s, {victim}'s Asterisk killed after 4 s,"
        f" marked down by Kamailio {marked_down_s:.1f} s later; per node {dict(per_node)};"
        f" after the kill + {DETECT_S:g} s {len(late)} calls, all on {survivor};"
        f" SIPp completed {result.completed}, failed {result.failed}; cut off {len(cut)}"
        f" (ended gone_while_disconnected, {sum(bool(cut[k].decisions) for k in cut)} had"
        f" decided), never seen by a daemon {unseen}; {time.monotonic() - started:.1f} s"
    )


def test_probes_take_an_idle_node_out_and_back(cluster: Cluster) -> None:
    """With no call to fail on it, only the OPTIONS probes can find a dead node."""
    victim, uri = "pbx-a", "sip:127.0.0.1:5160"
    log = STATE / "kamailio.log"
    assert cluster.wait_flags(uri, "A", 10).startswith("A")
    seen = log.stat().st_size
    killed = time.monotonic()
    cluster_command("stop-node", victim)
    flags = cluster.wait_flags(uri, "I", 10)
    down_s = time.monotonic() - killed
    assert flags.startswith("I"), f"Kamailio still has {victim} as {flags!r}"
    cluster_command("start-node", victim)
    started = time.monotonic()
    flags = cluster.wait_flags(uri, "A", 10)
    up_s = time.monotonic() - started
    assert flags.startswith("A"), f"Kamailio did not take {victim} back: {flags!r}"
    with log.open("rb") as f:
        f.seek(seen)
        said = f.read().decode(errors="replace")
    assert f"node down: {uri} (no answer to OPTIONS)" in said
    assert f"node up: {uri}" in said
    REPORT.append(
        f"probes: idle {victim} killed, marked down after {down_s:.1f} s (OPTIONS),"
        f" back in the rotation {up_s:.1f} s after its Asterisk was up again"
    )


def test_no_secret_in_the_clusters_logs_output_or_arguments(cluster: Cluster) -> None:
    secrets = {p.name: p.read_text().strip() for p in SECRETS.iterdir() if p.is_file()}
    assert len(secrets) >= 8
    logs = [
        *STATE.glob("*.log"),
        *(p for node in cluster.nodes.values() for p in node[2].rglob("*") if p.is_file()),
    ]
    assert any(log.name == "kamailio.log" for log in logs)
    said = [
        cluster_command("status"),
        subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout,
    ]
    assert "kamailio -DD" in said[1] and "consentd run" in said[1]
    texts = [
        *((str(log), log.read_text(errors="replace")) for log in logs),
        *(("cluster.sh status / ps -eo args", text) for text in said),
    ]
    leaks = [
        f"{name} in {where}"
        for where, text in texts
        for name, value in secrets.items()
        if value in text
    ]
    assert not leaks, leaks

"""``make bench QUICK=1`` still works: it runs every path and writes complete results.

This proves the benchmark, not the speed: the figures themselves are judged
in the README from a full ``make bench`` run, never here.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.run import RESULTS, run
from bench.sipp_load import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.bench]

STEP_FIELDS = {
    "path", "cps", "media", "offered", "completed", "failed", "generator_limited",
    "setup_p50_ms", "setup_p99_ms", "latency_p50_ms", "latency_p99_ms",
    "duration_error_p50_s", "duration_error_p99_s", "silent_blocks_p99",
    "ledger_rows_expected", "ledger_rows_found", "cpu_s_per_1000_calls", "rss_peak_mb",
}  # fmt: skip


def test_quick_bench_runs_every_path_and_writes_results(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = set(RESULTS.glob("*.json")) if RESULTS.exists() else set()

    out = asyncio.run(run(quick=True, keep=False))

    assert out not in before and out.parent == RESULTS
    result = json.loads(out.read_text())
    assert (result["complete"], result["stopped"]) == (True, None)
    assert {"cores", "memory_gb", "kernel", "asterisk"} <= result["machine"].keys()
    assert result["machine"]["asterisk"].startswith("Asterisk 22")
    steps = result["steps"]
    assert {(s["path"], s["media"]) for s in steps} == {
        (p, m) for p in ("floor", "baseline", "consentd") for m in ("steady", "jitter", "none")
    }
    for step in steps:
        name = f"{step['path']} {step['cps']} cps {step['media']}"
        assert STEP_FIELDS <= step.keys(), name
        assert step["offered"] > 0 and step["failed"] == 0 and step["stranded"] == 0, name
        assert 0 <= step["channels_gone_after_s"] < 75, name
        assert step["fresh_ari_client_failures"] == 0, name
        # Every process a call costs, SIPp's reaped children included.
        sipp, asterisk = step["sipp_cpu_s_per_1000_calls"], step["asterisk_cpu_s_per_1000_calls"]
        assert sipp > 0 and asterisk > 0, name
        assert step["stack_cpu_s_per_1000_calls"] >= sipp + asterisk, name
        if step["media"] != "none":
            assert step["recordings"] == step["completed"], name
        if step["path"] == "consentd":
            assert step["ledger_rows_found"] == step["ledger_rows_expected"] > 0, name
            assert step["ledger_duplicates"] == 0, name
            # The 3 comes during the greeting: MixMonitor attaches once it stopped
            # (within the 80 ms that MixMonitor's pairing waits for the caller).
            assert 0 <= step["greeting_overlap_ms_max"] < 80, name
            assert step["cpu_s_per_1000_calls"] > 0 and step["rss_peak_mb"] > 10, name
    # Each step and run in its own rotated order (steps run once take turns
    # too); the signalling step runs twice, and its medians are what the
    # summary judges.
    order = [(s["path"], s["media"], s["run"], s["runs"]) for s in steps]
    assert order == [
        ("floor", "steady", 1, 1), ("baseline", "steady", 1, 1), ("consentd", "steady", 1, 1),
        ("baseline", "jitter", 1, 1), ("consentd", "jitter", 1, 1), ("floor", "jitter", 1, 1),
        ("consentd", "none", 1, 2), ("floor", "none", 1, 2), ("baseline", "none", 1, 2),
        ("floor", "none", 2, 2), ("baseline", "none", 2, 2), ("consentd", "none", 2, 2),
    ]  # fmt: skip
    repeated = [g for g in result["medians"] if g["runs"] > 1]
    assert {g["path"] for g in repeated} == {"floor", "baseline", "consentd"}
    for group in repeated:
        runs = [s for s in steps if s["path"] == group["path"] and s["media"] == "none"]
        assert group["offered"] == sum(s["offered"] for s in runs), group["path"]
    summary = result["summary"]
    assert summary["signalling_only"]["highest_zero_failure_cps"]["consentd"] is not None
    for kind in ("with_media", "signalling_only"):
        # Low rates, nothing failed: both paths' cost per call is compared.
        ceiling = summary[kind]["cpu_ceiling"]
        assert ceiling is not None and ceiling["steps"] and ceiling["ceiling"] > 0, kind
        assert summary["targets"][f"capacity_{kind}"]["cpu_ceiling"] == ceiling["ceiling"]
    table = capsys.readouterr().out
    assert "| path | cps | media |" in table and "consentd/baseline" in table
    assert "Steps run more than once, as their medians" in table
    assert "consentd can reach at most" in table


BENCH = (sys.executable, "-m", "bench.run")


def _bench_sipps() -> list[str]:
    """Command lines of SIPp processes placing the bench's calls."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # ended meanwhile
        if args and args[0].endswith(b"sipp") and any(b"bench-caller" in a for a in args):
            found.append(b" ".join(args).decode(errors="replace"))
    return found


def test_a_bench_stopped_by_sigterm_keeps_its_steps_and_leaves_nothing_running() -> None:
    """``kill`` in the middle of a step: the steps measured stay, SIPp and the stack stop."""
    before = set(RESULTS.glob("*.json")) if RESULTS.exists() else set()
    bench = subprocess.Popen(
        [*BENCH, "--steps", "5:steady:4:4000", "--paths", "baseline,consentd"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    new: set[Path] = set()
    try:
        seen = []
        assert bench.stdout is not None
        for line in bench.stdout:
            seen.append(line)
            if line.startswith("==> [1/1] consentd"):
                break  # the baseline's step is measured, consentd's begins
        time.sleep(2)  # consentd's callers are on the line now
        calling = _bench_sipps()
        bench.send_signal(signal.SIGTERM)
        rest, _ = bench.communicate(timeout=120)
        output = "".join(seen) + rest
        new = set(RESULTS.glob("*.json")) - before

        assert calling, f"no SIPp was calling when the bench was stopped:\n{output}"
        assert bench.returncode == 143, output
        assert "stopped after 1 of 2 step runs: interrupted" in output
        assert len(new) == 1, output
        result = json.loads(new.pop().read_text())
        assert result["complete"] is False
        assert result["stopped"] == "interrupted (SIGINT or SIGTERM)"
        assert [(s["path"], s["completed"]) for s in result["steps"]] == [("baseline", 20)]
        assert _bench_sipps() == []
        status = subprocess.run(
            [str(REPO / "scripts" / "stack.sh"), "status"], capture_output=True, text=True
        ).stdout
        assert "asterisk   stopped" in status and "consentd   stopped" in status, status
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for leftover in set(RESULTS.glob("*.json")) - before:
            leftover.unlink()  # a test's partial run is no result to keep

"""A bench run stopped part-way keeps what it measured, and stops what it started.

The steps themselves are faked here (no stack, no SIPp): what is under test is
the run around them, its result file, the stack's teardown and SIPp's end.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import bench.run
from bench.run import UNFINISHED
from bench.run import main as bench_main
from bench.sipp_load import LoadPlan, LoadResult, run_load
from bench.step import StepMeasure


class _Monitor:
    async def __aenter__(self) -> _Monitor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _FakeRun:
    """The bench's edges: the stack script, SIPp's load and the measuring, faked.

    ``stop_at``: the n-th load (1-based) calls ``stop`` instead of completing.
    """

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, stop_at: int, stop: Any):
        self.results = tmp / "results"
        self.stack: list[tuple[str, ...]] = []
        self.loads = 0
        self.seen_before_stop: dict[str, Any] | None = None
        self._stop_at, self._stop = stop_at, stop
        monkeypatch.setattr(bench.run, "RESULTS", self.results)
        monkeypatch.setattr(bench.run, "_stack", self._fake_stack)
        monkeypatch.setattr(bench.run, "wait_idle", self._idle)
        monkeypatch.setattr(bench.run, "StepMonitor", _Monitor)
        monkeypatch.setattr(bench.run, "run_load", self._load)
        monkeypatch.setattr(bench.run, "measure_step", self._measure)
        monkeypatch.setattr(
            bench.run,
            "machine",
            lambda: {"cores": 2, "memory_gb": 1.0, "kernel": "k", "asterisk": "A 22"},
        )
        monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")

    async def _fake_stack(self, *args: str) -> None:
        self.stack.append(args)

    async def _idle(self) -> Counter[str]:
        return Counter()

    async def _load(self, plan: LoadPlan, work: Path) -> LoadResult:
        self.loads += 1
        if self.loads == self._stop_at:
            for found in self.results.glob("*.json"):
                self.seen_before_stop = json.loads(found.read_text())
            await self._stop()
        return LoadResult(plan, time.time() - 5, time.time(), 0, offered=25, completed=25)

    async def _measure(self, path: Any, media: str, load: LoadResult, *args: Any) -> StepMeasure:
        return StepMeasure(path.name, load.plan.cps, media, load)

    def result(self) -> dict[str, Any]:
        (found,) = self.results.glob("*.json")
        return dict(json.loads(found.read_text()))


def test_a_step_that_fails_keeps_the_steps_before_it_and_takes_the_stack_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def sipp_vanishes() -> None:
        raise RuntimeError("sipp vanished")

    fake = _FakeRun(tmp_path, monkeypatch, stop_at=3, stop=sipp_vanishes)

    with pytest.raises(RuntimeError, match="sipp vanished"):
        bench_main(["--steps", "5:steady,50:none"])

    # Written after each step, before the run ended: two steps in, "unfinished".
    assert fake.seen_before_stop is not None
    assert [s["path"] for s in fake.seen_before_stop["steps"]] == ["floor", "baseline"]
    assert fake.seen_before_stop["complete"] is False
    assert fake.seen_before_stop["stopped"] == UNFINISHED
    kept = fake.result()
    assert kept["complete"] is False
    assert kept["stopped"] == "RuntimeError: sipp vanished"
    assert [(s["path"], s["cps"], s["completed"]) for s in kept["steps"]] == [
        ("floor", 5, 25),
        ("baseline", 5, 25),
    ]
    assert fake.stack[0][0] == "up" and fake.stack[-1] == ("down",)
    out = capsys.readouterr().out
    assert "==> bench: stopped after 2 of 6 step runs: RuntimeError: sipp vanished" in out
    assert "Incomplete run, 2 step runs: RuntimeError: sipp vanished" in out
    assert "| baseline | 5 | steady |" in out
    assert "partial results in" in out


def test_sigterm_stops_the_run_like_ctrl_c_and_keeps_the_steps_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def terminated() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(30)  # cancelled by the handler long before

    fake = _FakeRun(tmp_path, monkeypatch, stop_at=2, stop=terminated)
    started = time.monotonic()

    with pytest.raises(SystemExit) as exited:
        bench_main(["--steps", "5:jitter"])

    assert exited.value.code == 143
    assert time.monotonic() - started < 10
    kept = fake.result()
    assert kept["stopped"] == "interrupted (SIGINT or SIGTERM)"
    assert [s["path"] for s in kept["steps"]] == ["floor"]
    assert fake.stack[-1] == ("down",)
    assert "stopped after 1 of 3 step runs" in capsys.readouterr().out


def test_a_run_complete_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def never() -> None:
        raise AssertionError("not stopped")

    fake = _FakeRun(tmp_path, monkeypatch, stop_at=0, stop=never)

    bench_main(["--steps", "5:steady", "--paths", "consentd"])

    kept = fake.result()
    assert (kept["complete"], kept["stopped"]) == (True, None)
    assert [s["path"] for s in kept["steps"]] == ["consentd"]
    assert not list(fake.results.glob("*.tmp"))


def test_nothing_measured_writes_no_result_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def no_pbx() -> None:
        raise OSError("no PBX")

    fake = _FakeRun(tmp_path, monkeypatch, stop_at=1, stop=no_pbx)

    with pytest.raises(OSError, match="no PBX"):
        bench_main(["--steps", "5:steady"])

    assert fake.seen_before_stop is None
    assert not fake.results.exists() or not any(fake.results.iterdir())
    assert fake.stack[-1] == ("down",)
    assert "nothing measured, no result file written" in capsys.readouterr().out


def test_a_stopped_load_ends_its_sipp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled (the bench stopped), run_load kills SIPp instead of leaving it calling."""
    bin_dir, pid_file = tmp_path / "bin", tmp_path / "sipp.pid"
    bin_dir.mkdir()
    fake_sipp = bin_dir / "sipp"
    fake_sipp.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    fake_sipp.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    plan = LoadPlan("+4930199002", 10, 100, tmp_path / "media.pcap", 0, 10_000)

    async def scenario() -> int:
        task = asyncio.create_task(run_load(plan, tmp_path / "work"))
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        pid = int(pid_file.read_text())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pid

    pid = asyncio.run(scenario())

    assert not Path(f"/proc/{pid}").exists(), "SIPp still runs after its load was stopped"


def test_ctrl_c_stops_the_run_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def interrupted() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(30)

    fake = _FakeRun(tmp_path, monkeypatch, stop_at=2, stop=interrupted)
    # A shell starts background jobs with SIGINT ignored (as `make test &` does);
    # Python, and asyncio's handler for it, keep it so. A terminal delivers it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as exited:
            bench_main(["--steps", "5:jitter"])
    finally:
        signal.signal(signal.SIGINT, previous)

    assert exited.value.code == 130
    assert fake.result()["stopped"] == "interrupted (SIGINT or SIGTERM)"
    assert fake.stack[-1] == ("down",)
    assert "stopped after 1 of 3 step runs" in capsys.readouterr().out

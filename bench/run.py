"""``make bench``: rising call rates through the floor, the dialplan baseline and consentd.

Each step runs the three paths one after another at the same rate, so that
they meet the same machine in the same minute. Media steps send a continuous
tone and key 3 in one RTP stream per call (steady, then jittered as a poor
mobile link sends it) and judge the kept recordings; signalling-only steps
send the key alone, at higher rates, and measure call-control capacity. The
steps near the limits run three times, in a rotated path order (steps run once
rotate too, from one step to the next), and are judged
on their medians (bench/repeats.py).

Output: ``bench/results/<UTC date-time>.json`` and a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.repeats import group_runs, step_order
from bench.report import markdown, summarise
from bench.sipp_load import MEDIA_SLOTS, REPO, LoadPlan, run_load
from bench.step import PATHS, Path_, StepMeasure, StepMonitor, measure_step, wait_idle
from consentd.sipp_media import MediaPlan, pcap_file

STACK = REPO / "scripts" / "stack.sh"
POLICIES = REPO / "bench" / "policies.yaml"
RESULTS = REPO / "bench" / "results"
PRESS_AT_MS = 2000
#: What a result file written between steps says until the run ends: a file
#: still saying it after the bench is gone was killed (SIGKILL, power).
UNFINISHED = "unfinished: the run was still going, or was killed"


@dataclass(frozen=True)
class StepSpec:
    cps: float
    media: str  # "steady", "jitter" or "none"
    seconds: float  # how long calls are offered
    call_ms: int
    runs: int = 1  # near the limits: several, judged on the median (bench/repeats.py)


def plan_steps(quick: bool) -> list[StepSpec]:
    if quick:
        return [
            StepSpec(5, "steady", 4, 6000),
            StepSpec(5, "jitter", 4, 6000),
            # Twice: the quick run proves the repeats and their medians work too.
            StepSpec(50, "none", 3, 4000, runs=2),
        ]
    # The rates where the paths part (or the machine gives out) run three times.
    media = [
        StepSpec(cps, kind, 10, 10_000, runs=3 if cps >= 60 else 1)
        for cps in (5, 10, 20, 40, 60, 80)
        for kind in ("steady", "jitter")
    ]
    signalling = [
        StepSpec(cps, "none", 6, 4000, runs=3 if cps >= 400 else 1)
        for cps in (100, 200, 300, 400, 500, 600)
    ]
    # 10 s calls at 200/s: about 2,000 at once, for consentd's memory at that size.
    concurrency = [StepSpec(200, "none", 10, 10_000)]
    return media + signalling + concurrency


def parse_steps(text: str, runs: int = 1) -> list[StepSpec]:
    """``CPS:MEDIA[:SECONDS[:CALL_MS]]`` items, comma-separated, e.g. ``20:jitter,200:none``."""
    specs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) < 2 or parts[1] not in ("steady", "jitter", "none"):
            raise argparse.ArgumentTypeError(
                f"step {item!r}: expected CPS:steady|jitter|none[:SECONDS[:CALL_MS]]"
            )
        try:
            cps = float(parts[0])
            seconds = float(parts[2]) if len(parts) > 2 else 10.0
            call_ms = int(parts[3]) if len(parts) > 3 else (4000 if parts[1] == "none" else 10_000)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"step {item!r}: {exc}") from None
        if not (0 < cps < 10_000 and 0 < seconds <= 3600) or call_ms < 2500:
            # float() takes "inf" and "nan": neither is a number of calls to place.
            raise argparse.ArgumentTypeError(
                f"step {item!r}: rate (under 10000) and seconds (up to 3600) must be"
                " positive, calls at least 2500 ms"
            )
        specs.append(StepSpec(cps, parts[1], seconds, call_ms, runs))
    return specs


def _load_plan(spec: StepSpec, path: Path_, media_dir: Path) -> LoadPlan:
    calls = max(1, int(spec.cps * spec.seconds))
    if spec.media == "none":
        pcap = pcap_file(MediaPlan(200, 0, speech=False), media_dir)
        return LoadPlan(path.did, spec.cps, calls, pcap, lead_ms=1500, hold_ms=spec.call_ms - 1500)
    if spec.media == "jitter":
        # Each call stalls at its own moments, as on a real link: with one pattern
        # every caller's key ended inside the same 150 ms stall (seed 1).
        first, *others = (
            pcap_file(MediaPlan(spec.call_ms, PRESS_AT_MS, jitter=True, seed=seed), media_dir)
            for seed in range(1, MEDIA_SLOTS + 1)
        )
        return LoadPlan(path.did, spec.cps, calls, first, 0, spec.call_ms, tuple(others))
    media = MediaPlan(spec.call_ms, PRESS_AT_MS)
    return LoadPlan(path.did, spec.cps, calls, pcap_file(media, media_dir), 0, spec.call_ms)


async def _stack(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(STACK), *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
    )
    if await proc.wait() != 0:
        sys.exit(f"bench: scripts/stack.sh {' '.join(args)} failed (exit {proc.returncode})")


@functools.cache
def machine() -> dict[str, Any]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    root = REPO / ".cache" / "asterisk-root"
    version = subprocess.run(
        ["chroot", str(root), "/usr/sbin/asterisk", "-V"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "asterisk": version,
        "python": platform.python_version(),
    }


async def run(
    quick: bool,
    keep: bool,
    specs: list[StepSpec] | None = None,
    paths: tuple[str, ...] = (),
    keep_wavs: Path | None = None,
) -> Path:
    """Run the steps; the result file is rewritten after every step.

    A run stopped part-way (Ctrl-C, SIGTERM, a step that failed) keeps what it
    measured: the file then says ``"complete": false`` and why it stopped, and
    the table of the steps done is printed. Without ``keep`` the stack is taken
    down either way.
    """
    for tool in ("sipp", "chroot"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed; run `make setup`")
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"{stamp}{'-quick' if quick else ''}.json"
    steps: list[StepMeasure] = []
    specs = specs or plan_steps(quick)
    chosen = [p for p in PATHS if not paths or p.name in paths]
    planned = len(chosen) * sum(spec.runs for spec in specs)
    stopped: str | None = None
    _cancel_on_sigterm()
    try:
        print(f"==> bench: stack up with {_shown(POLICIES)}", flush=True)
        await _stack("up", str(POLICIES))
        with tempfile.TemporaryDirectory(prefix="consentd-bench-") as tmp:
            media_dir = Path(tmp) / "media"
            for n, spec in enumerate(specs, 1):
                for run_no in range(1, spec.runs + 1):
                    for path in step_order(chosen, n, run_no):
                        await wait_idle()
                        plan = _load_plan(spec, path, media_dir)
                        label = f"[{n}/{len(specs)}] {path.name:8} {spec.cps:g} cps"
                        label += f", media {spec.media}"
                        if spec.runs > 1:
                            label += f", run {run_no}/{spec.runs}"
                        calls = f"{plan.calls} calls of {plan.call_ms / 1000:g} s"
                        print(f"==> {label}: {calls}", flush=True)
                        work = Path(tmp) / f"{n}-{run_no}-{path.name}"
                        async with StepMonitor() as monitor:
                            load = await run_load(plan, work)
                        wavs = None
                        if keep_wavs is not None:
                            wavs = keep_wavs / f"{label_dir(spec, run_no)}-{path.name}"
                        step = await measure_step(
                            path, spec.media, load, PRESS_AT_MS, monitor, wavs
                        )
                        step.run, step.runs = run_no, spec.runs
                        steps.append(step)
                        print(f"    {step.one_line()}", flush=True)
                        save_result(out, quick, started, steps, stopped=UNFINISHED)
    except asyncio.CancelledError:
        stopped = "interrupted (SIGINT or SIGTERM)"
        raise
    except Exception as exc:
        stopped = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            if not keep:
                await _stack("down")
        finally:
            if stopped is not None:
                _report_stopped(out, quick, started, steps, planned, stopped)
    _publish(out, quick, started, steps)
    return out


def save_result(
    out: Path, quick: bool, started: float, steps: list[StepMeasure], stopped: str | None = None
) -> dict[str, Any]:
    """Write the result file as it stands. ``stopped``: why the run is not complete
    (``UNFINISHED`` while steps are still to come)."""
    step_rows = [s.as_json() for s in steps]
    result: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "complete": stopped is None,
        "stopped": stopped,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "steps": step_rows,
        "medians": group_runs(step_rows),
        "summary": summarise(step_rows),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".tmp")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(out)  # never a half-written file, even if killed while writing
    return result


def _report_stopped(
    out: Path, quick: bool, started: float, steps: list[StepMeasure], planned: int, why: str
) -> None:
    print(f"==> bench: stopped after {len(steps)} of {planned} step runs: {why}", flush=True)
    if not steps:
        print("==> bench: nothing measured, no result file written", flush=True)
        return
    _publish(out, quick, started, steps, stopped=why)


def _publish(
    out: Path, quick: bool, started: float, steps: list[StepMeasure], stopped: str | None = None
) -> None:
    """Write the result file and print its tables (a stopped run's as partial)."""
    result = save_result(out, quick, started, steps, stopped)
    print(markdown(result))
    what = "results" if stopped is None else "partial results"
    print(f"==> bench: {what} in {_shown(out)} ({result['duration_s']:.0f} s)", flush=True)


def _shown(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def _cancel_on_sigterm() -> None:
    """SIGTERM stops the run as Ctrl-C does: the stack is taken down and the steps
    measured so far are kept (its default would end the process on the spot,
    leaving the stack up and SIPp calling)."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


def label_dir(spec: StepSpec, run_no: int) -> str:
    """The folder name of one run of a step, for ``--keep-wavs``: ``40cps-jitter-run2``."""
    return f"{spec.cps:g}cps-{spec.media}-run{run_no}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three short steps (under 3 min)")
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    parser.add_argument(
        "--steps", type=parse_steps, help="instead of the plan: CPS:MEDIA[:SECONDS[:CALL_MS]],..."
    )
    parser.add_argument(
        "--paths", default="", help="comma-separated subset of floor,baseline,consentd"
    )
    parser.add_argument(
        "--keep-wavs",
        type=Path,
        metavar="DIR",
        help="move the measured recordings to DIR/<cps>cps-<media>-run<n>-<path>/ (not deleted)",
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="with --steps: run each step this often (medians)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs: at least 1")
    if args.keep_wavs is not None:
        # Checked before the first call: a folder that cannot be made would
        # otherwise fail the run after its first step's measurements.
        try:
            args.keep_wavs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"--keep-wavs {args.keep_wavs}: {exc.strerror or exc}")
    if args.steps and args.runs > 1:
        args.steps = [replace(spec, runs=args.runs) for spec in args.steps]
    paths = tuple(p for p in args.paths.split(",") if p)
    unknown = set(paths) - {p.name for p in PATHS}
    if unknown:
        parser.error(f"--paths: unknown {', '.join(sorted(unknown))}")
    try:
        asyncio.run(run(args.quick, args.keep, args.steps, paths, args.keep_wavs))
    except KeyboardInterrupt:
        sys.exit(130)
    except asyncio.CancelledError:  # SIGTERM (see _cancel_on_sigterm)
        sys.exit(143)


if __name__ == "__main__":
    main()

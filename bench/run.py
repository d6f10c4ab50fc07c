"""``make bench``: rising call rates through the floor, the dialplan baseline and consentd.

Each step runs the three paths one after another at the same rate, so that
they meet the same machine in the same minute. Media steps send a continuous
tone and key 3 in one RTP stream per call (steady, then jittered as a poor
mobile link sends it) and judge the kept recordings; signalling-only steps
send the key alone, at higher rates, and measure call-control capacity.

Output: ``bench/results/<UTC date-time>.json`` and a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.media import MediaPlan, pcap_file
from bench.report import markdown, summarise
from bench.sipp_load import REPO, LoadPlan, run_load
from bench.step import PATHS, Path_, ProcessSampler, StepMeasure, measure_step, wait_idle

STACK = REPO / "scripts" / "stack.sh"
POLICIES = REPO / "bench" / "policies.yaml"
RESULTS = REPO / "bench" / "results"
PRESS_AT_MS = 2000


@dataclass(frozen=True)
class StepSpec:
    cps: float
    media: str  # "steady", "jitter" or "none"
    seconds: float  # how long calls are offered
    call_ms: int


def plan_steps(quick: bool) -> list[StepSpec]:
    if quick:
        return [
            StepSpec(5, "steady", 4, 6000),
            StepSpec(5, "jitter", 4, 6000),
            StepSpec(50, "none", 3, 4000),
        ]
    media = [StepSpec(cps, kind, 10, 10_000) for cps in (5, 10, 20, 40, 80) for kind in ("steady", "jitter")]
    signalling = [StepSpec(cps, "none", 10, 4000) for cps in (100, 200, 400, 800)]
    return media + signalling


def _load_plan(spec: StepSpec, path: Path_, media_dir: Path) -> LoadPlan:
    calls = max(1, int(spec.cps * spec.seconds))
    if spec.media == "none":
        pcap = pcap_file(MediaPlan(200, 0, speech=False), media_dir)
        return LoadPlan(path.did, spec.cps, calls, pcap, lead_ms=1500, hold_ms=spec.call_ms - 1500)
    media = MediaPlan(spec.call_ms, PRESS_AT_MS, jitter=spec.media == "jitter")
    return LoadPlan(path.did, spec.cps, calls, pcap_file(media, media_dir), 0, spec.call_ms)


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


async def run(quick: bool, keep: bool) -> Path:
    for tool in ("sipp", "chroot"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed; run `make setup`")
    started = time.monotonic()
    print(f"==> bench: stack up with {POLICIES.relative_to(REPO)}", flush=True)
    subprocess.run([str(STACK), "up", str(POLICIES)], check=True, stdout=subprocess.DEVNULL)
    steps: list[StepMeasure] = []
    specs = plan_steps(quick)
    try:
        with tempfile.TemporaryDirectory(prefix="consentd-bench-") as tmp:
            media_dir = Path(tmp) / "media"
            for n, spec in enumerate(specs, 1):
                for path in PATHS:
                    await wait_idle()
                    plan = _load_plan(spec, path, media_dir)
                    label = f"[{n}/{len(specs)}] {path.name:8} {spec.cps:g} cps, media {spec.media}"
                    print(f"==> {label}: {plan.calls} calls of {plan.call_ms / 1000:g} s", flush=True)
                    work = Path(tmp) / f"{n}-{path.name}"
                    async with ProcessSampler() as sampler:
                        load = await run_load(plan, work)
                    step = await measure_step(path, spec.media, load, PRESS_AT_MS, sampler)
                    steps.append(step)
                    print(f"    {step.one_line()}", flush=True)
    finally:
        if not keep:
            subprocess.run([str(STACK), "down"], check=False, stdout=subprocess.DEVNULL)
    result = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "steps": [s.as_json() for s in steps],
    }
    result["summary"] = summarise(result["steps"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}{'-quick' if quick else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"==> bench: results in {out.relative_to(REPO)} ({result['duration_s']:.0f} s)")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three short steps (under 3 min)")
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    args = parser.parse_args(argv)
    asyncio.run(run(args.quick, args.keep))


if __name__ == "__main__":
    main()

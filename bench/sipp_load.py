"""One SIPp load step: run the bench caller at a rate and read back what it did.

SIPp's own files are the generator's record: ``-trace_stat`` for totals and
failures, ``-trace_rtt`` for every call's setup time, length and hang-up answer, and
``-trace_err`` for the SIP answers that failed a call. From them the step is
checked against its plan (rate and call length), so that a step where SIPp
fell behind is marked generator-limited instead of blamed on the PBX.
"""

from __future__ import annotations

import asyncio
import csv
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "sipp-scenarios" / "bench-caller.xml"
#: bench-caller.xml picks one of media0 ... media7 per call.
MEDIA_SLOTS = 8
_SIP_STATUS = re.compile(r"^SIP/2\.0 (\d{3} [^\r\n]*)", re.MULTILINE)


@dataclass(frozen=True)
class LoadPlan:
    did: str
    cps: float
    calls: int
    pcap: Path
    lead_ms: int
    hold_ms: int
    #: More patterns of the same media (other jitter seeds): bench-caller.xml
    #: plays one of ``pcaps`` per call, at random.
    variants: tuple[Path, ...] = ()

    @property
    def pcaps(self) -> tuple[Path, ...]:
        return (self.pcap, *self.variants)

    @property
    def call_ms(self) -> int:
        return self.lead_ms + self.hold_ms


@dataclass
class LoadResult:
    plan: LoadPlan
    started: float
    finished: float
    returncode: int
    offered: int = 0
    completed: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    setup_ms: list[float] = field(default_factory=list)
    #: ACK to BYE: SIPp's own schedule (its pauses), nothing the far end does.
    call_ms: list[float] = field(default_factory=list)
    #: BYE to its 200 OK: how long the far end took to hang up.
    bye_ms: list[float] = field(default_factory=list)
    realised_cps: float = 0.0

    @property
    def generator_limited(self) -> bool:
        """SIPp did not keep the schedule: rate under 90 %, or calls 15 % longer.

        Both are SIPp's own doing: the rate counts INVITEs sent, and a call's
        length ends when SIPp sends the BYE. A slow answer to the INVITE or the
        BYE is the path's lag (measured as setup and hang-up time), not the
        generator's.
        """
        plan = self.plan
        slow_rate = self.realised_cps < 0.9 * plan.cps
        long_calls = bool(self.call_ms) and statistics.median(self.call_ms) > 1.15 * plan.call_ms
        return slow_rate or long_calls


async def run_load(
    plan: LoadPlan,
    workdir: Path,
    *,
    port: int = 5300,
    target: str = "127.0.0.1:5060",
    scenario: Path = SCENARIO,
) -> LoadResult:
    """``target`` and ``scenario``: tests/cluster calls through its SIP proxy."""
    workdir.mkdir(parents=True, exist_ok=True)
    limit = max(50, int(plan.cps * plan.call_ms / 1000 * 3))
    timeout_s = plan.calls / plan.cps + plan.call_ms / 1000 + 60
    args = [
        "sipp", target, "-sf", str(scenario), "-s", plan.did,
        "-i", "127.0.0.1", "-p", str(port), "-mp", str(port + 10000),
        "-r", f"{plan.cps:g}", "-m", str(plan.calls), "-l", str(limit),
        "-nostdin", "-timeout", f"{int(timeout_s)}s",
        "-recv_timeout", "30000", "-max_socket", "60000",
        "-key", "media", str(plan.pcap), *_media_keys(plan.pcaps),
        "-set", "lead", str(plan.lead_ms), "-set", "hold", str(plan.hold_ms),
        "-trace_stat", "-stf", "stat.csv", "-fd", "1",
        "-trace_rtt", "-rtt_freq", "1", "-trace_err", "-error_file", "errors.log",
    ]  # fmt: skip
    started = time.time()
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=workdir,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout_s + 30)
    except TimeoutError:
        proc.kill()
        _, err = await proc.communicate()
    except BaseException:
        # The bench was stopped (Ctrl-C, SIGTERM): SIPp would otherwise go on
        # calling the stack being taken down, for up to its whole plan.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    result = LoadResult(plan, started, time.time(), proc.returncode or 0)
    _read_stats(result, workdir / "stat.csv")
    _read_rtt(result, workdir)
    _read_errors(result, workdir / "errors.log", err.decode(errors="replace"))
    return result


def _media_keys(pcaps: tuple[Path, ...]) -> list[str]:
    """``-key media0 A -key media1 B ...`` for the scenario's eight media slots,
    the patterns repeated to fill them (one pattern: the same file eight times)."""
    if MEDIA_SLOTS % len(pcaps):
        raise ValueError(f"{len(pcaps)} media patterns do not fill {MEDIA_SLOTS} slots evenly")
    keys: list[str] = []
    for slot in range(MEDIA_SLOTS):
        keys += ["-key", f"media{slot}", str(pcaps[slot % len(pcaps)])]
    return keys


def _read_stats(result: LoadResult, path: Path) -> None:
    if not path.exists():
        result.reasons["sipp wrote no statistics"] += 1
        return
    rows = list(csv.reader(path.open(), delimiter=";"))
    last = dict(zip(rows[0], rows[-1], strict=False))
    result.offered = int(last.get("TotalCallCreated", 0))
    result.completed = int(last.get("SuccessfulCall(C)", 0))
    result.failed = int(last.get("FailedCall(C)", 0))
    # Calls created but neither completed nor failed were cut off when SIPp ended.
    result.failed += max(0, result.offered - result.completed - result.failed)


def _read_rtt(result: LoadResult, workdir: Path) -> None:
    invites: list[float] = []
    for path in workdir.glob("*_rtt.csv"):
        for row in csv.DictReader(path.open(), delimiter=";"):
            if row["rtd_no"] == "setup":
                setup = float(row["response_time_ms"])
                result.setup_ms.append(setup)
                # The row is written at the 200 OK: the INVITE left ``setup`` ms earlier.
                invites.append(float(row["Date_ms"]) - setup)
            elif row["rtd_no"] == "call":
                result.call_ms.append(float(row["response_time_ms"]))
            elif row["rtd_no"] == "bye":
                result.bye_ms.append(float(row["response_time_ms"]))
    if len(invites) > 1:
        span_s = (max(invites) - min(invites)) / 1000
        result.realised_cps = (len(invites) - 1) / span_s if span_s > 0 else 0.0


def _read_errors(result: LoadResult, path: Path, stderr: str) -> None:
    if path.exists():
        text = path.read_text(errors="replace")
        for status in _SIP_STATUS.findall(text):
            if not status.startswith(("1", "2")):
                result.reasons[status] += 1
        for line in text.splitlines():
            if "Aborting call" in line or "timeout" in line.lower():
                result.reasons["timeout (no answer in time)"] += 1
    if result.returncode not in (0, 1) and not result.reasons:
        result.reasons[f"sipp exit {result.returncode}: {stderr.strip()[-200:]}"] += 1

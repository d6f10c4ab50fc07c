"""Place real SIP calls with SIPp: for the demo, the end-to-end tests and load tests.

Each call is one SIPp process running ``sipp-scenarios/caller.xml`` with its
own signalling and media ports, so many calls can run side by side and each
one's exit status tells whether its SIP dialogue completed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

KEYS = ("3", "1", "none")


@dataclass(frozen=True)
class CallPlan:
    """One caller: dial ``did``, wait, press up to two keys, talk, hang up."""

    did: str
    caller: str
    wait1_ms: int = 0
    key1: str = "none"
    wait2_ms: int = 0
    key2: str = "none"
    talk_ms: int = 3000

    def __post_init__(self) -> None:
        for key in (self.key1, self.key2):
            if key not in KEYS:
                raise ValueError(f"key {key!r} not supported by caller.xml (use one of {KEYS})")

    @property
    def duration_s(self) -> float:
        return (self.wait1_ms + self.wait2_ms + self.talk_ms) / 1000


@dataclass(frozen=True)
class CallResult:
    plan: CallPlan
    returncode: int
    started: float
    finished: float
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


async def place_call(
    plan: CallPlan,
    scenario: Path,
    *,
    pbx: str = "127.0.0.1:5060",
    sip_port: int = 5100,
    media_port: int = 16000,
    timeout: float = 60.0,
) -> CallResult:
    args = [
        "sipp", pbx, "-sf", str(scenario), "-s", plan.did, "-m", "1",
        "-i", "127.0.0.1", "-p", str(sip_port), "-mp", str(media_port),
        "-nostdin", "-timeout", f"{int(timeout)}s", "-timeout_error",
        "-set", "caller", plan.caller,
        "-set", "wait1", str(plan.wait1_ms), "-set", "key1", plan.key1,
        "-set", "wait2", str(plan.wait2_ms), "-set", "key2", plan.key2,
        "-set", "talk", str(plan.talk_ms),
    ]  # fmt: skip
    started = time.time()
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout + 10)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return CallResult(plan, proc.returncode, started, time.time(), out.decode(errors="replace"))


async def place_calls(
    plans: Sequence[CallPlan],
    scenario: Path,
    *,
    pbx: str = "127.0.0.1:5060",
    first_sip_port: int = 5100,
    first_media_port: int = 16000,
) -> list[CallResult]:
    """All calls at once, each on its own ports; results in the order of ``plans``."""
    return await asyncio.gather(
        *(
            place_call(
                plan,
                scenario,
                pbx=pbx,
                sip_port=first_sip_port + i,
                media_port=first_media_port + 10 * i,
            )
            for i, plan in enumerate(plans)
        )
    )

"""Place real SIP calls with SIPp: for the demo, the end-to-end tests and load tests.

Each call is one SIPp process running ``sipp-scenarios/caller.xml`` with its
own signalling and media ports, so many calls can run side by side and each
one's exit status tells whether its SIP dialogue completed.
"""

from __future__ import annotations

import asyncio
import math
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from consentd.sipp_media import MediaPlan, alaw, pcap_file

SIPP_PCAPS = Path("/usr/share/sip-tester")
KEYS = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "none")
_LINK_HEADER = {1: 14, 113: 16}  # Ethernet, Linux cooked capture


def tone_file(cache_dir: Path | None = None, freq: float = 440.0) -> Path:
    """One second of a sine tone as raw A-law: what SIPp's rtp_stream plays as speech."""
    directory = cache_dir or Path(tempfile.gettempdir()) / "consentd-sipp"
    target = directory / f"tone{int(freq)}.alaw"
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        data = bytes(alaw(int(6000 * math.sin(2 * math.pi * freq * i / 8000))) for i in range(8000))
        tmp = target.with_suffix(f".tmp{id(data)}")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


def dtmf_pcap(digit: str, press: int = 0, cache_dir: Path | None = None) -> Path:
    """The RFC 2833 pcap for ``digit``; for press > 0 a copy with later RTP stamps.

    Asterisk takes a telephone-event with the same RTP timestamp as a repeat of
    the last one, so pressing the same digit twice needs a re-stamped copy.
    """
    source = SIPP_PCAPS / f"dtmf_2833_{digit}.pcap"
    if press == 0:
        return source
    directory = cache_dir or Path(tempfile.gettempdir()) / "consentd-sipp"
    target = directory / f"dtmf_2833_{digit}_press{press}.pcap"
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        data = restamp_rtp(source.read_bytes(), seq_offset=1000 * press, ts_offset=80_000 * press)
        tmp = target.with_suffix(f".tmp{id(data)}")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


def restamp_rtp(pcap: bytes, *, seq_offset: int, ts_offset: int) -> bytes:
    """Shift RTP sequence numbers and timestamps of every UDP packet in a pcap."""
    magic, _, _, _, _, _, linktype = struct.unpack("<IHHiIII", pcap[:24])
    if magic != 0xA1B2C3D4 or linktype not in _LINK_HEADER:
        raise ValueError(f"unsupported pcap (magic {magic:#x}, link type {linktype})")
    out = bytearray(pcap)
    offset = 24
    while offset + 16 <= len(out):
        captured = struct.unpack_from("<I", out, offset + 8)[0]
        ip = offset + 16 + _LINK_HEADER[linktype]
        rtp = ip + (out[ip] & 0x0F) * 4 + 8  # IPv4 header, then UDP header
        seq, stamp = struct.unpack_from(">HI", out, rtp + 2)
        struct.pack_into(
            ">HI", out, rtp + 2, (seq + seq_offset) & 0xFFFF, (stamp + ts_offset) & 0xFFFFFFFF
        )
        offset += 16 + captured
    return bytes(out)


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
    #: Stream audio for the whole call, as a real caller would (voicemail, agents).
    speak: bool = False

    def __post_init__(self) -> None:
        for key in (self.key1, self.key2):
            if key not in KEYS:
                raise ValueError(f"key {key!r} not supported by caller.xml (use one of {KEYS})")

    @property
    def duration_s(self) -> float:
        return self.hangup_ms / 1000

    @property
    def hangup_ms(self) -> int:
        """When the caller hangs up, in ms after the answer (if the PBX has not first)."""
        return self.wait1_ms + self.wait2_ms + self.talk_ms

    def presses(self) -> list[tuple[int, str]]:
        """(ms after the answer, key) of each press."""
        keys = [(self.wait1_ms, self.key1), (self.wait1_ms + self.wait2_ms, self.key2)]
        return [(at, key) for at, key in keys if key != "none"]


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
    repeat = int(plan.key2 == plan.key1)  # the same digit twice needs a re-stamped pcap
    return await _placed(plan, scenario, pbx, sip_port, media_port, timeout, [
        "-set", "talk", str(plan.talk_ms),
        "-set", "speak", "1" if plan.speak else "0", "-key", "media", str(speech_pcap(plan)),
        *_press_args(1, plan.wait1_ms, "none" if plan.speak else plan.key1, 0),
        *_press_args(2, plan.wait2_ms, "none" if plan.speak else plan.key2, repeat),
    ])  # fmt: skip


async def _placed(
    plan: CallPlan,
    scenario: Path,
    pbx: str,
    sip_port: int,
    media_port: int,
    timeout: float,
    scenario_args: list[str],
) -> CallResult:
    """One caller's SIPp run: ``plan``'s number and caller ID, then ``scenario_args``."""
    args = [
        "sipp", pbx, "-sf", str(scenario), "-s", plan.did, "-m", "1",
        "-i", "127.0.0.1", "-p", str(sip_port), "-mp", str(media_port),
        "-nostdin", "-timeout", f"{int(timeout)}s", "-timeout_error",
        "-set", "caller", plan.caller, *scenario_args,
    ]  # fmt: skip
    started = time.time()
    returncode, output = await _run_sipp(args, timeout + 10)
    return CallResult(plan, returncode, started, time.time(), output)


async def place_info_call(
    plan: CallPlan,
    scenario: Path,
    *,
    pbx: str = "127.0.0.1:5060",
    sip_port: int = 5100,
    media_port: int = 16000,
    timeout: float = 60.0,
) -> CallResult:
    """``plan``'s first key sent as SIP INFO (sipp-scenarios/info-caller.xml), a tone
    streamed all call long: a phone set to send its keys out of band."""
    return await _placed(plan, scenario, pbx, sip_port, media_port, timeout, [
        "-set", "wait", str(plan.wait1_ms), "-set", "key", plan.key1,
        "-set", "talk", str(plan.wait2_ms + plan.talk_ms),
        "-key", "audio", f"{tone_file()},-1,8",
    ])  # fmt: skip


async def _run_sipp(args: list[str], timeout: float) -> tuple[int, str]:
    """Run one SIPp process to its end (killed after ``timeout``): exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def speech_pcap(plan: CallPlan, cache_dir: Path | None = None) -> Path:
    """One RTP stream for a speaking caller: tone all call long, the keys inside it.

    A tone from rtp_stream plus each key from its own pcap were two RTP
    sources with different SSRCs on one call; Asterisk then reported one
    press several times. Phones send one stream.
    """
    keys = []
    if plan.key1 != "none":
        keys.append((plan.wait1_ms, plan.key1))
    if plan.key2 != "none":
        keys.append((plan.wait1_ms + plan.wait2_ms, plan.key2))
    length = plan.wait1_ms + plan.wait2_ms + plan.talk_ms + 1000
    directory = cache_dir or Path(tempfile.gettempdir()) / "consentd-sipp"
    return pcap_file(MediaPlan(length, None, keys=tuple(keys)), directory)


def _press_args(n: int, wait_ms: int, key: str, repeat: int) -> list[str]:
    pcap = dtmf_pcap("3" if key == "none" else key, repeat)
    pressed = "0" if key == "none" else "1"
    return [
        "-set",
        f"wait{n}",
        str(wait_ms),
        "-set",
        f"press{n}",
        pressed,
        "-key",
        f"pcap{n}",
        str(pcap),
    ]


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


@dataclass(frozen=True)
class AgentResult:
    port: int
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def agent_media(length_ms: int, keys: tuple[tuple[int, str], ...]) -> Path:
    """An agent's whole RTP stream: speech from the answer, ``keys`` (ms, key) inside it,
    e.g. ``((3000, "*"), (3300, "1"))`` dials the pause code 3 s after the answer."""
    directory = Path(tempfile.gettempdir()) / "consentd-sipp"
    return pcap_file(MediaPlan(length_ms, None, keys=keys), directory)


def _agent_audio(media: Path | None, freq: float) -> list[str]:
    """SIPp arguments: a looped tone (rtp_stream), or a pcap of the whole stream.

    SIPp opens every pcap a scenario names when it starts, used or not: an
    agent that only talks still names one (a key's pcap, never played).
    """
    tone = ["-key", "audio", f"{tone_file(freq=freq)},-1,8"]
    if media is None:
        return [*tone, "-set", "pcap", "0", "-key", "media", str(dtmf_pcap("3"))]
    return [*tone, "-set", "pcap", "1", "-key", "media", str(media)]


async def run_agent(
    scenario: Path,
    *,
    port: int,
    answer_ms: int,
    media_port: int,
    timeout: float = 60.0,
    media: Path | None = None,
    hangup_ms: int = 0,
) -> AgentResult:
    """One agent's phone (a SIPp UAS on the port its AOR names): ring, answer, talk.

    ``media``: what the agent sends once answered (``agent_media``); else a tone.
    ``hangup_ms``: the agent hangs up this long after its answer; 0 waits for the BYE.
    """
    args = [
        "sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port),
        "-mp", str(media_port), "-m", "1", "-nostdin",
        "-timeout", f"{int(timeout)}s", "-timeout_error",
        "-set", "answer_ms", str(answer_ms), "-set", "hangup_ms", str(hangup_ms),
        *_agent_audio(media, 660),
    ]  # fmt: skip
    returncode, output = await _run_sipp(args, timeout + 10)
    return AgentResult(port, returncode, output)


async def run_ringing_phone(
    scenario: Path, *, port: int, media_port: int, timeout: float = 60.0
) -> AgentResult:
    """An agent's phone that rings and is never picked up (sipp-scenarios/agent-ring.xml):
    it takes the CANCEL, so Asterisk has no INVITE left to retransmit to the port."""
    args = [
        "sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port),
        "-mp", str(media_port), "-m", "1", "-nostdin",
        "-timeout", f"{int(timeout)}s", "-timeout_error",
    ]  # fmt: skip
    returncode, output = await _run_sipp(args, timeout + 10)
    return AgentResult(port, returncode, output)


async def place_agent_call(
    scenario: Path,
    *,
    agent: str,
    password: str,
    number: str,
    port: int,
    media_port: int,
    talk_ms: int,
    header: str | None = None,
    pbx: str = "127.0.0.1:5060",
    timeout: float = 60.0,
    media: Path | None = None,
) -> AgentResult:
    """An agent's phone dials ``number`` from its own port, answering a digest challenge.

    The credentials go into a private copy of the scenario (mode 0600), never
    onto SIPp's command line. ``header`` is one extra header line, e.g.
    ``X-Consentd-Number: +4930100003``.
    """
    text = scenario.read_text().replace("AGENT_USER", agent).replace("AGENT_PASSWORD", password)
    with tempfile.TemporaryDirectory(prefix="consentd-agent-") as directory:
        private = Path(directory) / scenario.name
        private.touch(mode=0o600)
        private.write_text(text)
        args = [
            "sipp", pbx, "-sf", str(private), "-s", number, "-m", "1",
            "-i", "127.0.0.1", "-p", str(port), "-mp", str(media_port),
            "-nostdin", "-timeout", f"{int(timeout)}s", "-timeout_error",
            "-set", "talk", str(talk_ms),
            "-key", "header", header or "X-Consentd-Note: none",
            *_agent_audio(media, 550),
        ]  # fmt: skip
        returncode, output = await _run_sipp(args, timeout + 10)
    return AgentResult(port, returncode, output)

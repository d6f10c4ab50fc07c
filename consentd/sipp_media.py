"""One RTP stream per benchmark call: tone, then key 3 as RFC 2833 events, then tone.

SIPp plays this pcap with ``play_pcap_audio``. Speech and the keypress share one
SSRC, one continuous sequence and one RTP clock, as a phone sends them; mixing
``rtp_stream`` with a second pcap for the digit gave two sources per call that
differ in SSRC and sequence. The *jittered* variant keeps the RTP stamps exact
but sends packets in the bursts measured from SIPp's own ``rtp_stream`` (stalls
of 60-160 ms, then the held packets back to back), as a caller on a poor mobile
or Wi-Fi link does. Both are built deterministically from a seed.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass
from pathlib import Path

PTIME_MS = 20
SAMPLES = 8 * PTIME_MS  # per packet at 8 kHz
ALAW_PT, EVENT_PT = 8, 101
SSRC = 0x0C0FFEE5
TONE_HZ, TONE_AMPLITUDE = 440.0, 6000
#: RFC 2833 event: 6 packets growing in duration, then the end packet 3 times (~160 ms).
EVENT_PACKETS, END_REPEATS = 6, 3


@dataclass(frozen=True)
class MediaPlan:
    """What one caller sends, in milliseconds from the first packet."""

    length_ms: int
    press_at_ms: int | None  # key 3 starts here; None: no key
    jitter: bool = False
    seed: int = 1
    #: False: the key alone (signalling-only steps), played after a lead pause.
    speech: bool = True
    #: More keys as (ms from the first packet, digit "0"-"9", "*" or "#").
    keys: tuple[tuple[int, str], ...] = ()

    def events(self) -> list[tuple[int, int]]:
        """(slot, RFC 2833 event code) of every key, in time order."""
        keys = [*self.keys, *([(self.press_at_ms, "3")] if self.press_at_ms is not None else [])]
        codes = {str(n): n for n in range(10)} | {"*": 10, "#": 11}
        return sorted((at // PTIME_MS, codes[digit]) for at, digit in keys)

    @property
    def press_end_ms(self) -> int | None:
        """When Asterisk sees the digit: the first end packet (DTMF END)."""
        if self.press_at_ms is None:
            return None
        return self.press_at_ms + EVENT_PACKETS * PTIME_MS

    @property
    def name(self) -> str:
        press = "none" if self.press_at_ms is None else str(self.press_at_ms)
        kind = ("jitter" if self.jitter else "steady") if self.speech else "dtmf"
        more = "".join(f"-{at}{'s' if d == '*' else 'h' if d == '#' else d}" for at, d in self.keys)
        return f"call-{self.length_ms}ms-press{press}{more}-{kind}-{self.seed}.pcap"


def alaw(sample: int) -> int:
    """G.711 A-law encoding of one 16-bit sample."""
    sign = 0x80 if sample >= 0 else 0
    magnitude = min(sample if sample >= 0 else -sample - 1, 32635) >> 3
    if magnitude < 32:
        code = magnitude >> 1
    else:
        exponent = magnitude.bit_length() - 5
        code = (exponent << 4) | ((magnitude >> exponent) & 0x0F)
    return (code | sign) ^ 0x55


def _tone_payloads() -> list[bytes]:
    """One second of tone as 50 payloads; 440 Hz repeats every 1/40 s, so it loops cleanly."""
    samples = [
        alaw(int(TONE_AMPLITUDE * math.sin(2 * math.pi * TONE_HZ * i / 8000))) for i in range(8000)
    ]
    return [bytes(samples[i : i + SAMPLES]) for i in range(0, 8000, SAMPLES)]


def rtp_packets(plan: MediaPlan) -> list[tuple[int, bytes]]:
    """(nominal send time in µs, RTP packet) for the whole call.

    A key replaces the tone for its event's 9 packets, as phones send it; each
    key is an event of its own (its own RTP timestamp), so the same digit twice
    is two presses.
    """
    tone = _tone_payloads()
    packets: list[tuple[int, bytes]] = []
    seq = 0
    event_at = {slot + n: (slot, code, n) for slot, code in plan.events() for n in range(9)}
    for slot in range(plan.length_ms // PTIME_MS):
        if slot in event_at:
            start, code, n = event_at[slot]
            end = n >= EVENT_PACKETS
            duration = SAMPLES * min(n + 1, EVENT_PACKETS)
            payload = struct.pack(">BBH", code, (0x80 if end else 0) | 10, duration)
            header = _rtp_header(EVENT_PT, n == 0, seq, start * SAMPLES)
        elif plan.speech:
            payload = tone[slot % len(tone)]
            header = _rtp_header(ALAW_PT, slot == 0 or slot - 1 in event_at, seq, slot * SAMPLES)
        else:
            continue
        packets.append((slot * PTIME_MS * 1000, header + payload))
        seq += 1
    return packets


def _rtp_header(pt: int, marker: bool, seq: int, stamp: int) -> bytes:
    return struct.pack(
        ">BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, stamp & 0xFFFFFFFF, SSRC
    )


def jittered_times(times_us: list[int], seed: int) -> list[int]:
    """Send times with stalls: about 1.5 per second, 60-160 ms each, released as a burst."""
    rng = random.Random(seed)
    out: list[int] = []
    stall_until = 0
    for nominal in times_us:
        if nominal >= stall_until and rng.random() < 1.5 / 50:
            stall_until = nominal + rng.randint(60_000, 160_000)
        sent = max(nominal, stall_until) if nominal < stall_until else nominal
        if out and sent <= out[-1]:
            sent = out[-1] + rng.randint(50, 400)  # back to back, never reordered
        out.append(sent)
    return out


def build_pcap(plan: MediaPlan) -> bytes:
    """A pcap (Ethernet, IPv4, UDP) that SIPp's play_pcap_audio replays as timed."""
    packets = rtp_packets(plan)
    times = [t for t, _ in packets]
    if plan.jitter:
        times = jittered_times(times, plan.seed)
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for when, rtp in zip(times, (p for _, p in packets), strict=True):
        udp = struct.pack(">HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack(
            ">BBHHHBBH4s4s",
            0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]),
        )  # fmt: skip
        frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
        out += struct.pack("<IIII", when // 1_000_000, when % 1_000_000, len(frame), len(frame))
        out += frame
    return bytes(out)


def pcap_file(plan: MediaPlan, directory: Path) -> Path:
    """Build once per plan into ``directory`` (a cache), atomically."""
    target = directory / plan.name
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(build_pcap(plan))
        tmp.replace(target)
    return target

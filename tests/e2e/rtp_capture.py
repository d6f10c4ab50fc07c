"""What a phone hears: the RTP Asterisk sends to given ports, captured on loopback.

SIPp plays audio but does not keep what it receives, so a test that must know
whether a party heard a tone captures that party's incoming RTP itself (an
AF_PACKET socket on ``lo``, root only, like tcpdump) and decodes the A-law.
"""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003
ETH_HEADER = 14
#: RTP payload type 8 (PCMA) only; telephone-events and others are not audio.
PCMA = 8


def alaw_to_linear(byte: int) -> int:
    """G.711 A-law to 16-bit linear (ITU-T G.711)."""
    value = byte ^ 0x55
    sign = value & 0x80
    exponent = (value >> 4) & 0x07
    mantissa = value & 0x0F
    sample = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return sample if sign else -sample


@dataclass
class RtpCapture:
    """Captures, in a thread, the A-law RTP sent to each of ``ports`` (by UDP port)."""

    ports: tuple[int, ...]
    #: Port -> [(seconds since the epoch, 160 samples)] in arrival order.
    audio: dict[int, list[tuple[float, list[int]]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RtpCapture:
        self.audio = {port: [] for port in self.ports}
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
        sock.bind(("lo", 0))
        sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, args=(sock,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    def _run(self, sock: socket.socket) -> None:
        with sock:
            while not self._stop.is_set():
                try:
                    frame, address = sock.recvfrom(2048)
                except TimeoutError:
                    continue
                if address[2] == socket.PACKET_OUTGOING:
                    continue  # loopback shows each packet twice: keep the incoming copy
                self._take(time.time(), frame)

    def _take(self, at: float, frame: bytes) -> None:
        ip = frame[ETH_HEADER:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
            return
        udp = ip[(ip[0] & 0x0F) * 4 :]
        port = struct.unpack("!H", udp[2:4])[0]
        rtp = udp[8:]
        if port not in self.audio or len(rtp) < 12 or rtp[1] & 0x7F != PCMA:
            return
        header = 12 + 4 * (rtp[0] & 0x0F)
        self.audio[port].append((at, [alaw_to_linear(b) for b in rtp[header:]]))


def tone_times(
    frames: list[tuple[float, list[int]]], freq: float, *, share: float = 0.5, rate: int = 8000
) -> list[float]:
    """Arrival times of the frames where ``freq`` carries most of the energy (Goertzel)."""
    coefficient = 2 * math.cos(2 * math.pi * freq / rate)
    found = []
    for at, samples in frames:
        energy = sum(x * x for x in samples)
        if not samples or energy < 1e6:
            continue
        s1 = s2 = 0.0
        for x in samples:
            s1, s2 = x + coefficient * s1 - s2, s1
        power = s1 * s1 + s2 * s2 - coefficient * s1 * s2
        if power / (energy * len(samples) / 2) >= share:
            found.append(at)
    return found


def bursts(times: list[float], gap: float = 0.2) -> list[tuple[float, float]]:
    """Group times into (first, last) runs separated by more than ``gap`` seconds."""
    runs: list[tuple[float, float]] = []
    for at in times:
        if runs and at - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], at)
        else:
            runs.append((at, at))
    return runs

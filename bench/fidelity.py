"""How faithful is one recording? Duration, inserted silence and cuts, read from the WAV.

The benchmark's callers send a continuous tone for the whole call, so any run
of digital silence inside a kept recording was inserted by the recorder, and
any difference between the file's length and the span it covers was lost or
added audio. These are the figures a listener would notice.

Where audio was lost shows in the tone itself: it is one steady 440 Hz sine
from the first packet to the last, so from one 20 ms frame to the next its
phase moves on by exactly 8.8 cycles. A frame that does not continue where
the previous one left off follows a cut (audio dropped, or a delay inserted).
A cut of a whole multiple of 100 ms (5 frames, 44 cycles) keeps the phase
and is not seen: the count is a lower bound. Asterisk's audiohook drops
120 ms at a time when a burst of RTP overfills it, which is seen.
"""

from __future__ import annotations

import array
import math
import operator
import wave
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from consentd.sipp_media import TONE_HZ

#: A sample this close to zero is silence (the tone's amplitude is 6000).
SILENCE_LEVEL = 64
BLOCK_S = 0.1
#: MixMonitor writes 20 ms frames; a cut falls between two of them.
FRAME_S = 0.02
#: A phase step this large (in cycles) from one frame to the next is a cut;
#: A-law quantisation moves it by well under 0.01.
CUT_CYCLES = 0.05
#: Frames quieter than this (amplitude of the fitted tone) carry no tone to follow.
TONE_FLOOR = 1000


@dataclass(frozen=True)
class Fidelity:
    duration_s: float
    #: Share of 100 ms blocks, between the first and the last sound, that are all silence.
    silent_block_share: float
    #: Longest run of silence between the first and the last sound, in ms.
    longest_gap_ms: float
    #: Places where the tone does not continue where it left off (lower bound).
    cuts: int = 0


def measure(path: Path) -> Fidelity:
    """Read a 16-bit mono WAV (what MixMonitor writes for .wav) and measure it."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono, got {wav.getparams()}")
        rate = wav.getframerate()
        samples = array.array("h", wav.readframes(wav.getnframes()))
    return measure_samples(samples, rate)


def _quiet(chunk: array.array[int]) -> bool:
    return not chunk or (max(chunk) <= SILENCE_LEVEL and min(chunk) >= -SILENCE_LEVEL)


def measure_samples(samples: array.array[int], rate: int) -> Fidelity:
    """Scan in 10 ms slices (max/min run in C); look at single samples only at the edges."""
    duration = len(samples) / rate
    step = rate // 100
    slices = [samples[i : i + step] for i in range(0, len(samples), step)]
    loud = [n for n, chunk in enumerate(slices) if not _quiet(chunk)]
    if not loud:
        return Fidelity(duration, 1.0 if samples else 0.0, duration * 1000, 0)
    head, tail = slices[loud[0]], slices[loud[-1]]
    first = loud[0] * step + next(i for i, v in enumerate(head) if abs(v) > SILENCE_LEVEL)
    last = loud[-1] * step + max(i for i, v in enumerate(tail) if abs(v) > SILENCE_LEVEL)
    inner = samples[first : last + 1]
    longest = run = 0
    for n in range(0, len(inner), step):
        chunk = inner[n : n + step]
        if _quiet(chunk):
            run += len(chunk)
            longest = max(longest, run)
            continue
        for value in chunk:
            run = run + 1 if abs(value) <= SILENCE_LEVEL else 0
            longest = max(longest, run)
    block = int(rate * BLOCK_S)
    blocks = range(0, len(inner) - block + 1, block)
    silent = sum(1 for i in blocks if _quiet(inner[i : i + block]))
    shares = silent / len(blocks) if blocks else 0.0
    return Fidelity(duration, shares, longest * 1000 / rate, count_cuts(samples, rate))


@cache
def _tone_reference(rate: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """One frame of the tone's sine and cosine, starting at phase 0."""
    n = int(rate * FRAME_S)
    step = 2 * math.pi * TONE_HZ / rate
    return (
        tuple(math.sin(step * i) for i in range(n)),
        tuple(math.cos(step * i) for i in range(n)),
    )


def _frame_phases(samples: array.array[int], rate: int) -> list[float | None]:
    """Each frame's tone phase in cycles, less what a continuous tone would have
    advanced by then (so a continuous tone gives one constant); None where the
    frame holds no tone."""
    sine, cosine = _tone_reference(rate)
    n = len(sine)
    advance = TONE_HZ * n / rate
    out: list[float | None] = []
    for k, start in enumerate(range(0, len(samples) - n + 1, n)):
        frame = samples[start : start + n]
        s = sum(map(operator.mul, frame, sine))
        c = sum(map(operator.mul, frame, cosine))
        if 2 * math.hypot(s, c) / n < TONE_FLOOR:
            out.append(None)
            continue
        out.append((math.atan2(c, s) / (2 * math.pi) - advance * k) % 1.0)
    return out


def _step(a: float, b: float) -> float:
    return abs((b - a + 0.5) % 1.0 - 0.5)


def count_cuts(samples: array.array[int], rate: int) -> int:
    """How often the tone's phase moves to a new steady level (see the module's
    docstring). A frame garbled by a cut inside it is not a level of its own:
    a cut counts once, where the tone is steady again after it."""
    phases = [p for p in _frame_phases(samples, rate) if p is not None]
    cuts = 0
    for before, at, after in zip(phases, phases[1:], phases[2:], strict=False):
        if _step(before, at) > CUT_CYCLES and _step(at, after) <= CUT_CYCLES:
            cuts += 1
    return cuts

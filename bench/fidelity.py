"""How faithful is one recording? Duration and inserted silence, read from the WAV.

The benchmark's callers send a continuous tone for the whole call, so any run
of digital silence inside a kept recording was inserted by the recorder, and
any difference between the file's length and the span it covers was lost or
added audio. These are the figures a listener would notice.
"""

from __future__ import annotations

import array
import wave
from dataclasses import dataclass
from pathlib import Path

#: A sample this close to zero is silence (the tone's amplitude is 6000).
SILENCE_LEVEL = 64
BLOCK_S = 0.1


@dataclass(frozen=True)
class Fidelity:
    duration_s: float
    #: Share of 100 ms blocks, between the first and the last sound, that are all silence.
    silent_block_share: float
    #: Longest run of silence between the first and the last sound, in ms.
    longest_gap_ms: float


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
        return Fidelity(duration, 1.0 if samples else 0.0, duration * 1000)
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
    return Fidelity(duration, silent / len(blocks) if blocks else 0.0, longest * 1000 / rate)

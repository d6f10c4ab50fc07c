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
    duration = len(samples) / rate
    loud = [i for i in range(len(samples)) if abs(samples[i]) > SILENCE_LEVEL]
    if not loud:
        return Fidelity(duration, 1.0 if samples else 0.0, duration * 1000)
    first, last = loud[0], loud[-1]
    longest = run = 0
    for value in samples[first : last + 1]:
        run = run + 1 if abs(value) <= SILENCE_LEVEL else 0
        longest = max(longest, run)
    block = int(rate * BLOCK_S)
    inner = samples[first : last + 1]
    blocks = [inner[i : i + block] for i in range(0, len(inner) - block + 1, block)]
    silent = sum(1 for b in blocks if max(abs(v) for v in b) <= SILENCE_LEVEL)
    return Fidelity(duration, silent / len(blocks) if blocks else 0.0, longest * 1000 / rate)

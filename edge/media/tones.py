"""Test tones: make a melody of pure tones, and tell which tone a recording holds.

For checking a call end to end without a person listening (``edge demo``, the
tests, an installer at a workbench): one side plays a sequence of tones at
frequencies of its own, the other records, and :func:`heard` says which of
the known frequencies dominates each stretch of the recording.

Detection is the Goertzel algorithm, one frequency at a time: the power of
the recording at frequency *f* over a window of N samples, divided by what a
pure tone of the window's energy would give (N/2 times the energy). That
share is near 1 when the window is a tone at *f*, near 0 for any other tone
or for noise, so a window counts as "tone *f*" only when *f* holds most of it.
Pure Python; a few candidates over a few seconds take well under a second.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Iterable, Sequence

from edge.media.errors import MediaUsageError

RATE = 16000
WINDOW = 0.040
"""Seconds per analysed window: two frames, a 25 Hz resolution."""
MIN_SHARE = 0.6
"""The share of a window's energy one tone must hold to count as heard."""
MIN_RMS = 200.0
"""Quieter windows are silence, whatever their spectrum."""
AMPLITUDE = 0.3
"""Of full scale: loud enough to measure, far from clipping."""
FADE = 0.005
"""Seconds of ramp at each end of a tone, so that notes do not click."""

Note = tuple[float, float]
"""A frequency in Hz (0 for a rest) and a duration in seconds."""


def tone(frequency: float, seconds: float, *, rate: int = RATE) -> bytes:
    """A pure tone (or silence, at 0 Hz) as 16-bit mono PCM, with short ramps."""
    if frequency < 0 or frequency >= rate / 2 or not 0 < seconds <= 60:
        raise MediaUsageError(f"cannot make {seconds} s of {frequency} Hz at {rate} Hz")
    count = round(seconds * rate)
    ramp = max(1, round(FADE * rate))
    peak = AMPLITUDE * 32767
    step = 2 * math.pi * frequency / rate
    samples = array("h", bytes(2 * count))
    if frequency:
        for i in range(count):
            gain = min(1.0, i / ramp, (count - 1 - i) / ramp)
            samples[i] = round(peak * gain * math.sin(step * i))
    return _little_endian(samples).tobytes()


def melody(notes: Iterable[Note], *, rate: int = RATE) -> bytes:
    """The notes one after another."""
    return b"".join(tone(frequency, seconds, rate=rate) for frequency, seconds in notes)


def share(samples: Sequence[int], frequency: float, *, rate: int = RATE) -> float:
    """How much of the window's energy is a tone at ``frequency`` (0 to about 1)."""
    energy = sum(s * s for s in samples)
    if not energy:
        return 0.0
    coefficient = 2 * math.cos(2 * math.pi * frequency / rate)
    previous = before = 0.0
    for sample in samples:
        previous, before = sample + coefficient * previous - before, previous
    power = previous * previous + before * before - coefficient * previous * before
    return 2 * power / (len(samples) * energy)


def strongest(
    samples: Sequence[int], candidates: Sequence[float], *, rate: int = RATE
) -> tuple[float, float] | None:
    """The candidate frequency that holds most of the window, and its share; ``None``
    when the window is silent or no candidate holds :data:`MIN_SHARE` of it."""
    if not candidates:
        raise MediaUsageError("no candidate frequencies")
    if math.sqrt(sum(s * s for s in samples) / max(1, len(samples))) < MIN_RMS:
        return None
    best = max(candidates, key=lambda f: share(samples, f, rate=rate))
    held = share(samples, best, rate=rate)
    return (best, held) if held >= MIN_SHARE else None


def heard(pcm: bytes, candidates: Sequence[float], *, rate: int = RATE) -> list[float]:
    """The tones a recording holds, in order, each once per run of windows it dominates."""
    samples = _little_endian(array("h", pcm[: len(pcm) & ~1]))
    size = round(WINDOW * rate)
    found: list[float] = []
    for start in range(0, len(samples) - size + 1, size):
        result = strongest(samples[start : start + size], candidates, rate=rate)
        if result is not None and (not found or found[-1] != result[0]):
            found.append(result[0])
    return found


def _little_endian(samples: array[int]) -> array[int]:
    """PCM is little-endian; ``array`` is host order (a no-op on every board we ship)."""
    if sys.byteorder == "big":
        samples.byteswap()
    return samples

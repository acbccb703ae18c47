"""Resampling with libsamplerate: lengths, pitch and level kept, frames joined without clicks."""

import itertools
import math
import struct

import pytest

from edge.media.errors import MediaUsageError
from edge.media.resample import Resampler


def tone(rate: int, seconds: float, hz: float = 1000.0, level: int = 10000) -> list[int]:
    return [int(level * math.sin(2 * math.pi * hz * n / rate)) for n in range(int(rate * seconds))]


def pcm(samples: list[int]) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def samples(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 2}h", data))


def crossings(values: list[int]) -> int:
    return sum(1 for a, b in itertools.pairwise(values) if (a < 0) != (b < 0))


@pytest.mark.parametrize(("rate_in", "rate_out"), [(48000, 16000), (44100, 16000), (16000, 48000)])
def test_a_tone_keeps_its_pitch_and_level_in_20ms_frames(rate_in: int, rate_out: int) -> None:
    resampler = Resampler(rate_in, rate_out)
    source = tone(rate_in, 1.0)
    step = rate_in // 50  # 20 ms
    out: list[int] = []
    for start in range(0, len(source) - step + 1, step):
        out += samples(resampler.process(pcm(source[start : start + step])))
    assert abs(len(out) - rate_out) <= rate_out * 0.01
    steady = out[len(out) // 10 :]  # past the filter's start-up
    # 1 kHz: two zero crossings per cycle, whatever the rate.
    seconds = len(steady) / rate_out
    assert abs(crossings(steady) / seconds - 2000) < 20
    peak = max(abs(v) for v in steady)
    assert 9000 < peak < 11000
    # No clicks where frames join: no jump larger than the tone's own slope allows.
    slope = 2 * math.pi * 1000 / rate_out * 10000
    assert max(abs(a - b) for a, b in itertools.pairwise(steady)) < 1.2 * slope


def test_bad_input_is_our_callers_mistake() -> None:
    resampler = Resampler(48000, 16000)
    with pytest.raises(MediaUsageError):
        resampler.process(b"\x00\x01\x02")
    with pytest.raises(MediaUsageError):
        resampler.process(bytes(2 * 48001))
    with pytest.raises(MediaUsageError):
        Resampler(48000, 16000, channels=3)
    resampler.close()
    with pytest.raises(MediaUsageError):
        resampler.process(b"\x00\x00")

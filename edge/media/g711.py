"""G.711 μ-law and A-law (ITU-T G.711), for gateways and peers without Opus.

Python's ``audioop`` did this until it left the standard library (3.13), so
it is here, written from the segment description of the recommendation as
the classic public-domain reference implements it: μ-law works on the top 14
bits of a sample with a bias of 33, A-law on the top 13 bits; each is a sign,
a 3-bit segment (exponent) and a 4-bit step, inverted on the wire (μ-law
inverts all bits, A-law every other one, 0x55).

Speed: every 16-bit sample has its code looked up in a 64 KiB table built at
import, and every code its sample in a 256-entry table, so a 20 ms frame at
8 kHz (160 samples) is one C-level ``map`` each way. PCM is signed 16-bit
little-endian, as everywhere in edge.

A call in G.711 (:class:`Narrowband`): the call's audio runs at 16 kHz, so
each 20 ms frame is resampled down to 8 kHz (160 samples, libsamplerate,
:mod:`edge.media.resample`) and coded into 160 bytes; a received frame is
decoded and resampled back up. Both resamplers keep their filter state from
frame to frame, so frames join without clicks. A lost frame is concealed by
repeat-and-fade: the last frame heard is played again, 6 dB quieter each
time, and silence follows after :data:`FADE_FRAMES` frames; the concealed
frames go through the same up-sampler, so the join stays smooth. G.711 has
no copies of earlier frames and no FEC: it is the gateway's codec, and a
peer that speaks it expects plain frames.
"""

from __future__ import annotations

import sys
from array import array
from enum import Enum

from edge.media.errors import MediaUsageError
from edge.media.resample import Resampler

_SEG_ULAW_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_ALAW_END = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)
_ULAW_BIAS_14 = 0x21
_ULAW_CLIP_14 = 8159
_ULAW_BIAS_16 = 0x84

NARROW_RATE = 8000
"""G.711's sample rate."""
WIDE_RATE = 16000
"""The rate of the call's audio on both sides of the codec."""
FRAME_CODES = 160
"""Bytes of one 20 ms G.711 frame: a code per 8 kHz sample."""
FADE_FRAMES = 4
"""Concealed frames played, each at half the level of the one before, before silence."""


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for segment, end in enumerate(ends):
        if value <= end:
            return segment
    return len(ends)


def _ulaw_encode(sample: int) -> int:
    value = sample >> 2
    mask = 0xFF
    if value < 0:
        value, mask = -value, 0x7F
    value = min(value, _ULAW_CLIP_14) + _ULAW_BIAS_14
    segment = _segment(value, _SEG_ULAW_END)
    if segment >= 8:
        return 0x7F ^ mask
    return ((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask


def _alaw_encode(sample: int) -> int:
    value = sample >> 3
    mask = 0xD5
    if value < 0:
        value, mask = -value - 1, 0x55
    segment = _segment(value, _SEG_ALAW_END)
    if segment >= 8:
        return 0x7F ^ mask
    step = (value >> 1) if segment < 2 else (value >> segment)
    return ((segment << 4) | (step & 0x0F)) ^ mask


def _ulaw_decode(code: int) -> int:
    code = ~code & 0xFF
    value = (((code & 0x0F) << 3) + _ULAW_BIAS_16) << ((code & 0x70) >> 4)
    return _ULAW_BIAS_16 - value if code & 0x80 else value - _ULAW_BIAS_16


def _alaw_decode(code: int) -> int:
    code ^= 0x55
    value = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        value += 8
    else:
        value = (value + 0x108) << (segment - 1)
    return value if code & 0x80 else -value


def _signed(index: int) -> int:
    return index - 0x10000 if index & 0x8000 else index


_ULAW_ENCODE = bytes(_ulaw_encode(_signed(i)) for i in range(0x10000))
_ALAW_ENCODE = bytes(_alaw_encode(_signed(i)) for i in range(0x10000))
_ULAW_DECODE = tuple(_ulaw_decode(code) for code in range(256))
_ALAW_DECODE = tuple(_alaw_decode(code) for code in range(256))
_LITTLE = sys.byteorder == "little"


def _samples(pcm: bytes) -> memoryview | array[int]:
    if len(pcm) % 2:
        raise MediaUsageError(f"16-bit PCM has an even number of bytes, not {len(pcm)}")
    if _LITTLE:
        return memoryview(pcm).cast("H")
    swapped = array("H", pcm)
    swapped.byteswap()
    return swapped


def _pcm(samples: array[int]) -> bytes:
    if not _LITTLE:
        samples.byteswap()
    return samples.tobytes()


def ulaw_encode(pcm: bytes) -> bytes:
    """16-bit little-endian PCM to μ-law, one byte per sample."""
    return bytes(map(_ULAW_ENCODE.__getitem__, _samples(pcm)))


def alaw_encode(pcm: bytes) -> bytes:
    """16-bit little-endian PCM to A-law, one byte per sample."""
    return bytes(map(_ALAW_ENCODE.__getitem__, _samples(pcm)))


def ulaw_decode(data: bytes) -> bytes:
    """μ-law to 16-bit little-endian PCM. Every byte is a valid code."""
    return _pcm(array("h", map(_ULAW_DECODE.__getitem__, data)))


def alaw_decode(data: bytes) -> bytes:
    """A-law to 16-bit little-endian PCM. Every byte is a valid code."""
    return _pcm(array("h", map(_ALAW_DECODE.__getitem__, data)))


class Law(Enum):
    """Which G.711 companding law a call uses."""

    MU = "pcmu"
    A = "pcma"


_CODERS = {
    Law.MU: (ulaw_encode, ulaw_decode),
    Law.A: (alaw_encode, alaw_decode),
}


class _Framed:
    """A resampler that hands back exactly ``out_bytes`` per frame it is given."""

    def __init__(self, rate_in: int, rate_out: int, out_bytes: int) -> None:
        self._resampler = Resampler(rate_in, rate_out)
        self._held = bytearray()
        self._out_bytes = out_bytes

    def convert(self, pcm: bytes) -> bytes:
        self._held += self._resampler.process(pcm)
        if len(self._held) < self._out_bytes:
            # The filter holds its first few samples back: lead with silence, once.
            self._held[:0] = bytes(self._out_bytes - len(self._held))
        out = bytes(self._held[: self._out_bytes])
        del self._held[: self._out_bytes]
        # The ratio is exact, so only a sample or two is ever left over; never more
        # than a frame, so the delay cannot creep up.
        del self._held[: max(0, len(self._held) - self._out_bytes)]
        return out

    def close(self) -> None:
        self._resampler.close()


class Narrowband:
    """One call's G.711 both ways; see the module docstring. :meth:`close` it at the end.

    :meth:`encode` takes a 20 ms frame of 16 kHz PCM (640 bytes) and gives
    :data:`FRAME_CODES` bytes; :meth:`decode` takes exactly that many (the caller
    checks the length of a peer's payload first) and gives 640 bytes of 16 kHz PCM;
    :meth:`conceal` gives the 640 bytes to play for a frame that never came.
    """

    def __init__(self, law: Law) -> None:
        self.law = law
        self._encode, self._decode = _CODERS[law]
        wide_bytes = 2 * FRAME_CODES * WIDE_RATE // NARROW_RATE
        self._down = _Framed(WIDE_RATE, NARROW_RATE, 2 * FRAME_CODES)
        self._up = _Framed(NARROW_RATE, WIDE_RATE, wide_bytes)
        self._wide_bytes = wide_bytes
        self._last = bytes(2 * FRAME_CODES)
        """The last frame heard, at 8 kHz: what concealment repeats."""
        self._faded = 0

    def encode(self, pcm: bytes) -> bytes:
        if len(pcm) != self._wide_bytes:
            raise MediaUsageError(f"a frame is {self._wide_bytes} bytes of PCM, not {len(pcm)}")
        return self._encode(self._down.convert(pcm))

    def decode(self, codes: bytes) -> bytes:
        if len(codes) != FRAME_CODES:
            raise MediaUsageError(f"a G.711 frame is {FRAME_CODES} bytes, not {len(codes)}")
        self._last, self._faded = self._decode(codes), 0
        return self._up.convert(self._last)

    def conceal(self) -> bytes:
        self._faded += 1
        return self._up.convert(_faded(self._last, self._faded))

    def close(self) -> None:
        self._down.close()
        self._up.close()


def _faded(pcm: bytes, times: int) -> bytes:
    """``pcm`` at half its level ``times`` times over; silence past :data:`FADE_FRAMES`."""
    if times > FADE_FRAMES:
        return bytes(len(pcm))
    samples = array("h", pcm)
    if not _LITTLE:
        samples.byteswap()
    quieter = array("h", (sample >> times for sample in samples))
    return _pcm(quieter)

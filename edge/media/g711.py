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
"""

from __future__ import annotations

import sys
from array import array

from edge.media.errors import MediaUsageError

_SEG_ULAW_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_ALAW_END = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)
_ULAW_BIAS_14 = 0x21
_ULAW_CLIP_14 = 8159
_ULAW_BIAS_16 = 0x84


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

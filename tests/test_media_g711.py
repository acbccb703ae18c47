"""G.711 against the codec Python used to ship (audioop, still in 3.11 and 3.12) and by hand."""

import math
import struct
import warnings

import pytest

from edge.media.errors import MediaUsageError
from edge.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

EVERY_SAMPLE = struct.pack("<65536h", *range(-32768, 32768))
EVERY_CODE = bytes(range(256))


def reference() -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop  # removed in Python 3.13: then only the hand checks run
        except ImportError:
            pytest.skip("audioop is gone from this Python (3.13+)")
    return audioop


def test_known_codes() -> None:
    samples = struct.pack("<7h", 0, -1, 100, -100, 32767, -32768, 1000)
    assert ulaw_encode(samples).hex() == "ff7ef2728000ce"
    assert alaw_encode(samples).hex() == "d555d353aa2afa"
    assert struct.unpack("<4h", ulaw_decode(bytes([0xFF, 0x80, 0x00, 0x7F]))) == (
        0,
        32124,
        -32124,
        0,
    )


def test_every_sample_matches_the_old_standard_library() -> None:
    audioop = reference()
    assert ulaw_encode(EVERY_SAMPLE) == audioop.lin2ulaw(EVERY_SAMPLE, 2)  # type: ignore[attr-defined]
    assert alaw_encode(EVERY_SAMPLE) == audioop.lin2alaw(EVERY_SAMPLE, 2)  # type: ignore[attr-defined]


def test_every_code_matches_the_old_standard_library() -> None:
    audioop = reference()
    assert ulaw_decode(EVERY_CODE) == audioop.ulaw2lin(EVERY_CODE, 2)  # type: ignore[attr-defined]
    assert alaw_decode(EVERY_CODE) == audioop.alaw2lin(EVERY_CODE, 2)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)]
)
def test_a_tone_survives_with_telephone_quality(encode: object, decode: object) -> None:
    tone = [int(12000 * math.sin(2 * math.pi * 440 * n / 8000)) for n in range(160)]
    pcm = struct.pack("<160h", *tone)
    back = struct.unpack("<160h", decode(encode(pcm)))  # type: ignore[operator]
    noise = sum((a - b) ** 2 for a, b in zip(tone, back, strict=True))
    signal = sum(a * a for a in tone)
    assert 10 * math.log10(signal / noise) > 30  # G.711 gives about 38 dB SNR here


def test_every_code_decodes_to_a_sample_that_encodes_back_to_it() -> None:
    # μ-law has two zeros (0x7F "minus zero" and 0xFF); zero encodes as 0xFF.
    again = ulaw_encode(ulaw_decode(EVERY_CODE))
    assert [code for code in EVERY_CODE if again[code] != code] == [0x7F]
    assert alaw_encode(alaw_decode(EVERY_CODE)) == EVERY_CODE


def test_odd_pcm_is_our_callers_mistake() -> None:
    with pytest.raises(MediaUsageError):
        ulaw_encode(b"\x00\x01\x02")

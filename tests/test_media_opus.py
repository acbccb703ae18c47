"""The libopus binding against the real libopus: round trips, DTX, FEC, bad input."""

from __future__ import annotations

import gc
import math
import random
import struct
from array import array
from collections.abc import Iterator

import pytest

from edge.errors import LocalError, RemoteError
from edge.media.errors import MediaUsageError, OpusDecodeError, OpusUnavailable
from edge.media.opus import (
    MAX_PACKET_BYTES,
    Application,
    Decoder,
    Encoder,
    _byteswap16,
    _open_library,
    packet_samples,
)
from edge.wire.codes import ErrorCode

RATE = 16000
FRAME = 320  # 20 ms at 16 kHz
OPUS_INVALID_PACKET = -4


def sine(seconds: float, freq: float = 440.0, amplitude: int = 12000) -> array[int]:
    count = int(RATE * seconds)
    return array(
        "h", (round(amplitude * math.sin(2 * math.pi * freq * i / RATE)) for i in range(count))
    )


def speechlike(seconds: float) -> array[int]:
    """Eight harmonics of a wandering pitch under a 3 Hz syllable envelope.

    Unlike a steady tone it changes from frame to frame, so concealment that
    extrapolates the previous frame gets it visibly wrong.
    """
    out = array("h")
    phase = 0.0
    for i in range(int(RATE * seconds)):
        t = i / RATE
        phase += 2 * math.pi * (140 + 40 * math.sin(2 * math.pi * 1.3 * t)) / RATE
        envelope = 0.5 - 0.5 * math.cos(2 * math.pi * 3 * t)
        out.append(round(9000 * envelope * sum(math.sin(k * phase) / k for k in range(1, 9))))
    return out


def frames(pcm: array[int], size: int = FRAME) -> Iterator[bytes]:
    for start in range(0, len(pcm) - size + 1, size):
        yield pcm[start : start + size].tobytes()


def samples(pcm: bytes) -> array[int]:
    return array("h", pcm)


def energy(values: array[int]) -> float:
    return float(sum(v * v for v in values))


def error_energy(got: array[int], want: array[int]) -> float:
    return float(sum((a - b) ** 2 for a, b in zip(got, want, strict=True)))


def normalised_correlation(a: array[int], b: array[int]) -> float:
    norm = math.sqrt(energy(a) * energy(b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


def voip_encoder(bitrate: int = 24000) -> Encoder:
    encoder = Encoder(RATE, 1, Application.VOIP)
    encoder.set_bitrate(bitrate)
    return encoder


# --- round trip ---------------------------------------------------------------


def test_sine_survives_encode_and_decode() -> None:
    """One second of 440 Hz through 24 kbit/s comes back with its shape and level.

    The codec delays its output by a few milliseconds, so the decoded signal is
    compared at the lag (up to 15 ms) that correlates best. For a pure tone,
    lags a period apart score alike: this proves the waveform and its level,
    not the exact size of the delay.
    """
    original = sine(1.0)
    decoded = array("h")
    with voip_encoder() as encoder, Decoder(RATE, 1) as decoder:
        for pcm in frames(original):
            decoded.extend(samples(decoder.decode(encoder.encode(pcm, FRAME), FRAME)))
    assert len(decoded) == len(original)
    window = len(original) - 240
    best = max(
        normalised_correlation(original[:window], decoded[lag : lag + window]) for lag in range(240)
    )
    assert best > 0.9
    level = math.sqrt(energy(decoded) / energy(original))
    assert 0.7 < level < 1.3


def test_stereo_frames_round_trip_in_size() -> None:
    left_right = array("h", (v for s in sine(0.02) for v in (s, -s)))
    with Encoder(RATE, 2) as encoder, Decoder(RATE, 2) as decoder:
        packet = encoder.encode(left_right.tobytes(), FRAME)
        assert len(decoder.decode(packet, FRAME)) == FRAME * 2 * 2


def test_bitrate_reads_back_what_was_set() -> None:
    with voip_encoder(bitrate=32000) as encoder:
        assert encoder.bitrate == 32000
        encoder.set_complexity(3)
        encoder.set_bitrate(12000)
        assert encoder.bitrate == 12000


# --- DTX, concealment, FEC ------------------------------------------------------


def test_dtx_sends_tiny_packets_on_silence() -> None:
    silence = bytes(FRAME * 2)
    with voip_encoder() as plain, voip_encoder() as dtx, Decoder(RATE, 1) as decoder:
        dtx.set_dtx(True)
        plain_sizes = [len(plain.encode(silence, FRAME)) for _ in range(50)]
        dtx_packets = [dtx.encode(silence, FRAME) for _ in range(50)]
        # The encoder needs a few hundred milliseconds of silence to decide.
        tiny = [p for p in dtx_packets[20:] if len(p) <= 2]
        assert len(tiny) >= 25
        assert min(plain_sizes) > 2
        for packet in dtx_packets:
            decoded = samples(decoder.decode(packet, FRAME))
            # Comfort noise, not necessarily zeros, but a full frame and quiet.
            assert len(decoded) == FRAME
            assert max(map(abs, decoded)) < 100


def test_concealment_fills_exactly_the_missing_duration() -> None:
    with voip_encoder() as encoder, Decoder(RATE, 1) as decoder:
        for pcm in frames(sine(0.1)):
            decoder.decode(encoder.encode(pcm, FRAME), FRAME)
        assert len(decoder.decode(None, FRAME)) == FRAME * 2
        assert len(decoder.decode(None, 40)) == 40 * 2


def encode_speech(*, fec: bool) -> list[bytes]:
    with voip_encoder() as encoder:
        encoder.set_inband_fec(fec)
        encoder.set_packet_loss_perc(20 if fec else 0)
        return [encoder.encode(pcm, FRAME) for pcm in frames(speechlike(1.0))]


def decode_with_loss(packets: list[bytes], lost: int, *, fec: bool) -> array[int]:
    """Decode up to the lost packet, then recover it by FEC or by concealment."""
    with Decoder(RATE, 1) as decoder:
        for packet in packets[:lost]:
            decoder.decode(packet, FRAME)
        if fec:
            return samples(decoder.decode(packets[lost + 1], FRAME, fec=True))
        return samples(decoder.decode(None, FRAME))


def decode_all(packets: list[bytes]) -> list[array[int]]:
    with Decoder(RATE, 1) as decoder:
        return [samples(decoder.decode(packet, FRAME)) for packet in packets]


@pytest.mark.parametrize("lost", [20, 40])
def test_inband_fec_recovers_a_lost_frame(lost: int) -> None:
    """A frame lost mid-syllable comes back from the copy in the next packet.

    The yardstick is the same frame from a decoder that lost nothing, so no
    delay alignment is needed; silence would score an error of 1.0 relative
    to it. Beating plain concealment by a wide margin shows that the in-band
    copy was actually used. This covers one isolated loss with the copy
    present; it says nothing about bursts or about real speech.
    """
    packets = encode_speech(fec=True)
    wanted = decode_all(packets)[lost]
    recovered = decode_with_loss(packets, lost, fec=True)
    concealed = decode_with_loss(packets, lost, fec=False)
    fec_error = error_energy(recovered, wanted) / energy(wanted)
    plc_error = error_energy(concealed, wanted) / energy(wanted)
    assert fec_error < 0.1
    assert fec_error * 4 < plc_error


def test_fec_without_inband_copy_falls_back_to_concealment() -> None:
    """Control for the test above: with FEC off, fec=True is plain concealment."""
    packets = encode_speech(fec=False)
    assert decode_with_loss(packets, 20, fec=True) == decode_with_loss(packets, 20, fec=False)


def test_fec_needs_the_next_packet() -> None:
    with Decoder(RATE, 1) as decoder, pytest.raises(MediaUsageError):
        decoder.decode(None, FRAME, fec=True)


# --- bad input ---------------------------------------------------------------


@pytest.mark.parametrize("length", [0, FRAME * 2 - 2, FRAME * 2 + 2, FRAME])
def test_encode_rejects_pcm_of_the_wrong_length(length: int) -> None:
    with voip_encoder() as encoder, pytest.raises(MediaUsageError, match="pcm holds"):
        encoder.encode(bytes(length), FRAME)


@pytest.mark.parametrize("frame_size", [0, -320, 100, 321, 1920])
def test_encode_rejects_frame_sizes_opus_cannot_code(frame_size: int) -> None:
    with voip_encoder() as encoder, pytest.raises(MediaUsageError, match="frame_size"):
        encoder.encode(bytes(max(frame_size, 0) * 2), frame_size)


@pytest.mark.parametrize("frame_size", [40, 80, 160, 320, 640, 960])
def test_encode_accepts_every_opus_frame_duration(frame_size: int) -> None:
    with voip_encoder() as encoder:
        packet = encoder.encode(bytes(frame_size * 2), frame_size)
        assert packet_samples(packet, RATE) == frame_size


@pytest.mark.parametrize("frame_size", [0, 39, 41, 1921])
def test_decode_rejects_frame_sizes_off_the_grid(frame_size: int) -> None:
    with Decoder(RATE, 1) as decoder, pytest.raises(MediaUsageError, match="frame_size"):
        decoder.decode(None, frame_size)


@pytest.mark.parametrize(("sample_rate", "channels"), [(44100, 1), (0, 1), (16000, 0), (16000, 3)])
def test_coders_reject_unsupported_formats(sample_rate: int, channels: int) -> None:
    with pytest.raises(MediaUsageError):
        Encoder(sample_rate, channels)
    with pytest.raises(MediaUsageError):
        Decoder(sample_rate, channels)


def test_encoder_rejects_unknown_application() -> None:
    with pytest.raises(MediaUsageError, match="application"):
        Encoder(RATE, 1, 2050)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setter", "value"),
    [
        ("set_bitrate", 499),
        ("set_bitrate", 512_001),
        ("set_complexity", -1),
        ("set_complexity", 11),
        ("set_packet_loss_perc", -1),
        ("set_packet_loss_perc", 101),
    ],
)
def test_setters_reject_values_out_of_range(setter: str, value: int) -> None:
    with voip_encoder() as encoder, pytest.raises(MediaUsageError, match="between"):
        getattr(encoder, setter)(value)


@pytest.mark.parametrize(
    "packet",
    [
        b"\x03\x00",  # code 3 announcing zero frames
        b"\x03\x3f",  # code 3 announcing 63 frames of 40 ms
        b"\x02\xff",  # code 2 whose first-frame length runs past the end
        b"\xff" * 7,  # code 3, 63 frames, padding longer than the packet
    ],
)
def test_malformed_packet_raises_and_leaves_decoder_usable(packet: bytes) -> None:
    good = encode_speech(fec=False)[:4]
    with Decoder(RATE, 1) as decoder, Decoder(RATE, 1) as untouched:
        for p in good[:3]:
            decoder.decode(p, FRAME)
            untouched.decode(p, FRAME)
        with pytest.raises(OpusDecodeError, match="corrupted stream") as caught:
            decoder.decode(packet, FRAME)
        assert isinstance(caught.value, RemoteError)
        assert caught.value.errno == OPUS_INVALID_PACKET
        assert caught.value.code is ErrorCode.MALFORMED
        assert decoder.decode(good[3], FRAME) == untouched.decode(good[3], FRAME)


def test_oversized_packet_is_refused_before_libopus() -> None:
    with Decoder(RATE, 1) as decoder, pytest.raises(OpusDecodeError) as caught:
        decoder.decode(b"\x00" * (MAX_PACKET_BYTES + 1), FRAME)
    assert caught.value.code is ErrorCode.OVERSIZED
    assert caught.value.errno is None


def test_empty_packet_is_not_taken_for_a_loss() -> None:
    with Decoder(RATE, 1) as decoder, pytest.raises(OpusDecodeError, match="None"):
        decoder.decode(b"", FRAME)


def test_packet_longer_than_frame_size_is_a_decode_error() -> None:
    with voip_encoder() as encoder, Decoder(RATE, 1) as decoder:
        packet = encoder.encode(bytes(960 * 2), 960)
        with pytest.raises(OpusDecodeError, match="frame_size=320"):
            decoder.decode(packet, FRAME)
        assert len(decoder.decode(packet, 960)) == 960 * 2


def test_random_bytes_decode_or_raise_our_error() -> None:
    rng = random.Random(20240611)
    good = encode_speech(fec=False)[0]
    rejected = 0
    with Decoder(RATE, 1) as decoder:
        for _ in range(300):
            junk = rng.randbytes(rng.randrange(1, 120))
            try:
                pcm = decoder.decode(junk, 1920)
            except OpusDecodeError:
                rejected += 1
            else:
                assert len(pcm) % 2 == 0
        assert len(decoder.decode(good, FRAME)) == FRAME * 2
    assert 0 < rejected < 300


def test_packet_samples_reads_the_header() -> None:
    with voip_encoder() as encoder:
        packet = encoder.encode(bytes(FRAME * 2), FRAME)
    assert packet_samples(packet, RATE) == FRAME
    assert packet_samples(packet, 48000) == 960
    with pytest.raises(OpusDecodeError, match="malformed"):
        packet_samples(b"\x03\x3f", RATE)


# --- lifetime ----------------------------------------------------------------


def test_close_is_idempotent_and_use_after_close_is_refused() -> None:
    encoder = voip_encoder()
    decoder = Decoder(RATE, 1)
    for coder in (encoder, decoder):
        coder.close()
        coder.close()
        assert coder.is_closed
    with pytest.raises(MediaUsageError, match="closed"):
        encoder.encode(bytes(FRAME * 2), FRAME)
    with pytest.raises(MediaUsageError, match="closed"):
        encoder.set_dtx(True)
    with pytest.raises(MediaUsageError, match="closed"):
        decoder.decode(None, FRAME)


def test_with_block_closes() -> None:
    with Decoder(RATE, 1) as decoder:
        assert not decoder.is_closed
    assert decoder.is_closed


def test_garbage_collection_frees_native_state() -> None:
    encoder = voip_encoder()
    finalizer = encoder._finalizer
    del encoder
    gc.collect()
    assert not finalizer.alive


def test_reset_starts_a_fresh_stream() -> None:
    pcm = list(frames(speechlike(0.2)))
    with voip_encoder() as used, voip_encoder() as fresh:
        for frame in pcm:
            used.encode(frame, FRAME)
        used.reset()
        packets = [used.encode(frame, FRAME) for frame in pcm]
        assert packets == [fresh.encode(frame, FRAME) for frame in pcm]
    with Decoder(RATE, 1) as used_decoder, Decoder(RATE, 1) as fresh_decoder:
        for packet in reversed(packets):
            used_decoder.decode(packet, FRAME)
        used_decoder.reset()
        assert [used_decoder.decode(p, FRAME) for p in packets] == [
            fresh_decoder.decode(p, FRAME) for p in packets
        ]


# --- loading and byte order ----------------------------------------------------


def test_missing_library_names_the_debian_package() -> None:
    with pytest.raises(OpusUnavailable, match="libopus0") as caught:
        _open_library(["libopus-missing.so.99"])
    assert isinstance(caught.value, LocalError)
    assert caught.value.code is ErrorCode.UNAVAILABLE


def test_byteswap_turns_little_endian_into_big() -> None:
    assert _byteswap16(struct.pack("<3h", 1, -2, 0x1234)) == struct.pack(">3h", 1, -2, 0x1234)

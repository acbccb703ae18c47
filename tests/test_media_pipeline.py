"""A call's audio: WAV files in and out, and the Opus pipeline between two of them.

The WAV code is checked against the standard library's own ``wave`` module in
both directions (it reads what we write, we read what it writes); the pipeline
runs the real libopus, jitter buffer and resampler, one tick at a time.
"""

from __future__ import annotations

import errno
import math
import random
import struct
import subprocess
import sys
import wave
from array import array
from collections.abc import Callable, Collection
from pathlib import Path

import pytest

from edge.media import tones
from edge.media.pipeline import (
    FRAME_BYTES,
    CallAudio,
    Silence,
    is_device,
    open_sink,
    open_source,
)
from edge.media.wav import WavError, WavSink, WavSource, inspect, read_wav, write_wav
from edge.wire.messages import Codec

RATE = 16000
GRID = [float(f) for f in range(300, 3001, 100)]
"""Candidate frequencies 100 Hz apart: a tone that came out at another one would show."""


def stdlib_wav(
    path: Path, pcm: bytes, *, rate: int = RATE, channels: int = 1, width: int = 2
) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(pcm)


def samples(pcm: bytes) -> array[int]:
    return array("h", pcm)


def rms(pcm: bytes) -> float:
    values = samples(pcm)
    return math.sqrt(sum(v * v for v in values) / max(1, len(values)))


# -- WAV files ---------------------------------------------------------------------------


def test_a_recording_is_a_wav_file_the_standard_library_reads(tmp_path: Path) -> None:
    pcm = tones.tone(440, 0.1)
    sink = WavSink(tmp_path / "out.wav")
    for start in range(0, len(pcm), FRAME_BYTES):
        sink.write(pcm[start : start + FRAME_BYTES])
    sink.close()
    with wave.open(str(tmp_path / "out.wav"), "rb") as got:
        assert (got.getnchannels(), got.getsampwidth(), got.getframerate()) == (1, 2, RATE)
        assert got.readframes(got.getnframes()) == pcm


def test_a_recorder_killed_mid_call_leaves_a_readable_file_up_to_its_last_frame(
    tmp_path: Path,
) -> None:
    path = tmp_path / "killed.wav"
    child = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from edge.media.wav import WavSink\n"
        "sink = WavSink(Path(sys.argv[1]))\n"
        "for n in range(7):\n"
        "    sink.write(bytes([n]) * 640)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", child, str(path)], check=False, timeout=30)
    assert done.returncode == -9
    with wave.open(str(path), "rb") as got:
        assert got.getnframes() == 7 * 320
        assert got.readframes(7 * 320) == b"".join(bytes([n]) * 640 for n in range(7))


def test_a_source_plays_the_file_in_frames_then_loops_or_pads(tmp_path: Path) -> None:
    pcm = bytes(random.Random(1).randrange(256) for _ in range(2 * FRAME_BYTES + 100))
    stdlib_wav(tmp_path / "in.wav", pcm)
    looping = WavSource(tmp_path / "in.wav")
    played = b"".join(looping.read() for _ in range(5))
    looping.close()
    assert played == (pcm * 3)[: 5 * FRAME_BYTES]
    once = WavSource(tmp_path / "in.wav", loop=False)
    played = b"".join(once.read() for _ in range(4))
    once.close()
    assert played == pcm + bytes(4 * FRAME_BYTES - len(pcm))


def test_a_source_at_48_khz_is_resampled_and_keeps_its_pitch(tmp_path: Path) -> None:
    stdlib_wav(tmp_path / "48k.wav", tones.tone(1200, 1.0, rate=48000), rate=48000)
    source = WavSource(tmp_path / "48k.wav", loop=False)
    frames = [source.read() for _ in range(50)]
    source.close()
    assert all(len(frame) == FRAME_BYTES for frame in frames)
    middle = samples(b"".join(frames[5:45]))
    windows = [middle[i : i + 640] for i in range(0, len(middle), 640)]
    found = [tones.strongest(w, GRID) for w in windows]
    assert all(f is not None and f[0] == 1200 and f[1] == pytest.approx(1, abs=0.05) for f in found)


def test_an_empty_file_plays_silence(tmp_path: Path) -> None:
    stdlib_wav(tmp_path / "empty.wav", b"")
    source = WavSource(tmp_path / "empty.wav")
    assert source.read() == bytes(FRAME_BYTES)
    source.close()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (None, "no such file"),
        (lambda p: p.write_text("hello, not a wav file at all"), "not a WAV file (no RIFF/WAVE"),
        (lambda p: stdlib_wav(p, bytes(64), channels=2), "not 16-bit mono (16-bit, 2 channel(s))"),
        (lambda p: stdlib_wav(p, bytes(64), width=1), "not 16-bit mono (8-bit, 1 channel(s))"),
        (lambda p: stdlib_wav(p, bytes(64), rate=4000), "sample rate 4000 Hz is outside"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVE"), "no format and data chunks"),
        (
            lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEdata\x02\x00\x00\x00ab"),
            "its data comes before its format",
        ),
        (lambda p: p.mkdir(), "is a folder"),
    ],
)
def test_a_file_that_is_not_16_bit_mono_wav_is_refused_saying_why(
    tmp_path: Path, make: Callable[[Path], object] | None, reason: str
) -> None:
    path = tmp_path / "bad.wav"
    if make is not None:
        make(path)
    with pytest.raises(WavError) as raised:
        inspect(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert reason in str(raised.value)


def test_a_header_that_was_never_finalised_reads_what_is_there(tmp_path: Path) -> None:
    pcm = tones.tone(500, 0.05)
    write_wav(tmp_path / "ok.wav", pcm)
    raw = bytearray((tmp_path / "ok.wav").read_bytes())
    raw[40:44] = b"\xff\xff\xff\xff"  # a streaming writer's "length unknown"
    raw += b"\x01"  # and a torn last sample
    (tmp_path / "stream.wav").write_bytes(raw)
    assert read_wav(tmp_path / "stream.wav") == (RATE, pcm)


def test_garbage_files_raise_only_wav_errors(tmp_path: Path) -> None:
    rng = random.Random(7)
    write_wav(tmp_path / "good.wav", tones.tone(700, 0.02))
    good = bytearray((tmp_path / "good.wav").read_bytes())
    path = tmp_path / "fuzz.wav"
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data[: rng.randrange(len(data) + 1)]))
        try:
            info = inspect(path)
        except WavError:
            continue
        assert info.data_offset + info.data_bytes <= len(path.read_bytes())


def test_a_sink_that_cannot_write_says_where(tmp_path: Path) -> None:
    with pytest.raises(WavError, match=r"no-such-folder/out\.wav: cannot write it"):
        WavSink(tmp_path / "no-such-folder" / "out.wav")
    with pytest.raises(WavError, match="/dev/full: cannot write it"):
        WavSink(Path("/dev/full"))


def test_names_pick_files_no_audio_or_devices(tmp_path: Path) -> None:
    write_wav(tmp_path / "in.wav", tones.tone(900, 0.02))
    source = open_source(f"file:{tmp_path / 'in.wav'}")
    assert isinstance(source, WavSource)
    source.close()
    sink = open_sink(f"file:{tmp_path / 'out.wav'}")
    assert isinstance(sink, WavSink)
    sink.close()
    assert isinstance(open_source("none"), Silence) and isinstance(open_sink("none"), Silence)
    assert [is_device(name) for name in ("default", "hw:1,0", "none", "file:x.wav")] == [
        True, True, False, False,
    ]  # fmt: skip


# -- the pipeline ------------------------------------------------------------------------


class Link:
    """Two pipelines back to back, one tick at a time, dropping the frames named."""

    def __init__(self, sender: CallAudio, receiver: CallAudio) -> None:
        self.sender, self.receiver = sender, receiver
        self.sequence = 0
        self.now = 0.0

    def run(self, ticks: int, drop: Collection[int] = ()) -> None:
        for _ in range(ticks):
            self.sequence += 1
            payload = self.sender.payload()
            if self.sequence not in drop:
                self.receiver.receive(
                    Codec.OPUS, self.sequence, self.sequence * 320, payload, self.now
                )
            self.receiver.play(self.now)
            self.now += 0.020


def tone_call(tmp_path: Path, frequency: float) -> tuple[Link, Path]:
    write_wav(tmp_path / "tone.wav", tones.tone(frequency, 1.0))
    recording = tmp_path / "heard.wav"
    sender = CallAudio(WavSource(tmp_path / "tone.wav"), Silence())
    receiver = CallAudio(Silence(), WavSink(recording))
    return Link(sender, receiver), recording


def test_a_tone_keeps_its_frequency_through_opus_and_the_jitter_buffer(tmp_path: Path) -> None:
    link, recording = tone_call(tmp_path, 1000)
    link.run(100)
    link.sender.close()
    link.receiver.close()
    rate, pcm = read_wav(recording)
    assert (rate, len(pcm)) == (RATE, 100 * FRAME_BYTES)
    assert tones.heard(pcm, GRID) == [1000.0]
    # Past the buffer's start, every window is the tone.
    windows = [pcm[i : i + 1280] for i in range(10 * FRAME_BYTES, len(pcm), 1280)]
    assert all(tones.strongest(samples(w), GRID) is not None for w in windows)
    assert link.receiver.stats["played"] >= 95
    assert link.sender.stats["sent"] == 100


def test_lost_frames_are_concealed_and_recovered_from_fec(tmp_path: Path) -> None:
    link, recording = tone_call(tmp_path, 800)
    link.run(30)
    # Two in a row: the first has no FEC copy after it (concealed), the second has
    # one in the frame after it (recovered).
    link.run(30, drop={41, 42})
    link.receiver.close()
    stats = link.receiver.stats
    assert (stats["concealed"], stats["recovered"]) == (1, 1)
    _, pcm = read_wav(recording)
    assert len(pcm) == 60 * FRAME_BYTES
    # The concealed frame is not a hole: it carries on the tone.
    hole = pcm[42 * FRAME_BYTES : 44 * FRAME_BYTES]
    assert rms(hole) > 0.5 * rms(pcm[20 * FRAME_BYTES : 30 * FRAME_BYTES])


def test_frames_that_are_wrong_are_counted_and_do_not_stop_the_call(tmp_path: Path) -> None:
    link, recording = tone_call(tmp_path, 600)
    link.run(10)
    receiver = link.receiver
    receiver.receive(Codec.PCMU, 11, 3520, b"\x00" * 160, link.now)
    receiver.receive(Codec.OPUS, 11, 3520, b"", link.now)
    receiver.receive(Codec.OPUS, 11, 3520, b"\xff" * 5000, link.now)
    # Frame 11 arrives as a packet libopus refuses (63 frames of 60 ms): undecodable.
    receiver.receive(Codec.OPUS, 11, 3520, b"\x1b\xff\xff", link.now)
    link.sequence = 11
    link.run(20)
    receiver.close()
    stats = receiver.stats
    assert (stats["wrong_codec"], stats["oversized"]) == (1, 2)
    assert stats["undecodable"] == 1
    _, pcm = read_wav(recording)
    assert tones.heard(pcm[-10 * FRAME_BYTES :], GRID) == [600.0]


class FullDisk:
    """A sink on a disk that has filled up: every write fails as the kernel says."""

    closed = False

    def write(self, pcm: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        self.closed = True


def test_a_sink_that_fails_is_replaced_by_silence_and_counted(tmp_path: Path) -> None:
    write_wav(tmp_path / "tone.wav", tones.tone(700, 0.5))
    disk = FullDisk()
    link = Link(CallAudio(WavSource(tmp_path / "tone.wav"), Silence()), CallAudio(Silence(), disk))
    link.run(20)
    assert link.receiver.stats["sink_errors"] == 1
    assert disk.closed and isinstance(link.receiver.sink, Silence)
    assert link.receiver.stats["played"] > 10


def test_open_leaves_an_end_that_will_not_open_silent(tmp_path: Path) -> None:
    audio = CallAudio.open(f"file:{tmp_path / 'gone.wav'}", f"file:{tmp_path / 'out.wav'}")
    assert isinstance(audio.source, Silence) and isinstance(audio.sink, WavSink)
    assert audio.payload()
    audio.close()
    assert inspect(tmp_path / "out.wav").data_bytes == 0


def test_a_melody_is_heard_note_by_note() -> None:
    notes = [(659.25, 0.4), (0.0, 0.1), (523.25, 0.6)]
    assert tones.heard(tones.melody(notes), [523.25, 659.25, 880.0]) == [659.25, 523.25]
    assert tones.heard(tones.tone(0, 0.5), [523.25]) == []
    noise = struct.pack("<8000h", *(random.Random(3).randrange(-8000, 8000) for _ in range(8000)))
    assert tones.heard(noise, [523.25, 659.25]) == []


def test_silence_goes_out_in_opus_dtx_frames() -> None:
    """DTX: once the microphone is quiet, the encoder sends its few-byte frames (with
    the copies and the loss byte around them), not a full frame of nothing."""
    audio = CallAudio(Silence(), Silence())
    try:
        quiet = [len(audio.payload()) for _ in range(60)][-20:]
    finally:
        audio.close()
    assert max(quiet) <= 16, quiet  # 22 bytes a frame without DTX

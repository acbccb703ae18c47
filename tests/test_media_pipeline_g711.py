"""A call's audio in G.711: tones through μ-law and A-law at 8 kHz, concealment of a lost
frame, payloads of the wrong length, and what status shows of the capture and playback
ends (a file, none, and sound devices on the test sound card of tests/test_media_sound.py).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from edge.media import tones
from edge.media.g711 import FADE_FRAMES, FRAME_CODES, Law, Narrowband
from edge.media.pipeline import (
    FRAME_BYTES,
    CallAudio,
    Silence,
    describe_end,
    silent_payload,
)
from edge.media.wav import WavSink, WavSource, read_wav, write_wav
from edge.wire.messages import Codec
from tests.test_media_pipeline import GRID, rms, samples
from tests.test_media_sound import TIMEOUT, _cards, last_json, on_test_card

G711 = [Codec.PCMU, Codec.PCMA]


class Link:
    """Two pipelines in ``codec`` back to back, one tick at a time, dropping the frames named."""

    def __init__(self, sender: CallAudio, receiver: CallAudio, codec: Codec) -> None:
        self.sender, self.receiver, self.codec = sender, receiver, codec
        self.sequence = 0
        self.now = 0.0
        self.payloads: list[bytes] = []

    def run(self, ticks: int, drop: Collection[int] = ()) -> None:
        for _ in range(ticks):
            self.sequence += 1
            payload = self.sender.payload()
            self.payloads.append(payload)
            if self.sequence not in drop:
                self.receiver.receive(
                    self.codec, self.sequence, self.sequence * 320, payload, self.now,
                    flags=self.sender.flags,
                )  # fmt: skip
            self.receiver.play(self.now)
            self.now += 0.020

    def close(self) -> None:
        self.sender.close()
        self.receiver.close()


def tone_call(tmp_path: Path, frequency: float, codec: Codec) -> tuple[Link, Path]:
    write_wav(tmp_path / "tone.wav", tones.tone(frequency, 1.0))
    recording = tmp_path / "heard.wav"
    sender = CallAudio(WavSource(tmp_path / "tone.wav"), Silence(), codec=codec)
    receiver = CallAudio(Silence(), WavSink(recording), codec=codec)
    return Link(sender, receiver, codec), recording


@pytest.mark.parametrize("codec", G711, ids=lambda codec: codec.name.lower())
@pytest.mark.parametrize("frequency", [400.0, 1000.0, 2500.0])
def test_a_tone_keeps_its_frequency_through_g711(
    tmp_path: Path, codec: Codec, frequency: float
) -> None:
    link, recording = tone_call(tmp_path, frequency, codec)
    link.run(100)
    link.close()
    # Plain 8 kHz frames: 160 bytes, no copies, unflagged.
    assert {len(p) for p in link.payloads} == {FRAME_CODES}
    assert link.sender.flags == 0
    assert link.sender.stats["sent_bytes"] == 100 * FRAME_CODES
    rate, pcm = read_wav(recording)
    assert (rate, len(pcm)) == (16000, 100 * FRAME_BYTES)
    assert tones.heard(pcm, GRID) == [frequency]
    windows = [pcm[i : i + 1280] for i in range(10 * FRAME_BYTES, len(pcm), 1280)]
    found = [tones.strongest(samples(w), GRID) for w in windows]
    assert all(f is not None and f[0] == frequency and f[1] > 0.9 for f in found), found
    # Companding keeps the level within a fraction of a dB.
    sent = rms(tones.tone(frequency, 1.0)[10 * FRAME_BYTES : 40 * FRAME_BYTES])
    assert rms(pcm[40 * FRAME_BYTES : 70 * FRAME_BYTES]) == pytest.approx(sent, rel=0.1)
    assert link.receiver.stats["played"] >= 95
    assert link.receiver.stats["wrong_codec"] == 0


def test_the_two_laws_send_different_bytes_for_the_same_tone(tmp_path: Path) -> None:
    sent = {}
    for codec in G711:
        (tmp_path / codec.name).mkdir()
        link, _ = tone_call(tmp_path / codec.name, 700, codec)
        link.run(5)
        link.close()
        sent[codec] = link.payloads[-1]
    assert sent[Codec.PCMU] != sent[Codec.PCMA]


def test_a_lost_frame_repeats_the_last_one_fading_then_goes_silent(tmp_path: Path) -> None:
    link, recording = tone_call(tmp_path, 500, Codec.PCMA)
    link.run(30)
    link.run(1, drop={31})  # one frame lost, the next here: concealed from the last heard
    link.run(20)
    link.close()
    stats = link.receiver.stats
    assert stats["concealed"] == 1 and stats["recovered"] == stats["repaired"] == 0
    _, pcm = read_wav(recording)
    steady = rms(pcm[15 * FRAME_BYTES : 25 * FRAME_BYTES])
    # Frame 31 plays a tick after it arrives (the buffer's one-frame hold) at half level.
    hole = rms(pcm[31 * FRAME_BYTES : 32 * FRAME_BYTES])
    assert 0.3 * steady < hole < 0.7 * steady
    assert tones.heard(pcm[-10 * FRAME_BYTES :], GRID) == [500.0]


def test_concealment_fades_to_silence() -> None:
    narrow = Narrowband(Law.MU)
    loud = narrow.decode(narrow.encode(tones.tone(600, 0.02)))
    levels = [rms(narrow.conceal()) for _ in range(FADE_FRAMES + 3)]
    narrow.close()
    assert rms(loud) > levels[0] > levels[1] > levels[2]
    assert levels[-1] == 0.0


@pytest.mark.parametrize("codec", G711, ids=lambda codec: codec.name.lower())
def test_payloads_of_the_wrong_length_or_codec_are_counted_and_dropped(
    tmp_path: Path, codec: Codec
) -> None:
    link, recording = tone_call(tmp_path, 900, codec)
    link.run(10)
    receiver, now = link.receiver, link.now
    receiver.receive(codec, 11, 3520, b"", now)
    receiver.receive(codec, 11, 3520, bytes(FRAME_CODES + 1), now)
    receiver.receive(codec, 11, 3520, bytes(1200), now)
    receiver.receive(codec, 11, 3520, bytes(FRAME_CODES - 1), now)
    receiver.receive(codec, 11, 3520, bytes(3), now)
    receiver.receive(Codec.OPUS, 11, 3520, b"\xf8\xff\xfe", now)
    other = Codec.PCMA if codec is Codec.PCMU else Codec.PCMU
    receiver.receive(other, 11, 3520, bytes(FRAME_CODES), now)
    link.sequence = 10
    link.run(20)
    link.close()
    stats = receiver.stats
    assert (stats["oversized"], stats["truncated"], stats["wrong_codec"]) == (3, 2, 2)
    assert stats["received"] == 30
    _, pcm = read_wav(recording)
    assert tones.heard(pcm[-10 * FRAME_BYTES :], GRID) == [900.0]


def test_quality_names_the_codec_and_its_bitrate() -> None:
    for codec, name, kbps in ((Codec.PCMU, "pcmu", 64.0), (Codec.PCMA, "pcma", 64.0)):
        audio = CallAudio.silent(codec)
        quality = audio.quality(None)
        audio.close()
        assert (quality["codec"], quality["bitrate_kbps"], quality["copies"]) == (name, kbps, 0)
    opus = CallAudio.silent()
    assert opus.quality(None)["codec"] == "opus" and opus.flags == CallAudio.FLAGS
    opus.close()


def test_silence_payloads_decode_to_silence() -> None:
    for codec, law in ((Codec.PCMU, Law.MU), (Codec.PCMA, Law.A)):
        narrow = Narrowband(law)
        assert narrow.encode(bytes(FRAME_BYTES)) == silent_payload(codec)
        # A-law has no code for zero: its quietest is 8 of 32768 (and the
        # up-sampler rings a little on the step from nothing to that).
        assert max(abs(s) for s in samples(narrow.decode(silent_payload(codec)))) <= 16
        narrow.close()


# -- the ends in status ---------------------------------------------------------------------


def test_status_shows_a_file_end_and_a_none_end(tmp_path: Path) -> None:
    write_wav(tmp_path / "tone.wav", tones.tone(440, 0.1))
    audio = CallAudio.open(f"file:{tmp_path / 'tone.wav'}", "none", Codec.PCMU)
    quality = audio.quality(12.0)
    audio.close()
    assert quality["capture"] == {"kind": "file"}
    assert quality["playback"] == {"kind": "none"}
    assert describe_end(Silence()) == {"kind": "none"}


def test_status_shows_a_sound_device_running_and_one_that_failed(tmp_path: Path) -> None:
    done = on_test_card(tmp_path, ["dev"], f"{__name__}:child", str(tmp_path))
    capture, playback = last_json(done)
    assert capture["kind"] == "device" and capture["device"] == "dev-mic"
    assert (capture["state"], capture["error"], capture["rate"]) == ("running", None, 16000)
    assert playback["kind"] == "device" and playback["state"] in ("failed", "closed")
    assert playback["error"] == (
        "no sound device 'no-such-pcm' that can play; PortAudio has: dev-mic, dev-spk, default"
    )


def child(argv: list[str]) -> None:
    (folder,) = argv
    """In a process whose ALSA configuration is the test card: a call's audio with the
    card's microphone and a loudspeaker that is not there; prints both ends' status."""
    from edge.media.sound import SoundError, SoundSink, SoundSource

    mic, speaker = _cards(Path(folder))
    source, sink = SoundSource("dev-mic"), SoundSink("no-such-pcm")
    audio = CallAudio(source, sink, codec=Codec.PCMA)
    try:
        source.wait_for_running(TIMEOUT)
        with pytest.raises(SoundError):
            sink.wait_for_running(TIMEOUT)
        quality: dict[str, Any] = audio.quality(None)
        print(json.dumps([quality["capture"], quality["playback"]]))
    finally:
        audio.close()
        mic.stop()
        speaker.stop()

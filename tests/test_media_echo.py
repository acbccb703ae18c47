"""Echo cancellation and noise suppression (SpeexDSP): measured on made echo paths.

The echo paths are seeded room impulse responses (:func:`bench.echo.room`), the
far end a speech-like signal (:func:`bench.echo.speech_like`) so the tests run
without espeak-ng; one test repeats the ERLE on espeak-ng's speech when it is
installed. Every threshold sits below what these runs measure (noted beside
each), and each measurement has a control that shows it can fail: the same
path with the wrong reference, the same noise with the suppressor off, the
same call with echo cancellation off.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy
import pytest

from bench import echo as bench
from bench.voice import PcmSink, PcmSource, speech
from edge.client.config import AgentConfig
from edge.errors import LocalError
from edge.media.echo import (
    MAX_REFERENCE,
    TAIL_MS,
    EchoCanceller,
    EchoControl,
    EchoUnavailable,
    _load,
)
from edge.media.errors import MediaUsageError
from edge.media.pipeline import FLAGS, FRAME_BYTES, FRAME_SAMPLES, RATE, CallAudio
from edge.media.wav import read_wav, write_wav
from edge.runtime.control import request
from edge.wire.codes import ErrorCode
from edge.wire.messages import Codec
from tests.test_agent import TIMEOUT, _until_active, _until_ended, network, run_uv
from tests.test_agent_audio import _until_received

SECONDS = 12.0


def far_and_mic(path: bench.Path, seed: int) -> tuple[bench.Signal, bench.Signal]:
    far = bench.speech_like(SECONDS, seed)
    mic = bench.through(far, bench.room(path, seed)) + bench.noise(SECONDS, bench.NOISE_RMS, seed)
    return far, mic


# -- the canceller on its own -------------------------------------------------------------


@pytest.mark.parametrize("path", bench.PATHS, ids=["40ms", "100ms"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_echo_falls_by_15_db_once_the_filter_has_converged(path: bench.Path, seed: int) -> None:
    far, mic = far_and_mic(path, seed)
    # Measured on these seeds: 20-24 dB on the first path, 18-25 dB on the second.
    assert bench.erle_db(bench.cancel(mic, far), far) >= 15.0
    # The control: with silence for the reference there is nothing to cancel against,
    # and the same measure finds the echo untouched (0.3-0.5 dB).
    assert bench.erle_db(bench.cancel(mic, numpy.zeros(len(far))), far) < 3.0


def test_the_echo_of_espeak_speech_falls_by_25_and_20_db() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    far = bench.samples(speech())
    for path, floor in zip(bench.PATHS, (25.0, 20.0), strict=True):
        mic = bench.through(far, bench.room(path)) + bench.noise(len(far) / RATE, bench.NOISE_RMS)
        # Measured: 32 dB and 28 dB.
        assert bench.erle_db(bench.cancel(mic, far), far) >= floor, path.name


def test_a_short_tail_cannot_reach_a_late_echo() -> None:
    # The tail has to cover the delay and the loud part of the room; 100 ms does
    # not reach past a path that starts 100 ms late (measured 1.7 dB).
    far, mic = far_and_mic(bench.PATHS[1], 0)
    assert bench.erle_db(bench.cancel(mic, far, tail_ms=100), far) < 6.0


def test_double_talk_keeps_the_near_end_speaking() -> None:
    far, near = bench.speech_like(SECONDS, 0), bench.speech_like(SECONDS, 100)
    run, said = bench.double_talk(far, near)
    level, correlation = bench.near_kept(run, said)
    # Measured: -1.1 dB, correlation 0.92. A canceller that muted the microphone
    # while the far end talks, or let the echo through, would fail one or the other.
    assert abs(level) <= 3.0
    assert correlation >= 0.85


def test_steady_noise_is_suppressed_by_12_db_and_not_at_all_when_switched_off() -> None:
    # Measured: 14.1 dB with the suppressor, 0.1 dB without.
    assert bench.noise_reduction_db() >= 12.0
    assert abs(bench.noise_reduction_db(denoise=False)) < 1.0


def test_the_output_lags_the_microphone_by_one_10_ms_block() -> None:
    said = bench.speech_like(3.0, 5)
    data = bench.pcm(said)
    with closing(EchoCanceller(denoise=False)) as canceller:
        out = b"".join(
            canceller.process(data[at : at + FRAME_BYTES], bytes(FRAME_BYTES))
            for at in range(0, len(data), FRAME_BYTES)
        )
    assert canceller.delay == RATE // 100
    heard, span = bench.samples(out), slice(RATE, 2 * RATE)
    # The lag at which the output best matches what was said, over 0-25 ms.
    match = [float(numpy.dot(heard[span], numpy.roll(said, lag)[span])) for lag in range(400)]
    assert int(numpy.argmax(match)) == canceller.delay


def test_the_cpu_per_frame_is_a_fraction_of_a_calls_budget() -> None:
    far, mic = far_and_mic(bench.PATHS[0], 0)
    # Measured 0.11 ms here; the call's whole budget is 0.4 ms (bench/voice.py).
    assert bench.cancel(mic, far).cpu_ms < 0.4


# -- misuse and the missing library -------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 44100}, "rate 44100"),
        ({"frame": 300}, "frame 300 is not 10 or 20 ms"),
        ({"rate": 8000, "frame": 320}, "frame 320"),
        ({"tail_ms": 10}, "tail_ms"),
        ({"tail_ms": 2000}, "tail_ms"),
    ],
)
def test_arguments_out_of_range_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(MediaUsageError, match=message):
        EchoCanceller(**kwargs)


def test_frames_of_the_wrong_size_are_refused_and_a_closed_canceller_says_so() -> None:
    canceller = EchoCanceller()
    frame = bytes(FRAME_BYTES)
    with pytest.raises(MediaUsageError, match="near frame of 639 bytes"):
        canceller.process(frame[:-1], frame)
    with pytest.raises(MediaUsageError, match="far frame of 642 bytes"):
        canceller.process(frame, frame + b"\0\0")
    assert canceller.process(frame, frame) == frame
    assert canceller.frames == 1
    canceller.close()
    canceller.close()
    assert canceller.is_closed
    with pytest.raises(MediaUsageError, match="closed"):
        canceller.process(frame, frame)
    with pytest.raises(MediaUsageError, match="closed"):
        canceller.reset()


def test_a_missing_library_names_the_debian_package() -> None:
    with pytest.raises(EchoUnavailable, match="libspeexdsp1") as caught:
        _load("libspeexdsp-missing.so.99")
    assert isinstance(caught.value, LocalError)
    assert caught.value.code is ErrorCode.UNAVAILABLE


def test_the_reference_queue_is_capped_and_counts_what_it_drops() -> None:
    control = EchoControl(EchoCanceller())
    frame = bytes(FRAME_BYTES)
    assert control.captured(frame) == frame
    for _ in range(MAX_REFERENCE + 2):
        control.played(frame)
    for _ in range(MAX_REFERENCE + 1):
        control.captured(frame)
    assert control.stats == {"processed": 5, "unreferenced": 2, "reference_dropped": 2}
    with pytest.raises(MediaUsageError, match="played frame of 320 bytes"):
        control.played(frame[:320])
    control.close()
    assert control.canceller.is_closed


# -- in a call's pipeline -----------------------------------------------------------------


class Room:
    """A hands-free box: what the loudspeaker (the sink) plays comes back to the
    microphone (the source) through an echo path, plus steady noise."""

    def __init__(self, path: bench.Path, seconds: float) -> None:
        self.response = bench.room(path)
        self.bulk = round(path.delay * RATE)
        size = round(seconds * RATE) + FRAME_SAMPLES
        self.played = numpy.zeros(len(self.response) - 1 + size)
        self.noise = bench.noise(seconds + 1, bench.NOISE_RMS)
        self._written = self._read = 0

    def write(self, pcm: bytes) -> None:
        at = len(self.response) - 1 + self._written
        self.played[at : at + FRAME_SAMPLES] = bench.samples(pcm)
        self._written += FRAME_SAMPLES

    def read(self) -> bytes:
        start = self._read
        # Everything this frame hears left the loudspeaker in earlier ticks: the
        # path's bulk delay covers the frame.
        assert start + FRAME_SAMPLES - self._written <= self.bulk
        window = self.played[start : start + len(self.response) - 1 + FRAME_SAMPLES]
        heard = numpy.convolve(window, self.response, mode="valid")
        self._read += FRAME_SAMPLES
        return bench.pcm(heard + self.noise[start : start + FRAME_SAMPLES])

    def close(self) -> None:
        pass


def hands_free_call(far: bytes, echo_cancel: bool) -> tuple[bytes, CallAudio]:
    """The far end speaks ``far`` into a call with a hands-free box; what it hears back,
    and the box's pipeline (closed)."""
    room = Room(bench.PATHS[1], len(far) / FRAME_BYTES * 0.020)
    box = CallAudio(room, room)
    if echo_cancel:
        box.echo = EchoControl(EchoCanceller(FRAME_SAMPLES, RATE, TAIL_MS))
    heard = PcmSink()
    far_end = CallAudio(PcmSource(far), heard)
    try:
        for tick in range(1, len(far) // FRAME_BYTES + 1):
            now = tick * 0.020
            box.receive(Codec.OPUS, tick, tick * FRAME_SAMPLES, far_end.payload(), now, FLAGS)
            box.play(now)
            far_end.receive(Codec.OPUS, tick, tick * FRAME_SAMPLES, box.payload(), now, FLAGS)
            far_end.play(now)
    finally:
        box.close()
        far_end.close()
    return b"".join(heard.frames), box


def energy_db(signal: bench.Signal) -> float:
    return 10 * math.log10(float(numpy.sum(signal**2)) + 1e-9)


def test_the_far_end_hears_its_echo_15_db_weaker_through_a_calls_pipeline() -> None:
    far = bench.pcm(bench.speech_like(SECONDS, 3))
    after = round(bench.CONVERGED * RATE)
    plain, open_box = hands_free_call(far, echo_cancel=False)
    cancelled, box = hands_free_call(far, echo_cancel=True)
    said = energy_db(bench.samples(far)[after:])
    echo_off = energy_db(bench.samples(plain)[after:])
    echo_on = energy_db(bench.samples(cancelled)[after:])
    # Off, the far end hears the room's echo at about its gain (-6 dB; measured -7.4
    # through Opus): the loop works and nothing touches the microphone.
    assert open_box.echo is None
    assert abs(echo_off - said - 20 * math.log10(bench.ECHO_GAIN)) < 3.0
    # On: measured 21 dB weaker, echo, noise and all.
    assert echo_off - echo_on >= 15.0
    assert box.echo is not None
    ticks = len(far) // FRAME_BYTES
    assert box.echo.stats == {"processed": ticks, "unreferenced": 0, "reference_dropped": 0}


def test_open_with_echo_cancel_puts_a_canceller_before_the_encoder() -> None:
    plain = CallAudio.open("none", "none")
    hands_free = CallAudio.open("none", "none", echo_cancel=True)
    try:
        assert plain.echo is None
        assert hands_free.echo is not None
        hands_free.play(0.0)
        hands_free.payload()
        assert hands_free.echo.stats["processed"] == 1
        # What `edge ctl status` shows of the call's audio says so too.
        assert hands_free.quality(None)["echo_cancel"] == hands_free.echo.stats
        assert plain.quality(None)["echo_cancel"] is None
    finally:
        plain.close()
        hands_free.close()
    assert hands_free.echo.canceller.is_closed


# -- two real agents -----------------------------------------------------------------------


@pytest.mark.parametrize("echo_cancel", [True, False], ids=["on", "off"])
def test_an_agents_echo_cancel_key_reaches_its_calls(tmp_path: Path, echo_cancel: bool) -> None:
    """``echo_cancel`` in the agent's ``[audio]`` reaches the call: alice's microphone
    (a file of steady noise) arrives at bob's recording well below its level in the
    file when it is on, where the canceller's noise suppressor put it, and at that
    level when it is off."""
    hiss = bench.pcm(bench.noise(4.0, bench.NOISE_ONLY_RMS))
    write_wav(tmp_path / "hiss.wav", hiss)
    write_wav(tmp_path / "quiet.wav", bytes(FRAME_BYTES))

    def audio(config: AgentConfig, capture: str, cancel: bool) -> AgentConfig:
        heard = tmp_path / f"{config.user_id}-heard.wav"
        return replace(config, capture=f"file:{tmp_path / capture}", playback=f"file:{heard}",
                       echo_cancel=cancel)  # fmt: skip

    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            alice_config = audio(net.agent_config("alice", [home]), "hiss.wav", echo_cancel)
            bob_config = replace(
                audio(net.agent_config("bob", [home]), "quiet.wav", False),
                auto_answer=frozenset({"alice"}),
            )
            alice = await net.agent(alice_config)
            bob = await net.agent(bob_config)
            placed = await request(alice_config.control_socket, "call", {"user": "bob"})
            assert placed["ok"], placed
            for agent in (alice, bob):
                await asyncio.wait_for(_until_active(agent), TIMEOUT)
            await asyncio.wait_for(_until_received(bob, 200), TIMEOUT)
            assert (await request(alice_config.control_socket, "hangup"))["ok"]
            for agent in (alice, bob):
                await asyncio.wait_for(_until_ended(agent), TIMEOUT)

    run_uv(main())
    rate, heard = read_wav(tmp_path / "bob-heard.wav")
    assert rate == RATE
    # The last second of four: the suppressor has long settled.
    drop = energy_db(bench.samples(hiss)[-RATE:]) - energy_db(bench.samples(heard)[-RATE:])
    # Measured: 16.9 dB on (the suppressor's 14 and Opus's own 3 on white noise), 2.9 off.
    if echo_cancel:
        assert drop >= 10.0
    else:
        assert abs(drop) < 5.0

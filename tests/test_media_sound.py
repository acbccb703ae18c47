"""Sound devices through PortAudio and pyaudio for real, with no sound card: ALSA's ``file``
plugin stands in for the hardware.

The test sound card: each PCM of a throw-away ALSA configuration is the ``file`` plugin
over the ``null`` plugin, reading its capture from a FIFO (``infile``) and writing its
playback to another (``file``). The ``null`` plugin keeps no clock (PortAudio would
call back as fast as the CPU allows), so a :class:`Mic` thread writes the FIFO and a
:class:`Speaker` thread drains the other, 20 ms at a time, as a card's sample clock
would: a blocking read or write in ALSA then paces PortAudio. A FIFO also fails the way
hardware does: a drained FIFO stalls the capture stream, a speaker that goes away
breaks the playback stream (``EPIPE``), and a FIFO that is not there takes the PCM out
of PortAudio's device list, as pulling a USB dongle does.

What the card cannot do: refuse a rate. ALSA's ``file``, ``null``, ``plug`` and
``rate`` plugins (alsa-lib 1.2.8) take any rate up to 384 kHz, so a card that only
does 48 kHz cannot be built from them. The 48 kHz path (resampling both ways) runs
for real by opening the card at 48 kHz on purpose; the choice of rate and the error
for a refused one are tested on :func:`~edge.media.sound.choose_rate`.

PortAudio reads the ALSA configuration when it initialises, so every case runs in a
child process started with ``ALSA_CONFIG_PATH`` (see :func:`run_child`); the test reads
what the child reports and the files it recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from edge.media import tones
from edge.media.pipeline import open_sink, open_source
from edge.media.sound import (
    DRIFT_WINDOW,
    PREFERRED_RATES,
    Drift,
    Ring,
    SoundError,
    SoundSink,
    SoundSource,
    SoundState,
    choose_rate,
)
from edge.media.wav import FRAME_BYTES, RATE

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 15.0
TICK = 0.020
F_SETPIPE_SZ = 1031
"""fcntl's command to resize a pipe (Linux)."""
PIPE_BYTES = 4096
WIDENING = 4
"""Bytes of the loudspeaker's 32-bit stereo per byte of 16-bit mono."""
LOW_HZ, HIGH_HZ = 600.0, 1000.0

# -- the test sound card ------------------------------------------------------------------


def alsa_config(folder: Path, names: Iterable[str]) -> Path:
    """An ALSA configuration with a capture PCM ``NAME-mic`` and a playback PCM
    ``NAME-spk`` for each name, on FIFOs in ``folder``; returns its path."""
    pcms = []
    for name in names:
        pcms.append(
            f'pcm.{name}-mic {{\n  type file\n  slave.pcm {{ type null }}\n  file "/dev/null"\n'
            f'  infile "{folder / f"{name}-mic.fifo"}"\n  format raw\n}}\n'
        )
        pcms.append(
            f"pcm.{name}-spk {{\n  type plug\n  slave {{\n    format S32_LE\n    channels 2\n"
            f"    pcm {{ type file slave.pcm {{ type null }} format raw\n"
            f'      file "{folder / f"{name}-spk.fifo"}" }}\n  }}\n}}\n'
        )
    # PortAudio 19.6 fails an assertion while listing devices when there is no default.
    pcms.append('pcm.!default {\n  type file\n  slave.pcm { type null }\n  file "/dev/null"\n}\n')
    path = folder / "asound.conf"
    path.write_text("".join(pcms))
    return path


def _small_pipe(fd: int, chunk: int) -> None:
    """As small as a pipe gets while a period still fits: the card's buffer stays short."""
    fcntl.fcntl(fd, F_SETPIPE_SZ, max(PIPE_BYTES, 2 * chunk))


class _Card:
    """A FIFO and the thread that keeps its clock, 20 ms at a time."""

    def __init__(self, path: Path, rate: int) -> None:
        self.path = path
        self.chunk = 2 * rate // 50
        self._fd: int | None = None
        self._stop = threading.Event()
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    def plug(self) -> None:
        """Make the FIFO and start the clock; the PCM is in PortAudio's list from now."""
        self._close()
        if self.path.is_dir():
            self.path.rmdir()
        os.mkfifo(self.path)
        # Read and write: opening never blocks, and the FIFO stays open between streams.
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        _small_pipe(self._fd, self.chunk)
        self._stop.clear()
        self._running.set()
        self._thread = threading.Thread(target=self._clock, args=(self._fd,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._close()

    def _close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _clock(self, fd: int) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            if self._running.is_set():
                self._period(fd)
            due += TICK
            # The sample clock of the card being emulated, not a wait for anything.
            self._stop.wait(max(0.0, due - time.monotonic()))

    def _period(self, fd: int) -> None:
        raise NotImplementedError


class Mic(_Card):
    """A microphone hearing ``pcm`` (at ``rate``) over and over."""

    def __init__(self, path: Path, rate: int, pcm: bytes) -> None:
        super().__init__(path, rate)
        self.pcm = pcm
        self._at = 0

    def hear(self, pcm: bytes) -> None:
        self.pcm, self._at = pcm, 0

    def pause(self) -> None:
        """Stop the samples, FIFO still open: the capture stream hangs in its read."""
        self._running.clear()

    def unplug(self) -> None:
        """Take the FIFO away: the hanging read ends, and the PCM drops out of
        PortAudio's device list."""
        self.path.unlink()
        self._close()

    def _period(self, fd: int) -> None:
        pcm, at = self.pcm, self._at
        piece = (pcm[at:] + pcm)[: self.chunk]
        self._at = (at + self.chunk) % len(pcm)
        # Nobody reads: the card overruns, as real ones do.
        with contextlib.suppress(BlockingIOError):
            os.write(fd, piece)


class Speaker(_Card):
    """A loudspeaker that records what it plays, one recording per time it is plugged.

    Its PCM takes 32-bit stereo, as many codecs do, through ALSA's ``plug``: that makes
    each period larger than half a page, so the FIFO (whose writer wakes one page at a
    time) paces PortAudio period by period instead of six at once.
    """

    def __init__(self, path: Path, rate: int) -> None:
        super().__init__(path, rate)
        self.chunk *= WIDENING
        self.recordings: list[bytearray] = []
        self.sounding = threading.Event()
        """Set once the current recording has received samples."""
        self._grown = threading.Condition()

    def heard(self, index: int = -1) -> bytes:
        """A recording as 16-bit mono: the top half of each left sample."""
        wide = array("i", bytes(self.recordings[index]))
        return array("h", (sample >> 16 for sample in wide[::2])).tobytes()

    def plug(self) -> None:
        self.recordings.append(bytearray())
        self.sounding.clear()
        super().plug()

    def unplug(self) -> None:
        """Take the FIFO away (a folder in its place, so nothing can recreate it as a
        file) and stop reading: the stream's next write fails with EPIPE."""
        self.path.unlink()
        self.path.mkdir()
        self._close()

    def _period(self, fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            self.recordings[-1] += os.read(fd, self.chunk)
            self.sounding.set()
            with self._grown:
                self._grown.notify_all()

    def wait_for_seconds(self, seconds: float, timeout: float) -> bool:
        """Block until the current recording holds ``seconds`` of sound (or silence)."""
        size = seconds * self.chunk / TICK
        with self._grown:
            return self._grown.wait_for(lambda: len(self.recordings[-1]) >= size, timeout)


def ticks(count: int, action: Callable[[int], None]) -> None:
    """``action(i)`` every 20 ms, as the call's tick does (edge/client/calls.py)."""
    due = time.monotonic()
    clock = threading.Event()
    for i in range(count):
        action(i)
        due += TICK
        clock.wait(max(0.0, due - time.monotonic()))


def frames_of(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]


# -- the child process --------------------------------------------------------------------


def on_test_card(
    folder: Path, names: Iterable[str], call: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``call`` ("module:function", given the ``args``) in a child process whose ALSA
    configuration is the test card with ``names``' devices, on FIFOs in ``folder``
    (PortAudio reads the configuration once, when it starts); it must succeed."""
    module, function = call.split(":")
    config = alsa_config(folder, names)
    env = {**os.environ, "ALSA_CONFIG_PATH": str(config), "JACK_NO_START_SERVER": "1"}
    code = f"import sys; from {module} import {function}; {function}(sys.argv[1:])"
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def last_json(done: subprocess.CompletedProcess[str]) -> Any:
    """The report a child printed last, one JSON line."""
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(tmp_path: Path, scenario: str, **params: Any) -> dict[str, Any]:
    """Run ``scenario`` (a function ``_child_SCENARIO`` here) on the test card; its report."""
    args = (scenario, str(tmp_path), json.dumps(params))
    report: dict[str, Any] = last_json(on_test_card(tmp_path, ["dev"], f"{__name__}:child", *args))
    return report


def child(argv: list[str]) -> None:
    scenario, folder, params = argv
    run: Callable[..., dict[str, Any]] = globals()[f"_child_{scenario}"]
    print(json.dumps(run(Path(folder), **json.loads(params))))


def _cards(tmp: Path, rate: int = RATE) -> tuple[Mic, Speaker]:
    """The test card's microphone (hearing the low tone) and loudspeaker, plugged in."""
    mic = Mic(tmp / "dev-mic.fifo", rate, tones.tone(LOW_HZ, 1.0, rate=rate))
    speaker = Speaker(tmp / "dev-spk.fifo", rate)
    mic.plug()
    speaker.plug()
    return mic, speaker


def _child_capture(tmp: Path, *, rate: int | None) -> dict[str, Any]:
    mic, speaker = _cards(tmp, rate or RATE)
    source = SoundSource("dev-mic", rate=rate)
    try:
        source.wait_for_running(TIMEOUT)
        captured = bytearray()
        ticks(75, lambda _: captured.extend(source.read()))
        (tmp / "captured.raw").write_bytes(captured)
        return source.describe()
    finally:
        source.close()
        mic.stop()
        speaker.stop()


def _child_playback(tmp: Path, *, rate: int | None) -> dict[str, Any]:
    mic, speaker = _cards(tmp, rate or RATE)
    sink = SoundSink("dev-spk", rate=rate)
    frames = frames_of(tones.tone(HIGH_HZ, 1.0)) + [bytes(FRAME_BYTES)] * 10
    try:
        sink.wait_for_running(TIMEOUT)
        ticks(len(frames), lambda i: sink.write(frames[i]))
        return sink.describe()
    finally:
        sink.close()
        mic.stop()
        speaker.stop()
        (tmp / "played.raw").write_bytes(speaker.heard())


def _child_capture_unplugged(tmp: Path) -> dict[str, Any]:
    mic, speaker = _cards(tmp)
    source = SoundSource("dev-mic")
    try:
        source.wait_for_running(TIMEOUT)
        before = bytearray()
        ticks(40, lambda _: before.extend(source.read()))
        mic.pause()
        assert source.wait_for(lambda: source.state is SoundState.FAILED, TIMEOUT)
        stalled = source.error
        mic.unplug()
        assert source.wait_for(lambda: source.error != stalled, TIMEOUT)
        errors = [stalled, source.error]
        mic.hear(tones.tone(HIGH_HZ, 1.0))
        mic.plug()
        assert source.wait_for(lambda: source.state is SoundState.RUNNING, TIMEOUT)
        after = bytearray()
        ticks(40, lambda _: after.extend(source.read()))
        (tmp / "before.raw").write_bytes(before)
        (tmp / "after.raw").write_bytes(after)
        return {**source.describe(), "errors": errors}
    finally:
        source.close()
        mic.stop()
        speaker.stop()


def _child_playback_unplugged(tmp: Path) -> dict[str, Any]:
    mic, speaker = _cards(tmp)
    sink = SoundSink("dev-spk")
    low = frames_of(tones.tone(LOW_HZ, 0.8))
    high = frames_of(tones.tone(HIGH_HZ, 0.8)) + [bytes(FRAME_BYTES)] * 10
    try:
        sink.wait_for_running(TIMEOUT)
        ticks(len(low), lambda i: sink.write(low[i]))
        speaker.unplug()
        assert sink.wait_for(lambda: sink.state is SoundState.FAILED, TIMEOUT)
        errors = [sink.error]
        # ALSA's file plugin opens without its file (writing then fails, EBADF), so the
        # device comes back for a moment and fails again until the speaker returns.
        assert sink.wait_for(lambda: sink.stats["failures"] >= 2, TIMEOUT)
        speaker.plug()
        assert speaker.sounding.wait(TIMEOUT)
        ticks(len(high), lambda i: sink.write(high[i]))
        return {**sink.describe(), "errors": errors}
    finally:
        sink.close()
        mic.stop()
        speaker.stop()
        for index in range(len(speaker.recordings)):
            (tmp / f"played-{index}.raw").write_bytes(speaker.heard(index))


def _child_unknown(tmp: Path) -> dict[str, Any]:
    mic, speaker = _cards(tmp)
    source = SoundSource("no-such-pcm")
    try:
        source.wait_for_running(TIMEOUT)
    except SoundError as exc:
        return {**source.describe(), "raised": str(exc)}
    finally:
        source.close()
        mic.stop()
        speaker.stop()
    return {"raised": None}


def _child_pipeline(tmp: Path) -> dict[str, Any]:
    mic, speaker = _cards(tmp)
    source, sink = open_source("dev-mic"), open_sink("dev-spk")
    try:
        return {"types": [type(source).__name__, type(sink).__name__]}
    finally:
        source.close()
        sink.close()
        mic.stop()
        speaker.stop()


# -- what the tests check ------------------------------------------------------------------


def samples(pcm: bytes) -> array[int]:
    return array("h", pcm[: len(pcm) & ~1])


def dominated(pcm: bytes, frequency: float, *, rate: int = RATE) -> float:
    """The share of 40 ms windows in which ``frequency`` holds most of the energy."""
    size = round(tones.WINDOW * rate)
    found = samples(pcm)
    windows = [found[i : i + size] for i in range(0, len(found) - size + 1, size)]
    held = [tones.strongest(w, [LOW_HZ, HIGH_HZ], rate=rate) for w in windows]
    return sum(h is not None and h[0] == frequency for h in held) / max(1, len(held))


@pytest.mark.parametrize("rate", [None, 48000])
def test_a_tone_captured_comes_out_as_the_same_tone(tmp_path: Path, rate: int | None) -> None:
    report = run_child(tmp_path, "capture", rate=rate)
    assert report["state"] == "running"
    assert report["rate"] == (rate or RATE)
    captured = (tmp_path / "captured.raw").read_bytes()
    assert len(captured) == 75 * FRAME_BYTES
    assert tones.heard(captured, [LOW_HZ, HIGH_HZ]) == [LOW_HZ]
    assert dominated(captured, LOW_HZ) >= 0.8
    assert report["underruns"] <= 3
    assert report["overruns"] == report["trimmed"] == report["failures"] == 0


@pytest.mark.parametrize("rate", [None, 48000])
def test_a_tone_played_lands_in_the_output_file(tmp_path: Path, rate: int | None) -> None:
    report = run_child(tmp_path, "playback", rate=rate)
    assert report["rate"] == (rate or RATE)
    card_rate = rate or RATE
    played = (tmp_path / "played.raw").read_bytes()
    # The whole second arrives, at the card's rate, and nothing but the tone is in it.
    assert tones.heard(played, [LOW_HZ, HIGH_HZ], rate=card_rate) == [HIGH_HZ]
    tone_windows = dominated(played, HIGH_HZ, rate=card_rate) * len(played) / (2 * card_rate)
    assert tone_windows >= 0.8
    assert report["underruns"] <= 2
    assert report["overruns"] == report["trimmed"] == report["failures"] == 0


def test_a_capture_device_that_goes_away_is_reported_and_recovered(tmp_path: Path) -> None:
    report = run_child(tmp_path, "capture_unplugged")
    stalled, missing = report["errors"]
    assert stalled == "sound device 'dev-mic' stopped: no audio for 0.5 s"
    assert missing == "no sound device 'dev-mic' that can capture; PortAudio has: dev-spk, default"
    assert report["state"] == "running" and report["error"] is None
    assert report["reopens"] == 1 and report["failures"] >= 2
    assert dominated((tmp_path / "before.raw").read_bytes(), LOW_HZ) >= 0.7
    assert dominated((tmp_path / "after.raw").read_bytes(), HIGH_HZ) >= 0.7


def test_a_playback_device_that_goes_away_is_reported_and_recovered(tmp_path: Path) -> None:
    report = run_child(tmp_path, "playback_unplugged")
    assert report["errors"] == ["sound device 'dev-spk' stopped: no audio for 0.5 s"]
    assert report["state"] == "running" and report["reopens"] >= 1
    first, second = ((tmp_path / f"played-{i}.raw").read_bytes() for i in (0, 1))
    assert tones.heard(first, [LOW_HZ, HIGH_HZ]) == [LOW_HZ]
    assert tones.heard(second, [LOW_HZ, HIGH_HZ]) == [HIGH_HZ]
    assert dominated(second, HIGH_HZ) * len(second) / (2 * RATE) >= 0.6


def test_an_unknown_device_names_the_ones_there_are(tmp_path: Path) -> None:
    report = run_child(tmp_path, "unknown")
    listed = "dev-mic, dev-spk, default"
    expected = f"no sound device 'no-such-pcm' that can capture; PortAudio has: {listed}"
    assert report["raised"] == report["error"] == expected
    assert report["state"] in ("failed", "closed")


def test_the_pipeline_opens_sound_devices_by_name(tmp_path: Path) -> None:
    assert run_child(tmp_path, "pipeline") == {"types": ["SoundSource", "SoundSink"]}


# -- without PortAudio: rates, names and the ring ------------------------------------------


def test_a_device_that_does_16_khz_runs_at_16_khz() -> None:
    assert choose_rate({8000, 16000, 48000}, None, device="d", direction="capture") == 16000


def test_a_device_without_16_khz_runs_at_the_nearest_multiple() -> None:
    assert choose_rate({44100, 48000}, None, device="d", direction="capture") == 48000
    assert choose_rate({44100}, None, device="d", direction="play") == 44100
    assert choose_rate({8000, 22050}, None, device="d", direction="play") == 22050


def test_a_rate_the_device_refuses_names_the_device_and_what_it_offers() -> None:
    with pytest.raises(SoundError) as refused:
        choose_rate({44100, 48000}, 16000, device="hw:1,0", direction="capture")
    assert str(refused.value) == (
        "sound device 'hw:1,0' cannot capture at 16000 Hz; it offers 44100, 48000 Hz"
    )


def test_a_device_with_none_of_our_rates_says_so() -> None:
    with pytest.raises(SoundError) as refused:
        choose_rate({11025}, None, device="odd", direction="play")
    rates = ", ".join(map(str, PREFERRED_RATES))
    assert str(refused.value) == (
        f"sound device 'odd' cannot play at any rate edge uses ({rates} Hz); it offers 11025 Hz"
    )


@pytest.mark.parametrize(
    ("device", "rate", "message"),
    [
        ("default", 4000, "a sound device rate must be 8000 to 192000 Hz, not 4000"),
        ("default", 384000, "a sound device rate must be 8000 to 192000 Hz, not 384000"),
        ("", None, "not a sound device name: ''"),
        ("bad\nname", None, "not a sound device name: 'bad\\nname'"),
        ("x" * 256, None, "not a sound device name: "),
    ],
)
def test_a_wrong_name_or_rate_is_refused_before_portaudio_starts(
    device: str, rate: int | None, message: str
) -> None:
    with pytest.raises(SoundError) as refused:
        SoundSource(device, rate=rate)
    assert str(refused.value).startswith(message)


def test_the_ring_keeps_order_refuses_when_full_and_drops_the_oldest() -> None:
    ring = Ring(4)
    assert ring.take() is None
    for i in range(4):
        assert ring.put(bytes([i]))
    assert not ring.put(b"\x09")
    assert ring.take() == b"\x00"
    assert ring.put(b"\x04")
    assert ring.drop(2) == 2
    assert [ring.take(), ring.take(), ring.take()] == [b"\x03", b"\x04", None]
    assert ring.drop(5) == 0
    assert ring.slots == [None] * 4  # nothing kept alive once taken


def test_drift_is_a_backlog_that_never_fell_low_for_a_whole_window() -> None:
    drift = Drift(keep=1)
    # Bursts: the backlog swings from 0 to 6 and back; nothing to trim.
    assert [drift.excess(i % 7) for i in range(DRIFT_WINDOW)] == [0] * DRIFT_WINDOW
    # A clock that got ahead: never below 3 in a whole window, so 2 periods are extra.
    seen = [drift.excess(3 + i % 4) for i in range(DRIFT_WINDOW)]
    assert seen == [0] * (DRIFT_WINDOW - 1) + [2]
    # Each window is judged afresh.
    assert [drift.excess(1) for _ in range(DRIFT_WINDOW)][-1] == 0

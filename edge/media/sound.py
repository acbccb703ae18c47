"""Sound devices as a call's audio: PortAudio, through pyaudio, over ALSA.

A :class:`SoundSource` (the microphone) and a :class:`SoundSink` (the
loudspeaker) each run one PortAudio stream in callback mode with 20 ms
periods. PortAudio calls back on a thread of its own and the event loop reads
and writes on its thread; between the two sits a :class:`Ring` of slots
allocated once, with one writer and one reader that each move only their own
counter, so neither side takes a lock or waits for the other. The slots hold
the ``bytes`` objects themselves: pyaudio creates one for every capture
callback and accepts only ``bytes`` back from a playback callback, so copying
into a preallocated int16 array would add a copy each way and, for playback,
an allocation in the callback. As it is, a callback does two index operations
and allocates nothing of its own.

Capture: the callback stores the period; :meth:`SoundSource.read` takes the
oldest, converts it to the call's 16 kHz (:mod:`edge.media.resample`) when the
device runs at another rate, and cuts 20 ms frames from the result. An empty
ring gives silence (an underrun); a full one drops the new period (an
overrun).

Playback: :meth:`SoundSink.write` converts and queues whole periods, and drops
one when the ring is full (an overrun); the callback plays the oldest, or
silence when there is none (an underrun). After a start or an underrun it
waits for :data:`PRIME` periods before it plays again, so the jitter between
the two clocks does not empty the ring at every tick.

Clock drift: the sound card's clock and the call's 20 ms tick differ by a
little, so one side slowly gets ahead and the backlog grows. The ring is large
enough for a device that calls back in bursts (some do, several periods at a
time), so a large backlog alone proves nothing; what does is a backlog that
never fell low during a whole second (:data:`DRIFT_WINDOW` ticks). Then the
excess is dropped, counted as ``trimmed``: oldest periods for capture, the
next frames written for playback.

Rates: a device that can do 16 kHz runs at 16 kHz. One that cannot (USB
dongles and I2S codecs often do only 44.1 or 48 kHz) runs at the first rate of
:data:`PREFERRED_RATES` that PortAudio says it supports; a rate asked for
explicitly that the device refuses is a :class:`SoundError` naming the device
and the rates it does offer.

Failure and recovery: one worker thread per end makes every PortAudio call for
it (initialise, find the device by name, open, watch, close), so the event
loop never waits on the sound system, not even for the first open. The worker
counts the callbacks every :data:`CHECK` seconds: after :data:`STALL` seconds
without one, whether PortAudio ended the stream (a USB dongle pulled out: ALSA
answers ``ENODEV``) or its device hangs, ``state`` becomes
:attr:`SoundState.FAILED` with the reason in ``error``, the stream is closed,
and the worker tries again after :data:`RETRY` seconds, then every
:data:`MAX_RETRY`, until the device is back. Meanwhile
:meth:`~SoundSource.read` gives silence and :meth:`~SoundSink.write` drops
frames: the call goes on. (PortAudio cannot interrupt a device call that hangs,
so closing such a stream waits until the call returns; other ends that need
PortAudio meanwhile wait with it, since PortAudio's open and close must not
run at once.)

PortAudio reads the ALSA configuration when it initialises, and counts its
initialisations: each end holds one, and the device list is read anew only
when every end in the process has let go. A device that comes back under the
same ALSA name (``default``, ``plughw:CARD=Device``, a PCM of
``/etc/asound.conf``) is found again either way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import Enum
from typing import Any

import pyaudio

from edge.errors import RemoteError
from edge.media.errors import MediaError
from edge.media.resample import Resampler
from edge.media.wav import FRAME_BYTES, RATE
from edge.wire.codes import ErrorCode

__all__ = [
    "DRIFT_WINDOW",
    "PREFERRED_RATES",
    "PRIME",
    "Drift",
    "Ring",
    "SoundError",
    "SoundSink",
    "SoundSource",
    "SoundState",
    "choose_rate",
]

_log = logging.getLogger(__name__)

PERIODS_PER_SECOND = 50
"""20 ms periods, the call's frame."""
PREFERRED_RATES = (16000, 48000, 32000, 96000, 44100, 24000, 22050, 8000)
"""Device rates in the order they are tried when 16 kHz is not on offer: exact
multiples of the call's rate first (the cheapest conversion), 8 kHz last (it
loses everything above 4 kHz)."""
MIN_RATE, MAX_RATE = 8000, 192000
"""The device rates one may ask for: what :class:`~edge.media.resample.Resampler`
converts well and a 20 ms period holds in a few kilobytes."""
RING_SLOTS = 16
"""Periods queued at most, each way: 320 ms, room for a device's bursts."""
PRIME = 2
"""Periods playback waits for before it starts, and again after running dry."""
DRIFT_WINDOW = 50
"""Ticks (a second) over which the least backlog is watched for drift."""
KEEP = 1
"""Periods of backlog capture keeps through drift; playback keeps :data:`PRIME`."""
CHECK = 0.1
"""Seconds between the worker's looks at a running stream."""
STALL = 0.5
"""Seconds without a callback after which a stream counts as failed."""
RETRY, MAX_RETRY = 1.0, 2.0
"""Seconds before the first attempt to reopen, and at most between attempts."""
MAX_NAMES_SHOWN = 12
"""Device names an error lists, at most, when a name is not found."""

_SILENT_FRAME = bytes(FRAME_BYTES)
_PORTAUDIO = threading.Lock()
_CLOSING: set[threading.Thread] = set()
"""Workers of closed devices, still closing their streams."""
_CLOSING_LOCK = threading.Lock()


def wait_released(timeout: float) -> bool:
    """Block (never on the event loop) until every closed device has released its
    stream, at most ``timeout`` seconds: before the process exits, or before whatever
    is on the other end of the device goes away. Whether all were released."""
    deadline = time.monotonic() + timeout
    with _CLOSING_LOCK:
        workers = list(_CLOSING)
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    with _CLOSING_LOCK:
        _CLOSING.difference_update(w for w in workers if not w.is_alive())
        return not any(w.is_alive() for w in workers)


"""PortAudio's initialise, open and close are not safe to run from two threads at once."""


class SoundError(MediaError, RemoteError):
    """A sound device is missing, refused a rate, or failed; the message names it."""

    code = ErrorCode.UNAVAILABLE


class SoundState(Enum):
    """Where an end's device stands; shown as ``state`` beside ``error``."""

    OPENING = "opening"
    RUNNING = "running"
    FAILED = "failed"
    CLOSED = "closed"


class Ring:
    """A fixed ring of slots with one writer thread and one reader thread.

    Each side moves only its own counter, and stores a slot before it moves
    its counter past it; a store to an attribute is atomic under the GIL, so
    the other side sees either the old counter or the new one with its slot
    already filled.
    """

    def __init__(self, slots: int = RING_SLOTS) -> None:
        self.slots: list[bytes | None] = [None] * slots
        self.capacity = slots
        self.written = 0
        self.taken = 0

    def backlog(self) -> int:
        return self.written - self.taken

    def put(self, item: bytes) -> bool:
        """Store ``item`` (the writer's side); ``False`` when the ring is full."""
        written = self.written
        if written - self.taken >= self.capacity:
            return False
        self.slots[written % self.capacity] = item
        self.written = written + 1
        return True

    def take(self) -> bytes | None:
        """The oldest item (the reader's side), or ``None`` when there is none."""
        taken = self.taken
        if self.written == taken:
            return None
        slot = taken % self.capacity
        item, self.slots[slot] = self.slots[slot], None
        self.taken = taken + 1
        return item

    def drop(self, count: int) -> int:
        """Drop up to ``count`` of the oldest items (the reader's side); how many went."""
        dropped = 0
        while dropped < count and self.take() is not None:
            dropped += 1
        return dropped


class Drift:
    """The least backlog over each :data:`DRIFT_WINDOW` ticks: how far above ``keep``
    it stayed the whole time is what a drifting clock added."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._low: int | None = None
        self._ticks = 0

    def excess(self, backlog: int) -> int:
        """Note this tick's backlog; at the end of a window, its excess (else 0)."""
        self._low = backlog if self._low is None else min(self._low, backlog)
        self._ticks += 1
        if self._ticks < DRIFT_WINDOW:
            return 0
        excess = max(0, self._low - self.keep)
        self._low, self._ticks = None, 0
        return excess


def choose_rate(
    offered: Collection[int], wanted: int | None, *, device: str, direction: str
) -> int:
    """The rate to open ``device`` at: ``wanted`` if given, else the first of
    :data:`PREFERRED_RATES` on offer. Raises :class:`SoundError` naming the device and
    what it offers when that rate is refused or none of ours is on offer."""
    if wanted is not None:
        if wanted in offered:
            return wanted
        raise SoundError(
            f"sound device {device!r} cannot {direction} at {wanted} Hz; {_offers(offered)}"
        )
    for rate in PREFERRED_RATES:
        if rate in offered:
            return rate
    raise SoundError(
        f"sound device {device!r} cannot {direction} at any rate edge uses "
        f"({', '.join(map(str, PREFERRED_RATES))} Hz); {_offers(offered)}"
    )


def _offers(offered: Collection[int]) -> str:
    if not offered:
        return "it offers none of the usual rates"
    return f"it offers {', '.join(map(str, sorted(offered)))} Hz"


def _check_rate(rate: int | None) -> None:
    if rate is not None and not MIN_RATE <= rate <= MAX_RATE:
        raise SoundError(f"a sound device rate must be {MIN_RATE} to {MAX_RATE} Hz, not {rate}")


@dataclass
class _Live:
    """One open stream and what the event loop needs to use it; replaced on reopen."""

    pa: Any
    stream: Any
    ring: Ring
    rate: int
    resampler: Resampler | None
    period_bytes: int


class _End:
    """What capture and playback share: the worker thread, the state, the counters."""

    direction = ""
    """"capture" or "play", as the messages say it."""
    _side = ""
    """"input" or "output", as pyaudio says it."""

    def __init__(self, device: str, rate: int | None) -> None:
        self._pending = bytearray()
        self._pending_of: Resampler | None = None
        _check_rate(rate)
        if not device or len(device) > 255 or not device.isprintable():
            raise SoundError(f"not a sound device name: {device!r}")
        self.device = device
        self.wanted_rate = rate
        self.state = SoundState.OPENING
        self.error: str | None = None
        self.stats = dict.fromkeys(
            ("periods", "underruns", "overruns", "trimmed", "silent", "failures", "reopens",
             "xruns"),
            0,
        )  # fmt: skip
        self._live: _Live | None = None
        self._beats = 0
        self._closing = threading.Event()
        self._changed = threading.Condition()
        self._worker = threading.Thread(
            target=self._main, name=f"sound {self.direction} {device}", daemon=True
        )
        self._worker.start()

    @property
    def rate(self) -> int | None:
        """The rate the device runs at now, or ``None`` while it is not running."""
        live = self._live
        return None if live is None else live.rate

    def describe(self) -> dict[str, object]:
        """The device's name, state, rate, last error and counters, for status."""
        return {
            "device": self.device,
            "state": self.state.value,
            "rate": self.rate,
            "error": self.error,
            **self.stats,
        }

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block (never on the event loop) until ``predicate()`` holds, looking again at
        each change of ``state`` or ``error``; whether it held before ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def wait_for_running(self, timeout: float) -> None:
        """Block (never on the event loop) until the device runs; raises
        :class:`SoundError` with the reason if it failed or did not start in time."""
        self.wait_for(lambda: self.state is not SoundState.OPENING, timeout)
        if self.state is not SoundState.RUNNING:
            raise SoundError(self.error or f"sound device {self.device!r} did not start")

    def close(self) -> None:
        """Stop the stream and the worker; returns at once (the worker closes PortAudio:
        :func:`wait_released` waits for it)."""
        self._closing.set()
        with _CLOSING_LOCK:
            _CLOSING.add(self._worker)

    # -- the worker thread ------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._run()
        except Exception as exc:
            # A bug here must not leave the call believing the device runs.
            _log.exception("sound device %r: the worker failed", self.device)
            self._failed(f"sound device {self.device!r}: internal error: {exc}")

    def _run(self) -> None:
        delay = RETRY
        while not self._closing.is_set():
            try:
                live = self._open()
            except (MediaError, OSError) as exc:
                self._failed(str(exc))
                self._closing.wait(delay)
                delay = min(2 * delay, MAX_RETRY)
                continue
            delay = RETRY
            if self._run_stream(live):
                self._closing.wait(delay)
        self._set_state(SoundState.CLOSED, self.error)

    def _run_stream(self, live: _Live) -> bool:
        """Publish ``live``, watch it until it fails or the end closes, then close it;
        whether it failed."""
        if self.state is SoundState.FAILED:
            self.stats["reopens"] += 1
            _log.warning("sound device %r is back (%d Hz)", self.device, live.rate)
        else:
            _log.info("sound device %r: %s at %d Hz", self.device, self.direction, live.rate)
        self._live = live
        self._set_state(SoundState.RUNNING)
        reason = None
        try:
            reason = self._watch(live)
        finally:
            self._live = None
            if reason is not None:
                # Said before closing: PortAudio's close waits for a device call that
                # hangs (a read that never returns) to come back first.
                self._failed(reason)
            _shut(live)
        return reason is not None

    def _watch(self, live: _Live) -> str | None:
        beats, heard = self._beats, time.monotonic()
        while not self._closing.wait(CHECK):
            now = time.monotonic()
            if self._beats != beats:
                beats, heard = self._beats, now
            elif now - heard >= STALL:
                return f"sound device {self.device!r} stopped: no audio for {STALL:g} s"
        return None

    def _failed(self, reason: str) -> None:
        self.stats["failures"] += 1
        if self.error != reason:
            _log.warning("%s; silent until it comes back", reason)
        self._set_state(SoundState.FAILED, reason)

    def _set_state(self, state: SoundState, error: str | None = None) -> None:
        with self._changed:
            self.state, self.error = state, error
            self._changed.notify_all()

    def _open(self) -> _Live:
        with _PORTAUDIO:
            pa = _initialise()
            try:
                return self._open_on(pa)
            except BaseException:
                pa.terminate()
                raise

    def _open_on(self, pa: Any) -> _Live:
        index = _find(pa, self.device, self.direction)
        rate = self._choose(pa, index)
        period = rate // PERIODS_PER_SECOND
        resampler = None if rate == RATE else self._resampler(rate)
        self._beats = 0
        ring = Ring()
        try:
            stream = pa.open(
                rate=rate, channels=1, format=pyaudio.paInt16, frames_per_buffer=period,
                stream_callback=self._callback(ring, period), **self._stream_args(index),
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            raise SoundError(
                f"sound device {self.device!r} will not {self.direction} at {rate} Hz: "
                f"{_pa_reason(exc)}"
            ) from None
        return _Live(pa, stream, ring, rate, resampler, 2 * period)

    def _choose(self, pa: Any, index: int) -> int:
        first = self.wanted_rate or RATE
        if self._supports(pa, index, first):
            return first
        offered = [r for r in sorted({*PREFERRED_RATES, MAX_RATE}) if self._supports(pa, index, r)]
        return choose_rate(offered, self.wanted_rate, device=self.device, direction=self.direction)

    def _supports(self, pa: Any, index: int, rate: int) -> bool:
        try:
            return bool(pa.is_format_supported(rate, **self._probe_args(index)))
        except ValueError:
            # pyaudio's way of saying no: ValueError("Invalid sample rate", -9997).
            return False

    # -- what capture and playback do differently -------------------------------------

    def _stream_args(self, index: int) -> dict[str, Any]:
        side = self._side
        return {side: True, f"{side}_device_index": index}

    def _probe_args(self, index: int) -> dict[str, Any]:
        side = self._side
        return {f"{side}_device": index, f"{side}_channels": 1, f"{side}_format": pyaudio.paInt16}

    def _pending_for(self, live: _Live) -> bytearray:
        """What is left over between frames, at the rate the loop side works at;
        emptied when the stream was reopened, since it belongs to the old one."""
        if self._pending_of is not live.resampler:
            self._pending_of = live.resampler
            self._pending.clear()
        return self._pending

    def _callback(self, ring: Ring, period: int) -> Callable[..., tuple[bytes | None, int]]:
        raise NotImplementedError

    def _resampler(self, rate: int) -> Resampler:
        raise NotImplementedError


class SoundSource(_End):
    """A microphone: 20 ms frames of 16 kHz mono s16le from an ALSA device.

    ``device`` is a PortAudio device name (``default``, a PCM of the ALSA
    configuration, or the ``hw:X,Y`` a card's name ends in); ``rate`` forces the
    device's rate, which otherwise is chosen (see the module docstring). Opening
    happens on a worker thread: :meth:`read` gives silence until ``state`` is
    :attr:`SoundState.RUNNING`, and :meth:`wait_for_running` blocks until then.
    """

    direction = "capture"
    _side = "input"

    def __init__(self, device: str = "default", *, rate: int | None = None) -> None:
        self._drift = Drift(KEEP)
        super().__init__(device, rate)

    def read(self) -> bytes:
        """The oldest whole 20 ms frame; silence, counted, when there is none."""
        live = self._live
        if live is None:
            self.stats["silent"] += 1
            return _SILENT_FRAME
        excess = self._drift.excess(live.ring.backlog())
        self.stats["trimmed"] += live.ring.drop(excess)
        frame = self._next(live)
        if frame is None:
            self.stats["underruns"] += 1
            return _SILENT_FRAME
        return frame

    def _next(self, live: _Live) -> bytes | None:
        if live.resampler is None:
            return live.ring.take()
        pending = self._pending_for(live)
        while len(pending) < FRAME_BYTES:
            period = live.ring.take()
            if period is None:
                return None
            pending += live.resampler.process(period)
        frame = bytes(pending[:FRAME_BYTES])
        del pending[:FRAME_BYTES]
        return frame

    def _callback(self, ring: Ring, period: int) -> Callable[..., tuple[bytes | None, int]]:
        stats = self.stats
        period_bytes = 2 * period

        # PortAudio's thread: no allocation, no lock, never raise (pyaudio would
        # raise the exception in the main thread).
        def captured(data: bytes, frames: int, _times: object, status: int) -> tuple[None, int]:
            self._beats += 1
            if status:
                stats["xruns"] += 1
            if len(data) != period_bytes:
                stats["overruns"] += 1
            elif ring.put(data):
                stats["periods"] += 1
            else:
                stats["overruns"] += 1
            return None, pyaudio.paContinue

        return captured

    def _resampler(self, rate: int) -> Resampler:
        return Resampler(rate, RATE)


class SoundSink(_End):
    """A loudspeaker: takes 20 ms frames of 16 kHz mono s16le for an ALSA device.

    Named and opened as :class:`SoundSource` is; :meth:`write` drops frames, counted,
    while ``state`` is not :attr:`SoundState.RUNNING`.
    """

    direction = "play"
    _side = "output"

    def __init__(self, device: str = "default", *, rate: int | None = None) -> None:
        self._drift = Drift(PRIME)
        self._skip = 0
        super().__init__(device, rate)

    def write(self, pcm: bytes) -> None:
        """Queue one frame for the device; dropped, counted, when too many wait."""
        live = self._live
        if live is None:
            self.stats["silent"] += 1
            return
        if live.resampler is None:
            self._queue(live, pcm)
            return
        pending = self._pending_for(live)
        pending += live.resampler.process(pcm)
        while len(pending) >= live.period_bytes:
            self._queue(live, bytes(pending[: live.period_bytes]))
            del pending[: live.period_bytes]

    def _queue(self, live: _Live, period: bytes) -> None:
        # Only the callback takes from the ring, so drift is trimmed here by not queueing.
        self._skip += self._drift.excess(live.ring.backlog())
        if self._skip:
            self._skip -= 1
            self.stats["trimmed"] += 1
        elif not live.ring.put(period):
            self.stats["overruns"] += 1

    def _callback(self, ring: Ring, period: int) -> Callable[..., tuple[bytes | None, int]]:
        stats = self.stats
        silence = bytes(2 * period)
        primed = False

        # PortAudio's thread, as for capture. A short answer would end the stream
        # (pyaudio pads it and completes), so anything but a whole period is silence.
        def playing(_data: None, frames: int, _times: object, status: int) -> tuple[bytes, int]:
            nonlocal primed
            self._beats += 1
            if status:
                stats["xruns"] += 1
            if not primed and ring.backlog() < PRIME:
                return silence, pyaudio.paContinue
            period_pcm = ring.take()
            if period_pcm is None:
                primed = False
                stats["underruns"] += 1
                return silence, pyaudio.paContinue
            primed = True
            stats["periods"] += 1
            if frames != period:
                return bytes(2 * frames), pyaudio.paContinue
            return period_pcm, pyaudio.paContinue

        return playing

    def _resampler(self, rate: int) -> Resampler:
        return Resampler(RATE, rate)


# -- PortAudio, called from the worker threads only --------------------------------------


def _initialise() -> Any:
    try:
        return pyaudio.PyAudio()
    except OSError as exc:
        raise SoundError(f"PortAudio will not start: {_pa_reason(exc)}") from None


def _find(pa: Any, name: str, direction: str) -> int:
    """The PortAudio index of the device called ``name`` (or whose name ends in
    ``(name)``, as ALSA cards' do: ``USB Audio: - (hw:1,0)``) that can ``direction``."""
    key = "maxInputChannels" if direction == "capture" else "maxOutputChannels"
    names: list[str] = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        if int(info.get(key, 0)) < 1:
            continue
        found = str(info.get("name", ""))
        if found == name or found.endswith(f"({name})"):
            return index
        names.append(found)
    shown = ", ".join(names[:MAX_NAMES_SHOWN]) or "none"
    more = f" and {len(names) - MAX_NAMES_SHOWN} more" if len(names) > MAX_NAMES_SHOWN else ""
    raise SoundError(f"no sound device {name!r} that can {direction}; PortAudio has: {shown}{more}")


def _shut(live: _Live) -> None:
    with _PORTAUDIO:
        try:
            live.stream.close()
        except OSError as exc:
            _log.debug("closing a failed sound stream: %s", exc)
        live.pa.terminate()


def _pa_reason(exc: BaseException) -> str:
    """PortAudio's own text: pyaudio raises ``OSError(text, code)`` or ``ValueError(...)``."""
    args = exc.args
    return str(args[0]) if args else type(exc).__name__

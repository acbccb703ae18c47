"""Acoustic echo cancellation and noise suppression for hands-free calls, by SpeexDSP.

How it works
------------
A hands-free intercom's microphone hears its own loudspeaker: without help the
far end hears itself back, delayed by the round trip. :class:`EchoCanceller`
takes each 20 ms microphone frame (the *near* end) together with the frame
that was played to the loudspeaker at the same time (the *far* end reference)
and returns the microphone frame with the echo of the far end taken out.

Two stages of SpeexDSP (Xiph's ``libspeexdsp``, Debian ``libspeexdsp1``) do
the work, through its small and stable C API:

1. ``speex_echo_cancellation``: an adaptive filter (multidelay block
   frequency domain, MDF) that learns the echo path from loudspeaker to
   microphone and subtracts its estimate of the echo. Its length, the
   *tail*, must cover the whole path as the microphone sees it: the sound
   card's output and input buffering (a few 20 ms periods each way) plus the
   room's reverberation. A reference that arrives *after* its echo cannot be
   cancelled at all, so a caller must never delay the reference more than the
   microphone.
2. ``speex_preprocess_run`` on the result: residual echo suppression (it is
   linked to the echo state, so it knows what the filter could not remove)
   and stationary noise suppression (a fan, a road, mains hum), each a
   spectral gain capped at a number of decibels.

Only the shared library is needed at run time: the CTL request numbers of
``speex_echo.h`` and ``speex_preprocess.h`` are written out below, each beside
the macro it stands for. The library is looked up the first time a canceller
is made, so importing this module works on a host without it; making one there
raises :class:`EchoUnavailable`, which names the Debian package.

The native states and the output buffer are allocated once per canceller, so a
frame costs the ``bytes`` handed back and a slice of each input per 10 ms block.
:meth:`close` (or ``contextlib.closing``), or failing that the object's
collection, frees them, at most once. A canceller is not thread-safe: one per
call, used from one thread.

PCM is signed 16-bit little-endian mono. SpeexDSP reads host order; every board
we ship is little-endian, and a big-endian host swaps bytes on the way in and out
(:mod:`edge.media.opus`'s helper, as for libopus).
"""

import ctypes
import ctypes.util
import functools
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from edge.errors import LocalError
from edge.media.errors import MediaError, MediaUsageError
from edge.media.opus import _bind, _host_order
from edge.wire.codes import ErrorCode

__all__ = ["DEBIAN_PACKAGE", "RATES", "EchoCanceller", "EchoControl", "EchoUnavailable"]

DEBIAN_PACKAGE = "libspeexdsp1"
RATES = frozenset({8000, 16000, 32000, 48000})
"""Sample rates a canceller accepts (SpeexDSP's own are any; a call's are these)."""
MIN_TAIL_MS, MAX_TAIL_MS = 20, 500
"""The filter lengths accepted: past half a second the cost grows with no room
to show for it (a living room's RT60 is 0.3-0.6 s, and the filter needs only
the loud part of it)."""
TAIL_MS = 250
"""Default tail: the sound card's buffering both ways (a few 20 ms periods, see
:mod:`edge.media.sound`) plus the loud early part of a small room's echo. On a
path 100 ms late into a room with an RT60 of 300 ms, 200 ms leaves 22 dB of
ERLE and 250 ms 28 dB; longer tails converge more slowly and gain nothing there
(``bench/echo.py``)."""
NOISE_SUPPRESS_DB = -15
"""Most the noise suppressor attenuates stationary noise (SpeexDSP's default)."""
ECHO_SUPPRESS_DB = -40
"""Most the residual echo suppressor attenuates while only the far end talks."""
ECHO_SUPPRESS_ACTIVE_DB = -15
"""Most it attenuates while the near end talks too: lighter, to keep double talk."""
MAX_REFERENCE = 3
"""Played frames waiting for their microphone frame at most (60 ms): more means the
loudspeaker runs ahead of the microphone, and the oldest is dropped so that the
reference's lag never eats up the tail."""

_SONAME = "libspeexdsp.so.1"

# Request numbers of speex_echo.h and speex_preprocess.h, stable since 1.2.
_ECHO_SET_SAMPLING_RATE = 24  # SPEEX_ECHO_SET_SAMPLING_RATE
_PRE_SET_DENOISE = 0  # SPEEX_PREPROCESS_SET_DENOISE
_PRE_SET_AGC = 2  # SPEEX_PREPROCESS_SET_AGC
_PRE_SET_NOISE_SUPPRESS = 18  # SPEEX_PREPROCESS_SET_NOISE_SUPPRESS
_PRE_SET_ECHO_SUPPRESS = 20  # SPEEX_PREPROCESS_SET_ECHO_SUPPRESS
_PRE_SET_ECHO_SUPPRESS_ACTIVE = 22  # SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE
_PRE_SET_ECHO_STATE = 24  # SPEEX_PREPROCESS_SET_ECHO_STATE


class EchoUnavailable(MediaError, LocalError):
    """libspeexdsp could not be loaded; the device image lacks ``libspeexdsp1``."""

    code = ErrorCode.UNAVAILABLE


# --- loading -----------------------------------------------------------------


class _LibSpeexDsp:
    """Prototypes of the SpeexDSP entry points this module calls."""

    def __init__(self, dll: ctypes.CDLL) -> None:
        cint, state, pcm = ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int16)
        data = ctypes.c_char_p  # const spx_int16_t *; bytes pass without a copy
        self.echo_init = _bind(dll, "speex_echo_state_init", state, cint, cint)
        self.echo_destroy = _bind(dll, "speex_echo_state_destroy", None, state)
        self.echo_reset = _bind(dll, "speex_echo_state_reset", None, state)
        self.echo_ctl = _bind(dll, "speex_echo_ctl", cint, state, cint, ctypes.c_void_p)
        self.cancel = _bind(dll, "speex_echo_cancellation", None, state, data, data, pcm)
        self.pre_init = _bind(dll, "speex_preprocess_state_init", state, cint, cint)
        self.pre_destroy = _bind(dll, "speex_preprocess_state_destroy", None, state)
        self.pre_ctl = _bind(dll, "speex_preprocess_ctl", cint, state, cint, ctypes.c_void_p)
        self.pre_run = _bind(dll, "speex_preprocess_run", cint, state, pcm)


def _load(name: str) -> _LibSpeexDsp:
    try:
        return _LibSpeexDsp(ctypes.CDLL(name))
    except (OSError, AttributeError) as exc:
        # AttributeError: a library by that name exists but lacks a symbol.
        raise EchoUnavailable(
            f"libspeexdsp could not be loaded ({exc}); install the Debian package {DEBIAN_PACKAGE}"
        ) from None


@functools.cache
def _libspeexdsp() -> _LibSpeexDsp:
    # A failed load raises, and functools.cache keeps no exception: the next
    # canceller tries again (after the package has been installed, say).
    return _load(ctypes.util.find_library("speexdsp") or _SONAME)


# --- arguments and native state ----------------------------------------------


def _check(frame: int, rate: int, tail_ms: int) -> None:
    if rate not in RATES:
        raise MediaUsageError(f"rate {rate} is not one of {sorted(RATES)} Hz")
    if frame not in (rate // 100, rate // 50):
        raise MediaUsageError(
            f"frame {frame} is not 10 or 20 ms at {rate} Hz ({rate // 100} or {rate // 50})"
        )
    if not MIN_TAIL_MS <= tail_ms <= MAX_TAIL_MS:
        raise MediaUsageError(f"tail_ms must be between {MIN_TAIL_MS} and {MAX_TAIL_MS}")


def _ctl_int(ctl: Callable[..., Any], state: int, request: int, value: int, name: str) -> None:
    if ctl(state, request, ctypes.byref(ctypes.c_int(value))) != 0:
        raise MediaUsageError(f"libspeexdsp refused {name} = {value}")


def _free(lib: _LibSpeexDsp, echo: int, pre: int) -> None:
    # The preprocessor points at the echo state, so it goes first.
    if pre:
        lib.pre_destroy(pre)
    if echo:
        lib.echo_destroy(echo)


class _States:
    """The echo and preprocess states of one canceller, created and linked together."""

    def __init__(self, lib: _LibSpeexDsp, block: int, rate: int, tail: int) -> None:
        self.echo: int = lib.echo_init(block, tail) or 0
        self.pre: int = lib.pre_init(block, rate) or 0
        if not self.echo or not self.pre:
            _free(lib, self.echo, self.pre)
            raise MediaUsageError(f"libspeexdsp could not make a {block}-sample canceller")

    def configure(self, lib: _LibSpeexDsp, rate: int, denoise: bool) -> None:
        _ctl_int(lib.echo_ctl, self.echo, _ECHO_SET_SAMPLING_RATE, rate, "sampling rate")
        settings = (
            (_PRE_SET_DENOISE, int(denoise), "denoise"),
            # Gain control would pump the level up in the pauses, echo and all.
            (_PRE_SET_AGC, 0, "agc"),
            (_PRE_SET_NOISE_SUPPRESS, NOISE_SUPPRESS_DB, "noise suppress"),
            (_PRE_SET_ECHO_SUPPRESS, ECHO_SUPPRESS_DB, "echo suppress"),
            (_PRE_SET_ECHO_SUPPRESS_ACTIVE, ECHO_SUPPRESS_ACTIVE_DB, "echo suppress active"),
        )
        for request, value, name in settings:
            _ctl_int(lib.pre_ctl, self.pre, request, value, name)
        if lib.pre_ctl(self.pre, _PRE_SET_ECHO_STATE, self.echo) != 0:
            raise MediaUsageError("libspeexdsp refused to link the echo state")


# --- the canceller -----------------------------------------------------------


class EchoCanceller:
    """Takes the loudspeaker's echo and steady noise out of a microphone, frame by frame.

    Make one per call, hand :meth:`process` every microphone frame with the
    frame played at the same time, and :meth:`close` it when the call ends.
    The filter needs a second or two of far-end speech to converge; until then
    some echo passes. ``denoise=False`` leaves stationary noise alone (the
    residual echo suppressor still runs). The output lags the microphone by
    :attr:`delay` samples: the preprocessor's overlapping windows hold back one
    block, so 10 ms blocks are run (two to a 20 ms frame) rather than 20 ms ones,
    which would cost 20 ms of mouth-to-ear delay.
    """

    def __init__(
        self,
        frame: int = 320,
        rate: int = 16000,
        tail_ms: int = TAIL_MS,
        *,
        denoise: bool = True,
    ) -> None:
        _check(frame, rate, tail_ms)
        block = rate // 100
        lib = _libspeexdsp()
        states = _States(lib, block, rate, rate * tail_ms // 1000)
        # The callback holds the pointers, never self, so it cannot keep the
        # object alive; calling it a second time does nothing.
        self._finalizer = weakref.finalize(self, _free, lib, states.echo, states.pre)
        try:
            states.configure(lib, rate, denoise)
        except BaseException:
            self._finalizer()
            raise
        self._lib, self._states = lib, states
        self._closed = False
        self.frame, self.rate, self.tail_ms = frame, rate, tail_ms
        self.delay = block
        """Samples the output lags the microphone by: one 10 ms block."""
        self.frames = 0
        """Frames processed so far."""
        self._bytes = 2 * frame
        self._out = (ctypes.c_int16 * frame)()
        step = 2 * block
        self._blocks = [
            (at, (ctypes.c_int16 * block).from_buffer(self._out, at))
            for at in range(0, 2 * frame, step)
        ]
        self._step = step

    def process(self, near: bytes, far: bytes) -> bytes:
        """``near`` (the microphone's frame) less the echo of ``far`` (the frame played
        to the loudspeaker at the same time) and less steady noise; each is exactly
        ``frame`` samples of s16le. A silent ``far`` is right while nothing plays."""
        self._require_open()
        for name, pcm in (("near", near), ("far", far)):
            if len(pcm) != self._bytes:
                raise MediaUsageError(
                    f"{name} frame of {len(pcm)} bytes; {self.frame} samples are {self._bytes}"
                )
        lib, states, step = self._lib, self._states, self._step
        near, far = _host_order(near), _host_order(far)
        for at, out in self._blocks:
            lib.cancel(states.echo, near[at : at + step], far[at : at + step], out)
            lib.pre_run(states.pre, out)
        self.frames += 1
        return _host_order(ctypes.string_at(self._out, self._bytes))

    def reset(self) -> None:
        """Forget the learnt echo path: the loudspeaker or the room changed."""
        self._require_open()
        self._lib.echo_reset(self._states.echo)

    @property
    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Free the native states. Safe to call more than once."""
        self._closed = True
        self._finalizer()

    def _require_open(self) -> None:
        if self._closed:
            raise MediaUsageError("the echo canceller is closed")


class EchoControl:
    """A call's canceller, fed in the order a call's pipeline plays and captures.

    :meth:`played` remembers each frame handed to the loudspeaker; :meth:`captured`
    cancels the next microphone frame against the oldest of them (silence when
    nothing has been played since). While the two run one for one, as a call's
    tick does, each microphone frame meets the frame played in the same tick,
    and the echo of that frame reaches the microphone only later, behind the
    sound card's buffers: the reference always leads its echo, as it must.
    """

    def __init__(self, canceller: EchoCanceller) -> None:
        self.canceller = canceller
        self._silence = bytes(2 * canceller.frame)
        self._reference: deque[bytes] = deque()
        self.stats = dict.fromkeys(("processed", "unreferenced", "reference_dropped"), 0)
        """Frames cancelled; of them, those with no played frame to meet (silence
        stood in); played frames dropped because the loudspeaker ran ahead. SpeexDSP
        reports no ERLE of its own; ``bench/echo.py`` measures it."""

    def played(self, pcm: bytes) -> None:
        """A frame went to the loudspeaker: exactly the canceller's frame of s16le."""
        if len(pcm) != len(self._silence):
            # Refused here, where the mistake is, not a tick later in the capture path.
            raise MediaUsageError(f"played frame of {len(pcm)} bytes, not {len(self._silence)}")
        if len(self._reference) >= MAX_REFERENCE:
            self._reference.popleft()
            self.stats["reference_dropped"] += 1
        self._reference.append(pcm)

    def captured(self, pcm: bytes) -> bytes:
        """The microphone's frame with the loudspeaker's echo and steady noise taken out."""
        if self._reference:
            far = self._reference.popleft()
        else:
            far = self._silence
            self.stats["unreferenced"] += 1
        out = self.canceller.process(pcm, far)
        self.stats["processed"] += 1
        return out

    def close(self) -> None:
        self._reference.clear()
        self.canceller.close()

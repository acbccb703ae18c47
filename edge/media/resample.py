"""Sample-rate conversion through libsamplerate (Secret Rabbit Code), by ctypes.

USB dongles and I2S codecs often run only at 44.1 or 48 kHz while the call
runs at 16 kHz (wideband Opus) or 8 kHz (G.711). libsamplerate is the
maintained, band-limited converter Debian already ships as a dependency of
PortAudio's JACK support (``libsamplerate0``); only its shared library is
needed at run time. A :class:`Resampler` keeps the filter's state between
calls, so 20 ms frames converted one after another join without clicks.

The binding uses libsamplerate's documented C API: ``src_new``,
``src_process`` with an ``SRC_DATA`` block, ``src_delete``, ``src_strerror``,
and its int16/float conversions. PCM is signed 16-bit little-endian, mono or
interleaved.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import weakref
from enum import IntEnum

from edge.media.errors import MediaError, MediaUsageError


class Quality(IntEnum):
    """libsamplerate's converters, best and slowest first."""

    SINC_BEST = 0
    SINC_MEDIUM = 1
    SINC_FASTEST = 2
    ZERO_ORDER_HOLD = 3
    LINEAR = 4


class ResamplerUnavailable(MediaError):
    """libsamplerate is not installed: ``apt-get install libsamplerate0``."""


class ResampleError(MediaError):
    """libsamplerate refused a call; the message is its own text."""


class _SrcData(ctypes.Structure):
    _fields_ = [
        ("data_in", ctypes.POINTER(ctypes.c_float)),
        ("data_out", ctypes.POINTER(ctypes.c_float)),
        ("input_frames", ctypes.c_long),
        ("output_frames", ctypes.c_long),
        ("input_frames_used", ctypes.c_long),
        ("output_frames_gen", ctypes.c_long),
        ("end_of_input", ctypes.c_int),
        ("src_ratio", ctypes.c_double),
    ]


@functools.cache
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("samplerate") or "libsamplerate.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise ResamplerUnavailable(
            "libsamplerate is not installed: apt-get install libsamplerate0"
        ) from None
    lib.src_new.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.src_new.restype = ctypes.c_void_p
    lib.src_delete.argtypes = [ctypes.c_void_p]
    lib.src_delete.restype = ctypes.c_void_p
    lib.src_process.argtypes = [ctypes.c_void_p, ctypes.POINTER(_SrcData)]
    lib.src_process.restype = ctypes.c_int
    lib.src_strerror.argtypes = [ctypes.c_int]
    lib.src_strerror.restype = ctypes.c_char_p
    lib.src_short_to_float_array.argtypes = [
        ctypes.POINTER(ctypes.c_short), ctypes.POINTER(ctypes.c_float), ctypes.c_int,
    ]  # fmt: skip
    lib.src_short_to_float_array.restype = None
    lib.src_float_to_short_array.argtypes = [
        ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_short), ctypes.c_int,
    ]  # fmt: skip
    lib.src_float_to_short_array.restype = None
    return lib


class Resampler:
    """Converts a stream of 16-bit PCM from ``rate_in`` to ``rate_out``."""

    MAX_FRAMES = 48000
    """At most one second of input per call; a 20 ms frame is far less."""

    def __init__(
        self,
        rate_in: int,
        rate_out: int,
        *,
        channels: int = 1,
        quality: Quality = Quality.SINC_FASTEST,
    ) -> None:
        if not (1000 <= rate_in <= 384000 and 1000 <= rate_out <= 384000):
            raise MediaUsageError(f"sample rates {rate_in} -> {rate_out} are out of range")
        if channels not in (1, 2):
            raise MediaUsageError("mono or stereo only")
        self.rate_in, self.rate_out, self.channels = rate_in, rate_out, channels
        self._ratio = rate_out / rate_in
        lib = _library()
        error = ctypes.c_int(0)
        state = lib.src_new(int(quality), channels, ctypes.byref(error))
        if not state:
            raise ResampleError(f"src_new: {lib.src_strerror(error.value).decode()}")
        self._state = state
        self._finalizer = weakref.finalize(self, lib.src_delete, state)
        self._in = (ctypes.c_float * (self.MAX_FRAMES * channels))()
        out_frames = int(self.MAX_FRAMES * self._ratio) + 64
        self._out = (ctypes.c_float * (out_frames * channels))()
        self._out_short = (ctypes.c_short * (out_frames * channels))()
        self._out_frames = out_frames

    def process(self, pcm: bytes) -> bytes:
        """Convert the next stretch of the stream; the output length follows the ratio
        over time (a few samples may be held back inside the filter)."""
        if self._finalizer.alive is False:
            raise MediaUsageError("the resampler is closed")
        frame_bytes = 2 * self.channels
        if len(pcm) % frame_bytes:
            raise MediaUsageError(f"PCM length {len(pcm)} is not whole frames")
        frames = len(pcm) // frame_bytes
        if frames > self.MAX_FRAMES:
            raise MediaUsageError(f"{frames} frames in one call; at most {self.MAX_FRAMES}")
        lib = _library()
        samples = frames * self.channels
        source = (ctypes.c_short * samples).from_buffer_copy(pcm)
        lib.src_short_to_float_array(source, self._in, samples)
        data = _SrcData(self._in, self._out, frames, self._out_frames, 0, 0, 0, self._ratio)
        status = lib.src_process(self._state, ctypes.byref(data))
        if status:
            raise ResampleError(f"src_process: {lib.src_strerror(status).decode()}")
        produced = data.output_frames_gen * self.channels
        lib.src_float_to_short_array(self._out, self._out_short, produced)
        return bytes(memoryview(self._out_short).cast("B")[: produced * 2])

    def close(self) -> None:
        self._finalizer()

"""A small ctypes binding to the part of libopus a voice call needs.

How it works
------------
libopus is looked up with :func:`ctypes.util.find_library`, falling back to
its soname ``libopus.so.0``, the first time an :class:`Encoder`, a
:class:`Decoder` or :func:`packet_samples` needs it. Importing this module
therefore works on a host without the library; using it there raises
:class:`~edge.media.errors.OpusUnavailable`, which names the Debian package.
Only the shared library is needed at run time: the CTL request numbers of
``opus_defines.h`` are written out below, each beside the macro it stands for.

Every C entry point gets its own ctypes prototype, so arguments are converted
and checked by ctypes rather than guessed. ``opus_encoder_ctl`` and
``opus_decoder_ctl`` are variadic, which ctypes cannot describe; instead each
shape of call made here (no argument, an ``opus_int32`` in, an ``opus_int32``
out through a pointer) is bound as its own fixed-argument prototype of the
same symbol. That is sound on the Linux ABIs we ship for (x86-64, 32- and
64-bit ARM), where integer and pointer variadic arguments travel exactly like
fixed ones.

Each coder owns its native state and one ctypes buffer allocated up front (the
encoder's packet buffer, the decoder's PCM buffer), so a frame costs no more
than the ``bytes`` handed back. The native state is freed by :meth:`close`, by
leaving a ``with`` block or, failing both, when the object is collected; all
three run the same :class:`weakref.finalize` callback, which fires at most
once. A coder is not thread-safe: the libopus state and the buffer are reused
by every call.

PCM is signed 16-bit little-endian, interleaved when there are two channels.
libopus reads and writes host order, so a big-endian host swaps bytes on the
way in and out (every board we ship is little-endian, where that costs nothing).
"""

import ctypes
import ctypes.util
import functools
import sys
import weakref
from array import array
from collections.abc import Callable, Iterable
from enum import IntEnum
from types import TracebackType
from typing import Any, Self

from edge.media.errors import MediaUsageError, OpusDecodeError, OpusError, OpusUnavailable
from edge.wire.codes import ErrorCode

__all__ = [
    "MAX_PACKET_BYTES",
    "SAMPLE_RATES",
    "Application",
    "Decoder",
    "Encoder",
    "packet_samples",
]

SAMPLE_RATES = frozenset({8000, 12000, 16000, 24000, 48000})
"""Sample rates libopus accepts for PCM in and out."""

MAX_PACKET_BYTES = 1275 * 3
"""Largest packet produced or accepted: three frames of Opus's 1275-byte maximum."""

_SONAME = "libopus.so.0"
_DEBIAN_PACKAGE = "libopus0"

# Frame durations an encoder accepts, in tenths of a millisecond (2.5 ms to 60 ms).
_ENCODE_TENTHS_MS = (25, 50, 100, 200, 400, 600)
# libopus never decodes more than 120 ms from one packet.
_MAX_DECODE_MS = 120

# Return codes and CTL request numbers from opus_defines.h, stable since 1.0.
_OPUS_OK = 0  # OPUS_OK
_OPUS_BUFFER_TOO_SMALL = -2  # OPUS_BUFFER_TOO_SMALL
_SET_BITRATE = 4002  # OPUS_SET_BITRATE_REQUEST
_GET_BITRATE = 4003  # OPUS_GET_BITRATE_REQUEST
_SET_COMPLEXITY = 4010  # OPUS_SET_COMPLEXITY_REQUEST
_SET_INBAND_FEC = 4012  # OPUS_SET_INBAND_FEC_REQUEST
_SET_PACKET_LOSS_PERC = 4014  # OPUS_SET_PACKET_LOSS_PERC_REQUEST
_SET_DTX = 4016  # OPUS_SET_DTX_REQUEST
_RESET_STATE = 4028  # OPUS_RESET_STATE

_BIG_ENDIAN = sys.byteorder == "big"


class Application(IntEnum):
    """What the encoder tunes for (``OPUS_APPLICATION_*``)."""

    VOIP = 2048
    AUDIO = 2049
    RESTRICTED_LOWDELAY = 2051


# --- loading -----------------------------------------------------------------


def _bind(dll: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Callable[..., Any]:
    return ctypes.CFUNCTYPE(restype, *argtypes)((name, dll))


class _LibOpus:
    """Prototypes of the libopus entry points this module calls."""

    def __init__(self, dll: ctypes.CDLL) -> None:
        i32, cint, state = ctypes.c_int32, ctypes.c_int, ctypes.c_void_p
        data = ctypes.c_char_p  # const unsigned char *; bytes pass without a copy
        self.strerror = _bind(dll, "opus_strerror", ctypes.c_char_p, cint)
        self.encoder_create = _bind(
            dll, "opus_encoder_create", state, i32, cint, cint, ctypes.POINTER(cint)
        )
        self.encoder_destroy = _bind(dll, "opus_encoder_destroy", None, state)
        self.encode = _bind(
            dll, "opus_encode", i32, state, data, cint, ctypes.POINTER(ctypes.c_ubyte), i32
        )
        self.encoder_ctl = _bind(dll, "opus_encoder_ctl", cint, state, cint)
        self.encoder_ctl_set = _bind(dll, "opus_encoder_ctl", cint, state, cint, i32)
        self.encoder_ctl_get = _bind(
            dll, "opus_encoder_ctl", cint, state, cint, ctypes.POINTER(i32)
        )
        self.decoder_create = _bind(
            dll, "opus_decoder_create", state, i32, cint, ctypes.POINTER(cint)
        )
        self.decoder_destroy = _bind(dll, "opus_decoder_destroy", None, state)
        self.decode = _bind(
            dll, "opus_decode", cint, state, data, i32, ctypes.POINTER(ctypes.c_int16), cint, cint
        )
        self.decoder_ctl = _bind(dll, "opus_decoder_ctl", cint, state, cint)
        self.packet_get_nb_samples = _bind(dll, "opus_packet_get_nb_samples", cint, data, i32, i32)

    def text(self, errno: int) -> str:
        """libopus's own description of a negative return code."""
        raw = self.strerror(errno)
        return raw.decode("ascii", "replace") if isinstance(raw, bytes) else "unknown error"

    def error(self, call: str, errno: int) -> OpusError:
        return OpusError(call, errno=errno, strerror=self.text(errno))


def _open_library(names: Iterable[str]) -> _LibOpus:
    """Load the first of ``names`` that is a usable libopus."""
    tried: list[str] = []
    for name in names:
        try:
            return _LibOpus(ctypes.CDLL(name))
        except (OSError, AttributeError) as exc:
            # AttributeError: a library by that name exists but lacks a symbol.
            tried.append(f"{name}: {exc}")
    raise OpusUnavailable(
        f"libopus could not be loaded ({'; '.join(tried) or 'no candidates'}); "
        f"install the Debian package {_DEBIAN_PACKAGE}"
    )


def _library_names() -> list[str]:
    found = ctypes.util.find_library("opus")
    return [found, _SONAME] if found and found != _SONAME else [_SONAME]


@functools.cache
def _libopus() -> _LibOpus:
    # functools.cache does not remember exceptions, so a failed load is retried
    # on the next use (after the package has been installed, say).
    return _open_library(_library_names())


# --- argument checks ---------------------------------------------------------


def _check_format(sample_rate: int, channels: int) -> None:
    if sample_rate not in SAMPLE_RATES:
        raise MediaUsageError(f"sample_rate {sample_rate} is not one of {sorted(SAMPLE_RATES)} Hz")
    if channels not in (1, 2):
        raise MediaUsageError(f"channels must be 1 or 2, not {channels}")


def _check_application(application: int) -> Application:
    try:
        return Application(application)
    except ValueError:
        raise MediaUsageError(f"{application} is not an Opus application") from None


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise MediaUsageError(f"{name} must be between {low} and {high}, not {value}")


def _encode_frame_sizes(sample_rate: int) -> frozenset[int]:
    return frozenset(sample_rate * tenths // 10_000 for tenths in _ENCODE_TENTHS_MS)


def _check_packet(packet: bytes) -> None:
    """Refuse, before any C code sees it, a packet no Opus stream can carry."""
    if not packet:
        raise OpusDecodeError("empty Opus packet (a lost packet is passed as None)")
    if len(packet) > MAX_PACKET_BYTES:
        raise OpusDecodeError(
            f"Opus packet of {len(packet)} bytes exceeds {MAX_PACKET_BYTES}",
            code=ErrorCode.OVERSIZED,
        )


def _byteswap16(data: bytes) -> bytes:
    samples = array("h", data)
    samples.byteswap()
    return samples.tobytes()


def _host_order(pcm: bytes) -> bytes:
    """Little-endian PCM to host order and back (the same swap both ways)."""
    return _byteswap16(pcm) if _BIG_ENDIAN else pcm


def _create(create: Callable[..., Any], lib: _LibOpus, call: str, *args: int) -> int:
    error = ctypes.c_int(_OPUS_OK)
    state = create(*args, ctypes.byref(error))
    if error.value != _OPUS_OK or not state:
        raise lib.error(call, error.value)
    return int(state)


# --- coders ------------------------------------------------------------------


class _Coder:
    """Native state ownership shared by Encoder and Decoder."""

    _kind = "coder"

    def __init__(
        self,
        lib: _LibOpus,
        state: int,
        destroy: Callable[..., Any],
        sample_rate: int,
        channels: int,
    ) -> None:
        self._lib = lib
        self._state: int | None = state
        self._sample_rate = sample_rate
        self._channels = channels
        # The callback holds the state pointer, never self, so it cannot keep
        # the object alive; calling it a second time does nothing.
        self._finalizer = weakref.finalize(self, destroy, state)

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def is_closed(self) -> bool:
        return self._state is None

    def close(self) -> None:
        """Free the native state. Safe to call more than once."""
        self._state = None
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _handle(self) -> int:
        if self._state is None:
            raise MediaUsageError(f"the {self._kind} is closed")
        return self._state

    def _pcm_bytes(self, frame_size: int) -> int:
        return frame_size * self._channels * 2


class Encoder(_Coder):
    """Turns PCM frames into Opus packets, one call per frame, in order.

    Build one per outgoing stream, adjust it with the ``set_*`` methods (they
    may be called between frames too), feed :meth:`encode` and :meth:`close`
    it when the stream ends.
    """

    _kind = "encoder"

    def __init__(
        self,
        sample_rate: int = 16000,
        channels: int = 1,
        application: Application = Application.VOIP,
    ) -> None:
        _check_format(sample_rate, channels)
        mode = _check_application(application)
        lib = _libopus()
        state = _create(lib.encoder_create, lib, "opus_encoder_create", sample_rate, channels, mode)
        super().__init__(lib, state, lib.encoder_destroy, sample_rate, channels)
        self._frame_sizes = _encode_frame_sizes(sample_rate)
        self._packet = (ctypes.c_ubyte * MAX_PACKET_BYTES)()

    def encode(self, pcm: bytes, frame_size: int) -> bytes:
        """Encode one frame of ``frame_size`` samples per channel into a packet.

        ``frame_size`` must last 2.5, 5, 10, 20, 40 or 60 ms at the encoder's
        rate, and ``pcm`` must hold exactly that many 16-bit samples per channel.
        """
        state = self._handle()
        if frame_size not in self._frame_sizes:
            raise MediaUsageError(
                f"frame_size {frame_size} is not 2.5, 5, 10, 20, 40 or 60 ms at "
                f"{self._sample_rate} Hz ({sorted(self._frame_sizes)})"
            )
        expected = self._pcm_bytes(frame_size)
        if len(pcm) != expected:
            raise MediaUsageError(
                f"pcm holds {len(pcm)} bytes; {frame_size} samples x "
                f"{self._channels} channel(s) x 2 bytes is {expected}"
            )
        size = self._lib.encode(state, _host_order(pcm), frame_size, self._packet, MAX_PACKET_BYTES)
        self._check(size, "opus_encode")
        return ctypes.string_at(self._packet, size)

    def set_bitrate(self, bps: int) -> None:
        """Target bitrate in bits per second, 500 to 512000."""
        _check_range("bitrate", bps, 500, 512_000)
        self._set(_SET_BITRATE, bps, "OPUS_SET_BITRATE")

    @property
    def bitrate(self) -> int:
        """The bitrate the encoder is aiming at, in bits per second."""
        value = ctypes.c_int32()
        rc = self._lib.encoder_ctl_get(self._handle(), _GET_BITRATE, ctypes.byref(value))
        self._check(rc, "OPUS_GET_BITRATE")
        return value.value

    def set_inband_fec(self, enabled: bool) -> None:
        """Carry a low-rate copy of each frame in the next packet.

        libopus only spends bits on it once :meth:`set_packet_loss_perc` is
        above zero, and only in its speech (SILK and hybrid) modes.
        """
        self._set(_SET_INBAND_FEC, int(enabled), "OPUS_SET_INBAND_FEC")

    def set_packet_loss_perc(self, percent: int) -> None:
        """Expected packet loss, 0 to 100; more loss buys more redundancy."""
        _check_range("packet loss percentage", percent, 0, 100)
        self._set(_SET_PACKET_LOSS_PERC, percent, "OPUS_SET_PACKET_LOSS_PERC")

    def set_dtx(self, enabled: bool) -> None:
        """Send almost nothing (1-2 byte packets) while the input is silent."""
        self._set(_SET_DTX, int(enabled), "OPUS_SET_DTX")

    def set_complexity(self, complexity: int) -> None:
        """CPU spent per frame, 0 (least) to 10 (most)."""
        _check_range("complexity", complexity, 0, 10)
        self._set(_SET_COMPLEXITY, complexity, "OPUS_SET_COMPLEXITY")

    def reset(self) -> None:
        """Start a fresh stream, keeping the settings made with ``set_*``."""
        self._check(self._lib.encoder_ctl(self._handle(), _RESET_STATE), "OPUS_RESET_STATE")

    def _set(self, request: int, value: int, name: str) -> None:
        self._check(self._lib.encoder_ctl_set(self._handle(), request, value), name)

    def _check(self, rc: int, call: str) -> None:
        if rc < 0:
            raise self._lib.error(call, rc)


class Decoder(_Coder):
    """Turns Opus packets back into PCM, and conceals the ones that never came.

    Feed it every packet of one stream in order. For a lost packet call
    :meth:`decode` with ``None`` (concealment) or, when the next packet is
    already there, with that packet and ``fec=True`` (recovery from its
    in-band copy), then decode the next packet as usual.
    """

    _kind = "decoder"

    def __init__(self, sample_rate: int = 16000, channels: int = 1) -> None:
        _check_format(sample_rate, channels)
        lib = _libopus()
        state = _create(lib.decoder_create, lib, "opus_decoder_create", sample_rate, channels)
        super().__init__(lib, state, lib.decoder_destroy, sample_rate, channels)
        self._step = sample_rate // 400  # 2.5 ms, the unit of every Opus frame
        self._max_frame = sample_rate * _MAX_DECODE_MS // 1000
        self._pcm = (ctypes.c_int16 * (self._max_frame * channels))()

    def decode(self, packet: bytes | None, frame_size: int, *, fec: bool = False) -> bytes:
        """Decode one packet into PCM; ``None`` stands for a lost packet.

        ``frame_size`` is samples per channel, a multiple of 2.5 ms up to
        120 ms. With a packet it is the most the caller accepts: the packet
        decodes to its own duration, and a longer one raises
        :class:`OpusDecodeError`. For a lost packet (``None``, or recovery
        with ``fec=True`` from the packet after it) it must be exactly the
        missing duration. If that packet carries no in-band copy, libopus
        conceals the loss instead.
        """
        state = self._handle()
        self._check_frame_size(frame_size)
        if packet is None:
            if fec:
                raise MediaUsageError("fec=True needs the packet that follows the lost one")
            length = 0
        else:
            _check_packet(packet)
            length = len(packet)
        samples = self._lib.decode(state, packet, length, self._pcm, frame_size, int(fec))
        if samples < 0:
            raise self._decode_error(samples, length, frame_size)
        return _host_order(ctypes.string_at(self._pcm, self._pcm_bytes(samples)))

    def reset(self) -> None:
        """Forget the stream so far, as before a new stream from another encoder."""
        rc = self._lib.decoder_ctl(self._handle(), _RESET_STATE)
        if rc < 0:
            raise self._lib.error("OPUS_RESET_STATE", rc)

    def _check_frame_size(self, frame_size: int) -> None:
        if not 0 < frame_size <= self._max_frame or frame_size % self._step:
            raise MediaUsageError(
                f"frame_size {frame_size} is not a multiple of {self._step} "
                f"(2.5 ms) up to {self._max_frame} (120 ms) at {self._sample_rate} Hz"
            )

    def _decode_error(self, errno: int, length: int, frame_size: int) -> OpusDecodeError:
        text = self._lib.text(errno)
        if errno == _OPUS_BUFFER_TOO_SMALL:
            text = f"it holds more than frame_size={frame_size} samples ({text})"
        return OpusDecodeError(f"Opus packet of {length} bytes did not decode: {text}", errno=errno)


def packet_samples(packet: bytes, sample_rate: int) -> int:
    """Samples per channel that ``packet`` decodes to at ``sample_rate``.

    Reads only the packet's header, so a jitter buffer can learn a packet's
    duration without decoding it. A malformed header raises
    :class:`OpusDecodeError`.
    """
    _check_format(sample_rate, 1)
    _check_packet(packet)
    lib = _libopus()
    samples = int(lib.packet_get_nb_samples(packet, len(packet), sample_rate))
    if samples < 0:
        raise OpusDecodeError(
            f"Opus packet header is malformed: {lib.text(samples)}", errno=samples
        )
    return samples

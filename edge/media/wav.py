"""WAV files as a call's audio: a source that plays one, a sink that records one.

Only what a voice call needs: PCM, 16-bit, mono, any sample rate when reading
(converted to the call's 16 kHz through :mod:`edge.media.resample`), 16 kHz
when writing. The RIFF header is parsed here rather than by the standard
``wave`` module, so that every way a file can be wrong ends in a
:class:`WavError` that says which, and so that a file whose sizes were never
finalised (a recorder that died, a streaming writer's ``0xFFFFFFFF``) still
reads up to its last whole sample.

A :class:`WavSink` keeps its header true after every frame: it appends the
samples, then rewrites the two size fields in place (``pwrite``, two 4-byte
writes). A recorder killed mid-call therefore leaves a valid file holding
everything up to its last frame, and :meth:`WavSink.close` has nothing left to
finalise but the file descriptor.
"""

from __future__ import annotations

import os
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edge.errors import RemoteError
from edge.media.errors import MediaError, MediaUsageError
from edge.media.resample import Resampler

RATE = 16000
"""The call's rate: what a source gives and a sink takes."""
FRAME_SAMPLES = 320
"""One 20 ms frame at :data:`RATE`."""
FRAME_BYTES = 2 * FRAME_SAMPLES
MIN_RATE, MAX_RATE = 8000, 192000
"""Rates a source file may have."""
MAX_CHUNKS = 64
"""Chunks (LIST, fact, ...) skipped looking for ``fmt `` and ``data`` before giving up."""
MAX_FMT_BYTES = 1024
MAX_DATA_BYTES = 0xFFFFFFFF - 36
"""The most a RIFF file's 32-bit sizes can describe."""
MAX_READ_BYTES = 64 << 20
"""The most :func:`read_wav` loads whole (about 35 minutes at 16 kHz)."""

_PCM = 1
_EXTENSIBLE = 0xFFFE
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
"""RIFF, size, WAVE, "fmt ", 16, PCM, channels, rate, byte rate, block align, bits,
"data", size: the 44-byte header a sink writes."""


class WavError(MediaError, RemoteError):
    """A WAV file is missing, unreadable, not a WAV file, or not 16-bit mono PCM."""


@dataclass(frozen=True)
class WavInfo:
    rate: int
    channels: int
    bits: int
    data_offset: int
    data_bytes: int
    """Bytes of whole samples present in the file (a truncated file counts what is there)."""

    @property
    def seconds(self) -> float:
        return self.data_bytes / (2 * self.rate)


def inspect(path: Path) -> WavInfo:
    """The format of a WAV file a :class:`WavSource` can play; :class:`WavError` if none."""
    try:
        with path.open("rb") as file:
            return _parse(file, os.fstat(file.fileno()).st_size)
    except FileNotFoundError:
        raise WavError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WavError(f"{path}: is a folder, not a WAV file") from None
    except OSError as exc:
        raise WavError(f"{path}: cannot read it ({exc.strerror})") from None
    except WavError as exc:
        raise WavError(f"{path}: {exc}") from None


def read_wav(path: Path) -> tuple[int, bytes]:
    """A whole 16-bit mono file: its rate and its samples, up to :data:`MAX_READ_BYTES`."""
    info = inspect(path)
    if info.data_bytes > MAX_READ_BYTES:
        raise WavError(f"{path}: {info.data_bytes} bytes of audio, more than {MAX_READ_BYTES}")
    with path.open("rb") as file:
        file.seek(info.data_offset)
        return info.rate, file.read(info.data_bytes)


def write_wav(path: Path, pcm: bytes, rate: int = RATE) -> None:
    """Write ``pcm`` (16-bit mono at ``rate``) as one WAV file."""
    sink = WavSink(path, rate=rate)
    try:
        sink.write(pcm)
    finally:
        sink.close()


def _parse(file: BinaryIO, size: int) -> WavInfo:
    riff = file.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:] != b"WAVE":
        raise WavError("not a WAV file (no RIFF/WAVE header)")
    fmt: bytes | None = None
    for _ in range(MAX_CHUNKS):
        head = file.read(8)
        if len(head) < 8:
            break
        kind, length = struct.unpack("<4sI", head)
        if kind == b"data":
            if fmt is None:
                raise WavError("not a WAV file (its data comes before its format)")
            return _info(fmt, file.tell(), min(length, size - file.tell()))
        if kind == b"fmt ":
            if not 16 <= length <= MAX_FMT_BYTES:
                raise WavError(f"not a WAV file (a format chunk of {length} bytes)")
            fmt = file.read(length)
            file.seek(length & 1, os.SEEK_CUR)
        else:
            file.seek(length + (length & 1), os.SEEK_CUR)
    raise WavError("not a WAV file (no format and data chunks)")


def _info(fmt: bytes, offset: int, present: int) -> WavInfo:
    if len(fmt) < 16:
        raise WavError("not a WAV file (its format chunk is cut short)")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        # WAVE_FORMAT_EXTENSIBLE: the real format is the first two bytes of the
        # sub-format GUID, which follows the 8 extension bytes after cbSize.
        (tag,) = struct.unpack_from("<H", fmt, 24)
    if tag != _PCM:
        raise WavError(f"not PCM (format tag {tag:#06x}); save it as 16-bit PCM")
    if channels != 1 or bits != 16:
        raise WavError(f"not 16-bit mono ({bits}-bit, {channels} channel(s))")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise WavError(f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE}")
    return WavInfo(rate, channels, bits, offset, max(0, present) & ~1)


class WavSource:
    """A WAV file as a call's microphone: one 20 ms, 16 kHz frame per :meth:`read`.

    Files at another rate are resampled. At the end of the file it starts over
    (``loop=True``) or gives silence. An empty file gives silence.
    """

    def __init__(self, path: Path, *, loop: bool = True) -> None:
        self.info = inspect(path)
        self.loop = loop
        self._file = path.open("rb")
        self._file.seek(self.info.data_offset)
        self._left = self.info.data_bytes
        self._chunk = 2 * max(1, round(self.info.rate * FRAME_SAMPLES / RATE))
        self._resampler = Resampler(self.info.rate, RATE) if self.info.rate != RATE else None
        self._pending = bytearray()

    def read(self) -> bytes:
        while len(self._pending) < FRAME_BYTES:
            raw = self._next_chunk()
            if not raw:
                self._pending.extend(bytes(FRAME_BYTES - len(self._pending)))
                break
            self._pending.extend(self._resampler.process(raw) if self._resampler else raw)
        frame = bytes(self._pending[:FRAME_BYTES])
        del self._pending[:FRAME_BYTES]
        return frame

    def close(self) -> None:
        self._file.close()
        if self._resampler is not None:
            self._resampler.close()

    def _next_chunk(self) -> bytes:
        if self._left == 0 and self.loop and self.info.data_bytes:
            self._file.seek(self.info.data_offset)
            self._left = self.info.data_bytes
        raw = self._file.read(min(self._chunk, self._left))
        # A file that shrank under us reads short: treat it as ended.
        self._left = self._left - len(raw) if raw else 0
        return raw[: len(raw) & ~1]


class WavSink:
    """Records a call's received audio to a WAV file (16-bit mono), frame by frame.

    The header is true after every :meth:`write` (see the module docstring).
    Past :data:`MAX_DATA_BYTES` the rest is dropped and counted in ``dropped``.
    """

    def __init__(self, path: Path, *, rate: int = RATE) -> None:
        if not MIN_RATE <= rate <= MAX_RATE:
            raise MediaUsageError(f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE}")
        self.path = path
        self.rate = rate
        self.data_bytes = 0
        self.dropped = 0
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise WavError(f"{path}: cannot write it ({exc.strerror})") from None
        # An owner that never closes it (a daemon stopped mid-call) loses nothing:
        # the header is already true; this only gives the descriptor back.
        self._finalizer = weakref.finalize(self, os.close, self._fd)
        try:
            self._write_all(self._header(0))
        except OSError as exc:
            self.close()
            raise WavError(f"{path}: cannot write it ({exc.strerror})") from None

    def write(self, pcm: bytes) -> None:
        """Append samples; an odd trailing byte is a caller's mistake."""
        if len(pcm) & 1:
            raise MediaUsageError(f"PCM length {len(pcm)} is not whole 16-bit samples")
        room = MAX_DATA_BYTES - self.data_bytes
        if len(pcm) > room:
            self.dropped += len(pcm) - (room & ~1)
            pcm = pcm[: room & ~1]
        if not pcm:
            return
        self._write_all(pcm)
        self.data_bytes += len(pcm)
        fd = self._open_fd()
        os.pwrite(fd, struct.pack("<I", 36 + self.data_bytes), 4)
        os.pwrite(fd, struct.pack("<I", self.data_bytes), 40)

    def close(self) -> None:
        self._fd = None
        self._finalizer()

    def _header(self, data_bytes: int) -> bytes:
        return _HEADER.pack(
            b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, _PCM, 1, self.rate,
            2 * self.rate, 2, 16, b"data", data_bytes,
        )  # fmt: skip

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._open_fd(), view) :]

    def _open_fd(self) -> int:
        if self._fd is None:
            raise MediaUsageError(f"{self.path}: the recording is closed")
        return self._fd

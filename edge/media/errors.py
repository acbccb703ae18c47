"""Errors of the media package: codecs, jitter buffer and audio I/O.

:class:`MediaError` is the root, so a caller can catch everything media raises
in one clause. Below it the usual split applies: :class:`MediaUsageError` and
:class:`OpusError` are our own mistakes (a bad argument, or libopus refusing a
call we made), :class:`OpusDecodeError` is a peer's packet that would not
decode and should be counted and concealed, not treated as a bug.
"""

from edge.errors import EdgeError, LocalError, RemoteError
from edge.wire.codes import ErrorCode


class MediaError(EdgeError):
    """Root of every error raised under :mod:`edge.media`."""


class MediaUsageError(MediaError, LocalError):
    """An argument was out of range, or a closed coder was used."""


class OpusUnavailable(MediaError, LocalError):
    """libopus could not be loaded; the device image lacks the ``libopus0`` package."""

    code = ErrorCode.UNAVAILABLE


class OpusError(MediaError, LocalError):
    """libopus rejected a call on our side (create, ctl or encode).

    ``errno`` is the negative number libopus returned and ``strerror`` its own
    description of it, as ``opus_strerror`` gives it.
    """

    def __init__(self, message: str, *, errno: int, strerror: str) -> None:
        super().__init__(f"{message}: {strerror} ({errno})")
        self.errno = errno
        self.strerror = strerror


class OpusDecodeError(MediaError, RemoteError):
    """A packet from a peer was empty, oversized or rejected by libopus.

    ``errno`` is libopus's error number, or ``None`` when the packet was
    refused before it reached libopus.
    """

    code = ErrorCode.MALFORMED

    def __init__(
        self, message: str, *, errno: int | None = None, code: ErrorCode | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.errno = errno

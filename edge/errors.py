"""The root of every error edge raises.

Two branches, as h11 does it: :class:`LocalError` means our caller misused an
API (a bug here), :class:`RemoteError` means a peer, a file or a line of input
was wrong (expected in the field: count it, answer it, carry on). Each error
carries the :class:`~edge.wire.codes.ErrorCode` that an ERROR message would send.
"""

from edge.wire.codes import ErrorCode


class EdgeError(Exception):
    """Root of all edge errors."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class LocalError(EdgeError):
    """The caller used an API wrongly; not the peer's fault."""


class RemoteError(EdgeError):
    """Input from outside (network, file, serial line, button) was wrong."""


class ConfigError(RemoteError):
    """A configuration file is wrong; the message names file, key and line."""

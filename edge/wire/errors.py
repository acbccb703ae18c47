"""Errors of the wire package: what a parser says about bad bytes, and build misuse.

Parsing untrusted bytes raises only a :class:`WireError` subclass, each carrying
the :class:`~edge.wire.codes.ErrorCode` that an ERROR message would send back;
the message text names the message type and the field at fault. Building a
message from bad values is the caller's bug and raises :class:`BuildError`
(a :class:`~edge.errors.LocalError`), or :class:`CapExceeded` when a value is
longer than the format allows.
"""

from edge.errors import LocalError, RemoteError
from edge.wire.codes import PROTOCOL_VERSION, ErrorCode


class WireError(RemoteError):
    """Received bytes are not a valid edge message; subclasses say why."""

    code = ErrorCode.MALFORMED


class Truncated(WireError):
    """The data ends before the header, or before the body the header announces."""

    code = ErrorCode.TRUNCATED


class Oversized(WireError):
    """A length, a count or a whole body is above its cap."""

    code = ErrorCode.OVERSIZED


class BadMagic(WireError):
    """The first two bytes are not the edge magic: not ours, or garbage."""

    code = ErrorCode.BAD_MAGIC


class UnsupportedVersion(WireError):
    """The header names a protocol version this build does not speak."""

    code = ErrorCode.UNSUPPORTED_VERSION

    def __init__(self, version: int) -> None:
        super().__init__(
            f"protocol version {version} is not supported (this build speaks {PROTOCOL_VERSION})"
        )
        self.version = version


class UnknownType(WireError):
    """The header's type byte names no message this build knows."""

    code = ErrorCode.UNKNOWN_TYPE

    def __init__(self, type_value: int) -> None:
        super().__init__(f"unknown message type 0x{type_value:02x}")
        self.type_value = type_value


class Malformed(WireError):
    """A field holds a value its declaration forbids, or the body has the wrong size."""

    code = ErrorCode.MALFORMED


class BuildError(LocalError):
    """A value given to a builder does not fit its field (wrong type, range or shape)."""

    code = ErrorCode.MALFORMED


class CapExceeded(BuildError):
    """A text, blob or array given to a builder is longer than its field's cap."""

    code = ErrorCode.OVERSIZED

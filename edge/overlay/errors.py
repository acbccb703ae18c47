"""Errors of the supernode overlay.

:class:`OverlayError` and its children are a peer's fault (a record that does
not validate, a reply nobody asked for); :class:`OverlayMisuse` is our caller's.
"""

from edge.errors import LocalError, RemoteError
from edge.wire.codes import ErrorCode


class OverlayError(RemoteError):
    """A peer's overlay traffic was wrong."""


class UnexpectedReply(OverlayError):
    """A reply came from a node the lookup never asked."""

    code = ErrorCode.MALFORMED


class RecordRefused(OverlayError):
    """A record failed validation: forged, for another key, or expired."""

    code = ErrorCode.FORBIDDEN


class StaleRecord(RecordRefused):
    """A record older than (or as old as) the one held: a replay."""

    code = ErrorCode.REPLAYED


class RecordTooLarge(OverlayError):
    """A record is longer than the store accepts."""

    code = ErrorCode.OVERSIZED


class StoreFull(OverlayError):
    """The per-key or total record cap is reached."""

    code = ErrorCode.BUSY


class OverlayMisuse(LocalError):
    """The caller used an overlay API wrongly (a bad id, a finished lookup...)."""

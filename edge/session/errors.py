"""Errors of the session layer."""

from edge.errors import LocalError, RemoteError
from edge.wire.codes import ErrorCode


class SessionError(RemoteError):
    """A peer's session traffic was wrong."""


class UnknownSession(SessionError):
    """A datagram named a session index we do not hold."""

    code = ErrorCode.UNKNOWN_SESSION


class NotAllowedHere(SessionError):
    """A message type arrived where the session protocol does not allow it."""

    code = ErrorCode.MALFORMED


class HandshakeRejected(SessionError):
    """The handshake completed cryptographically but its content is unacceptable."""

    code = ErrorCode.HANDSHAKE_FAILED


class Overloaded(SessionError):
    """Too many sessions or half-open handshakes; the datagram was dropped."""

    code = ErrorCode.RATE_LIMITED


class SessionUnusable(LocalError):
    """The caller used a session that is not established, or closed."""

    code = ErrorCode.UNKNOWN_SESSION


class HandshakeTimeout(SessionError):
    """The peer did not complete the handshake in time."""

    code = ErrorCode.HANDSHAKE_FAILED


class PeerRefused(SessionError):
    """The peer answered our handshake with an ERROR (busy, wrong version...)."""

    code = ErrorCode.UNAVAILABLE

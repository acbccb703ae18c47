"""Errors of the supernode package."""

from edge.errors import RemoteError
from edge.wire.codes import ErrorCode


class SupernodeError(RemoteError):
    """Root of the supernode's errors."""


class SupernodeBindError(SupernodeError):
    """A configured port could not be bound (taken, or no permission for a port below 1024)."""

    code = ErrorCode.UNAVAILABLE

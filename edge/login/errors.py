"""Errors of the login server and its stores."""

from edge.errors import LocalError, RemoteError
from edge.wire.codes import ErrorCode


class LoginError(RemoteError):
    """A client's request to the login server was refused."""


class AuthFailed(LoginError):
    """Unknown user, wrong password, disabled account or bad device proof: one error, one text."""

    code = ErrorCode.AUTH_FAILED


class Throttled(LoginError):
    """Too many failures from this account or address; try again later."""

    code = ErrorCode.RATE_LIMITED


class NotAllowed(LoginError):
    """The request is understood but not allowed (a buddy op from the wrong state...)."""

    code = ErrorCode.FORBIDDEN


class NotFound(LoginError):
    code = ErrorCode.NOT_FOUND


class MailboxFull(LoginError):
    """The recipient's mailbox is at its quota; the sender is told so."""

    code = ErrorCode.BUSY


class StoreError(RemoteError):
    """The database failed (connection lost, disk full, ...): nothing was written."""

    code = ErrorCode.UNAVAILABLE


class StoreUsageError(LocalError):
    """The store was asked for something impossible (a duplicate user, an unknown one)."""


class UserExists(StoreUsageError):
    code = ErrorCode.FORBIDDEN


class NoSuchUser(StoreUsageError):
    code = ErrorCode.NOT_FOUND

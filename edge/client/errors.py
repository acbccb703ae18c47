"""Errors of the client package."""

from edge.errors import LocalError, RemoteError
from edge.wire.codes import ErrorCode


class LoginRefused(RemoteError):
    """The login server said no; ``code`` says why (AUTH_FAILED, RATE_LIMITED, ...)."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message, code=code)


class ServerError(RemoteError):
    """The login server answered a request with an ERROR."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message, code=code)


class UnexpectedReply(RemoteError):
    """The login server answered with a message we did not ask for."""

    code = ErrorCode.MALFORMED


class NoDevices(RemoteError):
    """The recipient has no enrolled device: nothing can be sealed for them."""

    code = ErrorCode.NOT_FOUND


class PromotionMisuse(LocalError):
    """The promotion or dial-back core was used wrongly: a measurement that is not a
    finite number >= 0, limits that contradict each other, a message it does not take."""

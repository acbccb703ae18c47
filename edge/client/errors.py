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


class LoginUnreachable(RemoteError):
    """No connection to the login server could be made (refused, or no answer in time):
    the server said nothing, so a supernode may still carry the login (a login tunnel)."""

    code = ErrorCode.UNAVAILABLE


class UnexpectedReply(RemoteError):
    """The login server answered with a message we did not ask for."""

    code = ErrorCode.MALFORMED


class NoDevices(RemoteError):
    """The recipient has no enrolled device: nothing can be sealed for them."""

    code = ErrorCode.NOT_FOUND


class PromotionMisuse(LocalError):
    """The promotion or dial-back core was used wrongly: a measurement that is not a
    finite number >= 0, limits that contradict each other, a message it does not take."""


class UplinkFailed(RemoteError):
    """No supernode could be reached or would take this device; the text says which and why."""

    code = ErrorCode.UNAVAILABLE


class MessagingMisuse(LocalError):
    """The messaging core was used wrongly: empty or oversized text, a bad user id,
    a ``now`` that is not a finite number, a message type it does not take."""


class OutboxFull(MessagingMisuse):
    """Too many messages wait for a receipt; send again once some are delivered."""

    code = ErrorCode.BUSY


class MessageRefused(RemoteError):
    """A peer's INSTANT_MESSAGE or MESSAGE_RECEIPT broke the rules; it was dropped
    (and counted), nothing else changed."""

    code = ErrorCode.MALFORMED


class FileMisuse(LocalError):
    """A file-transfer core was used wrongly: inconsistent arguments, a message
    type it does not take, a resumed transfer without a way to read the part back."""


class FileRefused(RemoteError):
    """A FILE_OFFER cannot be accepted: a name with a directory in it, a size over
    the cap, or an offer that differs from the saved transfer with the same id."""

    code = ErrorCode.FORBIDDEN


class FileProtocolError(RemoteError):
    """A FILE_CHUNK or FILE_ACK broke the rules (outside the window, beyond the
    size, another file's id); it was dropped and counted, the transfer goes on."""

    code = ErrorCode.MALFORMED


class PeerUnreachable(RemoteError):
    """Another user's device could not be reached: not online, or it did not answer."""

    code = ErrorCode.NOT_FOUND


class PeerRefused(PeerUnreachable):
    """Every device of the user that was found was refused: its presence record or its
    certificate did not hold up (revoked, expired, another issuer's); the text names
    each device and why."""

    code = ErrorCode.FORBIDDEN


class SignalTimeout(PeerUnreachable):
    """A handshake through the supernodes got no answer in time: the peer is gone, or
    a supernode on the way swallows signalling."""


# -- calls (edge.client.call) -------------------------------------------------------


class CallMisuse(LocalError):
    """A call core was used wrongly: an action its state does not allow (answer() when
    not ringing), a message of another call, or a configuration that contradicts itself."""


class CheckRefused(RemoteError):
    """A connectivity check (STUN Binding) cannot be accepted; ``status`` is the STUN
    error to answer: 400 malformed, 401 wrong credentials, 487 role conflict."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, code=ErrorCode.BAD_MAC if status == 401 else ErrorCode.MALFORMED)
        self.status = status

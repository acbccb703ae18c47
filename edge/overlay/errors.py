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


class PresenceRefused(RecordRefused):
    """A presence record failed one check; :attr:`reason` names which, for counters."""

    reason = "refused"


class MalformedPresence(PresenceRefused):
    """The bytes are not a presence record, or its times contradict each other."""

    code = ErrorCode.MALFORMED
    reason = "malformed"


class PresenceCertificateRefused(PresenceRefused):
    """The record's certificate did not verify; ``code`` is the certificate error's."""

    def __init__(self, message: str, *, code: ErrorCode) -> None:
        super().__init__(message, code=code)
        self.reason = "certificate-" + code.name.removeprefix("CERT_").lower().replace("_", "-")


class PresenceWrongUser(PresenceRefused):
    """The record is for another user than its certificate, or stored under another key."""

    reason = "wrong-user"


class PresenceBadSignature(PresenceRefused):
    """The record's signature does not verify with its certificate's signing key: forged."""

    reason = "bad-signature"


class PresenceExpired(PresenceRefused):
    """The record's expiry has passed."""

    reason = "expired"


class PresenceTooLong(PresenceRefused):
    """The record claims a longer lifetime than the format allows."""

    reason = "lifetime-too-long"


class PresenceFromFuture(PresenceRefused):
    """The record was issued later than our clock, beyond the tolerated skew."""

    reason = "issued-in-future"

"""Errors of the STUN package: what the parsers say about bad bytes, and misuse.

Parsing untrusted bytes raises only a :class:`StunError` subclass, each with the
:class:`~edge.wire.codes.ErrorCode` an edge ERROR message would carry; the text
names the attribute at fault. A failed MESSAGE-INTEGRITY or FINGERPRINT check is
also a remote error (:class:`IntegrityError`, :class:`FingerprintError`), and so
is a TCP/TLS stream that has lost its framing (:class:`FramingError`).
Building from bad values, or preparing an unusable password, is the caller's bug
and raises :class:`StunBuildError` or :class:`CredentialError`; so is calling
the TURN client out of order (:class:`TurnUsageError`), and giving the RFC 5780
server addresses it cannot serve or a socket it does not hold
(:class:`DiscoveryError`).
"""

from edge.errors import LocalError, RemoteError
from edge.wire.codes import ErrorCode


class StunError(RemoteError):
    """Received bytes are not a valid STUN or ChannelData message."""

    code = ErrorCode.MALFORMED


class StunTruncated(StunError):
    """The data ends before the header, or before what a length field announces."""

    code = ErrorCode.TRUNCATED


class StunOversized(StunError):
    """A length or a count is above its cap (message size, attribute count, a value)."""

    code = ErrorCode.OVERSIZED


class NotStun(StunError):
    """The first two bits are not zero or the magic cookie is wrong: not STUN at all."""

    code = ErrorCode.BAD_MAGIC


class IntegrityError(StunError):
    """MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 is missing or does not verify."""

    code = ErrorCode.BAD_MAC


class FingerprintError(StunError):
    """FINGERPRINT is missing or does not match the message."""

    code = ErrorCode.BAD_MAC


class FramingError(StunError):
    """A TCP/TLS stream of STUN and ChannelData cannot be cut into messages: close it.

    ``code`` is OVERSIZED for a frame announced over its cap, MALFORMED otherwise.
    """

    code = ErrorCode.MALFORMED


class StunBuildError(LocalError):
    """A message or attribute value given to a builder cannot be encoded."""

    code = ErrorCode.MALFORMED


class CredentialError(LocalError):
    """A username, realm or password cannot be prepared for a key (RFC 8265)."""


class TurnUsageError(LocalError):
    """The TURN client was asked for something its state or its caps do not allow:
    sending before the allocation exists or to a peer without a permission, or
    more permissions or channels than its limits hold."""


class DiscoveryError(LocalError):
    """The RFC 5780 server was given addresses that are not two IPs and two ports,
    or a datagram from a socket that is not one of its four."""

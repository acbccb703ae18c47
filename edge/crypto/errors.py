"""Errors of the crypto package: handshakes, transports, keys and certificates."""

from edge.errors import LocalError, RemoteError
from edge.wire.codes import ErrorCode


class CryptoError(RemoteError):
    """A peer's cryptographic input was wrong."""


class HandshakeError(CryptoError):
    """A Noise handshake message could not be processed."""

    code = ErrorCode.HANDSHAKE_FAILED


class DecryptError(CryptoError):
    """Authentication of a ciphertext failed (bad MAC, wrong key, tampering)."""

    code = ErrorCode.BAD_MAC


class ReplayError(CryptoError):
    """A transport counter was already seen or fell behind the replay window."""

    code = ErrorCode.REPLAYED


class NoiseStateError(LocalError):
    """A Noise object was used out of order (our bug, not the peer's)."""


class KeyFileError(RemoteError):
    """A key file is missing, malformed or readable by others."""


class CertificateFileError(RemoteError):
    """A certificate file cannot be read, is empty, or is too large to be one."""


class CertificateError(CryptoError):
    """A certificate did not verify; subclasses say why."""


class CertificateExpired(CertificateError):
    code = ErrorCode.CERT_EXPIRED


class CertificateNotYetValid(CertificateError):
    code = ErrorCode.CERT_NOT_YET_VALID


class UnknownIssuer(CertificateError):
    code = ErrorCode.CERT_UNKNOWN_ISSUER


class BadSignature(CertificateError):
    code = ErrorCode.CERT_BAD_SIGNATURE


class CertificateRevoked(CertificateError):
    code = ErrorCode.CERT_REVOKED


class CertificateKeyMismatch(CertificateError):
    """The certificate names another key than the one the peer proved it holds."""

    code = ErrorCode.CERT_KEY_MISMATCH


class FrameError(CryptoError):
    """A stream frame was larger than allowed: the stream has lost its boundaries."""

    code = ErrorCode.OVERSIZED


class StaleRevocations(CertificateError):
    """A revocation list's ``next_update`` has passed: a newer list exists somewhere."""

    code = ErrorCode.REVOCATIONS_STALE

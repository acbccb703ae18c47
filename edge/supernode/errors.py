"""Errors of the supernode package."""

from edge.errors import RemoteError
from edge.wire.codes import ErrorCode


class SupernodeError(RemoteError):
    """Root of the supernode's errors."""


class SupernodeBindError(SupernodeError):
    """A configured port could not be bound (taken, or no permission for a port below 1024)."""

    code = ErrorCode.UNAVAILABLE


class SupernodeIdentityError(SupernodeError):
    """The supernode's keys or certificate are missing, unreadable or do not belong together."""

    code = ErrorCode.CERT_KEY_MISMATCH


class AttestationRefused(SupernodeError):
    """A dial-back attestation failed one check; :attr:`reason` names which, for counters."""

    code = ErrorCode.FORBIDDEN
    reason = "refused"


class MalformedAttestation(AttestationRefused):
    """The bytes are not a DialbackAttestation."""

    code = ErrorCode.MALFORMED
    reason = "malformed"


class AttestationCertificateRefused(AttestationRefused):
    """The attesting supernode's certificate did not verify; ``code`` is the certificate error's."""

    reason = "certificate"


class AttestationBadSignature(AttestationRefused):
    """The signature does not verify with the certificate's signing key."""

    code = ErrorCode.CERT_BAD_SIGNATURE
    reason = "signature"


class AttestationWrongClient(AttestationRefused):
    """The attestation is about another user or device than the one showing it."""

    reason = "client"


class AttestationStale(AttestationRefused):
    """Signed too long ago, or ahead of the verifier's clock beyond the allowed skew."""

    reason = "stale"


class AttestationSignerRefused(AttestationRefused):
    """The verifier does not take the signer for a supernode."""

    reason = "signer"

"""Certificates: a login server's signature over a device's two public keys.

A certificate says: "device ``device_id`` of user ``user_id`` holds Ed25519 key
S and X25519 key X, from ``not_before`` to ``not_after``", signed by an issuer
named by its key id. The bytes are declared in :mod:`edge.wire.messages`
(``CertificateTBS``); the signature covers exactly the encoded TBS bytes, and
a certificate travels as those bytes verbatim so nobody re-encodes before
verifying.

Verification runs the checks in a fixed order so that the error says the most
useful thing: the format, then a known issuer, then the signature (nothing
from an unsigned certificate is believed, not even its dates), then
revocation, then the validity window.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nacl.signing import VerifyKey

from edge.crypto.errors import (
    BadSignature,
    CertificateExpired,
    CertificateFileError,
    CertificateKeyMismatch,
    CertificateNotYetValid,
    CertificateRevoked,
    UnknownIssuer,
)
from edge.crypto.keys import IssuerKey, key_id
from edge.crypto.signing import verify_or_raise
from edge.errors import LocalError
from edge.wire.messages import build_certificate_tbs, parse_certificate

CERT_VERSION = 1
DEFAULT_SKEW = 120.0
"""Seconds of clock disagreement tolerated at both ends of the validity window.

Boards without a real-time clock start in 1970 until NTP answers; the agent
does not verify peers before its clock is set, and this covers the rest."""


@dataclass(frozen=True)
class Certificate:
    """A parsed certificate whose signature has been checked by :meth:`TrustStore.verify`."""

    serial: int
    user_id: str
    device_id: str
    sign_key: bytes
    dh_key: bytes
    not_before: int
    not_after: int
    issuer_key_id: bytes
    raw: bytes = field(repr=False)


def issue(
    issuer: IssuerKey,
    *,
    serial: int,
    user_id: str,
    device_id: str,
    sign_key: bytes,
    dh_key: bytes,
    not_before: int,
    not_after: int,
) -> bytes:
    """Sign a certificate; return its bytes as they travel on the wire."""
    if not_after <= not_before:
        raise LocalError("certificate validity: not_after must be later than not_before")
    tbs = build_certificate_tbs(
        {
            "version": CERT_VERSION,
            "serial": serial,
            "user_id": user_id,
            "device_id": device_id,
            "sign_key": sign_key,
            "dh_key": dh_key,
            "not_before": not_before,
            "not_after": not_after,
            "issuer_key_id": issuer.key_id,
        }
    )
    return bytes(tbs) + issuer.sign.sign(tbs).signature


class TrustStore:
    """The issuers a node believes and the serials they have revoked."""

    def __init__(self, issuers: Iterable[bytes] = (), *, skew: float = DEFAULT_SKEW) -> None:
        self._issuers: dict[bytes, VerifyKey] = {}
        self._revoked: dict[bytes, frozenset[int]] = {}
        self.skew = skew
        for public in issuers:
            self.add_issuer(public)

    def add_issuer(self, public: bytes) -> bytes:
        """Trust an issuer's Ed25519 public key; return its key id."""
        if len(public) != 32:
            raise LocalError("an issuer key is 32 bytes")
        kid = key_id(public)
        self._issuers[kid] = VerifyKey(public)
        return kid

    def issuer_key(self, key_id: bytes) -> VerifyKey | None:
        """The trusted issuer key with this id, or ``None`` if it is not trusted here."""
        return self._issuers.get(key_id)

    def set_revoked(self, issuer_key_id: bytes, serials: Iterable[int]) -> None:
        """Replace the revocation list of one issuer (as fetched, already verified)."""
        self._revoked[issuer_key_id] = frozenset(serials)

    def verify(
        self, raw: bytes, now: float, *, dh_key: bytes | None = None, user_id: str | None = None
    ) -> Certificate:
        """Check ``raw`` completely; return the certificate or raise the specific error.

        ``now`` is the time the validity window is checked at: the current
        time for a peer in a handshake, the signing time for something the
        certificate's key signed earlier (a presence record, at its
        ``issued_at``). Revocation is checked against the lists held now,
        whatever ``now`` is.

        ``dh_key`` is the Noise static key the peer proved it holds: the
        certificate must name exactly that key. ``user_id``, when given, is
        the user the caller expected to reach.
        """
        parsed = parse_certificate(raw)
        tbs = parsed.tbs
        cert = Certificate(
            serial=tbs.serial,
            user_id=tbs.user_id,
            device_id=tbs.device_id,
            sign_key=bytes(tbs.sign_key),
            dh_key=bytes(tbs.dh_key),
            not_before=tbs.not_before,
            not_after=tbs.not_after,
            issuer_key_id=bytes(tbs.issuer_key_id),
            raw=bytes(raw),
        )
        self._check_signature(cert, raw[: len(raw) - 64], bytes(parsed.signature))
        self._check_revoked(cert)
        self._check_window(cert, now)
        _check_binding(cert, dh_key, user_id)
        return cert

    def _check_signature(self, cert: Certificate, tbs: bytes, signature: bytes) -> None:
        verifier = self._issuers.get(cert.issuer_key_id)
        if verifier is None:
            raise UnknownIssuer(
                f"certificate serial {cert.serial} for {cert.user_id!r}: "
                f"issuer {cert.issuer_key_id.hex()} is not trusted here"
            )
        verify_or_raise(
            verifier,
            tbs,
            signature,
            lambda: BadSignature(
                f"certificate serial {cert.serial}: signature by issuer "
                f"{cert.issuer_key_id.hex()} does not verify"
            ),
        )

    def _check_revoked(self, cert: Certificate) -> None:
        if cert.serial in self._revoked.get(cert.issuer_key_id, frozenset()):
            raise CertificateRevoked(
                f"certificate serial {cert.serial} of {cert.user_id!r}/{cert.device_id!r} "
                "is revoked"
            )

    def _check_window(self, cert: Certificate, now: float) -> None:
        if now + self.skew < cert.not_before:
            raise CertificateNotYetValid(
                f"certificate serial {cert.serial} is valid from {cert.not_before}, "
                f"now is {int(now)}"
            )
        if now - self.skew > cert.not_after:
            raise CertificateExpired(
                f"certificate serial {cert.serial} expired at {cert.not_after}, now is {int(now)}"
            )


def _check_binding(cert: Certificate, dh_key: bytes | None, user_id: str | None) -> None:
    if dh_key is not None and dh_key != cert.dh_key:
        raise CertificateKeyMismatch(
            f"certificate serial {cert.serial} names another Noise key than the peer holds"
        )
    if user_id is not None and user_id != cert.user_id:
        raise CertificateKeyMismatch(
            f"certificate serial {cert.serial} is for {cert.user_id!r}, expected {user_id!r}"
        )


CERTIFICATE_FILE_MAX = 4096
"""No certificate is this large (the wire caps one far below): a bigger file is not one."""


def read_certificate(path: Path) -> bytes:
    """The bytes of the certificate file at ``path``, read with a cap; not verified.

    Raises :class:`CertificateFileError` naming the file and why it cannot be one.
    """
    try:
        with path.open("rb") as file:
            data = file.read(CERTIFICATE_FILE_MAX + 1)
    except OSError as exc:
        raise CertificateFileError(f"cannot read the certificate {path}: {exc.strerror}") from None
    if not data or len(data) > CERTIFICATE_FILE_MAX:
        raise CertificateFileError(f"{path} is not a certificate ({len(data)} bytes)")
    return data

"""Signed revocation lists: the certificate serials an issuer has revoked.

How it works: the login server signs a ``RevocationList`` (declared in
:mod:`edge.wire.messages`) with the same key that signs its certificates. The
list names that key by id, carries a version that grows with every
revocation, the time it was signed and the time by which a fresher one will be
out (``next_update``), and the revoked serials in strictly increasing order,
so each list has one encoding and the signature covers exactly the bytes that
travel. A device fetches it with REVOCATION_FETCH; supernodes may hand the
same bytes on, since nobody can alter them unseen.

:func:`verify_revocations` checks in a fixed order, as certificate
verification does: the format, a trusted issuer, the signature (nothing in an
unsigned list is believed, not even its dates), then freshness: a list whose
``next_update`` lies further in the past than the trust store's clock skew is
:class:`StaleRevocations`, because an attacker who can only replay would
otherwise keep a device on an old list for ever.

Replay inside the freshness window is what :class:`RevocationCache` stops. A
:class:`~edge.crypto.cert.TrustStore` keeps only the current serial set of
each issuer and replaces it whole, so applying an older list would quietly
un-revoke certificates. The cache sits beside one trust store, remembers the
version last applied for each issuer, and applies a list only when its
version is higher. It also gives the version to put in REVOCATION_FETCH.

Pure computation: the caller passes ``now``.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

from edge.crypto.cert import TrustStore
from edge.crypto.errors import BadSignature, StaleRevocations, UnknownIssuer
from edge.crypto.keys import IssuerKey
from edge.crypto.signing import verify_or_raise
from edge.errors import LocalError
from edge.wire.messages import build_revocation_list, parse_signed_revocation_list

SIGNATURE_SIZE = 64


@dataclass(frozen=True)
class VerifiedRevocations:
    """A revocation list whose signature and freshness :func:`verify_revocations` checked."""

    issuer_key_id: bytes
    version: int
    issued_at: int
    next_update: int
    serials: frozenset[int]
    raw: bytes = field(repr=False)
    """The exact signed bytes, to pass on to others unchanged."""


def sign_revocations(
    issuer: IssuerKey,
    *,
    version: int,
    issued_at: int,
    next_update: int,
    serials: Iterable[int],
) -> bytes:
    """Sign a revocation list; return its bytes as they travel (list, then signature).

    ``serials`` may come in any order and with repeats; the list holds each
    once, sorted. ``version`` starts at 1 (0 means "none" in REVOCATION_FETCH)
    and ``next_update`` must be later than ``issued_at``. More serials than a
    list can carry raise :class:`~edge.wire.errors.CapExceeded`.
    """
    if version < 1:
        raise LocalError(f"revocation list version {version}: versions start at 1")
    if next_update <= issued_at:
        raise LocalError("revocation list: next_update must be later than issued_at")
    signed_part = build_revocation_list(
        {
            "issuer_key_id": issuer.key_id,
            "version": version,
            "issued_at": issued_at,
            "next_update": next_update,
            "serials": _canonical(serials),
        }
    )
    return signed_part + issuer.sign.sign(signed_part).signature


def _canonical(serials: Iterable[int]) -> list[int]:
    unique = set(serials)
    for serial in unique:
        if isinstance(serial, bool) or not isinstance(serial, int):
            raise LocalError(f"revocation list: serial {serial!r} is not an int")
    return sorted(unique)


def verify_revocations(raw: bytes, trust: TrustStore, now: float) -> VerifiedRevocations:
    """Check ``raw`` completely; return its contents or raise the specific error.

    Raises a :class:`~edge.wire.errors.WireError` for bytes that are not a
    signed revocation list, :class:`UnknownIssuer`, :class:`BadSignature`, or
    :class:`StaleRevocations`. Pass the result to :meth:`RevocationCache.apply`.
    """
    raw = bytes(raw)
    parsed = parse_signed_revocation_list(raw)
    body = parsed.revocations
    verified = VerifiedRevocations(
        issuer_key_id=bytes(body.issuer_key_id),
        version=body.version,
        issued_at=body.issued_at,
        next_update=body.next_update,
        serials=frozenset(body.serials),
        raw=raw,
    )
    _check_signature(verified, trust, raw[:-SIGNATURE_SIZE], bytes(parsed.signature))
    _check_fresh(verified, now, trust.skew)
    return verified


def _check_signature(
    verified: VerifiedRevocations, trust: TrustStore, signed_part: bytes, signature: bytes
) -> None:
    verifier = trust.issuer_key(verified.issuer_key_id)
    if verifier is None:
        raise UnknownIssuer(
            f"revocation list version {verified.version}: issuer "
            f"{verified.issuer_key_id.hex()} is not trusted here"
        )
    verify_or_raise(
        verifier,
        signed_part,
        signature,
        lambda: BadSignature(
            f"revocation list version {verified.version}: signature by issuer "
            f"{verified.issuer_key_id.hex()} does not verify"
        ),
    )


def _check_fresh(verified: VerifiedRevocations, now: float, skew: float) -> None:
    if now - skew > verified.next_update:
        raise StaleRevocations(
            f"revocation list version {verified.version} of issuer "
            f"{verified.issuer_key_id.hex()} was due for replacement at "
            f"{verified.next_update}, now is {int(now)}"
        )


class RevocationCache:
    """The revocation-list version last applied to one trust store, per issuer."""

    def __init__(self, trust: TrustStore) -> None:
        self._trust = trust
        self._versions: dict[bytes, int] = {}

    @property
    def trust(self) -> TrustStore:
        """The trust store this cache keeps current."""
        return self._trust

    def known_version(self, issuer_key_id: bytes) -> int:
        """The version last applied for this issuer; 0 if none (as REVOCATION_FETCH says)."""
        return self._versions.get(issuer_key_id, 0)

    def apply(self, verified: VerifiedRevocations) -> bool:
        """Make the trust store refuse the listed serials, if this list is newer.

        Returns whether it was applied: a list no newer than the one applied
        before changes nothing, so a replayed old list cannot un-revoke.
        """
        if verified.version <= self.known_version(verified.issuer_key_id):
            return False
        self._trust.set_revoked(verified.issuer_key_id, verified.serials)
        self._versions[verified.issuer_key_id] = verified.version
        return True

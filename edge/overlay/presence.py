"""Signed presence records: where a user's device can be reached, unforgeable by supernodes.

Theory of operation
-------------------
A device that logs in through a supernode signs a record (``SignedPresence``
in :mod:`edge.wire.messages`): its user id and certificate, a sequence
number, when it signed, until when it is online and until when it may be
found, the supernode it is attached to (address and Noise static key) and its
candidates. The signature is Ed25519 by the key the certificate certifies,
over :data:`~edge.wire.messages.PRESENCE_CONTEXT` and the encoded PresenceTBS,
so nothing else edge signs can pass for a presence record. The supernode
stores it at the ``k`` nodes closest to ``key_for_user(user_id)`` and the
holders republish it every hour (:mod:`edge.overlay.node`). Only the device
can make a new one: a supernode can drop or withhold a record, never forge,
alter or extend one.

Two times say how fresh it is. Until ``online_until`` (:data:`ONLINE_FOR`
after signing) the device counts as online; it signs a new record every
:data:`REFRESH_EVERY` while it is. After that the record says "last seen at
``issued_at``" and stays findable until ``expires``: 72 hours and one of
margin after signing (:data:`~edge.wire.messages.PRESENCE_LIFETIME_MAX`),
so, as in the seed, a user who logged in within the last 72 hours is found.

The certificate is judged as it stood when the record was signed: its chain
and validity window are checked at the record's ``issued_at`` (with the trust
store's skew), not now. A device whose certificate lasts 24 hours (the login
server's default) therefore stays findable for the record's whole 72 hours,
although the certificate expires long before. Signing a new record after
expiry does not help: ``issued_at`` must lie in the window, so a backdated
record expires by ``not_after`` (plus the skew) + ``PRESENCE_LIFETIME_MAX``, as
an honest last record would. Revocation, though, is checked now, against the current lists;
the login server keeps a revoked serial listed for
:data:`~edge.wire.messages.REVOCATION_RETENTION` after ``not_after``, longer
than any record under the certificate can live, so a revoked device's records
are refused for as long as they could be found.

:func:`verify_presence` runs the checks in a fixed order and raises the
specific :class:`~edge.overlay.errors.PresenceRefused` for the first that
fails: the format (and times in order), the certificate (trusted issuer,
signature, valid at ``issued_at``, not revoked now), the record's signature,
the user (the record's and the certificate's, and the key it is stored under),
then the times (not issued in the future beyond the trust store's skew,
lifetime within the cap, not expired). The verdict's expiry is the record's
own ``expires``. :func:`presence_validator` wraps it as the
:data:`~edge.overlay.store.Validator` a :class:`~edge.overlay.store.RecordStore`
takes, and counts refusals by reason. Replays are the store's part: each
device fills one slot (keyed by its signing key) and an older or equal
sequence there is refused (:class:`~edge.overlay.errors.StaleRecord`).

Pure computation: ``now`` is passed in, or read from the clock the caller
gives the validator (Unix seconds, as certificates use).
"""

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge.crypto.cert import Certificate, TrustStore
from edge.crypto.errors import CertificateError
from edge.crypto.keys import DeviceKeys
from edge.crypto.revocation import RevocationCache
from edge.crypto.signing import verify_or_raise
from edge.overlay.errors import (
    MalformedPresence,
    OverlayMisuse,
    PresenceBadSignature,
    PresenceCertificateRefused,
    PresenceExpired,
    PresenceFromFuture,
    PresenceRefused,
    PresenceTooLong,
    PresenceWrongUser,
)
from edge.overlay.ids import id_to_bytes, key_for_user
from edge.overlay.store import Verdict
from edge.sansio import Address
from edge.wire.errors import WireError
from edge.wire.messages import (
    PRESENCE_CONTEXT,
    PRESENCE_LIFETIME_MAX,
    CandidateKind,
    Transport,
    build_presence_tbs,
    parse_certificate,
    parse_signed_presence,
)

PRESENCE_VERSION = 1
SIGNATURE_SIZE = 64
ONLINE_FOR = 900
"""Seconds a record says "online" after signing."""
REFRESH_EVERY = 600
"""Seconds between the records an online device signs: a refresh that needs a
lookup and a retry still lands before the last one's ``online_until``."""

Clock = Callable[[], float]


@dataclass(frozen=True)
class PresenceCandidate:
    """One address a device can be reached on, as a presence record carries it."""

    kind: CandidateKind
    transport: Transport
    address: Address
    priority: int


@dataclass(frozen=True)
class Presence:
    """A parsed presence record; nothing in it is believed before :func:`verify_presence`."""

    user_id: str
    certificate: bytes = field(repr=False)
    seq: int
    issued_at: int
    online_until: int
    expires: int
    supernode: Address
    supernode_key: bytes
    candidates: tuple[PresenceCandidate, ...]
    signature: bytes = field(repr=False)
    raw: bytes = field(repr=False)
    """The exact bytes, as signed and stored."""

    def is_online(self, now: float) -> bool:
        """Does the record still say "online" (else "last seen at ``issued_at``")?"""
        return now < self.online_until


@dataclass(frozen=True)
class VerifiedPresence:
    """A record that passed every check, with its verified certificate."""

    presence: Presence
    certificate: Certificate
    verdict: Verdict
    """Its slot (the device's signing key), sequence and expiry, for the store."""


def next_sequence(previous: int, now: float) -> int:
    """The sequence for a device's next record: its clock in ms, but always above ``previous``.

    A board whose clock stepped back (no real-time clock, NTP not yet
    answered) still publishes a record the holders take as newer.
    """
    return max(previous + 1, int(now * 1000))


def make_presence(
    keys: DeviceKeys,
    certificate: bytes,
    *,
    supernode: Address,
    supernode_key: bytes,
    candidates: Sequence[PresenceCandidate],
    seq: int,
    now: float,
    online_for: int | None = None,
    lifetime: int = PRESENCE_LIFETIME_MAX,
) -> bytes:
    """Sign a presence record for the device holding ``keys``; return its bytes.

    ``certificate`` must certify ``keys.sign`` (the user id is taken from it);
    ``seq`` comes from :func:`next_sequence`. The record says "online" for
    ``online_for`` seconds (:data:`ONLINE_FOR`, or the lifetime if shorter)
    and may be found for ``lifetime`` seconds. Raises
    :class:`~edge.overlay.errors.OverlayMisuse` for a lifetime out of range or
    a certificate of another key, and a :class:`~edge.wire.errors.BuildError`
    for a value that does not fit the format (16 candidates at most).
    """
    if not 0 < lifetime <= PRESENCE_LIFETIME_MAX:
        raise OverlayMisuse(f"a presence lifetime is 1..{PRESENCE_LIFETIME_MAX} s, not {lifetime}")
    if online_for is None:
        online_for = min(ONLINE_FOR, lifetime)
    if not 0 <= online_for <= lifetime:
        raise OverlayMisuse(f"online_for is 0..{lifetime} s, not {online_for}")
    user_id = _certified_user(certificate, keys)
    issued_at = int(now)
    tbs = build_presence_tbs(
        {
            "version": PRESENCE_VERSION,
            "user_id": user_id,
            "certificate": certificate,
            "sequence": seq,
            "issued_at": issued_at,
            "online_until": issued_at + online_for,
            "expires": issued_at + lifetime,
            "supernode": supernode,
            "supernode_key": supernode_key,
            "candidates": [_candidate_body(c) for c in candidates],
        }
    )
    return tbs + keys.sign.sign(PRESENCE_CONTEXT + tbs).signature


def _certified_user(certificate: bytes, keys: DeviceKeys) -> str:
    try:
        tbs = parse_certificate(certificate).tbs
    except WireError as exc:
        raise OverlayMisuse(f"not a certificate: {exc}") from None
    if bytes(tbs.sign_key) != keys.sign_public:
        raise OverlayMisuse(f"the certificate of {tbs.user_id!r} certifies another signing key")
    user_id: str = tbs.user_id
    return user_id


def _candidate_body(candidate: PresenceCandidate) -> dict[str, object]:
    return {
        "kind": candidate.kind,
        "transport": candidate.transport,
        "priority": candidate.priority,
        "address": candidate.address,
    }


def parse_presence(raw: bytes) -> Presence:
    """The fields of a presence record, checked for format and time order only.

    Raises :class:`~edge.overlay.errors.MalformedPresence`.
    """
    raw = bytes(raw)
    try:
        parsed = parse_signed_presence(raw)
    except WireError as exc:
        raise MalformedPresence(f"presence record: {exc}") from None
    tbs = parsed.tbs
    presence = Presence(
        user_id=tbs.user_id,
        certificate=bytes(tbs.certificate),
        seq=tbs.sequence,
        issued_at=tbs.issued_at,
        online_until=tbs.online_until,
        expires=tbs.expires,
        supernode=_address(tbs.supernode),
        supernode_key=bytes(tbs.supernode_key),
        candidates=tuple(
            PresenceCandidate(c.kind, c.transport, _address(c.address), c.priority)
            for c in tbs.candidates
        ),
        signature=bytes(parsed.signature),
        raw=raw,
    )
    _check_order(presence)
    return presence


def _address(parsed: tuple[str, int]) -> Address:
    host, port = parsed
    return host, port


def _check_order(presence: Presence) -> None:
    if not presence.issued_at <= presence.online_until <= presence.expires:
        raise MalformedPresence(
            f"presence record seq {presence.seq}: issued_at {presence.issued_at}, online_until "
            f"{presence.online_until} and expires {presence.expires} are out of order"
        )


def verify_presence(key: bytes, raw: bytes, trust: TrustStore, now: float) -> VerifiedPresence:
    """Check ``raw`` stored under the 32-byte overlay ``key`` completely, or say why not.

    Raises the :class:`~edge.overlay.errors.PresenceRefused` subclass of the
    first check that fails, in the order the module docstring gives.
    """
    presence = parse_presence(raw)
    cert = _verify_certificate(presence, trust)
    _check_signature(presence, cert)
    _check_user(key, presence, cert)
    _check_times(presence, now, trust.skew)
    return VerifiedPresence(presence, cert, Verdict(cert.sign_key, presence.seq, presence.expires))


def _verify_certificate(presence: Presence, trust: TrustStore) -> Certificate:
    """The certificate as it stood at ``issued_at``; revocation as the trust store holds it now."""
    try:
        return trust.verify(presence.certificate, presence.issued_at)
    except WireError as exc:
        raise MalformedPresence(f"presence record seq {presence.seq}: {exc}") from None
    except CertificateError as exc:
        raise PresenceCertificateRefused(
            f"presence record seq {presence.seq}, certificate checked at its issued_at: {exc}",
            code=exc.code,
        ) from exc


def _check_signature(presence: Presence, cert: Certificate) -> None:
    verify_or_raise(
        cert.sign_key,
        PRESENCE_CONTEXT + presence.raw[:-SIGNATURE_SIZE],
        presence.signature,
        lambda: PresenceBadSignature(
            f"presence record seq {presence.seq}: signature does not verify with the signing "
            f"key of certificate serial {cert.serial}"
        ),
    )


def _check_user(key: bytes, presence: Presence, cert: Certificate) -> None:
    if presence.user_id != cert.user_id:
        raise PresenceWrongUser(
            f"presence record for {presence.user_id!r} carries the certificate of {cert.user_id!r}"
        )
    if key != id_to_bytes(key_for_user(cert.user_id)):
        raise PresenceWrongUser(
            f"presence record of {cert.user_id!r} is offered under another user's key"
        )


def _check_times(presence: Presence, now: float, skew: float) -> None:
    what = f"presence record seq {presence.seq}"
    if presence.issued_at > now + skew:
        raise PresenceFromFuture(f"{what} is issued at {presence.issued_at}, now is {int(now)}")
    lifetime = presence.expires - presence.issued_at
    if lifetime > PRESENCE_LIFETIME_MAX:
        raise PresenceTooLong(f"{what} lives {lifetime} s, at most {PRESENCE_LIFETIME_MAX}")
    if presence.expires <= now:
        raise PresenceExpired(f"{what} expired at {presence.expires}, now is {int(now)}")


class PresenceValidator:
    """A :data:`~edge.overlay.store.Validator` for presence records that counts refusals.

    A node calls it for every STORE it takes and for every record a FIND_VALUE
    of its own brings back, so :attr:`refusals` counts both.
    """

    def __init__(self, trust: TrustStore, clock: Clock) -> None:
        self._trust = trust
        self._clock = clock
        self.refusals: Counter[str] = Counter()
        """Refused records by :attr:`~edge.overlay.errors.PresenceRefused.reason`."""

    def __call__(self, key: bytes, record: bytes) -> Verdict | None:
        try:
            return verify_presence(key, record, self._trust, self._clock()).verdict
        except PresenceRefused as err:
            self.refusals[err.reason] += 1
            return None


def presence_validator(
    trust: TrustStore, revocations: RevocationCache | None, clock: Clock
) -> PresenceValidator:
    """The validator a supernode gives its :class:`~edge.overlay.node.Node`.

    Revoked certificates are refused through ``trust``, which ``revocations``
    keeps current; a cache that updates another trust store would leave them
    accepted, so it is refused (:class:`~edge.overlay.errors.OverlayMisuse`).
    ``clock`` gives now in Unix seconds.
    """
    if revocations is not None and revocations.trust is not trust:
        raise OverlayMisuse("the revocation cache keeps another trust store current")
    return PresenceValidator(trust, clock)

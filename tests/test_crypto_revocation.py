"""Signed revocation lists: verified before believed, refused when stale, never rolled back."""

import pytest
from nacl.signing import VerifyKey

from edge.crypto.cert import DEFAULT_SKEW, TrustStore, issue
from edge.crypto.errors import BadSignature, CertificateRevoked, StaleRevocations, UnknownIssuer
from edge.crypto.keys import DeviceKeys, IssuerKey
from edge.crypto.revocation import (
    RevocationCache,
    VerifiedRevocations,
    sign_revocations,
    verify_revocations,
)
from edge.errors import LocalError
from edge.wire.codes import ErrorCode
from edge.wire.errors import CapExceeded, WireError
from edge.wire.messages import (
    REVOKED_SERIALS_MAX,
    build_revocation_list,
    parse_signed_revocation_list,
)

NOW = 1_800_000_000
DAY = 86_400


@pytest.fixture
def issuer() -> IssuerKey:
    return IssuerKey.generate()


@pytest.fixture
def trust(issuer: IssuerKey) -> TrustStore:
    return TrustStore([issuer.public])


def signed(
    issuer: IssuerKey, serials: list[int], *, version: int = 1, issued_at: int = NOW - 60
) -> bytes:
    return sign_revocations(
        issuer, version=version, issued_at=issued_at, next_update=issued_at + DAY, serials=serials
    )


def certificate(issuer: IssuerKey, serial: int) -> bytes:
    device = DeviceKeys.generate()
    return issue(
        issuer,
        serial=serial,
        user_id="alice",
        device_id="desk-1",
        sign_key=device.sign_public,
        dh_key=device.dh_public,
        not_before=NOW - 60,
        not_after=NOW + DAY,
    )


def test_round_trip_sorts_and_deduplicates(issuer: IssuerKey, trust: TrustStore) -> None:
    raw = signed(issuer, [9, 3, 9, 1 << 63, 1], version=4)
    verified = verify_revocations(raw, trust, NOW)
    assert verified == VerifiedRevocations(
        issuer_key_id=issuer.key_id,
        version=4,
        issued_at=NOW - 60,
        next_update=NOW - 60 + DAY,
        serials=frozenset({1, 3, 9, 1 << 63}),
        raw=raw,
    )
    assert parse_signed_revocation_list(raw).revocations.serials == [1, 3, 9, 1 << 63]


def test_empty_list_round_trips(issuer: IssuerKey, trust: TrustStore) -> None:
    assert verify_revocations(signed(issuer, []), trust, NOW).serials == frozenset()


def test_trust_store_gives_issuer_keys_by_id(issuer: IssuerKey, trust: TrustStore) -> None:
    key = trust.issuer_key(issuer.key_id)
    assert isinstance(key, VerifyKey)
    assert bytes(key) == issuer.public
    assert trust.issuer_key(IssuerKey.generate().key_id) is None


def test_any_changed_byte_breaks_the_signature(issuer: IssuerKey, trust: TrustStore) -> None:
    raw = signed(issuer, [1, 2, 3])
    # Bytes 8.. of the list (past the issuer id, which would make it UnknownIssuer)
    # and every byte of the signature. Changes that break the format are WireErrors.
    for index in range(8, len(raw)):
        altered = bytearray(raw)
        altered[index] ^= 0x01
        with pytest.raises((BadSignature, WireError)):
            verify_revocations(bytes(altered), trust, NOW)


def test_shortened_list_under_the_old_signature_is_forged(
    issuer: IssuerKey, trust: TrustStore
) -> None:
    raw = signed(issuer, [1, 2, 3])
    body = parse_signed_revocation_list(raw).revocations
    shorter = build_revocation_list({**body, "serials": [1, 3]})
    with pytest.raises(BadSignature) as caught:
        verify_revocations(shorter + raw[-64:], trust, NOW)
    assert caught.value.code is ErrorCode.CERT_BAD_SIGNATURE


def test_list_signed_by_another_key_in_the_issuers_name(
    issuer: IssuerKey, trust: TrustStore
) -> None:
    forger = IssuerKey.generate()
    body = build_revocation_list(
        {
            "issuer_key_id": issuer.key_id,
            "version": 99,
            "issued_at": NOW,
            "next_update": NOW + DAY,
            "serials": [],
        }
    )
    with pytest.raises(BadSignature):
        verify_revocations(body + forger.sign.sign(body).signature, trust, NOW)


def test_unknown_issuer(issuer: IssuerKey) -> None:
    with pytest.raises(UnknownIssuer) as caught:
        verify_revocations(signed(issuer, [1]), TrustStore([]), NOW)
    assert caught.value.code is ErrorCode.CERT_UNKNOWN_ISSUER


def test_stale_after_next_update_and_the_skew(issuer: IssuerKey, trust: TrustStore) -> None:
    raw = signed(issuer, [1], issued_at=NOW - DAY)  # next_update is NOW
    assert verify_revocations(raw, trust, NOW + DEFAULT_SKEW).version == 1
    with pytest.raises(StaleRevocations) as caught:
        verify_revocations(raw, trust, NOW + DEFAULT_SKEW + 1)
    assert caught.value.code is ErrorCode.REVOCATIONS_STALE
    assert "due for replacement" in str(caught.value)


def test_signature_is_checked_before_freshness(issuer: IssuerKey, trust: TrustStore) -> None:
    raw = bytearray(signed(issuer, [1], issued_at=NOW - 2 * DAY))
    raw[-1] ^= 0x01
    with pytest.raises(BadSignature):
        verify_revocations(bytes(raw), trust, NOW)


def test_garbage_raises_wire_errors(trust: TrustStore) -> None:
    for data in (b"", b"\x00" * 10, bytes(40000)):
        with pytest.raises(WireError):
            verify_revocations(data, trust, NOW)


def test_listed_serial_then_fails_verification(issuer: IssuerKey, trust: TrustStore) -> None:
    revoked, kept = certificate(issuer, 7), certificate(issuer, 8)
    cache = RevocationCache(trust)
    assert cache.apply(verify_revocations(signed(issuer, [7]), trust, NOW))
    with pytest.raises(CertificateRevoked):
        trust.verify(revoked, NOW)
    assert trust.verify(kept, NOW).serial == 8


def test_older_or_equal_version_is_not_applied(issuer: IssuerKey, trust: TrustStore) -> None:
    cert = certificate(issuer, 7)
    old = verify_revocations(signed(issuer, [], version=1), trust, NOW)
    new = verify_revocations(signed(issuer, [7], version=2), trust, NOW)
    cache = RevocationCache(trust)
    assert cache.known_version(issuer.key_id) == 0
    assert cache.apply(new)
    assert cache.known_version(issuer.key_id) == 2
    # A replayed older list, still fresh, must not un-revoke serial 7.
    assert not cache.apply(old)
    assert not cache.apply(new)
    assert cache.known_version(issuer.key_id) == 2
    with pytest.raises(CertificateRevoked):
        trust.verify(cert, NOW)


def test_newer_version_replaces_the_set(issuer: IssuerKey, trust: TrustStore) -> None:
    cert = certificate(issuer, 7)
    cache = RevocationCache(trust)
    assert cache.apply(verify_revocations(signed(issuer, [7], version=1), trust, NOW))
    assert cache.apply(verify_revocations(signed(issuer, [8], version=2), trust, NOW))
    assert trust.verify(cert, NOW).serial == 7


def test_versions_are_kept_per_issuer(issuer: IssuerKey, trust: TrustStore) -> None:
    other = IssuerKey.generate()
    trust.add_issuer(other.public)
    cache = RevocationCache(trust)
    assert cache.apply(verify_revocations(signed(issuer, [7], version=5), trust, NOW))
    assert cache.apply(verify_revocations(signed(other, [7], version=1), trust, NOW))
    assert (cache.known_version(issuer.key_id), cache.known_version(other.key_id)) == (5, 1)
    with pytest.raises(CertificateRevoked):
        trust.verify(certificate(other, 7), NOW)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"version": 0}, "versions start at 1"),
        ({"next_update": NOW}, "next_update must be later"),
        ({"serials": [1, "2"]}, "not an int"),
        ({"serials": [True]}, "not an int"),
        ({"serials": [-1]}, "not a u64"),
    ],
)
def test_signing_misuse_is_a_local_error(
    issuer: IssuerKey, changes: dict[str, object], match: str
) -> None:
    arguments: dict[str, object] = {
        "version": 1,
        "issued_at": NOW,
        "next_update": NOW + DAY,
        "serials": [1],
    } | changes
    with pytest.raises(LocalError, match=match):
        sign_revocations(issuer, **arguments)  # type: ignore[arg-type]


def test_too_many_serials_to_sign(issuer: IssuerKey) -> None:
    with pytest.raises(CapExceeded):
        signed(issuer, list(range(REVOKED_SERIALS_MAX + 1)))
    assert len(signed(issuer, list(range(REVOKED_SERIALS_MAX)))) == 32 + 2 + 8 * 4096 + 64

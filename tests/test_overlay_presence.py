"""Signed presence records: codec, every refusal with its reason, storage on k nodes, 72 hours.

Certificates here last 24 hours, as the login server issues them by default:
records must stay findable for 72 hours all the same.
"""

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.crypto.cert import DEFAULT_SKEW, TrustStore, issue
from edge.crypto.keys import DeviceKeys, IssuerKey
from edge.crypto.revocation import RevocationCache, sign_revocations, verify_revocations
from edge.overlay import errors
from edge.overlay.ids import id_to_bytes, key_for_user, node_id_for
from edge.overlay.lookup import LookupLimits
from edge.overlay.messages import Contact, Stored, StoreRecord, Values
from edge.overlay.node import Node
from edge.overlay.presence import (
    ONLINE_FOR,
    PresenceCandidate,
    PresenceValidator,
    make_presence,
    next_sequence,
    parse_presence,
    presence_validator,
    verify_presence,
)
from edge.overlay.sim import Network, join, publish, republish
from edge.overlay.store import RecordStore, StoreLimits, Validator
from edge.sansio import Address
from edge.wire.codes import ErrorCode
from edge.wire.errors import CapExceeded
from edge.wire.messages import (
    DHT_RECORD_MAX,
    PRESENCE_CANDIDATES_MAX,
    PRESENCE_CONTEXT,
    PRESENCE_FINDABLE,
    PRESENCE_LIFETIME_MAX,
    REVOCATION_RETENTION,
    SIGNED_PRESENCE_MAX,
    CandidateKind,
    Transport,
    build_presence_tbs,
    parse_signed_presence,
)

NOW = 1_700_000_000
HOUR = 3600
CERT_LIFETIME = 24 * HOUR
"""The login server's default certificate lifetime."""
ISSUER = IssuerKey.generate()
ALICE_DESK = DeviceKeys.generate()
ALICE_DOOR = DeviceKeys.generate()
MALLORY = DeviceKeys.generate()
ALICE = id_to_bytes(key_for_user("alice"))
SUPERNODE: Address = ("198.18.0.1", 4000)
SUPERNODE_KEY = bytes(range(32))
CANDIDATES = (
    PresenceCandidate(CandidateKind.HOST, Transport.UDP, ("192.168.1.20", 5000), 2130706431),
    PresenceCandidate(CandidateKind.SERVER_REFLEXIVE, Transport.UDP, ("198.18.5.5", 61000), 1),
    PresenceCandidate(CandidateKind.RELAY, Transport.TCP, ("2001:db8::7", 443), 0),
)


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


def certificate(
    keys: DeviceKeys,
    user_id: str = "alice",
    *,
    issuer: IssuerKey = ISSUER,
    serial: int = 1,
    valid_for: int = CERT_LIFETIME,
) -> bytes:
    return issue(
        issuer,
        serial=serial,
        user_id=user_id,
        device_id=f"device-{serial}",
        sign_key=keys.sign_public,
        dh_key=keys.dh_public,
        not_before=NOW - 60,
        not_after=NOW + valid_for,
    )


ALICE_DESK_CERT = certificate(ALICE_DESK)


def record(
    keys: DeviceKeys = ALICE_DESK,
    cert: bytes = ALICE_DESK_CERT,
    *,
    seq: int = 1,
    now: float = NOW,
    lifetime: int = PRESENCE_LIFETIME_MAX,
    online_for: int | None = None,
    supernode: Address = SUPERNODE,
    candidates: Sequence[PresenceCandidate] = CANDIDATES,
) -> bytes:
    return make_presence(
        keys,
        cert,
        supernode=supernode,
        supernode_key=SUPERNODE_KEY,
        candidates=candidates,
        seq=seq,
        now=now,
        online_for=online_for,
        lifetime=lifetime,
    )


def signed_by(keys: DeviceKeys, **changes: object) -> bytes:
    """A record with fields make_presence would never write, signed by ``keys``."""
    tbs: dict[str, object] = {
        "version": 1,
        "user_id": "alice",
        "certificate": ALICE_DESK_CERT,
        "sequence": 1,
        "issued_at": NOW,
        "online_until": NOW + ONLINE_FOR,
        "expires": NOW + PRESENCE_LIFETIME_MAX,
        "supernode": SUPERNODE,
        "supernode_key": SUPERNODE_KEY,
        "candidates": [],
    }
    tbs.update(changes)
    raw = build_presence_tbs(tbs)
    return raw + keys.sign.sign(PRESENCE_CONTEXT + raw).signature


def trust() -> TrustStore:
    return TrustStore([ISSUER.public])


def refusal(
    raw: bytes, *, key: bytes = ALICE, now: float = NOW, store: TrustStore | None = None
) -> errors.PresenceRefused:
    """The error verify_presence raises for ``raw``."""
    with pytest.raises(errors.PresenceRefused) as info:
        verify_presence(key, raw, store or trust(), now)
    return info.value


# ---------------------------------------------------------------- codec

addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)).flatmap(
    lambda host: st.integers(0, 0xFFFF).map(lambda port: (host, port))
)

candidates = st.builds(
    PresenceCandidate,
    st.sampled_from(CandidateKind),
    st.sampled_from(Transport),
    addresses,
    st.integers(0, 0xFFFFFFFF),
)


@given(
    cands=st.lists(candidates, max_size=PRESENCE_CANDIDATES_MAX),
    supernode=addresses,
    seq=st.integers(0, 2**64 - 1),
    lifetime=st.integers(1, PRESENCE_LIFETIME_MAX),
    data=st.data(),
)
def test_a_record_round_trips(
    cands: list[PresenceCandidate],
    supernode: Address,
    seq: int,
    lifetime: int,
    data: st.DataObject,
) -> None:
    online_for = data.draw(st.integers(0, lifetime))
    raw = record(
        seq=seq, lifetime=lifetime, online_for=online_for, supernode=supernode, candidates=cands
    )
    assert len(raw) <= SIGNED_PRESENCE_MAX
    presence = parse_presence(raw)
    assert (presence.user_id, presence.certificate) == ("alice", ALICE_DESK_CERT)
    assert (presence.seq, presence.issued_at) == (seq, NOW)
    assert (presence.online_until, presence.expires) == (NOW + online_for, NOW + lifetime)
    assert (presence.supernode, presence.supernode_key) == (supernode, SUPERNODE_KEY)
    assert presence.candidates == tuple(cands)
    assert presence.raw == raw
    parsed = parse_signed_presence(raw)
    assert build_presence_tbs(parsed.tbs) + parsed.signature == raw


@given(st.binary(max_size=SIGNED_PRESENCE_MAX + 8))
def test_any_bytes_parse_or_raise_malformed(raw: bytes) -> None:
    try:
        parse_presence(raw)
    except errors.MalformedPresence as exc:
        assert exc.code in (ErrorCode.MALFORMED, ErrorCode.OVERSIZED)
        assert exc.reason == "malformed"


def test_the_largest_record_fits_a_store_and_a_dht_store() -> None:
    assert StoreLimits().max_record_bytes >= SIGNED_PRESENCE_MAX
    assert SIGNED_PRESENCE_MAX <= DHT_RECORD_MAX
    wide = (PresenceCandidate(CandidateKind.RELAY, Transport.TCP, ("2001:db8::1", 443), 7),) * 16
    raw = record(supernode=("2001:db8::2", 4000), candidates=wide)
    assert len(raw) <= SIGNED_PRESENCE_MAX
    assert parse_presence(raw).candidates == wide


def test_caps_on_building() -> None:
    too_many = CANDIDATES[:1] * (PRESENCE_CANDIDATES_MAX + 1)
    with pytest.raises(CapExceeded, match="candidates: 17 items, cap 16"):
        record(candidates=too_many)
    with pytest.raises(errors.OverlayMisuse, match="lifetime"):
        record(lifetime=PRESENCE_LIFETIME_MAX + 1)
    with pytest.raises(errors.OverlayMisuse, match="another signing key"):
        record(MALLORY, ALICE_DESK_CERT)


def test_caps_on_parsing() -> None:
    raw = signed_by(ALICE_DESK)
    count_at = len(raw) - 64 - 1
    assert raw[count_at] == 0
    with pytest.raises(errors.MalformedPresence, match="candidates: 17 items, cap 16"):
        parse_presence(raw[:count_at] + bytes([17]) + raw[count_at + 1 :])
    with pytest.raises(errors.MalformedPresence, match=f"at most {SIGNED_PRESENCE_MAX}"):
        parse_presence(bytes(SIGNED_PRESENCE_MAX + 1))
    with pytest.raises(errors.MalformedPresence, match="out of order"):
        parse_presence(signed_by(ALICE_DESK, online_until=NOW + PRESENCE_LIFETIME_MAX + 1))
    with pytest.raises(errors.MalformedPresence, match="out of order"):
        parse_presence(signed_by(ALICE_DESK, online_until=NOW - 1))


def test_sequence_follows_the_clock_but_never_goes_back() -> None:
    assert next_sequence(0, NOW) == NOW * 1000
    assert next_sequence(NOW * 1000, NOW) == NOW * 1000 + 1
    assert next_sequence(NOW * 1000 + 5, 10.0) == NOW * 1000 + 6


def test_online_then_last_seen() -> None:
    presence = parse_presence(record())
    assert presence.is_online(NOW + ONLINE_FOR - 1)
    assert not presence.is_online(NOW + ONLINE_FOR)


# ---------------------------------------------------------------- accepted


def test_a_valid_record_is_accepted_and_stored() -> None:
    raw = record(seq=5)
    verified = verify_presence(ALICE, raw, trust(), NOW + 1)
    assert verified.certificate.user_id == "alice"
    assert verified.verdict.slot == ALICE_DESK.sign_public
    assert (verified.verdict.seq, verified.verdict.expires) == (5, NOW + PRESENCE_LIFETIME_MAX)
    store = RecordStore(presence_validator(trust(), None, Clock()))
    assert store.put(key_for_user("alice"), raw, NOW) == verified.verdict
    assert store.get(key_for_user("alice"), NOW) == (raw,)


def test_two_devices_of_one_user_fill_two_slots() -> None:
    door_cert = certificate(ALICE_DOOR, serial=2)
    store = RecordStore(presence_validator(trust(), None, Clock()))
    key = key_for_user("alice")
    store.put(key, record(seq=1), NOW)
    store.put(key, record(ALICE_DOOR, door_cert, seq=9), NOW)
    assert len(store) == 2
    assert store.get(key, NOW) == (record(ALICE_DOOR, door_cert, seq=9), record(seq=1))


def test_the_verdict_ends_when_the_record_does_not_the_certificate() -> None:
    short = certificate(ALICE_DESK, serial=3, valid_for=2 * HOUR)
    verdict = verify_presence(ALICE, record(cert=short), trust(), NOW).verdict
    assert verdict.expires == NOW + PRESENCE_LIFETIME_MAX


def test_a_record_signed_under_a_24_hour_certificate_is_found_72_hours_later() -> None:
    signed_at = NOW + CERT_LIFETIME - HOUR  # the device's last login, an hour before expiry
    raw = record(seq=3, now=signed_at)
    validator = presence_validator(trust(), None, Clock(signed_at + PRESENCE_FINDABLE))
    store = RecordStore(validator)
    later = signed_at + PRESENCE_FINDABLE  # 71 hours after the certificate expired
    assert store.put(key_for_user("alice"), raw, later).expires == signed_at + (
        PRESENCE_LIFETIME_MAX
    )
    assert store.get(key_for_user("alice"), later) == (raw,)
    verify_presence(ALICE, raw, trust(), signed_at + PRESENCE_LIFETIME_MAX - 1)
    err = refusal(raw, now=signed_at + PRESENCE_LIFETIME_MAX)
    assert isinstance(err, errors.PresenceExpired)
    assert not validator.refusals


# ---------------------------------------------------------------- refused, each for its reason


def test_every_bit_flip_is_refused() -> None:
    raw = record()
    cert_start = raw.index(ALICE_DESK_CERT)
    cert_end = cert_start + len(ALICE_DESK_CERT)
    issued_at = range(cert_end + 8, cert_end + 16)  # after the sequence
    assert raw[issued_at.start : issued_at.stop] == NOW.to_bytes(8, "big")
    store = RecordStore(presence_validator(trust(), None, Clock()))
    for bit in range(8 * len(raw)):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        err = refusal(bytes(flipped))
        with pytest.raises(errors.RecordRefused):
            store.put(key_for_user("alice"), bytes(flipped), NOW)
        if bit // 8 >= cert_start:  # else a header field: any refusal will do
            assert isinstance(err, _flip_refusal(bit // 8, cert_end, issued_at)), bit
    assert len(store) == 0


def _flip_refusal(at: int, cert_end: int, issued_at: range) -> tuple[type, ...]:
    """The refusals a flipped byte ``at`` may earn, once past the record's header fields.

    In the certificate, the certificate's; elsewhere a bad signature (or times
    out of order), and in issued_at, the time the certificate is checked at,
    also the certificate's, as issued_at may leave its validity window first.
    """
    if at < cert_end:
        return (errors.PresenceCertificateRefused, errors.MalformedPresence)
    if at in issued_at:
        return (
            errors.PresenceCertificateRefused,
            errors.PresenceBadSignature,
            errors.MalformedPresence,
        )
    return (errors.PresenceBadSignature, errors.MalformedPresence)


def test_every_cut_or_extended_record_is_malformed() -> None:
    raw = record()
    for size in range(len(raw)):
        assert isinstance(refusal(raw[:size]), errors.MalformedPresence), size
    assert isinstance(refusal(raw + b"\x00"), errors.MalformedPresence)


def test_forged_fields_fail_the_signature() -> None:
    raw = record()
    elsewhere = record(supernode=("198.18.66.6", 4000))
    spliced = elsewhere[:-64] + raw[-64:]
    err = refusal(spliced)
    assert isinstance(err, errors.PresenceBadSignature)
    assert (err.reason, err.code) == ("bad-signature", ErrorCode.FORBIDDEN)


def test_signed_by_another_devices_key() -> None:
    err = refusal(signed_by(MALLORY))
    assert isinstance(err, errors.PresenceBadSignature)
    assert "certificate serial 1" in str(err)


def test_signed_without_the_context_prefix() -> None:
    good = record()
    tbs = good[:-64]
    assert isinstance(
        refusal(tbs + ALICE_DESK.sign.sign(tbs).signature), errors.PresenceBadSignature
    )


def test_certificate_from_an_untrusted_issuer() -> None:
    rogue = certificate(MALLORY, issuer=IssuerKey.generate())
    err = refusal(record(MALLORY, rogue))
    assert isinstance(err, errors.PresenceCertificateRefused)
    assert (err.reason, err.code) == ("certificate-unknown-issuer", ErrorCode.CERT_UNKNOWN_ISSUER)


def test_certificate_of_another_user_under_this_users_key() -> None:
    mallory_cert = certificate(MALLORY, "mallory", serial=7)
    err = refusal(record(MALLORY, mallory_cert))
    assert isinstance(err, errors.PresenceWrongUser)
    assert "under another user's key" in str(err)
    mallory_key = id_to_bytes(key_for_user("mallory"))
    verify_presence(mallory_key, record(MALLORY, mallory_cert), trust(), NOW)


def test_record_naming_another_user_than_its_certificate() -> None:
    mallory_cert = certificate(MALLORY, "mallory", serial=7)
    err = refusal(signed_by(MALLORY, certificate=mallory_cert))
    assert isinstance(err, errors.PresenceWrongUser)
    assert (err.reason, "carries the certificate of 'mallory'" in str(err)) == ("wrong-user", True)


def test_replayed_older_sequence_is_refused_by_the_store() -> None:
    store = RecordStore(presence_validator(trust(), None, Clock()))
    key = key_for_user("alice")
    old, new = record(seq=1), record(seq=2, supernode=("198.18.0.9", 4000))
    store.put(key, old, NOW)
    store.put(key, new, NOW)
    store.put(key, new, NOW + 1)  # a republish of the same bytes changes nothing
    with pytest.raises(errors.StaleRecord) as info:
        store.put(key, old, NOW + 2)
    assert info.value.code == ErrorCode.REPLAYED
    with pytest.raises(errors.StaleRecord):
        store.put(key, record(seq=2), NOW + 2)
    assert store.get(key, NOW + 2) == (new,)


def test_expired_record() -> None:
    raw = record(lifetime=HOUR)
    verify_presence(ALICE, raw, trust(), NOW + HOUR - 1)
    err = refusal(raw, now=NOW + HOUR)
    assert isinstance(err, errors.PresenceExpired)
    assert err.reason == "expired"
    store = RecordStore(presence_validator(trust(), None, Clock(NOW + HOUR)))
    with pytest.raises(errors.RecordRefused, match="does not validate"):
        store.put(key_for_user("alice"), raw, NOW + HOUR)


def test_too_long_a_lifetime() -> None:
    longer = signed_by(ALICE_DESK, expires=NOW + PRESENCE_LIFETIME_MAX + 1)
    err = refusal(longer)
    assert isinstance(err, errors.PresenceTooLong)
    assert err.reason == "lifetime-too-long"
    verify_presence(ALICE, signed_by(ALICE_DESK), trust(), NOW)


def test_issued_in_the_future_beyond_the_skew() -> None:
    ahead = record(now=NOW + DEFAULT_SKEW + 1)
    assert isinstance(refusal(ahead), errors.PresenceFromFuture)
    verify_presence(ALICE, record(now=NOW + DEFAULT_SKEW), trust(), NOW)


def test_revoked_certificate() -> None:
    store = trust()
    cache = RevocationCache(store)
    raw = record()
    validator = presence_validator(store, cache, Clock())
    assert validator(ALICE, raw) is not None
    revocations = sign_revocations(
        ISSUER, version=1, issued_at=NOW, next_update=NOW + HOUR, serials=[1]
    )
    cache.apply(verify_revocations(revocations, store, NOW))
    assert validator(ALICE, raw) is None
    err = refusal(raw, store=store)
    assert isinstance(err, errors.PresenceCertificateRefused)
    assert (err.reason, err.code) == ("certificate-revoked", ErrorCode.CERT_REVOKED)


def test_issued_after_the_certificate_expired() -> None:
    short = certificate(ALICE_DESK, serial=4, valid_for=HOUR)
    last = NOW + HOUR + DEFAULT_SKEW  # the end of the window, skew included
    verify_presence(ALICE, record(cert=short, now=last), trust(), last)
    late = last + 1
    err = refusal(record(cert=short, now=late), now=late)
    assert isinstance(err, errors.PresenceCertificateRefused)
    assert (err.reason, err.code) == ("certificate-expired", ErrorCode.CERT_EXPIRED)
    assert f"checked at its issued_at: certificate serial 4 expired at {NOW + HOUR}" in str(err)


def test_issued_before_the_certificate_was_valid() -> None:
    early = NOW - 60 - DEFAULT_SKEW - 1  # the certificates here start at NOW - 60
    err = refusal(record(now=early))
    assert isinstance(err, errors.PresenceCertificateRefused)
    assert (err.reason, err.code) == ("certificate-not-yet-valid", ErrorCode.CERT_NOT_YET_VALID)
    verify_presence(ALICE, record(now=early + 1), trust(), NOW)


def revoke(store: TrustStore, cache: RevocationCache, now: float, *serials: int) -> None:
    """Apply the issuer's revocation list of ``serials``, signed at ``now``."""
    version = cache.known_version(ISSUER.key_id) + 1
    raw = sign_revocations(
        ISSUER, version=version, issued_at=int(now), next_update=int(now) + HOUR, serials=serials
    )
    cache.apply(verify_revocations(raw, store, now))


def test_a_certificate_revoked_after_issuing_refuses_its_records() -> None:
    store = trust()
    cache = RevocationCache(store)
    clock = Clock(NOW)
    validator = presence_validator(store, cache, clock)
    raw = record()
    assert validator(ALICE, raw) is not None
    clock.now = NOW + CERT_LIFETIME + 6 * HOUR  # the certificate has expired since
    assert validator(ALICE, raw) is not None
    revoke(store, cache, clock.now, 1)
    assert validator(ALICE, raw) is None
    assert validator.refusals == {"certificate-revoked": 1}
    err = refusal(raw, now=clock.now, store=store)
    assert (err.reason, err.code) == ("certificate-revoked", ErrorCode.CERT_REVOKED)


def test_revocations_are_listed_as_long_as_a_record_can_be_found() -> None:
    not_after = NOW + CERT_LIFETIME
    latest_issued_at = not_after + DEFAULT_SKEW  # the last the window check lets through
    last_found = latest_issued_at + PRESENCE_LIFETIME_MAX + DEFAULT_SKEW  # by a clock behind
    assert last_found <= not_after + REVOCATION_RETENTION


def test_garbage_is_malformed() -> None:
    err = refusal(b"\x01garbage")
    assert isinstance(err, errors.MalformedPresence)
    assert err.code == ErrorCode.MALFORMED
    assert isinstance(
        refusal(signed_by(ALICE_DESK, certificate=b"not a cert")), errors.MalformedPresence
    )


def test_the_validator_counts_refusals_by_reason() -> None:
    clock = Clock()
    validator = presence_validator(trust(), None, clock)
    rogue = certificate(MALLORY, issuer=IssuerKey.generate())
    assert validator(ALICE, record()) is not None
    refused = [
        signed_by(MALLORY),
        signed_by(MALLORY),
        b"",
        record(MALLORY, rogue),
        record(lifetime=60),
    ]
    clock.now = NOW + 60
    assert [validator(ALICE, raw) for raw in refused] == [None] * 5
    assert validator.refusals == {
        "bad-signature": 2,
        "malformed": 1,
        "certificate-unknown-issuer": 1,
        "expired": 1,
    }


def test_a_revocation_cache_of_another_trust_store_is_misuse() -> None:
    with pytest.raises(errors.OverlayMisuse, match="another trust store"):
        presence_validator(trust(), RevocationCache(trust()), Clock())


# ---------------------------------------------------------------- through the overlay

K = 5


def add_node(net: Network, validate: Validator) -> Node:
    """A node like Network.add_node makes, but checking real presence records."""
    node_id = node_id_for(net.rng.randbytes(32))
    index = len(net.nodes)
    node = Node(
        Contact(node_id, (f"198.18.{index >> 8}.{index & 255}", 4000)),
        validate,
        net.now,
        limits=net.limits,
    )
    net.nodes[node_id] = node
    net.alive.add(node_id)
    return node


def overlay(nodes: int, seed: int) -> tuple[Network, PresenceValidator]:
    """``nodes`` supernodes that joined one by one, all validating with one trust store."""
    net = Network(random.Random(seed), LookupLimits(k=K), now=float(NOW))
    validator = presence_validator(trust(), None, lambda: net.now)
    joined = [add_node(net, validator)]
    for _ in range(nodes - 1):
        node = add_node(net, validator)
        join(net, node, net.rng.choice(joined))
        joined.append(node)
    return net, validator


def holding(net: Network, key: int) -> set[int]:
    """The live nodes that hold a record under ``key``."""
    return {i for i in net.alive if net.nodes[i].store.get(key, net.now)}


def find(net: Network, key: int) -> tuple[tuple[bytes, ...] | None, int]:
    origin = net.nodes[net.rng.choice(sorted(net.alive))]
    lookup = net.run(origin, origin.lookup(key, net.now, find_value=True))
    return lookup.value, lookup.hops


def test_records_are_stored_on_k_nodes_and_found_in_log_n_hops() -> None:
    net, validator = overlay(64, seed=1)
    users = [(f"user-{i}", DeviceKeys.generate()) for i in range(8)]
    records = {}
    for serial, (user, keys) in enumerate(users, start=10):
        raw = record(keys, certificate(keys, user, serial=serial))
        key = key_for_user(user)
        origin = net.nodes[net.rng.choice(sorted(net.alive))]
        assert publish(net, origin, key, raw) == K
        assert len(holding(net, key)) == K
        records[key] = raw
    hops = []
    for key, raw in records.items():
        value, hop = find(net, key)
        assert value == (raw,)
        hops.append(hop)
    assert max(hops) <= math.ceil(math.log2(64))
    assert not validator.refusals


def test_a_supernode_cannot_forge_or_move_a_record() -> None:
    net, validator = overlay(32, seed=2)
    key, bob = key_for_user("alice"), key_for_user("bob")
    origin = net.nodes[max(net.alive, key=lambda i: (i ^ key) + (i ^ bob))]
    genuine = record()
    forged = record(supernode=("198.18.66.6", 4000))[:-64] + genuine[-64:]
    assert publish(net, origin, key, forged) == 0
    assert publish(net, origin, bob, genuine) == 0
    assert validator.refusals == {"bad-signature": K, "wrong-user": K}
    assert find(net, key)[0] is None
    assert publish(net, origin, key, genuine) == K
    holder = next(net.nodes[i] for i in net.alive if net.nodes[i].store.get(key, net.now))
    reply = holder.handle_request(origin.contact, StoreRecord(key, forged), net.now)
    assert reply == Stored(ErrorCode.FORBIDDEN)
    assert holder.handle_request(origin.contact, StoreRecord(key, genuine), net.now) == Stored(
        ErrorCode.OK
    )
    lookup = origin.lookup(key, net.now, find_value=True)
    lookup.start(net.now)
    lookup.on_reply(holder.contact, Values((forged,)), net.now)
    assert lookup.value is None


def test_a_device_that_logged_in_within_72_hours_is_found() -> None:
    net, validator = overlay(40, seed=3)
    key = key_for_user("alice")
    origin = net.nodes[net.rng.choice(sorted(net.alive))]
    assert publish(net, origin, key, record()) == K
    first = holding(net, key)
    for hour in range(1, PRESENCE_FINDABLE // HOUR + 1):
        if hour % 6 == 0:  # churn: a holder leaves unannounced, a new node joins
            gone = min(holding(net, key))
            net.leave(gone)
            bootstrap = net.nodes[net.rng.choice(sorted(net.alive))]
            join(net, add_node(net, validator), bootstrap)
        republish(net, NOW + hour * HOUR)
        if hour in (71, 72):
            assert find(net, key)[0] == (record(),), hour
            assert len(holding(net, key)) >= K
    assert not first & holding(net, key), "every first holder has left; the record outlived them"
    republish(net, NOW + PRESENCE_LIFETIME_MAX)
    assert not holding(net, key)
    assert find(net, key)[0] is None

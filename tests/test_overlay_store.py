"""The record store: forged, expired and replayed records are refused; caps hold."""

from hashlib import blake2b

import pytest

from edge.overlay.errors import RecordRefused, RecordTooLarge, StaleRecord, StoreFull
from edge.overlay.ids import id_to_bytes, key_for_user
from edge.overlay.store import RecordStore, StoreLimits, Verdict
from edge.wire.codes import ErrorCode

SECRET = b"stands in for a certificate key"
ALICE = key_for_user("alice")
BOB = key_for_user("bob")


def signed(key: int, slot: int, seq: int, expires: int, secret: bytes = SECRET) -> bytes:
    """A record whose tag binds key, slot, sequence and expiry, as a signature would."""
    body = bytes([slot]) + seq.to_bytes(4, "big") + expires.to_bytes(4, "big")
    tag = blake2b(id_to_bytes(key) + body, key=secret, digest_size=16).digest()
    return body + tag


def validate(key: bytes, record: bytes) -> Verdict | None:
    body, tag = record[:9], record[9:]
    if blake2b(key + body, key=SECRET, digest_size=16).digest() != tag:
        return None
    seq = int.from_bytes(body[1:5], "big")
    return Verdict(slot=body[:1], seq=seq, expires=int.from_bytes(body[5:9], "big"))


def store(**caps: int) -> RecordStore:
    return RecordStore(validate, StoreLimits(**caps))


def test_a_valid_record_is_kept_and_found() -> None:
    s = store()
    record = signed(ALICE, 1, 1, 1000)
    assert s.put(ALICE, record, 10.0) == Verdict(b"\x01", 1, 1000)
    assert s.get(ALICE, 10.0) == (record,)
    assert s.get(BOB, 10.0) == ()
    assert len(s) == 1


def test_a_forged_record_is_refused() -> None:
    s = store()
    with pytest.raises(RecordRefused) as err:
        s.put(ALICE, signed(ALICE, 1, 1, 1000, secret=b"someone else"), 10.0)
    assert err.value.code is ErrorCode.FORBIDDEN
    assert len(s) == 0


def test_a_record_for_another_key_is_refused() -> None:
    with pytest.raises(RecordRefused):
        store().put(BOB, signed(ALICE, 1, 1, 1000), 10.0)


def test_an_expired_record_is_refused() -> None:
    s = store()
    with pytest.raises(RecordRefused):
        s.put(ALICE, signed(ALICE, 1, 1, 1000), 1000.0)
    s.put(ALICE, signed(ALICE, 1, 1, 1000), 999.0)


def test_a_newer_sequence_replaces_an_older_one() -> None:
    s = store()
    s.put(ALICE, signed(ALICE, 1, 1, 1000), 10.0)
    s.put(ALICE, signed(ALICE, 1, 2, 1000), 11.0)
    assert s.get(ALICE, 11.0) == (signed(ALICE, 1, 2, 1000),)
    assert len(s) == 1


@pytest.mark.parametrize("seq", [1, 2])
def test_an_older_or_equal_sequence_is_refused_as_a_replay(seq: int) -> None:
    s = store()
    s.put(ALICE, signed(ALICE, 1, 2, 1000), 10.0)
    with pytest.raises(StaleRecord) as err:
        s.put(ALICE, signed(ALICE, 1, seq, 2000), 11.0)
    assert err.value.code is ErrorCode.REPLAYED
    assert s.get(ALICE, 11.0) == (signed(ALICE, 1, 2, 1000),)


def test_the_same_record_again_is_a_harmless_republish() -> None:
    s = store()
    record = signed(ALICE, 1, 2, 1000)
    s.put(ALICE, record, 10.0)
    s.put(ALICE, record, 20.0)
    assert s.get(ALICE, 20.0) == (record,)


def test_each_slot_of_a_key_is_kept_newest_first() -> None:
    s = store()
    s.put(ALICE, signed(ALICE, 1, 3, 1000), 10.0)
    s.put(ALICE, signed(ALICE, 2, 7, 1000), 10.0)
    assert s.get(ALICE, 10.0) == (signed(ALICE, 2, 7, 1000), signed(ALICE, 1, 3, 1000))


def test_slots_per_key_are_capped() -> None:
    s = store(max_slots_per_key=2)
    s.put(ALICE, signed(ALICE, 1, 1, 1000), 10.0)
    s.put(ALICE, signed(ALICE, 2, 1, 1000), 10.0)
    with pytest.raises(StoreFull) as err:
        s.put(ALICE, signed(ALICE, 3, 1, 1000), 10.0)
    assert err.value.code is ErrorCode.BUSY
    s.put(BOB, signed(BOB, 3, 1, 1000), 10.0)


def test_records_in_total_are_capped() -> None:
    s = store(max_records=2)
    s.put(ALICE, signed(ALICE, 1, 1, 1000), 10.0)
    s.put(BOB, signed(BOB, 1, 1, 1000), 10.0)
    with pytest.raises(StoreFull):
        s.put(key_for_user("carol"), signed(key_for_user("carol"), 1, 1, 1000), 10.0)
    s.put(ALICE, signed(ALICE, 1, 2, 1000), 10.0)


def test_an_oversized_record_is_refused_before_validation() -> None:
    with pytest.raises(RecordTooLarge):
        store(max_record_bytes=24).put(ALICE, signed(ALICE, 1, 1, 1000), 10.0)


def test_expired_records_vanish_and_free_their_room() -> None:
    s = store(max_records=1)
    s.put(ALICE, signed(ALICE, 1, 1, 100), 10.0)
    assert s.get_timer() == 100
    assert s.get(ALICE, 100.0) == ()
    assert s.expire(99.0) == 0
    assert s.expire(100.0) == 1
    assert len(s) == 0
    assert s.get_timer() is None
    s.put(BOB, signed(BOB, 1, 1, 1000), 150.0)


def test_a_full_store_makes_room_by_expiring_first() -> None:
    s = store(max_records=1)
    s.put(ALICE, signed(ALICE, 1, 1, 100), 10.0)
    s.put(BOB, signed(BOB, 1, 1, 1000), 100.0)
    assert [h.key for h in s.held()] == [BOB]


def test_revalidate_drops_what_no_longer_validates() -> None:
    allowed = {b"a", b"b"}

    def validate(key: bytes, record: bytes) -> Verdict | None:
        return Verdict(slot=record, seq=1, expires=100.0) if record in allowed else None

    store = RecordStore(validate)
    store.put(1, b"a", 0.0)
    store.put(2, b"b", 0.0)
    allowed.discard(b"a")
    assert store.revalidate(1.0) == 1
    assert store.get(1, 1.0) == () and store.get(2, 1.0) == (b"b",)
    assert len(store) == 1

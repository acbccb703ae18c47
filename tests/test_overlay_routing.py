"""The routing table: buckets split around our id, old live nodes are kept, closest() is exact."""

from hashlib import blake2b

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.overlay.errors import OverlayMisuse
from edge.overlay.ids import (
    ID_BITS,
    MAX_ID,
    distance,
    id_to_bytes,
    key_for_user,
    node_id_for,
    prefix_length,
)
from edge.overlay.messages import Contact
from edge.overlay.routing import RoutingTable

OWN = 0
FAR = 1 << 255
"""Ids with the top bit set share no prefix with OWN: bucket 0 for ever."""
NEAR = 1 << 254
"""Ids starting 01 share one bit with OWN."""

ids = st.integers(min_value=0, max_value=MAX_ID)


def contact(node_id: int) -> Contact:
    return Contact(node_id, ("198.18.0.1", 4000 + node_id % 1000))


def fill(table: RoutingTable, base: int, count: int, now: float = 0.0) -> list[Contact]:
    added = [contact(base | i) for i in range(count)]
    for i, c in enumerate(added):
        assert table.mark_seen(c, now + i) is None
    return added


def full_far_bucket(k: int = 4) -> tuple[RoutingTable, list[Contact]]:
    """A table whose far bucket (0) is full and can no longer split."""
    table = RoutingTable(OWN, k)
    far = fill(table, FAR, k)
    table.mark_seen(contact(NEAR), 100.0)
    assert table.bucket_count == 2
    return table, far


def test_key_for_user_is_blake2b_of_the_prefixed_name() -> None:
    golden = "b366bb590b551bbdb472c4ee9429729bd85996765cb0bb7289a59753cec29be7"
    assert key_for_user("alice") == int(golden, 16)
    assert key_for_user("alice") != key_for_user("Alice")


def test_node_id_is_the_hash_of_a_32_byte_static_key() -> None:
    key = bytes(range(32))
    assert node_id_for(key) == int(blake2b(key, digest_size=32).hexdigest(), 16)
    with pytest.raises(OverlayMisuse):
        node_id_for(key[:31])


def test_distance_and_prefix() -> None:
    assert distance(FAR, FAR) == 0
    assert distance(FAR, OWN) == distance(OWN, FAR) == FAR
    assert prefix_length(OWN, FAR) == 0
    assert prefix_length(OWN, NEAR) == 1
    assert prefix_length(OWN, OWN) == ID_BITS
    assert len(id_to_bytes(MAX_ID)) == 32
    with pytest.raises(OverlayMisuse):
        id_to_bytes(MAX_ID + 1)


def test_one_bucket_until_our_own_region_overflows() -> None:
    table = RoutingTable(OWN, 4)
    fill(table, FAR, 4)
    assert table.bucket_count == 1
    table.mark_seen(contact(NEAR), 10.0)
    assert table.bucket_count == 2
    assert table.bucket_contacts(0) == [contact(FAR | i) for i in range(4)]
    assert table.bucket_contacts(1) == [contact(NEAR)]


def test_a_far_bucket_never_splits() -> None:
    table, far = full_far_bucket()
    probe = table.mark_seen(contact(FAR | 99), 200.0)
    assert table.bucket_count == 2
    assert table.bucket_contacts(0) == far
    assert probe == far[0]
    assert table.replacement_contacts(0) == [contact(FAR | 99)]


def test_our_region_keeps_splitting_down_to_the_closest_ids() -> None:
    table = RoutingTable(OWN, 2)
    for bit in range(10):
        table.mark_seen(contact(1 << bit), float(bit))
    assert len(table) == 10
    assert all(len(table.bucket_contacts(i)) <= 2 for i in range(table.bucket_count))
    assert table.bucket_of(1) == table.bucket_count - 1


def test_the_oldest_answering_the_ping_keeps_its_place() -> None:
    table, far = full_far_bucket()
    oldest = table.mark_seen(contact(FAR | 99), 200.0)
    assert oldest == far[0]
    assert table.mark_seen(oldest, 201.0) is None
    assert table.bucket_contacts(0) == [*far[1:], far[0]]
    assert FAR | 99 not in table
    assert table.replacement_contacts(0) == [contact(FAR | 99)]


def test_the_oldest_failing_the_ping_is_replaced_by_the_newcomer() -> None:
    table, far = full_far_bucket()
    oldest = table.mark_seen(contact(FAR | 99), 200.0)
    assert oldest is not None
    table.mark_failed(oldest.node_id)
    assert oldest.node_id not in table
    assert table.bucket_contacts(0) == [*far[1:], contact(FAR | 99)]
    assert table.replacement_contacts(0) == []


def test_one_probe_per_bucket_until_it_times_out() -> None:
    table, far = full_far_bucket()
    assert table.mark_seen(contact(FAR | 99), 200.0) == far[0]
    assert table.mark_seen(contact(FAR | 98), 201.0) is None
    assert table.mark_seen(contact(FAR | 97), 200.0 + table.probe_timeout) == far[0]


def test_a_node_is_dropped_after_max_failures_in_a_row() -> None:
    table = RoutingTable(OWN, 4, max_failures=3)
    target = fill(table, FAR, 2)[0]
    table.mark_failed(target.node_id)
    table.mark_failed(target.node_id)
    table.mark_seen(target, 5.0)
    table.mark_failed(target.node_id)
    table.mark_failed(target.node_id)
    assert target.node_id in table
    table.mark_failed(target.node_id)
    assert target.node_id not in table


def test_the_replacement_cache_is_capped_and_keeps_the_newest() -> None:
    table, _ = full_far_bucket()
    for i in range(10):
        table.mark_seen(contact(FAR | 100 + i), 200.0 + i)
    assert table.replacement_contacts(0) == [contact(FAR | 100 + i) for i in range(5, 10)]


def test_our_own_id_is_never_a_contact() -> None:
    table = RoutingTable(OWN, 4)
    assert table.mark_seen(contact(OWN), 0.0) is None
    assert len(table) == 0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(OverlayMisuse):
        RoutingTable(OWN, 0)
    with pytest.raises(OverlayMisuse):
        RoutingTable(-1)


@settings(max_examples=60, deadline=None)
@given(own=ids, others=st.lists(ids, max_size=120), k=st.integers(1, 8))
def test_every_bucket_is_capped_and_holds_the_right_prefixes(
    own: int, others: list[int], k: int
) -> None:
    table = RoutingTable(own, k)
    for i, node_id in enumerate(others):
        table.mark_seen(contact(node_id), float(i))
    last = table.bucket_count - 1
    for index in range(table.bucket_count):
        members = table.bucket_contacts(index)
        assert len(members) <= k
        for c in members:
            shared = prefix_length(own, c.node_id)
            assert shared == index or (index == last and shared >= last)
    assert len(table) <= k * table.bucket_count


@settings(max_examples=80, deadline=None)
@given(
    own=ids,
    others=st.lists(ids, max_size=80, unique=True),
    key=ids,
    n=st.integers(0, 30),
    k=st.integers(1, 6),
)
def test_closest_is_exact_against_brute_force(
    own: int, others: list[int], key: int, n: int, k: int
) -> None:
    everyone = RoutingTable(own, 1000)
    bounded = RoutingTable(own, k)
    for i, node_id in enumerate(others):
        everyone.mark_seen(contact(node_id), float(i))
        bounded.mark_seen(contact(node_id), float(i))
    known = [c for c in others if c != own]
    assert everyone.closest(key, n) == [
        contact(i) for i in sorted(known, key=lambda i: i ^ key)[:n]
    ]
    held = bounded.contacts()
    assert bounded.closest(key, n) == sorted(held, key=lambda c: c.node_id ^ key)[:n]

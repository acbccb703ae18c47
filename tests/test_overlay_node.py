"""A node answers the four RPCs, learns from its callers and republishes every hour."""

from edge.overlay.ids import key_for_user
from edge.overlay.messages import (
    Contact,
    FindNode,
    FindValue,
    Nodes,
    Ping,
    Pong,
    Stored,
    StoreRecord,
    Values,
)
from edge.overlay.node import Node
from edge.overlay.sim import RECORD_LIFETIME, simulated_record, simulated_validate
from edge.wire.codes import ErrorCode

KEY = key_for_user("alice")


def contact(node_id: int) -> Contact:
    return Contact(node_id, ("198.18.0.3", 4000 + node_id % 1000))


def node(now: float = 0.0) -> Node:
    return Node(contact(1 << 200), simulated_validate, now)


def test_a_request_teaches_the_node_its_sender() -> None:
    n = node()
    assert n.handle_request(contact(5), Ping(), 1.0) == Pong()
    assert 5 in n.table


def test_find_node_answers_the_closest_it_knows() -> None:
    n = node()
    for i in range(1, 30):
        n.handle_request(contact(i << 100), Ping(), 1.0)
    reply = n.handle_request(contact(7), FindNode(3 << 100), 2.0)
    assert isinstance(reply, Nodes)
    assert reply.contacts == tuple(n.table.closest(3 << 100, 20))
    assert reply.contacts[0] == contact(3 << 100)


def test_find_value_answers_records_when_held_and_nodes_otherwise() -> None:
    n = node()
    record = simulated_record(KEY, 1)
    assert isinstance(n.handle_request(contact(5), FindValue(KEY), 1.0), Nodes)
    assert n.handle_request(contact(5), StoreRecord(KEY, record), 1.0) == Stored(ErrorCode.OK)
    assert n.handle_request(contact(6), FindValue(KEY), 2.0) == Values((record,))


def test_a_refused_store_answers_its_error_code() -> None:
    n = node()
    forged = simulated_record(key_for_user("bob"), 1)
    assert n.handle_request(contact(5), StoreRecord(KEY, forged), 1.0) == Stored(
        ErrorCode.FORBIDDEN
    )
    n.handle_request(contact(5), StoreRecord(KEY, simulated_record(KEY, 2)), 1.0)
    old = StoreRecord(KEY, simulated_record(KEY, 1))
    assert n.handle_request(contact(5), old, 1.0) == Stored(ErrorCode.REPLAYED)


def test_records_are_republished_every_hour() -> None:
    n = node(now=0.0)
    n.store.put(KEY, simulated_record(KEY, 1), 1.0)
    assert n.get_timer() == 3600.0
    assert n.handle_timer(3599.0) == []
    again = n.handle_timer(3600.0)
    assert [(h.key, h.record) for h in again] == [(KEY, simulated_record(KEY, 1))]
    assert n.get_timer() == 7200.0


def test_a_record_another_node_stored_within_the_hour_is_not_republished() -> None:
    n = node(now=0.0)
    n.handle_request(contact(5), StoreRecord(KEY, simulated_record(KEY, 1)), 1.0)
    assert n.handle_timer(3600.0) == []
    assert [h.key for h in n.handle_timer(7200.0)] == [KEY]


def test_a_full_bucket_asks_for_its_oldest_to_be_pinged() -> None:
    n = node()
    far = [contact((1 << 255) | i) for i in range(21)]
    for c in far:
        n.note_reply(c, 1.0)
    assert n.probes_to_send() == [far[0]]
    assert n.probes_to_send() == []
    n.note_timeout(far[0])
    assert far[0].node_id not in n.table
    assert far[20].node_id in n.table


def test_a_value_lookup_accepts_only_valid_unexpired_records() -> None:
    n = node()
    n.note_reply(contact(5), 0.0)
    holder = contact(5)
    fresh = n.lookup(KEY, 10.0, find_value=True)
    fresh.start(10.0)
    fresh.on_reply(holder, Values((simulated_record(key_for_user("bob"), 1),)), 10.0)
    assert fresh.value is None
    late = n.lookup(KEY, RECORD_LIFETIME, find_value=True)
    late.start(RECORD_LIFETIME)
    late.on_reply(holder, Values((simulated_record(KEY, 1),)), RECORD_LIFETIME)
    assert late.value is None
    ok = n.lookup(KEY, 10.0, find_value=True)
    ok.start(10.0)
    ok.on_reply(holder, Values((simulated_record(KEY, 1),)), 10.0)
    assert ok.value == (simulated_record(KEY, 1),)

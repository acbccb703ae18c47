"""The overlay's messages through the wire codec and back, and what is refused on the way."""

import struct
from typing import Any

import pytest
from construct import Container
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.overlay.errors import OverlayMisuse
from edge.overlay.ids import MAX_ID, key_for_user
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
from edge.overlay.wire import DHT_TYPES, OverlayMessage, from_wire, to_wire
from edge.wire.codes import MAGIC, PROTOCOL_VERSION, ErrorCode, MsgType
from edge.wire.errors import BuildError, CapExceeded, Malformed, Oversized
from edge.wire.messages import (
    DHT_CONTACTS_MAX,
    DHT_RECORD_MAX,
    DHT_RECORDS_MAX,
    Message,
    decode,
    encode,
)

NEAR = Contact(1, ("198.18.0.1", 3478))
FAR = Contact(MAX_ID, ("2001:db8::1", 40000))
KEY = key_for_user("bob")

EXAMPLES: list[tuple[OverlayMessage, MsgType]] = [
    (Ping(), MsgType.DHT_PING),
    (Pong(), MsgType.DHT_PONG),
    (FindNode(KEY), MsgType.DHT_FIND_NODE),
    (FindValue(0), MsgType.DHT_FIND_VALUE),
    (StoreRecord(MAX_ID, b"\x01\x02"), MsgType.DHT_STORE),
    (Nodes((NEAR, FAR)), MsgType.DHT_NODES),
    (Nodes(()), MsgType.DHT_NODES),
    (Values((b"a", b"bc")), MsgType.DHT_VALUES),
    (Stored(ErrorCode.OK), MsgType.DHT_STORED),
    (Stored(ErrorCode.REPLAYED), MsgType.DHT_STORED),
]


def through_the_wire(request_id: int, msg: OverlayMessage) -> tuple[int, OverlayMessage]:
    return from_wire(decode(encode(*to_wire(request_id, msg))))


def dht_message(msg_type: MsgType, body: bytes) -> bytes:
    return struct.pack(">2sBBHH", MAGIC, PROTOCOL_VERSION, msg_type, 0, len(body)) + body


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(("msg", "msg_type"), EXAMPLES, ids=lambda v: repr(v)[:40])
def test_each_message_round_trips_as_its_type(msg: OverlayMessage, msg_type: MsgType) -> None:
    wire_type, _ = to_wire(0xFFFFFFFF, msg)
    assert wire_type is msg_type
    assert through_the_wire(0xFFFFFFFF, msg) == (0xFFFFFFFF, msg)


def test_every_dht_type_is_produced_and_converted() -> None:
    assert {to_wire(0, msg)[0] for msg, _ in EXAMPLES} == DHT_TYPES
    assert {t for t in MsgType if t.name.startswith("DHT_")} == DHT_TYPES


ids = st.integers(0, MAX_ID)
addresses = st.tuples(
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str), st.integers(0, 0xFFFF)
)
contacts = st.builds(Contact, ids, addresses)
records = st.binary(max_size=64)
overlay_messages: st.SearchStrategy[OverlayMessage] = st.one_of(
    st.just(Ping()),
    st.builds(Pong, st.integers(0, 255)),
    st.builds(FindNode, ids),
    st.builds(FindValue, ids),
    st.builds(StoreRecord, ids, records),
    st.builds(Nodes, st.lists(contacts, max_size=DHT_CONTACTS_MAX).map(tuple)),
    st.builds(Values, st.lists(records, max_size=DHT_RECORDS_MAX).map(tuple)),
    st.builds(Stored, st.sampled_from(list(ErrorCode))),
)


@settings(max_examples=200, deadline=None)
@given(request_id=st.integers(0, 0xFFFFFFFF), msg=overlay_messages)
def test_any_message_round_trips(request_id: int, msg: OverlayMessage) -> None:
    assert through_the_wire(request_id, msg) == (request_id, msg)


def test_ids_travel_as_32_big_endian_bytes() -> None:
    data = encode(*to_wire(5, FindNode(0x0102)))
    assert data[8:] == struct.pack(">I", 5) + bytes(30) + b"\x01\x02"


def test_full_caps_round_trip() -> None:
    nodes = Nodes(tuple(Contact(i, ("2001:db8::1", i)) for i in range(DHT_CONTACTS_MAX)))
    values = Values(tuple(bytes([i]) * DHT_RECORD_MAX for i in range(DHT_RECORDS_MAX)))
    assert through_the_wire(1, nodes) == (1, nodes)
    assert through_the_wire(2, values) == (2, values)


# ---------------------------------------------------------------- refusals on the way out


@pytest.mark.parametrize("request_id", [-1, 1 << 32, True, "1"])
def test_request_id_must_be_a_u32(request_id: Any) -> None:
    with pytest.raises(OverlayMisuse, match="request id"):
        to_wire(request_id, Ping())


@pytest.mark.parametrize(
    "msg",
    [
        FindNode(-1),
        FindValue(MAX_ID + 1),
        StoreRecord(1 << 256, b""),
        Nodes((Contact(-1, NEAR.address),)),
    ],
)
def test_ids_outside_the_space_are_refused(msg: OverlayMessage) -> None:
    with pytest.raises(OverlayMisuse, match="256-bit"):
        to_wire(1, msg)


def test_something_else_is_not_an_overlay_message() -> None:
    with pytest.raises(OverlayMisuse, match="Contact is not an overlay message"):
        to_wire(1, NEAR)  # type: ignore[arg-type]


def test_more_than_k_contacts_exceed_the_cap() -> None:
    nodes = Nodes(tuple(NEAR for _ in range(DHT_CONTACTS_MAX + 1)))
    with pytest.raises(CapExceeded, match="contacts: 21 items, cap 20"):
        encode(*to_wire(1, nodes))


def test_too_many_or_too_large_records_exceed_the_cap() -> None:
    with pytest.raises(CapExceeded, match="records: 9 items, cap 8"):
        encode(*to_wire(1, Values((b"x",) * (DHT_RECORDS_MAX + 1))))
    with pytest.raises(CapExceeded, match=f"record: {DHT_RECORD_MAX + 1} bytes"):
        encode(*to_wire(1, StoreRecord(KEY, bytes(DHT_RECORD_MAX + 1))))


def test_a_contact_address_must_be_an_ip_literal() -> None:
    with pytest.raises(BuildError, match="is not an IP address"):
        encode(*to_wire(1, Nodes((Contact(1, ("supernode.example", 3478)),))))


# ---------------------------------------------------------------- refusals on the way in


def test_other_message_types_are_not_converted() -> None:
    error = decode(encode(MsgType.ERROR, {"code": 1, "about_type": 0, "detail": ""}))
    with pytest.raises(OverlayMisuse, match="not an overlay message"):
        from_wire(error)


def test_a_body_that_the_decoder_did_not_make_is_refused() -> None:
    with pytest.raises(OverlayMisuse, match="DHT_FIND_NODE: not a decoded body"):
        from_wire(Message(MsgType.DHT_FIND_NODE, {"key": b""}))


def test_a_hand_made_body_with_a_long_key_is_refused() -> None:
    body = Container(request_id=1, key=b"\x01" + bytes(32))
    with pytest.raises(OverlayMisuse, match="256-bit"):
        from_wire(Message(MsgType.DHT_FIND_VALUE, body))


def test_a_short_key_is_malformed() -> None:
    with pytest.raises(Malformed, match="key: stream read less than specified amount, expected 32"):
        decode(dht_message(MsgType.DHT_FIND_NODE, struct.pack(">I", 1) + bytes(31)))


def test_more_than_k_contacts_on_the_wire_are_oversized() -> None:
    body = struct.pack(">IB", 1, DHT_CONTACTS_MAX + 1)
    with pytest.raises(Oversized, match="contacts: 21 items, cap 20"):
        decode(dht_message(MsgType.DHT_NODES, body))


def test_an_oversized_record_on_the_wire_is_refused_before_it_is_read() -> None:
    body = struct.pack(">I32sH", 1, bytes(32), DHT_RECORD_MAX + 1)
    with pytest.raises(Oversized, match=f"record: {DHT_RECORD_MAX + 1} bytes"):
        decode(dht_message(MsgType.DHT_STORE, body))


def test_an_unknown_store_outcome_is_malformed() -> None:
    with pytest.raises(Malformed, match="code: 65535 is not a ErrorCode"):
        decode(dht_message(MsgType.DHT_STORED, struct.pack(">IH", 1, 0xFFFF)))


def test_a_contact_without_an_address_is_malformed() -> None:
    body = struct.pack(">IB32sB", 1, 1, bytes(32), 0)
    with pytest.raises(Malformed, match=r"contacts\[0\].address: address required"):
        decode(dht_message(MsgType.DHT_NODES, body))

"""The sans-IO Binding server: answers, errors, RFC 5780, drops and caps."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.sansio import DatagramCore
from edge.stun.attributes import AttrType, ChangeFlags, ErrorValue
from edge.stun.codec import (
    Class,
    Message,
    Method,
    build,
    check_fingerprint,
    parse,
)
from edge.stun.errors import (
    FingerprintError,
    NotStun,
    StunBuildError,
    StunError,
    StunTruncated,
)
from edge.stun.server import MAX_RESPONSE, MAX_UNKNOWN, BindingServer, Outcome

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
CLIENT = ("192.0.2.1", 32853)
CLIENT6 = ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
OTHER = ("198.51.100.7", 3479)
ORIGIN = ("198.51.100.6", 3478)


def request(*attributes: tuple[int, object], method: int = Method.BINDING) -> bytes:
    message = Message(method, Class.REQUEST, TID, list(attributes))
    return build(message)


def exchange(server: BindingServer, data: bytes, addr: tuple[str, int] = CLIENT) -> Message:
    server.receive_datagram(data, addr, 0.0)
    out = server.datagrams_to_send(0.0)
    assert len(out) == 1
    response, to = out[0]
    assert to == addr
    check_fingerprint(response)
    assert len(response) <= MAX_RESPONSE
    return parse(response)


def test_success_carries_the_source_software_and_fingerprint() -> None:
    server = BindingServer(software="edge test")
    response = exchange(server, request())
    assert (response.method, response.cls, response.transaction_id) == (
        Method.BINDING,
        Class.SUCCESS,
        TID,
    )
    assert [kind for kind, _ in response.attributes] == [
        AttrType.XOR_MAPPED_ADDRESS,
        AttrType.SOFTWARE,
        AttrType.FINGERPRINT,
    ]
    assert response.get(AttrType.XOR_MAPPED_ADDRESS) == CLIENT
    assert response.get(AttrType.SOFTWARE) == "edge test"
    assert server.counts == {Outcome.SUCCESS: 1}


def test_ipv6_source() -> None:
    response = exchange(BindingServer(), request(), CLIENT6)
    assert response.get(AttrType.XOR_MAPPED_ADDRESS) == CLIENT6


def test_golden_response_bytes() -> None:
    server = BindingServer(software="edge")
    server.receive_datagram(request(), CLIENT, 0.0)
    [(data, _)] = server.datagrams_to_send(0.0)
    expected = bytes.fromhex(
        "0101"  # Binding success
        "001c"  # 28 bytes of attributes
        "2112a442b7e7a701bc34d686fa87dfae"
        "00200008"
        "0001a147e112a643"  # XOR-MAPPED-ADDRESS 192.0.2.1:32853 (RFC 5769 §2.2)
        "80220004"
        "65646765"  # SOFTWARE "edge"
        "80280004"  # FINGERPRINT, value checked below
    )
    assert data[:-4] == expected
    check_fingerprint(data)


def test_a_request_with_a_valid_fingerprint_is_answered() -> None:
    message = Message(Method.BINDING, Class.REQUEST, TID)
    message.add_fingerprint()
    response = exchange(BindingServer(), build(message))
    assert response.cls is Class.SUCCESS


def test_a_bad_fingerprint_is_dropped_and_counted() -> None:
    message = Message(Method.BINDING, Class.REQUEST, TID)
    message.add_fingerprint()
    data = bytearray(build(message))
    data[-1] ^= 1
    server = BindingServer()
    with pytest.raises(FingerprintError):
        server.receive_datagram(bytes(data), CLIENT, 0.0)
    assert server.datagrams_to_send(0.0) == []
    assert server.counts == {Outcome.MALFORMED: 1}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", StunTruncated),
        (b"\xed\x9e" + bytes(30), NotStun),
        (struct.pack(">HHI", 1, 0, 0x2112A443) + TID, NotStun),
        (struct.pack(">HHI", 1, 8, 0x2112A442) + TID, StunTruncated),
    ],
)
def test_malformed_bytes_raise_and_get_no_answer(data: bytes, error: type[Exception]) -> None:
    server = BindingServer()
    with pytest.raises(error):
        server.receive_datagram(data, CLIENT, 0.0)
    assert server.datagrams_to_send(0.0) == []
    assert server.counts == {Outcome.MALFORMED: 1}


@pytest.mark.parametrize("cls", [Class.INDICATION, Class.SUCCESS, Class.ERROR])
def test_indications_and_responses_are_ignored(cls: Class) -> None:
    server = BindingServer()
    server.receive_datagram(build(Message(Method.BINDING, cls, TID)), CLIENT, 0.0)
    assert server.datagrams_to_send(0.0) == []
    assert server.counts == {Outcome.IGNORED: 1}


@pytest.mark.parametrize("method", [Method.ALLOCATE, Method.REFRESH, 0x0ABC])
def test_other_methods_get_400(method: int) -> None:
    server = BindingServer()
    response = exchange(server, request(method=method))
    assert (response.method, response.cls) == (method, Class.ERROR)
    error = response.get(AttrType.ERROR_CODE)
    assert isinstance(error, ErrorValue)
    assert error.code == 400
    assert response.get(AttrType.XOR_MAPPED_ADDRESS) is None
    assert server.counts == {Outcome.BAD_REQUEST: 1}


def test_unknown_comprehension_required_attributes_get_420() -> None:
    server = BindingServer()
    data = request((0x7F01, b"x"), (0xC001, b"optional"), (0x0031, bytes(4)), (0x7F01, b"y"))
    response = exchange(server, data)
    assert response.cls is Class.ERROR
    assert response.get(AttrType.ERROR_CODE) == ErrorValue(420, "Unknown Attribute")
    assert response.get(AttrType.UNKNOWN_ATTRIBUTES) == [0x7F01, 0x0031]
    assert server.counts == {Outcome.UNKNOWN_ATTRIBUTE: 1}


def test_unknown_optional_attributes_are_ignored() -> None:
    response = exchange(BindingServer(), request((0xC001, b"optional")))
    assert response.cls is Class.SUCCESS


def test_unknown_attributes_list_is_capped() -> None:
    attributes = [(0x7000 + n, b"") for n in range(40)]
    response = exchange(BindingServer(), request(*attributes))
    assert response.get(AttrType.UNKNOWN_ATTRIBUTES) == [0x7000 + n for n in range(MAX_UNKNOWN)]


@pytest.mark.parametrize(
    "attribute", [(AttrType.RESPONSE_PORT, 4000), (AttrType.PADDING, bytes(64))]
)
def test_rfc5780_attributes_we_do_not_honour_get_420(attribute: tuple[int, object]) -> None:
    response = exchange(BindingServer(other_address=OTHER), request(attribute))
    assert response.get(AttrType.UNKNOWN_ATTRIBUTES) == [attribute[0]]


@pytest.mark.parametrize(
    "flags",
    [ChangeFlags.NONE, ChangeFlags.CHANGE_IP, ChangeFlags.CHANGE_PORT, ChangeFlags(6)],
)
def test_change_request_without_an_alternate_address_gets_420(flags: ChangeFlags) -> None:
    server = BindingServer()
    response = exchange(server, request((AttrType.CHANGE_REQUEST, int(flags))))
    assert response.get(AttrType.ERROR_CODE) == ErrorValue(420, "Unknown Attribute")
    assert response.get(AttrType.UNKNOWN_ATTRIBUTES) == [AttrType.CHANGE_REQUEST]


def test_rfc5780_mode_adds_mapped_origin_and_other_address() -> None:
    server = BindingServer(other_address=OTHER, response_origin=ORIGIN)
    response = exchange(server, request())
    assert [kind for kind, _ in response.attributes] == [
        AttrType.XOR_MAPPED_ADDRESS,
        AttrType.MAPPED_ADDRESS,
        AttrType.RESPONSE_ORIGIN,
        AttrType.OTHER_ADDRESS,
        AttrType.SOFTWARE,
        AttrType.FINGERPRINT,
    ]
    assert response.get(AttrType.MAPPED_ADDRESS) == CLIENT
    assert response.get(AttrType.RESPONSE_ORIGIN) == ORIGIN
    assert response.get(AttrType.OTHER_ADDRESS) == OTHER


def test_rfc5780_mode_answers_a_change_request_asking_for_no_change() -> None:
    server = BindingServer(other_address=OTHER)
    response = exchange(server, request((AttrType.CHANGE_REQUEST, 0)))
    assert response.cls is Class.SUCCESS
    assert response.get(AttrType.RESPONSE_ORIGIN) is None


@pytest.mark.parametrize("flags", [ChangeFlags.CHANGE_IP, ChangeFlags.CHANGE_PORT])
def test_rfc5780_mode_refuses_a_change_this_socket_cannot_make(flags: ChangeFlags) -> None:
    server = BindingServer(other_address=OTHER)
    response = exchange(server, request((AttrType.CHANGE_REQUEST, int(flags))))
    assert response.get(AttrType.UNKNOWN_ATTRIBUTES) == [AttrType.CHANGE_REQUEST]


def test_no_amplification_beyond_the_cap() -> None:
    server = BindingServer(
        software="x" * 127,
        other_address=("2001:db8::1", 3479),
        response_origin=("2001:db8::2", 3478),
    )
    response = exchange(server, request(), CLIENT6)
    assert response.cls is Class.SUCCESS
    attributes = [(0x7000 + n, b"") for n in range(60)]
    exchange(server, request(*attributes), CLIENT6)


def test_the_queue_is_capped() -> None:
    server = BindingServer(max_queued=2)
    for _ in range(5):
        server.receive_datagram(request(), CLIENT, 0.0)
    assert len(server.datagrams_to_send(0.0)) == 2
    assert server.counts == {Outcome.SUCCESS: 2, Outcome.OVERLOADED: 3}
    server.receive_datagram(request(), CLIENT, 0.0)
    assert len(server.datagrams_to_send(0.0)) == 1


def test_no_timer_and_no_events() -> None:
    server = BindingServer()
    server.receive_datagram(request(), CLIENT, 0.0)
    assert server.get_timer() is None
    server.handle_timer(1.0)
    assert server.next_event() is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"software": "x" * 128},
        {"software": "é" * 64},
        {"other_address": ("not an address", 1)},
        {"response_origin": ("192.0.2.1", 70000)},
        {"max_queued": 0},
    ],
)
def test_bad_configuration_is_refused_at_once(kwargs: dict[str, object]) -> None:
    with pytest.raises(StunBuildError):
        BindingServer(**kwargs)  # type: ignore[arg-type]


def test_it_is_a_datagram_core() -> None:
    core: DatagramCore = BindingServer()
    assert core.get_timer() is None


TLV = st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)).map(
    lambda item: struct.pack(">HH", item[0], len(item[1])) + item[1] + bytes(-len(item[1]) % 4)
)


@settings(max_examples=300, deadline=None)
@given(st.lists(TLV, max_size=20), st.sampled_from([0x0001, 0x0011, 0x0003, 0x0101]))
def test_any_request_is_answered_small_or_refused_with_our_error(
    attributes: list[bytes], message_type: int
) -> None:
    body = b"".join(attributes)
    data = struct.pack(">HHI", message_type, len(body), 0x2112A442) + TID + body
    server = BindingServer(other_address=OTHER, response_origin=ORIGIN)
    try:
        server.receive_datagram(data, CLIENT6, 0.0)
    except StunError:
        assert server.counts == {Outcome.MALFORMED: 1}
        return
    for response, to in server.datagrams_to_send(0.0):
        assert to == CLIENT6
        assert len(response) <= MAX_RESPONSE
        assert parse(response).transaction_id == TID
    assert sum(server.counts.values()) == 1

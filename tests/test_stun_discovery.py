"""The sans-IO RFC 5780 server: the socket each answer leaves from, its attributes,
what it refuses or ignores, and the TURN core's hook that hands it the main socket."""

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.sansio import Address
from edge.stun.attributes import AttrType, ChangeFlags
from edge.stun.codec import Class, Message, Method, build, check_fingerprint, parse
from edge.stun.discovery import DiscoveryAddresses, DiscoveryServer
from edge.stun.errors import DiscoveryError, FingerprintError, StunError
from edge.stun.server import MAX_RESPONSE, BindingServer, Outcome
from edge.stun.turn import TurnLimits, TurnServer

A1, A2 = "192.0.2.1", "192.0.2.2"
P1, P2 = 3478, 3479
PRIMARY: Address = (A1, P1)
ALTERNATE: Address = (A2, P2)
ADDRESSES = DiscoveryAddresses(PRIMARY, ALTERNATE)
CLIENT: Address = ("198.51.100.7", 40000)
TID = bytes(range(12))

BOTH = ChangeFlags.CHANGE_IP | ChangeFlags.CHANGE_PORT
FLAGS = [ChangeFlags.NONE, ChangeFlags.CHANGE_PORT, ChangeFlags.CHANGE_IP, BOTH]


def request(*attributes: tuple[int, object], method: int = Method.BINDING) -> bytes:
    message = Message(method, Class.REQUEST, TID, list(attributes))
    message.add_fingerprint()
    return build(message)


def change(flags: ChangeFlags) -> bytes:
    return request((AttrType.CHANGE_REQUEST, int(flags)))


def exchange(server: DiscoveryServer, data: bytes, local: Address) -> tuple[Address, Message]:
    """Feed one request to ``local``; the socket the one answer leaves from, and the answer."""
    server.receive_datagram(data, local, CLIENT, 0.0)
    [(origin, response, to)] = server.datagrams_to_send()
    assert to == CLIENT
    check_fingerprint(response)
    assert len(response) <= MAX_RESPONSE
    return origin, parse(response)


# -- the four addresses


def test_the_four_sockets_and_the_changes_between_them() -> None:
    assert ADDRESSES.sockets == ((A1, P1), (A1, P2), (A2, P1), (A2, P2))
    assert ADDRESSES.changed((A1, P1), ChangeFlags.CHANGE_IP) == (A2, P1)
    assert ADDRESSES.changed((A1, P1), ChangeFlags.CHANGE_PORT) == (A1, P2)
    assert ADDRESSES.changed((A2, P1), BOTH) == (A1, P2)
    assert ADDRESSES.changed((A1, P2), ChangeFlags.NONE) == (A1, P2)
    assert ADDRESSES.other((A2, P2)) == (A1, P1)


@pytest.mark.parametrize(
    "alternate",
    [(A1, P2), (A2, P1), ("2001:db8::2", P2), (A2, 0)],
    ids=["same-ip", "same-port", "two-families", "unbound-port"],
)
def test_addresses_that_cannot_work_are_refused(alternate: Address) -> None:
    with pytest.raises(DiscoveryError):
        DiscoveryServer(DiscoveryAddresses(PRIMARY, alternate))


def test_a_datagram_from_a_socket_it_does_not_hold_is_misuse() -> None:
    server = DiscoveryServer(ADDRESSES)
    with pytest.raises(DiscoveryError, match="not one of"):
        server.receive_datagram(request(), (A1, 9999), CLIENT, 0.0)


# -- answers


@pytest.mark.parametrize("flags", FLAGS, ids=lambda flags: f"flags={int(flags)}")
@pytest.mark.parametrize("local", ADDRESSES.sockets, ids=lambda a: f"{a[0]}:{a[1]}")
def test_each_socket_answers_from_the_socket_the_flags_name(
    local: Address, flags: ChangeFlags
) -> None:
    server = DiscoveryServer(ADDRESSES)
    origin, response = exchange(server, change(flags), local)
    assert origin == ADDRESSES.changed(local, flags)
    assert response.cls is Class.SUCCESS
    assert response.transaction_id == TID
    assert response.get(AttrType.XOR_MAPPED_ADDRESS) == CLIENT
    assert response.get(AttrType.MAPPED_ADDRESS) == CLIENT
    assert response.get(AttrType.RESPONSE_ORIGIN) == origin
    # OTHER-ADDRESS is relative to where the request arrived, whatever the flags (§7.4).
    assert response.get(AttrType.OTHER_ADDRESS) == ADDRESSES.other(local)
    assert server.counts == {Outcome.SUCCESS: 1}


def test_a_request_to_the_primary_asking_both_changes() -> None:
    server = DiscoveryServer(ADDRESSES, software="edge test")
    origin, response = exchange(server, change(BOTH), PRIMARY)
    assert origin == ALTERNATE
    assert response.get(AttrType.RESPONSE_ORIGIN) == ALTERNATE
    assert response.get(AttrType.OTHER_ADDRESS) == ALTERNATE
    assert response.get(AttrType.SOFTWARE) == "edge test"


def test_a_request_without_change_request_is_answered_where_it_arrived() -> None:
    server = DiscoveryServer(ADDRESSES)
    origin, response = exchange(server, request(), (A2, P1))
    assert origin == (A2, P1)
    assert response.get(AttrType.OTHER_ADDRESS) == (A1, P2)


# -- refusals: from the socket the request came in on


def test_another_method_gets_400_from_the_receiving_socket() -> None:
    server = DiscoveryServer(ADDRESSES)
    data = request((AttrType.CHANGE_REQUEST, int(BOTH)), method=Method.ALLOCATE)
    origin, response = exchange(server, data, PRIMARY)
    assert origin == PRIMARY
    assert response.cls is Class.ERROR
    assert response.get(AttrType.ERROR_CODE).code == 400
    assert server.counts == {Outcome.BAD_REQUEST: 1}


def test_attributes_not_honoured_get_420_from_the_receiving_socket() -> None:
    server = DiscoveryServer(ADDRESSES)
    data = request((AttrType.CHANGE_REQUEST, int(BOTH)), (AttrType.RESPONSE_PORT, 5000))
    origin, response = exchange(server, data, PRIMARY)
    assert origin == PRIMARY
    assert response.get(AttrType.ERROR_CODE).code == 420
    assert response.get(AttrType.UNKNOWN_ATTRIBUTES) == [AttrType.RESPONSE_PORT]
    assert server.counts == {Outcome.UNKNOWN_ATTRIBUTE: 1}


# -- drops: nothing goes out


def test_garbage_raises_is_counted_and_answers_nothing() -> None:
    server = DiscoveryServer(ADDRESSES)
    for data in (b"", b"\xff" * 40, b"GET / HTTP/1.1\r\n\r\n"):
        with pytest.raises(StunError):
            server.receive_datagram(data, PRIMARY, CLIENT, 0.0)
    corrupt = bytearray(change(BOTH))
    corrupt[-1] ^= 1
    with pytest.raises(FingerprintError):
        server.receive_datagram(bytes(corrupt), PRIMARY, CLIENT, 0.0)
    assert server.datagrams_to_send() == []
    assert server.counts == {Outcome.MALFORMED: 4}


@pytest.mark.parametrize("cls", [Class.INDICATION, Class.SUCCESS, Class.ERROR])
def test_indications_and_responses_are_ignored(cls: Class) -> None:
    server = DiscoveryServer(ADDRESSES)
    message = Message(Method.BINDING, cls, TID, [(AttrType.CHANGE_REQUEST, int(BOTH))])
    server.receive_datagram(build(message), PRIMARY, CLIENT, 0.0)
    assert server.datagrams_to_send() == []
    assert server.counts == {Outcome.IGNORED: 1}


def test_answers_beyond_the_queue_cap_are_dropped() -> None:
    server = DiscoveryServer(ADDRESSES, max_queued=2)
    for _ in range(3):
        server.receive_datagram(change(BOTH), PRIMARY, CLIENT, 0.0)
    assert len(server.datagrams_to_send()) == 2
    assert server.counts == {Outcome.SUCCESS: 2, Outcome.OVERLOADED: 1}


@settings(max_examples=300)
@given(st.binary(max_size=600), st.sampled_from(ADDRESSES.sockets))
def test_any_bytes_get_at_most_one_small_answer_or_our_error(data: bytes, local: Address) -> None:
    server = DiscoveryServer(ADDRESSES)
    with contextlib.suppress(StunError):
        server.receive_datagram(data, local, CLIENT, 0.0)
    out = server.datagrams_to_send()
    assert len(out) <= 1
    for origin, response, to in out:
        assert origin in ADDRESSES.sockets
        assert to == CLIENT
        assert len(response) <= MAX_RESPONSE


# -- the single-socket server, which the discovery server builds on


def test_binding_server_still_refuses_a_change_it_cannot_make() -> None:
    server = BindingServer(other_address=ALTERNATE, response_origin=PRIMARY)
    server.receive_datagram(change(ChangeFlags.CHANGE_PORT), CLIENT, 0.0)
    [(data, _)] = server.datagrams_to_send(0.0)
    assert parse(data).get(AttrType.ERROR_CODE).code == 420


def test_binding_server_accepting_changes_names_the_origin_it_is_given() -> None:
    server = BindingServer(other_address=ALTERNATE, response_origin=PRIMARY, accept_change=True)
    message = parse(change(BOTH))
    data, outcome = server.answer(message, CLIENT, origin=ALTERNATE)
    assert outcome is Outcome.SUCCESS
    assert parse(data).get(AttrType.RESPONSE_ORIGIN) == ALTERNATE
    data, _ = server.answer(message, CLIENT)
    assert parse(data).get(AttrType.RESPONSE_ORIGIN) == PRIMARY


def test_accepting_changes_needs_an_other_address() -> None:
    server = BindingServer(accept_change=True)
    _, outcome = server.answer(parse(change(BOTH)), CLIENT)
    assert outcome is Outcome.UNKNOWN_ATTRIBUTE


# -- the TURN core's hook: the main socket's Binding requests go to the discovery core


def turn_server(hook: "Hook | None" = None) -> TurnServer:
    return TurnServer(
        "edge.test",
        b"secret",
        lambda client: None,
        now_nonce_secret=b"nonce secret",
        limits=TurnLimits(),
        binding_hook=hook,
    )


class Hook:
    """The service's side: hands what the TURN core offers to the discovery core."""

    def __init__(self, server: DiscoveryServer, take: bool = True) -> None:
        self.server = server
        self.take = take
        self.offered: list[tuple[bytes, Address]] = []

    def __call__(self, data: bytes, source: Address) -> bool:
        self.offered.append((data, source))
        if self.take:
            self.server.receive_datagram(data, PRIMARY, source, 0.0)
        return self.take


def test_the_turn_core_hands_binding_to_the_hook() -> None:
    discovery = DiscoveryServer(ADDRESSES)
    hook = Hook(discovery)
    turn = turn_server(hook)
    turn.receive_from_client(change(BOTH), CLIENT, 0.0)
    assert turn.datagrams_to_client() == []
    [(origin, data, to)] = discovery.datagrams_to_send()
    assert (origin, to) == (ALTERNATE, CLIENT)
    assert parse(data).get(AttrType.OTHER_ADDRESS) == ALTERNATE
    assert turn.requests == {}


def test_a_hook_set_after_construction_is_used() -> None:
    discovery = DiscoveryServer(ADDRESSES)
    turn = turn_server()
    turn.binding_hook = Hook(discovery)
    turn.receive_from_client(request(), CLIENT, 0.0)
    [(origin, data, _)] = discovery.datagrams_to_send()
    assert origin == PRIMARY
    assert parse(data).get(AttrType.OTHER_ADDRESS) == ALTERNATE


def test_a_hook_that_declines_leaves_the_turn_core_to_answer() -> None:
    hook = Hook(DiscoveryServer(ADDRESSES), take=False)
    turn = turn_server(hook)
    turn.receive_from_client(change(BOTH), CLIENT, 0.0)
    [(data, to)] = turn.datagrams_to_client()
    assert to == CLIENT
    assert parse(data).get(AttrType.ERROR_CODE).code == 420
    assert len(hook.offered) == 1


def test_the_hook_sees_neither_tcp_nor_other_methods() -> None:
    hook = Hook(DiscoveryServer(ADDRESSES))
    turn = turn_server(hook)
    turn.receive_from_client(change(BOTH), CLIENT, 0.0, stream=True)
    turn.receive_from_client(request(method=Method.ALLOCATE), CLIENT, 0.0)
    assert hook.offered == []
    answers = [parse(data) for data, _ in turn.datagrams_to_client()]
    assert [answer.get(AttrType.ERROR_CODE).code for answer in answers] == [420, 401]


def test_without_a_hook_the_turn_core_answers_as_before() -> None:
    turn = turn_server()
    turn.receive_from_client(request(), CLIENT, 0.0)
    [(data, _)] = turn.datagrams_to_client()
    response = parse(data)
    assert response.cls is Class.SUCCESS
    assert response.get(AttrType.OTHER_ADDRESS) is None

"""The sans-IO TURN server core: authentication, allocations, relaying, lifetimes, quotas."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.login.relay import relay_credentials
from edge.sansio import Address
from edge.stun.attributes import AttrType
from edge.stun.channel import ChannelData, build_channel_data, parse_channel_data
from edge.stun.codec import (
    Class,
    Message,
    Method,
    build,
    check_fingerprint,
    check_integrity,
    long_term_key,
    parse,
)
from edge.stun.errors import IntegrityError, StunBuildError
from edge.stun.turn import (
    MAX_PEER_DATA,
    MAX_UNAUTHENTICATED_RESPONSE,
    SUCCESS,
    AllocationCreated,
    AllocationDeleted,
    Drop,
    TurnLimits,
    TurnServer,
)

SECRET = b"the shared REST secret"
NONCE_SECRET = b"the nonce secret"
REALM = "edge.test"
T0 = 1_800_000_000.0
CLIENT = ("192.0.2.10", 40000)
PEER = ("198.51.100.20", 5000)
PEER_SAME_IP = ("198.51.100.20", 6000)
OTHER_PEER = ("203.0.113.5", 7000)
UDP = 17


class Relays:
    """The owner's side of relayed addresses: hands out ports, records releases."""

    def __init__(self, capacity: int = 100) -> None:
        self.capacity = capacity
        self.given: list[Address] = []
        self.released: list[Address] = []

    def allocate(self, client: Address) -> Address | None:
        if len(self.given) - len(self.released) >= self.capacity:
            return None
        relayed = ("203.0.113.1", 50000 + len(self.given))
        self.given.append(relayed)
        return relayed

    def release(self, relayed: Address) -> None:
        self.released.append(relayed)


def make_server(relays: Relays, limits: TurnLimits | None = None) -> TurnServer:
    return TurnServer(
        REALM,
        SECRET,
        relays.allocate,
        now_nonce_secret=NONCE_SECRET,
        limits=limits or TurnLimits(),
        release_relay=relays.release,
    )


class Client:
    """A small TURN client built from the codec, with REST credentials."""

    def __init__(
        self,
        server: TurnServer,
        address: Address = CLIENT,
        *,
        user: str = "alice",
        ttl: int = 3600,
        password: str | None = None,
    ) -> None:
        credentials = relay_credentials(SECRET, user, int(T0), ttl)
        self.server = server
        self.address = address
        self.username = credentials.username
        self.password = password or credentials.password
        self.key = long_term_key(self.username, REALM, self.password)
        self.nonce: str | None = None
        self.sent = 0

    def tid(self) -> bytes:
        self.sent += 1
        return self.sent.to_bytes(12, "big")

    def request(
        self, method: int, *attributes: tuple[int, object], tid: bytes | None = None
    ) -> bytes:
        message = Message(method, Class.REQUEST, tid or self.tid(), list(attributes))
        if self.nonce is not None:
            message.attributes.append((AttrType.USERNAME, self.username))
            message.attributes.append((AttrType.REALM, REALM))
            message.attributes.append((AttrType.NONCE, self.nonce))
            message.add_integrity(self.key)
        return build(message)

    def deliver(self, data: bytes, now: float) -> None:
        """Hand ``data`` to the server as the owner's UDP socket would."""
        self.server.receive_from_client(data, self.address, now)

    def send(self, data: bytes, now: float) -> list[bytes]:
        self.deliver(data, now)
        out = self.server.datagrams_to_client()
        assert all(to == self.address for _, to in out)
        return [payload for payload, _ in out]

    def exchange(self, data: bytes, now: float) -> tuple[bytes, Message]:
        out = self.send(data, now)
        assert len(out) == 1
        raw = out[0]
        check_fingerprint(raw)
        response = parse(raw)
        nonce = response.get(AttrType.NONCE)
        if nonce is not None:
            self.nonce = nonce
        return raw, response

    def ask(self, method: int, *attributes: tuple[int, object], now: float = T0) -> Message:
        raw, response = self.exchange(self.request(method, *attributes), now)
        code = error_code(response)
        if code not in (400, 401, 438):
            check_integrity(raw, self.key)
        return response

    def login(self, now: float = T0) -> None:
        """An unsigned Allocate, to learn the nonce from the 401."""
        self.nonce = None
        _, response = self.exchange(
            self.request(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP)), now
        )
        assert error_code(response) == 401

    def allocate(self, now: float = T0) -> Address:
        self.login(now)
        response = self.ask(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP), now=now)
        assert response.cls is Class.SUCCESS, response
        relayed: Address = response.get(AttrType.XOR_RELAYED_ADDRESS)
        return relayed

    def permit(self, *peers: Address, now: float = T0) -> Message:
        attributes = [(AttrType.XOR_PEER_ADDRESS, peer) for peer in peers]
        return self.ask(Method.CREATE_PERMISSION, *attributes, now=now)

    def bind(self, number: int, peer: Address, now: float = T0) -> Message:
        return self.ask(
            Method.CHANNEL_BIND,
            (AttrType.CHANNEL_NUMBER, number),
            (AttrType.XOR_PEER_ADDRESS, peer),
            now=now,
        )

    def indication(self, peer: Address, data: bytes) -> bytes:
        """A Send indication of ``data`` to ``peer``."""
        message = Message(Method.SEND, Class.INDICATION, self.tid())
        message.attributes.append((AttrType.XOR_PEER_ADDRESS, peer))
        message.attributes.append((AttrType.DATA, data))
        return build(message)

    def send_indication(self, peer: Address, data: bytes, now: float = T0) -> None:
        assert self.send(self.indication(peer, data), now) == []


def error_code(message: Message) -> int | None:
    value = message.get(AttrType.ERROR_CODE)
    return None if value is None else int(value.code)


def events(server: TurnServer) -> list[object]:
    out: list[object] = []
    while (event := server.next_event()) is not None:
        out.append(event)
    return out


# -- authentication


def test_an_unsigned_allocate_gets_401_then_rest_credentials_allocate() -> None:
    relays = Relays()
    server = make_server(relays)
    client = Client(server)
    _, refusal = client.exchange(
        client.request(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP)), T0
    )
    assert (refusal.method, refusal.cls, error_code(refusal)) == (
        Method.ALLOCATE,
        Class.ERROR,
        401,
    )
    assert refusal.get(AttrType.REALM) == REALM
    assert refusal.get(AttrType.NONCE)
    assert relays.given == []

    raw, response = client.exchange(
        client.request(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP)), T0
    )
    check_integrity(raw, client.key)
    assert response.cls is Class.SUCCESS
    assert response.get(AttrType.XOR_RELAYED_ADDRESS) == relays.given[0]
    assert response.get(AttrType.XOR_MAPPED_ADDRESS) == CLIENT
    assert response.get(AttrType.LIFETIME) == 600
    assert events(server) == [AllocationCreated(CLIENT, relays.given[0], "alice", 600)]
    assert server.requests[("ALLOCATE", 401)] == 1
    assert server.requests[("ALLOCATE", SUCCESS)] == 1


def test_the_success_response_is_signed_with_the_users_key() -> None:
    server = make_server(Relays())
    client = Client(server)
    client.login()
    raw, _ = client.exchange(
        client.request(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP)), T0
    )
    with pytest.raises(IntegrityError):
        check_integrity(raw, long_term_key(client.username, REALM, "another password"))


def test_expired_credentials_are_refused_with_401() -> None:
    relays = Relays()
    server = make_server(relays)
    client = Client(server, ttl=60)
    client.login(T0 + 61)
    response = client.ask(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP), now=T0 + 61)
    assert error_code(response) == 401
    assert relays.given == [] and server.allocation_count == 0


def test_a_wrong_password_is_refused_with_401() -> None:
    relays = Relays()
    server = make_server(relays)
    client = Client(server, password="not the REST password")
    client.login()
    response = client.ask(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP))
    assert error_code(response) == 401
    assert response.get(AttrType.MESSAGE_INTEGRITY) is None
    assert relays.given == []


def test_signed_without_a_nonce_is_a_bad_request() -> None:
    server = make_server(Relays())
    client = Client(server)
    message = Message(Method.ALLOCATE, Class.REQUEST, client.tid())
    message.attributes.append((AttrType.REQUESTED_TRANSPORT, UDP))
    message.attributes.append((AttrType.USERNAME, client.username))
    message.attributes.append((AttrType.REALM, REALM))
    message.add_integrity(client.key)
    _, response = client.exchange(build(message), T0)
    assert error_code(response) == 400


def test_a_stale_nonce_gets_438_and_the_new_nonce_works() -> None:
    server = make_server(Relays())
    client = Client(server)
    client.login(T0)
    old = client.nonce
    later = T0 + TurnLimits().nonce_lifetime + 1
    stale = client.ask(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP), now=later)
    assert error_code(stale) == 438
    assert stale.get(AttrType.REALM) == REALM
    assert client.nonce is not None and client.nonce != old
    retry = client.ask(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP), now=later)
    assert retry.cls is Class.SUCCESS


def test_a_nonce_issued_to_another_address_is_stale() -> None:
    server = make_server(Relays())
    first = Client(server)
    first.login()
    second = Client(server, ("192.0.2.11", 40000))
    second.nonce = first.nonce
    response = second.ask(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP))
    assert error_code(response) == 438


# -- Allocate


def test_a_second_allocate_on_the_same_five_tuple_gets_437() -> None:
    relays = Relays()
    server = make_server(relays)
    client = Client(server)
    client.allocate()
    again = client.ask(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP))
    assert error_code(again) == 437
    assert len(relays.given) == 1


def test_a_retransmitted_allocate_gets_the_same_answer() -> None:
    relays = Relays()
    server = make_server(relays)
    client = Client(server)
    client.login()
    request = client.request(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP))
    first = client.send(request, T0)
    second = client.send(request, T0 + 0.5)
    assert first == second
    assert parse(first[0]).cls is Class.SUCCESS
    assert len(relays.given) == 1


def test_only_udp_is_relayed() -> None:
    server = make_server(Relays())
    client = Client(server)
    client.login()
    response = client.ask(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, 6))
    assert error_code(response) == 442
    missing = client.ask(Method.ALLOCATE)
    assert error_code(missing) == 400


def test_the_requested_lifetime_is_capped() -> None:
    server = make_server(Relays())
    client = Client(server)
    client.login()
    response = client.ask(
        Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP), (AttrType.LIFETIME, 99_999)
    )
    assert response.get(AttrType.LIFETIME) == 3600


def test_no_relay_address_gives_508() -> None:
    server = make_server(Relays(capacity=0))
    client = Client(server)
    client.login()
    response = client.ask(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP))
    assert error_code(response) == 508


def test_the_per_user_quota_gives_486() -> None:
    server = make_server(Relays(), TurnLimits(max_allocations_per_user=2))
    for port in (1, 2):
        Client(server, ("192.0.2.10", port)).allocate()
    third = Client(server, ("192.0.2.10", 3))
    third.login()
    response = third.ask(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP))
    assert error_code(response) == 486
    Client(server, ("192.0.2.10", 4), user="bob").allocate()
    assert server.allocation_count == 3


def test_the_total_quota_gives_508() -> None:
    server = make_server(Relays(), TurnLimits(max_allocations=1))
    Client(server, ("192.0.2.10", 1)).allocate()
    other = Client(server, ("192.0.2.10", 2), user="bob")
    other.login()
    response = other.ask(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP))
    assert error_code(response) == 508


# -- Refresh and lifetimes


def test_refresh_extends_and_lifetime_zero_deletes() -> None:
    relays = Relays()
    server = make_server(relays)
    client = Client(server)
    relayed = client.allocate()
    events(server)
    response = client.ask(Method.REFRESH, (AttrType.LIFETIME, 1200), now=T0 + 100)
    assert response.get(AttrType.LIFETIME) == 1200
    assert server.get_timer() == T0 + 1300
    server.handle_timer(T0 + 700)
    assert server.allocation_count == 1 and relays.released == []

    stale = client.ask(Method.REFRESH, (AttrType.LIFETIME, 0), now=T0 + 800)
    assert error_code(stale) == 438 and server.allocation_count == 1
    gone = client.ask(Method.REFRESH, (AttrType.LIFETIME, 0), now=T0 + 800)
    assert gone.cls is Class.SUCCESS and gone.get(AttrType.LIFETIME) == 0
    assert relays.released == [relayed]
    assert events(server) == [AllocationDeleted(CLIENT, relayed, "alice", expired=False)]
    assert server.get_timer() is None
    again = client.ask(Method.REFRESH, now=T0 + 801)
    assert error_code(again) == 437


def test_another_users_refresh_gets_441() -> None:
    server = make_server(Relays())
    Client(server).allocate()
    intruder = Client(server, user="mallory")
    intruder.login()
    response = intruder.ask(Method.REFRESH)
    assert error_code(response) == 441


def test_allocation_expiry_releases_the_relay() -> None:
    relays = Relays()
    server = make_server(relays)
    client = Client(server)
    relayed = client.allocate()
    events(server)
    assert server.get_timer() == T0 + 600
    server.handle_timer(T0 + 599)
    assert relays.released == []
    server.handle_timer(T0 + 600)
    assert relays.released == [relayed]
    assert events(server) == [AllocationDeleted(CLIENT, relayed, "alice", expired=True)]
    assert server.get_timer() is None
    server.receive_from_peer(relayed, PEER, b"late", T0 + 601)
    assert server.drops[Drop.NO_ALLOCATION] == 1


# -- permissions, Send and Data


def test_create_permission_then_send_is_relayed() -> None:
    server = make_server(Relays())
    client = Client(server)
    relayed = client.allocate()
    assert client.permit(PEER).cls is Class.SUCCESS
    client.send_indication(PEER_SAME_IP, b"hello")
    assert server.datagrams_to_peers() == [(relayed, PEER_SAME_IP, b"hello")]
    assert server.relayed["packets-to-peer"] == 1
    assert server.relayed["bytes-to-peer"] == 5


def test_send_without_a_permission_is_dropped_and_counted() -> None:
    server = make_server(Relays())
    client = Client(server)
    client.allocate()
    client.permit(PEER)
    client.send_indication(OTHER_PEER, b"hello")
    assert server.datagrams_to_peers() == []
    assert server.drops[Drop.NO_PERMISSION] == 1


def test_a_send_asking_for_dont_fragment_is_dropped() -> None:
    server = make_server(Relays())
    client = Client(server)
    client.allocate()
    client.permit(PEER)
    message = Message(Method.SEND, Class.INDICATION, client.tid())
    message.attributes.append((AttrType.XOR_PEER_ADDRESS, PEER))
    message.attributes.append((AttrType.DATA, b"hello"))
    message.attributes.append((AttrType.DONT_FRAGMENT, None))
    assert client.send(build(message), T0) == []
    assert server.datagrams_to_peers() == []
    assert server.drops[Drop.UNKNOWN_ATTRIBUTE] == 1


def test_a_permission_expires_after_five_minutes() -> None:
    server = make_server(Relays())
    client = Client(server)
    client.allocate()
    client.permit(PEER)
    assert server.get_timer() == T0 + 300
    server.handle_timer(T0 + 300)
    client.send_indication(PEER, b"hello", now=T0 + 300)
    assert server.datagrams_to_peers() == []
    assert server.drops[Drop.NO_PERMISSION] == 1
    assert server.get_timer() == T0 + 600


def test_peer_data_becomes_a_data_indication() -> None:
    server = make_server(Relays())
    client = Client(server)
    relayed = client.allocate()
    client.permit(PEER)
    server.receive_from_peer(relayed, PEER, b"from the peer", T0 + 1)
    out = server.datagrams_to_client()
    assert len(out) == 1 and out[0][1] == CLIENT
    indication = parse(out[0][0])
    assert (indication.method, indication.cls) == (Method.DATA, Class.INDICATION)
    assert indication.get(AttrType.XOR_PEER_ADDRESS) == PEER
    assert indication.get(AttrType.DATA) == b"from the peer"
    assert server.relayed["bytes-to-client"] == len(b"from the peer")

    server.receive_from_peer(relayed, OTHER_PEER, b"stranger", T0 + 1)
    assert server.datagrams_to_client() == []
    assert server.drops[Drop.NO_PERMISSION] == 1


# -- channels


def test_channel_bind_and_channel_data_both_ways() -> None:
    server = make_server(Relays())
    client = Client(server)
    relayed = client.allocate()
    assert client.bind(0x4001, PEER).cls is Class.SUCCESS
    channel_data = build_channel_data(ChannelData(0x4001, b"to peer"))
    assert client.send(channel_data, T0 + 1) == []
    assert server.datagrams_to_peers() == [(relayed, PEER, b"to peer")]

    server.receive_from_peer(relayed, PEER, b"to client", T0 + 2)
    out = server.datagrams_to_client()
    assert [to for _, to in out] == [CLIENT]
    assert parse_channel_data(out[0][0]) == ChannelData(0x4001, b"to client")


def test_channel_data_on_an_unbound_channel_is_dropped() -> None:
    server = make_server(Relays())
    client = Client(server)
    client.allocate()
    client.send(build_channel_data(ChannelData(0x4002, b"x")), T0)
    assert server.datagrams_to_peers() == []
    assert server.drops[Drop.NO_CHANNEL] == 1


def test_channel_bind_conflicts_get_400() -> None:
    server = make_server(Relays())
    client = Client(server)
    client.allocate()
    client.bind(0x4001, PEER)
    assert error_code(client.bind(0x4001, OTHER_PEER)) == 400
    assert error_code(client.bind(0x4002, PEER)) == 400
    assert error_code(client.bind(0x3FFF, OTHER_PEER)) == 400
    assert client.bind(0x4001, PEER).cls is Class.SUCCESS


def test_a_channel_expires_after_ten_minutes() -> None:
    server = make_server(Relays())
    client = Client(server)
    relayed = client.allocate()
    client.ask(Method.REFRESH, (AttrType.LIFETIME, 3600))
    client.bind(0x4001, PEER)
    client.permit(PEER, now=T0 + 500)
    server.handle_timer(T0 + 600)
    server.receive_from_peer(relayed, PEER, b"data", T0 + 600)
    out = server.datagrams_to_client()
    assert parse(out[0][0]).method == Method.DATA


def test_the_channel_quota_gives_508() -> None:
    server = make_server(Relays(), TurnLimits(max_channels=1))
    client = Client(server)
    client.allocate()
    client.bind(0x4001, PEER)
    assert error_code(client.bind(0x4002, OTHER_PEER)) == 508


def test_the_permission_quota_gives_508() -> None:
    server = make_server(Relays(), TurnLimits(max_permissions=1))
    client = Client(server)
    client.allocate()
    client.permit(PEER)
    assert error_code(client.permit(OTHER_PEER)) == 508
    assert client.permit(PEER_SAME_IP).cls is Class.SUCCESS


# -- bandwidth, floods, junk


def test_the_bandwidth_cap_drops_the_excess() -> None:
    server = make_server(Relays(), TurnLimits(bandwidth=1000.0, burst=1000.0))
    client = Client(server)
    relayed = client.allocate()
    client.permit(PEER)
    client.send_indication(PEER, bytes(600))
    client.send_indication(PEER, bytes(600))
    assert len(server.datagrams_to_peers()) == 1
    assert server.drops[Drop.BANDWIDTH] == 1
    server.receive_from_peer(relayed, PEER, bytes(600), T0 + 0.5)
    assert len(server.datagrams_to_client()) == 1
    server.receive_from_peer(relayed, PEER, bytes(600), T0 + 0.5)
    assert server.datagrams_to_client() == []
    assert server.drops[Drop.BANDWIDTH] == 2


def test_an_unauthenticated_flood_gets_bounded_answers_only() -> None:
    relays = Relays()
    server = make_server(relays)
    sent = 0
    for index in range(200):
        method = (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION)[index % 3]
        message = Message(method, Class.REQUEST, index.to_bytes(12, "big"))
        message.attributes.append((AttrType.SOFTWARE, "x" * 700))
        message.attributes.append((AttrType.USERNAME, f"{int(T0) + 60}:u{index}" + "y" * 400))
        if index % 2:
            message.attributes.append((AttrType.REALM, REALM))
            message.attributes.append((AttrType.NONCE, "z" * 700))
            message.add_integrity(b"guessed key")
        server.receive_from_client(build(message), ("192.0.2.99", index), T0)
        sent += 1
    for index in range(20):
        unknown = [(0x7F00 + kind, b"u" * 4) for kind in range(20 + index)]
        binding = Message(Method.BINDING, Class.REQUEST, bytes(12), unknown)
        server.receive_from_client(build(binding), ("192.0.2.98", index), T0)
        sent += 1
    out = server.datagrams_to_client()
    assert len(out) == sent
    assert max(len(data) for data, _ in out) <= MAX_UNAUTHENTICATED_RESPONSE
    assert relays.given == [] and server.allocation_count == 0


def test_junk_is_dropped_and_counted() -> None:
    server = make_server(Relays())
    server.receive_from_client(b"\xff" * 40, CLIENT, T0)
    server.receive_from_client(b"\x00\x01\x00\x08" + bytes(16), CLIENT, T0)
    server.receive_from_client(b"\x40\x01\x00\x09abc", CLIENT, T0)
    assert server.datagrams_to_client() == []
    assert server.drops[Drop.NOT_STUN] == 1
    assert server.drops[Drop.MALFORMED] == 2


def test_binding_requests_are_answered_without_credentials() -> None:
    server = make_server(Relays())
    client = Client(server)
    _, response = client.exchange(client.request(Method.BINDING), T0)
    assert response.cls is Class.SUCCESS
    assert response.get(AttrType.XOR_MAPPED_ADDRESS) == CLIENT


def test_bad_configuration_is_refused() -> None:
    relays = Relays()
    with pytest.raises(StunBuildError):
        TurnServer(
            "r" * 65, SECRET, relays.allocate, now_nonce_secret=NONCE_SECRET, limits=TurnLimits()
        )
    with pytest.raises(StunBuildError):
        make_server(relays, TurnLimits(max_channels=0))
    with pytest.raises(StunBuildError):
        TurnServer(
            REALM,
            SECRET,
            relays.allocate,
            now_nonce_secret=NONCE_SECRET,
            limits=TurnLimits(),
            software="s" * 33,
        )


def test_a_peer_payload_too_large_for_a_data_indication_is_dropped() -> None:
    server = make_server(Relays(), TurnLimits(bandwidth=1e6, burst=1e6))
    client = Client(server)
    relayed = client.allocate()
    peer6 = ("2001:db8::20", 5000)
    client.permit(peer6)
    server.receive_from_peer(relayed, peer6, bytes(65_507), T0)
    assert server.datagrams_to_client() == []
    assert server.drops[Drop.OVERSIZED] == 1
    server.receive_from_peer(relayed, peer6, bytes(MAX_PEER_DATA), T0)
    assert len(server.datagrams_to_client()) == 1


ALLOCATED = make_server(Relays())
ALLOCATED_CLIENT = Client(ALLOCATED)
ALLOCATED_CLIENT.allocate()
ALLOCATED_CLIENT.bind(0x4001, PEER)


def stun_frame(head: bytes, data: bytes) -> bytes:
    """A STUN header of type ``head`` with a consistent length around random attributes."""
    body = data[12:] + bytes(-len(data[12:]) % 4)
    tid = data[:12].ljust(12, b"\x00")
    return head + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + tid + body


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=120), st.sampled_from([b"\x00\x03", b"\x00\x01", b"\x00\x16", b"\x40\x01"])
)
def test_any_datagram_is_answered_or_dropped_without_raising(data: bytes, head: bytes) -> None:
    ALLOCATED.receive_from_client(stun_frame(head, data), CLIENT, T0 + 1)
    ALLOCATED.receive_from_client(head + data, ("192.0.2.77", 1), T0 + 1)
    for payload, _ in ALLOCATED.datagrams_to_client():
        assert len(payload) <= MAX_UNAUTHENTICATED_RESPONSE
    ALLOCATED.datagrams_to_peers()


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=255))
def test_a_corrupted_signed_request_never_raises(position: int, flip: int) -> None:
    request = bytearray(
        ALLOCATED_CLIENT.request(
            Method.CHANNEL_BIND,
            (AttrType.CHANNEL_NUMBER, 0x4001),
            (AttrType.XOR_PEER_ADDRESS, PEER),
        )
    )
    request[position % len(request)] ^= flip
    ALLOCATED.receive_from_client(bytes(request), CLIENT, T0 + 1)
    ALLOCATED.datagrams_to_client()

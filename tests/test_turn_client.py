"""The sans-IO TURN client against the sans-IO TURN server, in memory, on a simulated clock.

:class:`Link` shuttles datagrams between the two cores by calling their
methods and steps the clock from timer to timer; datagrams can be lost or
tampered with on the way. Peers are plain addresses: what the server relays
to them is collected, and they "send" by calling the server's
``receive_from_peer``.
"""

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.login.relay import relay_credentials
from edge.sansio import Address
from edge.stun.attributes import AttrType
from edge.stun.channel import MIN_CHANNEL, ChannelData, build_channel_data
from edge.stun.codec import Class, Message, Method, build, parse
from edge.stun.errors import CredentialError, FramingError, StunBuildError, TurnUsageError
from edge.stun.events import (
    AllocationClosed,
    AllocationRefreshed,
    AllocationSucceeded,
    ChannelBound,
    DataReceived,
    Failure,
    PermissionCreated,
    TurnClientEvent,
    TurnFailed,
)
from edge.stun.framing import StreamDeframer
from edge.stun.turn import SUCCESS, AllocationCreated, AllocationDeleted, TurnLimits, TurnServer
from edge.stun.turnclient import (
    TRANSITIONS,
    Drop,
    State,
    Trigger,
    TurnClient,
    TurnClientLimits,
    TurnStream,
)

SECRET = b"the shared REST secret"
REALM = "edge.test"
T0 = 1_800_000_000.0
SERVER: Address = ("192.0.2.1", 3478)
CLIENT: Address = ("192.0.2.10", 40000)
PEER: Address = ("198.51.100.20", 5000)
OTHER_PEER: Address = ("203.0.113.5", 7000)
RELAY_HOST = "203.0.113.1"
CHUNK = 3
"""Bytes per piece of a TCP stream in the tests: small enough to split every message."""

Filter = Callable[[bytes], bytes | None]
"""What happens to a datagram on the way: the same or other bytes, or None for lost."""


class Link:
    """A TurnClient and a TurnServer wired back to back, and the clock they share.

    A stream client's messages cross as one TCP byte stream each way, cut into
    :data:`CHUNK`-byte pieces that split messages, and deframed on the far side.
    """

    def __init__(self, client: TurnClient, server: TurnServer, now: float = T0) -> None:
        self.client = client
        self.server = server
        self.now = now
        self.to_peers: list[tuple[Address, Address, bytes]] = []
        self.upstream: list[bytes] = []
        """Every message the client sent, in order."""
        self.downstream: list[bytes] = []
        """Every message the server sent to the client, in order."""
        self.events: list[TurnClientEvent] = []
        self.server_events: list[AllocationCreated | AllocationDeleted] = []
        self.up: Filter = keep
        self.down: Filter = keep
        self.stream = TurnStream(client) if client.stream else None
        self.server_side = StreamDeframer()

    def flush(self) -> None:
        """Move messages both ways until both cores are quiet."""
        while True:
            up = [data for data, to in self.client.datagrams_to_send(self.now) if to == SERVER]
            self.upstream += up
            for message in self._carry_up([*filter(None, map(self.up, up))]):
                self.server.receive_from_client(
                    message, CLIENT, self.now, stream=self.stream is not None
                )
            down = [data for data, to in self.server.datagrams_to_client() if to == CLIENT]
            self.downstream += down
            self._carry_down([*filter(None, map(self.down, down))])
            self.to_peers += self.server.datagrams_to_peers()
            self._drain()
            if not up and not down:
                return

    def _carry_up(self, messages: list[bytes]) -> list[bytes]:
        if self.stream is None:
            return messages
        joined = b"".join(messages)
        pieces = (joined[cut : cut + CHUNK] for cut in range(0, len(joined), CHUNK))
        return [message for piece in pieces for message in self.server_side.feed(piece)]

    def _carry_down(self, messages: list[bytes]) -> None:
        if self.stream is None:
            for message in messages:
                self.client.receive_datagram(message, SERVER, self.now)
            return
        joined = b"".join(messages)
        for cut in range(0, len(joined), CHUNK):
            self.stream.receive_data(joined[cut : cut + CHUNK], self.now)

    def _drain(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.events.append(event)
        while (server_event := self.server.next_event()) is not None:
            self.server_events.append(server_event)

    def run_until(self, end: float) -> None:
        """Step the clock from timer to timer up to ``end``, flushing after each."""
        self.flush()
        while True:
            timers = [
                t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None
            ]
            when = min(timers, default=None)
            if when is None or when > end:
                break
            self.now = max(self.now, when)
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)
            self.flush()
        self.now = end
        self.flush()

    def take(self) -> list[TurnClientEvent]:
        events, self.events = self.events, []
        return events

    def from_peer(self, peer: Address, data: bytes) -> None:
        assert self.client.relayed is not None
        self.server.receive_from_peer(self.client.relayed, peer, data, self.now)
        self.flush()


def keep(data: bytes) -> bytes | None:
    return data


def lose_first(count: int) -> Filter:
    """A filter that loses the first ``count`` datagrams, then passes the rest."""
    lost = [0]

    def apply(data: bytes) -> bytes | None:
        if lost[0] < count:
            lost[0] += 1
            return None
        return data

    return apply


class Relays:
    """The server owner's relayed addresses: one port more for each allocation."""

    def __init__(self) -> None:
        self.given = 0

    def allocate(self, client: Address) -> Address:
        self.given += 1
        return (RELAY_HOST, 50000 + self.given)


def make_server(**limits: int) -> TurnServer:
    return TurnServer(
        REALM,
        SECRET,
        Relays().allocate,
        now_nonce_secret=b"the nonce secret",
        limits=TurnLimits(**limits),
    )


def make_client(*, password: str | None = None, stream: bool = False, **options: Any) -> TurnClient:
    credentials = relay_credentials(SECRET, "alice", int(T0), 86_400)
    return TurnClient(
        SERVER,
        credentials.username,
        password or credentials.password,
        stream=stream,
        **options,
    )


def allocated(**options: Any) -> Link:
    """A link whose client has its allocation (the first relayed port is 50001)."""
    link = Link(make_client(**options), make_server())
    link.client.allocate(link.now)
    link.flush()
    [event] = link.take()
    assert isinstance(event, AllocationSucceeded), event
    return link


def permitted(peer: Address = PEER, **options: Any) -> Link:
    link = allocated(**options)
    link.client.create_permission(peer, link.now)
    link.flush()
    assert link.take() == [PermissionCreated(peer)]
    return link


def bound(peer: Address = PEER, **options: Any) -> Link:
    link = permitted(peer, **options)
    channel = link.client.bind_channel(peer, link.now)
    link.flush()
    assert link.take() == [ChannelBound(peer, channel)]
    return link


# ------------------------------------------------------------------ allocation


def test_allocation_goes_through_the_401_challenge() -> None:
    link = Link(make_client(lifetime=900), make_server())
    link.client.allocate(link.now)
    link.flush()
    assert link.take() == [AllocationSucceeded((RELAY_HOST, 50001), CLIENT, 900)]
    assert link.client.state is State.ALLOCATED
    assert link.client.relayed == (RELAY_HOST, 50001)
    assert link.client.mapped == CLIENT
    assert link.server.requests == {("ALLOCATE", 401): 1, ("ALLOCATE", SUCCESS): 1}
    assert len(link.upstream) == 2
    first, second = (parse(data) for data in link.upstream)
    assert first.get(AttrType.USERNAME) is None
    assert first.get(AttrType.REQUESTED_TRANSPORT) == 17
    assert second.get(AttrType.USERNAME) == link.client.username
    assert second.get(AttrType.REALM) == REALM
    assert second.get(AttrType.MESSAGE_INTEGRITY) is not None
    assert not link.client.drops


def test_a_wrong_password_fails_with_401() -> None:
    link = Link(make_client(password="not the password"), make_server())
    link.client.allocate(link.now)
    link.flush()
    [event] = link.take()
    assert isinstance(event, TurnFailed)
    assert (event.code, event.method) == (401, Method.ALLOCATE)
    assert link.client.state is State.CLOSED
    assert link.client.get_timer() is None
    assert link.server.allocation_count == 0


def test_a_stale_nonce_is_renewed_and_the_request_sent_again() -> None:
    link = allocated(lifetime=3600)
    link.run_until(T0 + 700)  # past the server's 600 s nonce lifetime
    link.client.create_permission(PEER, link.now)
    link.flush()
    assert link.take() == [PermissionCreated(PEER)]
    assert link.server.requests[("CREATE_PERMISSION", 438)] == 1
    assert link.server.requests[("CREATE_PERMISSION", SUCCESS)] == 1


def test_a_438_naming_the_nonce_it_refused_ends_the_request() -> None:
    link = allocated()
    link.client.create_permission(PEER, link.now)
    [(data, _)] = link.client.datagrams_to_send(link.now)
    request = parse(data)
    link.client.receive_datagram(stale(request, request.get(AttrType.NONCE)), SERVER, link.now)
    assert link.client.datagrams_to_send(link.now) == []
    [event] = drain(link.client)
    assert event == TurnFailed(438, "Stale Nonce", Method.CREATE_PERMISSION, PEER)
    assert link.client.is_allocated  # the allocation goes on without that permission
    with pytest.raises(TurnUsageError):
        link.client.send(PEER, b"x", link.now)


def test_a_438_with_a_fresh_nonce_each_time_is_retried_only_so_often() -> None:
    link = allocated()
    link.client.create_permission(PEER, link.now)
    requests = link.client.datagrams_to_send(link.now)
    for round_trip in range(10):
        if not requests:
            break
        [(data, _)] = requests
        request = parse(data)
        link.client.receive_datagram(stale(request, f"nonce-{round_trip}"), SERVER, link.now)
        requests = link.client.datagrams_to_send(link.now)
    [event] = drain(link.client)
    assert isinstance(event, TurnFailed)
    assert (event.code, event.method, event.peer) == (438, Method.CREATE_PERMISSION, PEER)
    assert round_trip == 4  # the first request and three more


def stale(request: Message, nonce: str) -> bytes:
    response = Message(request.method, Class.ERROR, request.transaction_id)
    response.attributes.append((AttrType.ERROR_CODE, (438, "Stale Nonce")))
    response.attributes.append((AttrType.REALM, REALM))
    response.attributes.append((AttrType.NONCE, nonce))
    return build(response)


def drain(client: TurnClient) -> list[TurnClientEvent]:
    events = []
    while (event := client.next_event()) is not None:
        events.append(event)
    return events


def test_a_request_lost_over_udp_is_sent_again() -> None:
    link = Link(make_client(), make_server())
    link.up = lose_first(1)
    link.client.allocate(link.now)
    link.flush()
    assert link.take() == []
    assert link.client.get_timer() == T0 + 0.5
    link.run_until(T0 + 0.5)
    [event] = link.take()
    assert isinstance(event, AllocationSucceeded)
    assert len(link.upstream) == 3  # lost, sent again, then with credentials


def test_a_request_times_out_on_the_rfc_8489_schedule() -> None:
    link = Link(make_client(), make_server())
    link.up = lambda data: None
    link.client.allocate(link.now)
    link.run_until(T0 + 39.4)
    assert link.take() == []
    assert len(link.upstream) == 7
    link.run_until(T0 + 39.5)
    assert link.take() == [
        TurnFailed(Failure.TIMEOUT, "no response after 7 request(s)", Method.ALLOCATE)
    ]
    assert link.client.state is State.CLOSED


def test_over_a_stream_a_request_is_sent_once_and_times_out() -> None:
    link = Link(make_client(stream=True), make_server())
    link.up = lambda data: None
    link.client.allocate(link.now)
    link.run_until(T0 + 39.5)
    [event] = link.take()
    assert isinstance(event, TurnFailed)
    assert event.code == Failure.TIMEOUT
    assert len(link.upstream) == 1


# ------------------------------------------------------------------ integrity and drops


def corrupt_first_signed_answer() -> Filter:
    """Zeroes the MAC of the first signed response (and drops its FINGERPRINT, so that
    integrity is what fails)."""
    done = [False]

    def apply(data: bytes) -> bytes | None:
        message = parse(data)
        if done[0] or message.get(AttrType.MESSAGE_INTEGRITY) is None:
            return data
        done[0] = True
        message.attributes = [
            (kind, bytes(20) if kind == AttrType.MESSAGE_INTEGRITY else value)
            for kind, value in message.attributes
            if kind != AttrType.FINGERPRINT
        ]
        return build(message)

    return apply


def test_a_response_with_bad_integrity_is_dropped_and_the_request_sent_again() -> None:
    link = Link(make_client(), make_server())
    link.down = corrupt_first_signed_answer()
    link.client.allocate(link.now)
    link.flush()
    assert link.take() == []
    assert link.client.drops == {Drop.BAD_INTEGRITY: 1}
    link.run_until(T0 + 0.5)  # the retransmission gets the server's stored answer
    [event] = link.take()
    assert isinstance(event, AllocationSucceeded)


def test_datagrams_that_are_not_for_us_are_counted() -> None:
    link = bound()
    client = link.client
    stray = Message(Method.REFRESH, Class.SUCCESS, bytes(12))
    client.receive_datagram(build(stray), SERVER, link.now)
    client.receive_datagram(b"\x40\x00\x00\x01x", OTHER_PEER, link.now)
    client.receive_datagram(b"\xff junk", SERVER, link.now)
    client.receive_datagram(b"\x00\x01\x00", SERVER, link.now)
    client.receive_datagram(build_channel_data(ChannelData(0x4FFF, b"x")), SERVER, link.now)
    request = Message(Method.BINDING, Class.REQUEST, bytes(12))
    client.receive_datagram(build(request), SERVER, link.now)
    assert client.drops == {
        Drop.UNKNOWN_TRANSACTION: 1,
        Drop.WRONG_SOURCE: 1,
        Drop.NOT_TURN: 1,
        Drop.MALFORMED: 1,
        Drop.NO_CHANNEL: 1,
        Drop.UNEXPECTED: 1,
    }
    assert drain(client) == []


def test_a_data_indication_from_a_peer_without_permission_is_dropped() -> None:
    link = permitted()
    indication = Message(Method.DATA, Class.INDICATION, bytes(12))
    indication.attributes.append((AttrType.XOR_PEER_ADDRESS, OTHER_PEER))
    indication.attributes.append((AttrType.DATA, b"hello"))
    link.client.receive_datagram(build(indication), SERVER, link.now)
    assert link.client.drops == {Drop.NO_PERMISSION: 1}


# ------------------------------------------------------------------ relaying


def test_send_goes_as_a_send_indication_through_a_permission() -> None:
    link = permitted()
    link.client.send(PEER, b"hello peer", link.now)
    link.flush()
    assert link.to_peers == [((RELAY_HOST, 50001), PEER, b"hello peer")]
    assert parse(link.upstream[-1]).method == Method.SEND


def test_a_peer_answers_through_a_data_indication() -> None:
    link = permitted()
    link.from_peer(PEER, b"hello client")
    assert link.take() == [DataReceived(PEER, b"hello client")]


def test_after_channel_bind_data_goes_both_ways_as_channel_data() -> None:
    link = bound()
    assert link.client.channel_of(PEER) == MIN_CHANNEL
    link.client.send(PEER, b"over the channel", link.now)
    link.flush()
    assert link.upstream[-1][:2] == MIN_CHANNEL.to_bytes(2, "big")
    assert link.to_peers == [((RELAY_HOST, 50001), PEER, b"over the channel")]
    link.from_peer(PEER, b"back")
    assert link.take() == [DataReceived(PEER, b"back", MIN_CHANNEL)]


def test_channels_are_numbered_from_0x4000() -> None:
    link = permitted()
    first = link.client.bind_channel(PEER, link.now)
    second = link.client.bind_channel(OTHER_PEER, link.now)
    assert (first, second) == (0x4000, 0x4001)
    assert link.client.bind_channel(PEER, link.now) == first
    link.flush()
    assert set(link.take()) == {
        ChannelBound(PEER, 0x4000),
        ChannelBound(OTHER_PEER, 0x4001),
        PermissionCreated(OTHER_PEER),
    }


def test_over_a_stream_channel_data_is_padded_both_ways() -> None:
    link = bound(stream=True)
    link.client.send(PEER, b"odd", link.now)
    link.flush()
    assert link.upstream[-1] == MIN_CHANNEL.to_bytes(2, "big") + b"\x00\x03odd\x00"
    assert link.to_peers == [((RELAY_HOST, 50001), PEER, b"odd")]
    for payload in (b"a", b"bb", b"ccc", b"dddd"):
        link.from_peer(PEER, payload)
    assert [len(message) for message in link.downstream[-4:]] == [8, 8, 8, 8]
    assert link.take() == [
        DataReceived(PEER, payload, MIN_CHANNEL) for payload in (b"a", b"bb", b"ccc", b"dddd")
    ]
    assert not link.client.drops


def test_a_stream_that_loses_its_framing_raises_framing_error() -> None:
    stream = TurnStream(make_client(stream=True))
    with pytest.raises(FramingError):
        stream.receive_data(b"\xffjunk", T0)


# ------------------------------------------------------------------ lifetimes


def test_refreshes_keep_allocation_permission_and_channel_alive() -> None:
    link = bound(lifetime=600)
    link.run_until(T0 + 2000)  # past the allocation's, nonce's and channel's first lifetime
    assert link.server.allocation_count == 1
    assert not [event for event in link.take() if not isinstance(event, AllocationRefreshed)]
    assert link.server.requests[("REFRESH", SUCCESS)] == 3  # at 540, 1080, 1620
    assert link.server.requests[("CREATE_PERMISSION", SUCCESS)] >= 8
    assert link.server.requests[("CHANNEL_BIND", SUCCESS)] == 4  # at 0, 540, 1080, 1620
    link.client.send(PEER, b"still here", link.now)
    link.from_peer(PEER, b"me too")
    assert link.to_peers[-1] == ((RELAY_HOST, 50001), PEER, b"still here")
    assert link.take() == [DataReceived(PEER, b"me too", MIN_CHANNEL)]


def test_a_short_lifetime_is_refreshed_at_its_half() -> None:
    server = make_server(default_lifetime=60, max_lifetime=60)
    link = Link(make_client(lifetime=60), server)
    link.client.allocate(link.now)
    link.flush()
    assert link.client.get_timer() == T0 + 30


def test_released_peers_are_no_longer_refreshed() -> None:
    link = bound()
    link.client.release_peer(PEER)
    link.run_until(T0 + 700)
    assert link.server.requests[("CREATE_PERMISSION", SUCCESS)] == 1
    assert link.server.requests[("CHANNEL_BIND", SUCCESS)] == 1
    with pytest.raises(TurnUsageError):
        link.client.send(PEER, b"x", link.now)


def test_close_deletes_the_allocation_on_the_server() -> None:
    link = bound()
    link.client.close(link.now)
    closing = link.client.state
    assert closing is State.CLOSING
    link.flush()
    assert link.take() == [AllocationClosed()]
    assert link.client.state is State.CLOSED
    assert link.server.allocation_count == 0
    assert isinstance(link.server_events[-1], AllocationDeleted)
    assert not link.server_events[-1].expired
    assert link.client.get_timer() is None


def test_a_failed_refresh_closes_the_client() -> None:
    link = allocated(lifetime=600)
    link.up = lambda data: None
    link.run_until(T0 + 540 + 39.5)
    [event] = link.take()
    assert isinstance(event, TurnFailed)
    assert (event.code, event.method) == (Failure.TIMEOUT, Method.REFRESH)
    assert link.client.state is State.CLOSED


# ------------------------------------------------------------------ misuse and caps


def test_misuse_raises_turn_usage_error() -> None:
    client = make_client()
    with pytest.raises(TurnUsageError):
        client.send(PEER, b"x", T0)
    with pytest.raises(TurnUsageError):
        client.create_permission(PEER, T0)
    client.allocate(T0)
    with pytest.raises(TurnUsageError):
        client.allocate(T0)
    with pytest.raises(CredentialError):
        make_client(password="bad\x00password")
    with pytest.raises(StunBuildError):
        make_client(lifetime=0)
    with pytest.raises(StunBuildError):
        TurnClient(SERVER, "u" * 600, "password")
    with pytest.raises(StunBuildError):
        make_client(software="s" * 800)
    with pytest.raises(TurnUsageError):
        TurnStream(make_client())


def test_close_before_the_allocation_just_stops() -> None:
    link = Link(make_client(), make_server())
    link.client.allocate(link.now)
    link.client.close(link.now)
    link.client.close(link.now)  # closing twice is harmless
    assert link.client.state is State.CLOSED
    assert link.client.get_timer() is None
    link.flush()  # the Allocate already queued goes out; its answer is not wanted
    assert link.take() == []
    assert link.client.drops == {Drop.UNKNOWN_TRANSACTION: 1}
    with pytest.raises(TurnUsageError):
        link.client.allocate(link.now)


def test_the_state_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(State)
    assert all(Trigger.CLOSE in row for row in TRANSITIONS.values())


def test_permissions_and_channels_are_capped() -> None:
    limits = TurnClientLimits(max_permissions=2, max_channels=1)
    link = permitted(limits=limits)
    link.client.create_permission(OTHER_PEER, link.now)
    with pytest.raises(TurnUsageError):
        link.client.create_permission(("192.0.2.99", 1), link.now)
    link.client.bind_channel(PEER, link.now)
    with pytest.raises(TurnUsageError):
        link.client.bind_channel(OTHER_PEER, link.now)


def test_the_send_queue_is_capped() -> None:
    link = permitted(limits=TurnClientLimits(max_queued=4))
    for _ in range(6):
        link.client.send(PEER, b"x", link.now)
    assert len(link.client.datagrams_to_send(link.now)) == 4
    assert link.client.drops == {Drop.QUEUE_FULL: 2}


# ------------------------------------------------------------------ fuzz

FUZZ = settings(
    max_examples=int(os.environ.get("EDGE_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

PREFIXES = st.sampled_from([b"", b"\x00\x01", b"\x01\x01", b"\x00\x17", b"\x01\x13", b"\x40\x00"])


@pytest.mark.fuzz
@FUZZ
@given(prefix=PREFIXES, tail=st.binary(max_size=200), stage=st.sampled_from(["idle", "bound"]))
def test_any_bytes_from_the_server_are_counted_never_raised(
    prefix: bytes, tail: bytes, stage: str
) -> None:
    client = bound().client if stage == "bound" else make_client()
    data = prefix + tail
    client.receive_datagram(data, SERVER, T0)
    if len(data) >= 20:  # behind a real header too
        header = data[:4] + (0x2112A442).to_bytes(4, "big") + data[8:20]
        client.receive_datagram(header + data[20:], SERVER, T0)
    client.handle_timer(T0 + 1)
    drain(client)


@pytest.mark.fuzz
@FUZZ
@given(data=st.data())
def test_mutated_answers_from_the_server_are_counted_never_raised(data: st.DataObject) -> None:
    link = permitted()
    link.client.bind_channel(OTHER_PEER, link.now)
    for payload, _ in link.client.datagrams_to_send(link.now):
        link.server.receive_from_client(payload, CLIENT, link.now)
    for answer, _ in link.server.datagrams_to_client():
        mutated = bytearray(answer)
        for index in data.draw(st.lists(st.integers(0, len(answer) - 1), max_size=4)):
            mutated[index] ^= data.draw(st.integers(1, 255))
        cut = data.draw(st.integers(0, len(mutated)))
        link.client.receive_datagram(bytes(mutated[:cut]), SERVER, link.now)
    link.client.handle_timer(link.now + 1)
    drain(link.client)


def test_expects_takes_only_its_own_datagrams_from_a_shared_server_address() -> None:
    server: Address = ("198.18.0.11", 3478)
    client = TurnClient(server, "1:alice", "pw")
    client.allocate(0.0)
    ((request, _),) = client.datagrams_to_send(0.0)
    mine = parse(request).transaction_id
    answer = build(Message(Method.ALLOCATE, Class.ERROR, mine))
    other = build(Message(Method.BINDING, Class.SUCCESS, bytes(12)))
    assert client.expects(answer, server)
    assert not client.expects(answer, ("198.18.0.12", 3478))
    assert not client.expects(other, server)  # another service's answer on that port
    assert not client.expects(b"\xed\x9e\x01\x05" + bytes(16), server)  # a session's datagram
    assert client.expects(b"\x40\x00\x00\x00", server)  # ChannelData

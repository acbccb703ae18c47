"""TURN over TCP: the stream deframer, and the server core serving stream clients."""

import contextlib
import struct
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.sansio import Address
from edge.stun.attributes import AttrType
from edge.stun.channel import (
    CHANNEL_HEADER,
    MAX_CHANNEL,
    MIN_CHANNEL,
    ChannelData,
    build_channel_data,
    frame_size,
    parse_channel_data,
)
from edge.stun.codec import Class, Message, Method, build, parse
from edge.stun.errors import FramingError, StunBuildError
from edge.stun.framing import StreamDeframer
from edge.stun.turn import AllocationCreated, AllocationDeleted, Drop, TurnServer
from edge.wire.codes import ErrorCode
from tests.test_stun_turn import (
    CLIENT,
    OTHER_PEER,
    PEER,
    T0,
    UDP,
    Client,
    Relays,
    error_code,
    events,
    make_server,
)

TCP_CLIENT = ("192.0.2.30", 51000)


class StreamClient(Client):
    """A Client on a TCP connection: the bytes it writes are cut by a deframer, as the
    owner's adapter cuts them, and what the server queues for it must deframe back
    into the same messages."""

    def __init__(
        self, server: TurnServer, address: Address = TCP_CLIENT, *, chunk: int = 1 << 16
    ) -> None:
        super().__init__(server, address)
        self.chunk = chunk
        self.to_server = StreamDeframer()
        self.from_server = StreamDeframer()

    def deliver(self, data: bytes, now: float) -> None:
        for start in range(0, len(data), self.chunk):
            for message in self.to_server.feed(data[start : start + self.chunk]):
                self.server.receive_from_client(message, self.address, now, stream=True)

    def send(self, data: bytes, now: float) -> list[bytes]:
        out = super().send(data, now)
        assert self.from_server.feed(b"".join(out)) == out
        return out


def peer_data(server: TurnServer, relayed: Address, data: bytes, now: float = T0 + 1) -> bytes:
    """What the client receives when PEER sends ``data`` to ``relayed``: one message."""
    server.receive_from_peer(relayed, PEER, data, now)
    out = server.datagrams_to_client()
    assert len(out) == 1
    return out[0][0]


# -- the server core with stream clients


def test_allocate_over_a_stream_fed_a_byte_at_a_time() -> None:
    relays = Relays()
    server = make_server(relays)
    client = StreamClient(server, chunk=1)
    relayed = client.allocate()
    assert relayed == relays.given[0]
    assert events(server) == [AllocationCreated(TCP_CLIENT, relayed, "alice", 600)]
    _, binding = client.exchange(client.request(Method.BINDING), T0)
    assert binding.get(AttrType.XOR_MAPPED_ADDRESS) == TCP_CLIENT


def test_requests_in_one_segment_get_answers_in_order() -> None:
    server = make_server(Relays())
    client = StreamClient(server)
    client.allocate()
    permit = client.request(Method.CREATE_PERMISSION, (AttrType.XOR_PEER_ADDRESS, PEER))
    refresh = client.request(Method.REFRESH, (AttrType.LIFETIME, 1200))
    answers = [parse(raw) for raw in client.send(permit + refresh, T0)]
    assert [(answer.method, answer.cls) for answer in answers] == [
        (Method.CREATE_PERMISSION, Class.SUCCESS),
        (Method.REFRESH, Class.SUCCESS),
    ]


def test_channel_data_to_a_stream_client_is_padded() -> None:
    server = make_server(Relays())
    stream = StreamClient(server)
    datagram = Client(server)
    stream_relay = stream.allocate()
    datagram_relay = datagram.allocate()
    stream.bind(0x4001, PEER)
    datagram.bind(0x4001, PEER)

    padded = peer_data(server, stream_relay, b"abcde")
    assert padded == build_channel_data(ChannelData(0x4001, b"abcde"), stream=True)
    assert len(padded) == 12 and frame_size(padded) == 12
    assert parse_channel_data(padded) == ChannelData(0x4001, b"abcde")
    assert len(peer_data(server, datagram_relay, b"abcde")) == 9


def test_padded_channel_data_from_a_stream_client_is_relayed_without_padding() -> None:
    server = make_server(Relays())
    client = StreamClient(server, chunk=3)
    relayed = client.allocate()
    client.bind(0x4001, PEER)
    frames = [build_channel_data(ChannelData(0x4001, data), stream=True) for data in (b"a", b"")]
    assert client.send(b"".join(frames), T0) == []
    assert server.datagrams_to_peers() == [(relayed, PEER, b"a"), (relayed, PEER, b"")]


def test_permissions_and_data_indications_over_a_stream() -> None:
    server = make_server(Relays())
    client = StreamClient(server, chunk=5)
    relayed = client.allocate()
    assert client.permit(PEER).cls is Class.SUCCESS
    segment = client.indication(PEER, b"hello") + client.indication(OTHER_PEER, b"stranger")
    assert client.send(segment, T0) == []
    assert server.datagrams_to_peers() == [(relayed, PEER, b"hello")]
    assert server.drops[Drop.NO_PERMISSION] == 1

    indication = parse(peer_data(server, relayed, b"from the peer"))
    assert (indication.method, indication.cls) == (Method.DATA, Class.INDICATION)
    assert indication.get(AttrType.DATA) == b"from the peer"


def test_client_gone_deletes_the_allocation_and_releases_the_relay() -> None:
    relays = Relays()
    server = make_server(relays)
    client = StreamClient(server)
    relayed = client.allocate()
    client.permit(PEER)
    events(server)
    server.receive_from_peer(relayed, PEER, b"queued before the close", T0 + 1)

    server.client_gone(TCP_CLIENT, T0 + 2)
    assert relays.released == [relayed]
    assert events(server) == [AllocationDeleted(TCP_CLIENT, relayed, "alice", expired=False)]
    assert server.allocation_count == 0 and server.get_timer() is None
    assert server.datagrams_to_client() == []
    server.receive_from_peer(relayed, PEER, b"late", T0 + 3)
    assert server.drops[Drop.NO_ALLOCATION] == 1

    server.client_gone(TCP_CLIENT, T0 + 4)
    assert relays.released == [relayed] and events(server) == []


def test_client_gone_leaves_a_udp_allocation_alone() -> None:
    relays = Relays()
    server = make_server(relays)
    Client(server).allocate()
    server.client_gone(CLIENT, T0 + 1)
    assert server.allocation_count == 1 and relays.released == []


def test_a_stream_allocation_also_expires() -> None:
    relays = Relays()
    server = make_server(relays)
    relayed = StreamClient(server).allocate()
    server.handle_timer(T0 + 600)
    assert relays.released == [relayed]


def make_pair(server: TurnServer, allocate_over_stream: bool) -> tuple[Client, Client]:
    """(the client with the allocation, the same address over the other transport)."""
    stream, datagram = StreamClient(server, CLIENT), Client(server, CLIENT)
    return (stream, datagram) if allocate_over_stream else (datagram, stream)


@pytest.mark.parametrize("allocate_over_stream", [False, True])
def test_the_other_transport_finds_no_allocation(allocate_over_stream: bool) -> None:
    relays = Relays()
    server = make_server(relays)
    owner, other = make_pair(server, allocate_over_stream)
    relayed = owner.allocate()
    owner.bind(0x4001, PEER)
    other.login()
    assert error_code(other.ask(Method.REFRESH, (AttrType.LIFETIME, 0))) == 437
    assert error_code(other.permit(OTHER_PEER)) == 437
    assert error_code(other.bind(0x4002, OTHER_PEER)) == 437
    assert error_code(other.ask(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP))) == 437

    other.send(build_channel_data(ChannelData(0x4001, b"x"), stream=True), T0)
    other.send_indication(PEER, b"y")
    assert server.datagrams_to_peers() == []
    assert server.drops[Drop.NO_ALLOCATION] == 2
    assert server.allocation_count == 1 and relays.given == [relayed]


@pytest.mark.parametrize("allocate_over_stream", [False, True])
def test_a_retransmitted_allocate_over_the_other_transport_gets_437(
    allocate_over_stream: bool,
) -> None:
    server = make_server(Relays())
    owner, other = make_pair(server, allocate_over_stream)
    owner.login()
    request = owner.request(Method.ALLOCATE, (AttrType.REQUESTED_TRANSPORT, UDP))
    assert parse(owner.send(request, T0)[0]).cls is Class.SUCCESS
    assert error_code(parse(other.send(request, T0 + 0.5)[0])) == 437


# -- the deframer


def stun_frame(message_type: int, body: bytes) -> bytes:
    """A STUN message of ``message_type`` (its first byte 0-3, RFC 7983) around ``body``,
    padded to four bytes."""
    body += bytes(-len(body) % 4)
    head = message_type.to_bytes(2, "big") + len(body).to_bytes(2, "big")
    return head + b"\x21\x12\xa4\x42" + bytes(12) + body


def allocate_request() -> bytes:
    message = Message(Method.ALLOCATE, Class.REQUEST, bytes(range(12)))
    message.attributes.append((AttrType.REQUESTED_TRANSPORT, UDP))
    return build(message)


MESSAGES = [
    allocate_request(),
    build_channel_data(ChannelData(0x4001, b"abcde"), stream=True),
    build_channel_data(ChannelData(0x4FFF, b""), stream=True),
    stun_frame(0x0011, b"indication"),
]
STREAM = b"".join(MESSAGES)


def test_several_messages_in_one_chunk() -> None:
    deframer = StreamDeframer()
    assert deframer.feed(STREAM) == MESSAGES
    assert deframer.buffered == 0
    assert deframer.feed(b"") == []


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_a_split_at_every_byte_boundary(cut: int) -> None:
    deframer = StreamDeframer()
    assert deframer.feed(STREAM[:cut]) + deframer.feed(STREAM[cut:]) == MESSAGES


def test_a_byte_at_a_time() -> None:
    deframer = StreamDeframer()
    out = [
        message
        for index in range(len(STREAM))
        for message in deframer.feed(STREAM[index : index + 1])
    ]
    assert out == MESSAGES


@pytest.mark.parametrize("length", range(9))
def test_channel_data_is_cut_with_its_padding(length: int) -> None:
    frame = build_channel_data(ChannelData(0x4001, b"p" * length), stream=True)
    deframer = StreamDeframer()
    assert deframer.feed(frame + MESSAGES[0]) == [frame, MESSAGES[0]]
    assert len(frame) == 4 + length + (-length % 4)
    assert parse_channel_data(frame).data == b"p" * length


def test_a_message_over_the_cap_is_refused_from_its_header() -> None:
    deframer = StreamDeframer(max_message=100)
    assert deframer.feed(stun_frame(0x0001, bytes(80))) == [stun_frame(0x0001, bytes(80))]
    with pytest.raises(FramingError, match="a 104-byte frame, cap 100") as raised:
        deframer.feed(b"\x00\x01\x00\x54")
    assert raised.value.code is ErrorCode.OVERSIZED


def test_the_largest_frame_passes_the_default_cap() -> None:
    frame = build_channel_data(ChannelData(0x4001, bytes(0xFFFF)), stream=True)
    assert StreamDeframer().feed(frame) == [frame]


def test_buffered_bytes_stay_under_the_cap() -> None:
    deframer = StreamDeframer(max_message=1024)
    frame = stun_frame(0x0001, bytes(1004))
    assert len(frame) == 1024
    seen = 0
    for index in range(len(frame)):
        assert deframer.feed(frame[index : index + 1]) in ([], [frame])
        seen = max(seen, deframer.buffered)
    assert seen == 1023 and deframer.buffered == 0


def test_a_cap_below_a_stun_header_is_refused() -> None:
    with pytest.raises(StunBuildError, match="max_message 19 is under a 20-byte STUN header"):
        StreamDeframer(max_message=19)


def test_garbage_breaks_the_stream_for_good() -> None:
    deframer = StreamDeframer()
    with pytest.raises(FramingError, match="first byte 0x16 is neither STUN nor ChannelData"):
        deframer.feed(MESSAGES[0] + b"\x16\x03\x01\x02\x00")
    with pytest.raises(
        FramingError, match="after an earlier error: stream: first byte 0x16"
    ) as again:
        deframer.feed(MESSAGES[0])
    assert again.value.code is ErrorCode.MALFORMED


def test_a_tls_client_hello_is_seen_once_four_bytes_are_in() -> None:
    deframer = StreamDeframer()
    assert deframer.feed(b"\x16\x03\x01") == []
    with pytest.raises(FramingError, match="first byte 0x16"):
        deframer.feed(b"\x02")


def test_an_http_request_reads_as_a_long_channel_data_message() -> None:
    deframer = StreamDeframer()
    assert deframer.feed(b"GET / HTTP/1.1\r\n\r\n") == []
    assert frame_size(b"GET ") == 4 + 0x5420


frames = st.one_of(
    st.builds(stun_frame, st.integers(0, 0x3FF), st.binary(max_size=64)),
    st.builds(
        lambda channel, data: build_channel_data(ChannelData(channel, data), stream=True),
        st.integers(0x4000, 0x4FFF),
        st.binary(max_size=64),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=8), st.lists(st.integers(0, 1000), max_size=10))
def test_framed_messages_chunked_anyhow_deframe_to_the_same_list(
    messages: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(messages)
    points = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
    deframer = StreamDeframer()
    out: list[bytes] = []
    for start, end in pairwise(points):
        out += deframer.feed(stream[start:end])
    assert out == messages
    assert deframer.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_any_bytes_deframe_to_whole_messages_or_raise_framing_error(chunks: list[bytes]) -> None:
    deframer = StreamDeframer(max_message=64)
    with contextlib.suppress(FramingError):
        for chunk in chunks:
            for message in deframer.feed(chunk):
                assert frame_size(message) == len(message) <= 64


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_the_struct_channel_header_is_the_declared_one(channel: int, length: int) -> None:
    declared = CHANNEL_HEADER.build({"channel": channel, "length": length})
    assert struct.pack(">HH", channel, length) == declared
    if MIN_CHANNEL <= channel <= MAX_CHANNEL:
        data = bytes(min(length, 64))
        built = build_channel_data(ChannelData(channel, data))
        assert built[:4] == CHANNEL_HEADER.build({"channel": channel, "length": len(data)})
        assert parse_channel_data(built) == ChannelData(channel, data)

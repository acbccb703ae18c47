"""Stream sessions: two cores back to back in memory, bad input, then real TCP and UDP.

The in-memory tests wire an initiator and a responder together with a pump that
moves each side's ``data_to_send()`` into the other's ``receive_data``, cut into
pieces as the test chooses, so that frame boundaries never line up with reads.
The loopback tests run the same cores (and the datagram endpoint) behind the
uvloop adapters on 127.0.0.1.
"""

import asyncio
import itertools
import random
import socket
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.crypto.cert import TrustStore
from edge.crypto.errors import DecryptError, ReplayError
from edge.crypto.keys import IssuerKey
from edge.crypto.transport import Deframer, frame
from edge.errors import LocalError, RemoteError
from edge.runtime.adapters import (
    StreamAdapter,
    open_datagram,
    open_stream_client,
    open_stream_server,
)
from edge.sansio import Address
from edge.session.datagram import DatagramEndpoint
from edge.session.errors import HandshakeTimeout, NotAllowedHere, SessionUnusable
from edge.session.events import MessageReceived, SessionEstablished, SessionFailed
from edge.session.handshake import Identity, ReplayGuard
from edge.session.stream import HANDSHAKE_TIMEOUT, MAX_QUEUED_EVENTS, StreamSession
from edge.wire.codes import ErrorCode, MsgType, NoisePattern
from edge.wire.messages import HEADER_SIZE, decode, encode
from tests.sessions import WALL, identity

T = TypeVar("T")
A: Address = ("198.18.0.1", 4000)
B: Address = ("198.18.0.2", 5000)
TIMEOUT = 5.0
PATTERNS = [NoisePattern.XX, NoisePattern.IK]

Split = Callable[[bytes], Iterable[bytes]]


@dataclass(frozen=True)
class World:
    issuer: IssuerKey
    alice: Identity
    bob: Identity
    trust: TrustStore


@pytest.fixture
def world() -> World:
    return make_world()


def make_world() -> World:
    issuer = IssuerKey.generate()
    trust = TrustStore([issuer.public])
    return World(issuer, identity(issuer, "alice"), identity(issuer, "bob"), trust)


WORLD = make_world()
"""For the hypothesis tests, which cannot take a function-scoped fixture."""


def sessions(
    world: World, pattern: NoisePattern = NoisePattern.XX
) -> tuple[StreamSession, StreamSession]:
    """Alice (initiator) and Bob (responder), both connected at ``now == 0``."""
    remote = world.bob.keys.dh_public if pattern is NoisePattern.IK else None
    alice = StreamSession(
        world.alice, world.trust, initiator=True, wall_offset=WALL, remote_static=remote
    )
    bob = StreamSession(world.bob, world.trust, initiator=False, wall_offset=WALL)
    alice.connection_made(B, 0.0)
    bob.connection_made(A, 0.0)
    return alice, bob


def bytewise(data: bytes) -> Iterable[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def drain(session: StreamSession) -> list[object]:
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def pump(x: StreamSession, y: StreamSession) -> None:
    """Move bytes both ways until neither side has anything to send."""
    while True:
        moved = False
        for src, dst in ((x, y), (y, x)):
            data = src.data_to_send()
            if data:
                dst.receive_data(data, 0.0)
                moved = True
        if not moved:
            return


def frames_of(data: bytes) -> list[MsgType]:
    """The message types of the plaintext frames in a stream (handshake phase only)."""
    return [decode(raw).type for raw in Deframer().feed(data)]


def chat(text: str, sequence: int) -> dict[str, object]:
    return {
        "message_id": bytes([sequence]) * 16,
        "sender": "alice",
        "recipient": "bob",
        "sequence": sequence,
        "sent_ms": 1000 + sequence,
        "text": text,
    }


def keepalive(nonce: int) -> dict[str, object]:
    return {"nonce": nonce, "sent_ms": 7, "echo": 1}


def established(got: list[object]) -> SessionEstablished:
    found = [e for e in got if isinstance(e, SessionEstablished)]
    assert len(found) == 1, got
    return found[0]


def received(got: list[object]) -> list[tuple[MsgType, object]]:
    """(type, text or nonce) of each MessageReceived, in order."""
    out: list[tuple[MsgType, object]] = []
    for event in got:
        if isinstance(event, MessageReceived):
            body = event.message.body
            key = body.text if event.message.type is MsgType.INSTANT_MESSAGE else body.nonce
            out.append((event.message.type, key))
    return out


# ------------------------------------------------------------------ back to back


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_handshake_and_messages_both_ways(world: World, pattern: NoisePattern) -> None:
    alice, bob = sessions(world, pattern)
    init = alice.data_to_send()
    assert frames_of(init) == [MsgType.HANDSHAKE_INIT]
    assert decode(Deframer().feed(init)[0]).body.pattern is pattern
    bob.receive_data(init, 0.0)
    pump(alice, bob)

    a_up, b_up = established(drain(alice)), established(drain(bob))
    a_peer, b_peer = a_up.certified_peer.user_id, b_up.certified_peer.user_id
    assert (a_up.index, a_up.address, a_peer, a_up.initiator) == (0, B, "bob", True)
    assert (b_up.index, b_up.address, b_peer, b_up.initiator) == (0, A, "alice", False)
    assert alice.peer == a_up.peer and bob.peer == b_up.peer
    assert alice.get_timer() is None and bob.get_timer() is None

    alice.send(MsgType.INSTANT_MESSAGE, chat("hello bob", 1))
    alice.send(MsgType.KEEPALIVE, keepalive(11))
    bob.send(MsgType.INSTANT_MESSAGE, chat("hello alice", 2))
    bob.send(MsgType.KEEPALIVE, keepalive(22))
    pump(alice, bob)
    assert received(drain(bob)) == [(MsgType.INSTANT_MESSAGE, "hello bob"), (MsgType.KEEPALIVE, 11)]
    assert received(drain(alice)) == [
        (MsgType.INSTANT_MESSAGE, "hello alice"),
        (MsgType.KEEPALIVE, 22),
    ]
    assert not alice.closed and not bob.closed


def test_ik_takes_one_message_each_way(world: World) -> None:
    alice, bob = sessions(world, NoisePattern.IK)
    bob.receive_data(alice.data_to_send(), 0.0)
    # Bob is established as soon as he has written his answer.
    established(drain(bob))
    resp = bob.data_to_send()
    assert frames_of(resp) == [MsgType.HANDSHAKE_RESP]
    alice.receive_data(resp, 0.0)
    established(drain(alice))
    assert alice.data_to_send() == b""


# ------------------------------------------------------------------ byte boundaries


@dataclass
class Side:
    """One end of a scripted conversation: what it says once established, what it got."""

    session: StreamSession
    script: list[tuple[MsgType, dict[str, object]]]
    events: list[object] = field(default_factory=list)

    def collect(self) -> None:
        got = drain(self.session)
        self.events += got
        if any(isinstance(event, SessionEstablished) for event in got):
            for msg_type, body in self.script:
                self.session.send(msg_type, body)


ALICE_SAYS: list[tuple[MsgType, dict[str, object]]] = [
    (MsgType.INSTANT_MESSAGE, chat("one", 1)),
    (MsgType.KEEPALIVE, keepalive(2)),
    (MsgType.INSTANT_MESSAGE, chat("three " * 300, 3)),
    (MsgType.INSTANT_MESSAGE, chat("", 4)),
]
BOB_SAYS: list[tuple[MsgType, dict[str, object]]] = [
    (MsgType.KEEPALIVE, keepalive(5)),
    (MsgType.INSTANT_MESSAGE, chat("six", 6)),
]


def converse(world: World, pattern: NoisePattern, split: Split) -> tuple[Side, Side]:
    """Handshake, then each side sends its script as soon as it is established."""
    alice, bob = sessions(world, pattern)
    sides = (Side(alice, ALICE_SAYS), Side(bob, BOB_SAYS))
    while True:
        moved = False
        for src, dst in (sides, sides[::-1]):
            data = src.session.data_to_send()
            for piece in split(data):
                dst.session.receive_data(piece, 0.0)
            moved = moved or bool(data)
        for side in sides:
            side.collect()
        if not moved:
            return sides


def expected(script: list[tuple[MsgType, dict[str, object]]]) -> list[tuple[MsgType, object]]:
    return [
        (t, body["text"] if t is MsgType.INSTANT_MESSAGE else body["nonce"]) for t, body in script
    ]


def check_conversation(alice: Side, bob: Side) -> None:
    assert isinstance(alice.events[0], SessionEstablished)
    assert isinstance(bob.events[0], SessionEstablished)
    assert received(bob.events) == expected(ALICE_SAYS)
    assert received(alice.events) == expected(BOB_SAYS)
    assert len(alice.events) == 1 + len(BOB_SAYS) and len(bob.events) == 1 + len(ALICE_SAYS)


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_conversation_delivered_one_byte_at_a_time(world: World, pattern: NoisePattern) -> None:
    check_conversation(*converse(world, pattern, bytewise))


def cutter(sizes: list[int]) -> Split:
    """Cut every chunk into pieces of the given sizes, round and round."""
    cycle = itertools.cycle(sizes)

    def split(data: bytes) -> Iterable[bytes]:
        pieces = []
        while data:
            size = next(cycle)
            pieces.append(data[:size])
            data = data[size:]
        return pieces

    return split


@settings(max_examples=100, deadline=None)
@given(pattern=st.sampled_from(PATTERNS), sizes=st.lists(st.integers(1, 400), min_size=1))
def test_conversation_split_at_random_points(pattern: NoisePattern, sizes: list[int]) -> None:
    check_conversation(*converse(WORLD, pattern, cutter(sizes)))


# ------------------------------------------------------------------ bad input


def up(world: World) -> tuple[StreamSession, StreamSession]:
    alice, bob = sessions(world)
    pump(alice, bob)
    drain(alice)
    drain(bob)
    return alice, bob


def failed(session: StreamSession) -> SessionFailed:
    (event,) = drain(session)
    assert isinstance(event, SessionFailed)
    return event


def test_tampered_frame_kills_the_session(world: World) -> None:
    alice, bob = up(world)
    alice.send(MsgType.KEEPALIVE, keepalive(1))
    genuine = alice.data_to_send()
    tampered = genuine[:-1] + bytes([genuine[-1] ^ 0x01])
    with pytest.raises(DecryptError) as info:
        bob.receive_data(tampered, 1.0)
    assert isinstance(info.value, RemoteError)
    assert bob.closed
    event = failed(bob)
    assert (event.code, event.address) == (ErrorCode.BAD_MAC, A)
    # Nothing is read from a dead stream, not even the genuine frame.
    bob.receive_data(genuine, 2.0)
    assert drain(bob) == []
    assert bob.get_timer() is None
    with pytest.raises(SessionUnusable):
        bob.send(MsgType.KEEPALIVE, keepalive(2))


def test_first_message_must_be_a_handshake_init(world: World) -> None:
    _, bob = sessions(world)
    with pytest.raises(NotAllowedHere, match=r"KEEPALIVE .* HANDSHAKE_INIT was due"):
        bob.receive_data(frame(encode(MsgType.KEEPALIVE, keepalive(1))), 0.0)
    assert bob.closed
    assert failed(bob).code is ErrorCode.MALFORMED


def test_initiator_refuses_an_init_in_place_of_a_resp(world: World) -> None:
    alice, _ = sessions(world)
    other, _ = sessions(world)
    with pytest.raises(NotAllowedHere, match="HANDSHAKE_RESP was due"):
        alice.receive_data(other.data_to_send(), 0.0)
    assert alice.closed


def test_certificate_from_an_unknown_issuer_is_refused(world: World) -> None:
    stranger = IssuerKey.generate()
    bob_id = identity(stranger, "bob")
    alice = StreamSession(world.alice, world.trust, initiator=True, wall_offset=WALL)
    bob = StreamSession(
        bob_id,
        TrustStore([world.issuer.public, stranger.public]),
        initiator=False,
        wall_offset=WALL,
    )
    alice.connection_made(B, 0.0)
    bob.connection_made(A, 0.0)
    with pytest.raises(RemoteError) as info:
        pump(alice, bob)
    assert info.value.code is ErrorCode.CERT_UNKNOWN_ISSUER
    assert alice.closed and alice.peer is None
    assert failed(alice).code is ErrorCode.CERT_UNKNOWN_ISSUER
    assert not any(isinstance(e, SessionEstablished) for e in drain(bob))


def oversized_frame() -> bytes:
    """A 65535-byte frame holding a HANDSHAKE_INIT that announces more than its cap."""
    size = 0xFFFF
    header = encode(
        MsgType.HANDSHAKE_INIT, {"pattern": 1, "sender_index": 0, "cookie": bytes(16), "noise": b""}
    )
    header = header[:6] + (size - HEADER_SIZE).to_bytes(2, "big")
    return size.to_bytes(2, "big") + header + bytes(size - HEADER_SIZE)


def test_oversized_frame_is_refused(world: World) -> None:
    _, bob = sessions(world)
    with pytest.raises(RemoteError) as info:
        bob.receive_data(oversized_frame(), 0.0)
    assert info.value.code is ErrorCode.OVERSIZED
    assert bob.closed
    assert failed(bob).code is ErrorCode.OVERSIZED


def test_oversized_frame_header_is_refused_before_its_body(world: World) -> None:
    _, bob = sessions(world)
    with pytest.raises(RemoteError):
        bob.receive_data(oversized_frame()[: HEADER_SIZE + 2], 0.0)


def test_handshake_times_out(world: World) -> None:
    alice = StreamSession(world.alice, world.trust, initiator=True, wall_offset=WALL)
    alice.connection_made(B, 5.0)
    assert alice.get_timer() == 5.0 + HANDSHAKE_TIMEOUT
    alice.handle_timer(5.0 + HANDSHAKE_TIMEOUT - 0.01)
    assert not alice.closed
    with pytest.raises(HandshakeTimeout, match=r"198\.18\.0\.2:5000"):
        alice.handle_timer(5.0 + HANDSHAKE_TIMEOUT)
    assert alice.closed and alice.get_timer() is None
    assert failed(alice).code is ErrorCode.HANDSHAKE_FAILED


def test_responder_clock_starts_with_its_connection(world: World) -> None:
    _, bob = sessions(world)
    with pytest.raises(HandshakeTimeout):
        bob.handle_timer(HANDSHAKE_TIMEOUT)
    assert bob.closed


def test_established_session_has_no_timer(world: World) -> None:
    alice, bob = up(world)
    alice.handle_timer(HANDSHAKE_TIMEOUT * 10)
    bob.handle_timer(HANDSHAKE_TIMEOUT * 10)
    assert not alice.closed and not bob.closed


def test_send_before_the_handshake_is_our_mistake(world: World) -> None:
    alice, bob = sessions(world)
    for session in (alice, bob):
        with pytest.raises(SessionUnusable) as info:
            session.send(MsgType.KEEPALIVE, keepalive(1))
        assert isinstance(info.value, LocalError)
    assert not alice.closed and not bob.closed


def test_connection_lost_is_reported_once(world: World) -> None:
    alice, _ = up(world)
    alice.connection_lost()
    alice.connection_lost()
    assert failed(alice).code is ErrorCode.UNAVAILABLE
    assert alice.closed


def test_a_burst_beyond_the_event_queue_is_not_our_mistake(world: World) -> None:
    alice, bob = up(world)
    for n in range(MAX_QUEUED_EVENTS + 1):
        alice.send(MsgType.KEEPALIVE, keepalive(n))
    with pytest.raises(RemoteError) as info:
        bob.receive_data(alice.data_to_send(), 1.0)
    assert info.value.code is ErrorCode.RATE_LIMITED


def test_session_layer_types_never_travel_inside(world: World) -> None:
    alice, _ = up(world)
    with pytest.raises(SessionUnusable):
        alice.send(MsgType.HANDSHAKE_INIT, {})
    with pytest.raises(SessionUnusable):
        alice.send(MsgType.TRANSPORT, {})


def test_our_own_close_is_not_reported_as_a_failure(world: World) -> None:
    alice, _ = up(world)
    alice.close()
    alice.connection_lost()
    assert drain(alice) == []
    with pytest.raises(SessionUnusable):
        alice.send(MsgType.KEEPALIVE, keepalive(1))


def test_replayed_ik_initiation_is_refused_by_a_shared_guard(world: World) -> None:
    guard = ReplayGuard()
    alice, _ = sessions(world, NoisePattern.IK)
    init = alice.data_to_send()
    first = StreamSession(
        world.bob, world.trust, initiator=False, wall_offset=WALL, replay_guard=guard
    )
    first.connection_made(("198.18.0.65", 6565), 0.0)
    first.receive_data(init, 0.0)
    established(drain(first))
    replay = StreamSession(
        world.bob, world.trust, initiator=False, wall_offset=WALL, replay_guard=guard
    )
    replay.connection_made(("198.18.0.66", 6666), 60.0)
    with pytest.raises(ReplayError):
        replay.receive_data(init, 60.0)
    assert not any(isinstance(e, SessionEstablished) for e in drain(replay))


# ------------------------------------------------------------------ real sockets


def run_uv(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def within(awaitable: Coroutine[Any, Any, T] | asyncio.Future[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


def live_world() -> World:
    """Certificates valid around the real clock."""
    issuer = IssuerKey.generate()
    start, end = time.time() - 60, time.time() + 3600
    return World(
        issuer,
        identity(issuer, "alice", start=start, end=end),
        identity(issuer, "bob", start=start, end=end),
        TrustStore([issuer.public]),
    )


class Waiter:
    """Collects events and lets a test wait for the n-th event of a type."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self._waiting: list[tuple[type, asyncio.Future[object]]] = []

    def __call__(self, event: object) -> None:
        self.events.append(event)
        for kind, future in self._waiting:
            if isinstance(event, kind) and not future.done():
                future.set_result(event)
        self._waiting = [(kind, future) for kind, future in self._waiting if not future.done()]

    def _of(self, kind: type[T]) -> list[T]:
        return [event for event in self.events if isinstance(event, kind)]

    async def nth(self, kind: type[T], n: int = 1) -> T:
        """The ``n``-th event of type ``kind`` (1 is the first), once it has come."""
        while len(self._of(kind)) < n:
            future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            self._waiting.append((kind, future))
            await within(future)
        return self._of(kind)[n - 1]


def test_tcp_handshake_and_messages_over_uvloop() -> None:
    w = live_world()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, uvloop.Loop)
        offset = time.time() - loop.time()
        server_log = Waiter()

        def on_server_event(adapter: StreamAdapter, event: object) -> None:
            server_log(event)
            if isinstance(event, MessageReceived):
                core = adapter.core
                assert isinstance(core, StreamSession)
                core.send(MsgType.INSTANT_MESSAGE, chat("pong: " + event.message.body.text, 2))
                adapter.poke()

        def responder() -> StreamSession:
            return StreamSession(w.bob, w.trust, initiator=False, wall_offset=offset)

        server = await within(open_stream_server(responder, "127.0.0.1", 0, on_server_event))
        port = server.sockets[0].getsockname()[1]
        client_log = Waiter()
        core = StreamSession(
            w.alice, w.trust, initiator=True, wall_offset=offset, expect_user="bob"
        )
        client = await within(open_stream_client(core, "127.0.0.1", port, client_log))

        assert (await client_log.nth(SessionEstablished)).certified_peer.user_id == "bob"
        server_up = await server_log.nth(SessionEstablished)
        assert server_up.certified_peer.user_id == "alice"
        assert server_up.address == client.local_address

        core.send(MsgType.INSTANT_MESSAGE, chat("ping", 1))
        client.poke()
        assert (await server_log.nth(MessageReceived)).message.body.text == "ping"
        assert (await client_log.nth(MessageReceived)).message.body.text == "pong: ping"

        client.close()
        await within(client.wait_closed())
        assert (await server_log.nth(SessionFailed)).code is ErrorCode.UNAVAILABLE
        assert not client.dropped
        server.close()
        await within(server.wait_closed())

    run_uv(scenario())


def test_udp_handshake_garbage_is_counted_and_the_session_survives() -> None:
    w = live_world()
    carol = identity(w.issuer, "carol", start=time.time() - 60, end=time.time() + 3600)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        offset = time.time() - loop.time()

        def node(ident: Identity) -> DatagramEndpoint:
            return DatagramEndpoint(ident, w.trust, wall_offset=offset)

        alice_log, bob_log = Waiter(), Waiter()
        alice_ep, bob_ep = node(w.alice), node(w.bob)
        alice = await within(open_datagram(alice_ep, ("127.0.0.1", 0), alice_log))
        bob = await within(open_datagram(bob_ep, ("127.0.0.1", 0), bob_log))

        index = alice_ep.connect(bob.local_address, loop.time(), expect_user="bob")
        alice.poke()
        assert (await alice_log.nth(SessionEstablished)).certified_peer.user_id == "bob"
        b_up = await bob_log.nth(SessionEstablished)
        assert b_up.certified_peer.user_id == "alice" and b_up.address == alice.local_address

        alice_ep.send(index, MsgType.INSTANT_MESSAGE, chat("over udp", 1))
        alice.poke()
        assert (await bob_log.nth(MessageReceived)).message.body.text == "over udp"

        # A genuine transport packet, taken from the core before the adapter sends it.
        alice_ep.send(index, MsgType.KEEPALIVE, keepalive(3))
        ((packet, _),) = alice_ep.datagrams_to_send(loop.time())
        garbage = b"\x00" + random.Random(5).randbytes(47)
        # A valid initiation from the same socket comes last: its answer proves
        # that the two bad datagrams before it were read.
        carol_ep = node(carol)
        carol_ep.connect(bob.local_address, loop.time())
        ((init, _),) = carol_ep.datagrams_to_send(loop.time())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
            plain.bind(("127.0.0.1", 0))
            plain.setblocking(False)
            for data in (garbage, packet[: len(packet) - 5], init):
                plain.sendto(data, bob.local_address)
            answer = await within(loop.sock_recv(plain, 4096))
        assert decode(answer).type is MsgType.HANDSHAKE_RESP
        assert bob.dropped == {ErrorCode.BAD_MAGIC: 1, ErrorCode.TRUNCATED: 1}

        alice_ep.send(index, MsgType.INSTANT_MESSAGE, chat("after the noise", 2))
        alice.poke()
        assert (await bob_log.nth(MessageReceived, 2)).message.body.text == "after the noise"
        bob_ep.send(b_up.index, MsgType.INSTANT_MESSAGE, chat("still here", 3))
        bob.poke()
        assert (await alice_log.nth(MessageReceived)).message.body.text == "still here"
        assert not alice.dropped

        for adapter in (alice, bob):
            adapter.close()
            await within(adapter.wait_closed())

    run_uv(scenario())

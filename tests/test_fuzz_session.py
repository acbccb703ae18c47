"""Any input to the session cores is either taken or refused with a RemoteError.

Random bytes, random bodies behind a valid header, and real packets captured
from an in-memory run (handshake, cookie reply and transport, both patterns)
with bits flipped, cut short, extended, overwritten or spliced together, fed to
a fresh responder and to endpoints that hold an established session. Afterwards
the session table is within its limits, every half-open session still times out,
and the established session still carries genuine messages both ways. The same
for stream sessions (where any refusal closes the session for good) and for
certificates. Examples per test: EDGE_FUZZ_EXAMPLES (default 300).
"""

import functools
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.crypto.cert import TrustStore
from edge.crypto.keys import IssuerKey
from edge.crypto.transport import frame
from edge.errors import EdgeError, RemoteError
from edge.sansio import Address
from edge.session.cookie import CookieGate
from edge.session.datagram import SESSION_TYPES, DatagramEndpoint, Limits, State
from edge.session.errors import HandshakeTimeout
from edge.session.events import MessageReceived, PeerMoved, SessionEstablished, SessionFailed
from edge.session.stream import HANDSHAKE_TIMEOUT, StreamSession
from edge.wire.codes import MAGIC, PROTOCOL_VERSION, MsgType, NoisePattern
from edge.wire.errors import UnsupportedVersion
from edge.wire.messages import Codec, encode
from tests.sessions import WALL, Net, endpoint, events, identity, seeded

FUZZ = settings(
    max_examples=int(os.environ.get("EDGE_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ISSUER = IssuerKey.generate()
ALICE = identity(ISSUER, "alice")
BOB_SERIAL = 2
BOB = identity(ISSUER, "bob", serial=BOB_SERIAL)
A: Address = ("198.18.0.1", 4000)
B: Address = ("198.18.0.2", 5000)
ELSEWHERE: Address = ("198.18.0.99", 9999)
LIMITS = Limits(max_sessions=3, max_half_open=1)
"""Small enough that a few accepted initiations reach both caps."""


# ------------------------------------------------------------------ mutations


@dataclass(frozen=True)
class Mutated:
    """A captured packet (chosen by ``source``) put through ``ops``, each (kind, a, b, data)."""

    source: int
    ops: tuple[tuple[str, int, int, bytes], ...]

    def apply(self, corpus: Sequence[bytes]) -> bytes:
        data = bytearray(corpus[self.source % len(corpus)])
        for kind, a, b, extra in self.ops:
            if kind == "flip" and data:
                bit = a % (len(data) * 8)
                data[bit // 8] ^= 1 << (bit % 8)
            elif kind == "cut":
                del data[a % (len(data) + 1) :]
            elif kind == "extend":
                data += extra
            elif kind == "byte" and data:
                data[a % len(data)] = b & 0xFF
            elif kind == "splice":
                other = corpus[b % len(corpus)]
                cut = a % (len(data) + 1)
                data[cut:] = other[a % (len(other) + 1) :]
        return bytes(data)


OP = st.tuples(
    st.sampled_from(["flip", "cut", "extend", "byte", "splice"]),
    st.integers(0, 1 << 16),
    st.integers(0, 1 << 8),
    st.binary(min_size=1, max_size=16),
)
MUTATED = st.builds(Mutated, st.integers(0, 31), st.lists(OP, max_size=3).map(tuple))


@st.composite
def behind_a_valid_header(draw: st.DrawFn, types: Sequence[MsgType]) -> bytes:
    body = draw(st.binary(max_size=160))
    msg_type = draw(st.sampled_from(list(types)))
    return struct.pack(">2sBBHH", MAGIC, 1, msg_type, 0, len(body)) + body


Input = bytes | Mutated


def inputs(types: Sequence[MsgType], *, framed: bool = False) -> st.SearchStrategy[Input]:
    """Random bytes, random bodies behind a header (in a stream frame), mutated captures."""
    messages = behind_a_valid_header(types)
    return st.one_of(st.binary(max_size=200), messages.map(frame) if framed else messages, MUTATED)


def concrete(item: Input, corpus: Sequence[bytes]) -> bytes:
    return item.apply(corpus) if isinstance(item, Mutated) else item


def refused_remotely(call: Callable[[], None]) -> RemoteError | None:
    """Run ``call``: it may return or raise an EdgeError, and then only a RemoteError."""
    try:
        call()
    except EdgeError as exc:
        assert isinstance(exc, RemoteError), f"{type(exc).__name__} on peer input: {exc}"
        return exc
    return None


# ------------------------------------------------------------------ datagrams


def chat(text: str) -> dict[str, object]:
    return {
        "message_id": bytes(16),
        "sender": "alice",
        "recipient": "bob",
        "sequence": 1,
        "sent_ms": 5,
        "text": text,
    }


@dataclass
class Pair:
    alice: DatagramEndpoint
    bob: DatagramEndpoint
    a_index: int
    b_index: int
    captured: list[bytes]


def datagram_pair() -> Pair:
    """Alice and Bob after an XX handshake, with every datagram of it and some transport."""
    alice = endpoint(ALICE, [ISSUER], seed=1, limits=LIMITS)
    bob = endpoint(BOB, [ISSUER], seed=2, limits=LIMITS)
    captured: list[bytes] = []

    def record(data: bytes, src: Address, dst: Address) -> bool:
        captured.append(data)
        return False

    a_index = alice.connect(B, 0.0)
    Net({A: alice, B: bob}, drop=record).deliver(0.0)
    (b_up,) = events(bob)
    assert isinstance(b_up, SessionEstablished)
    events(alice)
    # Sealed but not delivered: the fuzzer may deliver them, whole or mutated.
    alice.send(a_index, MsgType.INSTANT_MESSAGE, chat("captured"))
    alice.send(a_index, MsgType.KEEPALIVE, {"nonce": 1, "sent_ms": 2, "echo": 1})
    alice.send_media(
        a_index, stream_id=1, codec=Codec.OPUS, flags=0, sequence=1, timestamp=0, payload=b"x"
    )
    bob.send(b_up.index, MsgType.KEEPALIVE, {"nonce": 1, "sent_ms": 2, "echo": 0})
    for node in (alice, bob):
        captured += [data for data, _ in node.datagrams_to_send(0.0)]
    return Pair(alice, bob, a_index, b_up.index, captured)


@functools.cache
def other_captures() -> tuple[bytes, ...]:
    """IK initiation and answer, a cookie exchange, and a version ERROR, from runs of their own."""
    captured: list[bytes] = []

    def record(data: bytes, src: Address, dst: Address) -> bool:
        captured.append(data)
        return False

    alice = endpoint(ALICE, [ISSUER], seed=11)
    bob = endpoint(BOB, [ISSUER], seed=12)
    alice.connect(B, 0.0, remote_static=BOB.keys.dh_public)
    Net({A: alice, B: bob}, drop=record).deliver(0.0)
    busy = endpoint(BOB, [ISSUER], seed=13, cookie_gate=CookieGate(seeded(9), rate=0, burst=0))
    alice.connect(B, 0.0)
    Net({A: alice, B: busy}, drop=record).deliver(0.0)
    future = bytearray(encode(MsgType.INSTANT_MESSAGE, chat("from a newer version " * 4)))
    future[2] = PROTOCOL_VERSION + 1
    with pytest.raises(UnsupportedVersion):
        bob.receive_datagram(bytes(future), A, 0.0)
    ((answer, _),) = bob.datagrams_to_send(0.0)
    return (*captured, bytes(future), answer)


def check_table(node: DatagramEndpoint) -> None:
    sessions = node._sessions.values()
    half_open = sum(1 for s in sessions if s.state is not State.ESTABLISHED)
    assert len(sessions) <= node.limits.max_sessions
    assert node._half_open == half_open <= node.limits.max_half_open


def run_out_timers(node: DatagramEndpoint) -> None:
    while (at := node.get_timer()) is not None:
        node.handle_timer(at)
        node.datagrams_to_send(at)


def deliver(src: DatagramEndpoint, dst: DatagramEndpoint, addr: Address) -> list[object]:
    """The messages ``dst`` got from what ``src`` had to send (a peer may have moved back)."""
    for data, _ in src.datagrams_to_send(100.0):
        dst.receive_datagram(data, addr, 100.0)
    return [event for event in events(dst) if not isinstance(event, PeerMoved)]


@pytest.mark.fuzz
@FUZZ
@given(
    st.lists(
        st.tuples(
            inputs(sorted(SESSION_TYPES | {MsgType.ERROR})), st.sampled_from([A, B, ELSEWHERE])
        ),
        min_size=1,
        max_size=6,
    )
)
def test_datagram_endpoints_take_anything(items: list[tuple[Input, Address]]) -> None:
    pair = datagram_pair()
    corpus = pair.captured + list(other_captures())
    fresh = endpoint(BOB, [ISSUER], seed=3, limits=LIMITS)
    nodes = (fresh, pair.bob, pair.alice)
    for item, addr in items:
        data = concrete(item, corpus)
        for node in nodes:
            refused_remotely(functools.partial(node.receive_datagram, data, addr, 1.0))
            node.datagrams_to_send(1.0)
            check_table(node)
    for node in nodes:
        run_out_timers(node)
        check_table(node)
        assert node._half_open == 0
        events(node)
    assert pair.alice.is_established(pair.a_index) and pair.bob.is_established(pair.b_index)

    pair.alice.send(pair.a_index, MsgType.INSTANT_MESSAGE, chat("still there?"))
    (got,) = deliver(pair.alice, pair.bob, A)
    assert isinstance(got, MessageReceived) and got.message.body.text == "still there?"
    pair.bob.send(pair.b_index, MsgType.INSTANT_MESSAGE, chat("yes"))
    (got,) = deliver(pair.bob, pair.alice, B)
    assert isinstance(got, MessageReceived) and got.message.body.text == "yes"


# ------------------------------------------------------------------ streams


def stream_pair(pattern: NoisePattern) -> tuple[StreamSession, StreamSession, list[bytes]]:
    """Alice and Bob over a stream after a handshake, with the frames they exchanged."""
    trust = TrustStore([ISSUER.public])
    remote = BOB.keys.dh_public if pattern is NoisePattern.IK else None
    alice = StreamSession(ALICE, trust, initiator=True, wall_offset=WALL, remote_static=remote)
    bob = StreamSession(BOB, trust, initiator=False, wall_offset=WALL)
    alice.connection_made(B, 0.0)
    bob.connection_made(A, 0.0)
    captured: list[bytes] = []
    while True:
        moved = False
        for src, dst in ((alice, bob), (bob, alice)):
            data = src.data_to_send()
            if data:
                captured.append(data)
                dst.receive_data(data, 0.0)
                moved = True
        if not moved:
            break
    for session in (alice, bob):
        assert isinstance(session.next_event(), SessionEstablished)
    # Sealed but not delivered, as above.
    alice.send(MsgType.INSTANT_MESSAGE, chat("captured"))
    alice.send(MsgType.KEEPALIVE, {"nonce": 1, "sent_ms": 2, "echo": 1})
    bob.send(MsgType.KEEPALIVE, {"nonce": 1, "sent_ms": 2, "echo": 0})
    captured += [alice.data_to_send(), bob.data_to_send()]
    captured.append(b"".join(captured))
    return alice, bob, captured


def feed_stream(session: StreamSession, pieces: list[bytes]) -> None:
    """Each piece is taken or refused; a refusal closes the session for good."""
    for piece in pieces:
        error = refused_remotely(functools.partial(session.receive_data, piece, 1.0))
        if error is None:
            assert not session.closed
            continue
        assert session.closed
        last = None
        while (event := session.next_event()) is not None:
            last = event
        assert isinstance(last, SessionFailed) and last.code is error.code
        session.receive_data(piece, 2.0)
        assert session.next_event() is None
        assert session.get_timer() is None
        return


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, i = [], 0
    while data:
        size = sizes[i % len(sizes)]
        pieces.append(data[:size])
        data = data[size:]
        i += 1
    return pieces


@pytest.mark.fuzz
@FUZZ
@given(
    pattern=st.sampled_from([NoisePattern.XX, NoisePattern.IK]),
    items=st.lists(inputs(list(MsgType), framed=True), min_size=1, max_size=3),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4),
)
def test_stream_sessions_take_anything(
    pattern: NoisePattern, items: list[Input], sizes: list[int]
) -> None:
    alice, bob, corpus = stream_pair(pattern)
    fresh = StreamSession(BOB, TrustStore([ISSUER.public]), initiator=False, wall_offset=WALL)
    fresh.connection_made(A, 0.0)
    data = b"".join(concrete(item, corpus) for item in items)
    for session in (fresh, bob, alice):
        feed_stream(session, cut(data, sizes))
    # A session neither refused nor established still times out.
    if not fresh.closed and fresh.peer is None:
        with pytest.raises(HandshakeTimeout):
            fresh.handle_timer(HANDSHAKE_TIMEOUT)


# ------------------------------------------------------------------ certificates


@pytest.mark.fuzz
@FUZZ
@given(
    item=st.one_of(st.binary(max_size=300), MUTATED),
    now=st.sampled_from([WALL, 0.0, WALL + 1e9]),
    dh_key=st.sampled_from([None, ALICE.keys.dh_public, bytes(32)]),
    user_id=st.sampled_from([None, "alice", "bob"]),
)
def test_certificate_verification_takes_anything(
    item: Input, now: float, dh_key: bytes | None, user_id: str | None
) -> None:
    trust = TrustStore([ISSUER.public])
    trust.set_revoked(ISSUER.key_id, [BOB_SERIAL])
    raw = concrete(item, (ALICE.certificate, BOB.certificate))
    try:
        cert = trust.verify(raw, now, dh_key=dh_key, user_id=user_id)
    except EdgeError as exc:
        assert isinstance(exc, RemoteError), f"{type(exc).__name__} on a certificate: {exc}"
        return
    # Only what the issuer signed and did not revoke verifies, for the key and user it names.
    assert cert.raw == ALICE.certificate
    assert dh_key in (None, cert.dh_key) and user_id in (None, cert.user_id)

"""Secure sessions end to end, in memory: the cost per handshake and per frame.

Each figure sits beside the layer under it, measured in the same run: a whole
session handshake (wire, certificates both ways, bookkeeping) beside a bare
Noise XX handshake; a media frame through both endpoints beside the bare
datagram transport; and a responder's cost of refusing a flood with cookie
replies beside its cost of answering initiations in full.
"""

import itertools
from collections.abc import Callable

from bench.common import Figure, rate
from edge.crypto.cert import TrustStore, issue
from edge.crypto.keys import DeviceKeys, IssuerKey
from edge.crypto.noise import HandshakeState
from edge.crypto.transport import DatagramTransport
from edge.session.cookie import CookieGate
from edge.session.datagram import DatagramEndpoint, Limits
from edge.session.handshake import Identity
from edge.wire.messages import Codec

SECONDS = 1.0
WALL = 1_800_000_000.0
A = ("198.18.0.1", 4000)
B = ("198.18.0.2", 5000)
FRAME = bytes(160)

_ISSUER = IssuerKey.generate()


def _identity(user: str) -> Identity:
    keys = DeviceKeys.generate()
    cert = issue(
        _ISSUER,
        serial=1,
        user_id=user,
        device_id="bench",
        sign_key=keys.sign_public,
        dh_key=keys.dh_public,
        not_before=int(WALL - 60),
        not_after=int(WALL + 86400),
    )
    return Identity(keys, cert)


_ALICE = _identity("alice")
_BOB = _identity("bob")


def _endpoint(identity: Identity, gate: CookieGate | None = None) -> DatagramEndpoint:
    return DatagramEndpoint(
        identity,
        TrustStore([_ISSUER.public]),
        wall_offset=WALL,
        limits=Limits(max_sessions=1 << 20, max_half_open=1 << 20),
        cookie_gate=gate,
    )


def _pump(a: DatagramEndpoint, b: DatagramEndpoint, now: float) -> None:
    moved = True
    while moved:
        moved = False
        for src, dst, addr in ((a, b, A), (b, a, B)):
            for data, _ in src.datagrams_to_send(now):
                dst.receive_datagram(data, addr, now)
                moved = True


def _session_handshake() -> Callable[[], None]:
    alice, bob = _endpoint(_ALICE), _endpoint(_BOB)

    def once() -> None:
        index = alice.connect(B, 0.0)
        _pump(alice, bob, 0.0)
        alice.close(index)
        while (event := bob.next_event()) is not None:
            bob.close(getattr(event, "index", 0))
        alice.next_event()

    return once


def _bare_handshake() -> None:
    i = HandshakeState("XX", True, s=_ALICE.keys.dh)
    r = HandshakeState("XX", False, s=_BOB.keys.dh)
    r.read_message(i.write_message())
    i.read_message(r.write_message())
    r.read_message(i.write_message())


def _media_pair() -> tuple[DatagramEndpoint, DatagramEndpoint, int]:
    alice, bob = _endpoint(_ALICE), _endpoint(_BOB)
    index = alice.connect(B, 0.0)
    _pump(alice, bob, 0.0)
    alice.next_event()
    bob.next_event()
    return alice, bob, index


def _session_frame() -> Callable[[], None]:
    alice, bob, index = _media_pair()
    sequence = itertools.count()

    def once() -> None:
        n = next(sequence)
        alice.send_media(
            index,
            stream_id=1,
            codec=Codec.OPUS,
            flags=0,
            sequence=n & 0xFFFF,
            timestamp=(n * 320) & 0xFFFFFFFF,
            payload=FRAME,
        )
        for data, _ in alice.datagrams_to_send(0.0):
            bob.receive_datagram(data, A, 0.0)
        bob.next_event()

    return once


def _bare_frame() -> Callable[[], bytes]:
    key_a, key_b = bytes(range(32)), bytes(range(1, 33))
    send = DatagramTransport(key_a, key_b)
    recv = DatagramTransport(key_b, key_a)

    def once() -> bytes:
        counter, ciphertext = send.seal(FRAME)
        return recv.open(counter, ciphertext)

    return once


def _initiations(count: int) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(count):
        initiator = _endpoint(_ALICE)
        initiator.connect(B, 0.0)
        out.extend(data for data, _ in initiator.datagrams_to_send(0.0))
    return out


def _responder_rate(gate: CookieGate, inits: list[bytes]) -> float:
    responder = _endpoint(_BOB, gate)
    packets = itertools.cycle(inits)
    ports = itertools.count(1)

    def once() -> None:
        port = next(ports) % 60000 + 1
        responder.receive_datagram(next(packets), ("198.18.5.5", port), 0.0)
        responder.datagrams_to_send(0.0)

    return rate(once, SECONDS, batch=20)


def run() -> list[Figure]:
    bare_hs = rate(_bare_handshake, SECONDS, batch=10)
    session_hs = rate(_session_handshake(), SECONDS, batch=10)
    bare_frame = rate(_bare_frame(), SECONDS)
    session_frame = rate(_session_frame(), SECONDS)
    inits = _initiations(64)
    unlimited = CookieGate(lambda n: bytes(n), rate=1e12, burst=1e12)
    full = _responder_rate(unlimited, inits)
    refusing = _responder_rate(CookieGate(lambda n: bytes(n), rate=0.0, burst=0.0), inits)
    return [
        Figure(
            "session XX handshakes/s (certs both ways)",
            session_hs,
            "hs/s",
            "bare Noise XX",
            bare_hs,
        ),
        Figure(
            "session media frames/s (160 B, send+receive)",
            session_frame,
            "frames/s",
            "bare transport",
            bare_frame,
        ),
        Figure(
            "responder: flood refused with cookies/s", refusing, "inits/s", "answered in full", full
        ),
    ]

"""Two and more in-memory endpoints back to back: handshakes, loss, cookies, bad peers."""

from collections.abc import Callable

import pytest

from edge.crypto.errors import DecryptError, ReplayError
from edge.crypto.keys import IssuerKey
from edge.errors import RemoteError
from edge.session.cookie import CookieGate
from edge.session.datagram import DatagramEndpoint, Limits, State
from edge.session.errors import NotAllowedHere, Overloaded, SessionUnusable, UnknownSession
from edge.session.events import (
    MediaReceived,
    MessageReceived,
    PeerMoved,
    SessionEstablished,
    SessionFailed,
)
from edge.wire import hot
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.errors import UnsupportedVersion
from edge.wire.messages import Codec, ReceiptStatus, decode, encode
from tests.sessions import WALL, Net, endpoint, events, identity, seeded

A = ("198.18.0.1", 4000)
B = ("198.18.0.2", 5000)


@pytest.fixture
def issuer() -> IssuerKey:
    return IssuerKey.generate()


def pair(
    issuer: IssuerKey, cookie_gate: CookieGate | None = None
) -> tuple[DatagramEndpoint, DatagramEndpoint, Net]:
    alice = endpoint(identity(issuer, "alice"), [issuer], seed=1)
    bob = endpoint(identity(issuer, "bob"), [issuer], seed=2, cookie_gate=cookie_gate)
    return alice, bob, Net({A: alice, B: bob})


def established(node: DatagramEndpoint) -> SessionEstablished:
    found = [e for e in events(node) if isinstance(e, SessionEstablished)]
    assert len(found) == 1, found
    return found[0]


def message(text: str) -> dict[str, object]:
    return {
        "message_id": bytes(16),
        "sender": "alice",
        "recipient": "bob",
        "sequence": 1,
        "sent_ms": 5,
        "text": text,
    }


def test_xx_handshake_then_messages_both_ways(issuer: IssuerKey) -> None:
    alice, bob, net = pair(issuer)
    index = alice.connect(B, 0.0, expect_user="bob")
    net.deliver(0.0)
    a_up, b_up = established(alice), established(bob)
    assert (a_up.index, a_up.certified_peer.user_id, a_up.initiator) == (index, "bob", True)
    assert (b_up.certified_peer.user_id, b_up.address, b_up.initiator) == ("alice", A, False)
    alice.send(index, MsgType.INSTANT_MESSAGE, message("hello"))
    net.deliver(0.1)
    got = events(bob)
    assert len(got) == 1 and isinstance(got[0], MessageReceived)
    assert got[0].message.body.text == "hello"
    receipt_body = {"message_id": bytes(16), "status": ReceiptStatus.DELIVERED}
    bob.send(b_up.index, MsgType.MESSAGE_RECEIPT, receipt_body)
    net.deliver(0.2)
    (receipt,) = events(alice)
    assert isinstance(receipt, MessageReceived)
    assert receipt.message.type is MsgType.MESSAGE_RECEIPT
    assert not net.errors


def test_ik_handshake_takes_one_round_trip(issuer: IssuerKey) -> None:
    alice, bob, net = pair(issuer)
    index = alice.connect(B, 0.0, remote_static=bob.identity.keys.dh_public)
    net.deliver(0.0)
    assert established(alice).certified_peer.user_id == "bob"
    assert established(bob).certified_peer.user_id == "alice"
    # INIT and RESP only: two datagrams.
    assert net.delivered == 2
    alice.send_media(
        index, stream_id=1, codec=Codec.OPUS, flags=2, sequence=7, timestamp=320, payload=b"opus"
    )
    net.deliver(0.02)
    (frame,) = events(bob)
    assert isinstance(frame, MediaReceived)
    assert frame == MediaReceived(frame.index, 1, 1, 2, 7, 320, b"opus")


def test_ik_to_the_wrong_key_fails(issuer: IssuerKey) -> None:
    alice, bob, net = pair(issuer)
    stranger = identity(issuer, "carol").keys.dh_public
    index = alice.connect(B, 0.0, remote_static=stranger)
    net.deliver(0.0)
    assert not events(bob)
    assert [getattr(e, "code", None) for e in net.errors] == [ErrorCode.HANDSHAKE_FAILED]
    assert not alice.is_established(index)


def test_lost_init_is_repeated(issuer: IssuerKey) -> None:
    alice, bob, net = pair(issuer)
    net.drop = drop_first(MsgType.HANDSHAKE_INIT)
    alice.connect(B, 0.0)
    net.deliver(0.0)
    assert not events(alice)
    assert alice.get_timer() == pytest.approx(0.5)
    net.tick(0.5)
    established(alice)
    established(bob)


def drop_first(kind: MsgType) -> Callable[[bytes, object, object], bool]:
    seen = []

    def drop(data: bytes, src: object, dst: object) -> bool:
        if hot.peek_type(data) is not kind:
            return False
        seen.append(data)
        return len(seen) == 1

    return drop


def test_lost_finish_is_recovered_by_the_responder_repeating(issuer: IssuerKey) -> None:
    alice, bob, net = pair(issuer)
    net.drop = drop_first(MsgType.HANDSHAKE_FINISH)
    alice.connect(B, 0.0)
    net.deliver(0.0)
    established(alice)
    assert not events(bob)
    net.tick(bob.get_timer() or 0.0)
    established(bob)
    assert alice.stats["handshake_repeats"] == 1


def test_lost_resp_is_recovered_by_the_initiator_repeating(issuer: IssuerKey) -> None:
    alice, bob, net = pair(issuer)
    net.drop = drop_first(MsgType.HANDSHAKE_RESP)
    alice.connect(B, 0.0)
    net.deliver(0.0)
    assert not events(alice)
    net.tick(0.5)  # alice repeats INIT; bob answers with the same RESP
    established(alice)
    established(bob)
    assert bob.stats["handshake_repeats"] == 1


def test_handshake_times_out_with_a_reason(issuer: IssuerKey) -> None:
    alice, _, net = pair(issuer)
    net.drop = lambda data, src, dst: True
    index = alice.connect(B, 0.0)
    now = 0.0
    for _ in range(10):
        at = alice.get_timer()
        if at is None:
            break
        now = at
        net.tick(now)
    (failed,) = events(alice)
    assert isinstance(failed, SessionFailed)
    assert failed.index == index and failed.code is ErrorCode.HANDSHAKE_FAILED
    assert "timed out" in failed.reason
    assert alice.get_timer() is None
    assert now == pytest.approx(0.5 + 1 + 2 + 4 + 8)


def test_responder_under_load_asks_for_a_cookie_first(issuer: IssuerKey) -> None:
    gate = CookieGate(seeded(9), rate=0.0, burst=0.0)
    alice, bob, net = pair(issuer, cookie_gate=gate)
    alice.connect(B, 0.0)
    net.deliver(0.0)
    assert bob.stats["cookie_replies_sent"] == 1
    assert alice.stats["cookie_replies_received"] == 1
    established(alice)
    established(bob)


def test_cookie_for_another_address_is_not_accepted(issuer: IssuerKey) -> None:
    gate = CookieGate(seeded(9), rate=0.0, burst=0.0)
    alice, bob, _ = pair(issuer, cookie_gate=gate)
    alice.connect(B, 0.0)
    ((init, _),) = alice.datagrams_to_send(0.0)
    cookie_for_other = gate.make(("198.18.9.9", 1), 0.0)
    body = dict(decode(init).body)
    body["cookie"] = cookie_for_other
    bob.receive_datagram(encode(MsgType.HANDSHAKE_INIT, body), A, 0.0)
    ((reply, to),) = bob.datagrams_to_send(0.0)
    assert decode(reply).type is MsgType.COOKIE_REPLY and to == A
    assert not bob._sessions  # no state kept for an unproven address


def test_unknown_issuer_fails_with_its_code(issuer: IssuerKey) -> None:
    other = IssuerKey.generate()
    alice = endpoint(identity(issuer, "alice"), [issuer], seed=1)
    bob = endpoint(identity(other, "bob"), [issuer, other], seed=2)
    net = Net({A: alice, B: bob})
    alice.connect(B, 0.0)
    net.deliver(0.0)
    (failed,) = events(alice)
    assert isinstance(failed, SessionFailed) and failed.code is ErrorCode.CERT_UNKNOWN_ISSUER
    assert not events(bob)


def test_expired_certificate_is_refused(issuer: IssuerKey) -> None:
    old = identity(issuer, "alice", start=WALL - 7200, end=WALL - 3600)
    alice = endpoint(old, [issuer], seed=1)
    bob = endpoint(identity(issuer, "bob"), [issuer], seed=2)
    net = Net({A: alice, B: bob})
    alice.connect(B, 0.0)
    net.deliver(0.0)
    assert [getattr(e, "code", None) for e in net.errors] == [ErrorCode.CERT_EXPIRED]
    assert bob.is_established(1) is False and not [
        e for e in events(bob) if isinstance(e, SessionEstablished)
    ]


def test_certificate_for_another_key_is_refused(issuer: IssuerKey) -> None:
    real = identity(issuer, "bob")
    impostor = identity(issuer, "mallory")
    # Mallory presents Bob's certificate with her own Noise key.
    bad = type(real)(impostor.keys, real.certificate)
    alice = endpoint(identity(issuer, "alice"), [issuer], seed=1)
    mallory = endpoint(bad, [issuer], seed=2)
    net = Net({A: alice, B: mallory})
    alice.connect(B, 0.0, expect_user="bob")
    net.deliver(0.0)
    (failed,) = events(alice)
    assert isinstance(failed, SessionFailed) and failed.code is ErrorCode.CERT_KEY_MISMATCH


def test_expected_user_is_enforced(issuer: IssuerKey) -> None:
    alice, _, net = pair(issuer)
    alice.connect(B, 0.0, expect_user="carol")
    net.deliver(0.0)
    (failed,) = events(alice)
    assert isinstance(failed, SessionFailed) and failed.code is ErrorCode.CERT_KEY_MISMATCH


def test_replayed_and_tampered_transport_packets(issuer: IssuerKey) -> None:
    alice, bob, net = pair(issuer)
    index = alice.connect(B, 0.0)
    net.deliver(0.0)
    events(bob)
    alice.send(index, MsgType.KEEPALIVE, {"nonce": 1, "sent_ms": 2, "echo": 1})
    ((packet, _),) = alice.datagrams_to_send(0.1)
    bob.receive_datagram(packet, A, 0.1)
    with pytest.raises(ReplayError):
        bob.receive_datagram(packet, A, 0.2)
    alice.send(index, MsgType.KEEPALIVE, {"nonce": 2, "sent_ms": 2, "echo": 1})
    ((packet, _),) = alice.datagrams_to_send(0.3)
    tampered = packet[:-1] + bytes([packet[-1] ^ 1])
    with pytest.raises(DecryptError):
        bob.receive_datagram(tampered, A, 0.3)
    bob.receive_datagram(packet, A, 0.3)  # the genuine one still opens
    assert len(events(bob)) == 2


def test_replayed_ik_initiation_is_refused(issuer: IssuerKey) -> None:
    alice, bob, _ = pair(issuer)
    alice.connect(B, 0.0, remote_static=bob.identity.keys.dh_public)
    ((init, _),) = alice.datagrams_to_send(0.0)
    bob.receive_datagram(init, A, 0.0)
    (up,) = events(bob)
    assert isinstance(up, SessionEstablished)
    bob.close(up.index)
    # The same bytes again, after the session is gone: a replay, not a retry.
    with pytest.raises(ReplayError):
        bob.receive_datagram(init, A, 5.0)


def test_unknown_session_and_misplaced_messages(issuer: IssuerKey) -> None:
    _, bob, _ = pair(issuer)
    with pytest.raises(UnknownSession):
        bob.receive_datagram(hot.pack_transport(1234, 0, bytes(32)), A, 0.0)
    with pytest.raises(UnknownSession):
        bob.receive_datagram(
            encode(MsgType.HANDSHAKE_FINISH, {"receiver_index": 99, "noise": b"x"}), A, 0.0
        )
    with pytest.raises(NotAllowedHere):
        bob.receive_datagram(encode(MsgType.CALL_RINGING, {"call_id": bytes(16)}), A, 0.0)


def test_unknown_version_is_refused_by_name(issuer: IssuerKey) -> None:
    _, bob, _ = pair(issuer)
    packet = bytearray(encode(MsgType.KEEPALIVE, {"nonce": 1, "sent_ms": 2, "echo": 1}))
    packet[2] = 9
    with pytest.raises(UnsupportedVersion, match="9"):
        bob.receive_datagram(bytes(packet), A, 0.0)


def test_send_on_a_session_not_established_is_our_mistake(issuer: IssuerKey) -> None:
    alice, _, _ = pair(issuer)
    index = alice.connect(B, 0.0)
    with pytest.raises(SessionUnusable):
        alice.send(index, MsgType.KEEPALIVE, {"nonce": 1, "sent_ms": 2, "echo": 1})
    with pytest.raises(SessionUnusable):
        alice.send(index, MsgType.TRANSPORT, {})


def test_peer_moving_to_a_new_address_keeps_the_session(issuer: IssuerKey) -> None:
    alice, bob, net = pair(issuer)
    index = alice.connect(B, 0.0)
    net.deliver(0.0)
    b_index = established(bob).index
    events(alice)
    alice.send(index, MsgType.KEEPALIVE, {"nonce": 1, "sent_ms": 2, "echo": 1})
    ((packet, _),) = alice.datagrams_to_send(1.0)
    moved = ("198.18.0.77", 6000)
    bob.receive_datagram(packet, moved, 1.0)
    assert [type(e) for e in events(bob)] == [PeerMoved, MessageReceived]
    bob.send(b_index, MsgType.KEEPALIVE, {"nonce": 1, "sent_ms": 2, "echo": 0})
    ((_, to),) = bob.datagrams_to_send(1.0)
    assert to == moved


def test_handshake_flood_keeps_state_bounded(issuer: IssuerKey) -> None:
    limits = Limits(max_half_open=8)
    bob = endpoint(identity(issuer, "bob"), [issuer], seed=2, limits=limits)
    overloaded = 0
    for n in range(40):
        flooder = endpoint(identity(issuer, f"f{n}"), [issuer], seed=100 + n)
        flooder.connect(B, 0.0)
        ((init, _),) = flooder.datagrams_to_send(0.0)
        try:
            bob.receive_datagram(init, ("198.18.1.1", 1000 + n), 0.0)
        except Overloaded:
            overloaded += 1
    assert overloaded == 32
    assert sum(1 for s in bob._sessions.values() if s.state is State.RESP_SENT) == 8
    # Half-open sessions give up after their repeats; the table empties.
    now = 0.0
    while (at := bob.get_timer()) is not None:
        now = at
        bob.handle_timer(now)
    assert not bob._sessions


def test_garbage_initiations_leave_no_state(issuer: IssuerKey) -> None:
    _, bob, _ = pair(issuer)
    for noise in (b"", b"\x00" * 32, b"\xff" * 200):
        body = {"pattern": 1, "sender_index": 5, "cookie": bytes(16), "noise": noise}
        with pytest.raises(RemoteError):
            bob.receive_datagram(encode(MsgType.HANDSHAKE_INIT, body), A, 0.0)
    assert not bob._sessions


def test_unknown_version_is_answered_and_explains_the_timeout(issuer: IssuerKey) -> None:
    alice, bob, net = pair(issuer)
    # Bob pretends to be a node of a future version: alice's INIT reaches him
    # with its version byte changed, as if he had sent it.
    index = alice.connect(B, 0.0)
    ((init, _),) = alice.datagrams_to_send(0.0)
    future = bytearray(init)
    future[2] = 2
    with pytest.raises(UnsupportedVersion):
        bob.receive_datagram(bytes(future), A, 0.0)
    ((reply, to),) = bob.datagrams_to_send(0.0)
    assert to == A and len(reply) <= len(future)
    error = decode(reply)
    assert error.type is MsgType.ERROR and error.body.code is ErrorCode.UNSUPPORTED_VERSION
    alice.receive_datagram(reply, B, 0.0)
    assert alice.stats["peer_errors"] == 1
    net.drop = lambda data, src, dst: True
    now = 0.0
    while (at := alice.get_timer()) is not None:
        now = at
        net.tick(now)
    (failed,) = events(alice)
    assert isinstance(failed, SessionFailed) and failed.index == index
    assert "said UNSUPPORTED_VERSION: this node speaks edge protocol version 1" in failed.reason


def test_version_error_is_never_larger_than_what_came_in(issuer: IssuerKey) -> None:
    _, bob, _ = pair(issuer)
    tiny = bytes([0xED, 0x9E, 2, 1, 0, 0, 0, 0])
    with pytest.raises(UnsupportedVersion):
        bob.receive_datagram(tiny, A, 0.0)
    assert bob.datagrams_to_send(0.0) == []


def test_move_sends_from_then_on_to_the_new_address() -> None:
    issuer = IssuerKey.generate()
    a = endpoint(identity(issuer, "alice"), [issuer], seed=1)
    b = endpoint(identity(issuer, "bob"), [issuer], seed=2)
    net = Net({("10.0.0.1", 1): a, ("10.0.0.2", 2): b})
    index = a.connect(("10.0.0.2", 2), 0.0)
    net.deliver(0.0)
    events(a), events(b)
    # The same peer is also reachable at another address; a switches the session there.
    net.nodes[("10.0.0.2", 3)] = b
    a.move(index, ("10.0.0.2", 3))
    assert [type(e).__name__ for e in events(a)] == ["PeerMoved"]
    a.send(index, MsgType.KEEPALIVE, {"nonce": 1, "sent_ms": 0, "echo": False})
    out = a.datagrams_to_send(0.0)
    assert [address for _, address in out] == [("10.0.0.2", 3)]
    b.receive_datagram(out[0][0], ("10.0.0.1", 1), 0.0)
    assert [type(e).__name__ for e in events(b)] == ["MessageReceived"]

"""Noise handshakes between two in-memory peers, and the datagram and stream transports."""

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.crypto.errors import (
    CryptoError,
    DecryptError,
    HandshakeError,
    NoiseStateError,
    ReplayError,
)
from edge.crypto.noise import (
    MAX_MESSAGE,
    PATTERNS,
    CipherState,
    HandshakeState,
    KeyPair,
    aead_decrypt,
    rekey,
)
from edge.crypto.transport import (
    MAX_COUNTER,
    DatagramTransport,
    Deframer,
    StreamTransport,
    frame,
)
from edge.wire.codes import ErrorCode

FUZZ_EXAMPLES = int(os.environ.get("EDGE_FUZZ_EXAMPLES", "300"))

ALICE = KeyPair.from_private(bytes(range(1, 33)))
BOB = KeyPair.from_private(bytes(range(101, 133)))
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))


# --- helpers -------------------------------------------------------------------------


def _pair(pattern: str, prologue: bytes = b"edge") -> tuple[HandshakeState, HandshakeState]:
    """An initiator (ALICE) and a responder (BOB) given the keys the pattern pre-sends."""
    spec = PATTERNS[pattern]
    return (
        HandshakeState(
            pattern,
            True,
            prologue=prologue,
            s=ALICE,
            rs=BOB.public if spec.responder_pre else None,
        ),
        HandshakeState(
            pattern,
            False,
            prologue=prologue,
            s=BOB,
            rs=ALICE.public if spec.initiator_pre else None,
        ),
    )


def _drive(initiator: HandshakeState, responder: HandshakeState) -> list[bytes]:
    """Run the handshake to the end; return the messages, each carrying its index as payload."""
    messages: list[bytes] = []
    while not initiator.is_finished:
        writer, reader = (initiator, responder) if initiator.is_my_turn else (responder, initiator)
        payload = f"message {len(messages)}".encode()
        message = writer.write_message(payload)
        assert reader.read_message(message) == payload
        messages.append(message)
    assert responder.is_finished
    return messages


def _datagram_pair(**kw: int) -> tuple[DatagramTransport, DatagramTransport]:
    return DatagramTransport(KEY_A, KEY_B, **kw), DatagramTransport(KEY_B, KEY_A, **kw)


def _stream_pair(max_buffer: int = 4 * 65537) -> tuple[StreamTransport, StreamTransport]:
    return (
        StreamTransport(CipherState(KEY_A), CipherState(KEY_B), max_buffer=max_buffer),
        StreamTransport(CipherState(KEY_B), CipherState(KEY_A), max_buffer=max_buffer),
    )


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _assert_dead(hs: HandshakeState) -> None:
    assert hs.is_dead and not hs.is_finished and not hs.is_my_turn
    with pytest.raises(NoiseStateError):
        hs.write_message(b"")
    with pytest.raises(NoiseStateError):
        hs.read_message(bytes(64))
    with pytest.raises(NoiseStateError):
        hs.split()
    with pytest.raises(NoiseStateError):
        _ = hs.handshake_hash


# --- handshakes ----------------------------------------------------------------------


def test_xx_end_to_end() -> None:
    initiator = HandshakeState("XX", True, s=ALICE)
    responder = HandshakeState("XX", False, s=BOB)
    assert initiator.remote_static is None and responder.remote_static is None
    assert initiator.is_my_turn and not responder.is_my_turn
    assert len(_drive(initiator, responder)) == 3
    assert initiator.remote_static == BOB.public
    assert responder.remote_static == ALICE.public
    assert initiator.handshake_hash == responder.handshake_hash
    (i_send, i_recv), (r_send, r_recv) = initiator.split(), responder.split()
    assert r_recv.decrypt_with_ad(b"ad", i_send.encrypt_with_ad(b"ad", b"hello")) == b"hello"
    assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"hi")) == b"hi"


def test_ik_end_to_end() -> None:
    initiator = HandshakeState("IK", True, s=ALICE, rs=BOB.public)
    responder = HandshakeState("IK", False, s=BOB)
    first = initiator.write_message(b"call me")
    assert responder.read_message(first) == b"call me"
    assert responder.remote_static == ALICE.public
    assert initiator.read_message(responder.write_message(b"ok")) == b"ok"
    assert initiator.is_finished and responder.is_finished
    assert initiator.handshake_hash == responder.handshake_hash
    i_send, _ = initiator.split()
    _, r_recv = responder.split()
    assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"x")) == b"x"


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_every_pattern_with_fresh_keys(pattern: str) -> None:
    initiator, responder = _pair(pattern)
    assert len(_drive(initiator, responder)) == len(PATTERNS[pattern].messages)
    assert initiator.handshake_hash == responder.handshake_hash
    assert responder.remote_static in (None, ALICE.public)
    assert initiator.remote_static in (None, BOB.public)
    i_send, _ = initiator.split()
    _, r_recv = responder.split()
    assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"p")) == b"p"


def test_different_prologues_fail() -> None:
    initiator, _ = _pair("NN", prologue=b"one")
    _, responder = _pair("NN", prologue=b"two")
    responder.read_message(initiator.write_message())
    with pytest.raises(HandshakeError):
        initiator.read_message(responder.write_message())


def test_tampered_ik_first_message_kills_responder() -> None:
    initiator, _ = _pair("IK")
    message = initiator.write_message(b"payload!")
    for index in range(len(message)):  # every byte: e, encrypted s, payload and tags
        _, responder = _pair("IK")
        with pytest.raises(HandshakeError) as caught:
            responder.read_message(_flip(message, index))
        assert caught.value.code is ErrorCode.HANDSHAKE_FAILED
        assert responder.remote_static is None  # nothing learned from a failed message
        _assert_dead(responder)


@pytest.mark.parametrize("which", [1, 2])
def test_tampered_xx_messages(which: int) -> None:
    initiator, responder = _pair("XX")
    messages = [initiator.write_message()]
    responder.read_message(messages[0])
    messages.append(responder.write_message())
    if which == 2:
        initiator.read_message(messages[1])
        messages.append(initiator.write_message())
    reader = initiator if which == 1 else responder
    known = reader.remote_static
    with pytest.raises(HandshakeError):
        reader.read_message(_flip(messages[which], len(messages[which]) - 1))
    assert reader.remote_static == known
    _assert_dead(reader)


def test_truncated_and_oversized_messages() -> None:
    for message in (bytes(31), bytes(MAX_MESSAGE + 1)):
        _, responder = _pair("XX")
        with pytest.raises(HandshakeError):
            responder.read_message(message)
        _assert_dead(responder)
    initiator, responder = _pair("IK")
    with pytest.raises(HandshakeError):
        responder.read_message(initiator.write_message()[:-1])


def test_low_order_ephemeral_is_refused() -> None:
    _, responder = _pair("IK")
    with pytest.raises(HandshakeError):
        responder.read_message(bytes(32 + 48 + 16))
    _assert_dead(responder)
    # In XX the zero point only meets a DH when the responder writes its reply.
    _, responder = _pair("XX")
    responder.read_message(bytes(32))
    with pytest.raises(HandshakeError):
        responder.write_message()
    _assert_dead(responder)


def test_largest_payload_fits_exactly() -> None:
    initiator, responder = _pair("XX")
    room = MAX_MESSAGE - 32
    with pytest.raises(NoiseStateError):
        initiator.write_message(bytes(room + 1))
    message = initiator.write_message(bytes(room))  # still usable after the refusal
    assert len(message) == MAX_MESSAGE
    assert responder.read_message(message) == bytes(room)


def test_misuse_raises_state_errors() -> None:
    initiator, responder = _pair("NN")
    with pytest.raises(NoiseStateError):
        responder.write_message()
    with pytest.raises(NoiseStateError):
        initiator.read_message(bytes(32))
    with pytest.raises(NoiseStateError):
        initiator.split()
    _drive(initiator, responder)
    assert not initiator.is_my_turn and not responder.is_my_turn
    with pytest.raises(NoiseStateError):
        initiator.write_message()
    with pytest.raises(NoiseStateError):
        responder.read_message(bytes(48))
    initiator.split()
    with pytest.raises(NoiseStateError):
        initiator.split()


@pytest.mark.parametrize(
    ("pattern", "initiator", "s", "rs"),
    [
        ("XX", True, None, None),  # XX sends our static: s required
        ("IK", True, ALICE, None),  # IK pre-sends the responder's static
        ("KK", False, BOB, None),  # and KK the initiator's too
        ("XX", True, ALICE, BOB.public),  # XX learns rs: a given one would not be pinned
        ("NK", True, None, b"short"),
        ("ZZ", True, ALICE, None),
    ],
)
def test_bad_construction(
    pattern: str, initiator: bool, s: KeyPair | None, rs: bytes | None
) -> None:
    with pytest.raises(NoiseStateError):
        HandshakeState(pattern, initiator, s=s, rs=rs)


def test_key_pairs() -> None:
    with pytest.raises(NoiseStateError):
        KeyPair.from_private(bytes(31))
    fresh = KeyPair.generate()
    assert KeyPair.from_private(fresh.private) == fresh
    assert fresh.private.hex() not in repr(fresh)


def test_cipher_state_limits() -> None:
    send, recv = CipherState(KEY_A), CipherState(KEY_A)
    with pytest.raises(DecryptError):
        recv.decrypt_with_ad(b"", bytes(15))
    assert recv.n == 0  # a failure does not consume a nonce
    send.set_nonce(2**64 - 2)
    recv.set_nonce(2**64 - 2)
    assert recv.decrypt_with_ad(b"", send.encrypt_with_ad(b"", b"last")) == b"last"
    with pytest.raises(NoiseStateError):
        send.encrypt_with_ad(b"", b"one too many")
    send.rekey()
    assert send.k == rekey(KEY_A)


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.sampled_from(sorted(PATTERNS)), st.binary(max_size=200))
def test_fuzz_handshake_reads_raise_only_our_errors(pattern: str, data: bytes) -> None:
    _, responder = _pair(pattern)
    try:
        responder.read_message(data)
    except HandshakeError:
        _assert_dead(responder)


# --- datagram transport ----------------------------------------------------------------


def test_datagram_from_handshake() -> None:
    initiator, responder = _pair("XX")
    _drive(initiator, responder)
    a = DatagramTransport.from_handshake(initiator, window=64)
    b = DatagramTransport.from_handshake(responder, window=64)
    counter, sealed = a.seal(b"voice", b"header")
    assert counter == 0 and b.open(counter, sealed, b"header") == b"voice"
    assert a.open(*b.seal(b"back")) == b"back"
    assert (a.sent, b.received) == (1, 1)


def test_datagram_out_of_order_and_duplicates() -> None:
    a, b = _datagram_pair(window=16)
    packets = [a.seal(bytes([i])) for i in range(10)]
    for i in (3, 0, 9, 1, 2, 8, 4, 7, 5, 6):
        assert b.open(*packets[i]) == bytes([i])
    for i in (0, 9, 5):
        with pytest.raises(ReplayError) as caught:
            b.open(*packets[i])
        assert caught.value.code is ErrorCode.REPLAYED
    assert (b.received, b.replayed, b.bad_mac) == (10, 3, 0)


def test_datagram_too_old() -> None:
    a, b = _datagram_pair(window=8)
    packets = [a.seal(b"") for _ in range(21)]
    b.open(*packets[20])
    with pytest.raises(ReplayError):
        b.open(*packets[12])  # 8 behind the highest: just outside the window
    b.open(*packets[13])


def test_datagram_counter_range() -> None:
    a, b = _datagram_pair()
    _, sealed = a.seal(b"x")
    for counter in (-1, MAX_COUNTER + 1):
        with pytest.raises(ReplayError):
            b.open(counter, sealed)
    with pytest.raises(NoiseStateError):
        a.seal(bytes(MAX_MESSAGE - 15))
    with pytest.raises(DecryptError):
        b.open(1, bytes(MAX_MESSAGE + 1))


def test_datagram_bad_mac_changes_nothing() -> None:
    a, b = _datagram_pair(window=8)
    packets = [a.seal(bytes([i]) * 20, b"ad") for i in range(40)]
    b.open(*packets[5], b"ad")
    counter, sealed = packets[6]
    for forged in (
        (counter, _flip(sealed, 3), b"ad"),
        (counter, sealed, b"AD"),
        (39, sealed, b"ad"),
    ):
        with pytest.raises(DecryptError) as caught:
            b.open(*forged)
        assert caught.value.code is ErrorCode.BAD_MAC
    assert b.bad_mac == 3
    # Counter 6 was not burnt, and the forged 39 did not slide the window past 0.
    assert b.open(counter, sealed, b"ad") == bytes([6]) * 20
    assert b.open(*packets[0], b"ad") == bytes(20)


def test_datagram_rekeys_at_epoch_boundaries() -> None:
    a, b = _datagram_pair(rekey_interval=4, window=64)
    packets = [a.seal(bytes([i])) for i in range(12)]
    # Epoch 1 (counters 4..7) really is sealed under REKEY(k), not k.
    assert aead_decrypt(rekey(KEY_A), 5, b"", packets[5][1]) == bytes([5])
    with pytest.raises(DecryptError):
        aead_decrypt(KEY_A, 5, b"", packets[5][1])
    for i in (0, 1, 5, 2, 3, 4, 9, 6, 8, 7, 11, 10):
        assert b.open(*packets[i]) == bytes([i])


def test_datagram_epochs_behind_and_ahead() -> None:
    a, b = _datagram_pair(rekey_interval=4, window=64)
    packets = [a.seal(bytes([i])) for i in range(16)]
    with pytest.raises(DecryptError):
        b.open(*packets[8])  # two epochs ahead: cannot be authenticated
    b.open(*packets[5])
    b.open(*packets[9])  # now in epoch 2; epoch 0's key is gone
    with pytest.raises(ReplayError):
        b.open(*packets[1])
    b.open(*packets[6])  # epoch 1 is still the previous epoch


def test_forged_future_epoch_packet_does_not_advance() -> None:
    a, b = _datagram_pair(rekey_interval=4, window=64)
    packets = [a.seal(bytes([i])) for i in range(12)]
    b.open(*packets[0])
    with pytest.raises(DecryptError):
        b.open(4, bytes(30))
    # Had epoch 1 been adopted, epoch 2 would now be within reach.
    with pytest.raises(DecryptError):
        b.open(*packets[8])
    for i in (4, 1, 8):
        assert b.open(*packets[i]) == bytes([i])


def test_datagram_sender_stops_before_the_reserved_counter() -> None:
    a = DatagramTransport(KEY_A, KEY_B, rekey_interval=1 << 63, first_counter=MAX_COUNTER - 1)
    b = DatagramTransport(KEY_B, KEY_A, rekey_interval=1 << 63)
    for expected in (MAX_COUNTER - 1, MAX_COUNTER):
        counter, sealed = a.seal(b"end")
        assert counter == expected and b.open(counter, sealed) == b"end"
    with pytest.raises(NoiseStateError):
        a.seal(b"beyond")


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(
    st.integers(min_value=1, max_value=64).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.permutations(range(n)),
            st.lists(st.integers(min_value=0, max_value=n - 1), max_size=16),
        )
    ),
)
def test_any_order_within_window_delivers_each_once(case: tuple[int, list[int], list[int]]) -> None:
    n, order, repeats = case
    a, b = _datagram_pair(rekey_interval=32, window=64)
    packets = [a.seal(bytes([i])) for i in range(n)]
    arrivals = list(order)
    for position, index in enumerate(repeats):
        arrivals.insert((position * 7) % (len(arrivals) + 1), index)
    delivered = []
    for index in arrivals:
        with contextlib.suppress(ReplayError):
            delivered.append(b.open(*packets[index]))
    assert sorted(delivered) == [bytes([i]) for i in range(n)]
    assert b.replayed == len(repeats)


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.integers(min_value=-(2**65), max_value=2**65), st.binary(max_size=64))
def test_fuzz_datagram_open_raises_only_our_errors(counter: int, data: bytes) -> None:
    _, b = _datagram_pair(rekey_interval=8)
    with pytest.raises((ReplayError, DecryptError)):
        b.open(counter, data)
    assert b.received == 0 and b.replayed + b.bad_mac == 1


# --- stream transport ------------------------------------------------------------------


def test_stream_from_handshake() -> None:
    initiator, responder = _pair("IK")
    _drive(initiator, responder)
    a = StreamTransport.from_handshake(initiator)
    b = StreamTransport.from_handshake(responder)
    assert b.feed(a.seal_frame(b"one") + a.seal_frame(b"")) == [b"one", b""]
    assert a.feed(b.seal_frame(b"two")) == [b"two"]


def test_stream_frames_split_at_every_boundary() -> None:
    plaintexts = [b"alpha", b"", b"gamma" * 10]
    a, _ = _stream_pair()
    stream = b"".join(a.seal_frame(p) for p in plaintexts)
    for cut in range(len(stream) + 1):
        _, b = _stream_pair()
        assert b.feed(stream[:cut]) + b.feed(stream[cut:]) == plaintexts
    _, b = _stream_pair()
    assert [p for i in range(len(stream)) for p in b.feed(stream[i : i + 1])] == plaintexts


def test_stream_largest_frame() -> None:
    a, b = _stream_pair()
    with pytest.raises(NoiseStateError):
        a.seal_frame(bytes(MAX_MESSAGE - 15))
    framed = a.seal_frame(bytes(MAX_MESSAGE - 16))
    assert len(framed) == MAX_MESSAGE + 2
    assert b.feed(framed) == [bytes(MAX_MESSAGE - 16)]


def test_stream_bad_mac_kills_it() -> None:
    a, b = _stream_pair()
    first, second = a.seal_frame(b"first"), a.seal_frame(b"second")
    with pytest.raises(DecryptError):
        b.feed(_flip(first, 5))
    assert b.is_dead
    with pytest.raises(DecryptError):
        b.feed(second)
    with pytest.raises(NoiseStateError):
        b.seal_frame(b"reply")


def test_stream_oversized_frame_is_refused() -> None:
    a, b = _stream_pair(max_buffer=64)
    assert b.feed(a.seal_frame(bytes(46))) == [bytes(46)]  # 2 + 46 + 16 = 64 fits
    with pytest.raises(CryptoError) as caught:
        b.feed(a.seal_frame(bytes(47))[:2])  # refused on the header alone
    assert caught.value.code is ErrorCode.OVERSIZED
    with pytest.raises(CryptoError):
        b.feed(b"")


def test_deframer_for_handshake_messages() -> None:
    deframer = Deframer(max_buffer=2 + 100)
    stream = frame(b"e" * 32) + frame(b"") + frame(b"s" * 100)
    assert deframer.feed(stream[:40]) == [b"e" * 32, b""]
    assert deframer.pending == 4
    assert deframer.feed(stream[40:]) == [b"s" * 100]
    assert deframer.pending == 0
    with pytest.raises(CryptoError):
        deframer.feed(frame(bytes(101)))
    with pytest.raises(NoiseStateError):
        frame(bytes(MAX_MESSAGE + 1))
    with pytest.raises(NoiseStateError):
        Deframer(max_buffer=1)


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=6))
def test_fuzz_stream_feed_raises_only_our_errors(chunks: list[bytes]) -> None:
    _, b = _stream_pair(max_buffer=128)
    try:
        for chunk in chunks:
            b.feed(chunk)
    except CryptoError:
        assert b.is_dead

"""Noise handshakes and transports, each beside the raw primitive cost under it.

A handshake is mostly X25519: its floor is the time of the scalar
multiplications both sides must do (one per DH token per side, plus one
fixed-base multiplication per ephemeral key), timed raw in the same run. A
transport frame is mostly one AEAD seal and one open, so its reference is raw
ChaCha20-Poly1305 on the same 160 bytes. The ratio says how much the Python
around the primitives costs.
"""

from collections.abc import Callable
from functools import partial

import nacl.bindings

from bench.common import Figure, rate
from edge.crypto.noise import PATTERNS, HandshakeState, KeyPair, Token
from edge.crypto.transport import DatagramTransport, StreamTransport

FRAME = bytes(160)
SECONDS = 1.0

_INITIATOR = KeyPair.generate()
_RESPONDER = KeyPair.generate()


def _x25519_ops(pattern: str) -> tuple[int, int]:
    """(variable-base, fixed-base) multiplications of one handshake, both sides."""
    tokens = [t for message in PATTERNS[pattern].messages for t in message]
    dh = sum(2 for t in tokens if t not in (Token.E, Token.S))
    ephemerals = sum(1 for t in tokens if t is Token.E)
    return dh, ephemerals


def _handshake(pattern: str) -> None:
    initiator = HandshakeState(
        pattern,
        True,
        s=_INITIATOR,
        rs=_RESPONDER.public if PATTERNS[pattern].responder_pre else None,
    )
    responder = HandshakeState(pattern, False, s=_RESPONDER)
    writer, reader = initiator, responder
    while not initiator.is_finished:
        reader.read_message(writer.write_message())
        writer, reader = reader, writer


def _dh_floor(pattern: str, variable_rate: float, fixed_rate: float) -> tuple[str, float]:
    dh, ephemerals = _x25519_ops(pattern)
    seconds = dh / variable_rate + ephemerals / fixed_rate
    return f"DH floor, {dh} DH + {ephemerals} keygen", 1.0 / seconds


def _handshake_figures() -> list[Figure]:
    private, public = _INITIATOR.private, _RESPONDER.public
    variable_rate = rate(lambda: nacl.bindings.crypto_scalarmult(private, public), SECONDS)
    fixed_rate = rate(lambda: nacl.bindings.crypto_scalarmult_base(private), SECONDS / 2)
    figures = []
    for pattern in ("XX", "IK"):
        measured = rate(partial(_handshake, pattern), SECONDS, batch=10)
        reference, reference_rate = _dh_floor(pattern, variable_rate, fixed_rate)
        figures.append(
            Figure(
                f"Noise {pattern} handshake, both sides",
                measured,
                "hs/s",
                reference,
                reference_rate,
            )
        )
    return figures


def _datagram_round() -> Callable[[], bytes]:
    sender = DatagramTransport(bytes(32), bytes(range(32)))
    receiver = DatagramTransport(bytes(range(32)), bytes(32))

    def once() -> bytes:
        counter, ciphertext = sender.seal(FRAME)
        return receiver.open(counter, ciphertext)

    return once


def _stream_round() -> Callable[[], list[bytes]]:
    initiator = HandshakeState("NN", True)
    responder = HandshakeState("NN", False)
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    sender = StreamTransport.from_handshake(initiator)
    receiver = StreamTransport.from_handshake(responder)
    return lambda: receiver.feed(sender.seal_frame(FRAME))


def _transport_figures() -> list[Figure]:
    key, nonce = bytes(32), bytes(12)
    encrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt
    decrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt
    raw = rate(lambda: decrypt(encrypt(FRAME, b"", nonce, key), b"", nonce, key), SECONDS)
    reference = "raw AEAD seal+open, 160 B"
    return [
        Figure(
            "datagram transport seal+open, 160 B",
            rate(_datagram_round(), SECONDS),
            "frames/s",
            reference,
            raw,
        ),
        Figure(
            "stream transport seal+feed, 160 B",
            rate(_stream_round(), SECONDS),
            "frames/s",
            reference,
            raw,
        ),
    ]


def run() -> list[Figure]:
    """About seven seconds on one core: handshakes, then transport frames."""
    return _handshake_figures() + _transport_figures()


if __name__ == "__main__":
    for figure in run():
        print(figure.line())

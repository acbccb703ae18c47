"""The cacophony-format Noise vectors for 25519/ChaChaPoly/BLAKE2b, byte for byte.

Each vector fixes both sides' keys (ephemerals included) and lists messages: the
first ones are the handshake, alternating from the initiator; the rest are
transport messages. After an interactive handshake they keep alternating,
continuing from whoever spoke last; after a one-way handshake (N, K, X) they all
go from initiator to responder.
"""

import json
from pathlib import Path
from typing import Any

import pytest

from edge.crypto.noise import PATTERNS, CipherState, HandshakeState, KeyPair

VECTORS_FILE = Path(__file__).parent / "vectors" / "noise-25519-chachapoly-blake2b.json"
"""The cacophony vectors, carried in the repository so the test never skips."""

VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text())["vectors"]
PARAMS = [pytest.param(v, id=v["protocol_name"]) for v in VECTORS]


def _bytes(vector: dict[str, Any], key: str) -> bytes | None:
    return bytes.fromhex(vector[key]) if key in vector else None


def _key_pair(vector: dict[str, Any], key: str) -> KeyPair | None:
    private = _bytes(vector, key)
    return KeyPair.from_private(private) if private is not None else None


def _short_name(vector: dict[str, Any]) -> str:
    name: str = vector["protocol_name"]
    prefix, pattern, dh, cipher, hash_name = name.split("_")
    assert (prefix, dh, cipher, hash_name) == ("Noise", "25519", "ChaChaPoly", "BLAKE2b")
    return pattern


def _side(vector: dict[str, Any], role: str, initiator: bool) -> HandshakeState:
    return HandshakeState(
        _short_name(vector),
        initiator,
        prologue=_bytes(vector, f"{role}_prologue") or b"",
        s=_key_pair(vector, f"{role}_static"),
        rs=_bytes(vector, f"{role}_remote_static"),
        e=_key_pair(vector, f"{role}_ephemeral"),
    )


def _run_handshake(
    vector: dict[str, Any], initiator: HandshakeState, responder: HandshakeState
) -> int:
    count = len(PATTERNS[_short_name(vector)].messages)
    for index, message in enumerate(vector["messages"][:count]):
        writer, reader = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        assert writer.is_my_turn and not reader.is_my_turn
        payload = bytes.fromhex(message["payload"])
        ciphertext = writer.write_message(payload)
        assert ciphertext.hex() == message["ciphertext"], f"handshake message {index}"
        assert reader.read_message(ciphertext) == payload
    assert initiator.is_finished and responder.is_finished
    return count


def _transport_pair(
    sender: tuple[CipherState, CipherState], receiver: tuple[CipherState, CipherState]
) -> tuple[CipherState, CipherState]:
    return sender[0], receiver[1]


@pytest.mark.parametrize("vector", PARAMS)
def test_vector(vector: dict[str, Any]) -> None:
    initiator = _side(vector, "init", True)
    responder = _side(vector, "resp", False)
    count = _run_handshake(vector, initiator, responder)
    assert initiator.handshake_hash.hex() == vector["handshake_hash"]
    assert responder.handshake_hash.hex() == vector["handshake_hash"]
    one_way = PATTERNS[_short_name(vector)].is_one_way
    initiator_cs, responder_cs = initiator.split(), responder.split()
    for index, message in enumerate(vector["messages"][count:], start=count):
        from_initiator = one_way or index % 2 == 0
        send, recv = (
            _transport_pair(initiator_cs, responder_cs)
            if from_initiator
            else _transport_pair(responder_cs, initiator_cs)
        )
        payload = bytes.fromhex(message["payload"])
        ciphertext = send.encrypt_with_ad(b"", payload)
        assert ciphertext.hex() == message["ciphertext"], f"transport message {index}"
        assert recv.decrypt_with_ad(b"", ciphertext) == payload


def test_vectors_cover_every_pattern() -> None:
    assert {_short_name(v) for v in VECTORS} == set(PATTERNS)

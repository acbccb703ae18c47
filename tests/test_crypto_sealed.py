"""Sealed boxes open only for their recipient, and any change to one is caught."""

import pytest
from nacl.public import PrivateKey, SealedBox

from edge.crypto.errors import CryptoError, DecryptError
from edge.crypto.noise import KeyPair
from edge.crypto.sealed import MAX_PLAINTEXT, SEAL_OVERHEAD, open_sealed, seal
from edge.errors import LocalError
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import SEALED_MAX, MailKind, decode, encode

MESSAGE = b"see you at eight"


@pytest.fixture
def bob() -> KeyPair:
    return KeyPair.generate()


def test_round_trip(bob: KeyPair) -> None:
    box = seal(MESSAGE, bob.public)
    assert len(box) == len(MESSAGE) + SEAL_OVERHEAD
    assert open_sealed(box, bob) == MESSAGE


def test_empty_plaintext_round_trips(bob: KeyPair) -> None:
    assert open_sealed(seal(b"", bob.public), bob) == b""


def test_each_seal_uses_a_fresh_ephemeral_key(bob: KeyPair) -> None:
    first, second = seal(MESSAGE, bob.public), seal(MESSAGE, bob.public)
    assert first[:32] != second[:32]
    assert first != second


def test_opens_what_libsodium_sealed_directly(bob: KeyPair) -> None:
    # The format is libsodium's, not ours: a box made without edge opens with edge.
    box = SealedBox(PrivateKey(bob.private).public_key).encrypt(MESSAGE)
    assert open_sealed(bytes(box), bob) == MESSAGE


def test_wrong_recipient(bob: KeyPair) -> None:
    box = seal(MESSAGE, bob.public)
    with pytest.raises(DecryptError) as caught:
        open_sealed(box, KeyPair.generate())
    assert caught.value.code is ErrorCode.BAD_MAC


@pytest.mark.parametrize(
    "region",
    ["ephemeral key", "ciphertext", "tag"],
)
def test_tampering_any_byte_of_each_region_is_caught(bob: KeyPair, region: str) -> None:
    # libsodium's layout: the ephemeral public key, the Poly1305 tag, then the
    # encrypted message (crypto_box_easy puts the tag first).
    box = seal(MESSAGE, bob.public)
    spans = {
        "ephemeral key": range(0, 32),
        "tag": range(32, 48),
        "ciphertext": range(48, len(box)),
    }
    for index in spans[region]:
        for bit in (0x01, 0x80):
            altered = bytearray(box)
            altered[index] ^= bit
            with pytest.raises(DecryptError):
                open_sealed(bytes(altered), bob)


def test_truncated_at_every_length(bob: KeyPair) -> None:
    box = seal(MESSAGE, bob.public)
    for size in range(len(box)):
        reason = "at least 48 needed" if size < SEAL_OVERHEAD else "does not open"
        with pytest.raises(DecryptError, match=reason):
            open_sealed(box[:size], bob)


def test_extended_box_is_refused(bob: KeyPair) -> None:
    with pytest.raises(DecryptError):
        open_sealed(seal(MESSAGE, bob.public) + b"\x00", bob)


def test_plaintext_over_the_cap_is_a_local_error(bob: KeyPair) -> None:
    with pytest.raises(LocalError, match="17 bytes of plaintext, at most 16") as caught:
        seal(bytes(17), bob.public, max_plaintext=16)
    assert caught.value.code is ErrorCode.OVERSIZED
    assert open_sealed(seal(bytes(16), bob.public, max_plaintext=16), bob) == bytes(16)
    with pytest.raises(LocalError):
        seal(bytes(MAX_PLAINTEXT + 1), bob.public)


def test_the_largest_default_plaintext_fits_a_mailbox_item(bob: KeyPair) -> None:
    box = seal(bytes(MAX_PLAINTEXT), bob.public)
    assert len(box) == SEALED_MAX
    body = {
        "recipient": "bob",
        "recipient_device": "desk1",
        "message_id": bytes(16),
        "kind": MailKind.MESSAGE,
        "sealed": box,
    }
    sealed = decode(encode(MsgType.MAILBOX_PUT, body)).body["sealed"]
    assert open_sealed(sealed, bob) == bytes(MAX_PLAINTEXT)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_recipient_key_of_the_wrong_size_is_a_local_error(size: int) -> None:
    with pytest.raises(LocalError, match="32 bytes"):
        seal(MESSAGE, bytes(size))


def test_low_order_recipient_key_is_refused() -> None:
    # The all-zero point: every shared secret with it is zero, which libsodium refuses.
    with pytest.raises(CryptoError, match="not a usable X25519 public key"):
        seal(MESSAGE, bytes(32))

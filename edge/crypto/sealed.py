"""Sealed boxes: encryption to a device's X25519 key by an anonymous sender.

How it works: libsodium's ``crypto_box_seal`` (through pynacl's
:class:`~nacl.public.SealedBox`) makes a fresh X25519 key pair for every
message, derives a key from it and the recipient's public key, and encrypts
with XSalsa20-Poly1305 under a nonce both sides compute from the two public
keys. The ciphertext is the ephemeral public key (32 bytes) followed by the
encrypted message and its Poly1305 tag (16 bytes): :data:`SEAL_OVERHEAD` bytes
more than the plaintext. Only the holder of the recipient's private key can
open it, and nothing in it names the sender.

The login server's mailbox relies on this: a sender seals an item to each
device of the recipient (the keys come from their certificates) and the
server stores bytes it cannot read. Who sent an item is what the server
vouches for, beside the ciphertext; whatever else the recipient should
believe about the sender has to be inside the plaintext.

Pure computation: no clock, no sockets.
"""

import nacl.exceptions
from nacl.public import PrivateKey, PublicKey, SealedBox

from edge.crypto.errors import CryptoError, DecryptError
from edge.crypto.noise import DHLEN, KeyPair
from edge.errors import LocalError
from edge.wire.codes import ErrorCode
from edge.wire.messages import SEALED_MAX

SEAL_OVERHEAD = 48
"""Bytes a sealed box adds: the ephemeral public key (32) and the Poly1305 tag (16)."""

MAX_PLAINTEXT = SEALED_MAX - SEAL_OVERHEAD
"""The largest plaintext whose sealed box still fits a mailbox item on the wire."""


def seal(
    plaintext: bytes, recipient_dh_public: bytes, *, max_plaintext: int = MAX_PLAINTEXT
) -> bytes:
    """Encrypt ``plaintext`` so that only the holder of ``recipient_dh_public`` can read it.

    The result is ``len(plaintext) + SEAL_OVERHEAD`` bytes. Raises
    :class:`LocalError` for a plaintext over ``max_plaintext`` or a key that is
    not 32 bytes, and :class:`CryptoError` for a key no message can be sealed
    to (a low-order point, as a forged certificate might carry).
    """
    if len(plaintext) > max_plaintext:
        raise LocalError(
            f"sealed box: {len(plaintext)} bytes of plaintext, at most {max_plaintext}",
            code=ErrorCode.OVERSIZED,
        )
    if len(recipient_dh_public) != DHLEN:
        raise LocalError(f"sealed box: a recipient key is {DHLEN} bytes")
    try:
        return bytes(SealedBox(PublicKey(bytes(recipient_dh_public))).encrypt(bytes(plaintext)))
    except nacl.exceptions.CryptoError:
        # libsodium refuses a key whose shared secret would be all zeros.
        raise CryptoError(
            "sealed box: the recipient key is not a usable X25519 public key",
            code=ErrorCode.MALFORMED,
        ) from None


def open_sealed(ciphertext: bytes, recipient: KeyPair) -> bytes:
    """The plaintext of a sealed box addressed to ``recipient``.

    Raises :class:`DecryptError` when the box is shorter than
    :data:`SEAL_OVERHEAD`, was sealed to another key, or was altered in any byte.
    """
    if len(ciphertext) < SEAL_OVERHEAD:
        raise DecryptError(f"sealed box: {len(ciphertext)} bytes, at least {SEAL_OVERHEAD} needed")
    try:
        return bytes(SealedBox(PrivateKey(recipient.private)).decrypt(bytes(ciphertext)))
    except nacl.exceptions.CryptoError:
        raise DecryptError(
            "sealed box: does not open with this key (another recipient, or altered)"
        ) from None

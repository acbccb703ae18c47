"""What a device signs to prove it holds its Ed25519 key, bound to one session.

The signature covers the server's fresh challenge and the Noise handshake hash
of the very session it travels in, so it can be neither replayed later nor
relayed into another session by a man in the middle.
"""

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

CONTEXT = b"edge login proof v1\x00"


def proof_message(handshake_hash: bytes, nonce: bytes, user_id: str, device_id: str) -> bytes:
    user, device = user_id.encode(), device_id.encode()
    # Length prefixes keep the fields apart whatever bytes the ids hold.
    return b"".join(
        [
            CONTEXT,
            handshake_hash,
            nonce,
            len(user).to_bytes(2, "big"),
            user,
            len(device).to_bytes(2, "big"),
            device,
        ]
    )


def sign_proof(
    key: SigningKey, handshake_hash: bytes, nonce: bytes, user_id: str, device_id: str
) -> bytes:
    return key.sign(proof_message(handshake_hash, nonce, user_id, device_id)).signature


def proof_valid(
    sign_key: bytes,
    signature: bytes,
    handshake_hash: bytes,
    nonce: bytes,
    user_id: str,
    device_id: str,
) -> bool:
    try:
        VerifyKey(sign_key).verify(
            proof_message(handshake_hash, nonce, user_id, device_id), signature
        )
    except (BadSignatureError, ValueError):
        return False
    return True

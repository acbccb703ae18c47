"""Node ids and keys: 256-bit integers in one space, compared by XOR distance.

A key is ``BLAKE2b-256(b"edge-user:" + user id)``; a node id is the BLAKE2b-256
of the node's Noise static public key, so a node cannot pick where it sits in
the space without finding a key pair that hashes there. Distance is
``a XOR b`` read as an integer (Kademlia, section 2.1): symmetric, zero only
from a point to itself, and for any point and distance there is exactly one
other point at that distance, so lookups for one key converge on one path.
"""

from hashlib import blake2b

from edge.overlay.errors import OverlayMisuse

ID_BITS = 256
ID_BYTES = ID_BITS // 8
MAX_ID = (1 << ID_BITS) - 1
USER_KEY_PREFIX = b"edge-user:"
STATIC_KEY_BYTES = 32


def _hash(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=ID_BYTES).digest(), "big")


def key_for_user(user_id: str) -> int:
    """The DHT key under which a user's presence records are stored."""
    return _hash(USER_KEY_PREFIX + user_id.encode("utf-8"))


def node_id_for(static_public: bytes) -> int:
    """The node id of a supernode whose Noise static public key is ``static_public``."""
    if len(static_public) != STATIC_KEY_BYTES:
        raise OverlayMisuse(
            f"a static public key is {STATIC_KEY_BYTES} bytes, not {len(static_public)}"
        )
    return _hash(static_public)


def distance(a: int, b: int) -> int:
    """XOR distance between two ids."""
    return a ^ b


def prefix_length(a: int, b: int) -> int:
    """How many leading bits ``a`` and ``b`` share (256 when equal)."""
    return ID_BITS - (a ^ b).bit_length()


def id_to_bytes(node_id: int) -> bytes:
    """The 32-byte big-endian form of an id, as signatures and the wire see it."""
    check_id(node_id)
    return node_id.to_bytes(ID_BYTES, "big")


def check_id(node_id: int) -> None:
    """Raise :class:`OverlayMisuse` unless ``node_id`` is in the id space."""
    if not 0 <= node_id <= MAX_ID:
        raise OverlayMisuse("an id is a 256-bit unsigned integer")

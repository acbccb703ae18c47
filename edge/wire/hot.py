"""Per-packet fast paths: the header, TRANSPORT and MEDIA_FRAME with plain ``struct``.

How it works: construct interprets its declaration tree in Python for every
field, which costs several microseconds a message; a call carries fifty media
frames a second each way, each inside a TRANSPORT. So these three layouts are
also read and written here, each with one precompiled ``struct.Struct`` that
covers the header and the fixed part of the body at once (20 bytes for
TRANSPORT, 8 + 9 for MEDIA_FRAME).

An unpacker first tries the common case: enough bytes, and every header field
as expected. Only when that fails does it work out what is wrong, checking in
the same order as :func:`edge.wire.messages.decode` (size, magic, version,
type, cap, length, fixed part, field values), so both raise the same error
class for the same input. The declarations in :mod:`edge.wire.messages` stay
the source of truth; the tests check byte for byte that these functions agree
with them.
"""

import struct
from typing import NamedTuple

from edge.wire.codes import MAGIC, PROTOCOL_VERSION, MsgType
from edge.wire.errors import (
    BuildError,
    CapExceeded,
    Malformed,
    Oversized,
    Truncated,
    WireError,
)
from edge.wire.messages import (
    BODIES,
    HEADER_SIZE,
    MAX_BODY,
    MEDIA_FIXED,
    MEDIA_PAYLOAD_MAX,
    TRANSPORT_FIXED,
    Codec,
    unpack_header,
)

__all__ = [
    "MediaFrame",
    "pack_media",
    "pack_transport",
    "peek_type",
    "unpack_header",
    "unpack_media",
    "unpack_transport",
]

_TRANSPORT = struct.Struct(">2sBBHHIQ")
_MEDIA = struct.Struct(">2sBBHHBBBHI")

TRANSPORT_MAX_BODY = MAX_BODY
MEDIA_MAX_BODY = MEDIA_FIXED + MEDIA_PAYLOAD_MAX
TRANSPORT_MAX_CIPHERTEXT = TRANSPORT_MAX_BODY - TRANSPORT_FIXED

_TYPES: dict[int, MsgType] = {int(t): t for t in BODIES}
_CODECS: dict[int, Codec] = {int(c): c for c in Codec}
_TRANSPORT_TYPE = int(MsgType.TRANSPORT)
_MEDIA_TYPE = int(MsgType.MEDIA_FRAME)


class MediaFrame(NamedTuple):
    """The fields of a MEDIA_FRAME body."""

    stream_id: int
    codec: Codec
    flags: int
    sequence: int
    timestamp: int
    payload: bytes


def peek_type(data: bytes) -> MsgType:
    """The message type, after checking magic and version: enough to dispatch on."""
    return unpack_header(data)[0]


def pack_transport(receiver_index: int, counter: int, ciphertext: bytes) -> bytes:
    """A whole TRANSPORT message; the same bytes as ``encode(TRANSPORT, ...)``."""
    if len(ciphertext) > TRANSPORT_MAX_CIPHERTEXT:
        raise CapExceeded(
            f"TRANSPORT: {len(ciphertext)} bytes of ciphertext, cap {TRANSPORT_MAX_CIPHERTEXT}"
        )
    length = TRANSPORT_FIXED + len(ciphertext)
    try:
        fixed = _TRANSPORT.pack(
            MAGIC, PROTOCOL_VERSION, _TRANSPORT_TYPE, 0, length, receiver_index, counter
        )
    except struct.error as exc:
        raise BuildError(f"TRANSPORT: {exc}") from None
    return fixed + bytes(ciphertext)


def unpack_transport(data: bytes) -> tuple[int, int, bytes]:
    """``(receiver_index, counter, ciphertext)`` of a whole TRANSPORT message."""
    if len(data) >= _TRANSPORT.size:
        magic, version, type_value, _, length, index, counter = _TRANSPORT.unpack_from(data)
        if (
            magic == MAGIC
            and version == PROTOCOL_VERSION
            and type_value == _TRANSPORT_TYPE
            and length == len(data) - HEADER_SIZE
            and length <= TRANSPORT_MAX_BODY
        ):
            return index, counter, data[_TRANSPORT.size :]
    raise _diagnose(data, MsgType.TRANSPORT, TRANSPORT_FIXED, TRANSPORT_MAX_BODY)


def pack_media(
    stream_id: int, codec: Codec, flags: int, sequence: int, timestamp: int, payload: bytes
) -> bytes:
    """A whole MEDIA_FRAME message (to be encrypted into a TRANSPORT)."""
    if len(payload) > MEDIA_PAYLOAD_MAX:
        raise CapExceeded(f"MEDIA_FRAME: {len(payload)} bytes of payload, cap {MEDIA_PAYLOAD_MAX}")
    if isinstance(codec, bool) or codec not in _CODECS:
        raise BuildError(f"MEDIA_FRAME: {codec!r} is not a Codec")
    length = MEDIA_FIXED + len(payload)
    try:
        fixed = _MEDIA.pack(
            MAGIC,
            PROTOCOL_VERSION,
            _MEDIA_TYPE,
            0,
            length,
            stream_id,
            codec,
            flags,
            sequence,
            timestamp,
        )
    except struct.error as exc:
        raise BuildError(f"MEDIA_FRAME: {exc}") from None
    return fixed + bytes(payload)


def unpack_media(data: bytes) -> MediaFrame:
    """The fields of a whole MEDIA_FRAME message."""
    if len(data) >= _MEDIA.size:
        magic, version, type_value, _, length, stream, codec, flags, seq, ts = _MEDIA.unpack_from(
            data
        )
        known_codec = _CODECS.get(codec)
        if (
            magic == MAGIC
            and version == PROTOCOL_VERSION
            and type_value == _MEDIA_TYPE
            and length == len(data) - HEADER_SIZE
            and length <= MEDIA_MAX_BODY
            and known_codec is not None
        ):
            return MediaFrame(stream, known_codec, flags, seq, ts, data[_MEDIA.size :])
    raise _diagnose(data, MsgType.MEDIA_FRAME, MEDIA_FIXED, MEDIA_MAX_BODY)


def _diagnose(data: bytes, expected: MsgType, fixed: int, cap: int) -> WireError:
    """The error for data the fast path refused, found in decode()'s order."""
    msg_type, _, length = unpack_header(data)
    if msg_type is not expected:
        return Malformed(f"expected {expected.name}, got {msg_type.name}")
    present = len(data) - HEADER_SIZE
    if length > cap:
        return Oversized(f"{expected.name}: header announces {length} body bytes, cap {cap}")
    if length > present:
        return Truncated(
            f"{expected.name}: header announces {length} body bytes, {present} present"
        )
    if length < present:
        return Malformed(f"{expected.name}: {present - length} bytes after the {length}-byte body")
    if length < fixed:
        return Malformed(f"{expected.name} body: {length} bytes, the fixed part needs {fixed}")
    if expected is MsgType.MEDIA_FRAME:
        return Malformed(f"MEDIA_FRAME body, codec: {data[HEADER_SIZE + 1]} is not a Codec")
    return Malformed(f"{expected.name}: refused by the fast path")

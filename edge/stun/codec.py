"""STUN messages (RFC 8489): header, attributes, integrity, fingerprint and keys.

How it works: a STUN message is a 20-byte header (type, length, magic cookie,
96-bit transaction id; :data:`HEADER`) followed by ``length`` bytes of
type-length-value attributes, each padded to a multiple of four bytes
(:data:`ATTRIBUTE_HEADER`). :func:`parse` checks the header in a fixed order
before touching the body: at least 20 bytes (StunTruncated), no more than a
STUN message can hold (StunOversized), the first two bits zero and the magic
cookie (NotStun), the length a multiple of four (StunError), the length against
the bytes present (StunTruncated if fewer, StunError if more). It then walks
the attributes, checking each length against the bytes left and the count
against :data:`MAX_ATTRIBUTES`, and decodes each value through the registry in
:mod:`edge.stun.attributes`. An attribute type the registry does not know is
kept as raw bytes; the comprehension-required ones among them (below 0x8000)
are listed by :attr:`Message.unknown_required`, for a 420 answer with
UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1).

Padding bytes are ignored on receipt (RFC 8489 §14) but remembered in
:attr:`Message.padding` by attribute position, so that :func:`build` gives
back the received bytes exactly (the RFC 5769 sample request pads SOFTWARE with
spaces). Built from scratch, padding is zeros.

Integrity: :meth:`Message.add_integrity` appends MESSAGE-INTEGRITY (HMAC-SHA1,
§14.5) or MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, §14.6) computed over the
message built so far with its length field counting the new attribute;
:func:`check_integrity` recomputes them from the received bytes.
:meth:`Message.add_fingerprint` and :func:`check_fingerprint` do the same for
FINGERPRINT (CRC-32 XOR 0x5354554E, §14.7). The keys come from
:func:`short_term_key`, :func:`long_term_key` and :func:`userhash` (§9).

Sans-IO: no sockets, no clock; a caller supplies the transaction id.
"""

import hashlib
import hmac
import io
import unicodedata
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

from construct import Bytes, Int16ub, Int32ub, Struct

from edge.stun.attributes import (
    BY_CODE,
    MAGIC_COOKIE,
    Algorithm,
    AttrType,
    attribute_name,
    is_comprehension_required,
)
from edge.stun.errors import (
    CredentialError,
    FingerprintError,
    IntegrityError,
    NotStun,
    StunBuildError,
    StunError,
    StunOversized,
    StunTruncated,
)

HEADER_SIZE = 20
MAX_BODY = 0xFFFF
MAX_MESSAGE = HEADER_SIZE + MAX_BODY
"""The largest STUN message: the length field is 16 bits (RFC 8489 §5)."""

MAX_ATTRIBUTES = 64
"""A hard cap on attributes per message; real messages carry about a dozen."""

FINGERPRINT_XOR = 0x5354554E
"""XORed into the CRC-32 of FINGERPRINT: "STUN" in ASCII (RFC 8489 §14.7)."""

TRANSACTION_ID_SIZE = 12

HEADER = Struct(
    "type" / Int16ub * "first two bits zero, then the method and class bits interleaved",
    "length" / Int16ub * "bytes after the header, a multiple of 4",
    "cookie" / Int32ub * "the magic cookie 0x2112A442",
    "transaction_id" / Bytes(TRANSACTION_ID_SIZE) * "96 bits chosen by the requester",
)
"""The STUN header (RFC 8489 §5)."""

ATTRIBUTE_HEADER = Struct(
    "type" / Int16ub * "attribute type (see AttrType)",
    "length" / Int16ub * "value length before padding",
)
"""Each attribute's type and length (RFC 8489 §14); the value is padded to 4 bytes."""


class Method(IntEnum):
    """STUN and TURN methods (RFC 8489 §18.2, RFC 8656 §17)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class Class(IntEnum):
    """The message class: bits C1 C0 of the type (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


_METHODS = frozenset(int(method) for method in Method)


def encode_type(method: int, cls: Class) -> int:
    """Interleave the 12 method bits with C0 at bit 4 and C1 at bit 8 (RFC 8489 §5)."""
    if isinstance(method, bool) or not 0 <= method <= 0xFFF:
        raise StunBuildError(f"method {method!r} does not fit 12 bits")
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def decode_type(message_type: int) -> tuple[int, Class]:
    """Split a 14-bit message type into method (a Method when known) and class (§5)."""
    method = (
        (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    )
    cls = Class(((message_type >> 4) & 0b01) | ((message_type >> 7) & 0b10))
    return (Method(method) if method in _METHODS else method), cls


@dataclass
class Message:
    """A STUN message: method, class, transaction id and attributes in order.

    ``attributes`` holds ``(type, value)`` pairs; the registry in
    :mod:`edge.stun.attributes` says what value each known type takes, unknown
    types hold raw bytes. ``padding`` maps an attribute's position to the
    padding bytes it arrived with, so a parsed message rebuilds byte for byte;
    it is not part of equality.
    """

    method: int
    cls: Class
    transaction_id: bytes
    attributes: list[tuple[int, Any]] = field(default_factory=list)
    padding: dict[int, bytes] = field(default_factory=dict, compare=False, repr=False)

    def get(self, attr_type: int) -> Any:
        """The value of the first attribute of ``attr_type``, or None if there is none."""
        for kind, value in self.attributes:
            if kind == attr_type:
                return value
        return None

    @property
    def unknown_required(self) -> list[int]:
        """Comprehension-required types we do not know: answer 420 with these (§6.3.1)."""
        return [
            kind
            for kind, _ in self.attributes
            if kind not in BY_CODE and is_comprehension_required(kind)
        ]

    def add_integrity(self, key: bytes, *, sha256: bool = False) -> None:
        """Append MESSAGE-INTEGRITY (§14.5) or, with ``sha256``, -SHA256 (§14.6, 32 bytes).

        Add every other attribute first: the MAC covers what precedes it. Only
        FINGERPRINT (and MESSAGE-INTEGRITY-SHA256 after MESSAGE-INTEGRITY) may follow.
        """
        kind = AttrType.MESSAGE_INTEGRITY_SHA256 if sha256 else AttrType.MESSAGE_INTEGRITY
        size = 32 if sha256 else 20
        self.attributes.append((kind, _mac(build(self), key, sha256, size)))

    def add_fingerprint(self) -> None:
        """Append FINGERPRINT (§14.7); it must be the last attribute, so add it last."""
        self.attributes.append((AttrType.FINGERPRINT, _crc(build(self))))


class RawAttribute(NamedTuple):
    """One attribute as found in the bytes: where it starts, its value and padding."""

    type: int
    offset: int
    value: bytes
    padding: bytes


def _padding_size(length: int) -> int:
    return -length % 4


def _check_header(data: bytes) -> Any:
    """The header checks of :func:`parse`, in the order its docstring gives (§5, §6.3)."""
    if len(data) < HEADER_SIZE:
        raise StunTruncated(f"STUN header: {len(data)} bytes, need {HEADER_SIZE}")
    if len(data) > MAX_MESSAGE:
        raise StunOversized(f"STUN message: {len(data)} bytes, cap {MAX_MESSAGE}")
    header = HEADER.parse(data[:HEADER_SIZE])
    if header.type & 0xC000:
        raise NotStun("STUN header: the first two bits are not zero")
    if header.cookie != MAGIC_COOKIE:
        raise NotStun(f"STUN header: magic cookie {header.cookie:#010x}")
    if header.length % 4:
        raise StunError(f"STUN header: length {header.length} is not a multiple of 4")
    present = len(data) - HEADER_SIZE
    if header.length > present:
        raise StunTruncated(f"STUN header: length {header.length}, {present} bytes present")
    if header.length < present:
        raise StunError(f"STUN header: length {header.length}, {present} bytes present")
    return header


def _read_attribute(data: bytes, offset: int) -> RawAttribute:
    """One TLV at ``offset``; its length and padding must fit the bytes left (§14)."""
    if len(data) - offset < 4:
        raise StunTruncated(f"attribute at byte {offset}: header cut short")
    head = ATTRIBUTE_HEADER.parse(data[offset : offset + 4])
    start = offset + 4
    end = start + head.length
    padded = end + _padding_size(head.length)
    if padded > len(data):
        name = attribute_name(head.type)
        raise StunTruncated(f"{name}: length {head.length}, {len(data) - start} bytes left")
    return RawAttribute(head.type, offset, data[start:end], data[end:padded])


def walk(data: bytes) -> tuple[Any, list[RawAttribute]]:
    """Check the header and split the body into raw attributes; no value is decoded.

    The construct parses here cannot fail: the byte counts are checked first.
    """
    header = _check_header(data)
    attributes: list[RawAttribute] = []
    offset = HEADER_SIZE
    while offset < len(data):
        if len(attributes) == MAX_ATTRIBUTES:
            raise StunOversized(f"STUN message: more than {MAX_ATTRIBUTES} attributes")
        raw = _read_attribute(data, offset)
        attributes.append(raw)
        offset += 4 + len(raw.value) + len(raw.padding)
    return header, attributes


def _decode_value(raw: RawAttribute, transaction_id: bytes) -> Any:
    spec = BY_CODE.get(raw.type)
    if spec is None:
        return raw.value
    return spec.unpack(raw.value, transaction_id)


def parse(data: bytes) -> Message:
    """Parse one STUN message (RFC 8489 §5, §14); raises only StunError subclasses."""
    header, raws = walk(bytes(data))
    method, cls = decode_type(header.type)
    message = Message(method, cls, header.transaction_id)
    for index, raw in enumerate(raws):
        message.attributes.append((_known(raw.type), _decode_value(raw, header.transaction_id)))
        if any(raw.padding):
            message.padding[index] = raw.padding
    return message


def _known(attr_type: int) -> int:
    return AttrType(attr_type) if attr_type in BY_CODE else attr_type


def _encode_attribute(attr_type: Any, value: Any, transaction_id: bytes) -> bytes:
    if (
        isinstance(attr_type, bool)
        or not isinstance(attr_type, int)
        or not 0 <= attr_type <= 0xFFFF
    ):
        raise StunBuildError(f"attribute type {attr_type!r} does not fit 16 bits")
    spec = BY_CODE.get(attr_type)
    if spec is not None:
        return spec.pack(value, transaction_id)
    if not isinstance(value, bytes | bytearray):
        raise StunBuildError(f"{attribute_name(attr_type)}: unknown type takes raw bytes")
    return bytes(value)


def _check_message(message: Message) -> None:
    if not isinstance(message.transaction_id, bytes) or len(message.transaction_id) != 12:
        raise StunBuildError(f"transaction id must be 12 bytes, got {message.transaction_id!r}")
    if len(message.attributes) > MAX_ATTRIBUTES:
        raise StunBuildError(f"{len(message.attributes)} attributes, cap {MAX_ATTRIBUTES}")


def build(message: Message) -> bytes:
    """Encode ``message`` (RFC 8489 §5, §14), reusing remembered padding bytes."""
    _check_message(message)
    body = io.BytesIO()
    for index, (attr_type, value) in enumerate(message.attributes):
        encoded = _encode_attribute(attr_type, value, message.transaction_id)
        if len(encoded) > MAX_BODY:
            raise StunBuildError(f"{attribute_name(attr_type)}: {len(encoded)} bytes")
        pad = message.padding.get(index, b"")
        if len(pad) != _padding_size(len(encoded)):
            pad = bytes(_padding_size(len(encoded)))
        body.write(ATTRIBUTE_HEADER.build({"type": attr_type, "length": len(encoded)}))
        body.write(encoded + pad)
    payload = body.getvalue()
    if len(payload) > MAX_BODY:
        raise StunBuildError(f"STUN message body: {len(payload)} bytes, cap {MAX_BODY}")
    header = {
        "type": encode_type(message.method, message.cls),
        "length": len(payload),
        "cookie": MAGIC_COOKIE,
        "transaction_id": message.transaction_id,
    }
    return bytes(HEADER.build(header)) + payload


# --- integrity and fingerprint (RFC 8489 §14.5, §14.6, §14.7) -----------------------


def _with_length(prefix: bytes, attribute_size: int) -> bytes:
    """``prefix`` with its length field counting up to an attribute of that size after it."""
    length = len(prefix) - HEADER_SIZE + 4 + attribute_size
    return prefix[:2] + length.to_bytes(2, "big") + prefix[4:]


def _mac(prefix: bytes, key: bytes, sha256: bool, size: int) -> bytes:
    """HMAC-SHA1 (§14.5) or HMAC-SHA256 truncated to ``size`` (§14.6) over ``prefix``."""
    digest = hashlib.sha256 if sha256 else hashlib.sha1
    return hmac.new(key, _with_length(prefix, size), digest).digest()[:size]


def _crc(prefix: bytes) -> int:
    """CRC-32 of ``prefix`` (length counting FINGERPRINT) XOR 0x5354554E (§14.7)."""
    return zlib.crc32(_with_length(prefix, 4)) ^ FINGERPRINT_XOR


_MAC_TYPES = (AttrType.MESSAGE_INTEGRITY, AttrType.MESSAGE_INTEGRITY_SHA256)


def check_integrity(data: bytes, key: bytes) -> None:
    """Verify MESSAGE-INTEGRITY and/or MESSAGE-INTEGRITY-SHA256 of received ``data``.

    Each one present (the first of each type) must verify; at least one must be
    present. Raises IntegrityError otherwise, or a StunError for malformed bytes.
    Attributes after them, FINGERPRINT aside, should then be ignored (§14.5).
    """
    _, raws = walk(bytes(data))
    found = [raw for raw in raws if raw.type in _MAC_TYPES]
    if not found:
        raise IntegrityError("no MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256")
    for kind in _MAC_TYPES:
        raw = next((item for item in found if item.type == kind), None)
        if raw is not None:
            _verify_mac(bytes(data), raw, key)


def _verify_mac(data: bytes, raw: RawAttribute, key: bytes) -> None:
    sha256 = raw.type == AttrType.MESSAGE_INTEGRITY_SHA256
    BY_CODE[raw.type].unpack(raw.value, b"")  # checks the size (§14.5, §14.6)
    expected = _mac(data[: raw.offset], key, sha256, len(raw.value))
    if not hmac.compare_digest(expected, raw.value):
        raise IntegrityError(f"{attribute_name(raw.type)} does not verify")


def check_fingerprint(data: bytes) -> None:
    """Verify FINGERPRINT, which must be the last attribute (§14.7); else FingerprintError."""
    _, raws = walk(bytes(data))
    if not raws or raws[-1].type != AttrType.FINGERPRINT:
        raise FingerprintError("FINGERPRINT is not the last attribute")
    raw = raws[-1]
    value = BY_CODE[AttrType.FINGERPRINT].unpack(raw.value, b"")
    if value != _crc(bytes(data)[: raw.offset]):
        raise FingerprintError("FINGERPRINT does not match")


# --- keys (RFC 8489 §9, RFC 8265 §4.2) ----------------------------------------------


def opaque_string(text: str) -> str:
    """Prepare ``text`` with the OpaqueString profile (RFC 8265 §4.2), in part.

    Done: non-ASCII spaces become U+0020, the result is NFC-normalised, and
    empty strings and control characters are refused (CredentialError). Not
    done: the full FreeformClass table of RFC 8264 §9 (unassigned code points,
    old Hangul jamo and the other disallowed categories are passed through).
    An ASCII password without control characters is returned unchanged.
    """
    mapped = "".join(" " if unicodedata.category(ch) == "Zs" else ch for ch in text)
    prepared = unicodedata.normalize("NFC", mapped)
    if not prepared:
        raise CredentialError("an empty string cannot be a STUN credential")
    if any(unicodedata.category(ch) == "Cc" for ch in prepared):
        raise CredentialError("a STUN credential cannot hold control characters")
    return prepared


def short_term_key(password: str) -> bytes:
    """The short-term credential key: OpaqueString(password) in UTF-8 (§9.1.1)."""
    return opaque_string(password).encode("utf-8")


def long_term_key(
    username: str, realm: str, password: str, algorithm: int = Algorithm.MD5
) -> bytes:
    """The long-term key (§9.2.2): MD5 or SHA-256 of username ":" realm ":" password.

    ``username`` is taken as given (already prepared by the caller); realm and
    password go through OpaqueString. ``algorithm`` is the PASSWORD-ALGORITHM.
    """
    text = f"{username}:{opaque_string(realm)}:{opaque_string(password)}".encode()
    if algorithm == Algorithm.MD5:
        return hashlib.md5(text).digest()
    if algorithm == Algorithm.SHA256:
        return hashlib.sha256(text).digest()
    raise CredentialError(f"unknown password algorithm {algorithm}")


def userhash(username: str, realm: str) -> bytes:
    """USERHASH (§14.4): SHA-256(OpaqueString(username) ":" OpaqueString(realm))."""
    text = f"{opaque_string(username)}:{opaque_string(realm)}"
    return hashlib.sha256(text.encode("utf-8")).digest()

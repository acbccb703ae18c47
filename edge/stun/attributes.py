"""STUN attribute values: one registry line per attribute, each layout declared with construct.

How it works: :data:`REGISTRY` lists every attribute this package understands,
one :class:`Spec` per line (code, name, pack, unpack), the way aioice lays out
its STUN table; :data:`BY_CODE` is built from it. The value layouts are
construct declarations (``ADDRESS``, ``ERROR_CODE``, ...), parsed with
:func:`_parse_exact`, which requires the layout to consume every byte of the
value and turns whatever construct or the standard library raises into a
:class:`~edge.stun.errors.StunError` that names the attribute. Packing goes
through :func:`_build`, which turns failures into
:class:`~edge.stun.errors.StunBuildError`. Construct's compiled parsers are
never used (its documentation warns they do not check untrusted input).

The XOR address attributes need the transaction id, so every pack and unpack
takes it (RFC 8489 §14.2). Values are plain Python: ``(host, port)`` tuples with
``host`` in :mod:`ipaddress`'s canonical text, ``str``, ``bytes``, ``int`` and
the small named tuples below. Bits the RFCs call reserved are ignored on
receipt and sent as zero.

Attribute padding (to a multiple of four bytes) is not part of a value: the
message codec in :mod:`edge.stun.codec` handles it.
"""

import io
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, NamedTuple

from construct import (
    Aligned,
    BitsInteger,
    BitStruct,
    Bytes,
    Construct,
    ConstructError,
    Error,
    Flag,
    GreedyBytes,
    GreedyRange,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Prefixed,
    Struct,
    Switch,
    this,
)

from edge.stun.errors import StunBuildError, StunError, StunOversized

MAGIC_COOKIE = 0x2112A442
"""The fixed header word that tells STUN from older RFC 3489 traffic (RFC 8489 §5)."""

COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")

MAX_USERNAME = 513
"""USERNAME cap in bytes. RFC 8489 §14.3 asks senders for fewer than 509 bytes and
RFC 5389 §15.3 for fewer than 513; we accept up to 513 so that older peers parse."""

MAX_TEXT = 763
"""REALM, NONCE, SOFTWARE and the ERROR-CODE reason: at most 763 bytes (RFC 8489 §14)."""

MAX_DOMAIN = 255
"""ALTERNATE-DOMAIN: a DNS name, at most 255 bytes (RFC 8489 §14.16)."""


class AttrType(IntEnum):
    """Attribute type codes: RFC 8489 §18.3, RFC 5780 §7, RFC 8656 §18, RFC 8445 §16.1."""

    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    ICMP = 0x8004
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C


def is_comprehension_required(attr_type: int) -> bool:
    """Types 0x0000-0x7FFF must be understood, or the request fails (RFC 8489 §14)."""
    return attr_type < 0x8000


class Family(IntEnum):
    """Address family in the address attributes (RFC 8489 §14.1) and RFC 8656 §18.8."""

    IPV4 = 0x01
    IPV6 = 0x02


class Algorithm(IntEnum):
    """PASSWORD-ALGORITHM numbers (RFC 8489 §18.5)."""

    MD5 = 0x0001
    SHA256 = 0x0002


class ChangeFlags(IntFlag):
    """CHANGE-REQUEST flags (RFC 5780 §7.2)."""

    NONE = 0
    CHANGE_PORT = 0x2
    CHANGE_IP = 0x4


class ErrorValue(NamedTuple):
    """ERROR-CODE (RFC 8489 §14.8): a code 300-699 and a UTF-8 reason phrase."""

    code: int
    reason: str


class AddressErrorValue(NamedTuple):
    """ADDRESS-ERROR-CODE (RFC 8656 §18.13): the family it is about, a code, a reason."""

    family: int
    code: int
    reason: str


class IcmpValue(NamedTuple):
    """ICMP (RFC 8656 §18.14): the ICMP type (9 bits), code (7 bits) and error data."""

    icmp_type: int
    icmp_code: int
    error_data: int


class PasswordAlgorithm(NamedTuple):
    """One PASSWORD-ALGORITHM entry (RFC 8489 §14.11, §14.12): number and parameters."""

    algorithm: int
    params: bytes


Pack = Callable[[Any, bytes], bytes]
Unpack = Callable[[bytes, bytes], Any]


@dataclass(frozen=True)
class Spec:
    """One registry line: the attribute's code, its RFC name, how to pack and unpack."""

    code: AttrType
    name: str
    pack: Pack
    unpack: Unpack


# --- construct declarations of the value layouts ------------------------------------

ADDRESS = Struct(
    "reserved" / Int8ub * "ignored on receipt, sent as 0",
    "family" / Int8ub * "0x01 IPv4, 0x02 IPv6",
    "port" / Int16ub * "the port (XORed with the cookie's top 16 bits in XOR-*)",
    "address"
    / Switch(this.family, {1: Bytes(4), 2: Bytes(16)}, default=Error)
    * "the IP address, network byte order (XORed in XOR-*)",
)
"""MAPPED-ADDRESS and friends (RFC 8489 §14.1, §14.2)."""

ERROR_CODE = Struct(
    "head"
    / BitStruct(
        "reserved" / BitsInteger(21) * "ignored on receipt",
        "cls" / BitsInteger(3) * "the hundreds digit, 3..6",
        "number" / BitsInteger(8) * "the code modulo 100, 0..99",
    ),
    "reason" / GreedyBytes * "UTF-8 reason phrase, at most 763 bytes",
)
"""ERROR-CODE (RFC 8489 §14.8)."""

ADDRESS_ERROR_CODE = Struct(
    "head"
    / BitStruct(
        "family" / BitsInteger(8) * "the address family the error is about",
        "reserved" / BitsInteger(13) * "ignored on receipt",
        "cls" / BitsInteger(3) * "the hundreds digit, 3..6",
        "number" / BitsInteger(8) * "the code modulo 100, 0..99",
    ),
    "reason" / GreedyBytes * "UTF-8 reason phrase, at most 763 bytes",
)
"""ADDRESS-ERROR-CODE (RFC 8656 §18.13)."""

ICMP = Struct(
    "reserved" / Int16ub * "ignored on receipt",
    "kind"
    / BitStruct(
        "icmp_type" / BitsInteger(9) * "the ICMP type",
        "icmp_code" / BitsInteger(7) * "the ICMP code",
    ),
    "error_data" / Int32ub * "type-specific data (e.g. the MTU)",
)
"""ICMP (RFC 8656 §18.14)."""

PASSWORD_ALGORITHM = Struct(
    "algorithm" / Int16ub * "1 MD5, 2 SHA-256",
    "params" / Prefixed(Int16ub, GreedyBytes) * "parameters after a u16 length",
)
"""PASSWORD-ALGORITHM (RFC 8489 §14.12); the attribute padding follows."""

PASSWORD_ALGORITHMS = GreedyRange(Aligned(4, PASSWORD_ALGORITHM))
"""PASSWORD-ALGORITHMS (RFC 8489 §14.11): entries, each padded to four bytes."""

UNKNOWN_ATTRIBUTES = GreedyRange(Int16ub)
"""UNKNOWN-ATTRIBUTES (RFC 8489 §14.9): a list of u16 attribute types."""

U32 = Int32ub
"""FINGERPRINT (RFC 8489 §14.7), LIFETIME (RFC 8656 §18.2), CHANGE-REQUEST (RFC 5780 §7.2),
PRIORITY (RFC 8445 §16.1)."""

U64 = Int64ub
"""ICE-CONTROLLED and ICE-CONTROLLING (RFC 8445 §16.1): the tie-breaker."""

U16_RESERVED = Struct("value" / Int16ub * "the number", "reserved" / Int16ub * "ignored on receipt")
"""CHANNEL-NUMBER (RFC 8656 §18.1) and RESPONSE-PORT (RFC 5780 §7.5)."""

U8_RESERVED = Struct("value" / Int8ub * "the number", "reserved" / Bytes(3) * "ignored")
"""REQUESTED-ADDRESS-FAMILY, ADDITIONAL-ADDRESS-FAMILY, REQUESTED-TRANSPORT (RFC 8656 §18)."""

EVEN_PORT = BitStruct(
    "reserve" / Flag * "R: also reserve the next port", "rffu" / BitsInteger(7) * "ignored"
)
"""EVEN-PORT (RFC 8656 §18.6)."""


# --- helpers ------------------------------------------------------------------------


def _parse_exact(layout: Construct, data: bytes, name: str) -> Any:
    """Parse ``data`` with ``layout``; every byte must be consumed, errors become ours."""
    stream = io.BytesIO(data)
    try:
        value = layout.parse_stream(stream)
    except (ConstructError, ValueError, OverflowError) as exc:
        raise StunError(f"{name}: malformed value ({type(exc).__name__})") from None
    if stream.tell() != len(data):
        raise StunError(f"{name}: {len(data) - stream.tell()} unexpected bytes at the end")
    return value


def _build(layout: Construct, value: Any, name: str) -> bytes:
    try:
        data: bytes = layout.build(value)
    except (ConstructError, ValueError, TypeError, OverflowError) as exc:
        raise StunBuildError(f"{name}: cannot encode {value!r} ({exc})") from None
    return data


def _fixed(data: bytes, size: int, name: str) -> bytes:
    if len(data) != size:
        raise StunError(f"{name}: {len(data)} bytes, expected {size}")
    return data


def _bytes_value(value: Any, name: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise StunBuildError(f"{name}: expected bytes, got {type(value).__name__}")
    return bytes(value)


def _int_value(value: Any, name: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise StunBuildError(f"{name}: expected an int in 0..{high}, got {value!r}")
    return value


# --- addresses (RFC 8489 §14.1, §14.2) ----------------------------------------------


def _xor_mask(family: int, transaction_id: bytes) -> bytes:
    return COOKIE_BYTES if family == Family.IPV4 else COOKIE_BYTES + transaction_id


def _xor(data: bytes, mask: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, mask, strict=True))


def _unpack_address(data: bytes, name: str, mask_with: bytes | None) -> tuple[str, int]:
    raw = _parse_exact(ADDRESS, data, name)
    address: bytes = raw.address
    port: int = raw.port
    if mask_with is not None:
        address = _xor(address, _xor_mask(raw.family, mask_with))
        port ^= MAGIC_COOKIE >> 16
    host = ipaddress.IPv4Address(address) if raw.family == 1 else ipaddress.IPv6Address(address)
    return str(host), port


def _pack_address(value: Any, name: str, mask_with: bytes | None) -> bytes:
    if not isinstance(value, tuple) or len(value) != 2 or not isinstance(value[0], str):
        raise StunBuildError(f"{name}: expected (host, port), got {value!r}")
    port = _int_value(value[1], name, 0xFFFF)
    try:
        ip = ipaddress.ip_address(value[0])
    except ValueError:
        raise StunBuildError(f"{name}: {value[0]!r} is not an IP address") from None
    family = Family.IPV4 if ip.version == 4 else Family.IPV6
    address = ip.packed
    if mask_with is not None:
        address = _xor(address, _xor_mask(family, mask_with))
        port ^= MAGIC_COOKIE >> 16
    return _build(
        ADDRESS, {"reserved": 0, "family": family, "port": port, "address": address}, name
    )


def _plain_address(name: str) -> tuple[Pack, Unpack]:
    """MAPPED-ADDRESS, ALTERNATE-SERVER, RESPONSE-ORIGIN, OTHER-ADDRESS (RFC 8489 §14.1)."""
    return (
        lambda value, tid: _pack_address(value, name, None),
        lambda data, tid: _unpack_address(data, name, None),
    )


def _xor_address(name: str) -> tuple[Pack, Unpack]:
    """XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS (RFC 8489 §14.2)."""
    return (
        lambda value, tid: _pack_address(value, name, tid),
        lambda data, tid: _unpack_address(data, name, tid),
    )


# --- text (RFC 8489 §14.3, §14.9, §14.10, §14.14, §14.16) ---------------------------


def _text(name: str, cap: int) -> tuple[Pack, Unpack]:
    """UTF-8 text of at most ``cap`` bytes; the cap is checked before decoding."""

    def pack(value: Any, tid: bytes) -> bytes:
        if not isinstance(value, str):
            raise StunBuildError(f"{name}: expected str, got {type(value).__name__}")
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise StunBuildError(f"{name}: not encodable as UTF-8") from None
        if len(data) > cap:
            raise StunBuildError(f"{name}: {len(data)} bytes, cap {cap}")
        return data

    def unpack(data: bytes, tid: bytes) -> str:
        return _decode_text(data, name, cap)

    return pack, unpack


def _decode_text(data: bytes, name: str, cap: int) -> str:
    if len(data) > cap:
        raise StunOversized(f"{name}: {len(data)} bytes, cap {cap}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StunError(f"{name}: invalid UTF-8 at byte {exc.start}") from None


# --- opaque bytes -------------------------------------------------------------------


def _opaque(name: str, low: int, high: int, step: int = 1) -> tuple[Pack, Unpack]:
    """Bytes whose length lies in ``low..high`` and is a multiple of ``step``."""

    def check(size: int) -> bool:
        return low <= size <= high and size % step == 0

    def pack(value: Any, tid: bytes) -> bytes:
        data = _bytes_value(value, name)
        if not check(len(data)):
            raise StunBuildError(f"{name}: {len(data)} bytes, expected {low}..{high}")
        return data

    def unpack(data: bytes, tid: bytes) -> bytes:
        if not check(len(data)):
            raise StunError(f"{name}: {len(data)} bytes, expected {low}..{high}")
        return data

    return pack, unpack


# --- error codes (RFC 8489 §14.8, RFC 8656 §18.13) ----------------------------------


def _check_code(code: int, name: str) -> None:
    if not 300 <= code <= 699:
        raise StunError(f"{name}: code {code} is outside 300..699")


def _split_code(code: Any, name: str) -> dict[str, int]:
    if isinstance(code, bool) or not isinstance(code, int) or not 300 <= code <= 699:
        raise StunBuildError(f"{name}: code must be 300..699, got {code!r}")
    return {"reserved": 0, "cls": code // 100, "number": code % 100}


def _reason_bytes(reason: Any, name: str) -> bytes:
    pack, _ = _text(name + " reason", MAX_TEXT)
    return pack(reason, b"")


def _pack_error(value: Any, tid: bytes) -> bytes:
    """ERROR-CODE (RFC 8489 §14.8)."""
    if not isinstance(value, tuple) or len(value) != 2:
        raise StunBuildError(f"ERROR-CODE: expected (code, reason), got {value!r}")
    head = _split_code(value[0], "ERROR-CODE")
    reason = _reason_bytes(value[1], "ERROR-CODE")
    return _build(ERROR_CODE, {"head": head, "reason": reason}, "ERROR-CODE")


def _unpack_error(data: bytes, tid: bytes) -> ErrorValue:
    """ERROR-CODE (RFC 8489 §14.8): class 3..6 and number 0..99."""
    raw = _parse_exact(ERROR_CODE, data, "ERROR-CODE")
    if raw.head.number > 99:
        raise StunError(f"ERROR-CODE: number {raw.head.number} is over 99")
    code = raw.head.cls * 100 + raw.head.number
    _check_code(code, "ERROR-CODE")
    return ErrorValue(code, _decode_text(raw.reason, "ERROR-CODE reason", MAX_TEXT))


def _pack_address_error(value: Any, tid: bytes) -> bytes:
    """ADDRESS-ERROR-CODE (RFC 8656 §18.13)."""
    name = "ADDRESS-ERROR-CODE"
    if not isinstance(value, tuple) or len(value) != 3:
        raise StunBuildError(f"{name}: expected (family, code, reason), got {value!r}")
    head = _split_code(value[1], name) | {"family": _int_value(value[0], name, 0xFF)}
    reason = _reason_bytes(value[2], name)
    return _build(ADDRESS_ERROR_CODE, {"head": head, "reason": reason}, name)


def _unpack_address_error(data: bytes, tid: bytes) -> AddressErrorValue:
    """ADDRESS-ERROR-CODE (RFC 8656 §18.13)."""
    name = "ADDRESS-ERROR-CODE"
    raw = _parse_exact(ADDRESS_ERROR_CODE, data, name)
    if raw.head.number > 99:
        raise StunError(f"{name}: number {raw.head.number} is over 99")
    code = raw.head.cls * 100 + raw.head.number
    _check_code(code, name)
    reason = _decode_text(raw.reason, name + " reason", MAX_TEXT)
    return AddressErrorValue(raw.head.family, code, reason)


# --- numbers ------------------------------------------------------------------------


def _u32(name: str) -> tuple[Pack, Unpack]:
    """A u32: FINGERPRINT (RFC 8489 §14.7), LIFETIME (RFC 8656 §18.2), PRIORITY."""
    return (
        lambda value, tid: _build(U32, _int_value(value, name, 0xFFFFFFFF), name),
        lambda data, tid: int(_parse_exact(U32, data, name)),
    )


def _u64(name: str) -> tuple[Pack, Unpack]:
    """A u64: the ICE-CONTROLLED and ICE-CONTROLLING tie-breaker (RFC 8445 §16.1)."""
    return (
        lambda value, tid: _build(U64, _int_value(value, name, (1 << 64) - 1), name),
        lambda data, tid: int(_parse_exact(U64, data, name)),
    )


def _u16_reserved(name: str) -> tuple[Pack, Unpack]:
    """A u16 then two reserved bytes: CHANNEL-NUMBER, RESPONSE-PORT."""
    return (
        lambda value, tid: _build(
            U16_RESERVED, {"value": _int_value(value, name, 0xFFFF), "reserved": 0}, name
        ),
        lambda data, tid: int(_parse_exact(U16_RESERVED, data, name).value),
    )


def _u8_reserved(name: str) -> tuple[Pack, Unpack]:
    """A u8 then three reserved bytes: the address family and transport requests."""
    return (
        lambda value, tid: _build(
            U8_RESERVED, {"value": _int_value(value, name, 0xFF), "reserved": bytes(3)}, name
        ),
        lambda data, tid: int(_parse_exact(U8_RESERVED, data, name).value),
    )


def _pack_change(value: Any, tid: bytes) -> bytes:
    """CHANGE-REQUEST (RFC 5780 §7.2): only the change-IP and change-port bits."""
    flags = _int_value(value, "CHANGE-REQUEST", 0xFFFFFFFF)
    if flags & ~(ChangeFlags.CHANGE_IP | ChangeFlags.CHANGE_PORT):
        raise StunBuildError(f"CHANGE-REQUEST: unknown flags in {flags:#x}")
    return _build(U32, flags, "CHANGE-REQUEST")


def _unpack_change(data: bytes, tid: bytes) -> ChangeFlags:
    """CHANGE-REQUEST (RFC 5780 §7.2): other bits are ignored."""
    flags = int(_parse_exact(U32, data, "CHANGE-REQUEST"))
    return ChangeFlags(flags & (ChangeFlags.CHANGE_IP | ChangeFlags.CHANGE_PORT))


def _pack_even_port(value: Any, tid: bytes) -> bytes:
    """EVEN-PORT (RFC 8656 §18.6): the R bit."""
    if not isinstance(value, bool):
        raise StunBuildError(f"EVEN-PORT: expected a bool, got {value!r}")
    return _build(EVEN_PORT, {"reserve": value, "rffu": 0}, "EVEN-PORT")


def _unpack_even_port(data: bytes, tid: bytes) -> bool:
    """EVEN-PORT (RFC 8656 §18.6)."""
    return bool(_parse_exact(EVEN_PORT, data, "EVEN-PORT").reserve)


def _empty(name: str) -> tuple[Pack, Unpack]:
    """No value; ``None`` stands for it: DONT-FRAGMENT (RFC 8656 §18.8), USE-CANDIDATE."""

    def pack(value: Any, tid: bytes) -> bytes:
        if value is not None:
            raise StunBuildError(f"{name}: has no value, got {value!r}")
        return b""

    def unpack(data: bytes, tid: bytes) -> None:
        _fixed(data, 0, name)

    return pack, unpack


def _pack_icmp(value: Any, tid: bytes) -> bytes:
    """ICMP (RFC 8656 §18.14)."""
    if not isinstance(value, tuple) or len(value) != 3:
        raise StunBuildError(f"ICMP: expected (type, code, data), got {value!r}")
    kind = {
        "icmp_type": _int_value(value[0], "ICMP", 0x1FF),
        "icmp_code": _int_value(value[1], "ICMP", 0x7F),
    }
    error_data = _int_value(value[2], "ICMP", 0xFFFFFFFF)
    return _build(ICMP, {"reserved": 0, "kind": kind, "error_data": error_data}, "ICMP")


def _unpack_icmp(data: bytes, tid: bytes) -> IcmpValue:
    """ICMP (RFC 8656 §18.14)."""
    raw = _parse_exact(ICMP, data, "ICMP")
    return IcmpValue(raw.kind.icmp_type, raw.kind.icmp_code, raw.error_data)


# --- lists and algorithms (RFC 8489 §14.9, §14.11, §14.12) --------------------------


def _algorithm_dict(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise StunBuildError(f"{name}: expected (algorithm, params), got {value!r}")
    params = _bytes_value(value[1], name)
    if len(params) > 0xFFFF:
        raise StunBuildError(f"{name}: {len(params)} bytes of parameters")
    return {"algorithm": _int_value(value[0], name, 0xFFFF), "params": params}


def _pack_algorithm(value: Any, tid: bytes) -> bytes:
    """PASSWORD-ALGORITHM (RFC 8489 §14.12)."""
    name = "PASSWORD-ALGORITHM"
    return _build(PASSWORD_ALGORITHM, _algorithm_dict(value, name), name)


def _unpack_algorithm(data: bytes, tid: bytes) -> PasswordAlgorithm:
    """PASSWORD-ALGORITHM (RFC 8489 §14.12)."""
    raw = _parse_exact(PASSWORD_ALGORITHM, data, "PASSWORD-ALGORITHM")
    return PasswordAlgorithm(raw.algorithm, raw.params)


def _pack_algorithms(value: Any, tid: bytes) -> bytes:
    """PASSWORD-ALGORITHMS (RFC 8489 §14.11)."""
    name = "PASSWORD-ALGORITHMS"
    if not isinstance(value, list):
        raise StunBuildError(f"{name}: expected a list, got {type(value).__name__}")
    return _build(PASSWORD_ALGORITHMS, [_algorithm_dict(item, name) for item in value], name)


def _unpack_algorithms(data: bytes, tid: bytes) -> list[PasswordAlgorithm]:
    """PASSWORD-ALGORITHMS (RFC 8489 §14.11)."""
    raw = _parse_exact(PASSWORD_ALGORITHMS, data, "PASSWORD-ALGORITHMS")
    return [PasswordAlgorithm(item.algorithm, item.params) for item in raw]


def _pack_unknown(value: Any, tid: bytes) -> bytes:
    """UNKNOWN-ATTRIBUTES (RFC 8489 §14.13)."""
    name = "UNKNOWN-ATTRIBUTES"
    if not isinstance(value, list):
        raise StunBuildError(f"{name}: expected a list, got {type(value).__name__}")
    return _build(UNKNOWN_ATTRIBUTES, [_int_value(item, name, 0xFFFF) for item in value], name)


def _unpack_unknown(data: bytes, tid: bytes) -> list[int]:
    """UNKNOWN-ATTRIBUTES (RFC 8489 §14.13)."""
    return [int(code) for code in _parse_exact(UNKNOWN_ATTRIBUTES, data, "UNKNOWN-ATTRIBUTES")]


def _spec(code: AttrType, name: str, codec: tuple[Pack, Unpack]) -> Spec:
    return Spec(code, name, codec[0], codec[1])


A = AttrType

REGISTRY: tuple[Spec, ...] = (
    # RFC 8489 §14
    _spec(A.MAPPED_ADDRESS, "MAPPED-ADDRESS", _plain_address("MAPPED-ADDRESS")),
    _spec(A.XOR_MAPPED_ADDRESS, "XOR-MAPPED-ADDRESS", _xor_address("XOR-MAPPED-ADDRESS")),
    _spec(A.USERNAME, "USERNAME", _text("USERNAME", MAX_USERNAME)),
    _spec(A.USERHASH, "USERHASH", _opaque("USERHASH", 32, 32)),
    _spec(A.MESSAGE_INTEGRITY, "MESSAGE-INTEGRITY", _opaque("MESSAGE-INTEGRITY", 20, 20)),
    _spec(
        A.MESSAGE_INTEGRITY_SHA256,
        "MESSAGE-INTEGRITY-SHA256",
        _opaque("MESSAGE-INTEGRITY-SHA256", 16, 32, 4),
    ),
    _spec(A.FINGERPRINT, "FINGERPRINT", _u32("FINGERPRINT")),
    _spec(A.ERROR_CODE, "ERROR-CODE", (_pack_error, _unpack_error)),
    _spec(A.REALM, "REALM", _text("REALM", MAX_TEXT)),
    _spec(A.NONCE, "NONCE", _text("NONCE", MAX_TEXT)),
    _spec(A.PASSWORD_ALGORITHMS, "PASSWORD-ALGORITHMS", (_pack_algorithms, _unpack_algorithms)),
    _spec(A.PASSWORD_ALGORITHM, "PASSWORD-ALGORITHM", (_pack_algorithm, _unpack_algorithm)),
    _spec(A.UNKNOWN_ATTRIBUTES, "UNKNOWN-ATTRIBUTES", (_pack_unknown, _unpack_unknown)),
    _spec(A.SOFTWARE, "SOFTWARE", _text("SOFTWARE", MAX_TEXT)),
    _spec(A.ALTERNATE_SERVER, "ALTERNATE-SERVER", _plain_address("ALTERNATE-SERVER")),
    _spec(A.ALTERNATE_DOMAIN, "ALTERNATE-DOMAIN", _text("ALTERNATE-DOMAIN", MAX_DOMAIN)),
    # RFC 5780 §7
    _spec(A.CHANGE_REQUEST, "CHANGE-REQUEST", (_pack_change, _unpack_change)),
    _spec(A.RESPONSE_ORIGIN, "RESPONSE-ORIGIN", _plain_address("RESPONSE-ORIGIN")),
    _spec(A.OTHER_ADDRESS, "OTHER-ADDRESS", _plain_address("OTHER-ADDRESS")),
    _spec(A.RESPONSE_PORT, "RESPONSE-PORT", _u16_reserved("RESPONSE-PORT")),
    _spec(A.PADDING, "PADDING", _opaque("PADDING", 0, 0xFFFF)),
    # RFC 8656 §18
    _spec(A.CHANNEL_NUMBER, "CHANNEL-NUMBER", _u16_reserved("CHANNEL-NUMBER")),
    _spec(A.LIFETIME, "LIFETIME", _u32("LIFETIME")),
    _spec(A.XOR_PEER_ADDRESS, "XOR-PEER-ADDRESS", _xor_address("XOR-PEER-ADDRESS")),
    _spec(A.DATA, "DATA", _opaque("DATA", 0, 0xFFFF)),
    _spec(A.XOR_RELAYED_ADDRESS, "XOR-RELAYED-ADDRESS", _xor_address("XOR-RELAYED-ADDRESS")),
    _spec(
        A.REQUESTED_ADDRESS_FAMILY,
        "REQUESTED-ADDRESS-FAMILY",
        _u8_reserved("REQUESTED-ADDRESS-FAMILY"),
    ),
    _spec(A.EVEN_PORT, "EVEN-PORT", (_pack_even_port, _unpack_even_port)),
    _spec(A.REQUESTED_TRANSPORT, "REQUESTED-TRANSPORT", _u8_reserved("REQUESTED-TRANSPORT")),
    _spec(A.DONT_FRAGMENT, "DONT-FRAGMENT", _empty("DONT-FRAGMENT")),
    _spec(A.RESERVATION_TOKEN, "RESERVATION-TOKEN", _opaque("RESERVATION-TOKEN", 8, 8)),
    _spec(
        A.ADDITIONAL_ADDRESS_FAMILY,
        "ADDITIONAL-ADDRESS-FAMILY",
        _u8_reserved("ADDITIONAL-ADDRESS-FAMILY"),
    ),
    _spec(A.ADDRESS_ERROR_CODE, "ADDRESS-ERROR-CODE", (_pack_address_error, _unpack_address_error)),
    _spec(A.ICMP, "ICMP", (_pack_icmp, _unpack_icmp)),
    # RFC 8445 §16.1
    _spec(A.PRIORITY, "PRIORITY", _u32("PRIORITY")),
    _spec(A.USE_CANDIDATE, "USE-CANDIDATE", _empty("USE-CANDIDATE")),
    _spec(A.ICE_CONTROLLED, "ICE-CONTROLLED", _u64("ICE-CONTROLLED")),
    _spec(A.ICE_CONTROLLING, "ICE-CONTROLLING", _u64("ICE-CONTROLLING")),
)
"""Every attribute this package understands, one line each."""

BY_CODE: dict[int, Spec] = {spec.code: spec for spec in REGISTRY}
"""The registry looked up by type code."""


def attribute_name(attr_type: int) -> str:
    """The RFC name of ``attr_type``, or ``0x....`` for one we do not know."""
    spec = BY_CODE.get(attr_type)
    return spec.name if spec is not None else f"0x{attr_type:04x}"

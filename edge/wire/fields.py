"""Reusable field declarations, each with a hard cap, for the construct declarations.

How it works: every variable-length field here is a small construct class that
knows its bounds. On parse it reads the length or count prefix, compares it with
the cap *before* reading what follows (a peer cannot make us allocate or loop
past it) and raises :class:`~edge.wire.errors.Oversized`; on build a value over
the cap raises :class:`~edge.wire.errors.CapExceeded`, because handing us too
much is the caller's bug. Any other bad value raises
:class:`~edge.wire.errors.Malformed` (parse) or
:class:`~edge.wire.errors.BuildError` (build). Messages name the field by its
path, e.g. ``record.candidates[3].address``.

Each class also describes itself for the generated protocol document
(:meth:`label`, :meth:`size_text`) and reports the smallest and largest number of
bytes it can occupy (:meth:`size_range`); :func:`size_range` walks a whole
declaration with them, so every message body has a computed maximum size.
"""

import io
import ipaddress
import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import Any, ClassVar

from construct import (
    Adapter,
    Bytes,
    Const,
    Construct,
    Container,
    FormatField,
    If,
    Int8ub,
    Int16ub,
    Int64ub,
    Renamed,
    Struct,
    Switch,
    this,
)

from edge.wire.errors import BuildError, CapExceeded, Malformed, Oversized

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")

Id16 = Bytes(16)
"""A 16-byte random identifier (call, message, file)."""

Key32 = Bytes(32)
"""A 32-byte public key (Ed25519 or X25519) or nonce."""

Signature64 = Bytes(64)
"""An Ed25519 signature (RFC 8032 §5.1.6)."""

Millis = Int64ub
"""A timestamp: milliseconds since the Unix epoch, unsigned 64-bit."""


def field_name(path: str) -> str:
    """Turn construct's ``(parsing) -> a -> b -> b[2] -> c`` into ``a.b[2].c``.

    ``"name" / field * "doc"`` wraps a field twice, so each name arrives twice.
    """
    names: list[str] = []
    for part in path.split(" -> ")[1:]:
        if names and (part == names[-1] or part.startswith(names[-1] + "[")):
            names[-1] = part
        else:
            names.append(part)
    return ".".join(names) if names else "body"


def _read_exact(stream: io.BufferedIOBase, size: int, path: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise Malformed(f"{field_name(path)}: body ends {size - len(data)} bytes short")
    return data


def _read_prefix(stream: io.BufferedIOBase, prefix: struct.Struct, path: str) -> int:
    value: int = prefix.unpack(_read_exact(stream, prefix.size, path))[0]
    return value


def _prefix_for(limit: int) -> struct.Struct:
    if not 0 <= limit <= 0xFFFF:
        raise BuildError(f"a cap of {limit} does not fit a u16 prefix")
    return _U8 if limit <= 0xFF else _U16


def _as_bytes(obj: object, path: str) -> bytes:
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj)
    raise BuildError(f"{field_name(path)}: expected bytes, got {type(obj).__name__}")


def _prefix_label(prefix: struct.Struct) -> str:
    return "u8" if prefix is _U8 else "u16"


class Text(Construct):  # type: ignore[misc]
    """UTF-8 text after a length prefix: u8 when the cap is at most 255 bytes, else u16.

    Invalid UTF-8 (including overlong forms and surrogates) is Malformed; the cap
    counts encoded bytes, not characters.
    """

    wire_doc: ClassVar[str] = (
        "UTF-8 after a length prefix, u8 when the cap is at most 255 bytes, else u16; the "
        "cap counts encoded bytes. Invalid UTF-8 (overlong forms and surrogates included) "
        "is MALFORMED, a length over the cap OVERSIZED."
    )

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.prefix = _prefix_for(max_bytes)
        self.max_bytes = max_bytes

    def _parse(self, stream: io.BufferedIOBase, context: Any, path: str) -> str:
        size = _read_prefix(stream, self.prefix, path)
        if size > self.max_bytes:
            raise Oversized(f"{field_name(path)}: {size} bytes of text, cap {self.max_bytes}")
        raw = _read_exact(stream, size, path)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Malformed(f"{field_name(path)}: invalid UTF-8 at byte {exc.start}") from None

    def _build(self, obj: object, stream: io.BufferedIOBase, context: Any, path: str) -> str:
        if not isinstance(obj, str):
            raise BuildError(f"{field_name(path)}: expected str, got {type(obj).__name__}")
        try:
            raw = obj.encode("utf-8")
        except UnicodeEncodeError:
            raise BuildError(f"{field_name(path)}: text is not encodable as UTF-8") from None
        if len(raw) > self.max_bytes:
            raise CapExceeded(f"{field_name(path)}: {len(raw)} bytes of text, cap {self.max_bytes}")
        stream.write(self.prefix.pack(len(raw)) + raw)
        return obj

    def size_range(self) -> tuple[int, int]:
        return self.prefix.size, self.prefix.size + self.max_bytes

    def label(self) -> str:
        return f"text ({_prefix_label(self.prefix)} length)"

    def size_text(self) -> str:
        return f"{self.prefix.size} + 0..{self.max_bytes}"


class Blob(Construct):  # type: ignore[misc]
    """Opaque bytes after a u16 length prefix."""

    wire_doc: ClassVar[str] = (
        "Opaque bytes after a u16 length prefix; a length over the cap is OVERSIZED."
    )

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        _prefix_for(max_bytes)
        self.max_bytes = max_bytes

    def _parse(self, stream: io.BufferedIOBase, context: Any, path: str) -> bytes:
        size = _read_prefix(stream, _U16, path)
        if size > self.max_bytes:
            raise Oversized(f"{field_name(path)}: {size} bytes, cap {self.max_bytes}")
        return _read_exact(stream, size, path)

    def _build(self, obj: object, stream: io.BufferedIOBase, context: Any, path: str) -> bytes:
        data = _as_bytes(obj, path)
        if len(data) > self.max_bytes:
            raise CapExceeded(f"{field_name(path)}: {len(data)} bytes, cap {self.max_bytes}")
        stream.write(_U16.pack(len(data)) + data)
        return data

    def size_range(self) -> tuple[int, int]:
        return 2, 2 + self.max_bytes

    def label(self) -> str:
        return "bytes (u16 length)"

    def size_text(self) -> str:
        return f"2 + 0..{self.max_bytes}"


class Rest(Construct):  # type: ignore[misc]
    """All the bytes left in the body, no prefix: the header's length field bounds it."""

    wire_doc: ClassVar[str] = (
        "The bytes left in the body after the fields before it, with no prefix of their "
        "own; the header's length says how many."
    )

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes

    def _parse(self, stream: io.BufferedIOBase, context: Any, path: str) -> bytes:
        # Read one byte past the cap so an over-long rest is seen without reading it all.
        data = stream.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise Oversized(f"{field_name(path)}: more than {self.max_bytes} bytes")
        return bytes(data)

    def _build(self, obj: object, stream: io.BufferedIOBase, context: Any, path: str) -> bytes:
        data = _as_bytes(obj, path)
        if len(data) > self.max_bytes:
            raise CapExceeded(f"{field_name(path)}: {len(data)} bytes, cap {self.max_bytes}")
        stream.write(data)
        return data

    def size_range(self) -> tuple[int, int]:
        return 0, self.max_bytes

    def label(self) -> str:
        return "bytes (rest of body)"

    def size_text(self) -> str:
        return f"0..{self.max_bytes}"


class Array(Construct):  # type: ignore[misc]
    """Up to ``max_items`` items after a u8 count; parses to a list."""

    wire_doc: ClassVar[str] = (
        "A u8 count, then that many items one after the other; a count over the cap is OVERSIZED."
    )

    def __init__(self, max_items: int, subcon: Construct) -> None:
        super().__init__()
        if not 0 <= max_items <= 0xFF:
            raise BuildError(f"an array cap of {max_items} does not fit a u8 count")
        self.max_items = max_items
        self.subcon = subcon

    def _parse(self, stream: io.BufferedIOBase, context: Any, path: str) -> list[Any]:
        count = _read_prefix(stream, _U8, path)
        if count > self.max_items:
            raise Oversized(f"{field_name(path)}: {count} items, cap {self.max_items}")
        return [self.subcon._parsereport(stream, context, f"{path}[{i}]") for i in range(count)]

    def _build(self, obj: object, stream: io.BufferedIOBase, context: Any, path: str) -> object:
        if not isinstance(obj, Sequence) or isinstance(obj, str | bytes | bytearray):
            raise BuildError(f"{field_name(path)}: expected a list, got {type(obj).__name__}")
        if len(obj) > self.max_items:
            raise CapExceeded(f"{field_name(path)}: {len(obj)} items, cap {self.max_items}")
        stream.write(_U8.pack(len(obj)))
        for i, item in enumerate(obj):
            self.subcon._build(item, stream, context, f"{path}[{i}]")
        return obj

    def size_range(self) -> tuple[int, int]:
        return 1, 1 + self.max_items * size_range(self.subcon)[1]

    def label(self) -> str:
        return "array (u8 count)"

    def size_text(self) -> str:
        low, high = size_range(self.subcon)
        item = str(low) if low == high else f"{low}..{high}"
        return f"1 + 0..{self.max_items} x {item}"


class EnumField(Construct):  # type: ignore[misc]
    """An unsigned integer (u8 or u16) that must name a member of ``enum_type``.

    Parses to the member. With ``accept_unknown`` a value outside the enum parses
    to a plain int instead of raising: for codes that a newer peer may send and
    that we only report (error codes, the type an ERROR is about).
    """

    wire_doc: ClassVar[str] = (
        "A u8 or u16 that must be a value of the named table below, else MALFORMED. "
        "Fields marked open also accept values missing from the table (a newer peer may "
        "send them) and pass them on as numbers."
    )

    def __init__(
        self, enum_type: type[IntEnum], width: int = 1, *, accept_unknown: bool = False
    ) -> None:
        super().__init__()
        if width not in (1, 2):
            raise BuildError(f"an enum field is 1 or 2 bytes wide, not {width}")
        self.enum_type = enum_type
        self.fmt = _U8 if width == 1 else _U16
        self.accept_unknown = accept_unknown
        self.members = {int(member): member for member in enum_type}

    def _parse(self, stream: io.BufferedIOBase, context: Any, path: str) -> int:
        value = _read_prefix(stream, self.fmt, path)
        member = self.members.get(value)
        if member is not None:
            return member
        if self.accept_unknown:
            return value
        raise Malformed(f"{field_name(path)}: {value} is not a {self.enum_type.__name__}")

    def _build(self, obj: object, stream: io.BufferedIOBase, context: Any, path: str) -> int:
        if isinstance(obj, bool) or not isinstance(obj, int):
            raise BuildError(f"{field_name(path)}: expected an int, got {type(obj).__name__}")
        known = obj in self.members
        if not known and not self.accept_unknown:
            raise BuildError(f"{field_name(path)}: {obj} is not a {self.enum_type.__name__}")
        if not 0 <= obj < 1 << (8 * self.fmt.size):
            raise BuildError(f"{field_name(path)}: {obj} does not fit {self.fmt.size} bytes")
        stream.write(self.fmt.pack(obj))
        return obj

    def size_range(self) -> tuple[int, int]:
        return self.fmt.size, self.fmt.size

    def label(self) -> str:
        width = "u8" if self.fmt.size == 1 else "u16"
        return f"{width} {self.enum_type.__name__}"

    def size_text(self) -> str:
        return str(self.fmt.size)


class Bounded(Construct):  # type: ignore[misc]
    """An unsigned integer (1, 2, 4 or 8 bytes) that must lie in ``low..high``.

    Above ``high`` is a cap violation (Oversized / CapExceeded); below ``low`` is
    Malformed / BuildError.
    """

    wire_doc: ClassVar[str] = (
        "An unsigned integer with a range: above it is OVERSIZED, below it MALFORMED."
    )

    _FORMATS: ClassVar[dict[int, struct.Struct]] = {
        1: _U8,
        2: _U16,
        4: struct.Struct(">I"),
        8: struct.Struct(">Q"),
    }

    def __init__(self, width: int, low: int, high: int) -> None:
        super().__init__()
        fmt = self._FORMATS.get(width)
        if fmt is None or not 0 <= low <= high < 1 << (8 * width):
            raise BuildError(f"no {width}-byte range {low}..{high}")
        self.fmt = fmt
        self.low = low
        self.high = high

    def _parse(self, stream: io.BufferedIOBase, context: Any, path: str) -> int:
        value = _read_prefix(stream, self.fmt, path)
        if value > self.high:
            raise Oversized(f"{field_name(path)}: {value}, cap {self.high}")
        if value < self.low:
            raise Malformed(f"{field_name(path)}: {value}, at least {self.low}")
        return value

    def _build(self, obj: object, stream: io.BufferedIOBase, context: Any, path: str) -> int:
        if isinstance(obj, bool) or not isinstance(obj, int):
            raise BuildError(f"{field_name(path)}: expected an int, got {type(obj).__name__}")
        if obj > self.high:
            raise CapExceeded(f"{field_name(path)}: {obj}, cap {self.high}")
        if obj < self.low:
            raise BuildError(f"{field_name(path)}: {obj}, at least {self.low}")
        stream.write(self.fmt.pack(obj))
        return obj

    def size_range(self) -> tuple[int, int]:
        return self.fmt.size, self.fmt.size

    def label(self) -> str:
        return f"u{8 * self.fmt.size} in {self.low}..{self.high}"

    def size_text(self) -> str:
        return str(self.fmt.size)


class Boolean(Construct):  # type: ignore[misc]
    """A u8 that must be 0 (false) or 1 (true), so every value has one encoding."""

    wire_doc: ClassVar[str] = (
        "A u8 that must be 0 (false) or 1 (true), else MALFORMED, so each value has one encoding."
    )

    def _parse(self, stream: io.BufferedIOBase, context: Any, path: str) -> bool:
        value = _read_prefix(stream, _U8, path)
        if value > 1:
            raise Malformed(f"{field_name(path)}: {value} is not 0 or 1")
        return value == 1

    def _build(self, obj: object, stream: io.BufferedIOBase, context: Any, path: str) -> bool:
        if obj not in (0, 1) or not isinstance(obj, int):
            raise BuildError(f"{field_name(path)}: expected a bool, got {obj!r}")
        stream.write(_U8.pack(int(obj)))
        return bool(obj)

    def size_range(self) -> tuple[int, int]:
        return 1, 1

    def label(self) -> str:
        return "u8 bool (0 or 1)"

    def size_text(self) -> str:
        return "1"


Bool8 = Boolean()
"""A u8 boolean; see :class:`Boolean`."""


class _Reject(Construct):  # type: ignore[misc]
    """A branch that no valid input takes: parsing or building it is an error."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def _parse(self, stream: io.BufferedIOBase, context: Any, path: str) -> None:
        raise Malformed(f"{field_name(path)}: {self.reason}")

    def _build(self, obj: object, stream: io.BufferedIOBase, context: Any, path: str) -> None:
        raise BuildError(f"{field_name(path)}: {self.reason}")


_ADDRESS_RAW = Struct(
    "family" / Int8ub * "4 (IPv4), 6 (IPv6), or 0 for none where the field is optional",
    "ip"
    / Switch(
        this.family,
        {0: Bytes(0), 4: Bytes(4), 6: Bytes(16)},
        default=_Reject("address family must be 4 or 6"),
    )
    * "the address, network byte order: 4 bytes for IPv4, 16 for IPv6, none for family 0",
    "port" / If(this.family != 0, Int16ub) * "UDP or TCP port; absent for family 0",
)


class AddressAdapter(Adapter):  # type: ignore[misc]
    """A transport address: family u8 (4 or 6), the address bytes, port u16.

    Parses to a ``(host, port)`` tuple with ``host`` in :mod:`ipaddress`'s
    canonical text form, and builds from one (``host`` must be an IP literal, no
    scope id). When ``optional``, family 0 with nothing after it stands for no
    address and maps to ``None`` both ways.
    """

    wire_doc: ClassVar[str] = (
        "A transport address: family (4 or 6), the IP address in network byte order, the "
        "port. Where the field may hold no address, family 0 with nothing after it stands "
        "for none. Any other family is MALFORMED."
    )

    def __init__(self, *, optional: bool = False) -> None:
        super().__init__(_ADDRESS_RAW)
        self.optional = optional

    def _decode(self, obj: Container, context: Any, path: str) -> tuple[str, int] | None:
        family: int = obj.family
        if family == 0:
            if self.optional:
                return None
            raise Malformed(f"{field_name(path)}: address required, family 0 given")
        host = ipaddress.IPv4Address(obj.ip) if family == 4 else ipaddress.IPv6Address(obj.ip)
        return str(host), int(obj.port)

    def _encode(self, obj: object, context: Any, path: str) -> dict[str, object]:
        if obj is None and self.optional:
            return {"family": 0, "ip": b"", "port": None}
        host, port = _split_address(obj, path)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise BuildError(f"{field_name(path)}: {host!r} is not an IP address") from None
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            raise BuildError(f"{field_name(path)}: scope ids do not travel ({host!r})")
        return {"family": ip.version, "ip": ip.packed, "port": port}

    def size_range(self) -> tuple[int, int]:
        return (1 if self.optional else 7), 19

    def label(self) -> str:
        return "Address or none" if self.optional else "Address"

    def size_text(self) -> str:
        return "1, 7 or 19" if self.optional else "7 or 19"


def _split_address(obj: object, path: str) -> tuple[str, int]:
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        raise BuildError(f"{field_name(path)}: expected (host, port), got {obj!r}")
    host, port = obj
    if not isinstance(host, str):
        raise BuildError(f"{field_name(path)}: host must be a str, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise BuildError(f"{field_name(path)}: port must be 0..65535, got {port!r}")
    return host, port


Address = AddressAdapter()
"""A required transport address; see :class:`AddressAdapter`."""

OptionalAddress = AddressAdapter(optional=True)
"""A transport address or ``None`` (family 0); see :class:`AddressAdapter`."""

ADDRESS_LAYOUT = _ADDRESS_RAW
"""The bytes under :data:`Address`, exported for the protocol document."""


def size_range(con: Construct) -> tuple[int, int]:
    """Smallest and largest encoded size of a declaration built from these parts."""
    own = getattr(type(con), "size_range", None)
    if own is not None:
        result: tuple[int, int] = own(con)
        return result
    if isinstance(con, Renamed):
        return size_range(con.subcon)
    if isinstance(con, Struct):
        ranges = [size_range(sub) for sub in con.subcons]
        return sum(low for low, _ in ranges), sum(high for _, high in ranges)
    if isinstance(con, FormatField | Const) or type(con) is Bytes:
        size: int = con.sizeof()
        return size, size
    raise BuildError(f"cannot bound the size of {con!r}")

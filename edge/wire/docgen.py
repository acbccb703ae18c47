"""Generate docs/PROTOCOL.md from the declarations: ``python -m edge.wire.docgen``.

How it works: the document is rendered only from what the code declares, so
it cannot drift from it. The header table comes from
:data:`~edge.wire.messages.Header`, each message section from its
:class:`~edge.wire.messages.MessageSpec` (description, reference) and a walk of
its construct tree (names, ``*`` docs, types, sizes and caps), the shared
structures from :data:`~edge.wire.messages.STRUCTURES`, and the enumeration
tables from every IntEnum the walk meets. A test compares the committed file
with :func:`render`, so a changed declaration without a regenerated document
fails the build.
"""

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

from construct import Bytes, Const, FormatField, IfThenElse, Renamed, Struct, Switch

from edge.wire import fields, messages
from edge.wire.codes import MAGIC, PROTOCOL_VERSION, ErrorCode, MsgType

_INT_NAMES = {"B": "u8", "H": "u16", "L": "u32", "I": "u32", "Q": "u64"}


@dataclass(frozen=True)
class Row:
    """One line of a field table."""

    name: str
    type: str
    size: str
    doc: str


def anchor(title: str) -> str:
    """The fragment a Markdown renderer gives a heading (GitHub's rule)."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return "#" + kept.replace(" ", "-")


def _link(title: str) -> str:
    return f"[{title}]({anchor(title)})"


_SHARED: dict[int, str] = {id(s.layout): s.name for s in messages.STRUCTURES}


def _unwrap(con: Any) -> tuple[str, str, Any]:
    """Name and docs of a field, and the construct under its Renamed wrappers."""
    name: str = con.name or ""
    docs: str = con.docs or ""
    while isinstance(con, Renamed):
        con = con.subcon
    return name, docs, con


def _size(con: Any) -> str:
    if isinstance(con, fields.Array | fields.Text | fields.Blob | fields.Rest):
        text: str = con.size_text()
        return text
    if isinstance(con, fields.AddressAdapter):
        return str(con.size_text())
    low, high = fields.size_range(con)
    return str(low) if low == high else f"{low}..{high}"


def _scalar_type(con: Any) -> str:
    if isinstance(con, fields.EnumField):
        width = "u8" if con.fmt.size == 1 else "u16"
        suffix = " (open)" if con.accept_unknown else ""
        return f"{width} {_link(con.enum_type.__name__)}{suffix}"
    if isinstance(con, fields.AddressAdapter):
        return con.label().replace("Address", _link("Address"))
    if hasattr(type(con), "label"):
        return str(con.label())
    if isinstance(con, Const):
        value = con.value
        shown = f"0x{value.hex()}" if isinstance(value, bytes) else str(value)
        return f"{_scalar_type(con.subcon)} = {shown}"
    if isinstance(con, FormatField):
        fmt = str(con.fmtstr)
        return _INT_NAMES.get(fmt[-1], fmt)
    if isinstance(con, Bytes):
        return f"bytes[{con.length}]"
    return type(con).__name__


def _rows(layout: Any, prefix: str = "") -> Iterator[Row]:
    for sub in layout.subcons:
        name, docs, con = _unwrap(sub)
        yield from _field_rows(prefix + name, docs, con)


def _field_rows(name: str, docs: str, con: Any) -> Iterator[Row]:
    shared = _SHARED.get(id(con))
    if shared is not None:
        yield Row(name, _link(shared), _size(con), docs)
    elif isinstance(con, Struct):
        yield Row(name, "struct", _size(con), docs)
        yield from _rows(con, f"{name}.")
    elif isinstance(con, fields.Array):
        _, _, item = _unwrap(con.subcon)
        item_shared = _SHARED.get(id(item))
        if item_shared is None and isinstance(item, Struct):
            yield Row(name, f"{con.label()} of struct", _size(con), docs)
            yield from _rows(item, f"{name}[].")
        else:
            of = _link(item_shared) if item_shared else _scalar_type(item)
            yield Row(name, f"{con.label()} of {of}", _size(con), docs)
    elif isinstance(con, Switch):
        cases = sorted(con.cases.items())
        types = ", ".join(f"{key}: {_scalar_type(case)}" for key, case in cases)
        sizes = sorted({fields.size_range(case)[0] for _, case in cases})
        yield Row(name, f"by {_expr(con.keyfunc)}: {types}", _or(sizes), docs)
    elif isinstance(con, IfThenElse):
        then = fields.size_range(con.thensubcon)[0]
        cond = _expr(con.condfunc)
        yield Row(name, f"{_scalar_type(con.thensubcon)} if {cond}", _or([0, then]), docs)
    else:
        yield Row(name, _scalar_type(con), _size(con), docs)


def _expr(expression: Any) -> str:
    """construct's ``this.family != 0`` reads back as ``(this['family'] != 0)``."""
    return str(expression).replace("this['", "").replace("']", "").strip("()")


def _or(values: list[int]) -> str:
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _prose(doc: str) -> str:
    """A docstring as one Markdown paragraph: Sphinx roles and ``literals`` made plain."""
    text = " ".join(doc.split())
    text = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([\w]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: Iterator[Row]) -> list[str]:
    lines = ["| Field | Type | Size (bytes) | Description |", "| --- | --- | --- | --- |"]
    for row in rows:
        cells = (f"`{row.name}`", row.type, row.size, row.doc)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _header_section() -> list[str]:
    lines = [
        "## Header",
        "",
        "| Offset | Size | Field | Type | Description |",
        "| --- | --- | --- | --- | --- |",
    ]
    offset = 0
    for sub in messages.Header.subcons:
        name, docs, con = _unwrap(sub)
        size = fields.size_range(con)[0]
        cells = (str(offset), str(size), f"`{name}`", _scalar_type(con), docs)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        offset += size
    return [*lines, ""]


def _intro() -> list[str]:
    return [
        "# The edge wire protocol",
        "",
        "<!-- Generated by `python -m edge.wire.docgen` (`make docs`) from edge/wire. "
        "Do not edit by hand. -->",
        "",
        f"Protocol version {PROTOCOL_VERSION}. Every message, over UDP or TCP, is an "
        f"{messages.HEADER_SIZE}-byte header followed by a body whose layout the header's "
        "`type` selects. All integers are unsigned and big-endian. Text is UTF-8 and must "
        "be valid. Every length and count has a cap, listed below; a whole message is at "
        f"most {messages.MAX_MESSAGE} bytes, a body at most {messages.MAX_BODY}. Every "
        "value has exactly one encoding, so a decoded message re-encodes to the same bytes.",
        "",
        f"The magic 0x{MAGIC.hex()} lets one UDP port carry STUN, TURN and edge at once "
        "(RFC 7983 demultiplexing). A datagram holds exactly one message. Once a session "
        "is up, every other message travels encrypted as the ciphertext of a TRANSPORT "
        "message, so only the handshake messages, COOKIE_REPLY and TRANSPORT appear in clear.",
        "",
        *_header_section(),
        "A receiver checks, in this order, before looking at the body: at least 8 bytes "
        "(else TRUNCATED), the magic (BAD_MAGIC), the version (UNSUPPORTED_VERSION), the "
        "type (UNKNOWN_TYPE), `length` against the type's largest body below (OVERSIZED), "
        "`length` against the bytes present (TRUNCATED if fewer, MALFORMED if more). The "
        "body must then fill exactly `length` bytes; a field over its cap is OVERSIZED, "
        "any other bad value MALFORMED.",
        "",
    ]


_FIELD_KINDS: tuple[tuple[str, type[Any]], ...] = (
    ("text", fields.Text),
    ("bytes (u16 length)", fields.Blob),
    ("bytes (rest of body)", fields.Rest),
    ("array", fields.Array),
    ("u8 / u16 Name", fields.EnumField),
    ("uN in low..high", fields.Bounded),
    ("bool", fields.Boolean),
    ("Address", fields.AddressAdapter),
    ("u64 set", messages.SerialSet),
)


def _field_types() -> list[str]:
    lines = ["## Field types", ""]
    lines += [f"- **{title}**: {kind.wire_doc}" for title, kind in _FIELD_KINDS]
    return [*lines, ""]


def _summary() -> list[str]:
    lines = [
        "## Messages",
        "",
        "| Type | Name | Body size (bytes) | Reference |",
        "| --- | --- | --- | --- |",
    ]
    for msg_type, spec in messages.SPECS.items():
        title = f"0x{msg_type:02x} {msg_type.name}"
        cells = (f"0x{msg_type:02x}", f"[{msg_type.name}]({anchor(title)})")
        size = _size(spec.body)
        lines.append("| " + " | ".join((*cells, size, _cell(spec.reference))) + " |")
    return [*lines, ""]


def _message_section(spec: messages.MessageSpec) -> list[str]:
    low, high = fields.size_range(spec.body)
    size = f"{low} bytes" if low == high else f"{low} to {high} bytes"
    return [
        f"### 0x{spec.type:02x} {spec.type.name}",
        "",
        spec.description,
        "",
        f"Reference: {spec.reference}. Body: {size}.",
        "",
        *_table(_rows(spec.body)),
        "",
    ]


def _structure_section(spec: messages.StructureSpec) -> list[str]:
    return [
        f"### {spec.name}",
        "",
        spec.description,
        "",
        f"Reference: {spec.reference}. Size: {_size(spec.layout)} bytes.",
        "",
        *_table(_rows(spec.layout)),
        "",
    ]


def _address_section() -> list[str]:
    return [
        "### Address",
        "",
        fields.AddressAdapter.wire_doc,
        "",
        *_table(_rows(fields.ADDRESS_LAYOUT)),
        "",
    ]


def _used_enums() -> list[type[IntEnum]]:
    found: list[type[IntEnum]] = [MsgType, ErrorCode]

    def visit(con: Any) -> None:
        _, _, con = _unwrap(con)
        if isinstance(con, fields.EnumField) and con.enum_type not in found:
            found.append(con.enum_type)
        for sub in getattr(con, "subcons", []):
            visit(sub)
        if isinstance(con, fields.Array):
            visit(con.subcon)

    for body in messages.BODIES.values():
        visit(body)
    for structure in messages.STRUCTURES:
        visit(structure.layout)
    return found


def _enum_section(enum_type: type[IntEnum] | type[IntFlag]) -> list[str]:
    doc = _prose(enum_type.__doc__ or "")
    lines = [f"### {enum_type.__name__}", "", doc, "", "| Value | Name |", "| --- | --- |"]
    for member in enum_type:
        lines.append(f"| 0x{int(member):02x} | {member.name} |")
    return [*lines, ""]


def render() -> str:
    """The whole document, exactly as it is committed."""
    lines = [*_intro(), *_field_types(), *_summary()]
    for spec in messages.SPECS.values():
        lines += _message_section(spec)
    lines += ["## Shared structures", ""]
    for structure in messages.STRUCTURES:
        lines += _structure_section(structure)
    lines += _address_section()
    lines += ["## Enumerations", ""]
    lines += _enum_section(messages.HeaderFlag)
    lines += _enum_section(messages.MediaFlag)
    for enum_type in _used_enums():
        lines += _enum_section(enum_type)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()

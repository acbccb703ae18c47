"""docs/PROTOCOL.md is exactly what the declarations generate, and they document every field."""

from pathlib import Path
from typing import Any

from construct import Renamed, Struct

from edge.wire import docgen, fields
from edge.wire.codes import MsgType
from edge.wire.messages import BODIES, SPECS, STRUCTURES

PROTOCOL_MD = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


def test_committed_protocol_document_is_current() -> None:
    committed = PROTOCOL_MD.read_text(encoding="utf-8") if PROTOCOL_MD.exists() else ""
    assert committed == docgen.render(), (
        "docs/PROTOCOL.md differs from the wire declarations: run `make docs` and commit it"
    )


def _undocumented(layout: Any, prefix: str = "") -> list[str]:
    missing = []
    for sub in layout.subcons:
        name = f"{prefix}{sub.name}"
        if not sub.docs:
            missing.append(name)
        inner = sub
        while isinstance(inner, Renamed):
            inner = inner.subcon
        if isinstance(inner, fields.Array):
            inner = inner.subcon
        if isinstance(inner, Struct) and all(s.layout is not inner for s in STRUCTURES):
            missing += _undocumented(inner, f"{name}.")
    return missing


def test_every_field_has_a_doc_string() -> None:
    for msg_type, body in BODIES.items():
        assert _undocumented(body) == [], msg_type.name
    for structure in STRUCTURES:
        assert _undocumented(structure.layout) == [], structure.name


def test_every_message_has_a_description_and_a_reference() -> None:
    for msg_type in MsgType:
        spec = SPECS[msg_type]
        assert spec.description.strip(), msg_type.name
        assert spec.reference.strip(), msg_type.name


def test_document_covers_every_type_structure_and_enum() -> None:
    text = docgen.render()
    for msg_type in MsgType:
        assert f"### 0x{msg_type:02x} {msg_type.name}\n" in text
    for structure in STRUCTURES:
        assert f"### {structure.name}\n" in text
    for heading in ("### Address", "### ErrorCode", "### Codec", "### BuddyState", "### MailKind"):
        assert f"{heading}\n" in text
    assert "| 0 | 2 | `magic` |" in text
    assert "| 6 | 2 | `length` |" in text


def test_links_point_at_headings() -> None:
    text = docgen.render()
    headings = {
        docgen.anchor(line.lstrip("#").strip())
        for line in text.splitlines()
        if line.startswith("#")
    }
    for target in {part.split(")")[0] for part in text.split("](")[1:]}:
        assert target in headings, target

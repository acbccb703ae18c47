"""Any input to any wire parser either parses or raises one of our own errors.

Random bytes, random bodies behind a valid header, and valid messages with
bits flipped, cut short, extended or with a length field edited, fed to
decode(), the struct fast paths and the shared-structure parsers. A message
that does parse must re-encode to the same bytes (the encoding is canonical).
Examples per test: EDGE_FUZZ_EXAMPLES (default 300); ``make fuzz`` runs many more.
"""

import contextlib
import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
from construct import Bytes, FormatField, Renamed, Struct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.wire import fields, hot
from edge.wire.codes import MAGIC, MsgType
from edge.wire.errors import WireError
from edge.wire.messages import (
    BODIES,
    KNOWN_FLAGS,
    Certificate,
    DialbackAttestation,
    HandshakePayload,
    SerialSet,
    SignedPresence,
    SignedRevocationList,
    build_certificate,
    build_dialback_attestation,
    build_handshake_payload,
    build_signed_presence,
    build_signed_revocation_list,
    decode,
    encode,
    parse_certificate,
    parse_certificate_tbs,
    parse_dialback_attestation,
    parse_handshake_payload,
    parse_revocation_list,
    parse_signed_presence,
    parse_signed_revocation_list,
)

FUZZ = settings(
    max_examples=int(os.environ.get("EDGE_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PARSERS: tuple[Callable[[bytes], object], ...] = (
    decode,
    hot.peek_type,
    hot.unpack_header,
    hot.unpack_transport,
    hot.unpack_media,
    parse_certificate,
    parse_certificate_tbs,
    parse_signed_presence,
    parse_handshake_payload,
    parse_revocation_list,
    parse_signed_revocation_list,
    parse_dialback_attestation,
)


def values(con: Any) -> st.SearchStrategy[Any]:
    """Valid values for a declaration: enough variety to seed mutations."""
    while isinstance(con, Renamed):
        con = con.subcon
    if isinstance(con, Struct):
        subs = [s for s in con.subcons if not s.flagbuildnone]
        return st.fixed_dictionaries({s.name: values(s) for s in subs})
    if isinstance(con, fields.Text):
        return st.text(max_size=8)
    if isinstance(con, fields.Blob | fields.Rest):
        return st.binary(max_size=24)
    if isinstance(con, fields.Array):
        return st.lists(values(con.subcon), max_size=2)
    if isinstance(con, SerialSet):
        return st.lists(st.integers(0, (1 << 64) - 1), max_size=3, unique=True).map(sorted)
    if isinstance(con, fields.EnumField):
        return st.sampled_from(list(con.enum_type))
    if isinstance(con, fields.Bounded):
        return st.integers(con.low, con.high)
    if isinstance(con, fields.Boolean):
        return st.booleans()
    if isinstance(con, fields.AddressAdapter):
        hosts = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
        return st.tuples(hosts, st.integers(0, 0xFFFF))
    if isinstance(con, FormatField):
        return st.integers(0, (1 << (8 * con.sizeof())) - 1)
    if isinstance(con, Bytes):
        return st.binary(min_size=con.length, max_size=con.length)
    raise AssertionError(f"no strategy for {con!r}")


def messages() -> st.SearchStrategy[bytes]:
    """Valid whole messages of every type."""
    return st.sampled_from(list(MsgType)).flatmap(
        lambda t: values(BODIES[t]).map(lambda body: encode(t, body))
    )


def feed_everything(data: bytes) -> None:
    """Every parser returns or raises a WireError; whatever decodes re-encodes exactly."""
    for parse in PARSERS:
        with contextlib.suppress(WireError):
            parse(data)
    try:
        message = decode(data)
    except WireError:
        return
    flags = struct.unpack_from(">H", data, 4)[0] & KNOWN_FLAGS
    canonical = data[:4] + struct.pack(">H", flags) + data[6:]
    assert encode(message.type, message.body, message.flags) == canonical


@st.composite
def mutations(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "cut", "extend", "length", "byte", "splice"]))
        if kind == "flip" and data:
            bit = draw(st.integers(0, len(data) * 8 - 1))
            data[bit // 8] ^= 1 << (bit % 8)
        elif kind == "cut":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif kind == "length" and len(data) >= 8:
            data[6:8] = struct.pack(">H", draw(st.integers(0, 0xFFFF)))
        elif kind == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 0xFF))
        elif kind == "splice" and data:
            start = draw(st.integers(0, len(data) - 1))
            data[start : start + draw(st.integers(0, 8))] = draw(st.binary(max_size=8))
    return bytes(data)


@st.composite
def behind_a_valid_header(draw: st.DrawFn) -> bytes:
    """Random bodies that get past the header checks and into the body parsers."""
    msg_type = draw(st.sampled_from(list(MsgType)))
    body = draw(st.binary(max_size=200))
    flags = draw(st.integers(0, 0xFFFF))
    return struct.pack(">2sBBHH", MAGIC, 1, msg_type, flags, len(body)) + body


@pytest.mark.fuzz
@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    feed_everything(data)


@pytest.mark.fuzz
@FUZZ
@given(behind_a_valid_header())
def test_random_bodies_behind_a_valid_header(data: bytes) -> None:
    feed_everything(data)


@pytest.mark.fuzz
@FUZZ
@given(mutations(messages()))
def test_mutated_messages(data: bytes) -> None:
    feed_everything(data)


@pytest.mark.fuzz
@FUZZ
@given(
    st.one_of(
        mutations(values(Certificate).map(build_certificate)),
        mutations(values(SignedPresence).map(build_signed_presence)),
        mutations(values(HandshakePayload).map(build_handshake_payload)),
        mutations(values(SignedRevocationList).map(build_signed_revocation_list)),
        mutations(values(DialbackAttestation).map(build_dialback_attestation)),
    )
)
def test_mutated_shared_structures(data: bytes) -> None:
    feed_everything(data)

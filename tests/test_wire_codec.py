"""Round trips for every body, and every way a header or a field can be wrong.

The value strategies are derived from the declarations themselves (one per
field kind), so a new message type is covered as soon as it is declared.
"""

import ipaddress
import struct
from typing import Any

import pytest
from construct import Bytes, Const, FormatField, Renamed, Struct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.errors import LocalError, RemoteError
from edge.wire import fields
from edge.wire.codes import MAGIC, ErrorCode, MsgType, NoisePattern
from edge.wire.errors import (
    BadMagic,
    BuildError,
    CapExceeded,
    Malformed,
    Oversized,
    Truncated,
    UnknownType,
    UnsupportedVersion,
    WireError,
)
from edge.wire.messages import (
    BODIES,
    BODY_CAPS,
    MAX_BODY,
    MAX_MESSAGE,
    REVOKED_SERIALS_MAX,
    SIGNED_PRESENCE_MAX,
    BuddyOp,
    Codec,
    Frame,
    HeaderFlag,
    SerialSet,
    build_certificate_tbs,
    build_revocation_list,
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

ROUND_TRIP = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- strategies per field kind


def _unwrap(con: Any) -> Any:
    while isinstance(con, Renamed):
        con = con.subcon
    return con


def _fit_utf8(text: str, cap: int) -> str:
    return text.encode("utf-8")[:cap].decode("utf-8", errors="ignore")


def _text(con: fields.Text) -> st.SearchStrategy[str]:
    cap = con.max_bytes
    drawn = st.text(max_size=min(cap, 40)).map(lambda s: _fit_utf8(s, cap))
    return st.one_of(drawn, st.just("\u00e9" * (cap // 2) + "x" * (cap % 2)))


def _bytes_up_to(cap: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=min(cap, 48)), st.just(b"\x5a" * cap))


def _address(optional: bool) -> st.SearchStrategy[tuple[str, int] | None]:
    hosts = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
    pairs: st.SearchStrategy[tuple[str, int] | None] = st.tuples(hosts, st.integers(0, 0xFFFF))
    return st.one_of(st.none(), pairs) if optional else pairs


def _serials(con: SerialSet) -> st.SearchStrategy[list[int]]:
    drawn = st.lists(st.integers(0, (1 << 64) - 1), max_size=8, unique=True).map(sorted)
    return st.one_of(drawn, st.just(list(range(con.max_items))))


def _enum(con: fields.EnumField) -> st.SearchStrategy[int]:
    members: st.SearchStrategy[int] = st.sampled_from(list(con.enum_type))
    if con.accept_unknown:
        return st.one_of(members, st.integers(0, (1 << (8 * con.fmt.size)) - 1))
    return members


def values(con: Any) -> st.SearchStrategy[Any]:
    """Any valid value for a declaration, drawn field by field."""
    con = _unwrap(con)
    if isinstance(con, Struct):
        return st.fixed_dictionaries(
            {sub.name: values(sub) for sub in con.subcons if not isinstance(_unwrap(sub), Const)}
        )
    if isinstance(con, fields.Text):
        return _text(con)
    if isinstance(con, fields.Blob | fields.Rest):
        return _bytes_up_to(con.max_bytes)
    if isinstance(con, fields.Array):
        return st.lists(values(con.subcon), max_size=min(con.max_items, 3))
    if isinstance(con, SerialSet):
        return _serials(con)
    if isinstance(con, fields.EnumField):
        return _enum(con)
    if isinstance(con, fields.Bounded):
        return st.integers(con.low, con.high)
    if isinstance(con, fields.Boolean):
        return st.booleans()
    if isinstance(con, fields.AddressAdapter):
        return _address(con.optional)
    if isinstance(con, FormatField):
        return st.integers(0, (1 << (8 * con.sizeof())) - 1)
    if isinstance(con, Bytes):
        return st.binary(min_size=con.length, max_size=con.length)
    raise AssertionError(f"no strategy for {con!r}")


def body_for(msg_type: MsgType) -> st.SearchStrategy[dict[str, Any]]:
    """Valid bodies of one message type."""
    strategy: st.SearchStrategy[dict[str, Any]] = values(BODIES[msg_type])
    return strategy


def messages() -> st.SearchStrategy[bytes]:
    """Valid whole messages of any type."""
    return st.sampled_from(list(MsgType)).flatmap(
        lambda t: st.tuples(body_for(t), st.sampled_from([0, 1])).map(
            lambda pair: encode(t, pair[0], pair[1])
        )
    )


def largest(con: Any) -> Any:
    """A value that fills every field to its cap."""
    con = _unwrap(con)
    if isinstance(con, Struct):
        return {s.name: largest(s) for s in con.subcons if not isinstance(_unwrap(s), Const)}
    if isinstance(con, fields.Text):
        return "x" * con.max_bytes
    if isinstance(con, fields.Blob | fields.Rest):
        return bytes(con.max_bytes)
    if isinstance(con, fields.Array):
        return [largest(con.subcon)] * con.max_items
    if isinstance(con, SerialSet):
        return list(range(con.max_items))
    if isinstance(con, fields.AddressAdapter):
        return ("2001:db8::1", 1)
    return smallest(con)


def smallest(con: Any) -> Any:
    """A value that keeps every field as short as it can be."""
    con = _unwrap(con)
    if isinstance(con, Struct):
        return {s.name: smallest(s) for s in con.subcons if not isinstance(_unwrap(s), Const)}
    if isinstance(con, fields.Text):
        return ""
    if isinstance(con, fields.Blob | fields.Rest):
        return b""
    if isinstance(con, fields.Array | SerialSet):
        return []
    if isinstance(con, fields.EnumField):
        return next(iter(con.enum_type))
    if isinstance(con, fields.Bounded):
        return con.low
    if isinstance(con, fields.Boolean):
        return False
    if isinstance(con, fields.AddressAdapter):
        return None if con.optional else ("192.0.2.1", 1)
    if isinstance(con, FormatField):
        return 0
    if isinstance(con, Bytes):
        return bytes(con.length)
    raise AssertionError(f"no value for {con!r}")


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
@ROUND_TRIP
@given(data=st.data())
def test_build_parse_build(msg_type: MsgType, data: st.DataObject) -> None:
    body = data.draw(body_for(msg_type))
    flags = data.draw(st.sampled_from([0, HeaderFlag.ACK_REQUESTED]))
    encoded = encode(msg_type, body, flags)
    message = decode(encoded)
    assert message.type is msg_type
    assert message.flags == flags
    assert message.body == body
    assert encode(message.type, message.body, message.flags) == encoded


def test_every_message_type_has_a_body() -> None:
    assert set(BODIES) == set(MsgType)


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
def test_body_caps_are_exact(msg_type: MsgType) -> None:
    low, high = fields.size_range(BODIES[msg_type])
    assert len(encode(msg_type, smallest(BODIES[msg_type]))) - 8 == low
    assert len(encode(msg_type, largest(BODIES[msg_type]))) - 8 == high == BODY_CAPS[msg_type]
    assert high <= MAX_BODY


def test_every_message_fits_inside_a_transport() -> None:
    aead_tag = 16  # ChaCha20-Poly1305
    largest_inner = max(8 + cap for t, cap in BODY_CAPS.items() if t is not MsgType.TRANSPORT)
    assert largest_inner + aead_tag <= BODY_CAPS[MsgType.TRANSPORT] - 12


def test_a_full_revocation_list_fits_one_message() -> None:
    body = largest(BODIES[MsgType.REVOCATION_LIST])
    assert len(body["revocations"]["serials"]) == REVOKED_SERIALS_MAX
    encoded = encode(MsgType.REVOCATION_LIST, body)
    assert len(encoded) == 8 + 32 + 2 + 8 * REVOKED_SERIALS_MAX + 64 <= MAX_MESSAGE
    assert decode(encoded).body == body


def test_frame_declaration_agrees_with_decode() -> None:
    body = {"message_id": b"\x01" * 16, "status": 2}
    data = encode(MsgType.MESSAGE_RECEIPT, body, HeaderFlag.ACK_REQUESTED)
    frame = Frame.parse(data)
    assert frame.header.type is MsgType.MESSAGE_RECEIPT
    assert frame.header.length == 17
    assert frame.body == decode(data).body


# ---------------------------------------------------------------- header errors

SAMPLE = encode(
    MsgType.INSTANT_MESSAGE,
    {
        "message_id": b"\x07" * 16,
        "sender": "alice",
        "recipient": "bob",
        "sequence": 1,
        "sent_ms": 2,
        "text": "hello",
    },
)


def _with_header(data: bytes, **changes: int) -> bytes:
    magic, version, msg_type, flags, length = struct.unpack_from(">2sBBHH", data)
    values = {"version": version, "type": msg_type, "flags": flags, "length": length}
    values.update(changes)
    header = struct.pack(">2sBBHH", magic, *values.values())
    return header + data[8:]


def test_truncated_at_every_length() -> None:
    for size in range(len(SAMPLE)):
        with pytest.raises(Truncated):
            decode(SAMPLE[:size])


def test_bad_magic() -> None:
    with pytest.raises(BadMagic) as caught:
        decode(b"\xed\x9f" + SAMPLE[2:])
    assert caught.value.code is ErrorCode.BAD_MAGIC


def test_other_version_is_named() -> None:
    with pytest.raises(UnsupportedVersion) as caught:
        decode(_with_header(SAMPLE, version=2))
    assert caught.value.version == 2
    assert "version 2" in str(caught.value)
    assert "speaks 1" in str(caught.value)
    assert caught.value.code is ErrorCode.UNSUPPORTED_VERSION


def test_unknown_type() -> None:
    with pytest.raises(UnknownType) as caught:
        decode(_with_header(SAMPLE, type=0x99))
    assert caught.value.type_value == 0x99
    assert caught.value.code is ErrorCode.UNKNOWN_TYPE


def test_header_checked_before_the_body() -> None:
    # A broken body must not mask a header error.
    with pytest.raises(UnsupportedVersion):
        decode(_with_header(SAMPLE[:9], version=9))


def test_length_larger_than_data_is_truncated() -> None:
    with pytest.raises(Truncated):
        decode(_with_header(SAMPLE, length=len(SAMPLE) - 7))


def test_length_smaller_than_data_is_malformed() -> None:
    with pytest.raises(Malformed, match="INSTANT_MESSAGE: 1 bytes after"):
        decode(_with_header(SAMPLE, length=len(SAMPLE) - 9))


def test_length_over_the_type_cap_is_oversized() -> None:
    ringing = encode(MsgType.CALL_RINGING, {"call_id": bytes(16)})
    with pytest.raises(Oversized, match="cap 16"):
        decode(_with_header(ringing + b"\0", length=17))


def test_length_over_the_overall_cap_is_oversized() -> None:
    transport = encode(MsgType.TRANSPORT, {"receiver_index": 1, "counter": 2, "ciphertext": b""})
    with pytest.raises(Oversized):
        decode(_with_header(transport, length=MAX_BODY + 1))


def test_reserved_flag_bits_are_ignored_on_receipt() -> None:
    assert decode(_with_header(SAMPLE, flags=0x8001)).flags == HeaderFlag.ACK_REQUESTED
    assert decode(_with_header(SAMPLE, flags=0xFFFE)).flags == 0


def test_reserved_flag_bits_are_refused_on_build() -> None:
    with pytest.raises(BuildError, match="reserved"):
        encode(MsgType.CALL_RINGING, {"call_id": bytes(16)}, 0x0002)


# ---------------------------------------------------------------- field errors on parse


def _message(msg_type: MsgType, body: bytes) -> bytes:
    return struct.pack(">2sBBHH", MAGIC, 1, msg_type, 0, len(body)) + body


def test_text_over_cap_is_oversized_and_names_the_field() -> None:
    body = b"\x01" + b"\x41" + b"a" * 65 + b"\x00"
    with pytest.raises(Oversized, match=r"BUDDY_OP body, user_id: 65 bytes of text, cap 64"):
        decode(_message(MsgType.BUDDY_OP, body))


def test_blob_over_cap_is_oversized() -> None:
    body = b"\x00\x00" + struct.pack(">H", 513) + bytes(513) + b"\x00"
    with pytest.raises(Oversized, match="certificate"):
        decode(_message(MsgType.LOGIN_RESULT, body))


def test_array_over_cap_is_oversized() -> None:
    body = bytes(16) + b"\x00\x00\x00" + b"\x09" + b"\x01" * 9 + b"\x00\x00"
    with pytest.raises(Oversized, match="codecs: 9 items, cap 8"):
        decode(_message(MsgType.CALL_INVITE, body))


def test_invalid_utf8_is_malformed() -> None:
    with pytest.raises(Malformed, match="user_id: invalid UTF-8"):
        decode(_message(MsgType.BUDDY_OP, b"\x01\x02\xc3\x28\x00"))


def test_overlong_utf8_is_malformed() -> None:
    with pytest.raises(Malformed, match="UTF-8"):
        decode(_message(MsgType.BUDDY_OP, b"\x01\x02\xc0\xaf\x00"))


def test_unknown_enum_value_is_malformed() -> None:
    with pytest.raises(Malformed, match="op: 9 is not a BuddyOp"):
        decode(_message(MsgType.BUDDY_OP, b"\x09\x00\x00"))


def test_zero_enum_value_is_malformed() -> None:
    with pytest.raises(Malformed, match="pattern"):
        decode(_message(MsgType.HANDSHAKE_INIT, b"\x00" + bytes(20) + b"\x00\x00"))


def test_open_enum_accepts_unknown_values() -> None:
    message = decode(_message(MsgType.ERROR, b"\x12\x34\x99\x00"))
    assert message.body["code"] == 0x1234
    assert message.body["about_type"] == 0x99


def test_bool_other_than_0_or_1_is_malformed() -> None:
    with pytest.raises(Malformed, match="echo: 2 is not 0 or 1"):
        decode(_message(MsgType.KEEPALIVE, bytes(12) + b"\x02"))


def test_bounded_value_out_of_range() -> None:
    head = bytes(16) + b"\x00" + bytes(8) + bytes(32)
    with pytest.raises(Oversized, match="chunk_size"):
        decode(_message(MsgType.FILE_OFFER, head + struct.pack(">I", 16385)))
    with pytest.raises(Malformed, match="chunk_size"):
        decode(_message(MsgType.FILE_OFFER, head + struct.pack(">I", 0)))


def test_bad_address_family_is_malformed() -> None:
    contact_head = bytes(4) + b"\x01" + bytes(32)  # request_id, one contact, node_id
    body = contact_head + b"\x05" + bytes(6)
    with pytest.raises(
        Malformed, match=r"contacts\[0\]\.address\.ip: address family must be 4 or 6"
    ):
        decode(_message(MsgType.DHT_NODES, body))


def test_required_address_cannot_be_none() -> None:
    body = bytes(4) + b"\x01" + bytes(32) + b"\x00"
    with pytest.raises(Malformed, match=r"contacts\[0\]\.address: address required"):
        decode(_message(MsgType.DHT_NODES, body))


def test_presence_publish_over_the_record_cap_is_oversized() -> None:
    # The prefix alone: a whole record would already exceed the body cap in the header.
    body = bytes(4) + struct.pack(">H", SIGNED_PRESENCE_MAX + 1)
    with pytest.raises(Oversized, match=f"record: {SIGNED_PRESENCE_MAX + 1} bytes"):
        decode(_message(MsgType.PRESENCE_PUBLISH, body))


def test_body_ending_inside_a_field_is_malformed() -> None:
    with pytest.raises(Malformed, match=r"TRANSPORT body, counter"):
        decode(_message(MsgType.TRANSPORT, b"\x00\x00\x00\x01\x00\x00"))


def test_bytes_left_after_the_last_field_are_malformed() -> None:
    body = bytes(16) + b"\x01" + b"\x00" + b"\xff"
    with pytest.raises(Malformed, match="CALL_BYE body: 1 bytes left over"):
        decode(_message(MsgType.CALL_BYE, body))


def test_nested_field_paths_name_the_array_index() -> None:
    candidate = b"\x01\x01" + bytes(8) + b"\x04" + bytes(6) + b"\x00"
    bad = b"\x07\x01" + bytes(8) + b"\x04" + bytes(6) + b"\x00"
    body = bytes(16) + b"\x02" + candidate + bad + b"\x01" + b"\x00\x00"
    with pytest.raises(Malformed, match=r"candidates\[1\]\.kind"):
        decode(_message(MsgType.CALL_ACCEPT, body))


def test_wire_errors_are_remote_errors_with_codes() -> None:
    for cls, code in [
        (Truncated, ErrorCode.TRUNCATED),
        (Oversized, ErrorCode.OVERSIZED),
        (Malformed, ErrorCode.MALFORMED),
    ]:
        assert issubclass(cls, WireError)
        assert issubclass(cls, RemoteError)
        assert cls("x").code is code


# ---------------------------------------------------------------- field errors on build

IM = {
    "message_id": bytes(16),
    "sender": "a",
    "recipient": "b",
    "sequence": 0,
    "sent_ms": 0,
    "text": "",
}


@pytest.mark.parametrize(
    ("msg_type", "body", "field"),
    [
        (MsgType.INSTANT_MESSAGE, {**IM, "sender": "x" * 65}, "sender"),
        (MsgType.INSTANT_MESSAGE, {**IM, "text": "\u00e9" * 2049}, "text"),
        (MsgType.CERTIFICATE, {"certificate": bytes(513)}, "certificate"),
        (
            MsgType.MEDIA_FRAME,
            {"stream_id": 0, "codec": 1, "flags": 0, "sequence": 0, "timestamp": 0}
            | {"payload": bytes(1201)},
            "payload",
        ),
        (
            MsgType.PRESENCE_RESULT,
            {"request_id": 0, "code": 0, "stored": 0, "records": [b""] * 9},
            "records",
        ),
        (
            MsgType.PRESENCE_PUBLISH,
            {"request_id": 0, "record": bytes(SIGNED_PRESENCE_MAX + 1)},
            "record",
        ),
    ],
)
def test_over_cap_on_build_is_a_local_error(
    msg_type: MsgType, body: dict[str, Any], field: str
) -> None:
    with pytest.raises(CapExceeded, match=field) as caught:
        encode(msg_type, body)
    assert isinstance(caught.value, LocalError)
    assert caught.value.code is ErrorCode.OVERSIZED


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({k: v for k, v in IM.items() if k != "text"}, "missing field 'text'"),
        ({**IM, "sequence": -1}, "sequence"),
        ({**IM, "sequence": 1 << 64}, "sequence"),
        ({**IM, "sequence": "1"}, "sequence"),
        ({**IM, "message_id": bytes(15)}, "message_id"),
        ({**IM, "sender": b"alice"}, "sender: expected str"),
        ({**IM, "text": "\ud800"}, "text: text is not encodable"),
    ],
)
def test_bad_values_on_build_are_build_errors(body: dict[str, Any], match: str) -> None:
    with pytest.raises(BuildError, match=match):
        encode(MsgType.INSTANT_MESSAGE, body)


def test_build_checks_enums_bools_bounds_and_addresses() -> None:
    with pytest.raises(BuildError, match="op: 9 is not a BuddyOp"):
        encode(MsgType.BUDDY_OP, {"op": 9, "user_id": "", "note": ""})
    with pytest.raises(BuildError, match="echo"):
        encode(MsgType.KEEPALIVE, {"nonce": 0, "sent_ms": 0, "echo": 2})
    offer = {"file_id": bytes(16), "name": "", "size": 0, "sha256": bytes(32)}
    with pytest.raises(CapExceeded, match="chunk_size"):
        encode(MsgType.FILE_OFFER, {**offer, "chunk_size": 16385})
    with pytest.raises(BuildError, match="chunk_size"):
        encode(MsgType.FILE_OFFER, {**offer, "chunk_size": 0})
    for bad in [("example.com", 1), ("192.0.2.1", 70000), ("fe80::1%eth0", 1), None, "x"]:
        with pytest.raises(BuildError):
            encode(
                MsgType.PATH_UPDATE,
                {
                    "call_id": bytes(16),
                    "local": _candidate(bad),
                    "remote": _candidate(("192.0.2.1", 1)),
                    "path_kind": 1,
                },
            )


def _candidate(address: object) -> dict[str, object]:
    return {
        "kind": 1,
        "transport": 1,
        "priority": 0,
        "foundation": 0,
        "address": address,
        "related": None,
    }


def test_unknown_message_type_on_build() -> None:
    with pytest.raises(BuildError, match="no message type"):
        encode(0x99, {})  # type: ignore[arg-type]


def test_plain_ints_build_like_members() -> None:
    by_member = encode(MsgType.BUDDY_OP, {"op": BuddyOp.BLOCK, "user_id": "", "note": ""})
    by_int = encode(MsgType(0x30), {"op": 5, "user_id": "", "note": ""})
    assert by_member == by_int


def test_addresses_parse_to_canonical_text() -> None:
    body = {
        "call_id": bytes(16),
        "local": _candidate(("2001:0DB8:0:0::1", 5)),
        "remote": _candidate(("::ffff:192.0.2.1", 6)),
        "path_kind": 1,
    }
    parsed = decode(encode(MsgType.PATH_UPDATE, body)).body
    assert parsed["local"]["address"] == ("2001:db8::1", 5)
    assert ipaddress.ip_address(parsed["remote"]["address"][0]).version == 6


# ---------------------------------------------------------------- shared-structure wrappers

TBS = {
    "serial": 1,
    "user_id": "u",
    "device_id": "d",
    "sign_key": bytes(32),
    "dh_key": bytes(32),
    "not_before": 0,
    "not_after": 1,
    "issuer_key_id": bytes(8),
}


def test_certificate_version_must_be_1() -> None:
    raw = bytearray(build_certificate_tbs(TBS))
    raw[0] = 2
    with pytest.raises(Malformed, match="certificate tbs, version"):
        parse_certificate_tbs(bytes(raw))
    with pytest.raises(BuildError, match="version"):
        build_certificate_tbs({**TBS, "version": 2})


def test_wrappers_refuse_garbage_with_our_errors() -> None:
    for parse in (
        parse_certificate,
        parse_certificate_tbs,
        parse_signed_presence,
        parse_handshake_payload,
        parse_dialback_attestation,
    ):
        with pytest.raises(WireError):
            parse(b"\x01\x02\x03")
        with pytest.raises(Oversized):
            parse(bytes(5000))


def test_handshake_init_carries_the_noise_pattern() -> None:
    body = {"pattern": NoisePattern.IK, "sender_index": 1, "cookie": bytes(16), "noise": b""}
    assert decode(encode(MsgType.HANDSHAKE_INIT, body)).body["pattern"] is NoisePattern.IK


def test_codec_list_keeps_order() -> None:
    body = {
        "call_id": bytes(16),
        "caller": "a",
        "callee": "b",
        "candidates": [],
        "codecs": [Codec.PCMA, Codec.OPUS],
        "ufrag": "",
        "pwd": "",
    }
    assert decode(encode(MsgType.CALL_INVITE, body)).body["codecs"] == [Codec.PCMA, Codec.OPUS]


# ---------------------------------------------------------------- revocation serials

REVOCATIONS = {
    "issuer_key_id": bytes(8),
    "version": 1,
    "issued_at": 0,
    "next_update": 1,
    "serials": [1, 2, 3],
}
_LIST_HEAD = bytes(8) + struct.pack(">QQQ", 1, 0, 1)


def _serial_bytes(*serials: int) -> bytes:
    return struct.pack(f">H{len(serials)}Q", len(serials), *serials)


@pytest.mark.parametrize(
    ("serials", "match"),
    [
        ((2, 1), r"serials\[1\]: 1 after 2"),
        ((1, 5, 5), r"serials\[2\]: 5 after 5"),
        ((0, 0), r"serials\[1\]: 0 after 0"),
    ],
)
def test_unsorted_or_repeated_serials_are_malformed(serials: tuple[int, ...], match: str) -> None:
    with pytest.raises(Malformed, match=match):
        parse_revocation_list(_LIST_HEAD + _serial_bytes(*serials))


def test_serial_count_over_cap_is_oversized_before_the_serials_are_read() -> None:
    # The count alone is enough: the 4097 serials it announces are not there.
    data = _LIST_HEAD + struct.pack(">H", REVOKED_SERIALS_MAX + 1)
    with pytest.raises(Oversized, match="serials: 4097 items, cap 4096"):
        parse_revocation_list(data)


def test_serials_cut_short_are_malformed() -> None:
    data = _LIST_HEAD + _serial_bytes(1, 2)[:-3]
    with pytest.raises(Malformed, match="serials: body ends 3 bytes short"):
        parse_revocation_list(data)


def test_serials_parse_to_the_increasing_list() -> None:
    top = (1 << 64) - 1
    parsed = parse_revocation_list(_LIST_HEAD + _serial_bytes(0, 7, top))
    assert parsed["serials"] == [0, 7, top]


@pytest.mark.parametrize(
    ("serials", "error", "match"),
    [
        ([3, 1, 2], BuildError, r"serials\[1\]: 1 after 3"),
        ([1, 1], BuildError, r"serials\[1\]: 1 after 1"),
        ([1, -1], BuildError, r"serials\[1\]: -1 is not a u64"),
        ([1 << 64], BuildError, r"serials\[0\]"),
        ([True], BuildError, r"serials\[0\]"),
        ({1, 2}, BuildError, "expected a list"),
        (list(range(REVOKED_SERIALS_MAX + 1)), CapExceeded, "4097 items, cap 4096"),
    ],
)
def test_bad_serials_on_build(serials: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build_revocation_list({**REVOCATIONS, "serials": serials})


def test_revocation_wrappers_refuse_garbage_with_our_errors() -> None:
    for parse in (parse_revocation_list, parse_signed_revocation_list):
        with pytest.raises(WireError):
            parse(b"\x01\x02\x03")
        with pytest.raises(Oversized):
            parse(bytes(40000))
    with pytest.raises(Malformed, match="64 bytes left over"):
        parse_revocation_list(build_revocation_list(REVOCATIONS) + bytes(64))

"""The STUN codec: message types, every attribute, integrity, fingerprint, limits, ChannelData."""

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.stun.attributes import (
    BY_CODE,
    MAX_TEXT,
    MAX_USERNAME,
    AddressErrorValue,
    Algorithm,
    AttrType,
    ChangeFlags,
    ErrorValue,
    IcmpValue,
    PasswordAlgorithm,
)
from edge.stun.channel import (
    ChannelData,
    Kind,
    build_channel_data,
    classify,
    frame_size,
    parse_channel_data,
)
from edge.stun.codec import (
    MAX_ATTRIBUTES,
    MAX_MESSAGE,
    Class,
    Message,
    Method,
    build,
    check_fingerprint,
    check_integrity,
    decode_type,
    encode_type,
    long_term_key,
    opaque_string,
    parse,
    short_term_key,
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
from edge.wire.codes import ErrorCode

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
"""The transaction id of the RFC 5769 samples."""

COOKIE = bytes.fromhex("2112a442")


def header(length: int, message_type: int = 0x0001, cookie: bytes = COOKIE) -> bytes:
    return struct.pack(">HH", message_type, length) + cookie + TID


def tlv(attr_type: int, value: bytes, padding: bytes | None = None) -> bytes:
    pad = bytes(-len(value) % 4) if padding is None else padding
    return struct.pack(">HH", attr_type, len(value)) + value + pad


def message_of(*attributes: bytes) -> bytes:
    body = b"".join(attributes)
    return header(len(body)) + body


# --- message type (RFC 8489 §5) ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "cls", "value"),
    [
        (Method.BINDING, Class.REQUEST, 0x0001),
        (Method.BINDING, Class.INDICATION, 0x0011),
        (Method.BINDING, Class.SUCCESS, 0x0101),
        (Method.BINDING, Class.ERROR, 0x0111),
        (Method.ALLOCATE, Class.REQUEST, 0x0003),
        (Method.SEND, Class.INDICATION, 0x0016),
        (Method.DATA, Class.INDICATION, 0x0017),
        (Method.CHANNEL_BIND, Class.SUCCESS, 0x0109),
        (0xFFF, Class.ERROR, 0x3FFF),
    ],
)
def test_message_type_golden(method: int, cls: Class, value: int) -> None:
    assert encode_type(method, cls) == value
    assert decode_type(value) == (method, cls)


@given(st.integers(0, 0xFFF), st.sampled_from(Class))
def test_message_type_round_trip(method: int, cls: Class) -> None:
    assert decode_type(encode_type(method, cls)) == (method, cls)


def test_unknown_method_parses_as_a_number() -> None:
    message = parse(header(0, message_type=encode_type(0x123, Class.REQUEST)))
    assert message.method == 0x123
    assert not isinstance(message.method, Method)


def test_method_over_12_bits_is_a_build_error() -> None:
    with pytest.raises(StunBuildError, match="does not fit 12 bits"):
        encode_type(0x1000, Class.REQUEST)


# --- every attribute round-trips -----------------------------------------------------

ADDRESS = st.tuples(st.ip_addresses().map(str), st.integers(0, 0xFFFF))


def text(cap: int) -> st.SearchStrategy[str]:
    return st.text(max_size=40).filter(lambda s: len(s.encode("utf-8")) <= cap)


ALGORITHM = st.builds(PasswordAlgorithm, st.integers(0, 0xFFFF), st.binary(max_size=10))

VALUES: dict[AttrType, st.SearchStrategy[Any]] = {
    AttrType.MAPPED_ADDRESS: ADDRESS,
    AttrType.XOR_MAPPED_ADDRESS: ADDRESS,
    AttrType.USERNAME: text(MAX_USERNAME),
    AttrType.USERHASH: st.binary(min_size=32, max_size=32),
    AttrType.MESSAGE_INTEGRITY: st.binary(min_size=20, max_size=20),
    AttrType.MESSAGE_INTEGRITY_SHA256: st.sampled_from([16, 20, 24, 28, 32]).flatmap(
        lambda n: st.binary(min_size=n, max_size=n)
    ),
    AttrType.FINGERPRINT: st.integers(0, 0xFFFFFFFF),
    AttrType.ERROR_CODE: st.builds(ErrorValue, st.integers(300, 699), text(MAX_TEXT)),
    AttrType.REALM: text(MAX_TEXT),
    AttrType.NONCE: text(MAX_TEXT),
    AttrType.PASSWORD_ALGORITHMS: st.lists(ALGORITHM, max_size=4),
    AttrType.PASSWORD_ALGORITHM: ALGORITHM,
    AttrType.UNKNOWN_ATTRIBUTES: st.lists(st.integers(0, 0xFFFF), max_size=6),
    AttrType.SOFTWARE: text(MAX_TEXT),
    AttrType.ALTERNATE_SERVER: ADDRESS,
    AttrType.ALTERNATE_DOMAIN: text(255),
    AttrType.CHANGE_REQUEST: st.sampled_from([0, 2, 4, 6]).map(ChangeFlags),
    AttrType.RESPONSE_ORIGIN: ADDRESS,
    AttrType.OTHER_ADDRESS: ADDRESS,
    AttrType.RESPONSE_PORT: st.integers(0, 0xFFFF),
    AttrType.PADDING: st.binary(max_size=64),
    AttrType.CHANNEL_NUMBER: st.integers(0, 0xFFFF),
    AttrType.LIFETIME: st.integers(0, 0xFFFFFFFF),
    AttrType.XOR_PEER_ADDRESS: ADDRESS,
    AttrType.DATA: st.binary(max_size=64),
    AttrType.XOR_RELAYED_ADDRESS: ADDRESS,
    AttrType.REQUESTED_ADDRESS_FAMILY: st.integers(0, 0xFF),
    AttrType.EVEN_PORT: st.booleans(),
    AttrType.REQUESTED_TRANSPORT: st.integers(0, 0xFF),
    AttrType.DONT_FRAGMENT: st.none(),
    AttrType.RESERVATION_TOKEN: st.binary(min_size=8, max_size=8),
    AttrType.ADDITIONAL_ADDRESS_FAMILY: st.integers(0, 0xFF),
    AttrType.ADDRESS_ERROR_CODE: st.builds(
        AddressErrorValue, st.integers(0, 0xFF), st.integers(300, 699), text(MAX_TEXT)
    ),
    AttrType.ICMP: st.builds(
        IcmpValue, st.integers(0, 0x1FF), st.integers(0, 0x7F), st.integers(0, 0xFFFFFFFF)
    ),
    AttrType.PRIORITY: st.integers(0, 0xFFFFFFFF),
    AttrType.USE_CANDIDATE: st.none(),
    AttrType.ICE_CONTROLLED: st.integers(0, (1 << 64) - 1),
    AttrType.ICE_CONTROLLING: st.integers(0, (1 << 64) - 1),
}

ATTRIBUTE = st.sampled_from(sorted(VALUES)).flatmap(
    lambda kind: st.tuples(st.just(kind), VALUES[kind])
)


def test_every_registered_attribute_has_a_strategy() -> None:
    assert set(VALUES) == set(BY_CODE) == set(AttrType)


@given(
    st.sampled_from(Method),
    st.sampled_from(Class),
    st.binary(min_size=12, max_size=12),
    st.lists(ATTRIBUTE, max_size=6),
)
def test_every_attribute_round_trips(
    method: Method, cls: Class, tid: bytes, attributes: list[tuple[AttrType, Any]]
) -> None:
    message = Message(method, cls, tid, list(attributes))
    data = build(message)
    assert len(data) % 4 == 0
    parsed = parse(data)
    assert parsed == message
    assert build(parsed) == data


@pytest.mark.parametrize("kind", sorted(VALUES))
def test_each_attribute_round_trips_alone(kind: AttrType) -> None:
    @given(VALUES[kind])
    def check(value: Any) -> None:
        message = Message(Method.ALLOCATE, Class.SUCCESS, TID, [(kind, value)])
        assert parse(build(message)).attributes == [(kind, value)]

    check()


# --- addresses (RFC 8489 §14.1, §14.2) -----------------------------------------------


def test_xor_mapped_ipv4_golden() -> None:
    message = Message(
        Method.BINDING, Class.SUCCESS, TID, [(AttrType.XOR_MAPPED_ADDRESS, ("192.0.2.1", 32853))]
    )
    assert build(message)[20:] == bytes.fromhex("002000080001a147e112a643")


def test_xor_mapped_ipv6_golden() -> None:
    value = ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    message = Message(Method.BINDING, Class.SUCCESS, TID, [(AttrType.XOR_MAPPED_ADDRESS, value)])
    assert build(message)[20:] == bytes.fromhex("002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9")


def test_plain_mapped_address_golden() -> None:
    message = Message(
        Method.BINDING, Class.SUCCESS, TID, [(AttrType.MAPPED_ADDRESS, ("192.0.2.1", 32853))]
    )
    assert build(message)[20:] == bytes.fromhex("000100080001" + "8055" + "c0000201")


def test_address_family_3_is_malformed() -> None:
    data = message_of(tlv(AttrType.MAPPED_ADDRESS, bytes.fromhex("00038055c0000201")))
    with pytest.raises(StunError, match="MAPPED-ADDRESS: malformed value"):
        parse(data)


def test_ipv4_address_with_ipv6_length_is_malformed() -> None:
    data = message_of(tlv(AttrType.MAPPED_ADDRESS, bytes.fromhex("00018055c0000201") + bytes(4)))
    with pytest.raises(StunError, match="MAPPED-ADDRESS: 4 unexpected bytes at the end"):
        parse(data)


def test_address_that_is_not_an_ip_is_a_build_error() -> None:
    message = Message(
        Method.BINDING, Class.SUCCESS, TID, [(AttrType.XOR_MAPPED_ADDRESS, ("host", 1))]
    )
    with pytest.raises(StunBuildError, match="'host' is not an IP address"):
        build(message)


# --- error codes (RFC 8489 §14.8) ----------------------------------------------------


def test_error_code_golden() -> None:
    value = ErrorValue(420, "Unknown Attribute")
    message = Message(Method.BINDING, Class.ERROR, TID, [(AttrType.ERROR_CODE, value)])
    reason = b"Unknown Attribute"
    assert build(message)[20:] == tlv(AttrType.ERROR_CODE, bytes.fromhex("00000414") + reason)


def test_error_code_reserved_bits_are_ignored() -> None:
    data = message_of(tlv(AttrType.ERROR_CODE, bytes.fromhex("fffffc04") + b"Bad"))
    assert parse(data).get(AttrType.ERROR_CODE) == ErrorValue(404, "Bad")


@pytest.mark.parametrize(
    ("head", "match"),
    [
        ("00000204", "code 204 is outside 300..699"),
        ("00000700", "code 700 is outside 300..699"),
        ("00000364", "number 100 is over 99"),
    ],
)
def test_error_code_out_of_range_is_malformed(head: str, match: str) -> None:
    with pytest.raises(StunError, match=match):
        parse(message_of(tlv(AttrType.ERROR_CODE, bytes.fromhex(head))))


def test_error_code_build_checks_the_range() -> None:
    message = Message(Method.BINDING, Class.ERROR, TID, [(AttrType.ERROR_CODE, (200, "OK"))])
    with pytest.raises(StunBuildError, match=r"code must be 300\.\.699"):
        build(message)


def test_error_reason_over_763_bytes_is_oversized() -> None:
    data = message_of(tlv(AttrType.ERROR_CODE, bytes.fromhex("00000400") + b"x" * 764))
    with pytest.raises(StunOversized, match="ERROR-CODE reason: 764 bytes, cap 763"):
        parse(data)


# --- text and sizes ------------------------------------------------------------------


def test_username_over_the_cap() -> None:
    with pytest.raises(StunOversized, match="USERNAME: 514 bytes, cap 513"):
        parse(message_of(tlv(AttrType.USERNAME, b"u" * 514)))
    message = Message(Method.BINDING, Class.REQUEST, TID, [(AttrType.USERNAME, "u" * 514)])
    with pytest.raises(StunBuildError, match="USERNAME: 514 bytes, cap 513"):
        build(message)


def test_invalid_utf8_is_malformed() -> None:
    with pytest.raises(StunError, match="SOFTWARE: invalid UTF-8 at byte 1"):
        parse(message_of(tlv(AttrType.SOFTWARE, b"a\xff")))


@pytest.mark.parametrize(
    ("kind", "size"),
    [
        (AttrType.MESSAGE_INTEGRITY, 19),
        (AttrType.MESSAGE_INTEGRITY_SHA256, 12),
        (AttrType.MESSAGE_INTEGRITY_SHA256, 36),
        (AttrType.USERHASH, 31),
        (AttrType.RESERVATION_TOKEN, 4),
    ],
)
def test_fixed_sizes_are_checked(kind: AttrType, size: int) -> None:
    with pytest.raises(StunError, match=f"{size} bytes, expected"):
        parse(message_of(tlv(kind, bytes(size))))


def test_dont_fragment_with_a_value_is_malformed() -> None:
    with pytest.raises(StunError, match="DONT-FRAGMENT: 4 bytes, expected 0"):
        parse(message_of(tlv(AttrType.DONT_FRAGMENT, bytes(4))))


def test_use_candidate_with_a_value_is_malformed() -> None:
    with pytest.raises(StunError, match="USE-CANDIDATE: 4 bytes, expected 0"):
        parse(message_of(tlv(AttrType.USE_CANDIDATE, bytes(4))))


# --- ICE (RFC 8445 §16.1) -------------------------------------------------------------


def test_ice_attributes_golden() -> None:
    prflx = (110 << 24) + (65535 << 8) + 255  # peer-reflexive priority, RFC 8445 §5.1.2.1
    attributes: list[tuple[int, Any]] = [
        (AttrType.PRIORITY, prflx),
        (AttrType.USE_CANDIDATE, None),
        (AttrType.ICE_CONTROLLING, 0x0123456789ABCDEF),
        (AttrType.ICE_CONTROLLED, 0xFEDCBA9876543210),
    ]
    expected = bytes.fromhex(
        "0024 0004 6effffff"  # PRIORITY, u32
        "0025 0000"  # USE-CANDIDATE, no value
        "802a 0008 0123456789abcdef"  # ICE-CONTROLLING, u64 tie-breaker
        "8029 0008 fedcba9876543210"  # ICE-CONTROLLED, u64 tie-breaker
    )
    data = build(Message(Method.BINDING, Class.REQUEST, TID, attributes))
    assert data[20:] == expected
    assert parse(data).attributes == attributes


def test_ice_attributes_are_understood() -> None:
    kinds = [AttrType.PRIORITY, AttrType.USE_CANDIDATE]
    data = message_of(tlv(kinds[0], bytes(4)), tlv(kinds[1], b""))
    assert parse(data).unknown_required == []


@pytest.mark.parametrize(
    ("kind", "size", "match"),
    [
        (AttrType.PRIORITY, 8, "PRIORITY: 4 unexpected bytes at the end"),
        (AttrType.PRIORITY, 2, "PRIORITY: malformed value"),
        (AttrType.ICE_CONTROLLED, 4, "ICE-CONTROLLED: malformed value"),
        (AttrType.ICE_CONTROLLING, 12, "ICE-CONTROLLING: 4 unexpected bytes at the end"),
    ],
)
def test_ice_number_sizes_are_checked(kind: AttrType, size: int, match: str) -> None:
    with pytest.raises(StunError, match=match):
        parse(message_of(tlv(kind, bytes(size))))


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (AttrType.PRIORITY, 1 << 32),
        (AttrType.PRIORITY, -1),
        (AttrType.ICE_CONTROLLING, 1 << 64),
        (AttrType.ICE_CONTROLLED, True),
        (AttrType.USE_CANDIDATE, 0),
    ],
)
def test_ice_values_are_checked_on_build(kind: AttrType, value: Any) -> None:
    with pytest.raises(StunBuildError, match=kind.name.replace("_", "-")):
        build(Message(Method.BINDING, Class.REQUEST, TID, [(kind, value)]))


def test_unknown_attributes_odd_length_is_malformed() -> None:
    with pytest.raises(StunError, match="UNKNOWN-ATTRIBUTES: 1 unexpected bytes"):
        parse(message_of(tlv(AttrType.UNKNOWN_ATTRIBUTES, b"\x00\x01\x00")))


def test_password_algorithms_golden() -> None:
    value = [PasswordAlgorithm(Algorithm.SHA256, b""), PasswordAlgorithm(Algorithm.MD5, b"\x01")]
    message = Message(Method.BINDING, Class.ERROR, TID, [(AttrType.PASSWORD_ALGORITHMS, value)])
    body = bytes.fromhex("00020000" + "0001000101000000")
    assert build(message)[20:] == tlv(AttrType.PASSWORD_ALGORITHMS, body)


# --- unknown attributes (RFC 8489 §14) ------------------------------------------------


def test_unknown_optional_attribute_is_kept_raw() -> None:
    data = message_of(tlv(0x8123, b"abcde", padding=b"\x01\x02\x03"))
    message = parse(data)
    assert message.attributes == [(0x8123, b"abcde")]
    assert message.unknown_required == []
    assert build(message) == data


def test_unknown_required_attribute_is_reported() -> None:
    data = message_of(tlv(0x0123, b"x"), tlv(AttrType.SOFTWARE, b"s"), tlv(0x7FFF, b""))
    assert parse(data).unknown_required == [0x0123, 0x7FFF]


def test_unknown_type_needs_raw_bytes_to_build() -> None:
    message = Message(Method.BINDING, Class.REQUEST, TID, [(0x0123, "text")])
    with pytest.raises(StunBuildError, match="0x0123: unknown type takes raw bytes"):
        build(message)


def test_fresh_messages_pad_with_zeros() -> None:
    message = Message(Method.BINDING, Class.REQUEST, TID, [(AttrType.SOFTWARE, "abc")])
    assert build(message)[20:] == tlv(AttrType.SOFTWARE, b"abc", b"\x00")


# --- header and framing errors (RFC 8489 §5, §6.3) -----------------------------------

VALID = message_of(tlv(AttrType.SOFTWARE, b"edge"), tlv(AttrType.LIFETIME, bytes(4)))


@pytest.mark.parametrize("cut", range(len(VALID)))
def test_every_truncation_is_truncated(cut: int) -> None:
    with pytest.raises(StunTruncated):
        parse(VALID[:cut])


def test_trailing_bytes_are_malformed() -> None:
    with pytest.raises(StunError, match="length 16, 20 bytes present"):
        parse(VALID + bytes(4))


def test_more_than_a_stun_message_is_oversized() -> None:
    with pytest.raises(StunOversized, match=f"cap {MAX_MESSAGE}"):
        parse(header(0xFFFC) + bytes(0x10000))


def test_attribute_longer_than_the_body_is_truncated() -> None:
    data = header(8) + struct.pack(">HH", AttrType.SOFTWARE, 5) + b"abcd"
    with pytest.raises(StunTruncated, match="SOFTWARE: length 5, 4 bytes left"):
        parse(data)


def test_first_bits_must_be_zero() -> None:
    with pytest.raises(NotStun, match="first two bits"):
        parse(header(0, message_type=0x8001))


def test_magic_cookie_must_match() -> None:
    with pytest.raises(NotStun, match="magic cookie 0x2112a443"):
        parse(header(0, cookie=bytes.fromhex("2112a443")))


def test_length_must_be_a_multiple_of_4() -> None:
    with pytest.raises(StunError, match="length 2 is not a multiple of 4"):
        parse(header(2) + bytes(2))


def test_attribute_count_is_capped() -> None:
    many = message_of(*[tlv(AttrType.DONT_FRAGMENT, b"")] * (MAX_ATTRIBUTES + 1))
    with pytest.raises(StunOversized, match=f"more than {MAX_ATTRIBUTES} attributes"):
        parse(many)
    assert len(parse(message_of(*[tlv(AttrType.DONT_FRAGMENT, b"")] * MAX_ATTRIBUTES)).attributes)
    message = Message(
        Method.BINDING, Class.REQUEST, TID, [(AttrType.DONT_FRAGMENT, None)] * (MAX_ATTRIBUTES + 1)
    )
    with pytest.raises(StunBuildError, match=f"cap {MAX_ATTRIBUTES}"):
        build(message)


def test_transaction_id_must_be_12_bytes() -> None:
    with pytest.raises(StunBuildError, match="transaction id must be 12 bytes"):
        build(Message(Method.BINDING, Class.REQUEST, bytes(11)))


def test_errors_carry_wire_codes() -> None:
    assert StunTruncated("x").code is ErrorCode.TRUNCATED
    assert StunOversized("x").code is ErrorCode.OVERSIZED
    assert NotStun("x").code is ErrorCode.BAD_MAGIC
    assert IntegrityError("x").code is ErrorCode.BAD_MAC
    assert StunError("x").code is ErrorCode.MALFORMED


# --- integrity and fingerprint (RFC 8489 §14.5-§14.7) ---------------------------------

KEY = short_term_key("VOkJxbRl1RmTxUk/WvJxBt")


def signed(*, sha256: bool = False, fingerprint: bool = True) -> bytes:
    message = Message(
        Method.BINDING,
        Class.REQUEST,
        TID,
        [(AttrType.USERNAME, "alice:bob"), (AttrType.SOFTWARE, "edge")],
    )
    message.add_integrity(KEY, sha256=sha256)
    if fingerprint:
        message.add_fingerprint()
    return build(message)


@pytest.mark.parametrize("sha256", [False, True])
def test_integrity_and_fingerprint_verify(sha256: bool) -> None:
    data = signed(sha256=sha256)
    check_integrity(data, KEY)
    check_fingerprint(data)


def test_both_macs_verify_together() -> None:
    message = Message(Method.BINDING, Class.REQUEST, TID, [(AttrType.USERNAME, "a")])
    message.add_integrity(KEY)
    message.add_integrity(KEY, sha256=True)
    data = build(message)
    check_integrity(data, KEY)
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(IntegrityError, match="MESSAGE-INTEGRITY-SHA256 does not verify"):
        check_integrity(tampered, KEY)


@pytest.mark.parametrize("sha256", [False, True])
@given(st.data())
def test_a_flipped_bit_fails_integrity(sha256: bool, data: st.DataObject) -> None:
    clean = signed(sha256=sha256, fingerprint=False)
    # Bits of the transaction id and of the attribute values, before the MAC.
    value_bits = [*range(8 * 8, 20 * 8), *range(24 * 8, 33 * 8), *range(40 * 8, 44 * 8)]
    bit = data.draw(st.sampled_from(value_bits))
    flipped = bytearray(clean)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(IntegrityError, match="does not verify"):
        check_integrity(bytes(flipped), KEY)


def test_a_flipped_bit_fails_the_fingerprint() -> None:
    data = bytearray(signed())
    data[10] ^= 0x80
    with pytest.raises(FingerprintError, match="does not match"):
        check_fingerprint(bytes(data))


def test_fingerprint_must_be_last() -> None:
    message = Message(Method.BINDING, Class.REQUEST, TID)
    message.add_fingerprint()
    message.attributes.append((AttrType.SOFTWARE, "late"))
    with pytest.raises(FingerprintError, match="not the last attribute"):
        check_fingerprint(build(message))


def test_missing_integrity_is_refused() -> None:
    with pytest.raises(IntegrityError, match="no MESSAGE-INTEGRITY"):
        check_integrity(build(Message(Method.BINDING, Class.REQUEST, TID)), KEY)


def test_integrity_check_reports_malformed_bytes() -> None:
    with pytest.raises(StunTruncated):
        check_integrity(b"\x00\x01", KEY)


# --- keys (RFC 8489 §9, RFC 8265) ----------------------------------------------------


def test_long_term_key_golden() -> None:
    # MD5("user:realm:pass")
    assert long_term_key("user", "realm", "pass").hex() == "8493fbc53ba582fb4c044c456bdc40eb"


def test_opaque_string_maps_spaces_and_normalises() -> None:
    assert opaque_string("a\u00a0b") == "a b"
    assert opaque_string("e\u0301") == "\u00e9"
    assert opaque_string("VOkJxbRl1RmTxUk/WvJxBt") == "VOkJxbRl1RmTxUk/WvJxBt"


@pytest.mark.parametrize("bad", ["", "tab\there"])
def test_opaque_string_refuses(bad: str) -> None:
    with pytest.raises(CredentialError):
        opaque_string(bad)


def test_unknown_password_algorithm() -> None:
    with pytest.raises(CredentialError, match="unknown password algorithm 7"):
        long_term_key("u", "r", "p", 7)


# --- ChannelData (RFC 8656 §12.4) and classify (RFC 7983) ----------------------------


def test_channel_data_golden() -> None:
    message = ChannelData(0x4001, b"abc")
    assert build_channel_data(message) == bytes.fromhex("40010003616263")
    assert build_channel_data(message, stream=True) == bytes.fromhex("4001000361626300")
    assert parse_channel_data(bytes.fromhex("4001000361626300")) == message


@given(st.integers(0x4000, 0x4FFF), st.binary(max_size=100), st.booleans())
def test_channel_data_round_trip(channel: int, payload: bytes, stream: bool) -> None:
    message = ChannelData(channel, payload)
    data = build_channel_data(message, stream=stream)
    assert parse_channel_data(data) == message
    assert len(data) % 4 == 0 or not stream


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"\x40\x00\x00", StunTruncated, "3 bytes, need 4"),
        (b"\x50\x00\x00\x00", StunError, "channel 0x5000 outside"),
        (b"\x3f\xff\x00\x00", StunError, "channel 0x3fff outside"),
        (b"\x40\x00\x00\x05abcd", StunTruncated, "length 5, 4 bytes present"),
        (b"\x40\x00\x00\x00abcd", StunError, "4 bytes after the data"),
    ],
)
def test_channel_data_errors(data: bytes, error: type[StunError], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_channel_data(data)


def test_channel_number_is_checked_on_build() -> None:
    with pytest.raises(StunBuildError, match="outside 0x4000-0x4FFF"):
        build_channel_data(ChannelData(0x5000, b""))


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (0, Kind.STUN),
        (3, Kind.STUN),
        (4, Kind.UNKNOWN),
        (16, Kind.ZRTP),
        (20, Kind.DTLS),
        (63, Kind.DTLS),
        (64, Kind.CHANNEL_DATA),
        (79, Kind.CHANNEL_DATA),
        (80, Kind.UNKNOWN),
        (128, Kind.RTP),
        (191, Kind.RTP),
        (0xED, Kind.EDGE),
        (0xFF, Kind.UNKNOWN),
    ],
)
def test_classify(first: int, kind: Kind) -> None:
    assert classify(bytes([first, 0, 0, 0])) is kind


def test_classify_empty() -> None:
    assert classify(b"") is Kind.UNKNOWN


def test_classify_built_messages() -> None:
    assert classify(VALID) is Kind.STUN
    assert classify(build_channel_data(ChannelData(0x4FFF, b"x"))) is Kind.CHANNEL_DATA


def test_frame_size_over_a_stream() -> None:
    channel = build_channel_data(ChannelData(0x4001, b"abcde"), stream=True)
    stream = VALID + channel + VALID
    assert frame_size(stream) == len(VALID)
    assert frame_size(stream[len(VALID) :]) == len(channel) == 12
    assert frame_size(VALID[:3]) is None


def test_frame_size_refuses_other_protocols_and_big_frames() -> None:
    with pytest.raises(StunError, match="first byte 0xed is neither STUN nor ChannelData"):
        frame_size(b"\xed\x9e\x00\x00")
    with pytest.raises(StunOversized, match="a 1020-byte frame, cap 1000"):
        frame_size(header(1000), limit=1000)

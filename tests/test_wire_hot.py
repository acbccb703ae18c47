"""The struct fast paths agree with the construct declarations, in bytes and in errors."""

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.wire import hot
from edge.wire.codes import MAGIC, PROTOCOL_VERSION, MsgType
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
from edge.wire.messages import BODY_CAPS, Codec, HeaderFlag, decode, encode

EQUIVALENCE = settings(max_examples=100, deadline=None)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, (1 << 64) - 1)
ciphertexts = st.one_of(st.binary(max_size=300), st.just(b"\x01" * hot.TRANSPORT_MAX_CIPHERTEXT))
payloads = st.one_of(st.binary(max_size=300), st.just(b"\x02" * 1200))
codecs = st.sampled_from(list(Codec))


def transport_body(index: int, counter: int, ciphertext: bytes) -> dict[str, Any]:
    return {"receiver_index": index, "counter": counter, "ciphertext": ciphertext}


def media_body(
    stream_id: int, codec: Codec, flags: int, sequence: int, timestamp: int, payload: bytes
) -> dict[str, Any]:
    return {
        "stream_id": stream_id,
        "codec": codec,
        "flags": flags,
        "sequence": sequence,
        "timestamp": timestamp,
        "payload": payload,
    }


@EQUIVALENCE
@given(u32, u64, ciphertexts)
def test_pack_transport_equals_construct(index: int, counter: int, ciphertext: bytes) -> None:
    packed = hot.pack_transport(index, counter, ciphertext)
    assert packed == encode(MsgType.TRANSPORT, transport_body(index, counter, ciphertext))
    assert hot.unpack_transport(packed) == (index, counter, ciphertext)
    body = decode(packed).body
    assert (body["receiver_index"], body["counter"], body["ciphertext"]) == (
        index,
        counter,
        ciphertext,
    )


@EQUIVALENCE
@given(u8, codecs, u8, u16, u32, payloads)
def test_pack_media_equals_construct(
    stream_id: int, codec: Codec, flags: int, sequence: int, timestamp: int, payload: bytes
) -> None:
    fields = (stream_id, codec, flags, sequence, timestamp, payload)
    packed = hot.pack_media(*fields)
    assert packed == encode(MsgType.MEDIA_FRAME, media_body(*fields))
    frame = hot.unpack_media(packed)
    assert frame == fields
    assert frame.codec is codec
    assert frame._asdict() == decode(packed).body


# ---------------------------------------------------------------- same errors for bad input

_KNOWN = {int(t) for t in MsgType}


def _other_known_type(data: bytes, expected: MsgType) -> bool:
    return (
        len(data) >= 8
        and data[:2] == MAGIC
        and data[2] == PROTOCOL_VERSION
        and data[3] in _KNOWN
        and data[3] != expected
    )


def construct_transport(data: bytes) -> tuple[int, int, bytes]:
    """The contract for unpack_transport, stated with decode()."""
    if _other_known_type(data, MsgType.TRANSPORT):
        raise Malformed("another type")
    body = decode(data).body
    return body["receiver_index"], body["counter"], body["ciphertext"]


def construct_media(data: bytes) -> tuple[Any, ...]:
    """The contract for unpack_media, stated with decode()."""
    if _other_known_type(data, MsgType.MEDIA_FRAME):
        raise Malformed("another type")
    return tuple(decode(data).body.values())


def outcome(parse: Callable[[bytes], object], data: bytes) -> tuple[str, object]:
    try:
        return "ok", parse(data)
    except WireError as exc:
        return "error", type(exc)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(valid))
    kind = draw(st.sampled_from(["cut", "extend", "length", "version", "type", "flip", "set"]))
    if kind == "cut":
        del data[draw(st.integers(0, len(data))) :]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=8))
    elif kind == "length":
        data[6:8] = struct.pack(">H", draw(u16))
    elif kind == "version":
        data[2] = draw(u8)
    elif kind == "type":
        data[3] = draw(u8)
    elif kind == "flip":
        position = draw(st.integers(0, len(data) * 8 - 1))
        data[position // 8] ^= 1 << (position % 8)
    else:
        data[draw(st.integers(0, len(data) - 1))] = draw(u8)
    return bytes(data)


valid_transports = st.builds(hot.pack_transport, u32, u64, st.binary(max_size=40))
valid_media = st.builds(hot.pack_media, u8, codecs, u8, u16, u32, st.binary(max_size=40))


@EQUIVALENCE
@given(mutated(valid_transports))
def test_unpack_transport_fails_like_construct(data: bytes) -> None:
    assert outcome(hot.unpack_transport, data) == outcome(construct_transport, data)


@EQUIVALENCE
@given(mutated(valid_media))
def test_unpack_media_fails_like_construct(data: bytes) -> None:
    fast = outcome(hot.unpack_media, data)
    slow = outcome(construct_media, data)
    if fast[0] == "ok":
        assert isinstance(fast[1], tuple)
        fast = ("ok", tuple(fast[1]))
    assert fast == slow


@EQUIVALENCE
@given(st.one_of(mutated(valid_transports), mutated(valid_media)))
def test_peek_type_agrees_with_decode_on_the_header(data: bytes) -> None:
    header_errors = (BadMagic, UnsupportedVersion, UnknownType)
    try:
        expected: tuple[str, object] = ("ok", decode(data).type)
    except header_errors as exc:
        expected = ("error", type(exc))
    except Truncated:
        expected = ("error", Truncated)
        if len(data) >= 8:
            expected = ("ok", MsgType(data[3]))  # the body, not the header, is short
    except WireError:
        expected = ("ok", MsgType(data[3]))  # the header was fine; the body was not
    assert outcome(hot.peek_type, data) == expected


# ---------------------------------------------------------------- specific cases


def test_caps_match_the_declarations() -> None:
    assert BODY_CAPS[MsgType.TRANSPORT] == hot.TRANSPORT_MAX_BODY
    assert BODY_CAPS[MsgType.MEDIA_FRAME] == hot.MEDIA_MAX_BODY


def test_wrong_known_type_is_malformed_unknown_type_is_unknown() -> None:
    ringing = encode(MsgType.CALL_RINGING, {"call_id": bytes(16)})
    with pytest.raises(Malformed, match="expected TRANSPORT, got CALL_RINGING"):
        hot.unpack_transport(ringing)
    with pytest.raises(Malformed, match="expected MEDIA_FRAME"):
        hot.unpack_media(ringing)
    unknown = ringing[:3] + b"\x99" + ringing[4:]
    with pytest.raises(UnknownType):
        hot.unpack_transport(unknown)


def test_short_and_foreign_inputs() -> None:
    packed = hot.pack_transport(1, 2, b"abc")
    with pytest.raises(Truncated):
        hot.unpack_transport(packed[:7])
    with pytest.raises(Truncated):
        hot.unpack_transport(packed[:-1])
    with pytest.raises(BadMagic):
        hot.unpack_transport(b"\x00\x01" + packed[2:])
    with pytest.raises(UnsupportedVersion, match="version 2"):
        hot.unpack_media(hot.pack_media(0, Codec.PCMU, 0, 0, 0, b"")[:2] + b"\x02" + bytes(15))


def test_unknown_codec_is_malformed() -> None:
    frame = bytearray(hot.pack_media(0, Codec.OPUS, 0, 0, 0, b"x"))
    frame[9] = 0x7F
    with pytest.raises(Malformed, match="codec"):
        hot.unpack_media(bytes(frame))
    with pytest.raises(Malformed, match="codec"):
        decode(bytes(frame))


def test_reserved_header_flags_are_ignored() -> None:
    packed = bytearray(hot.pack_transport(1, 2, b""))
    packed[4:6] = b"\xff\xff"
    assert hot.unpack_transport(bytes(packed)) == (1, 2, b"")
    assert hot.unpack_header(bytes(packed)) == (MsgType.TRANSPORT, HeaderFlag.ACK_REQUESTED, 12)


def test_unpack_header_is_enough_for_framing() -> None:
    message = encode(MsgType.KEEPALIVE, {"nonce": 1, "sent_ms": 2, "echo": True})
    msg_type, flags, length = hot.unpack_header(message[:8])
    assert (msg_type, flags, length) == (MsgType.KEEPALIVE, 0, 13)
    assert hot.peek_type(message) is MsgType.KEEPALIVE


def test_pack_refuses_bad_values() -> None:
    with pytest.raises(CapExceeded):
        hot.pack_transport(0, 0, bytes(hot.TRANSPORT_MAX_CIPHERTEXT + 1))
    with pytest.raises(CapExceeded):
        hot.pack_media(0, Codec.OPUS, 0, 0, 0, bytes(1201))
    with pytest.raises(BuildError):
        hot.pack_transport(-1, 0, b"")
    with pytest.raises(BuildError):
        hot.pack_transport(0, 1 << 64, b"")
    with pytest.raises(BuildError, match="not a Codec"):
        hot.pack_media(0, 9, 0, 0, 0, b"")  # type: ignore[arg-type]
    with pytest.raises(BuildError):
        hot.pack_media(0, Codec.OPUS, 256, 0, 0, b"")


def test_oversized_length_field() -> None:
    packed = bytearray(hot.pack_media(0, Codec.OPUS, 0, 0, 0, bytes(1200)))
    packed[6:8] = struct.pack(">H", 1210)
    packed += b"\0"
    with pytest.raises(Oversized):
        hot.unpack_media(bytes(packed))
    with pytest.raises(Oversized):
        decode(bytes(packed))

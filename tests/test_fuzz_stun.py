"""Any input to the STUN parsers either parses or raises one of our own errors.

Random bytes, random attributes behind a valid STUN header, and the RFC 5769 /
RFC 8489 vectors with bits flipped, cut short, extended or with a length field
edited, fed to parse(), the integrity and fingerprint checks, the ChannelData
parser and classify(). A message that does parse must rebuild to bytes that
parse to the same message.
Examples per test: EDGE_FUZZ_EXAMPLES (default 300); ``make fuzz`` runs many more.
"""

import contextlib
import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.stun.attributes import BY_CODE
from edge.stun.channel import Kind, classify, frame_size, parse_channel_data
from edge.stun.codec import build, check_fingerprint, check_integrity, parse
from edge.stun.errors import StunError

FUZZ = settings(
    max_examples=int(os.environ.get("EDGE_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VECTORS = [
    bytes.fromhex(vector["hex"])
    for vector in json.loads(
        (Path(__file__).parent / "vectors" / "stun-rfc5769.json").read_text(encoding="utf-8")
    )["vectors"]
]

KEY = b"VOkJxbRl1RmTxUk/WvJxBt"


def feed_everything(data: bytes) -> None:
    """Every parser either accepts ``data`` or raises a StunError; nothing else."""
    with contextlib.suppress(StunError):
        message = parse(data)
        assert parse(build(message)) == message
    with contextlib.suppress(StunError):
        check_integrity(data, KEY)
    with contextlib.suppress(StunError):
        check_fingerprint(data)
    with contextlib.suppress(StunError):
        parse_channel_data(data)
    with contextlib.suppress(StunError):
        size = frame_size(data)
        assert size is None or size >= 4
    assert isinstance(classify(data), Kind)


@st.composite
def attributes_behind_a_header(draw: st.DrawFn) -> bytes:
    """Known and unknown attribute types with random values, framed correctly."""
    kinds = st.one_of(st.sampled_from(sorted(BY_CODE)), st.integers(0, 0xFFFF))
    body = b""
    for _ in range(draw(st.integers(0, 6))):
        value = draw(st.binary(max_size=40))
        pad = draw(st.binary(min_size=-len(value) % 4, max_size=-len(value) % 4))
        body += struct.pack(">HH", draw(kinds), len(value)) + value + pad
    message_type = draw(st.integers(0, 0x3FFF))
    tid = draw(st.binary(min_size=12, max_size=12))
    return struct.pack(">HHI", message_type, len(body), 0x2112A442) + tid + body


@st.composite
def mutated_vectors(draw: st.DrawFn) -> bytes:
    """A vector with one change: a bit flipped, cut, extended, or a length edited."""
    data = bytearray(draw(st.sampled_from(VECTORS)))
    change = draw(st.sampled_from(["flip", "cut", "extend", "length", "byte"]))
    if change == "flip":
        bit = draw(st.integers(0, 8 * len(data) - 1))
        data[bit // 8] ^= 1 << (bit % 8)
    elif change == "cut":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif change == "extend":
        data += draw(st.binary(min_size=1, max_size=40))
    elif change == "length":
        # Either the header's length or an attribute's (at a 4-byte boundary).
        at = draw(st.sampled_from([2, *range(22, len(data) - 2, 4)]))
        data[at : at + 2] = struct.pack(">H", draw(st.integers(0, 0xFFFF)))
    else:
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.mark.fuzz
@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    feed_everything(data)


@pytest.mark.fuzz
@FUZZ
@given(attributes_behind_a_header())
def test_random_attributes_behind_a_valid_header(data: bytes) -> None:
    feed_everything(data)


@pytest.mark.fuzz
@FUZZ
@given(mutated_vectors())
def test_mutated_vectors(data: bytes) -> None:
    feed_everything(data)


@pytest.mark.fuzz
@FUZZ
@given(st.integers(0x40, 0x4F), st.binary(max_size=80))
def test_random_channel_data(first: int, rest: bytes) -> None:
    feed_everything(bytes([first]) + rest)

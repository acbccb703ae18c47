"""The RFC 5769 STUN test vectors and RFC 8489 appendix B.1, from tests/vectors.

Each vector parses, rebuilds byte for byte (padding bytes included), and its
MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT verify with the published
credentials, while a wrong password or a missing FINGERPRINT is refused.
"""

import json
from pathlib import Path
from typing import Any

import pytest

from edge.stun.attributes import Algorithm, AttrType
from edge.stun.codec import (
    Class,
    Method,
    build,
    check_fingerprint,
    check_integrity,
    long_term_key,
    parse,
    short_term_key,
    userhash,
)
from edge.stun.errors import FingerprintError, IntegrityError

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "stun-rfc5769.json").read_text(encoding="utf-8")
)["vectors"]

SHORT_TERM = [v for v in VECTORS if v["credential"] == "short-term"]
LONG_TERM = [v for v in VECTORS if v["credential"] == "long-term"]


def raw(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["hex"])


def key_for(vector: dict[str, Any]) -> bytes:
    if vector["credential"] == "short-term":
        return short_term_key(vector["password"])
    password = vector.get("password_after_saslprep") or vector["password_after_opaquestring"]
    return long_term_key(vector["username"], vector["realm"], password)


def test_the_file_holds_every_vector() -> None:
    names = {v["name"] for v in VECTORS}
    assert names == {
        "sample_request",
        "sample_ipv4_response",
        "sample_ipv6_response",
        "sample_request_long_term_auth",
        "sample_request_long_term_auth_sha256",
    }


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_rebuilds_byte_for_byte(vector: dict[str, Any]) -> None:
    assert build(parse(raw(vector))) == raw(vector)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_integrity_verifies(vector: dict[str, Any]) -> None:
    check_integrity(raw(vector), key_for(vector))


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_wrong_password_is_refused(vector: dict[str, Any]) -> None:
    with pytest.raises(IntegrityError, match="does not verify"):
        check_integrity(raw(vector), short_term_key("not the password"))


@pytest.mark.parametrize("vector", SHORT_TERM, ids=lambda v: v["name"])
def test_fingerprint_verifies(vector: dict[str, Any]) -> None:
    check_fingerprint(raw(vector))


@pytest.mark.parametrize("vector", LONG_TERM, ids=lambda v: v["name"])
def test_no_fingerprint_is_refused(vector: dict[str, Any]) -> None:
    with pytest.raises(FingerprintError, match="not the last attribute"):
        check_fingerprint(raw(vector))


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_header(vector: dict[str, Any]) -> None:
    message = parse(raw(vector))
    expected = Class.REQUEST if "request" in vector["name"] else Class.SUCCESS
    assert (message.method, message.cls) == (Method.BINDING, expected)
    assert message.transaction_id == raw(vector)[8:20]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_text_attributes_match_the_file(vector: dict[str, Any]) -> None:
    message = parse(raw(vector))
    assert message.get(AttrType.SOFTWARE) == vector.get("software")
    assert message.get(AttrType.REALM) == vector.get("realm")
    assert message.get(AttrType.NONCE) == vector.get("nonce")


@pytest.mark.parametrize("vector", [v for v in VECTORS if "mapped_address" in v])
def test_mapped_address_matches_the_file(vector: dict[str, Any]) -> None:
    address = parse(raw(vector)).get(AttrType.XOR_MAPPED_ADDRESS)
    assert address == (vector["mapped_address"], vector["mapped_port"])


def test_sample_request_username_and_ice_attributes() -> None:
    message = parse(raw(VECTORS[0]))
    assert message.get(AttrType.USERNAME) == VECTORS[0]["username"]
    # PRIORITY and ICE-CONTROLLED, RFC 8445 §16.1, decoded.
    assert message.get(AttrType.PRIORITY) == 0x6E0001FF
    assert message.get(AttrType.ICE_CONTROLLED) == 0x932FF9B151263B36
    assert message.unknown_required == []


def test_sample_request_keeps_its_space_padding() -> None:
    message = parse(raw(VECTORS[0]))
    username_index = [kind for kind, _ in message.attributes].index(AttrType.USERNAME)
    assert message.padding == {username_index: b"   "}


def test_long_term_username_is_carried_in_utf8() -> None:
    vector = VECTORS[3]
    assert parse(raw(vector)).get(AttrType.USERNAME) == vector["username"]


def test_rfc8489_b1_userhash_and_sha256_integrity() -> None:
    vector = VECTORS[4]
    message = parse(raw(vector))
    assert message.get(AttrType.USERHASH) == userhash(vector["username"], vector["realm"])
    assert message.get(AttrType.MESSAGE_INTEGRITY) is None
    assert len(message.get(AttrType.MESSAGE_INTEGRITY_SHA256)) == 32
    # No PASSWORD-ALGORITHM in the message: the key is the default MD5 one (§9.2.2).
    password = vector["password_after_opaquestring"]
    sha_key = long_term_key(vector["username"], vector["realm"], password, Algorithm.SHA256)
    with pytest.raises(IntegrityError):
        check_integrity(raw(vector), sha_key)

"""TURN REST credentials: coturn's use-auth-secret scheme, issued and checked."""

import base64
import hashlib
import hmac
import re

import pytest

from edge.errors import LocalError
from edge.login.relay import (
    TTL_MAX,
    RelayAuthError,
    RelayCredentials,
    check_relay_credentials,
    relay_credentials,
)
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import decode, encode

SECRET = b"edge-relay-secret"
NOW = 1_699_996_400
EXPIRES = 1_700_000_000  # NOW + 3600

# HMAC-SHA1 under SECRET of "1700000000:alice", base64: computed once with
# `openssl dgst -sha1 -hmac edge-relay-secret -binary | base64`, a separate implementation.
VECTOR_PASSWORD = "f6l3KxzPqM5SxH5E7iiFpBJT7EU="


def test_vector() -> None:
    creds = relay_credentials(SECRET, "alice", NOW, 3600)
    digest = hmac.new(SECRET, b"1700000000:alice", hashlib.sha1).digest()
    assert creds == RelayCredentials(
        username="1700000000:alice",
        password=base64.b64encode(digest).decode("ascii"),
        expires=EXPIRES,
    )
    assert creds.password == VECTOR_PASSWORD


def test_structure_is_what_coturn_expects() -> None:
    # use-auth-secret: user "timestamp:userid", password base64(hmac(secret, user)),
    # the timestamp being the expiry.
    creds = relay_credentials(SECRET, "alice", NOW, 600)
    assert re.fullmatch(r"[0-9]+:alice", creds.username)
    assert int(creds.username.split(":")[0]) == creds.expires == NOW + 600
    assert re.fullmatch(r"[A-Za-z0-9+/]{27}=", creds.password)
    assert len(base64.b64decode(creds.password, validate=True)) == hashlib.sha1().digest_size


def test_credentials_fit_the_wire_message() -> None:
    creds = relay_credentials(SECRET, "a" * 64, NOW, TTL_MAX)
    body = {
        "username": creds.username,
        "password": creds.password,
        "expires": creds.expires,
        "uris": ["turn:198.18.0.20:3478?transport=udp", "turn:198.18.0.20:3478?transport=tcp"],
    }
    assert decode(encode(MsgType.RELAY_CREDENTIALS, body)).body == body


def test_check_returns_the_user_until_expiry() -> None:
    assert check_relay_credentials(SECRET, "1700000000:alice", VECTOR_PASSWORD, NOW) == "alice"
    assert check_relay_credentials(SECRET, "1700000000:alice", VECTOR_PASSWORD, EXPIRES) == "alice"


def test_expired() -> None:
    with pytest.raises(RelayAuthError, match="expired at 1700000000") as caught:
        check_relay_credentials(SECRET, "1700000000:alice", VECTOR_PASSWORD, EXPIRES + 1)
    assert caught.value.code is ErrorCode.AUTH_FAILED


@pytest.mark.parametrize("user_id", ["bob", "zo\u00eb", "a:b", "12345"])
def test_round_trip(user_id: str) -> None:
    creds = relay_credentials(SECRET, user_id, NOW, 60)
    assert check_relay_credentials(SECRET, creds.username, creds.password, NOW) == user_id


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("1700000000:alice", "f6l3KxzPqM5SxH5E7iiFpBJT7EV="),  # one character changed
        ("1700000000:alice", VECTOR_PASSWORD.rstrip("=")),  # padding dropped
        ("1700000000:alice", ""),
        ("1700000000:alice", "f6l3KxzPqM5SxH5E7iiFpBJT7EU\u00e9"),  # not even ASCII
        ("1700000000:mallory", VECTOR_PASSWORD),  # moved to another user
        ("1800000000:alice", VECTOR_PASSWORD),  # lifetime stretched
    ],
)
def test_forged(username: str, password: str) -> None:
    with pytest.raises(RelayAuthError, match="wrong password"):
        check_relay_credentials(SECRET, username, password, NOW)


def test_another_secret_does_not_verify() -> None:
    with pytest.raises(RelayAuthError):
        check_relay_credentials(b"other-secret", "1700000000:alice", VECTOR_PASSWORD, NOW)


@pytest.mark.parametrize(
    "username",
    [
        "",
        "alice",
        ":alice",
        "1700000000:",
        "1700000000",
        "+1700000000:alice",
        " 1700000000:alice",
        "1700_000_000:alice",
        "\u0661\u0667:alice",  # Arabic-Indic digits, which int() would take
        "abc:alice",
        "1700000000:" + "a" * 118,  # 129 bytes
        "1700000000:\ud800",
    ],
)
def test_malformed_usernames(username: str) -> None:
    # Refused for its form, before any HMAC is computed.
    with pytest.raises(RelayAuthError, match=r"username (is not|over)"):
        check_relay_credentials(SECRET, username, VECTOR_PASSWORD, NOW)


@pytest.mark.parametrize("ttl", [0, -1, TTL_MAX + 1])
def test_ttl_out_of_range(ttl: int) -> None:
    with pytest.raises(LocalError, match="ttl"):
        relay_credentials(SECRET, "alice", NOW, ttl)


def test_ttl_bounds_are_accepted() -> None:
    assert relay_credentials(SECRET, "alice", NOW, 1).expires == NOW + 1
    assert relay_credentials(SECRET, "alice", NOW, TTL_MAX).expires == NOW + TTL_MAX


@pytest.mark.parametrize(
    ("secret", "user_id", "match"),
    [
        (b"", "alice", "secret"),
        (SECRET, "", "empty user id"),
        (SECRET, "a" * 118, "username over 128 bytes"),
    ],
)
def test_issuing_misuse(secret: bytes, user_id: str, match: str) -> None:
    with pytest.raises(LocalError, match=match):
        relay_credentials(secret, user_id, NOW, 60)


def test_checking_with_an_empty_secret_is_misuse() -> None:
    with pytest.raises(LocalError, match="secret"):
        check_relay_credentials(b"", "1700000000:alice", VECTOR_PASSWORD, NOW)

"""Credentials for the TURN relays, in the form coturn checks with ``use-auth-secret``.

How it works: the login server and the relays share one secret (coturn's
``static-auth-secret``) and nothing else; no account is stored on a relay.
For a logged-in user the login server makes

* username ``"<expires>:<user_id>"``, ``expires`` in Unix seconds, and
* password ``base64(HMAC-SHA1(secret, username))``, standard alphabet with padding,

and sends them in RELAY_CREDENTIALS (the shape of the TURN REST API,
draft-uberti-behave-turn-rest-00). The device uses them as the long-term
credential of its TURN allocations (RFC 8489 §9.2). A relay takes the time
from the front of the USERNAME, refuses it once that time has passed,
recomputes the HMAC and compares: the credentials prove that the login server
issued them for that user until then, and cannot be stretched or moved to
another user without the secret. Whoever sees them can use them until they
expire, so the lifetime is short and capped (:data:`TTL_MAX`).

:func:`check_relay_credentials` is the relay's side of the same computation,
for a relay written in Python and for tests; it compares in constant time.
The secret is the exact bytes of the relay's configured string.

Pure computation: the caller passes ``now``.
"""

import base64
import hashlib
import hmac
from dataclasses import dataclass

from edge.errors import LocalError, RemoteError
from edge.wire.codes import ErrorCode
from edge.wire.messages import RELAY_USERNAME_MAX

TTL_MIN = 1
TTL_MAX = 86_400
"""The longest lifetime handed out: a day, as in the TURN REST API draft's example."""

SEPARATOR = ":"
"""Between the expiry time and the user id; coturn's default ``rest-api-separator``."""

_DIGITS = frozenset("0123456789")


class RelayAuthError(RemoteError):
    """Relay credentials were malformed, forged or expired."""

    code = ErrorCode.AUTH_FAILED


@dataclass(frozen=True)
class RelayCredentials:
    """A TURN username and password, and the Unix time after which relays refuse them."""

    username: str
    password: str
    expires: int


def relay_credentials(secret: bytes, user_id: str, now: int, ttl: int) -> RelayCredentials:
    """Credentials for ``user_id`` valid from ``now`` for ``ttl`` seconds.

    The caller decides how much of the ttl a device asked for it grants; this
    refuses anything outside ``TTL_MIN..TTL_MAX``, an empty secret or user id,
    and a username too long for RELAY_CREDENTIALS, with :class:`LocalError`.
    """
    _check_secret(secret)
    if not TTL_MIN <= ttl <= TTL_MAX:
        raise LocalError(f"relay credentials: ttl {ttl}, must be {TTL_MIN}..{TTL_MAX} seconds")
    if not user_id:
        raise LocalError("relay credentials: empty user id")
    expires = now + ttl
    username = f"{expires}{SEPARATOR}{user_id}"
    if len(username.encode("utf-8")) > RELAY_USERNAME_MAX:
        raise LocalError(f"relay credentials: username over {RELAY_USERNAME_MAX} bytes")
    return RelayCredentials(username, _password(secret, username), expires)


def check_relay_credentials(secret: bytes, username: str, password: str, now: int) -> str:
    """The user id the credentials were issued to; :class:`RelayAuthError` if they fail.

    Refuses a username not of the form ``<digits>:<user id>`` (or too long), a
    password that is not the HMAC of that username under ``secret``, and
    credentials whose expiry time is before ``now``.
    """
    _check_secret(secret)
    expires, user_id = _split_username(username)
    expected = _password(secret, username).encode("ascii")
    # A password that is not even UTF-8 cannot match; "replace" keeps it comparable.
    offered = password.encode("utf-8", "replace")
    if not hmac.compare_digest(expected, offered):
        raise RelayAuthError("relay credentials: wrong password for this username")
    if now > expires:
        raise RelayAuthError(f"relay credentials expired at {expires}, now is {now}")
    return user_id


def _split_username(username: str) -> tuple[int, str]:
    try:
        size = len(username.encode("utf-8"))
    except UnicodeEncodeError:
        raise RelayAuthError("relay credentials: username is not valid text") from None
    if size > RELAY_USERNAME_MAX:
        raise RelayAuthError(f"relay credentials: username over {RELAY_USERNAME_MAX} bytes")
    stamp, separator, user_id = username.partition(SEPARATOR)
    # Only ASCII digits: int() would also take "+1", " 1", "1_0" and other scripts' digits.
    if not separator or not user_id or not stamp or not set(stamp) <= _DIGITS:
        raise RelayAuthError("relay credentials: username is not <expiry>:<user id>")
    return int(stamp), user_id


def _password(secret: bytes, username: str) -> str:
    digest = hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or not secret:
        raise LocalError("relay credentials: the shared secret must be non-empty bytes")

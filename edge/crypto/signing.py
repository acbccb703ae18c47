"""Checking one Ed25519 signature and raising the caller's own error when it fails.

Certificates, revocation lists and presence records are each signed with
Ed25519 (RFC 8032 §5.1.7 verification) and each refuse a bad signature with an
error of their own that names what failed. :func:`verify_or_raise` is that
shared step: PyNaCl's ``BadSignatureError`` never escapes, so callers and their
callers see only edge errors.
"""

from collections.abc import Callable

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey


def verify_or_raise(
    key: VerifyKey | bytes,
    signed: bytes,
    signature: bytes,
    refusal: Callable[[], Exception],
) -> None:
    """Return if ``signature`` over ``signed`` verifies with ``key``; else raise ``refusal()``.

    ``key`` is a :class:`~nacl.signing.VerifyKey` or a 32-byte Ed25519 public
    key. ``refusal`` builds the error only when the check fails, so the message
    may name what was signed without costing anything on success.
    """
    verifier = key if isinstance(key, VerifyKey) else VerifyKey(key)
    try:
        verifier.verify(signed, signature)
    except BadSignatureError:
        raise refusal() from None

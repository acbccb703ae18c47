"""Keeping a device's revocation list current from the login server.

The device asks for the signed list on its login session, verifies it with
the issuer key it trusts, and applies it to its trust store only when it is
newer than what it holds (:class:`~edge.crypto.revocation.RevocationCache`),
so a replayed old list can never un-revoke a certificate.
"""

import time

from edge.client.login import LoginSession
from edge.crypto.revocation import RevocationCache, VerifiedRevocations, verify_revocations
from edge.wire.codes import MsgType
from edge.wire.messages import build_signed_revocation_list


async def refresh(
    session: LoginSession, cache: RevocationCache, issuer_key_id: bytes
) -> VerifiedRevocations:
    """Fetch, verify and (when newer) apply the issuer's list; return what was fetched."""
    reply = await session.request(
        MsgType.REVOCATION_FETCH,
        {"known_version": cache.known_version(issuer_key_id)},
        MsgType.REVOCATION_LIST,
    )
    raw = build_signed_revocation_list(reply.body)
    verified = verify_revocations(raw, cache.trust, time.time())
    cache.apply(verified)
    return verified

"""Stateless cookies: under load, make an initiator prove its address first.

As WireGuard does, a responder that is busy answers a handshake initiation with
a COOKIE_REPLY instead of running X25519 and keeping state. The cookie is a
keyed BLAKE2b of the initiator's address under a secret that rotates every two
minutes, so checking it needs no table; the initiator repeats its initiation
with the cookie, which a spoofed source address could never have received.

"Under load" is a token bucket of handshakes per second: while it has tokens,
initiations go straight through; once it is empty, only those with a valid
cookie do (and they still take a token when one is there).
"""

import hashlib
import hmac
from collections.abc import Callable

from edge.sansio import Address

COOKIE_SIZE = 16
NO_COOKIE = bytes(COOKIE_SIZE)


class CookieGate:
    """Decides whether a handshake initiation from an address may cost us work."""

    def __init__(
        self,
        random: Callable[[int], bytes],
        *,
        rate: float = 200.0,
        burst: float = 400.0,
        rotate_every: float = 120.0,
    ) -> None:
        self._random = random
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = 0.0
        self._rotate_every = rotate_every
        self._epoch = -1
        self._secrets = (random(32), random(32))

    def admit(self, address: Address, cookie: bytes, now: float) -> bool:
        """True when this initiation may proceed; False means: send a cookie reply."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return self.valid(address, cookie, now)

    def make(self, address: Address, now: float) -> bytes:
        """The cookie this address must echo in its next initiation."""
        self._rotate(now)
        return _mac(self._secrets[0], address)

    def valid(self, address: Address, cookie: bytes, now: float) -> bool:
        """Whether ``cookie`` was made for ``address`` by this or the previous secret."""
        if cookie == NO_COOKIE:
            return False
        self._rotate(now)
        return any(hmac.compare_digest(cookie, _mac(s, address)) for s in self._secrets)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)

    def _rotate(self, now: float) -> None:
        epoch = int(now // self._rotate_every)
        if epoch == self._epoch:
            return
        # Keep the previous secret so a cookie made just before a rotation works,
        # unless that secret is itself older than one period.
        previous = self._secrets[0] if epoch == self._epoch + 1 else self._random(32)
        self._secrets = (self._random(32), previous)
        self._epoch = epoch


def _mac(secret: bytes, address: Address) -> bytes:
    host, port = address
    data = f"{host}|{port}".encode()
    return hashlib.blake2b(data, key=secret, digest_size=COOKIE_SIZE).digest()

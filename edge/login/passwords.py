"""Password hashing with argon2id (libsodium through pynacl), and equal-cost failures.

Cost: libsodium's "interactive" parameters by default: 2 passes over 64 MiB.
That is about 66 ms a hash on a current x86 server core and about a quarter of
a second on a Raspberry Pi 4 — slow enough that a stolen database costs an
attacker dearly per guess, fast enough that a person logging in does not
notice, and within a Pi's memory as long as few hashes run at once (the
service runs at most ``parallel`` at a time: 64 MiB each). Devices meet this
cost once, at enrolment; every later login is a signature check.

An unknown user costs the same as a wrong password: the verifier hashes
against a dummy hash made with the same parameters, so neither the answer nor
its timing tells whether an account exists.
"""

from dataclasses import dataclass

import nacl.pwhash.argon2id as argon2id
from nacl.exceptions import InvalidkeyError

from edge.errors import LocalError

MAX_PASSWORD_BYTES = 256


@dataclass(frozen=True)
class PasswordCost:
    """argon2id parameters; the defaults are libsodium's interactive level."""

    ops: int = argon2id.OPSLIMIT_INTERACTIVE
    memory: int = argon2id.MEMLIMIT_INTERACTIVE

    def __post_init__(self) -> None:
        if self.ops < argon2id.OPSLIMIT_MIN or self.memory < argon2id.MEMLIMIT_MIN:
            raise LocalError(
                f"argon2id cost too low: ops {self.ops} (min {argon2id.OPSLIMIT_MIN}), "
                f"memory {self.memory} bytes (min {argon2id.MEMLIMIT_MIN})"
            )


class Passwords:
    """Hashes and verifies passwords at one cost."""

    def __init__(self, cost: PasswordCost = PasswordCost()) -> None:
        self.cost = cost
        self._dummy = self.hash("an account that does not exist")

    def hash(self, password: str) -> bytes:
        return bytes(
            argon2id.str(_encode(password), opslimit=self.cost.ops, memlimit=self.cost.memory)
        )

    def verify(self, stored: bytes | None, password: str) -> bool:
        """True when ``password`` matches ``stored``; ``None`` (no such user) costs the same."""
        raw = password.encode("utf-8")
        acceptable = 0 < len(raw) <= MAX_PASSWORD_BYTES
        try:
            matched = bool(argon2id.verify(stored or self._dummy, raw if acceptable else b"\0"))
        except InvalidkeyError:
            return False
        return matched and acceptable and stored is not None

    def needs_rehash(self, stored: bytes) -> bool:
        """Whether ``stored`` was made at another cost (rehash it at the next good login)."""
        expected = f"m={self.cost.memory >> 10},t={self.cost.ops},".encode()
        return expected not in stored


def _encode(password: str) -> bytes:
    raw = password.encode("utf-8")
    if not raw or len(raw) > MAX_PASSWORD_BYTES:
        raise LocalError(f"a password is 1 to {MAX_PASSWORD_BYTES} bytes of UTF-8")
    return raw

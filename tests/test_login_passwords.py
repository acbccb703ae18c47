"""argon2id passwords: verification, and an unknown user costing as much as a known one."""

import time

import pytest

from edge.errors import LocalError
from edge.login.passwords import PasswordCost, Passwords

COST = PasswordCost(ops=1, memory=16 << 20)
"""Enough work (about 15 ms) that a skipped hash would show in the timing."""


def test_right_and_wrong_passwords() -> None:
    passwords = Passwords(PasswordCost(ops=1, memory=8 << 10))
    stored = passwords.hash("correct horse")
    assert passwords.verify(stored, "correct horse")
    assert not passwords.verify(stored, "correct horsE")
    assert not passwords.verify(None, "correct horse")
    assert not passwords.verify(stored, "")
    assert not passwords.verify(stored, "x" * 300)


def test_an_unknown_user_costs_a_hash_too() -> None:
    passwords = Passwords(COST)
    stored = passwords.hash("correct horse")

    def best(stored_hash: bytes | None) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            passwords.verify(stored_hash, "wrong")
            times.append(time.perf_counter() - start)
        return min(times)

    known, unknown = best(stored), best(None)
    # Both run argon2id at the same cost; without the dummy hash the unknown
    # user would answer in microseconds, a thousand times faster.
    assert unknown > known / 3, (known, unknown)


def test_rehash_is_wanted_after_a_cost_change() -> None:
    old = Passwords(PasswordCost(ops=1, memory=8 << 10))
    new = Passwords(PasswordCost(ops=2, memory=8 << 10))
    stored = old.hash("pw")
    assert not old.needs_rehash(stored)
    assert new.needs_rehash(stored)


def test_costs_below_the_minimum_are_refused() -> None:
    with pytest.raises(LocalError, match="too low"):
        PasswordCost(ops=0, memory=8 << 10)
    with pytest.raises(LocalError):
        Passwords(COST).hash("")

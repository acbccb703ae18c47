"""The records a supernode keeps for others: validated, versioned, capped, expiring.

Theory of operation
-------------------
A record is opaque bytes to the overlay: a user's presence record, signed with
a key that the user's certificate certifies. The overlay does not verify it; a
:data:`Validator` given by the caller does, with the crypto outside this
package. For a record under a key it returns a :class:`Verdict` (the slot the
record fills, its sequence number and its expiry, all read from the signed
content) or None when the record is forged, made for another key, signed by a
revoked or expired certificate, or malformed.

Each key holds one record per slot (a user with a desk phone and an intercom
has two devices, so two slots). In a slot a newer sequence number replaces an
older one; an older or equal one is refused as a replay, so a node that missed
an update cannot roll a user's presence back (Kademlia section 2.5 leaves
versioning to the application). A record whose expiry has passed is refused
on arrival and forgotten by :meth:`RecordStore.expire`; the owner republishes
before expiry, and every holder republishes what it holds to the ``k``
closest nodes every hour (section 2.5) so records survive churn.

``now`` here is on the clock the expiries are written in (seconds since the
epoch, as certificates use). Caps: the size of one record, slots per key and
records in total.
"""

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from edge.overlay.errors import (
    RecordRefused,
    RecordTooLarge,
    StaleRecord,
    StoreFull,
)
from edge.overlay.ids import id_to_bytes


@dataclass(frozen=True)
class Verdict:
    """What a valid record says about itself, read from its signed content."""

    slot: bytes
    """Which of the key's records this is (for presence: the device's key)."""
    seq: int
    """Its version; higher replaces lower in the same slot."""
    expires: float
    """When it stops being valid, on the store's clock."""


Validator = Callable[[bytes, bytes], Verdict | None]
"""``validate(key, record)``: the record's :class:`Verdict`, or None when invalid."""


@dataclass(frozen=True)
class StoreLimits:
    """Caps of one store."""

    max_record_bytes: int = 1200
    max_slots_per_key: int = 8
    max_records: int = 100_000


@dataclass(frozen=True)
class Held:
    """One record the store holds."""

    key: int
    record: bytes
    verdict: Verdict


class RecordStore:
    """Records under keys. Call :meth:`expire` now and then (at :meth:`get_timer`)."""

    def __init__(self, validate: Validator, limits: StoreLimits | None = None) -> None:
        self._validate = validate
        self.limits = limits or StoreLimits()
        self._keys: dict[int, dict[bytes, Held]] = {}
        self._count = 0
        self._expiries: list[tuple[float, int, bytes]] = []

    def __len__(self) -> int:
        return self._count

    def put(self, key: int, record: bytes, now: float) -> Verdict:
        """Validate and keep ``record`` under ``key``; raise an :class:`OverlayError` if refused.

        The same record stored again (a republish) is accepted and changes nothing.
        """
        if len(record) > self.limits.max_record_bytes:
            raise RecordTooLarge(f"a record is at most {self.limits.max_record_bytes} bytes")
        verdict = self._validate(id_to_bytes(key), record)
        if verdict is None:
            raise RecordRefused("the record does not validate under this key")
        if verdict.expires <= now:
            raise RecordRefused("the record has expired")
        self.expire(now)
        slots = self._keys.get(key, {})
        same = slots.get(verdict.slot)
        if same is not None and same.record == record:
            return verdict
        self._check_room(slots, verdict)
        self._keep(key, slots, Held(key, record, verdict))
        return verdict

    def get(self, key: int, now: float) -> tuple[bytes, ...]:
        """The unexpired records under ``key``, highest sequence first."""
        held = self._keys.get(key, {}).values()
        live = sorted((h for h in held if h.verdict.expires > now), key=lambda h: -h.verdict.seq)
        return tuple(h.record for h in live)

    def held(self) -> list[Held]:
        """Every record held (for republishing)."""
        return [h for slots in self._keys.values() for h in slots.values()]

    def get_timer(self) -> float | None:
        """When the earliest held record expires, or None."""
        return self._expiries[0][0] if self._expiries else None

    def revalidate(self, now: float) -> int:
        """Validate every held record again and forget those that fail now; how many.

        For when what the validator trusts has changed: a newer revocation list
        makes the records of a revoked certificate invalid before they expire.
        """
        failed = [
            (h.key, h.verdict.slot)
            for h in self.held()
            if (v := self._validate(id_to_bytes(h.key), h.record)) is None or v.expires <= now
        ]
        for key, slot in failed:
            self._remove(key, slot)
        return len(failed)

    def expire(self, now: float) -> int:
        """Forget every record whose expiry has passed; returns how many."""
        dropped = 0
        while self._expiries and self._expiries[0][0] <= now:
            _, key, slot = heapq.heappop(self._expiries)
            held = self._keys.get(key, {}).get(slot)
            if held is not None and held.verdict.expires <= now:
                self._remove(key, slot)
                dropped += 1
        return dropped

    def _check_room(self, slots: dict[bytes, Held], verdict: Verdict) -> None:
        old = slots.get(verdict.slot)
        if old is not None:
            if verdict.seq <= old.verdict.seq:
                raise StaleRecord(f"sequence {verdict.seq} is not newer than {old.verdict.seq}")
            return
        if len(slots) >= self.limits.max_slots_per_key:
            raise StoreFull(f"a key holds at most {self.limits.max_slots_per_key} records")
        if self._count >= self.limits.max_records:
            raise StoreFull(f"the store holds at most {self.limits.max_records} records")

    def _keep(self, key: int, slots: dict[bytes, Held], held: Held) -> None:
        if held.verdict.slot not in slots:
            self._count += 1
        slots[held.verdict.slot] = held
        self._keys[key] = slots
        heapq.heappush(self._expiries, (held.verdict.expires, key, held.verdict.slot))
        if len(self._expiries) > 2 * self.limits.max_records + 16:
            self._rebuild_expiries()

    def _rebuild_expiries(self) -> None:
        self._expiries = [(h.verdict.expires, h.key, h.verdict.slot) for h in self.held()]
        heapq.heapify(self._expiries)

    def _remove(self, key: int, slot: bytes) -> None:
        slots = self._keys[key]
        del slots[slot]
        self._count -= 1
        if not slots:
            del self._keys[key]

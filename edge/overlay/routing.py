"""The routing table: k-buckets that split around our own id.

Theory of operation
-------------------
Kademlia (Maymounkov & Mazieres 2002), sections 2.2 and 2.4. Contacts are
grouped by how many leading bits their id shares with ours. The table starts
as one bucket covering the whole space; bucket ``i`` of ``n`` holds the ids that
share exactly ``i`` bits with ours, except the last one, which holds every id
sharing ``n - 1`` bits or more, our own region. When the last bucket is full and
a newcomer falls into it, it splits (section 2.4): the ids sharing exactly
``n - 1`` bits stay, the rest move to a new last bucket. Buckets far from us
never split, so the table holds O(k log N) contacts.

Each bucket is ordered least recently seen first. A node we hear from
(:meth:`RoutingTable.mark_seen`) moves to the tail. When its bucket is full
and cannot split, the paper keeps the old node if it is alive, since nodes that
have been up long tend to stay up (section 2.2): the newcomer waits in a small
replacement cache and ``mark_seen`` hands back the bucket's oldest contact for
the caller to ping. If it answers (``mark_seen`` again), it stays; if the ping
fails (:meth:`RoutingTable.mark_failed`), it is dropped at once and the most
recently seen replacement takes its place. Any other node is dropped after
``max_failures`` failures in a row (section 4.1's staleness rule), so one lost
datagram does not throw out a good contact.

The table is bounded: at most ``k`` contacts and ``replacements`` waiting
newcomers per bucket, and at most ``ID_BITS + 1`` buckets.
"""

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field

from edge.overlay.errors import OverlayMisuse
from edge.overlay.ids import ID_BITS, check_id, prefix_length
from edge.overlay.messages import Contact


@dataclass
class _Entry:
    contact: Contact
    failures: int = 0
    last_seen: float = 0.0


@dataclass
class _Probe:
    node_id: int
    since: float


@dataclass
class _Bucket:
    entries: OrderedDict[int, _Entry] = field(default_factory=OrderedDict)
    """Least recently seen first."""
    replacements: OrderedDict[int, Contact] = field(default_factory=OrderedDict)
    """Newcomers waiting for a place, most recently seen last."""
    probe: _Probe | None = None
    """The oldest entry we asked the caller to ping, and since when."""


class RoutingTable:
    """The contacts a node knows, in k-buckets. Feed it every reply and timeout."""

    def __init__(
        self,
        own_id: int,
        k: int = 20,
        *,
        replacements: int = 5,
        max_failures: int = 3,
        probe_timeout: float = 10.0,
    ) -> None:
        check_id(own_id)
        if k < 1 or replacements < 0 or max_failures < 1:
            raise OverlayMisuse("k and max_failures must be at least 1, replacements at least 0")
        self.own_id = own_id
        self.k = k
        self.max_replacements = replacements
        self.max_failures = max_failures
        self.probe_timeout = probe_timeout
        self._buckets: list[_Bucket] = [_Bucket()]

    def __len__(self) -> int:
        return sum(len(b.entries) for b in self._buckets)

    def __contains__(self, node_id: object) -> bool:
        if not isinstance(node_id, int):
            return False
        return node_id in self._bucket_for(node_id).entries

    @property
    def bucket_count(self) -> int:
        """How many buckets the table has split into."""
        return len(self._buckets)

    def bucket_of(self, node_id: int) -> int:
        """The index of the bucket that holds (or would hold) ``node_id``."""
        return min(prefix_length(self.own_id, node_id), len(self._buckets) - 1)

    def contacts(self) -> list[Contact]:
        """Every contact, bucket by bucket, least recently seen first in each."""
        return [e.contact for b in self._buckets for e in b.entries.values()]

    def bucket_contacts(self, index: int) -> list[Contact]:
        """The contacts of one bucket, least recently seen first."""
        return [e.contact for e in self._buckets[index].entries.values()]

    def replacement_contacts(self, index: int) -> list[Contact]:
        """The newcomers waiting in one bucket's replacement cache, oldest first."""
        return list(self._buckets[index].replacements.values())

    def closest(self, key: int, n: int) -> list[Contact]:
        """The ``n`` known contacts closest to ``key`` by XOR distance, closest first."""
        entries = (e.contact for b in self._buckets for e in b.entries.values())
        return heapq.nsmallest(n, entries, key=lambda c: c.node_id ^ key)

    def mark_seen(self, contact: Contact, now: float) -> Contact | None:
        """Record that ``contact`` answered or asked us something.

        Returns a contact the caller must ping when ``contact``'s bucket is full:
        report the outcome with ``mark_seen`` or ``mark_failed``. Our own id is
        ignored.
        """
        check_id(contact.node_id)
        if contact.node_id == self.own_id:
            return None
        bucket = self._bucket_for(contact.node_id)
        entry = bucket.entries.get(contact.node_id)
        if entry is not None:
            self._refresh(bucket, entry, contact, now)
            return None
        while len(bucket.entries) >= self.k and self._can_split(bucket):
            self._split()
            bucket = self._bucket_for(contact.node_id)
        if len(bucket.entries) < self.k:
            bucket.entries[contact.node_id] = _Entry(contact, last_seen=now)
            bucket.replacements.pop(contact.node_id, None)
            return None
        self._remember_replacement(bucket, contact)
        return self._probe_oldest(bucket, now)

    def mark_failed(self, node_id: int) -> None:
        """Record that ``node_id`` did not answer a request in time."""
        check_id(node_id)
        bucket = self._bucket_for(node_id)
        bucket.replacements.pop(node_id, None)
        entry = bucket.entries.get(node_id)
        if entry is None:
            return
        entry.failures += 1
        probed = bucket.probe is not None and bucket.probe.node_id == node_id
        if probed or entry.failures >= self.max_failures:
            self._drop(bucket, node_id)

    def _bucket_for(self, node_id: int) -> _Bucket:
        return self._buckets[self.bucket_of(node_id)]

    def _refresh(self, bucket: _Bucket, entry: _Entry, contact: Contact, now: float) -> None:
        entry.contact = contact
        entry.failures = 0
        entry.last_seen = now
        bucket.entries.move_to_end(contact.node_id)
        if bucket.probe is not None and bucket.probe.node_id == contact.node_id:
            bucket.probe = None

    def _can_split(self, bucket: _Bucket) -> bool:
        return bucket is self._buckets[-1] and len(self._buckets) <= ID_BITS

    def _split(self) -> None:
        last = self._buckets[-1]
        depth = len(self._buckets) - 1
        near = _Bucket()
        for node_id in [i for i in last.entries if prefix_length(self.own_id, i) > depth]:
            near.entries[node_id] = last.entries.pop(node_id)
        for node_id in [i for i in last.replacements if prefix_length(self.own_id, i) > depth]:
            near.replacements[node_id] = last.replacements.pop(node_id)
        if last.probe is not None and last.probe.node_id in near.entries:
            near.probe, last.probe = last.probe, None
        self._buckets.append(near)

    def _remember_replacement(self, bucket: _Bucket, contact: Contact) -> None:
        bucket.replacements.pop(contact.node_id, None)
        bucket.replacements[contact.node_id] = contact
        while len(bucket.replacements) > self.max_replacements:
            bucket.replacements.popitem(last=False)

    def _probe_oldest(self, bucket: _Bucket, now: float) -> Contact | None:
        if bucket.probe is not None and now - bucket.probe.since < self.probe_timeout:
            return None
        if not bucket.replacements:
            return None
        oldest = next(iter(bucket.entries.values()))
        bucket.probe = _Probe(oldest.contact.node_id, now)
        return oldest.contact

    def _drop(self, bucket: _Bucket, node_id: int) -> None:
        del bucket.entries[node_id]
        if bucket.probe is not None and bucket.probe.node_id == node_id:
            bucket.probe = None
        if bucket.replacements:
            _, newcomer = bucket.replacements.popitem(last=True)
            bucket.entries[newcomer.node_id] = _Entry(newcomer)

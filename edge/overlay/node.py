"""One supernode's part in the overlay: answering the four RPCs and republishing.

Theory of operation
-------------------
A :class:`Node` ties a :class:`~edge.overlay.routing.RoutingTable` and a
:class:`~edge.overlay.store.RecordStore` together. Every request teaches the
table about its sender (Kademlia section 2.2: the table is refreshed by
ordinary traffic); the adapter tells it about replies and timeouts of its own
requests with :meth:`Node.note_reply` and :meth:`Node.note_timeout`. When a
full bucket wants its oldest contact pinged, the contact waits in
:meth:`Node.probes_to_send`; the adapter sends the PING and reports back.

Lookups are created here (:meth:`Node.lookup`), seeded from the table, and
driven by the adapter. Every ``republish_interval`` (an hour, section 2.5)
:meth:`Node.handle_timer` hands back every record held, which the adapter
stores again at the ``k`` closest nodes found by a lookup for its key, so a
record outlives the nodes that first held it. As the paper suggests, a record
that another node stored here within the last interval is left out: that node
has just sent it to the other closest nodes too, so in a steady network one
holder per record republishes each hour instead of ``k``.
"""

from edge.overlay.errors import OverlayError
from edge.overlay.lookup import Lookup, LookupLimits
from edge.overlay.messages import (
    Contact,
    FindNode,
    FindValue,
    Nodes,
    Ping,
    Pong,
    Reply,
    Request,
    Stored,
    StoreRecord,
    Values,
)
from edge.overlay.routing import RoutingTable
from edge.overlay.store import Held, RecordStore, Validator
from edge.wire.codes import ErrorCode

REPUBLISH_INTERVAL = 3600.0
MAX_PENDING_PROBES = 64


class Node:
    """A supernode in the DHT. Feed it requests, replies and timeouts; it never does IO."""

    def __init__(
        self,
        contact: Contact,
        validate: Validator,
        now: float,
        *,
        limits: LookupLimits | None = None,
        republish_interval: float = REPUBLISH_INTERVAL,
    ) -> None:
        self.contact = contact
        self.limits = limits or LookupLimits()
        self.table = RoutingTable(contact.node_id, self.limits.k)
        self.store = RecordStore(validate)
        self.republish_interval = republish_interval
        self._validate = validate
        self._probes: list[Contact] = []
        self._republish_at = now + republish_interval
        self._stored_at: dict[tuple[int, bytes], float] = {}
        """When another node last stored each (key, slot) here."""

    def handle_request(self, sender: Contact, request: Request, now: float) -> Reply:
        """Answer one request from ``sender`` (authenticated by the session beneath)."""
        self.note_reply(sender, now)
        if isinstance(request, Ping):
            return Pong()
        if isinstance(request, FindNode):
            return self._nodes(request.key)
        if isinstance(request, FindValue):
            return self._find_value(request.key, now)
        return self._store(request, now)

    def note_reply(self, contact: Contact, now: float) -> None:
        """``contact`` answered us (or asked us something): it is alive."""
        probe = self.table.mark_seen(contact, now)
        if probe is not None and len(self._probes) < MAX_PENDING_PROBES:
            self._probes.append(probe)

    def note_timeout(self, contact: Contact) -> None:
        """``contact`` did not answer a request in time."""
        self.table.mark_failed(contact.node_id)

    def probes_to_send(self) -> list[Contact]:
        """Contacts to PING on the table's behalf; report with note_reply/note_timeout."""
        probes, self._probes = self._probes, []
        return probes

    def lookup(self, key: int, now: float, *, find_value: bool = False) -> Lookup:
        """A lookup for ``key`` seeded from this node's table; the caller drives it.

        A FIND_VALUE lookup accepts only records that validate and have not
        expired at ``now``.
        """
        seeds = self.table.closest(key, self.limits.k)

        def accept(key: bytes, record: bytes) -> bool:
            verdict = self._validate(key, record)
            return verdict is not None and verdict.expires > now

        return Lookup(
            self.contact.node_id,
            key,
            seeds,
            find_value=find_value,
            accept=accept if find_value else None,
            limits=self.limits,
        )

    def get_timer(self) -> float | None:
        """When the node next wants :meth:`handle_timer`."""
        expiry = self.store.get_timer()
        return self._republish_at if expiry is None else min(expiry, self._republish_at)

    def handle_timer(self, now: float) -> list[Held]:
        """Forget expired records; when republishing is due, the records to store again."""
        self.store.expire(now)
        if now < self._republish_at:
            return []
        self._republish_at = now + self.republish_interval
        held = self.store.held()
        self._stored_at = {
            (h.key, h.verdict.slot): self._stored_at[h.key, h.verdict.slot]
            for h in held
            if (h.key, h.verdict.slot) in self._stored_at
        }
        return [h for h in held if not self._stored_recently(h, now)]

    def _stored_recently(self, held: Held, now: float) -> bool:
        stored = self._stored_at.get((held.key, held.verdict.slot))
        return stored is not None and now - stored < self.republish_interval

    def _nodes(self, key: int) -> Nodes:
        return Nodes(tuple(self.table.closest(key, self.limits.k)))

    def _find_value(self, key: int, now: float) -> Values | Nodes:
        records = self.store.get(key, now)
        return Values(records) if records else self._nodes(key)

    def _store(self, request: StoreRecord, now: float) -> Stored:
        try:
            verdict = self.store.put(request.key, request.record, now)
        except OverlayError as err:
            return Stored(err.code)
        self._stored_at[request.key, verdict.slot] = now
        return Stored(ErrorCode.OK)

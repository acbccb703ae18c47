"""The DHT between supernodes over secure sessions: a sans-IO core above a DatagramEndpoint.

Theory of operation
-------------------
:class:`OverlayService` owns the supernode's :class:`~edge.session.datagram.DatagramEndpoint`
and its :class:`~edge.overlay.node.Node`. Every DHT_* message travels inside a
Noise session, so the sender of a request is authenticated: its node id is
the hash of the static key the session proved (:func:`~edge.overlay.ids.node_id_for`),
never a value it claims. Sessions are opened on demand: a request for a
contact without an established session starts an XX handshake to its address
and waits (capped) until the session is up; if the peer turns out to hold a
key that does not hash to the contact's id, the session is closed and the
request left to time out, since someone else sits at that address.

Three kinds of operation run on top of the Kademlia cores:

* :meth:`OverlayService.find` — an iterative lookup (FIND_VALUE for records,
  FIND_NODE for contacts), answered from the local store first;
* :meth:`OverlayService.publish` — a FIND_NODE lookup for the key, then STORE
  at the ``k`` closest nodes that answered, this node included when it is
  among them (a small overlay may have fewer than ``k`` others);
* :meth:`OverlayService.join` — sessions to bootstrap supernodes, a PING to
  each, then a lookup of this node's own id (Kademlia section 2.3), which
  fills the routing table and makes this node known to those it asks.

Each ends with one event (:class:`Found`, :class:`Published`, :class:`Joined`).
Every request received and every reply gives a :class:`PeerHeard` (a reply
with the round-trip time measured, a PONG with the load the peer reported),
which the layer above feeds to its table of live peers; this node's own load
goes into the PONGs it sends (:attr:`OverlayService.report_load`).
Requests are paired with replies by ``request_id``; a reply must come from the
node that was asked. A request unanswered after twice the lookup timeout marks
its node failed in the routing table (a lookup itself moves on after one
timeout and still takes a late reply). Every hour the node hands back the
records it holds, which are published again so that they outlive their
first holders; every hour each bucket is refreshed by a lookup of a random id
in its range; probes that the routing table asks for are sent as PINGs.

Events that are not the overlay's (sessions, messages of other types, such as
a client's PRESENCE_PUBLISH) are passed on unchanged through :meth:`next_event`
for the layer above, which answers clients through :attr:`endpoint`.

Clocks: ``now`` is the adapter's monotonic clock, as for the endpoint; the
node, its records and the lookups run on Unix time, ``now + wall_offset``,
since records carry Unix expiries. Caps: operations in progress, requests in
flight, requests waiting for a handshake per session.
"""

import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from edge.errors import RemoteError
from edge.overlay.errors import OverlayMisuse
from edge.overlay.ids import ID_BITS, node_id_for
from edge.overlay.lookup import Lookup, Query
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
from edge.overlay.node import Node
from edge.overlay.wire import DHT_TYPES, MAX_REQUEST_ID, from_wire, to_wire
from edge.sansio import Address
from edge.session.datagram import DatagramEndpoint
from edge.session.events import MessageReceived, PeerMoved, SessionEstablished, SessionFailed
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import LOAD_UNKNOWN

REQUEST_TYPES = frozenset(
    {MsgType.DHT_PING, MsgType.DHT_FIND_NODE, MsgType.DHT_FIND_VALUE, MsgType.DHT_STORE}
)


@dataclass(frozen=True)
class OverlayLimits:
    max_operations: int = 256
    """Finds, publishes and joins in progress; beyond it new ones fail at once."""
    max_outstanding: int = 4096
    """Requests waiting for a reply."""
    max_waiting: int = 32
    """Requests queued behind one handshake."""
    max_events: int = 4096


@dataclass(frozen=True)
class Found:
    """A :meth:`OverlayService.find` ended: the valid records found (FIND_VALUE) and
    the closest nodes that answered."""

    tag: int
    key: int
    records: tuple[bytes, ...]
    contacts: tuple[Contact, ...]
    hops: int


@dataclass(frozen=True)
class Published:
    """A :meth:`OverlayService.publish` ended: how many nodes (this one included) took it."""

    tag: int
    key: int
    stored: int
    asked: int
    refusal: ErrorCode = ErrorCode.OK
    """The first refusal a node answered with (REPLAYED for an older version, say)."""


@dataclass(frozen=True)
class Joined:
    """:meth:`OverlayService.join` ended; ``known`` contacts are in the routing table."""

    known: int


@dataclass(frozen=True)
class PeerHeard:
    """A supernode was heard from: it asked something (``rtt`` None) or answered
    (``rtt`` measured); a PONG also carries its ``load``."""

    contact: Contact
    rtt: float | None
    load: float | None


OverlayEvent = Found | Published | Joined | PeerHeard


class _Kind(Enum):
    FIND = "find"
    PUBLISH = "publish"
    REPUBLISH = "republish"
    JOIN = "join"
    REFRESH = "refresh"


REFRESH_INTERVAL = 3600.0
"""Kademlia section 2.3: every bucket is refreshed by a lookup of a random id in
its range once an hour, so contacts in quiet parts of the table do not go stale."""


@dataclass
class _Operation:
    tag: int
    kind: _Kind
    key: int
    lookup: Lookup | None = None
    record: bytes = b""
    stored: int = 0
    asked: int = 0
    refusal: ErrorCode = ErrorCode.OK
    waiting: int = 0
    """STORE or bootstrap PING requests not answered yet."""


@dataclass
class _Outstanding:
    contact: Contact
    operation: int
    """The tag of the operation the reply belongs to; 0 for a probe."""
    deadline: float
    sent: float


@dataclass
class _Handshake:
    expected: int | None
    """The node id the peer's key must hash to; None for a bootstrap address."""
    queue: deque[tuple[MsgType, dict[str, Any]]] = field(default_factory=deque)
    operation: int = 0
    """For a bootstrap session: the join it belongs to."""


class OverlayService:
    """A supernode's DHT membership over its secure sessions; see the module docstring."""

    def __init__(
        self,
        endpoint: DatagramEndpoint,
        node: Node,
        *,
        wall_offset: float = 0.0,
        limits: OverlayLimits | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._rng = rng or random.Random()
        self._refresh_at: float | None = None
        self.node = node
        self.wall_offset = wall_offset
        self.limits = limits or OverlayLimits()
        self.counts: Counter[str] = Counter()
        """What went wrong, by name: ``reply-unknown``, ``reply-wrong-node``, ``impostor``…"""
        self._operations: dict[int, _Operation] = {}
        self._outstanding: dict[int, _Outstanding] = {}
        self._handshakes: dict[int, _Handshake] = {}
        self._dialling: dict[Address, int] = {}
        self._session_of: dict[int, int] = {}
        """Established sessions by the peer's node id."""
        self._contact_of: dict[int, Contact] = {}
        """The peer of each established session, by session index."""
        self._events: deque[object] = deque()
        self.report_load: Callable[[], int] = lambda: LOAD_UNKNOWN
        """This supernode's load in percent, for the PONGs it sends."""
        self._next_tag = 0
        self._next_request = 0

    # -- the application's side

    def find(self, key: int, now: float, *, records: bool = True) -> int:
        """Look ``key`` up; a :class:`Found` with the returned tag follows."""
        wall = now + self.wall_offset
        operation = self._new_operation(_Kind.FIND, key)
        held = self.node.store.get(key, wall) if records else ()
        if held:
            self._finish(operation, Found(operation.tag, key, held, (), 0))
            return operation.tag
        operation.lookup = self.node.lookup(key, wall, find_value=records)
        self._drive(operation, operation.lookup.start(wall), wall)
        return operation.tag

    def publish(self, key: int, record: bytes, now: float) -> int:
        """Store ``record`` at the ``k`` closest nodes to ``key``; a :class:`Published` follows."""
        return self._publish(_Kind.PUBLISH, key, record, now + self.wall_offset).tag

    def join(self, bootstrap: Iterable[Address], now: float) -> int:
        """Meet the overlay through ``bootstrap`` supernodes; a :class:`Joined` follows."""
        operation = self._new_operation(_Kind.JOIN, self.node.contact.node_id)
        for address in bootstrap:
            if address == self.node.contact.address:
                continue
            index = self._dial(address, None, now)
            if index is not None:
                self._handshakes[index].operation = operation.tag
                operation.waiting += 1
        if operation.waiting == 0:
            self._start_join_lookup(operation, now + self.wall_offset)
        self._refresh_at = now + self.wall_offset + REFRESH_INTERVAL
        return operation.tag

    def ping(self, contact: Contact, now: float) -> None:
        """Ask ``contact`` whether it is alive (and how full); :class:`PeerHeard` follows."""
        self._request(contact, Ping(), 0, now + self.wall_offset)

    def send_to_contact(
        self, contact: Contact, msg_type: MsgType, body: dict[str, Any], now: float
    ) -> None:
        """Send one message to an overlay contact, opening a session if none is up."""
        self._send(contact, msg_type, body, now)

    def send_to_node(
        self,
        address: Address,
        static_key: bytes,
        msg_type: MsgType,
        body: dict[str, Any],
        now: float,
    ) -> None:
        """Send one message to the supernode at ``address`` holding ``static_key`` (as a
        presence record names it), over a session opened with IK when none is up."""
        contact = Contact(node_id_for(static_key), address)
        self._send(contact, msg_type, body, now, static_key=static_key)

    # -- the adapter's side (a DatagramCore)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        try:
            self.endpoint.receive_datagram(data, addr, now)
        finally:
            self._pump(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        return self.endpoint.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        deadlines = [self.endpoint.get_timer(), self._wall_timer()]
        present = [d for d in deadlines if d is not None]
        return min(present, default=None)

    def handle_timer(self, now: float) -> None:
        wall = now + self.wall_offset
        self.endpoint.handle_timer(now)
        self._expire_requests(wall)
        for operation in list(self._operations.values()):
            if operation.lookup is not None and not operation.lookup.done:
                timer = operation.lookup.get_timer()
                if timer is not None and timer <= wall:
                    self._drive(operation, operation.lookup.handle_timer(wall), wall)
        if self._refresh_at is not None and self._refresh_at <= wall:
            self._refresh_buckets(wall)
        if (timer := self.node.get_timer()) is not None and timer <= wall:
            for held in self.node.handle_timer(wall):
                if len(self._operations) < self.limits.max_operations:
                    self._publish(_Kind.REPUBLISH, held.key, held.record, wall)
        self._pump(now)

    def next_event(self) -> object | None:
        return self._events.popleft() if self._events else None

    def contact_of(self, index: int) -> Contact | None:
        """The node at the other end of an established session, as the overlay sees it."""
        return self._contact_of.get(index)

    # -- endpoint events

    def _pump(self, now: float) -> None:
        wall = now + self.wall_offset
        while (event := self.endpoint.next_event()) is not None:
            handled = False
            if isinstance(event, SessionEstablished):
                self._established(event, now)
            elif isinstance(event, SessionFailed):
                self._failed(event.index, wall)
            elif isinstance(event, PeerMoved):
                self._moved(event)
            elif isinstance(event, MessageReceived) and event.message.type in DHT_TYPES:
                self._dht_message(event, wall)
                handled = True
            if not handled:
                self._emit(event)
        self._send_probes(wall)

    def _established(self, event: SessionEstablished, now: float) -> None:
        node_id = node_id_for(event.remote_static)
        handshake = self._handshakes.pop(event.index, None)
        self._dialling.pop(event.address, None)
        if handshake is not None and handshake.expected not in (None, node_id):
            self.counts["impostor"] += 1
            self.endpoint.close(event.index)
            return
        contact = Contact(node_id, event.address)
        self._contact_of[event.index] = contact
        self._session_of[node_id] = event.index
        if handshake is None:
            return
        for msg_type, body in handshake.queue:
            self.endpoint.send(event.index, msg_type, body)
        if handshake.operation:
            self._request(contact, Ping(), handshake.operation, now + self.wall_offset)

    def _failed(self, index: int, wall: float) -> None:
        handshake = self._handshakes.pop(index, None)
        for address, dialled in list(self._dialling.items()):
            if dialled == index:
                del self._dialling[address]
        contact = self._contact_of.pop(index, None)
        if contact is not None and self._session_of.get(contact.node_id) == index:
            del self._session_of[contact.node_id]
        if handshake is not None and handshake.operation:
            self._bootstrap_done(handshake.operation, wall)

    def _moved(self, event: PeerMoved) -> None:
        contact = self._contact_of.get(event.index)
        if contact is not None:
            self._contact_of[event.index] = Contact(contact.node_id, event.address)

    def _dht_message(self, event: MessageReceived, wall: float) -> None:
        contact = self._contact_of.get(event.index)
        if contact is None:
            self.counts["dht-outside-session"] += 1
            return
        try:
            request_id, message = from_wire(event.message)
        except (OverlayMisuse, RemoteError):
            self.counts["dht-malformed"] += 1
            return
        if event.message.type in REQUEST_TYPES:
            assert isinstance(message, Ping | FindNode | FindValue | StoreRecord)
            self._answer(event.index, contact, request_id, message, wall)
        else:
            assert isinstance(message, Pong | Nodes | Values | Stored)
            self._reply(contact, request_id, message, wall)

    def _answer(
        self, index: int, sender: Contact, request_id: int, request: Request, wall: float
    ) -> None:
        reply = self.node.handle_request(sender, request, wall)
        if isinstance(reply, Pong):
            reply = Pong(self.report_load())
        self._emit(PeerHeard(sender, None, None))
        self.endpoint.send(index, *to_wire(request_id, reply))

    def _reply(self, sender: Contact, request_id: int, reply: Reply, wall: float) -> None:
        outstanding = self._outstanding.get(request_id)
        if outstanding is None:
            self.counts["reply-unknown"] += 1
            return
        if outstanding.contact.node_id != sender.node_id:
            self.counts["reply-wrong-node"] += 1
            return
        del self._outstanding[request_id]
        self.node.note_reply(sender, wall)
        load = None if not isinstance(reply, Pong) or reply.load > 100 else reply.load / 100
        self._emit(PeerHeard(sender, max(0.0, wall - outstanding.sent), load))
        operation = self._operations.get(outstanding.operation)
        if operation is not None:
            self._operation_reply(operation, outstanding.contact, reply, wall)

    def _operation_reply(
        self, operation: _Operation, contact: Contact, reply: Reply, wall: float
    ) -> None:
        if operation.kind is _Kind.JOIN and operation.lookup is None:
            self._bootstrap_done(operation.tag, wall)
        elif operation.lookup is not None and not operation.lookup.done:
            if isinstance(reply, Nodes | Values):
                self._drive(operation, operation.lookup.on_reply(contact, reply, wall), wall)
            else:
                self.counts["reply-wrong-type"] += 1
        elif isinstance(reply, Stored):
            operation.waiting -= 1
            self._count_store(operation, reply.code)
            self._maybe_published(operation)

    # -- operations

    def _new_operation(self, kind: _Kind, key: int) -> _Operation:
        if len(self._operations) >= self.limits.max_operations:
            raise OverlayBusy(f"{len(self._operations)} overlay operations are already running")
        self._next_tag += 1
        operation = _Operation(self._next_tag, kind, key)
        self._operations[operation.tag] = operation
        return operation

    def _publish(self, kind: _Kind, key: int, record: bytes, wall: float) -> _Operation:
        operation = self._new_operation(kind, key)
        operation.record = record
        operation.lookup = self.node.lookup(key, wall)
        self._drive(operation, operation.lookup.start(wall), wall)
        return operation

    def _refresh_buckets(self, wall: float) -> None:
        """A FIND_NODE for a random id in each bucket's range (no event when done)."""
        self._refresh_at = wall + REFRESH_INTERVAL
        own = self.node.contact.node_id
        for shared in range(self.node.table.bucket_count):
            if len(self._operations) >= self.limits.max_operations:
                self.counts["refresh-skipped"] += 1
                return
            # Share exactly `shared` leading bits with our id: flip the next, randomise the rest.
            low = ID_BITS - 1 - shared
            target = own ^ (1 << low) ^ self._rng.getrandbits(low) if low > 0 else own ^ 1
            operation = self._new_operation(_Kind.REFRESH, target)
            self.counts["refresh"] += 1
            operation.lookup = self.node.lookup(target, wall)
            self._drive(operation, operation.lookup.start(wall), wall)

    def _start_join_lookup(self, operation: _Operation, wall: float) -> None:
        operation.lookup = self.node.lookup(operation.key, wall)
        self._drive(operation, operation.lookup.start(wall), wall)

    def _bootstrap_done(self, tag: int, wall: float) -> None:
        operation = self._operations.get(tag)
        if operation is None or operation.lookup is not None:
            return
        operation.waiting -= 1
        if operation.waiting <= 0:
            # Contacts learned from the bootstrap PINGs seed the lookup of our own id.
            self._start_join_lookup(operation, wall)

    def _drive(self, operation: _Operation, queries: list[Query], wall: float) -> None:
        for query in queries:
            self._request(query.node, query.request, operation.tag, wall)
        lookup = operation.lookup
        if lookup is not None and lookup.done:
            self._lookup_done(operation, lookup, wall)

    def _lookup_done(self, operation: _Operation, lookup: Lookup, wall: float) -> None:
        if operation.kind is _Kind.FIND:
            found = Found(
                operation.tag,
                operation.key,
                lookup.value or (),
                tuple(lookup.result()),
                lookup.hops,
            )
            self._finish(operation, found)
        elif operation.kind is _Kind.JOIN:
            self._finish(operation, Joined(len(self.node.table)))
        elif operation.kind is _Kind.REFRESH:
            self._finish(operation, None)
        else:
            self._store_at_closest(operation, lookup.result(), wall)

    def _store_at_closest(self, operation: _Operation, found: list[Contact], wall: float) -> None:
        own = self.node.contact
        closest = sorted([*found, own], key=lambda c: c.node_id ^ operation.key)
        for contact in closest[: self.node.limits.k]:
            operation.asked += 1
            if contact == own:
                self._count_store(operation, self._store_here(operation, wall))
            else:
                operation.waiting += 1
                self._request(
                    contact, StoreRecord(operation.key, operation.record), operation.tag, wall
                )
        self._maybe_published(operation)

    def _store_here(self, operation: _Operation, wall: float) -> ErrorCode:
        reply = self.node.handle_request(
            self.node.contact, StoreRecord(operation.key, operation.record), wall
        )
        assert isinstance(reply, Stored)
        return reply.code

    @staticmethod
    def _count_store(operation: _Operation, code: ErrorCode) -> None:
        if code is ErrorCode.OK:
            operation.stored += 1
        elif operation.refusal is ErrorCode.OK:
            operation.refusal = code

    def _maybe_published(self, operation: _Operation) -> None:
        if operation.waiting > 0:
            return
        published = Published(
            operation.tag, operation.key, operation.stored, operation.asked, operation.refusal
        )
        self._finish(operation, published if operation.kind is _Kind.PUBLISH else None)

    def _finish(self, operation: _Operation, event: OverlayEvent | None) -> None:
        self._operations.pop(operation.tag, None)
        if event is not None:
            self._emit(event)

    # -- requests and sessions

    def _request(self, contact: Contact, request: Request, tag: int, wall: float) -> None:
        if len(self._outstanding) >= self.limits.max_outstanding:
            self.counts["outstanding-full"] += 1
            return
        request_id = self._new_request_id()
        # Twice the lookup's timeout: a lookup moves on after one, and still takes a late reply.
        deadline = wall + 2 * self.node.limits.timeout
        self._outstanding[request_id] = _Outstanding(contact, tag, deadline, wall)
        self._send(contact, *to_wire(request_id, request), wall - self.wall_offset)

    def _send(
        self,
        contact: Contact,
        msg_type: MsgType,
        body: dict[str, Any],
        now: float,
        *,
        static_key: bytes | None = None,
    ) -> None:
        index = self._session_of.get(contact.node_id)
        if index is not None and self.endpoint.is_established(index):
            self.endpoint.send(index, msg_type, body)
            return
        index = self._dial(contact.address, contact.node_id, now, static_key)
        if index is None:
            return
        queue = self._handshakes[index].queue
        if len(queue) >= self.limits.max_waiting:
            self.counts["handshake-queue-full"] += 1
            return
        queue.append((msg_type, body))

    def _dial(
        self, address: Address, expected: int | None, now: float, static_key: bytes | None = None
    ) -> int | None:
        index = self._dialling.get(address)
        if index is not None:
            return index
        try:
            index = self.endpoint.connect(address, now, remote_static=static_key)
        except RemoteError:
            self.counts["session-table-full"] += 1
            return None
        self._dialling[address] = index
        self._handshakes[index] = _Handshake(expected)
        return index

    def _new_request_id(self) -> int:
        self._next_request = (self._next_request + 1) & MAX_REQUEST_ID
        return self._next_request

    def _expire_requests(self, wall: float) -> None:
        for request_id, outstanding in list(self._outstanding.items()):
            if outstanding.deadline > wall:
                continue
            del self._outstanding[request_id]
            self.node.note_timeout(outstanding.contact)
            operation = self._operations.get(outstanding.operation)
            if operation is None:
                continue
            if operation.kind is _Kind.JOIN and operation.lookup is None:
                self._bootstrap_done(operation.tag, wall)
            elif operation.lookup is not None and operation.lookup.done:
                operation.waiting -= 1
                self._maybe_published(operation)

    def _send_probes(self, wall: float) -> None:
        for contact in self.node.probes_to_send():
            self._request(contact, Ping(), 0, wall)

    def _wall_timer(self) -> float | None:
        deadlines = [o.deadline for o in self._outstanding.values()]
        deadlines += [
            t
            for o in self._operations.values()
            if o.lookup is not None and (t := o.lookup.get_timer()) is not None
        ]
        if (node_timer := self.node.get_timer()) is not None:
            deadlines.append(node_timer)
        if self._refresh_at is not None:
            deadlines.append(self._refresh_at)
        earliest = min(deadlines, default=None)
        return None if earliest is None else earliest - self.wall_offset

    def _emit(self, event: object) -> None:
        if len(self._events) >= self.limits.max_events:
            self.counts["events-dropped"] += 1
            return
        self._events.append(event)


class OverlayBusy(RemoteError):
    """Too many overlay operations are running; try again later."""

    code = ErrorCode.BUSY

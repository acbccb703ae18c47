"""A sans-IO TURN client core: one allocation on one TURN server (RFC 8656).

How it works: :class:`TurnClient` speaks to one server address over UDP, or
over a stream (TCP) when made with ``stream=True``; then the owner cuts the
byte stream into whole STUN or ChannelData messages (:class:`TurnStream` does
that and is a :class:`~edge.sansio.StreamCore`). The owner calls
:meth:`~TurnClient.allocate`, feeds what arrives to
:meth:`~TurnClient.receive_datagram`, sends what
:meth:`~TurnClient.datagrams_to_send` gives, runs
:meth:`~TurnClient.handle_timer` at :meth:`~TurnClient.get_timer`, and reads
:mod:`edge.stun.events` from :meth:`~TurnClient.next_event`.

The allocation's life is the table :data:`TRANSITIONS`: a :class:`State`
and a :class:`Trigger` give the next state. ``allocate()`` moves IDLE to
ALLOCATING; the Allocate's success to ALLOCATED; ``close()`` then sends a
Refresh with LIFETIME 0 and waits in CLOSING. A failed Allocate or Refresh
(an error answer, a timeout) ends in CLOSED, as does ``close()`` before the
allocation exists. Entering CLOSING or CLOSED forgets every outstanding
request, permission and channel, so no answer can arrive for a state that
has gone.

Requests (RFC 8489 §9.2, long-term credentials): the first Allocate goes
without credentials; the 401 answer brings REALM and NONCE, and every request
from then on carries USERNAME, REALM, NONCE and MESSAGE-INTEGRITY under
``long_term_key(username, realm, password)``, then FINGERPRINT. A 438 brings
a new nonce: the request goes again under a new transaction id, once per
nonce it is refused with (a 438 naming the nonce it refused ends it) and at
most :data:`MAX_NONCE_RETRIES` times. A 401 to a request that had credentials
is final: the password is wrong.

A response must come from the server's address and match an outstanding
transaction id and method. To a request sent with credentials, a response
other than 401 or 438 (which a server cannot sign: it did not accept our
key) must carry a MESSAGE-INTEGRITY that verifies, else it is dropped as if
never received and the retransmissions go on (RFC 8489 §9.2.5). Over UDP a
request is sent again on the RFC 8489 §6.2.1 schedule (RTO 0.5 s, doubling,
Rc 7, then Rm 16 RTOs: it fails after 39.5 s); over a stream it is sent once
and fails after the same 39.5 s.

Keeping the allocation alive (RFC 8656 §8, §9, §12): a Refresh goes out
:data:`REFRESH_MARGIN` seconds before the granted lifetime ends (at half of
it when it is short); each permission is refreshed with CreatePermission
every :data:`PERMISSION_REFRESH` seconds (they last 300) and each channel
with ChannelBind every :data:`CHANNEL_REFRESH` seconds (they last 600), until
:meth:`~TurnClient.release_peer` or :meth:`~TurnClient.close`. A permission
covers an IP address; a channel one (IP, port). :meth:`~TurnClient.send` uses
ChannelData once the peer's channel is bound, a Send indication before.

Received data: a Data indication or ChannelData becomes
:class:`~edge.stun.events.DataReceived` when it names a peer we hold a
permission or channel for. Nothing received ever raises: whatever cannot be
used is dropped and counted in :attr:`TurnClient.drops` by :class:`Drop`.

Caps: permissions and channels (:class:`TurnClientLimits`), which also bound
the outstanding transactions (at most one per permission, channel and the
allocation), the outgoing queue and the event queue; what does not fit in a
queue is dropped and counted.

Not done: IPv6 relayed addresses (REQUESTED-ADDRESS-FAMILY), EVEN-PORT and
RESERVATION-TOKEN, DONT-FRAGMENT, TCP relaying (RFC 6062), the RFC 8489
password algorithms (SHA-256 keys, the nonce cookie, USERHASH), and
ALTERNATE-SERVER redirects (a 300 answer is a failure).
"""

import os
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from edge.sansio import Address
from edge.stun.attributes import BY_CODE, AttrType, ErrorValue
from edge.stun.channel import (
    MAX_CHANNEL,
    MIN_CHANNEL,
    ChannelData,
    Kind,
    build_channel_data,
    classify,
    parse_channel_data,
)
from edge.stun.client import DEFAULT_RC, DEFAULT_RM, DEFAULT_RTO
from edge.stun.codec import (
    TRANSACTION_ID_SIZE,
    Class,
    Message,
    Method,
    build,
    check_fingerprint,
    check_integrity,
    long_term_key,
    opaque_string,
    parse,
)
from edge.stun.errors import CredentialError, StunBuildError, StunError, TurnUsageError
from edge.stun.events import (
    AllocationClosed,
    AllocationRefreshed,
    AllocationSucceeded,
    ChannelBound,
    DataReceived,
    Failure,
    PermissionCreated,
    TurnClientEvent,
    TurnFailed,
)
from edge.stun.framing import StreamDeframer
from edge.stun.turn import CHANNEL_LIFETIME, PERMISSION_LIFETIME, UDP

DEFAULT_LIFETIME = 600
"""The allocation lifetime asked for (RFC 8656 §7.2's default)."""

REFRESH_MARGIN = 60.0
"""Seconds before the allocation expires that its Refresh goes out."""

PERMISSION_REFRESH = PERMISSION_LIFETIME - REFRESH_MARGIN
"""240 s: a permission lasts 300 (RFC 8656 §9); a minute early leaves room to retransmit."""

CHANNEL_REFRESH = CHANNEL_LIFETIME - REFRESH_MARGIN
"""540 s: a channel binding lasts 600 (RFC 8656 §12); refreshed a minute early likewise."""

MAX_NONCE_RETRIES = 3
"""How often one request goes again after 438 before the client gives up on it."""

_UNSIGNED_ERRORS = frozenset({401, 438})
"""Error codes a server sends when it could not check our key, so cannot sign."""


class State(Enum):
    """Where the allocation stands; :data:`TRANSITIONS` moves between them."""

    IDLE = "idle"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    CLOSING = "closing"
    CLOSED = "closed"


class Trigger(Enum):
    """What moves the allocation from one :class:`State` to another."""

    ALLOCATE = "allocate()"
    ALLOCATED = "the Allocate succeeded"
    LOST = "an Allocate or Refresh failed"
    CLOSE = "close()"
    CLOSED = "the deleting Refresh succeeded"


TRANSITIONS: dict[State, dict[Trigger, State]] = {
    State.IDLE: {Trigger.ALLOCATE: State.ALLOCATING, Trigger.CLOSE: State.CLOSED},
    State.ALLOCATING: {
        Trigger.ALLOCATED: State.ALLOCATED,
        Trigger.LOST: State.CLOSED,
        Trigger.CLOSE: State.CLOSED,
    },
    State.ALLOCATED: {Trigger.LOST: State.CLOSED, Trigger.CLOSE: State.CLOSING},
    State.CLOSING: {
        Trigger.CLOSED: State.CLOSED,
        Trigger.LOST: State.CLOSED,
        Trigger.CLOSE: State.CLOSING,
    },
    State.CLOSED: {Trigger.CLOSE: State.CLOSED},
}
"""The allocation's state machine; a pair missing here is a misuse (TurnUsageError)."""


class Drop(Enum):
    """Why a received datagram or an outgoing one was not used; see :attr:`TurnClient.drops`."""

    WRONG_SOURCE = "wrong-source"
    """A datagram from an address other than the server's."""
    NOT_TURN = "not-turn"
    """Its first byte is neither STUN nor ChannelData (RFC 7983)."""
    MALFORMED = "malformed"
    """STUN or ChannelData that does not parse, or a FINGERPRINT that does not match."""
    UNKNOWN_TRANSACTION = "unknown-transaction"
    """A response to no request of ours (or a late one, or the wrong method)."""
    BAD_INTEGRITY = "bad-integrity"
    """A response to an authenticated request without a MESSAGE-INTEGRITY that verifies."""
    UNEXPECTED = "unexpected"
    """A request, an indication other than Data, or data when no allocation is up."""
    NO_PERMISSION = "no-permission"
    """A Data indication from a peer we hold no permission for."""
    NO_CHANNEL = "no-channel"
    """ChannelData on a channel we did not bind."""
    QUEUE_FULL = "queue-full"
    """An outgoing datagram did not fit the send queue."""
    EVENTS_FULL = "events-full"
    """An event did not fit the event queue (drain it after every call)."""


@dataclass(frozen=True)
class TurnClientLimits:
    """Caps of :class:`TurnClient`; every table and queue has one."""

    max_permissions: int = 32
    """Peer IP addresses with a permission; beyond it create_permission raises."""
    max_channels: int = 32
    """Channels bound; beyond it bind_channel raises."""
    max_queued: int = 256
    """Datagrams waiting in :meth:`TurnClient.datagrams_to_send`."""
    max_events: int = 1024
    """Events waiting in :meth:`TurnClient.next_event`."""

    def check(self) -> None:
        """Raise StunBuildError when a cap cannot work."""
        caps = (self.max_permissions, self.max_queued, self.max_events)
        if min(caps) < 1 or self.max_channels < 0:
            raise StunBuildError(f"TURN client limits must be positive: {self}")
        if self.max_channels > MAX_CHANNEL - MIN_CHANNEL + 1:
            raise StunBuildError(f"TURN client: at most 4096 channels, not {self.max_channels}")


@dataclass
class _Transaction:
    """One outstanding request and what to do when it ends."""

    method: Method
    body: list[tuple[int, Any]]
    """The request's own attributes, before credentials: kept to send it again after 438."""
    data: bytes
    nonce: str | None
    """The NONCE it was sent with; None when it went without credentials."""
    peer: Address | None
    retries: int
    attempts: int = 0
    deadline: float = 0.0


@dataclass
class _Refreshable:
    """A permission or a channel: None ``due`` while its request is out."""

    peer: Address
    due: float | None = None
    installed: bool = False


@dataclass
class _Channel(_Refreshable):
    number: int = MIN_CHANNEL


DATA_INDICATION = 0x0017
"""The first two bytes of a Data indication: method DATA (0x007), class indication."""


class TurnClient:
    """One TURN allocation on ``server``; see the module docstring for the life cycle.

    ``username`` and ``password`` are the long-term credentials (from the login
    server's RELAY_CREDENTIALS). ``stream`` says the owner carries the messages
    over TCP: no retransmissions, ChannelData padded to four bytes (RFC 8656
    §12.5). Counters: :attr:`drops`. Raises CredentialError at once for a
    password that cannot make a key.
    """

    def __init__(
        self,
        server: Address,
        username: str,
        password: str,
        *,
        stream: bool = False,
        lifetime: int = DEFAULT_LIFETIME,
        limits: TurnClientLimits | None = None,
        rto: float = DEFAULT_RTO,
        rc: int = DEFAULT_RC,
        rm: int = DEFAULT_RM,
        software: str | None = None,
    ) -> None:
        if not rto > 0 or rc < 1 or rm < 1:
            raise StunBuildError(f"need rto > 0, rc >= 1, rm >= 1; got {rto}, {rc}, {rm}")
        if not 1 <= lifetime <= 0xFFFFFFFF:
            raise StunBuildError(f"TURN lifetime {lifetime} outside 1..2**32-1")
        # Bad credentials are the caller's error: found now, not when the 401 comes.
        opaque_string(password)
        _check_text(AttrType.USERNAME, username)
        if software is not None:
            _check_text(AttrType.SOFTWARE, software)
        self.limits = limits or TurnClientLimits()
        self.limits.check()
        self.server = server
        self.username = username
        self.stream = stream
        self.requested_lifetime = lifetime
        self.software = software
        self._password = password
        self._rto = rto
        self._rc = rc
        self._rm = rm
        self.state = State.IDLE
        self.relayed: Address | None = None
        """XOR-RELAYED-ADDRESS once allocated."""
        self.mapped: Address | None = None
        """XOR-MAPPED-ADDRESS once allocated, if the server sent it."""
        self.lifetime = 0
        """Seconds the server granted at the last Allocate or Refresh."""
        self.drops: Counter[Drop] = Counter()
        """Datagrams dropped (and events not queued), by reason."""
        self._realm: str | None = None
        self._nonce: str | None = None
        self._key = b""
        self._transactions: dict[bytes, _Transaction] = {}
        self._refresh_due: float | None = None
        self._permissions: dict[str, _Refreshable] = {}
        self._channels: dict[Address, _Channel] = {}
        self._channel_peers: dict[int, Address] = {}
        self._outbox: deque[tuple[bytes, Address]] = deque()
        self._events: deque[TurnClientEvent] = deque()

    # -- the application's interface

    def allocate(self, now: float) -> None:
        """Send the Allocate request; AllocationSucceeded or TurnFailed follows."""
        self._move(Trigger.ALLOCATE)
        body: list[tuple[int, Any]] = [
            (AttrType.REQUESTED_TRANSPORT, UDP),
            (AttrType.LIFETIME, self.requested_lifetime),
        ]
        self._request(Method.ALLOCATE, body, now)

    def create_permission(self, peer: Address, now: float) -> None:
        """Ask the server to relay to and from ``peer``'s IP; PermissionCreated follows.

        The permission is kept fresh until :meth:`release_peer`. Asking again
        for an IP that has one does nothing.
        """
        self._require_allocation("create_permission()")
        if peer[0] in self._permissions:
            return
        if len(self._permissions) >= self.limits.max_permissions:
            raise TurnUsageError(f"TURN client: {self.limits.max_permissions} permissions, cap")
        permission = _Refreshable(peer)
        self._permissions[peer[0]] = permission
        self._send_permission(permission, now)

    def bind_channel(self, peer: Address, now: float) -> int:
        """Bind a channel to ``peer`` (and ask for its permission); the channel number.

        ChannelBound follows; until then :meth:`send` uses Send indications.
        """
        self._require_allocation("bind_channel()")
        channel = self._channels.get(peer)
        if channel is not None:
            return channel.number
        if len(self._channels) >= self.limits.max_channels:
            raise TurnUsageError(f"TURN client: {self.limits.max_channels} channels, cap")
        self.create_permission(peer, now)
        channel = _Channel(peer, number=self._free_channel())
        self._channels[peer] = channel
        self._channel_peers[channel.number] = peer
        self._send_channel_bind(channel, now)
        return channel.number

    def release_peer(self, peer: Address) -> None:
        """Stop refreshing the permission for ``peer``'s IP and every channel to that IP.

        The server lets them lapse (in 300 s and 600 s); data from them is dropped now.
        """
        self._permissions.pop(peer[0], None)
        for address in [address for address in self._channels if address[0] == peer[0]]:
            del self._channel_peers[self._channels.pop(address).number]

    def send(self, peer: Address, data: bytes, now: float) -> None:
        """Relay ``data`` to ``peer``: ChannelData on a bound channel, else a Send indication.

        Needs a permission for ``peer``'s IP (TurnUsageError otherwise); data
        sent before the server installed it is dropped by the server. Too much
        data for one message raises StunBuildError.
        """
        self._require_allocation("send()")
        if peer[0] not in self._permissions:
            raise TurnUsageError(f"no permission for {peer[0]}: call create_permission() first")
        channel = self._channels.get(peer)
        if channel is not None and channel.installed:
            frame = ChannelData(channel.number, bytes(data))
            self._queue(build_channel_data(frame, stream=self.stream))
            return
        message = Message(Method.SEND, Class.INDICATION, _transaction_id())
        message.attributes.append((AttrType.XOR_PEER_ADDRESS, peer))
        message.attributes.append((AttrType.DATA, bytes(data)))
        self._queue(build(message))

    def close(self, now: float) -> None:
        """Delete the allocation (Refresh with LIFETIME 0); AllocationClosed follows.

        Before the allocation exists this just stops: no event follows.
        """
        before = self.state
        self._move(Trigger.CLOSE)
        if before is State.ALLOCATED:
            self._request(Method.REFRESH, [(AttrType.LIFETIME, 0)], now)

    @property
    def is_allocated(self) -> bool:
        return self.state is State.ALLOCATED

    def channel_of(self, peer: Address) -> int | None:
        """The channel number bound (or being bound) to ``peer``, if any."""
        channel = self._channels.get(peer)
        return None if channel is None else channel.number

    def expects(self, data: bytes, addr: Address) -> bool:
        """Whether a datagram from ``addr`` is this client's: ChannelData or a Data
        indication from its server, or the answer to one of its requests. The server
        may share its address with other services (a supernode answers Binding and
        carries sessions on the same port), whose datagrams are not ours."""
        if addr != self.server:
            return False
        kind = classify(data)
        if kind is Kind.CHANNEL_DATA:
            return True
        if kind is not Kind.STUN or len(data) < 20:
            return False
        method_and_class = int.from_bytes(data[:2], "big")
        if method_and_class == DATA_INDICATION:
            return True
        return bytes(data[8:20]) in self._transactions

    # -- the DatagramCore protocol

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Take one datagram (or, over a stream, one whole frame) from the server.

        Never raises: what cannot be used is counted in :attr:`drops`.
        """
        if addr != self.server:
            self.drops[Drop.WRONG_SOURCE] += 1
            return
        kind = classify(data)
        if kind is Kind.CHANNEL_DATA:
            self._receive_channel_data(data)
        elif kind is Kind.STUN:
            self._receive_stun(bytes(data), now)
        else:
            self.drops[Drop.NOT_TURN] += 1

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """(payload, server address) pairs; over a stream, write the payloads in order."""
        out = list(self._outbox)
        self._outbox.clear()
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run, or None."""
        times = [transaction.deadline for transaction in self._transactions.values()]
        times += [item.due for item in self._refreshables() if item.due is not None]
        if self._refresh_due is not None:
            times.append(self._refresh_due)
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        """Retransmit or time out requests and send the refreshes that are due."""
        for tid, transaction in list(self._transactions.items()):
            if transaction.deadline <= now and tid in self._transactions:
                self._expire(tid, transaction, now)
        if self._refresh_due is not None and self._refresh_due <= now:
            self._refresh_due = None
            self._request(Method.REFRESH, [(AttrType.LIFETIME, self.requested_lifetime)], now)
        for permission in list(self._permissions.values()):
            if permission.due is not None and permission.due <= now:
                self._send_permission(permission, now)
        for channel in list(self._channels.values()):
            if channel.due is not None and channel.due <= now:
                self._send_channel_bind(channel, now)

    def next_event(self) -> TurnClientEvent | None:
        return self._events.popleft() if self._events else None

    # -- sending requests

    def _move(self, trigger: Trigger) -> None:
        after = TRANSITIONS[self.state].get(trigger)
        if after is None:
            raise TurnUsageError(f"{trigger.value} when the client is {self.state.value}")
        if after is not self.state and after in (State.CLOSING, State.CLOSED):
            self._forget_all()
        self.state = after

    def _require_allocation(self, what: str) -> None:
        if self.state is not State.ALLOCATED:
            raise TurnUsageError(f"{what} needs an allocation; the client is {self.state.value}")

    def _free_channel(self) -> int:
        # The cap on channels is at most the range, so the range always has one free.
        return next(n for n in range(MIN_CHANNEL, MAX_CHANNEL + 1) if n not in self._channel_peers)

    def _send_permission(self, permission: _Refreshable, now: float) -> None:
        permission.due = None
        body = [(AttrType.XOR_PEER_ADDRESS, permission.peer)]
        self._request(Method.CREATE_PERMISSION, body, now, permission.peer)

    def _send_channel_bind(self, channel: _Channel, now: float) -> None:
        channel.due = None
        body = [
            (AttrType.CHANNEL_NUMBER, channel.number),
            (AttrType.XOR_PEER_ADDRESS, channel.peer),
        ]
        self._request(Method.CHANNEL_BIND, body, now, channel.peer)

    def _request(
        self,
        method: Method,
        body: Sequence[tuple[int, Any]],
        now: float,
        peer: Address | None = None,
        retries: int = 0,
    ) -> None:
        tid = _transaction_id()
        message = Message(method, Class.REQUEST, tid, list(body))
        if self._nonce is not None and self._realm is not None:
            message.attributes.append((AttrType.USERNAME, self.username))
            message.attributes.append((AttrType.REALM, self._realm))
            message.attributes.append((AttrType.NONCE, self._nonce))
        if self.software is not None:
            message.attributes.append((AttrType.SOFTWARE, self.software))
        if self._nonce is not None:
            message.add_integrity(self._key)
        message.add_fingerprint()
        transaction = _Transaction(method, list(body), build(message), self._nonce, peer, retries)
        self._transactions[tid] = transaction
        self._transmit(transaction, now)

    def _transmit(self, transaction: _Transaction, now: float) -> None:
        transaction.attempts += 1
        self._queue(transaction.data)
        if self.stream:
            waits = sum(self._rto * 2**n for n in range(self._rc - 1)) + self._rto * self._rm
            transaction.deadline = now + waits
        elif transaction.attempts < self._rc:
            transaction.deadline = now + self._rto * 2 ** (transaction.attempts - 1)
        else:
            transaction.deadline = now + self._rto * self._rm

    def _expire(self, tid: bytes, transaction: _Transaction, now: float) -> None:
        if not self.stream and transaction.attempts < self._rc:
            self._transmit(transaction, now)
            return
        del self._transactions[tid]
        reason = f"no response after {transaction.attempts} request(s)"
        self._failed(transaction, Failure.TIMEOUT, reason)

    def _queue(self, data: bytes) -> None:
        if len(self._outbox) >= self.limits.max_queued:
            self.drops[Drop.QUEUE_FULL] += 1
            return
        self._outbox.append((data, self.server))

    def _event(self, event: TurnClientEvent) -> None:
        if len(self._events) >= self.limits.max_events:
            self.drops[Drop.EVENTS_FULL] += 1
            return
        self._events.append(event)

    # -- receiving

    def _receive_stun(self, data: bytes, now: float) -> None:
        try:
            message = parse(data)
            if message.get(AttrType.FINGERPRINT) is not None:
                check_fingerprint(data)
        except StunError:
            self.drops[Drop.MALFORMED] += 1
            return
        if message.cls is Class.INDICATION and message.method == Method.DATA:
            self._receive_data_indication(message)
        elif message.cls in (Class.SUCCESS, Class.ERROR):
            self._receive_response(message, data, now)
        else:
            self.drops[Drop.UNEXPECTED] += 1

    def _receive_data_indication(self, message: Message) -> None:
        peer = message.get(AttrType.XOR_PEER_ADDRESS)
        payload = message.get(AttrType.DATA)
        if peer is None or payload is None:
            self.drops[Drop.MALFORMED] += 1
        elif self.state is not State.ALLOCATED:
            self.drops[Drop.UNEXPECTED] += 1
        elif peer[0] not in self._permissions:
            self.drops[Drop.NO_PERMISSION] += 1
        else:
            self._event(DataReceived(peer, payload))

    def _receive_channel_data(self, data: bytes) -> None:
        try:
            frame = parse_channel_data(data)
        except StunError:
            self.drops[Drop.MALFORMED] += 1
            return
        peer = self._channel_peers.get(frame.channel)
        if self.state is not State.ALLOCATED:
            self.drops[Drop.UNEXPECTED] += 1
        elif peer is None:
            self.drops[Drop.NO_CHANNEL] += 1
        else:
            self._event(DataReceived(peer, frame.data, frame.channel))

    def _receive_response(self, message: Message, data: bytes, now: float) -> None:
        transaction = self._transactions.get(message.transaction_id)
        if transaction is None or message.method != transaction.method:
            self.drops[Drop.UNKNOWN_TRANSACTION] += 1
            return
        if not self._authentic(message, data, transaction):
            self.drops[Drop.BAD_INTEGRITY] += 1
            return
        del self._transactions[message.transaction_id]
        if message.cls is Class.ERROR:
            self._error_response(transaction, message, now)
        elif message.unknown_required:
            names = ", ".join(f"0x{kind:04x}" for kind in message.unknown_required)
            self._failed(transaction, Failure.BAD_RESPONSE, f"unknown attributes {names}")
        else:
            self._success(transaction, message, now)

    def _authentic(self, message: Message, data: bytes, transaction: _Transaction) -> bool:
        """RFC 8489 §9.2.5: what answers a signed request must be signed, 401 and 438 aside."""
        if transaction.nonce is None:
            return True
        error: ErrorValue | None = message.get(AttrType.ERROR_CODE)
        if message.cls is Class.ERROR and error is not None and error.code in _UNSIGNED_ERRORS:
            return True
        try:
            check_integrity(data, self._key)
        except StunError:
            return False
        return True

    # -- error responses, credentials, failures

    def _error_response(self, transaction: _Transaction, message: Message, now: float) -> None:
        error: ErrorValue | None = message.get(AttrType.ERROR_CODE)
        if error is None:
            self._failed(transaction, Failure.BAD_RESPONSE, "error response without ERROR-CODE")
            return
        if error.code in _UNSIGNED_ERRORS and self._take_challenge(transaction, message):
            self._request(
                transaction.method,
                transaction.body,
                now,
                transaction.peer,
                transaction.retries + 1,
            )
            return
        self._failed(transaction, error.code, error.reason)

    def _take_challenge(self, transaction: _Transaction, message: Message) -> bool:
        """Adopt the REALM and NONCE of a 401 or 438 if the request may go again with them."""
        realm = message.get(AttrType.REALM) or self._realm
        nonce = message.get(AttrType.NONCE)
        if realm is None or nonce is None or nonce == transaction.nonce:
            return False
        if transaction.retries >= MAX_NONCE_RETRIES:
            return False
        error: ErrorValue = message.get(AttrType.ERROR_CODE)
        if error.code == 401 and transaction.nonce is not None:
            return False  # our credentials were refused: the password is wrong
        try:
            key = long_term_key(self.username, realm, self._password)
        except CredentialError:
            return False  # a realm no key can be made with
        self._realm, self._nonce, self._key = realm, nonce, key
        return True

    def _failed(self, transaction: _Transaction, code: int, reason: str) -> None:
        method, peer = transaction.method, transaction.peer
        if method == Method.CREATE_PERMISSION and peer is not None:
            self.release_peer(peer)
        elif method == Method.CHANNEL_BIND and peer is not None:
            self._drop_channel(peer)
        else:
            self._move(Trigger.LOST)
        self._event(TurnFailed(code, reason, method, peer))

    def _drop_channel(self, peer: Address) -> None:
        channel = self._channels.pop(peer, None)
        if channel is not None:
            del self._channel_peers[channel.number]

    def _forget_all(self) -> None:
        self._transactions.clear()
        self._refresh_due = None
        self._permissions.clear()
        self._channels.clear()
        self._channel_peers.clear()

    # -- success responses

    def _success(self, transaction: _Transaction, message: Message, now: float) -> None:
        method = transaction.method
        if method == Method.ALLOCATE:
            self._allocated(transaction, message, now)
        elif method == Method.REFRESH:
            self._refreshed(message, now)
        elif transaction.peer is not None:
            self._peer_installed(method, transaction.peer, now)

    def _allocated(self, transaction: _Transaction, message: Message, now: float) -> None:
        relayed = message.get(AttrType.XOR_RELAYED_ADDRESS)
        if relayed is None:
            self._failed(transaction, Failure.BAD_RESPONSE, "no XOR-RELAYED-ADDRESS")
            return
        self._move(Trigger.ALLOCATED)
        self.relayed = relayed
        self.mapped = message.get(AttrType.XOR_MAPPED_ADDRESS)
        self._schedule_refresh(message, now)
        self._event(AllocationSucceeded(relayed, self.mapped, self.lifetime))

    def _refreshed(self, message: Message, now: float) -> None:
        if self.state is State.CLOSING or message.get(AttrType.LIFETIME) == 0:
            self._move(Trigger.CLOSED if self.state is State.CLOSING else Trigger.LOST)
            self._event(AllocationClosed())
            return
        self._schedule_refresh(message, now)
        self._event(AllocationRefreshed(self.lifetime))

    def _schedule_refresh(self, message: Message, now: float) -> None:
        granted = message.get(AttrType.LIFETIME)
        self.lifetime = self.requested_lifetime if granted is None else int(granted)
        lead = REFRESH_MARGIN if self.lifetime > 2 * REFRESH_MARGIN else self.lifetime / 2
        self._refresh_due = now + self.lifetime - lead

    def _peer_installed(self, method: Method, peer: Address, now: float) -> None:
        item: _Refreshable | None
        if method == Method.CREATE_PERMISSION:
            item, every = self._permissions.get(peer[0]), PERMISSION_REFRESH
        else:
            item, every = self._channels.get(peer), CHANNEL_REFRESH
        if item is None:
            return  # released while the request was out
        item.due = now + every
        if item.installed:
            return
        item.installed = True
        if isinstance(item, _Channel):
            self._event(ChannelBound(peer, item.number))
        else:
            self._event(PermissionCreated(peer))

    def _refreshables(self) -> list[_Refreshable]:
        return [*self._permissions.values(), *self._channels.values()]


def _check_text(attr_type: AttrType, value: str) -> None:
    """Raise StunBuildError now if ``value`` cannot be sent as ``attr_type``."""
    BY_CODE[attr_type].pack(value, b"")


def _transaction_id() -> bytes:
    return os.urandom(TRANSACTION_ID_SIZE)


class TurnStream:
    """A :class:`TurnClient` made with ``stream=True``, as a :class:`~edge.sansio.StreamCore`.

    Cuts the TCP byte stream into STUN and ChannelData messages with a
    :class:`~edge.stun.framing.StreamDeframer` and hands each to the client as
    if it came from the server; joins the client's output into bytes. A stream
    that loses its framing raises FramingError (a RemoteError: the adapter
    closes the connection).
    """

    def __init__(self, client: TurnClient) -> None:
        if not client.stream:
            raise TurnUsageError("TurnStream needs a TurnClient made with stream=True")
        self.client = client
        self._deframer = StreamDeframer()
        self._now = 0.0

    def receive_data(self, data: bytes, now: float) -> None:
        self._now = now
        for message in self._deframer.feed(data):
            self.client.receive_datagram(message, self.client.server, now)

    def data_to_send(self) -> bytes:
        return b"".join(data for data, _ in self.client.datagrams_to_send(self._now))

    def get_timer(self) -> float | None:
        return self.client.get_timer()

    def handle_timer(self, now: float) -> None:
        self._now = now
        self.client.handle_timer(now)

    def next_event(self) -> TurnClientEvent | None:
        return self.client.next_event()

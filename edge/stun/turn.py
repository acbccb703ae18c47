"""A sans-IO TURN server core for UDP and TCP clients (RFC 8656), with TURN REST credentials.

How it works: :class:`TurnServer` serves one listening address, over UDP, TCP
or both. The owner feeds it what the listening sockets receive
(:meth:`TurnServer.receive_from_client`) and what each relayed socket receives
(:meth:`TurnServer.receive_from_peer`), then drains
:meth:`TurnServer.datagrams_to_client` (send to the client) and
:meth:`TurnServer.datagrams_to_peers` (send from a relayed socket to a peer).
It never opens a socket: a relayed address comes from the ``allocate_relay``
callback and goes back through ``release_relay``.

Clients over TCP (RFC 8656 §3.1; port 443 too): the owner cuts each
connection's byte stream into whole messages with
:class:`~edge.stun.framing.StreamDeframer` and passes each with
``stream=True`` and the connection's remote address as ``client``, which is
unique among open connections. Relaying to peers stays UDP. An allocation
remembers whether it was made over a stream: ChannelData to that client is
padded to four bytes as a stream requires (§12.5), and a request, Send or
ChannelData for it arriving over the other transport is a different 5-tuple,
so it finds no allocation (437, or a ``NO_ALLOCATION`` drop). What
:meth:`TurnServer.datagrams_to_client` returns has the same shape for both
transports, (bytes, client): the owner writes it to the TCP connection from
that address if one is open, else sends it from the UDP socket. Every item is
one whole message, so on a stream the owner writes it as it is. When a
connection closes the owner calls :meth:`TurnServer.client_gone`: the 5-tuple
is gone, so its allocation is deleted at once and what was queued for it is
discarded (else the owner would send it over UDP). A UDP client that vanishes
leaves its allocation to expire (below).

``now`` is Unix time in seconds everywhere: the credentials carry a Unix expiry.

A datagram from a client is sorted by its first byte (RFC 7983):

* ChannelData (§12.4) on a bound channel of the client's allocation is relayed
  to the channel's peer, if the permission for its IP is still installed.
* A Send indication (§11.2) with XOR-PEER-ADDRESS and DATA is relayed the same
  way when the client has an allocation and a permission for the peer's IP;
  one with a comprehension-required attribute we do not honour (DONT-FRAGMENT
  among them: the core cannot set the DF bit) is dropped (RFC 8489 §6.3.2).
* A Binding request is answered as a STUN server would (RFC 8489). Over UDP
  it is first offered to ``binding_hook`` when one is set: an RFC 5780 server
  that holds this socket and three more (:mod:`edge.stun.discovery`) takes
  it, so that the answer carries OTHER-ADDRESS and a CHANGE-REQUEST is
  answered from the socket it names instead of with 420. What the hook takes
  it answers and counts itself.
* Any other request is authenticated first (RFC 8489 §9.2.4), then dispatched
  on its method: Allocate (§7.2), Refresh (§8.2), CreatePermission (§10.2),
  ChannelBind (§12.2). Anything else is dropped and counted. Every request
  but Allocate needs an allocation on the client's address (else 437) made
  with the same USERNAME (else 441). Answers after authentication, errors
  included, carry MESSAGE-INTEGRITY; a retransmitted Allocate gets the stored
  success response again (§7.2).

A datagram from a peer reaches the client only through a permission for the
peer's IP: as ChannelData when a channel is bound to that peer, else as a Data
indication (§11.3). Relayed bytes, both ways, come out of the allocation's
token bucket; what exceeds it is dropped.

Authentication, in the RFC's order: no MESSAGE-INTEGRITY gives 401 with REALM
and a NONCE; MESSAGE-INTEGRITY without USERNAME, REALM or NONCE gives 400; a
USERNAME that is not valid REST credentials (malformed or expired, see
:func:`~edge.login.relay.check_relay_credentials`) or a MESSAGE-INTEGRITY that
does not verify under ``long_term_key(username, realm, password)`` gives 401;
a nonce that is not ours or has expired gives 438 with a fresh one. The nonce
is stateless: its expiry and an HMAC of the expiry and the client's address
under ``now_nonce_secret``. The REST password is recomputed from the username,
so the relay stores no account.

No amplification: an unauthenticated request only ever gets one answer of at
most :data:`MAX_UNAUTHENTICATED_RESPONSE` bytes (REALM and SOFTWARE are capped
at :data:`MAX_REALM` and :data:`MAX_SOFTWARE` bytes to keep it so), and
every queue, table and bucket is capped by :class:`TurnLimits`; what does not
fit is dropped and counted in :attr:`TurnServer.drops`.

Lifetimes: allocations, permissions (300 s, §9) and channel bindings (600 s,
§12) expire at :meth:`TurnServer.handle_timer`; :meth:`TurnServer.get_timer`
says when. Each allocation keeps its own next deadline; a heap of those
(stale entries skipped, rebuilt when it grows) finds the earliest.

Not done: TLS and DTLS to the client (the owner may terminate TLS and pass the
plain stream), TCP allocations (RFC 6062), IPv6 relayed addresses through
REQUESTED-ADDRESS-FAMILY (440), EVEN-PORT, RESERVATION-TOKEN and
DONT-FRAGMENT (refused with 420), ICMP forwarding (§11.5).
"""

import base64
import hashlib
import heapq
import hmac
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from edge.login.relay import RelayAuthError, check_relay_credentials
from edge.sansio import Address
from edge.stun.attributes import AttrType
from edge.stun.channel import (
    MAX_CHANNEL,
    MIN_CHANNEL,
    ChannelData,
    Kind,
    build_channel_data,
    classify,
    parse_channel_data,
)
from edge.stun.codec import (
    Class,
    Message,
    Method,
    build,
    check_integrity,
    long_term_key,
    parse,
)
from edge.stun.errors import StunBuildError, StunError
from edge.stun.server import BindingServer, Outcome

UDP = 17
"""REQUESTED-TRANSPORT for UDP: the IP protocol number (RFC 8656 §7.2)."""

PERMISSION_LIFETIME = 300.0
"""A permission lasts five minutes unless refreshed (RFC 8656 §9)."""

CHANNEL_LIFETIME = 600.0
"""A channel binding lasts ten minutes unless refreshed (RFC 8656 §12)."""

MAX_REALM = 64
"""REALM we send, in UTF-8 bytes, so that unauthenticated answers stay small."""

MAX_SOFTWARE = 32
"""SOFTWARE in Binding answers, in UTF-8 bytes, for the same reason."""

MAX_UNAUTHENTICATED_RESPONSE = 200
"""No answer to a request that has not authenticated (Binding included) is larger:
with the caps above a 401 or 438 takes about 150 bytes and a Binding answer at
most 132 (a 420 listing :data:`~edge.stun.server.MAX_UNKNOWN` types)."""

NOT_HONOURED = frozenset(
    {
        AttrType.EVEN_PORT,
        AttrType.RESERVATION_TOKEN,
        AttrType.DONT_FRAGMENT,
        AttrType.RESPONSE_PORT,
        AttrType.PADDING,
    }
)
"""Comprehension-required attributes the codec parses but this server refuses (420)."""

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    486: "Allocation Quota Reached",
    508: "Insufficient Capacity",
}
"""Reason phrases of the error codes this server sends (RFC 8489 and RFC 8656)."""

MAX_PEER_DATA = 0xFFFF - 64
"""Peer payloads larger than this cannot fit a Data indication and are dropped."""

SUCCESS = 200
"""The outcome counted for a success response in :attr:`TurnServer.requests`."""

_SERVED = (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND)


@dataclass(frozen=True)
class TurnLimits:
    """Caps and lifetimes; every table and queue of :class:`TurnServer` has one."""

    max_allocations: int = 1000
    """Allocations in all; beyond it Allocate gets 508."""
    max_allocations_per_user: int = 4
    """Allocations per user id; beyond it Allocate gets 486."""
    max_permissions: int = 32
    """Peer IPs with a permission, per allocation; beyond it 508."""
    max_channels: int = 32
    """Channel bindings per allocation; beyond it 508."""
    bandwidth: float = 64_000.0
    """Relayed bytes per second per allocation, both directions together."""
    burst: float = 64_000.0
    """Token bucket depth in bytes; a packet larger than this is always dropped."""
    default_lifetime: int = 600
    """Allocation lifetime when the request names none (RFC 8656 §7.2)."""
    max_lifetime: int = 3600
    """The longest allocation lifetime granted (RFC 8656 §7.2)."""
    nonce_lifetime: int = 600
    """Seconds a NONCE stays valid; after it requests get 438."""
    max_queued: int = 1024
    """Datagrams waiting in each outgoing queue, and events waiting to be read."""

    def check(self) -> None:
        """Raise StunBuildError when a value cannot work."""
        counts = (
            self.max_allocations,
            self.max_allocations_per_user,
            self.max_permissions,
            self.max_channels,
            self.max_queued,
            self.nonce_lifetime,
        )
        if min(counts) < 1 or not self.bandwidth > 0 or not self.burst > 0:
            raise StunBuildError(f"TURN limits must be positive: {self}")
        if not 1 <= self.default_lifetime <= self.max_lifetime:
            raise StunBuildError(f"TURN default lifetime outside 1..max: {self}")


class Drop(Enum):
    """Why a datagram was not relayed or answered; :attr:`TurnServer.drops` counts them."""

    MALFORMED = "malformed"
    NOT_STUN = "not-stun"
    IGNORED = "ignored"
    NO_ALLOCATION = "no-allocation"
    NO_PERMISSION = "no-permission"
    NO_CHANNEL = "no-channel"
    BANDWIDTH = "bandwidth"
    OVERLOADED = "overloaded"
    OVERSIZED = "oversized"
    UNKNOWN_ATTRIBUTE = "unknown-attribute"


@dataclass(frozen=True)
class AllocationCreated:
    """An allocation now relays for ``client`` at ``relayed``."""

    client: Address
    relayed: Address
    user_id: str
    lifetime: int


@dataclass(frozen=True)
class AllocationDeleted:
    """An allocation ended (``expired``, or refreshed to lifetime 0, or its client's TCP
    connection closed); its relay was released."""

    client: Address
    relayed: Address
    user_id: str
    expired: bool


TurnEvent = AllocationCreated | AllocationDeleted


@dataclass
class _Bucket:
    """A token bucket of relayed bytes."""

    rate: float
    depth: float
    tokens: float
    stamp: float

    def take(self, size: int, now: float) -> bool:
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(self.depth, self.tokens + elapsed * self.rate)
        self.stamp = max(self.stamp, now)
        if size > self.tokens:
            return False
        self.tokens -= size
        return True


@dataclass
class _Channel:
    peer: Address
    expires: float


@dataclass
class _Allocation:
    client: Address
    relayed: Address
    username: str
    user_id: str
    key: bytes
    expires: float
    transaction_id: bytes
    response: bytes
    bucket: _Bucket
    stream: bool
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, _Channel] = field(default_factory=dict)
    channel_of: dict[Address, int] = field(default_factory=dict)

    def deadline(self) -> float:
        """The earliest time something of this allocation expires."""
        times = [self.expires, *self.permissions.values()]
        times += [channel.expires for channel in self.channels.values()]
        return min(times)

    def expire_parts(self, now: float) -> None:
        """Forget the permissions and channels whose time has come."""
        for host, expires in list(self.permissions.items()):
            if expires <= now:
                del self.permissions[host]
        for number, channel in list(self.channels.items()):
            if channel.expires <= now:
                del self.channels[number]
                del self.channel_of[channel.peer]

    def permitted(self, peer: Address, now: float) -> bool:
        expires = self.permissions.get(peer[0])
        return expires is not None and expires > now


@dataclass
class _Request:
    """An authenticated request: the parsed message and whose key signed it."""

    message: Message
    client: Address
    username: str
    user_id: str
    key: bytes
    stream: bool


class _Refusal(Exception):
    """Internal: answer the request with this error code."""

    def __init__(self, code: int) -> None:
        super().__init__(REASONS[code])
        self.code = code


class TurnServer:
    """The TURN server core for one listening address; see the module docstring.

    ``secret`` is the REST secret shared with the login server; ``allocate_relay``
    returns a fresh relayed address for a client (or None when out of ports)
    and ``release_relay`` takes one back once its allocation has ended: close
    that socket. Without ``release_relay`` the owner must drain
    :class:`AllocationDeleted` from :meth:`next_event` after every call, since
    the event queue keeps only the newest ``max_queued`` events.
    Counters: :attr:`requests`, :attr:`relayed`, :attr:`drops`.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        allocate_relay: Callable[[Address], Address | None],
        *,
        now_nonce_secret: bytes,
        limits: TurnLimits,
        release_relay: Callable[[Address], None] | None = None,
        software: str = "edge",
        binding_hook: Callable[[bytes, Address], bool] | None = None,
    ) -> None:
        if not realm or len(realm.encode("utf-8", "replace")) > MAX_REALM:
            raise StunBuildError(f"REALM: {realm!r} must be 1..{MAX_REALM} bytes")
        if len(software.encode("utf-8", "replace")) > MAX_SOFTWARE:
            raise StunBuildError(f"SOFTWARE: {software!r} is over {MAX_SOFTWARE} bytes")
        if not secret or not now_nonce_secret:
            raise StunBuildError("TURN: the REST and nonce secrets must be non-empty")
        limits.check()
        self.realm = realm
        self.secret = secret
        self.limits = limits
        self._allocate_relay = allocate_relay
        self._release_relay = release_relay
        self._nonce_secret = now_nonce_secret
        self._binding = BindingServer(software)
        self.binding_hook = binding_hook
        """Offered each Binding request from a UDP client, as (bytes, client), before
        this core answers it; returning True means the hook took it. It may be set
        after construction, once the sockets it answers from are bound."""
        self._allocations: dict[Address, _Allocation] = {}
        self._by_relay: dict[Address, _Allocation] = {}
        self._per_user: Counter[str] = Counter()
        self._heap: list[tuple[float, Address]] = []
        self._to_client: deque[tuple[bytes, Address]] = deque()
        self._to_peers: deque[tuple[Address, Address, bytes]] = deque()
        self._events: deque[TurnEvent] = deque()
        self._indications = 0
        self.requests: Counter[tuple[str, int]] = Counter()
        """Requests by (method name, outcome): an error code, or :data:`SUCCESS`."""
        self.relayed: Counter[str] = Counter()
        """``packets-to-peer``, ``bytes-to-peer``, ``packets-to-client``, ``bytes-to-client``."""
        self.drops: Counter[Drop] = Counter()
        """Datagrams dropped, by reason."""

    # -- the owner's interface

    def receive_from_client(
        self, data: bytes, client: Address, now: float, *, stream: bool = False
    ) -> None:
        """Handle one datagram the UDP listening socket received from ``client``, or
        with ``stream`` one whole message cut from the TCP connection whose remote
        address is ``client`` (by :class:`~edge.stun.framing.StreamDeframer`)."""
        kind = classify(data)
        if kind is Kind.CHANNEL_DATA:
            self._client_channel_data(data, client, now, stream)
        elif kind is Kind.STUN:
            self._client_stun(data, client, now, stream)
        else:
            self.drops[Drop.NOT_STUN] += 1

    def receive_from_peer(self, relayed: Address, peer: Address, data: bytes, now: float) -> None:
        """Handle one datagram the socket at ``relayed`` received from ``peer``."""
        allocation = self._by_relay.get(relayed)
        if allocation is None:
            self.drops[Drop.NO_ALLOCATION] += 1
            return
        if len(data) > MAX_PEER_DATA:
            self.drops[Drop.OVERSIZED] += 1
            return
        if not allocation.permitted(peer, now):
            self.drops[Drop.NO_PERMISSION] += 1
            return
        if not allocation.bucket.take(len(data), now):
            self.drops[Drop.BANDWIDTH] += 1
            return
        number = allocation.channel_of.get(peer)
        if number is not None:
            out = build_channel_data(ChannelData(number, data), stream=allocation.stream)
        else:
            out = self._data_indication(peer, data)
        if self._queue_to_client(out, allocation.client):
            self.relayed["packets-to-client"] += 1
            self.relayed["bytes-to-client"] += len(data)

    def datagrams_to_client(self) -> list[tuple[bytes, Address]]:
        """(message, client address) pairs: write each to the TCP connection from that
        address if one is open, else send it from the UDP listening socket."""
        out = list(self._to_client)
        self._to_client.clear()
        return out

    def client_gone(self, client: Address, now: float) -> None:
        """The TCP connection from ``client`` closed: delete its allocation, if it has
        one, and drop what is queued for that address. Call it before the next
        :meth:`datagrams_to_client`, and before a new connection can get the address."""
        allocation = self._allocation_of(client, stream=True)
        if allocation is not None:
            self._delete(allocation, expired=False)
        # Queued answers would otherwise go out over UDP to whoever holds the address.
        self._to_client = deque(item for item in self._to_client if item[1] != client)

    def datagrams_to_peers(self) -> list[tuple[Address, Address, bytes]]:
        """(relayed address, peer address, payload): send each from that relayed socket."""
        out = list(self._to_peers)
        self._to_peers.clear()
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run, or None if nothing can expire."""
        while self._heap:
            deadline, client = self._heap[0]
            allocation = self._allocations.get(client)
            if allocation is not None and allocation.deadline() == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Expire allocations, permissions and channels due by ``now``."""
        survivors: list[_Allocation] = []
        while self._heap and self._heap[0][0] <= now:
            _, client = heapq.heappop(self._heap)
            allocation = self._allocations.get(client)
            if allocation is None or allocation.deadline() > now:
                continue
            if allocation.expires <= now:
                self._delete(allocation, expired=True)
                continue
            allocation.expire_parts(now)
            survivors.append(allocation)
        for allocation in survivors:
            self._schedule(allocation)

    def next_event(self) -> TurnEvent | None:
        """The next :class:`AllocationCreated` or :class:`AllocationDeleted`, or None."""
        return self._events.popleft() if self._events else None

    @property
    def allocation_count(self) -> int:
        return len(self._allocations)

    def has_allocation(self, client: Address) -> bool:
        """Whether ``client`` (an address, or a TCP connection's remote address) holds one."""
        return client in self._allocations

    # -- relaying from the client

    def _client_channel_data(self, data: bytes, client: Address, now: float, stream: bool) -> None:
        try:
            message = parse_channel_data(data)
        except StunError:
            self.drops[Drop.MALFORMED] += 1
            return
        allocation = self._allocation_of(client, stream)
        if allocation is None:
            self.drops[Drop.NO_ALLOCATION] += 1
            return
        channel = allocation.channels.get(message.channel)
        if channel is None:
            self.drops[Drop.NO_CHANNEL] += 1
            return
        self._relay_to_peer(allocation, channel.peer, message.data, now)

    def _send_indication(self, message: Message, client: Address, now: float, stream: bool) -> None:
        allocation = self._allocation_of(client, stream)
        peer = message.get(AttrType.XOR_PEER_ADDRESS)
        payload = message.get(AttrType.DATA)
        if allocation is None:
            self.drops[Drop.NO_ALLOCATION] += 1
        elif peer is None or payload is None:
            self.drops[Drop.MALFORMED] += 1
        elif self._unknown(message):
            self.drops[Drop.UNKNOWN_ATTRIBUTE] += 1
        else:
            self._relay_to_peer(allocation, peer, payload, now)

    def _relay_to_peer(
        self, allocation: _Allocation, peer: Address, payload: bytes, now: float
    ) -> None:
        if not allocation.permitted(peer, now):
            self.drops[Drop.NO_PERMISSION] += 1
            return
        if not allocation.bucket.take(len(payload), now):
            self.drops[Drop.BANDWIDTH] += 1
            return
        if len(self._to_peers) >= self.limits.max_queued:
            self.drops[Drop.OVERLOADED] += 1
            return
        self._to_peers.append((allocation.relayed, peer, payload))
        self.relayed["packets-to-peer"] += 1
        self.relayed["bytes-to-peer"] += len(payload)

    def _data_indication(self, peer: Address, data: bytes) -> bytes:
        """A Data indication (§11.3); an indication's transaction id need only differ."""
        self._indications += 1
        tid = self._indications.to_bytes(12, "big")
        message = Message(Method.DATA, Class.INDICATION, tid)
        message.attributes.append((AttrType.XOR_PEER_ADDRESS, peer))
        message.attributes.append((AttrType.DATA, data))
        return build(message)

    # -- STUN from the client

    def _client_stun(self, data: bytes, client: Address, now: float, stream: bool) -> None:
        try:
            message = parse(data)
        except StunError:
            self.drops[Drop.MALFORMED] += 1
            return
        if message.cls is Class.INDICATION and message.method == Method.SEND:
            self._send_indication(message, client, now, stream)
        elif message.cls is not Class.REQUEST:
            self.drops[Drop.IGNORED] += 1
        elif message.method == Method.BINDING:
            self._binding_request(message, data, client, stream)
        elif message.method in _SERVED:
            self._request(message, data, client, now, stream)
        else:
            self.drops[Drop.IGNORED] += 1

    def _binding_request(
        self, message: Message, data: bytes, client: Address, stream: bool
    ) -> None:
        # Over TCP the answer must go back on the connection, which the hook cannot do.
        if self.binding_hook is not None and not stream and self.binding_hook(data, client):
            return
        answer, outcome = self._binding.answer(message, client)
        self._answer(message, SUCCESS if outcome is Outcome.SUCCESS else 420, answer, client)

    def _request(
        self, message: Message, data: bytes, client: Address, now: float, stream: bool
    ) -> None:
        try:
            request = self._authenticate(message, data, client, now, stream)
        except _Refusal as refusal:
            self._refuse_unauthenticated(message, refusal.code, client, now)
            return
        try:
            response = self._dispatch(request, now)
        except _Refusal as refusal:
            response = self._signed(self._error(message, refusal.code), request.key)
            self._answer(message, refusal.code, response, client)
            return
        self._answer(message, SUCCESS, response, client)

    def _dispatch(self, request: _Request, now: float) -> bytes:
        unknown = self._unknown(request.message)
        if unknown:
            raise _Refusal(420)
        method = request.message.method
        if method == Method.ALLOCATE:
            return self._allocate(request, now)
        allocation = self._allocation_of(request.client, request.stream)
        if allocation is None:
            raise _Refusal(437)
        if allocation.username != request.username:
            raise _Refusal(441)
        if method == Method.REFRESH:
            return self._refresh(request, allocation, now)
        if method == Method.CREATE_PERMISSION:
            return self._create_permission(request, allocation, now)
        return self._channel_bind(request, allocation, now)

    @staticmethod
    def _unknown(message: Message) -> list[int]:
        found = list(message.unknown_required)
        found += [kind for kind, _ in message.attributes if kind in NOT_HONOURED]
        return found

    # -- authentication (RFC 8489 §9.2.4)

    def nonce(self, client: Address, now: float) -> str:
        """A fresh NONCE for ``client``: expiry, then an HMAC binding it to the address."""
        expiry = int(now) + self.limits.nonce_lifetime
        return f"{expiry}-{self._nonce_mac(expiry, client)}"

    def _nonce_mac(self, expiry: int, client: Address) -> str:
        text = f"{expiry}|{client[0]}|{client[1]}".encode()
        return hmac.new(self._nonce_secret, text, hashlib.sha256).hexdigest()[:24]

    def _nonce_valid(self, nonce: str, client: Address, now: float) -> bool:
        stamp, _, mac = nonce.partition("-")
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            return False
        expected = self._nonce_mac(int(stamp), client)
        return hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")) and (
            now < int(stamp)
        )

    def _authenticate(
        self, message: Message, data: bytes, client: Address, now: float, stream: bool
    ) -> _Request:
        has_mac = any(
            kind in (AttrType.MESSAGE_INTEGRITY, AttrType.MESSAGE_INTEGRITY_SHA256)
            for kind, _ in message.attributes
        )
        if not has_mac:
            raise _Refusal(401)
        username = message.get(AttrType.USERNAME)
        realm = message.get(AttrType.REALM)
        nonce = message.get(AttrType.NONCE)
        if username is None or realm is None or nonce is None:
            raise _Refusal(400)
        password = self._rest_password(username)
        try:
            user_id = check_relay_credentials(self.secret, username, password, int(now))
            key = long_term_key(username, self.realm, password)
            check_integrity(data, key)
        except (RelayAuthError, StunError):
            raise _Refusal(401) from None
        if realm != self.realm or not self._nonce_valid(nonce, client, now):
            raise _Refusal(438)
        return _Request(message, client, username, user_id, key, stream)

    def _rest_password(self, username: str) -> str:
        """The TURN REST password for ``username``: base64(HMAC-SHA1(secret, username))."""
        raw = username.encode("utf-8", "replace")
        return base64.b64encode(hmac.new(self.secret, raw, hashlib.sha1).digest()).decode()

    def _refuse_unauthenticated(
        self, message: Message, code: int, client: Address, now: float
    ) -> None:
        response = self._error(message, code)
        if code in (401, 438):
            response.attributes.append((AttrType.REALM, self.realm))
            response.attributes.append((AttrType.NONCE, self.nonce(client, now)))
        response.add_fingerprint()
        data = build(response)
        if len(data) > MAX_UNAUTHENTICATED_RESPONSE:
            raise StunBuildError(f"a {len(data)}-byte unauthenticated answer")
        self._answer(message, code, data, client)

    # -- Allocate (§7.2)

    def _allocate(self, request: _Request, now: float) -> bytes:
        existing = self._allocations.get(request.client)
        if existing is not None:
            same_transport = existing.stream == request.stream
            if same_transport and existing.transaction_id == request.message.transaction_id:
                return existing.response
            # Over the other transport it is another 5-tuple, but the owner routes
            # answers by address alone, so one address holds one allocation.
            raise _Refusal(437)
        transport = request.message.get(AttrType.REQUESTED_TRANSPORT)
        if transport is None:
            raise _Refusal(400)
        if transport != UDP:
            raise _Refusal(442)
        family = request.message.get(AttrType.REQUESTED_ADDRESS_FAMILY)
        if family is not None and family != 1:
            raise _Refusal(440)
        self._check_quota(request.user_id)
        relayed = self._allocate_relay(request.client)
        if relayed is None:
            raise _Refusal(508)
        return self._install(request, relayed, now)

    def _check_quota(self, user_id: str) -> None:
        if self._per_user[user_id] >= self.limits.max_allocations_per_user:
            raise _Refusal(486)
        if len(self._allocations) >= self.limits.max_allocations:
            raise _Refusal(508)

    def _install(self, request: _Request, relayed: Address, now: float) -> bytes:
        lifetime = self._lifetime(request.message) or self.limits.default_lifetime
        message = self._success(request.message)
        message.attributes.append((AttrType.XOR_RELAYED_ADDRESS, relayed))
        message.attributes.append((AttrType.LIFETIME, lifetime))
        message.attributes.append((AttrType.XOR_MAPPED_ADDRESS, request.client))
        response = self._signed(message, request.key)
        limits = self.limits
        allocation = _Allocation(
            client=request.client,
            relayed=relayed,
            username=request.username,
            user_id=request.user_id,
            key=request.key,
            expires=now + lifetime,
            transaction_id=request.message.transaction_id,
            response=response,
            bucket=_Bucket(limits.bandwidth, limits.burst, limits.burst, now),
            stream=request.stream,
        )
        self._allocations[request.client] = allocation
        self._by_relay[relayed] = allocation
        self._per_user[request.user_id] += 1
        self._schedule(allocation)
        self._event(AllocationCreated(request.client, relayed, request.user_id, lifetime))
        return response

    def _lifetime(self, message: Message) -> int:
        """The desired lifetime (§7.2): the request's, capped at the maximum, at least the
        default; 0 when the request asks for 0 (a Refresh that deletes, §8.2)."""
        requested = message.get(AttrType.LIFETIME)
        if requested is None:
            return self.limits.default_lifetime
        if requested == 0:
            return 0
        return max(self.limits.default_lifetime, min(int(requested), self.limits.max_lifetime))

    # -- Refresh (§8.2)

    def _refresh(self, request: _Request, allocation: _Allocation, now: float) -> bytes:
        lifetime = self._lifetime(request.message)
        if lifetime == 0:
            self._delete(allocation, expired=False)
        else:
            allocation.expires = now + lifetime
            self._schedule(allocation)
        message = self._success(request.message)
        message.attributes.append((AttrType.LIFETIME, lifetime))
        return self._signed(message, request.key)

    # -- CreatePermission (§10.2) and ChannelBind (§12.2)

    def _create_permission(self, request: _Request, allocation: _Allocation, now: float) -> bytes:
        peers = [
            value for kind, value in request.message.attributes if kind == AttrType.XOR_PEER_ADDRESS
        ]
        if not peers:
            raise _Refusal(400)
        hosts = {peer[0] for peer in peers}
        if len(hosts | allocation.permissions.keys()) > self.limits.max_permissions:
            raise _Refusal(508)
        for host in hosts:
            allocation.permissions[host] = now + PERMISSION_LIFETIME
        self._schedule(allocation)
        return self._signed(self._success(request.message), request.key)

    def _channel_bind(self, request: _Request, allocation: _Allocation, now: float) -> bytes:
        number = request.message.get(AttrType.CHANNEL_NUMBER)
        peer = request.message.get(AttrType.XOR_PEER_ADDRESS)
        if number is None or peer is None or not MIN_CHANNEL <= number <= MAX_CHANNEL:
            raise _Refusal(400)
        bound = allocation.channels.get(number)
        if bound is not None and bound.peer != peer:
            raise _Refusal(400)
        if allocation.channel_of.get(peer, number) != number:
            raise _Refusal(400)
        new_host = peer[0] not in allocation.permissions
        if bound is None and len(allocation.channels) >= self.limits.max_channels:
            raise _Refusal(508)
        if new_host and len(allocation.permissions) >= self.limits.max_permissions:
            raise _Refusal(508)
        allocation.channels[number] = _Channel(peer, now + CHANNEL_LIFETIME)
        allocation.channel_of[peer] = number
        allocation.permissions[peer[0]] = now + PERMISSION_LIFETIME
        self._schedule(allocation)
        return self._signed(self._success(request.message), request.key)

    # -- tables, timers, queues

    def _allocation_of(self, client: Address, stream: bool) -> _Allocation | None:
        """The allocation of this 5-tuple: one the address made over the other
        transport is not it."""
        allocation = self._allocations.get(client)
        if allocation is None or allocation.stream != stream:
            return None
        return allocation

    def _schedule(self, allocation: _Allocation) -> None:
        heapq.heappush(self._heap, (allocation.deadline(), allocation.client))
        if len(self._heap) > 4 * len(self._allocations) + 64:
            self._heap = [(item.deadline(), item.client) for item in self._allocations.values()]
            heapq.heapify(self._heap)

    def _delete(self, allocation: _Allocation, *, expired: bool) -> None:
        del self._allocations[allocation.client]
        del self._by_relay[allocation.relayed]
        self._per_user[allocation.user_id] -= 1
        if self._per_user[allocation.user_id] <= 0:
            del self._per_user[allocation.user_id]
        if self._release_relay is not None:
            self._release_relay(allocation.relayed)
        self._event(
            AllocationDeleted(allocation.client, allocation.relayed, allocation.user_id, expired)
        )

    def _event(self, event: TurnEvent) -> None:
        if len(self._events) >= self.limits.max_queued:
            self._events.popleft()
        self._events.append(event)

    def _queue_to_client(self, data: bytes, client: Address) -> bool:
        if len(self._to_client) >= self.limits.max_queued:
            self.drops[Drop.OVERLOADED] += 1
            return False
        self._to_client.append((data, client))
        return True

    def _answer(self, request: Message, outcome: int, data: bytes, client: Address) -> None:
        self.requests[(_method_name(request.method), outcome)] += 1
        self._queue_to_client(data, client)

    # -- building responses

    @staticmethod
    def _success(request: Message) -> Message:
        return Message(request.method, Class.SUCCESS, request.transaction_id)

    @staticmethod
    def _error(request: Message, code: int) -> Message:
        message = Message(request.method, Class.ERROR, request.transaction_id)
        message.attributes.append((AttrType.ERROR_CODE, (code, REASONS[code])))
        if code == 420:
            unknown = [int(kind) for kind in TurnServer._unknown(request)][:16]
            message.attributes.append((AttrType.UNKNOWN_ATTRIBUTES, unknown))
        return message

    @staticmethod
    def _signed(message: Message, key: bytes) -> bytes:
        message.add_integrity(key)
        message.add_fingerprint()
        return build(message)


def _method_name(method: int) -> str:
    try:
        return Method(method).name
    except ValueError:
        return f"{method:#05x}"

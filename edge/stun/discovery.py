"""A sans-IO RFC 5780 server: Binding answered from the socket CHANGE-REQUEST names.

How it works: an RFC 5780 server listens on four sockets, every pairing of a
primary and an alternate IP address (A1, A2) with a primary and an alternate
port (P1, P2): A1:P1, A1:P2, A2:P1 and A2:P2 (:class:`DiscoveryAddresses`).
The owner feeds each datagram to :meth:`DiscoveryServer.receive_datagram`
with the socket it arrived on (``local``) and its source, then drains
:meth:`DiscoveryServer.datagrams_to_send`, whose items name the socket each
answer must leave from.

A request that arrived on ``local`` is answered from ``local`` with the IP
swapped for the other one when CHANGE-REQUEST has the change-IP flag, and the
port swapped when it has the change-port flag (RFC 5780 §7.2). A success
carries XOR-MAPPED-ADDRESS and MAPPED-ADDRESS (the request's source, §6.1),
RESPONSE-ORIGIN (the socket the answer leaves from, §7.3) and OTHER-ADDRESS:
the socket that differs from ``local`` in both IP and port, which is where a
change of both would be answered from (§7.4). So a client that asked A1:P1
learns A2:P2, and one that asked A2:P1 learns A1:P2.

Each of the four sockets has its own :class:`~edge.stun.server.BindingServer`
(configured with that socket's OTHER-ADDRESS), which validates the request and
builds the answer, as it does for a single socket: malformed bytes raise (and
are counted), indications and responses are ignored, other methods get 400,
comprehension-required attributes it does not honour get 420. Error answers
leave from ``local`` whatever the flags: only a success is worth the detour.

No amplification: only a well-formed request is answered, with one datagram of
at most :data:`~edge.stun.server.MAX_RESPONSE` bytes to the request's source,
and at most ``max_queued`` answers wait; beyond it they are dropped
(``OVERLOADED``). :attr:`DiscoveryServer.counts` counts every outcome.
"""

from collections import Counter, deque
from dataclasses import dataclass
from typing import TypeVar

from edge.sansio import Address
from edge.stun.attributes import AttrType, ChangeFlags
from edge.stun.codec import Message
from edge.stun.errors import DiscoveryError
from edge.stun.server import DEFAULT_MAX_QUEUED, BindingServer, Outcome, read_request

_T = TypeVar("_T")

Outgoing = tuple[Address, bytes, Address]
"""(the local socket to send from, the datagram, the destination)."""


@dataclass(frozen=True)
class DiscoveryAddresses:
    """The four sockets of an RFC 5780 server, from ``primary`` (A1:P1) and
    ``alternate`` (A2:P2): both IPs must differ, and both ports."""

    primary: Address
    alternate: Address

    def check(self) -> None:
        """Raise DiscoveryError unless the two addresses differ in both IP and port."""
        (host, port), (other_host, other_port) = self.primary, self.alternate
        if host == other_host or port == other_port:
            raise DiscoveryError(
                f"RFC 5780 needs two IPs and two ports: {self.primary} and {self.alternate}"
            )
        if (":" in host) != (":" in other_host):
            raise DiscoveryError(f"{host} and {other_host} are of different families")
        if not (0 < port < 0x10000 and 0 < other_port < 0x10000):
            raise DiscoveryError(f"ports must be bound ones, got {port} and {other_port}")

    @property
    def sockets(self) -> tuple[Address, Address, Address, Address]:
        """A1:P1, A1:P2, A2:P1, A2:P2."""
        (a1, p1), (a2, p2) = self.primary, self.alternate
        return (a1, p1), (a1, p2), (a2, p1), (a2, p2)

    def changed(self, local: Address, flags: ChangeFlags) -> Address:
        """The socket that answers a request received on ``local`` with ``flags``."""
        host, port = local
        if flags & ChangeFlags.CHANGE_IP:
            host = self._swap(host, self.primary[0], self.alternate[0])
        if flags & ChangeFlags.CHANGE_PORT:
            port = self._swap(port, self.primary[1], self.alternate[1])
        return host, port

    def other(self, local: Address) -> Address:
        """OTHER-ADDRESS for ``local``: its IP and its port both changed (RFC 5780 §7.4)."""
        return self.changed(local, ChangeFlags.CHANGE_IP | ChangeFlags.CHANGE_PORT)

    @staticmethod
    def _swap(value: _T, first: _T, second: _T) -> _T:
        return second if value == first else first


class DiscoveryServer:
    """Answers Binding requests on the four sockets of ``addresses``; see the module
    docstring. It has no timer and emits no events; ``counts`` tells what it did."""

    def __init__(
        self,
        addresses: DiscoveryAddresses,
        *,
        software: str = "edge",
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        addresses.check()
        if max_queued < 1:
            raise DiscoveryError(f"max_queued must be at least 1, got {max_queued}")
        self.addresses = addresses
        self.max_queued = max_queued
        self.counts: Counter[Outcome] = Counter()
        """Received datagrams by outcome."""
        self._servers = {
            local: BindingServer(
                software,
                addresses.other(local),
                response_origin=local,
                accept_change=True,
            )
            for local in addresses.sockets
        }
        self._outbox: deque[Outgoing] = deque()

    def receive_datagram(self, data: bytes, local: Address, source: Address, now: float) -> None:
        """Answer one datagram that the socket at ``local`` received from ``source``.

        Raises StunError (after counting it) for bytes that are not a valid STUN
        message, and DiscoveryError when ``local`` is not one of the four sockets.
        """
        server = self._servers.get(local)
        if server is None:
            raise DiscoveryError(f"{local} is not one of {self.addresses.sockets}")
        request = read_request(data, self.counts)
        if request is None:
            return
        origin = self.addresses.changed(local, _flags(request))
        response, outcome = server.answer(request, source, origin=origin)
        if outcome is not Outcome.SUCCESS:
            origin = local
        self._queue((origin, response, source), outcome)

    def datagrams_to_send(self) -> list[Outgoing]:
        """(from, data, to): send each datagram from the socket bound at ``from``."""
        out = list(self._outbox)
        self._outbox.clear()
        return out

    def _queue(self, item: Outgoing, outcome: Outcome) -> None:
        if len(self._outbox) >= self.max_queued:
            self.counts[Outcome.OVERLOADED] += 1
            return
        self.counts[outcome] += 1
        self._outbox.append(item)


def _flags(request: Message) -> ChangeFlags:
    flags: ChangeFlags | None = request.get(AttrType.CHANGE_REQUEST)
    return ChangeFlags.NONE if flags is None else flags

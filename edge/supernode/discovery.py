"""RFC 5780 NAT behaviour discovery on sockets: the supernode's three extra sockets.

How it works: an RFC 5780 server needs four sockets, two IPs (A1, A2) by two
ports (P1, P2). The supernode's main UDP socket A1:P1 already exists and
belongs to the :class:`~edge.supernode.relay.RelayAdapter`; :func:`start`
binds the other three, A1:P2, A2:P1 and A2:P2, non-blocking, and watches them
with ``loop.add_reader``. One :class:`~edge.stun.discovery.DiscoveryServer`
core answers for all four. A readable socket is read for up to
:data:`~edge.runtime.udp.BATCH` datagrams, each fed to the core with the
socket it arrived on; then every answer the core queued leaves from the socket
it names: one of the three, or the main socket through the ``send_from_main``
callable the service gives.

Requests to the main socket reach the core through
:meth:`DiscoverySockets.handle_main`, which the service installs as the TURN
core's ``binding_hook``: every Binding request over UDP on A1:P1 is then
answered here, so its answer advertises OTHER-ADDRESS and a CHANGE-REQUEST
is honoured instead of refused with 420.

The primary host must be the address itself, not the wildcard: RESPONSE-ORIGIN
and OTHER-ADDRESS name real addresses, and a wildcard main socket would hold
P1 on A2 too. With ``alternate`` port 0 the port P2 is drawn by the kernel on A1
(then bound on A2 as well).

Bad datagrams are dropped and counted by the core (``malformed``); socket
errors are counted in :attr:`DiscoverySockets.counters` by errno.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import Callable
from typing import cast

from edge.errors import RemoteError
from edge.runtime.udp import read_batch, send
from edge.sansio import Address
from edge.stun.discovery import DiscoveryAddresses, DiscoveryServer
from edge.stun.errors import DiscoveryError
from edge.supernode.errors import SupernodeBindError

SendFromMain = Callable[[bytes, Address], object]
"""Sends a datagram from the main UDP socket: ``(data, destination)``."""

WILDCARDS = frozenset({"0.0.0.0", "::", ""})


class DiscoverySockets:
    """The three extra sockets and their core; made by :func:`start`, ended by
    :meth:`close`."""

    def __init__(
        self,
        core: DiscoveryServer,
        sockets: dict[Address, socket.socket],
        send_from_main: SendFromMain,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.core = core
        self._sockets = sockets
        self._send_from_main = send_from_main
        self._loop = loop
        self.counters: Counter[str] = Counter()
        """Socket errors, ``os-error-*`` by errno; the core counts the datagrams."""
        for local, sock in sockets.items():
            loop.add_reader(sock.fileno(), self._readable, local, sock)

    @property
    def addresses(self) -> DiscoveryAddresses:
        return self.core.addresses

    def handle_main(self, data: bytes, source: Address) -> bool:
        """Answer a Binding request the main socket received; True: it is taken.

        Install it as :attr:`~edge.stun.turn.TurnServer.binding_hook`. Once
        :meth:`close` has run it declines, and the TURN core answers as before.
        """
        if not self._sockets:
            return False
        self._feed(data, self.addresses.primary, source)
        self._flush()
        return True

    def close(self) -> None:
        """Stop watching and close the three sockets; the main one is not ours."""
        for sock in self._sockets.values():
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()

    def counts(self) -> dict[str, int]:
        """Answers by outcome, and socket errors, for ``edge ctl counters``."""
        out = {outcome.value: n for outcome, n in self.core.counts.items()}
        out.update(self.counters)
        return out

    # -- inside

    def _readable(self, local: Address, sock: socket.socket) -> None:
        for data, source in read_batch(sock, self.counters):
            self._feed(data, local, source)
        self._flush()

    def _feed(self, data: bytes, local: Address, source: Address) -> None:
        # The core counts a bad datagram (malformed) before raising; it is dropped.
        with contextlib.suppress(RemoteError):
            self.core.receive_datagram(data, local, source, self._loop.time())

    def _flush(self) -> None:
        primary = self.addresses.primary
        for origin, data, to in self.core.datagrams_to_send():
            sock = self._sockets.get(origin)
            if origin == primary:
                self._send_from_main(data, to)
            elif sock is not None:
                send(sock, data, to, self.counters)
            # else: closed; an answer from the wrong address would mislead the client.


async def start(
    primary: Address,
    alternate: Address,
    send_from_main: SendFromMain,
    *,
    software: str = "edge",
) -> DiscoverySockets:
    """Bind A1:P2, A2:P1 and A2:P2 around the main socket at ``primary`` (A1:P1) and
    serve them on the running loop. ``alternate`` is A2:P2; port 0 draws P2.

    Raises SupernodeBindError when the primary host is the wildcard or a socket
    cannot be bound; then nothing stays open.
    """
    if primary[0] in WILDCARDS:
        raise SupernodeBindError(
            f"RFC 5780 needs the supernode's own address, not {primary[0]!r}: set its host"
        )
    loop = asyncio.get_running_loop()
    sockets: dict[Address, socket.socket] = {}
    try:
        core = DiscoveryServer(_bind_three(sockets, primary, alternate), software=software)
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    return DiscoverySockets(core, sockets, send_from_main, loop)


def _bind_three(
    sockets: dict[Address, socket.socket], primary: Address, alternate: Address
) -> DiscoveryAddresses:
    # A1:P2 first, so that a drawn P2 is known before it is bound on A2.
    port = _bind(sockets, (primary[0], alternate[1]))[1]
    addresses = DiscoveryAddresses(primary, (alternate[0], port))
    try:
        addresses.check()
    except DiscoveryError as exc:
        raise SupernodeBindError(str(exc)) from None
    _bind(sockets, (alternate[0], primary[1]))
    _bind(sockets, addresses.alternate)
    return addresses


def _bind(sockets: dict[Address, socket.socket], address: Address) -> Address:
    """Bind a non-blocking UDP socket at ``address``, keep it in ``sockets`` under
    its bound address, and return that address."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SupernodeBindError(
            f"cannot bind UDP {address[0]}:{address[1]} for RFC 5780: {exc.strerror}"
        ) from None
    sock.setblocking(False)
    bound = cast(Address, sock.getsockname()[:2])
    sockets[bound] = sock
    return bound

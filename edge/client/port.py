"""Port P: one UDP socket for the device's secure sessions and its STUN tests.

How it works: :class:`PortCore` is the DatagramCore the device's socket is
driven with. Edge datagrams (first byte 0xED, the wire format's magic) go to
the device's :class:`~edge.session.datagram.DatagramEndpoint` — its session
with its supernode and, later, with the peers it calls. STUN (first byte 0
to 3, RFC 7983) goes to the STUN core running at the time, such as the
connectivity self-test (:class:`~edge.stun.nat.ConnectivityTest`), which must
run from this very socket: the mapping its NAT gives port P is what peers
will see; the calls' connectivity checks and their answers are offered to
:attr:`PortCore.checks` first. Anything else is refused (the adapter counts it).

Before two devices have a path of their own, their session travels through
their supernodes. Such a session's address is a *signalling address*,
``("via:USER/DEVICE", 0)``: what the endpoint sends there does not leave by
this socket but goes to ``forward`` (the agent wraps it in SIGNAL_FORWARD),
and what arrives in SIGNAL_RELAYED comes in from that address. The session,
its keys and its index stay the same when the call later moves it to a
direct path. Likewise a *TCP address*, ``("tcp:IP", port)``, names a peer on a
direct TCP connection (:mod:`edge.client.direct`): what goes there leaves by
``tcp_out``, and what such a connection brings comes in from it.
"""

import contextlib
from collections import deque
from collections.abc import Callable

from edge.client.direct import tcp_peer
from edge.errors import EdgeError
from edge.sansio import Address, DatagramCore
from edge.session.datagram import DatagramEndpoint
from edge.stun.channel import Kind, classify
from edge.stun.errors import StunError
from edge.stun.turnclient import TurnClient

VIA = "via:"


def via_address(user: str, device: str) -> Address:
    """The signalling address of ``user``'s ``device``."""
    return (f"{VIA}{user}/{device}", 0)


RELAY = "relay:"


def relay_address(peer: Address) -> Address:
    """The address a session or check uses to reach ``peer`` through our TURN allocation."""
    return (f"{RELAY}{peer[0]}", peer[1])


def relayed_peer(address: Address) -> Address | None:
    """The peer behind a relay address, or None for any other address."""
    host = address[0]
    return (host[len(RELAY) :], address[1]) if host.startswith(RELAY) else None


def via_peer(address: Address) -> tuple[str, str] | None:
    """(user, device) of a signalling address, or None for a real one."""
    host = address[0]
    if not host.startswith(VIA):
        return None
    user, _, device = host[len(VIA) :].partition("/")
    return user, device


class NotForThisPort(StunError):
    """A datagram that is neither an edge datagram nor STUN for a running test."""


class PortCore:
    """The device's port P; see the module docstring."""

    def __init__(self, endpoint: DatagramEndpoint) -> None:
        self.endpoint = endpoint
        self.forward: Callable[[bytes, str, str], None] = lambda data, user, device: None
        """Where datagrams for a signalling address go: ``forward(data, user, device)``."""
        self.stun: DatagramCore | None = None
        """The STUN core now running from this port, if any."""
        self.checks: Callable[[bytes, Address, float], bool] = lambda data, addr, now: False
        """Offered every STUN message first: the calls' connectivity checks and their
        answers (True: it was one of theirs)."""
        self.probes: Callable[[bytes, Address, float], bool] = lambda data, addr, now: False
        """Offered every edge datagram first: a dial-back probe is not a session's."""
        self.raw_out: deque[tuple[bytes, Address]] = deque()
        """STUN the calls send from this port (checks, and answers to the peer's)."""
        self.turn: TurnClient | None = None
        """The device's TURN allocation, when it has one: what comes from its server is
        the TURN client's, and what goes to a :func:`relay_address` leaves through it."""
        self.relay_drops = 0
        self.turn_poke: Callable[[], None] = lambda: None
        """After relaying through a TURN client over TCP: have its connection send."""
        self.tcp_out: Callable[[bytes, Address], None] = lambda data, peer: None
        """Where datagrams for a TCP address go: ``tcp_out(data, peer)``."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if self.turn is not None and not self.turn.stream and self.turn.expects(data, addr):
            self.turn.receive_datagram(data, addr, now)
        elif data[:1] == b"\xed":
            if not self.probes(data, addr, now):
                self.endpoint.receive_datagram(data, addr, now)
        elif classify(data) is not Kind.STUN:
            raise NotForThisPort(f"{len(data)} bytes from {addr} are neither edge nor STUN")
        elif self.checks(data, addr, now):
            return
        elif self.stun is not None:
            self.stun.receive_datagram(data, addr, now)
        else:
            raise NotForThisPort(f"{len(data)} bytes from {addr} belong to nothing on this port")

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out: list[tuple[bytes, Address]] = []
        pending = self.endpoint.datagrams_to_send(now) + list(self.raw_out)
        self.raw_out.clear()
        for data, address in pending:
            self._route_out(data, address, now, out)
        if self.stun is not None:
            out += self.stun.datagrams_to_send(now)
        if self.turn is not None and not self.turn.stream:
            out += self.turn.datagrams_to_send(now)
        return out

    def _route_out(
        self, data: bytes, address: Address, now: float, out: list[tuple[bytes, Address]]
    ) -> None:
        """To the socket, to the supernodes (a signalling address), through our relay, or
        on a direct TCP connection."""
        if (peer := via_peer(address)) is not None:
            self.forward(data, *peer)
        elif (relayed := relayed_peer(address)) is not None:
            self._relay(data, relayed, now)
        elif (direct := tcp_peer(address)) is not None:
            self.tcp_out(data, direct)
        else:
            out.append((data, address))

    def permit(self, peer: Address, now: float) -> None:
        """Ask our TURN allocation to relay to and from ``peer``'s IP (no-op without one)."""
        turn = self.turn
        pseudo = relayed_peer(peer) or via_peer(peer) or tcp_peer(peer)
        if turn is None or not turn.is_allocated or pseudo:
            return
        with contextlib.suppress(EdgeError):
            turn.create_permission(peer, now)
        if turn.stream:
            self.turn_poke()

    def _relay(self, data: bytes, peer: Address, now: float) -> None:
        turn = self.turn
        if turn is None or not turn.is_allocated:
            self.relay_drops += 1
            return
        if turn.channel_of(peer) is None:
            turn.bind_channel(peer, now)  # asks for the permission too
        try:
            turn.send(peer, data, now)
        except EdgeError:
            self.relay_drops += 1
        if turn.stream:
            self.turn_poke()

    def _cores(self) -> list[DatagramCore]:
        """The STUN cores this port drives (a TURN client over TCP has its own adapter)."""
        cores: list[DatagramCore] = [c for c in (self.stun,) if c is not None]
        if self.turn is not None and not self.turn.stream:
            cores.append(self.turn)
        return cores

    def get_timer(self) -> float | None:
        timers = [self.endpoint.get_timer()]
        timers += [core.get_timer() for core in self._cores()]
        return min((t for t in timers if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        self.endpoint.handle_timer(now)
        for core in self._cores():
            core.handle_timer(now)

    def next_event(self) -> object | None:
        event = self.endpoint.next_event()
        for core in self._cores():
            if event is None:
                event = core.next_event()
        return event

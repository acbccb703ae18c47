"""Port P: one UDP socket for the device's secure sessions and its STUN tests.

How it works: :class:`PortCore` is the DatagramCore the device's socket is
driven with. Edge datagrams (first byte 0xED, the wire format's magic) go to
the device's :class:`~edge.session.datagram.DatagramEndpoint` — its session
with its supernode and, later, with the peers it calls. STUN (first byte 0
to 3, RFC 7983) goes to the STUN core running at the time, such as the
connectivity self-test (:class:`~edge.stun.nat.ConnectivityTest`), which must
run from this very socket: the mapping its NAT gives port P is what peers
will see. Anything else is refused (the adapter counts it).
"""

from collections import deque

from edge.sansio import Address, DatagramCore
from edge.session.datagram import DatagramEndpoint
from edge.stun.channel import Kind, classify
from edge.stun.errors import StunError


class NotForThisPort(StunError):
    """A datagram that is neither an edge datagram nor STUN for a running test."""


class PortCore:
    """The device's port P; see the module docstring."""

    def __init__(self, endpoint: DatagramEndpoint) -> None:
        self.endpoint = endpoint
        self.stun: DatagramCore | None = None
        """The STUN core now running from this port, if any."""
        self._stun_events: deque[object] = deque()

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if data[:1] == b"\xed":
            self.endpoint.receive_datagram(data, addr, now)
        elif self.stun is not None and classify(data) is Kind.STUN:
            self.stun.receive_datagram(data, addr, now)
        else:
            raise NotForThisPort(f"{len(data)} bytes from {addr} belong to nothing on this port")

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = self.endpoint.datagrams_to_send(now)
        if self.stun is not None:
            out += self.stun.datagrams_to_send(now)
        return out

    def get_timer(self) -> float | None:
        timers = [self.endpoint.get_timer(), self.stun.get_timer() if self.stun else None]
        return min((t for t in timers if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        self.endpoint.handle_timer(now)
        if self.stun is not None:
            self.stun.handle_timer(now)

    def next_event(self) -> object | None:
        event = self.endpoint.next_event()
        if event is None and self.stun is not None:
            event = self.stun.next_event()
        return event

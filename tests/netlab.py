"""Test helper: sans-IO datagram cores on simulated addresses, one clock, a fixed latency."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from edge.sansio import Address, DatagramCore

C = TypeVar("C", bound=DatagramCore)


@dataclass
class NetLab(Generic[C]):
    """Cores by address; :meth:`run` delivers datagrams and fires timers in time order.

    A core whose address is in ``silent`` neither receives nor wakes: it left
    without a word. What a core raises for a datagram is kept in ``rejected``.
    """

    cores: dict[Address, C] = field(default_factory=dict)
    silent: set[Address] = field(default_factory=set)
    now: float = 0.0
    latency: float = 0.005
    in_flight: list[tuple[float, int, bytes, Address, Address]] = field(default_factory=list)
    sent: int = 0
    rejected: list[Exception] = field(default_factory=list)

    def flush(self) -> None:
        for source, core in self.cores.items():
            for data, destination in core.datagrams_to_send(self.now):
                self.sent += 1
                arrival = self.now + self.latency
                heapq.heappush(self.in_flight, (arrival, self.sent, data, source, destination))

    def run(self, until: float) -> None:
        """Deliver datagrams and fire timers in time order up to ``until``."""
        self.flush()
        while True:
            packet = self.in_flight[0][0] if self.in_flight else None
            timer = self._next_timer()
            due = [t for t in (packet, timer and timer[0]) if t is not None]
            if not due or min(due) > until:
                self.now = until
                return
            if packet is not None and (timer is None or packet <= timer[0]):
                self._deliver()
            else:
                assert timer is not None
                self.now = max(self.now, timer[0])
                self.cores[timer[1]].handle_timer(self.now)
            self.flush()

    def _next_timer(self) -> tuple[float, Address] | None:
        timers = [
            (t, address)
            for address, core in self.cores.items()
            if address not in self.silent and (t := core.get_timer()) is not None
        ]
        return min(timers, default=None)

    def _deliver(self) -> None:
        self.now, _, data, source, destination = heapq.heappop(self.in_flight)
        if destination not in self.cores or destination in self.silent:
            return
        try:
            self.cores[destination].receive_datagram(data, source, self.now)
        except Exception as exc:  # a core's refusal of a datagram, kept for the test to see
            self.rejected.append(exc)

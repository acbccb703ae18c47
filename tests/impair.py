"""A userspace impairment forwarder: delay, jitter and loss between two interfaces.

This kernel has no ``tc netem``, so the NAT lab (:mod:`tests.natlab`) puts this
small program between a router's WAN interface and the public segment. It is a
two-port Ethernet bridge in user space: one ``AF_PACKET`` socket on each
interface, every frame read on one side is written out on the other after its
delay, unless it is lost.

How it works:

- The sockets are opened with ``PACKET_VNET_HDR``, so each frame comes with
  the kernel's ``virtio_net_hdr`` and goes out with the same one. On veth
  links a locally made UDP or TCP packet still carries a partial checksum (the
  sender left it for the "hardware"), and TCP hands over segments of up to
  64 KiB (GSO); the header tells the kernel to finish both on the way out, so
  nothing is re-checksummed or re-segmented here.
- Frames the socket sees leaving its own interface (``PACKET_OUTGOING``,
  including the ones written here) are skipped.
- Each direction draws, per frame, loss with probability ``loss`` and a delay
  of ``delay`` plus a uniform jitter in ``[-jitter, +jitter]``. A frame never
  leaves before the one read before it in the same direction: jitter spreads
  the delay without reordering (netem would reorder; voice over the real
  internet mostly is not).
- Frames wait in one heap ordered by departure time; the loop sleeps in
  ``select`` until the next departure or the next frame, so an idle forwarder
  costs no CPU. epoll's timeout is in whole milliseconds, so ``select`` wakes
  about a millisecond early and ``time.sleep`` (nanosecond resolution) waits out
  the rest: departures are late by tens of microseconds, not up to 1 ms.

Run inside a router's network namespace (the lab does)::

    python -m tests.impair IFACE_A IFACE_B --delay 0.02 --jitter 0.002 --loss 0.01 --seed 7

It prints ``ready`` on stdout once both sockets are bound and forwards until
it is killed.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import selectors
import socket
import time
from dataclasses import dataclass

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_VNET_HDR = 15
MAX_FRAME = 1 << 18
"""Room for a GSO frame (up to 64 KiB of TCP) and its virtio header."""
MAX_QUEUED = 4096
"""Frames in flight at most, both ways together; more are dropped."""
EPOLL_SLACK = 0.0011
"""Seconds before a departure that ``select`` returns, to sleep the rest precisely."""


@dataclass(frozen=True)
class Impairment:
    """What one forwarder does to each direction: seconds of one-way delay, the
    half-width of a uniform jitter around it, and a loss probability."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0

    def argv(self) -> list[str]:
        """The command-line options that ask :func:`main` for this impairment."""
        return ["--delay", str(self.delay), "--jitter", str(self.jitter), "--loss", str(self.loss)]


class Direction:
    """One way through the forwarder: draws each frame's fate, keeps frames in order."""

    def __init__(self, impairment: Impairment, rng: random.Random) -> None:
        self.impairment = impairment
        self.rng = rng
        self.last_departure = 0.0
        self.lost = 0

    def departure(self, now: float) -> float | None:
        """When a frame read at ``now`` leaves, or None when it is lost."""
        spec = self.impairment
        if spec.loss and self.rng.random() < spec.loss:
            self.lost += 1
            return None
        jitter = self.rng.uniform(-spec.jitter, spec.jitter) if spec.jitter else 0.0
        self.last_departure = max(now + max(spec.delay + jitter, 0.0), self.last_departure)
        return self.last_departure


def open_port(interface: str) -> socket.socket:
    """A raw packet socket on ``interface`` alone, with virtio headers."""
    # Protocol 0 receives nothing until bind names the interface: no frame from
    # another interface can slip in between socket() and bind().
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.bind((interface, ETH_P_ALL))
    sock.setblocking(False)
    return sock


class Forwarder:
    """Frames from each socket to the other, through each direction's impairment."""

    def __init__(
        self, a: socket.socket, b: socket.socket, impairment: Impairment, seed: int
    ) -> None:
        rng = random.Random(seed)
        self.routes = {a: (b, Direction(impairment, rng)), b: (a, Direction(impairment, rng))}
        self.queue: list[tuple[float, int, socket.socket, bytes]] = []
        self.order = itertools.count()
        self.buffer = bytearray(MAX_FRAME)
        self.send_errors = 0
        self.selector = selectors.DefaultSelector()
        for sock in self.routes:
            self.selector.register(sock, selectors.EVENT_READ, sock)

    def run(self) -> None:
        while True:
            self.step()

    def step(self) -> None:
        """Wait for frames or the next departure; take in what came, send what is due."""
        for key, _ in self.selector.select(self.timeout()):
            self.drain(key.data)
        self.send_due(time.monotonic())

    def timeout(self) -> float | None:
        """How long ``select`` may wait: epoll counts whole milliseconds, rounded up,
        so it is asked to wake a little early and the last bit is slept exactly."""
        if not self.queue:
            return None
        wait = self.queue[0][0] - time.monotonic()
        if wait > EPOLL_SLACK:
            return wait - EPOLL_SLACK
        if wait > 0:
            time.sleep(wait)
        return 0.0

    def drain(self, sock: socket.socket) -> None:
        out, direction = self.routes[sock]
        view = memoryview(self.buffer)
        while True:
            try:
                size, address = sock.recvfrom_into(self.buffer)
            except BlockingIOError:
                return
            if address[2] == PACKET_OUTGOING:
                continue
            departure = direction.departure(time.monotonic())
            if departure is None or len(self.queue) >= MAX_QUEUED:
                continue  # lost, or the queue is full (a router's tail drop)
            heapq.heappush(self.queue, (departure, next(self.order), out, bytes(view[:size])))

    def send_due(self, now: float) -> None:
        while self.queue and self.queue[0][0] <= now:
            _, _, out, frame = heapq.heappop(self.queue)
            try:
                out.send(frame)
            except OSError:
                self.send_errors += 1  # a full queue on the way out: the frame is lost


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.impair", description=__doc__)
    parser.add_argument("a", help="one interface (no address of its own)")
    parser.add_argument("b", help="the other interface")
    parser.add_argument("--delay", type=float, default=0.0, help="one-way delay, seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="uniform jitter +-, seconds")
    parser.add_argument("--loss", type=float, default=0.0, help="loss probability per frame")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    impairment = Impairment(args.delay, args.jitter, args.loss)
    forwarder = Forwarder(open_port(args.a), open_port(args.b), impairment, args.seed)
    print("ready", flush=True)
    forwarder.run()


if __name__ == "__main__":
    main()

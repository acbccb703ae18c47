"""A TURN load generator on one core: N voice calls through one relay, 50 packets/s each way.

How it works: each call is one UDP socket on 127.0.0.1 with one allocation on
the relay and a channel bound to the peer, a single UDP socket that plays the
far end of every call. Allocations are made once, with the sans-IO
:class:`~edge.stun.turnclient.TurnClient`, :data:`SETUP_WINDOW` at a time, and
kept: a trial with N calls uses the first N (the others stay idle, which costs
a relay nothing).

A trial paces its sends on a timer wheel: the 20 ms packet interval is cut
into :data:`SLOTS` slots and call i sends in slot i mod SLOTS, so the relay
sees a steady stream, as from calls started at random moments, rather than one
burst per 20 ms. In each slot every call of the slot sends one ChannelData
from its socket (client to relay to peer) and the peer socket sends one
datagram to the call's relayed address (peer to relay to client); between
slots the generator waits in epoll for the peer socket and reads it. What
reaches the calls' sockets waits in their receive buffers, which hold a
trial's worth, and is read after the window: that keeps a system call per
packet out of the part that has to keep time.

Every payload starts with a four-byte tag. The warm-up and the measurement
window carry different tags, so only packets sent in the window count; after
it the generator stops sending and reads for :data:`DRAIN` seconds, and what
has not arrived by then is lost.

The generator checks itself, so that its own limits are not blamed on the
relay: how late its worst slot went out, whether it sent what the schedule
asked for, its CPU time against the wall clock, and the datagrams the kernel
dropped at its own sockets (from ``/proc/net/udp``). :attr:`Trial.complete`
says it offered the load, :attr:`Trial.on_schedule` that it also kept time.
"""

from __future__ import annotations

import gc
import math
import os
import select
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edge.login.relay import relay_credentials
from edge.sansio import Address
from edge.stun.channel import ChannelData, build_channel_data
from edge.stun.events import AllocationSucceeded, ChannelBound, TurnFailed
from edge.stun.turnclient import TurnClient

CALL_RATE: Final = 50
"""Packets a second each way per call: one 20 ms voice frame."""

INTERVAL: Final = 1 / CALL_RATE
PAYLOAD_SIZE: Final = 160
"""Bytes of application data per packet: 20 ms of G.711, or Opus with room to spare."""

SLOTS: Final = 20
"""Slots of the timer wheel per 20 ms: calls send 1 ms apart in groups of N / 20."""

DRAIN: Final = 0.3
"""Seconds to wait, after the window, for packets still on their way."""

SETUP_WINDOW: Final = 200
"""Allocations being made at once."""

SETUP_TIMEOUT: Final = 60.0
CREDENTIAL_TTL: Final = 3600
LOCALHOST: Final = "127.0.0.1"
PEER_BUFFER: Final = 4 * 1024 * 1024
"""Receive buffer asked for the peer socket, which receives for every call."""

CALL_BUFFER: Final = 256 * 1024
"""Receive buffer asked for each call's socket: the kernel doubles it, and it holds
what reaches the call in a trial (50 datagrams a second) until the window is over."""

RECV_SIZE: Final = 2048
DRAIN_BATCH: Final = 256
"""Datagrams read from the peer socket per wakeup."""

SCHEDULE_SHARE: Final = 0.99
"""The share of the scheduled packets the generator must send in the window (for
:attr:`Trial.complete`), and send on time (for :attr:`Trial.on_schedule`)."""


SATURATED: Final = 0.9
"""The relay's share of its core from which it counts as saturated."""


class LoadError(Exception):
    """The relay refused or never answered a call's set-up."""


@dataclass(frozen=True)
class Call:
    """One allocation with a channel to the peer, ready to carry a call."""

    sock: socket.socket
    relayed: Address
    channel: int


@dataclass(frozen=True)
class Trial:
    """What one trial of ``calls`` concurrent calls for ``seconds`` measured."""

    calls: int
    seconds: float
    scheduled: int
    """Packets the schedule asked for in the window, both directions."""
    sent: int
    received: int
    """Packets sent in the window that arrived at the other end, both directions."""
    late: int
    """Packets sent more than one interval after their time."""
    worst: float
    """Seconds the latest slot of the window went out after its time."""
    busy: float
    """The generator's CPU time over the window's wall time."""
    own_drops: int
    """Datagrams the kernel dropped at the generator's sockets (full receive buffers)."""
    relay_drops: int
    """Datagrams the kernel dropped at the relay's sockets: its listening socket and the
    calls' relayed sockets (the relay did not read them in time)."""
    relay_busy: float
    """The relay process's CPU time over the window's wall time (all its threads)."""
    others: tuple[float, float]
    """Share of the relay's core, then of the generator's core, that went to other
    processes and to kernel threads (among them softirq work for this very traffic)."""

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else 1.0

    @property
    def complete(self) -> bool:
        """The generator offered the load: it sent what was due inside the window and
        dropped next to nothing itself. A relay that loses little under it carries
        that load, even if some packets went out late (late ones come in bursts,
        which only make relaying harder)."""
        return (
            self.sent >= SCHEDULE_SHARE * self.scheduled
            and self.own_drops <= (1 - SCHEDULE_SHARE) * self.sent / 10
        )

    @property
    def on_schedule(self) -> bool:
        """The generator kept up: complete, and at most one interval late; a loss it
        measured is then the relay's, not its own bursts'."""
        return self.complete and self.sent - self.late >= SCHEDULE_SHARE * self.scheduled

    @property
    def relay_saturated(self) -> bool:
        """The relay had (nearly) all of its core: a loss is then its own, however
        the generator kept time."""
        return self.relay_busy >= SATURATED

    @property
    def contention(self) -> float:
        """The larger share of a core (the relay's or the generator's) that went
        elsewhere: on a shared machine, how far to trust this trial."""
        return max(self.others)

    @property
    def relayed_rate(self) -> float:
        """Packets a second the calls ask the relay to carry: N x 50 x 2 directions."""
        return self.calls * CALL_RATE * 2

    def line(self) -> str:
        return (
            f"{self.calls:>6} calls: loss {self.loss:7.2%};"
            f" generator sent {self.sent / self.scheduled:6.1%},"
            f" {(self.sent - self.late) / self.scheduled:6.1%} on time,"
            f" worst {self.worst * 1000:4.0f} ms late, {self.busy:4.0%} busy,"
            f" {self.own_drops} dropped; relay {self.relay_busy:4.0%} busy,"
            f" {self.relay_drops} dropped by its sockets;"
            f" elsewhere on relay/generator core {self.others[0]:4.0%}/{self.others[1]:4.0%}"
        )


class Load:
    """Calls through the TURN relay at ``server``, which checks REST credentials
    made with ``secret``; :meth:`run` a trial, :meth:`close` at the end."""

    def __init__(self, server: Address, secret: bytes) -> None:
        self.server = server
        self.secret = secret
        self.calls: list[Call] = []
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PEER_BUFFER)
        self.peer.bind((LOCALHOST, 0))
        self.peer.setblocking(False)
        self.peer_address: Address = self.peer.getsockname()[:2]
        self._poll = select.epoll()
        self._poll.register(self.peer.fileno(), select.EPOLLIN)
        self._tags = 0
        self._received = 0
        self._tag = b""

    def close(self) -> None:
        for call in self.calls:
            call.sock.close()
        self.calls.clear()
        self._poll.close()
        self.peer.close()

    # -- set-up

    def grow(self, count: int) -> None:
        """Set up calls until there are ``count``; LoadError if the relay refuses one."""
        while len(self.calls) < count:
            self.calls.extend(self._set_up(min(SETUP_WINDOW, count - len(self.calls))))

    def _set_up(self, count: int) -> list[Call]:
        poll = select.epoll()
        pending: dict[int, tuple[socket.socket, TurnClient]] = {}
        ready: list[Call] = []
        try:
            now = time.monotonic()
            for index in range(len(self.calls), len(self.calls) + count):
                sock, client = self._new_client(f"call{index}", now)
                pending[sock.fileno()] = (sock, client)
                poll.register(sock.fileno(), select.EPOLLIN)
            self._complete(poll, pending, ready, now + SETUP_TIMEOUT)
        except BaseException:
            for sock in [sock for sock, _ in pending.values()] + [call.sock for call in ready]:
                sock.close()
            raise
        finally:
            poll.close()
        return ready

    def _complete(
        self,
        poll: select.epoll,
        pending: dict[int, tuple[socket.socket, TurnClient]],
        ready: list[Call],
        deadline: float,
    ) -> None:
        """Feed the pending clients their answers until each has its channel."""
        while pending:
            now = time.monotonic()
            if now > deadline:
                raise LoadError(f"{len(pending)} allocations unanswered in {SETUP_TIMEOUT} s")
            for fd, _ in poll.poll(0.05):
                sock, client = pending[fd]
                client.receive_datagram(sock.recv(RECV_SIZE), self.server, now)
            for fd, (sock, client) in list(pending.items()):
                call = self._advance(sock, client, now)
                if call is not None:
                    poll.unregister(fd)
                    del pending[fd]
                    ready.append(call)

    def _new_client(self, user: str, now: float) -> tuple[socket.socket, TurnClient]:
        credentials = relay_credentials(self.secret, user, int(time.time()), CREDENTIAL_TTL)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CALL_BUFFER)
        sock.bind((LOCALHOST, 0))
        sock.connect(self.server)
        sock.setblocking(False)
        client = TurnClient(self.server, credentials.username, credentials.password)
        client.allocate(now)
        _transmit(sock, client, now)
        return sock, client

    def _advance(self, sock: socket.socket, client: TurnClient, now: float) -> Call | None:
        """Run the client's timers and events; the call once its channel is bound."""
        deadline = client.get_timer()
        if deadline is not None and deadline <= now:
            client.handle_timer(now)
        call = None
        while (event := client.next_event()) is not None:
            if isinstance(event, AllocationSucceeded):
                client.bind_channel(self.peer_address, now)
            elif isinstance(event, ChannelBound):
                assert client.relayed is not None
                call = Call(sock, client.relayed, event.channel)
            elif isinstance(event, TurnFailed):
                raise LoadError(f"{event.method.name} refused: {event.code} {event.reason}")
        _transmit(sock, client, now)
        return call

    # -- a trial

    def run(self, calls: int, warm_up: float, seconds: float, placement: Placement) -> Trial:
        """``calls`` calls for ``warm_up`` seconds, then measured for ``seconds``."""
        self.grow(calls)
        active = self.calls[:calls]
        warm, measured = _wheel(active, self._next_tag()), _wheel(active, self._next_tag())
        _read_dry(active, b"")  # what came late in the last trial
        # The loop makes no reference cycles; a collection would only stall the schedule.
        gc.disable()
        try:
            start = time.perf_counter() + 0.01
            self._pace(warm, start, start + warm_up)
            self._tag, self._received = measured.payload[:4], 0
            return self._window(active, measured, start + warm_up, seconds, placement)
        finally:
            gc.enable()

    def _window(
        self, active: list[Call], wheel: Wheel, begin: float, seconds: float, placement: Placement
    ) -> Trial:
        calls = len(active)
        ports = self._ports(), {self.server[1], *(call.relayed[1] for call in active)}
        drops, before = [_udp_drops(group) for group in ports], placement.sample()
        sent, late, worst = self._pace(wheel, begin, begin + seconds)
        wall = time.perf_counter() - begin
        relay, relay_core, own, own_core = (
            after - then for then, after in zip(before, placement.sample(), strict=True)
        )
        self._wait(begin + seconds + DRAIN)
        self._received += _read_dry(active, self._tag)
        return Trial(
            calls=calls,
            seconds=seconds,
            scheduled=2 * calls * round(seconds * CALL_RATE),
            sent=sent,
            received=self._received,
            late=late,
            worst=worst,
            busy=own / wall,
            own_drops=_udp_drops(ports[0]) - drops[0],
            relay_drops=_udp_drops(ports[1]) - drops[1],
            relay_busy=relay / wall,
            others=(max(0.0, relay_core - relay) / wall, max(0.0, own_core - own) / wall),
        )

    def _next_tag(self) -> bytes:
        self._tags += 1
        return self._tags.to_bytes(4, "big")

    def _ports(self) -> set[int]:
        return {self.peer_address[1], *(call.sock.getsockname()[1] for call in self.calls)}

    def _pace(self, wheel: Wheel, start: float, stop: float) -> tuple[int, int, float]:
        """Send on the wheel from ``start`` to ``stop``: packets sent, packets sent more
        than an interval late, the worst lateness in seconds.

        Slots still unsent one interval after ``stop`` are not sent: the
        generator fell behind, and the counts show it."""
        payload, slots_of = wheel.payload, wheel.slots
        peer_send = self.peer.sendto
        slot_time = INTERVAL / SLOTS
        slots = math.ceil((stop - start) / slot_time - 1e-9)
        sent, late, worst = 0, 0, 0.0
        for k in range(slots):
            due = start + k * slot_time
            now = time.perf_counter()
            if now < due:
                self._wait(due)
                now = time.perf_counter()
            if now > stop + INTERVAL:
                break
            count = _send_slot(slots_of[k % SLOTS], payload, peer_send)
            sent += count
            if now - due > INTERVAL:
                late += count
            worst = max(worst, now - due)
            self._receive(0)
        return sent, late, worst

    def _wait(self, until: float) -> None:
        """Read what arrives until ``until`` (perf_counter seconds)."""
        while (left := until - time.perf_counter()) > 0:
            self._receive(left)

    def _receive(self, timeout: float) -> None:
        if self._poll.poll(timeout):
            self._received += self._drain_peer(self._tag)

    def _drain_peer(self, tag: bytes) -> int:
        recv, got = self.peer.recv, 0
        for _ in range(DRAIN_BATCH):
            try:
                data = recv(RECV_SIZE)
            except OSError:
                break
            got += data[:4] == tag
        return got


Send = Callable[..., int]
Slot = list[tuple[Send, bytes, Address]]


@dataclass(frozen=True)
class Wheel:
    """What a trial phase sends: the peer's payload, and per slot each call's send,
    its ChannelData frame and its relayed address."""

    payload: bytes
    slots: list[Slot]


def _wheel(calls: Iterable[Call], tag: bytes) -> Wheel:
    payload = tag + bytes(PAYLOAD_SIZE - len(tag))
    slots: list[Slot] = [[] for _ in range(SLOTS)]
    for index, call in enumerate(calls):
        frame = build_channel_data(ChannelData(call.channel, payload))
        slots[index % SLOTS].append((call.sock.send, frame, call.relayed))
    return Wheel(payload, slots)


def _send_slot(slot: Slot, payload: bytes, peer_send: Send) -> int:
    """Send one slot's packets both ways; how many left (a full socket buffer refuses one)."""
    sent = 0
    for send, frame, relayed in slot:
        try:
            send(frame)
            sent += 1
        except OSError:
            pass
        try:
            peer_send(payload, relayed)
            sent += 1
        except OSError:
            pass
    return sent


def _read_dry(calls: Iterable[Call], tag: bytes) -> int:
    """Read the calls' sockets dry: how many datagrams carried ``tag`` after the
    ChannelData header."""
    got = 0
    for call in calls:
        recv = call.sock.recv
        while True:
            try:
                data = recv(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError:
                continue  # an ICMP error, reported once
            got += data[4:8] == tag
    return got


def _transmit(sock: socket.socket, client: TurnClient, now: float) -> None:
    for data, _ in client.datagrams_to_send(now):
        sock.send(data)


def _udp_drops(ports: set[int]) -> int:
    """Datagrams the kernel dropped so far at the IPv4 UDP sockets bound to ``ports``."""
    total = 0
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return 0
    for line in lines:
        fields = line.split()
        if len(fields) >= 13 and int(fields[1].rpartition(":")[2], 16) in ports:
            total += int(fields[12])
    return total


@dataclass(frozen=True)
class Placement:
    """Where the relay and the generator run: the relay's process and core, and the
    generator's core (the generator is this process)."""

    relay_pid: int
    relay_core: int
    load_core: int

    def sample(self) -> tuple[float, float, float, float]:
        """CPU seconds so far of the relay, of its core, of this process, of its core."""
        cores = _core_seconds()
        return (
            _process_seconds(self.relay_pid),
            cores.get(self.relay_core, 0.0),
            time.process_time(),
            cores.get(self.load_core, 0.0),
        )


def _process_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid``, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _core_seconds() -> dict[int, float]:
    """User, nice and system CPU seconds of each core (interrupts left out)."""
    seconds = {}
    tick = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            seconds[int(name[3:])] = sum(int(value) for value in values[:3]) / tick
    return seconds

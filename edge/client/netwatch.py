"""Noticing that the device's network changed: Linux rtnetlink, parsed sans-IO.

How it works: the kernel tells every NETLINK_ROUTE socket bound to a
multicast group what changes in the network stack, one datagram of netlink
messages (each an ``nlmsghdr`` and a body of attributes) at a time. We join
three groups: links (RTMGRP_LINK: an interface up or down, created, deleted),
IPv4 addresses (RTMGRP_IPV4_IFADDR) and IPv4 routes (RTMGRP_IPV4_ROUTE: when
an interface comes back its default route returns separately, and only then
is the network usable again). Nothing polls.

:func:`parse` turns a datagram into :class:`LinkChanged`, :class:`AddressChanged`
and :class:`RouteChanged` notices; anything malformed raises RemoteError.
:class:`NetWatch` keeps what the notices say (which links are up, which
addresses each has), learns the starting point by asking the kernel for a dump
of links and addresses, and, once a burst of changes has been quiet for
:data:`SETTLE` seconds, emits one :class:`NetworkSettled`: a link that goes
down and comes back, and the address and route changes around it, are a
single event. It reads no clock and touches no socket: bytes and ``now`` in,
requests and events out, one timer.

:class:`NetWatcher` (made by :func:`watch_network`) is the asyncio adapter,
the runtime's shared core driver with a non-blocking netlink socket on the
loop's ``add_reader``; a datagram that will not parse is counted in
``dropped`` and the rest go on. Where there is no netlink (another OS, a
sandbox that forbids it) it drives :class:`Every` instead, a
:class:`NetworkSettled` every :data:`FALLBACK_EVERY` seconds, so the owner's
own check (has my source address changed?) still runs, slowly.

What a change means is the owner's business: the agent asks which source
address now leads to its supernode and whether the interface carrying it is
among those that came back (see ``Agent._network_settled``).
"""

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from edge.errors import RemoteError
from edge.runtime.adapters import _CoreDriver
from edge.wire.codes import ErrorCode

_log = logging.getLogger(__name__)

SETTLE = 0.5
"""Seconds without a change before a burst counts as one network change."""
MAX_SETTLE = 3.0
"""The longest a burst is held back, however busy the kernel keeps it."""
FALLBACK_EVERY = 10.0
"""Seconds between checks where there is no netlink."""
MAX_LINKS = 256
MAX_ADDRESSES = 16
"""Addresses remembered per link; more are ignored (a host with hundreds is no phone)."""
MAX_DATAGRAM = 1 << 16
MAX_EVENTS = 64
RECEIVE_BUFFER = 1 << 18

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>, <net/if.h>
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x10, 0x40
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF = 1, 4
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
RT_TABLE_MAIN = 254
AF_INET = 2

HEADER = struct.Struct("=IHHII")
"""nlmsghdr: length (header included), type, flags, sequence, sender's port id."""
IFINFO = struct.Struct("=BxHiII")
"""ifinfomsg: family, type, index, flags, change mask."""
IFADDR = struct.Struct("=BBBBI")
"""ifaddrmsg: family, prefix length, flags, scope, index."""
RTMSG = struct.Struct("=BBBBBBBBI")
"""rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags."""
ATTR = struct.Struct("=HH")
"""rtattr: length (header included), type."""
GENERATION = struct.Struct("=BxxxI")
"""The rtgenmsg of a dump request, padded: family, then nothing we use."""


# -- notices and events


@dataclass(frozen=True)
class LinkChanged:
    index: int
    name: str
    up: bool
    """Administratively up and with a carrier (IFF_UP and IFF_LOWER_UP)."""
    removed: bool = False


@dataclass(frozen=True)
class AddressChanged:
    index: int
    address: str
    prefix: int
    added: bool


@dataclass(frozen=True)
class RouteChanged:
    index: int
    """The outgoing interface, 0 when the route names none."""
    destination: str
    prefix: int
    added: bool
    table: int


@dataclass(frozen=True)
class DumpDone:
    """The kernel finished answering our dump request ``sequence``."""

    sequence: int


@dataclass(frozen=True)
class Overrun:
    """The kernel dropped notices for us (its buffer was full): assume anything changed."""


Notice = LinkChanged | AddressChanged | RouteChanged | DumpDone | Overrun


@dataclass(frozen=True)
class NetworkSettled:
    """The network changed, and has been quiet for :data:`SETTLE` seconds."""

    came_back: frozenset[int]
    """Links that went down since the last event and are up again now."""
    down: frozenset[int]
    """Links down now that were up before."""
    changes: int
    """Notices that changed something, in this burst."""


# -- parsing


def parse(data: bytes, *, own_port: int = 0) -> list[tuple[Notice, bool]]:
    """The notices in one netlink datagram, each with whether it answers a request
    of ours (its port id is ``own_port``, not 0) rather than tells of a change.
    Messages of other kinds are skipped; malformed ones raise RemoteError."""
    found: list[tuple[Notice, bool]] = []
    for kind, port, sequence, body in _messages(data):
        notice = _notice(kind, sequence, body)
        if notice is not None:
            found.append((notice, own_port != 0 and port == own_port))
    return found


def _messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """Each message's type, sender's port id, sequence and body."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, _, sequence, port = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > len(data):
            raise _malformed(f"a message of {length} bytes at {offset} in {len(data)}")
        yield kind, port, sequence, data[offset + HEADER.size : offset + length]
        offset += _aligned(length)
    if offset < len(data) and any(data[offset:]):
        raise _malformed(f"{len(data) - offset} stray bytes at the end")


def _notice(kind: int, sequence: int, body: bytes) -> Notice | None:
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        return _link(body, removed=kind == RTM_DELLINK)
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        return _address(body, added=kind == RTM_NEWADDR)
    if kind in (RTM_NEWROUTE, RTM_DELROUTE):
        return _route(body, added=kind == RTM_NEWROUTE)
    if kind == NLMSG_DONE:
        return DumpDone(sequence)
    if kind == NLMSG_OVERRUN:
        return Overrun()
    if kind == NLMSG_ERROR:
        return _error(sequence, body)
    return None


def _link(body: bytes, *, removed: bool) -> LinkChanged:
    _need(body, IFINFO.size, "ifinfomsg")
    _, _, index, flags, _ = IFINFO.unpack_from(body)
    name = _attributes(body[IFINFO.size :]).get(IFLA_IFNAME, b"").split(b"\0")[0]
    up = bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP) and not removed
    return LinkChanged(index, name.decode("utf-8", "replace"), up, removed)


def _address(body: bytes, *, added: bool) -> AddressChanged | None:
    _need(body, IFADDR.size, "ifaddrmsg")
    family, prefix, _, _, index = IFADDR.unpack_from(body)
    if family != AF_INET:
        return None
    attributes = _attributes(body[IFADDR.size :])
    raw = attributes.get(IFA_LOCAL, attributes.get(IFA_ADDRESS, b""))
    return AddressChanged(index, _ipv4(raw, "the address"), prefix, added)


def _route(body: bytes, *, added: bool) -> RouteChanged | None:
    _need(body, RTMSG.size, "rtmsg")
    family, prefix, _, _, table, _, _, _, _ = RTMSG.unpack_from(body)
    if family != AF_INET:
        return None
    attributes = _attributes(body[RTMSG.size :])
    destination = _ipv4(attributes[RTA_DST], "a route") if RTA_DST in attributes else "0.0.0.0"
    oif = attributes.get(RTA_OIF, b"")
    index = struct.unpack("=I", oif)[0] if len(oif) == 4 else 0
    return RouteChanged(index, destination, prefix, added, table)


def _error(sequence: int, body: bytes) -> DumpDone:
    """An error answer (or an acknowledgement) ends the request it answers."""
    _need(body, 4, "nlmsgerr")
    return DumpDone(sequence)


def _attributes(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    offset = 0
    while offset + ATTR.size <= len(data):
        length, kind = ATTR.unpack_from(data, offset)
        if length < ATTR.size or offset + length > len(data):
            raise _malformed(f"an attribute of {length} bytes at {offset} in {len(data)}")
        # The top bits flag nested and byte-order attributes; the number is below them.
        found.setdefault(kind & 0x3FFF, data[offset + ATTR.size : offset + length])
        offset += _aligned(length)
    return found


def _ipv4(raw: bytes, what: str) -> str:
    if len(raw) != 4:
        raise _malformed(f"{what} of {len(raw)} bytes, not 4")
    return str(ipaddress.IPv4Address(raw))


def _need(body: bytes, size: int, what: str) -> None:
    if len(body) < size:
        raise _malformed(f"a {what} of {len(body)} bytes, not {size}")


def _aligned(length: int) -> int:
    return (length + 3) & ~3


def _malformed(detail: str) -> RemoteError:
    return RemoteError(f"netlink: {detail}", code=ErrorCode.MALFORMED)


def dump_request(kind: int, sequence: int) -> bytes:
    """A request for the kernel's whole table of ``kind`` (RTM_GETLINK, RTM_GETADDR)."""
    body = GENERATION.pack(socket.AF_UNSPEC if kind == RTM_GETLINK else AF_INET, 0)
    header = HEADER.pack(HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0)
    return header + body


# -- the state machine


class NetWatch:
    """What the kernel says of links and addresses, and when it changed; see the
    module docstring. Send :meth:`datagrams_to_send` to the kernel (port 0)."""

    def __init__(self, *, own_port: int = 0, settle: float = SETTLE) -> None:
        self.own_port = own_port
        self.settle = settle
        self.links: dict[int, LinkChanged] = {}
        self.addresses: dict[int, set[str]] = {}
        self.counts: Counter[str] = Counter()
        """Notices taken, by kind (the adapter counts the datagrams that would not parse)."""
        self._requests = deque([dump_request(RTM_GETLINK, 1), dump_request(RTM_GETADDR, 2)])
        self._waiting: int | None = None
        """The sequence of the dump under way."""
        self._went_down: set[int] = set()
        self._changes = 0
        self._first: float | None = None
        self._last = 0.0
        self._events: deque[NetworkSettled] = deque(maxlen=MAX_EVENTS)

    def datagrams_to_send(self) -> list[bytes]:
        """The next dump request, once the one before it is answered."""
        if self._waiting is not None or not self._requests:
            return []
        request = self._requests.popleft()
        self._waiting = HEADER.unpack_from(request)[3]
        return [request]

    @property
    def synced(self) -> bool:
        """The kernel has answered both dumps: :attr:`links` and :attr:`addresses`
        describe every interface, not only those that changed since."""
        return self._waiting is None and not self._requests

    def receive(self, data: bytes, now: float) -> None:
        """One datagram from the netlink socket; RemoteError if it is malformed (the
        notices before the fault are kept)."""
        for notice, answer in parse(data, own_port=self.own_port):
            self._take(notice, answer, now)

    def index_of(self, address: str) -> int | None:
        """The link that holds ``address``, if a notice or the dump named it."""
        return next((i for i, held in self.addresses.items() if address in held), None)

    def get_timer(self) -> float | None:
        if self._first is None:
            return None
        return min(self._last + self.settle, self._first + MAX_SETTLE)

    def handle_timer(self, now: float) -> None:
        due = self.get_timer()
        if due is None or now < due:
            return
        up = {index for index, link in self.links.items() if link.up}
        came_back = frozenset(self._went_down & up)
        down = frozenset(self._went_down - up)
        self._events.append(NetworkSettled(came_back, down, self._changes))
        self._went_down -= came_back
        self._changes, self._first = 0, None

    def next_event(self) -> NetworkSettled | None:
        return self._events.popleft() if self._events else None

    # -- notices

    def _take(self, notice: Notice, answer: bool, now: float) -> None:
        self.counts[type(notice).__name__] += 1
        if isinstance(notice, DumpDone):
            if notice.sequence == self._waiting:
                self._waiting = None
            return
        if isinstance(notice, LinkChanged):
            changed = self._link(notice)
        elif isinstance(notice, AddressChanged):
            changed = self._address(notice)
        elif isinstance(notice, RouteChanged):
            changed = notice.table == RT_TABLE_MAIN
        else:
            changed = True  # an overrun: what we missed may have been anything
        if changed and not answer:
            self._changed(now)

    def _link(self, notice: LinkChanged) -> bool:
        before = self.links.get(notice.index)
        if notice.removed:
            self.links.pop(notice.index, None)
            self.addresses.pop(notice.index, None)
            self._went_down.discard(notice.index)
            return before is not None
        if before is None and len(self.links) >= MAX_LINKS:
            return False
        self.links[notice.index] = notice
        if before is not None and before.up and not notice.up:
            self._went_down.add(notice.index)
        return before is None or before.up != notice.up

    def _address(self, notice: AddressChanged) -> bool:
        if notice.index not in self.addresses and len(self.addresses) >= MAX_LINKS:
            return False
        held = self.addresses.setdefault(notice.index, set())
        if not notice.added:
            if notice.address not in held:
                return False
            held.discard(notice.address)
            return True
        if notice.address in held or len(held) >= MAX_ADDRESSES:
            return False
        held.add(notice.address)
        return True

    def _changed(self, now: float) -> None:
        self._changes += 1
        self._last = now
        if self._first is None:
            self._first = now


class Every:
    """Where there is no netlink: a :class:`NetworkSettled` with nothing in it every
    ``period`` seconds, for the owner's own check to run."""

    def __init__(self, now: float, period: float = FALLBACK_EVERY) -> None:
        self.period = period
        self._due = now + period
        self._events: deque[NetworkSettled] = deque(maxlen=1)

    def get_timer(self) -> float:
        return self._due

    def handle_timer(self, now: float) -> None:
        if now >= self._due:
            self._events.append(NetworkSettled(frozenset(), frozenset(), 0))
            self._due = now + self.period

    def next_event(self) -> NetworkSettled | None:
        return self._events.popleft() if self._events else None


# -- the asyncio adapter


class NetWatcher(_CoreDriver):
    """Runs a :class:`NetWatch` on a netlink socket (the loop's ``add_reader``), or
    :class:`Every` where there is none; calls ``on_change`` with each
    :class:`NetworkSettled`. Made by :func:`watch_network`; :meth:`close` when done."""

    def __init__(
        self, on_change: Callable[[NetworkSettled], None], sock: socket.socket | None, now: float
    ) -> None:
        self.core = NetWatch(own_port=sock.getsockname()[0]) if sock is not None else None
        super().__init__(self.core or Every(now), partial(_settled, on_change), MAX_EVENTS)
        self.synced = asyncio.Event()
        """Set once the kernel's dumps are in (see :attr:`NetWatch.synced`)."""
        self._sock = sock

    @property
    def is_fallback(self) -> bool:
        """No netlink here: a check every :data:`FALLBACK_EVERY` seconds instead."""
        return self.core is None

    def index_of(self, address: str) -> int | None:
        return self.core.index_of(address) if self.core is not None else None

    def close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if not self.is_closed:
            self._finish()

    def _readable(self) -> None:
        assert self._sock is not None and self.core is not None
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:
                # ENOBUFS: the kernel dropped notices for us; anything may have changed.
                _log.info("netlink: %s", exc)
                data = _OVERRUN
            try:
                self.core.receive(data, self._now())
            except RemoteError as exc:
                self._on_remote_error(exc)
        if self.core.synced:
            self.synced.set()
        self._flush()

    def _transmit(self) -> None:
        if self.core is None or self._sock is None:
            return
        for request in self.core.datagrams_to_send():
            with contextlib.suppress(OSError):
                self._sock.sendto(request, (0, 0))

    def _on_remote_error(self, exc: RemoteError) -> None:
        self._count(exc, None)


def watch_network(on_change: Callable[[NetworkSettled], None]) -> NetWatcher:
    """Start watching the network for ``on_change``, from inside the running loop."""
    loop = asyncio.get_running_loop()
    try:
        sock: socket.socket | None = _netlink_socket()
    except (OSError, AttributeError) as exc:
        _log.info("no netlink (%s): checking the network every %.0f s", exc, FALLBACK_EVERY)
        sock = None
    watcher = NetWatcher(on_change, sock, loop.time())
    if sock is not None:
        loop.add_reader(sock.fileno(), watcher._readable)
    watcher._start()
    return watcher


def _settled(on_change: Callable[[NetworkSettled], None], event: object) -> None:
    if isinstance(event, NetworkSettled):
        on_change(event)


_OVERRUN = HEADER.pack(HEADER.size, NLMSG_OVERRUN, 0, 0, 0)


def _netlink_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((0, GROUPS))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock

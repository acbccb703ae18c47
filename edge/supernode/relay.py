"""The TURN relay on sockets: the :class:`~edge.stun.turn.TurnServer` core driven by uvloop.

How it works: one core serves every client transport of the supernode. The
listening UDP socket and every relayed UDP socket are non-blocking sockets
watched with ``loop.add_reader``; when one is readable the adapter reads up to
:data:`~edge.runtime.udp.BATCH` datagrams, feeds each to the core, then flushes once: what the
core wants sent to clients leaves through the client's TCP connection when it
has one, else from the listening UDP socket; what it relays to peers leaves
from the allocation's relayed socket. Reading a batch before flushing keeps
the number of system calls per relayed packet near two, which is what decides
a relay's packets per second in Python.

TCP clients (at the supernode's port, and 80 and 443 where firewalls leave
nothing else open) reach the same core, unless the connection opens with an
edge session's first frame (a 2-byte length, then the wire format's magic):
such a connection is handed whole to
:attr:`RelayAdapter.edge_streams` (a device's secure session over TCP).
Otherwise each connection's bytes are cut into
whole STUN and ChannelData messages by a
:class:`~edge.stun.framing.StreamDeframer`; garbage closes the connection, and
a closed connection deletes its allocation at once (RFC 8656 §7). At most
``max_connections`` TCP clients are served; more are closed on arrival.

Relayed addresses are ports drawn at random from ``ports`` on ``relay_host``
(a port already taken is skipped); the core gives them back when their
allocation ends and the socket is closed then.

``now`` for the core is Unix time (its credentials carry Unix expiries); the
one timer is re-armed on the loop's clock after every flush.

The UDP port has a second tenant: datagrams whose first byte is the edge
wire format's (0xED, outside every range RFC 7983 gives STUN, ChannelData,
DTLS and RTP) go to the core given to :meth:`RelayAdapter.attach` — the
supernode's secure sessions with other supernodes and with its clients —
which answers from the same socket. That core runs on the loop's clock and
has its own timer; what it rejects is counted by error code, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Final, Protocol, cast

from edge.errors import RemoteError
from edge.runtime.udp import enlarge_buffers, read_batch, send
from edge.sansio import Address, DatagramCore
from edge.stun.errors import StunError
from edge.stun.framing import StreamDeframer
from edge.stun.turn import AllocationCreated, AllocationDeleted, TurnServer

EDGE_FIRST_BYTE: Final = 0xED
"""The first byte of every edge datagram (the wire format's magic, 0xED9E): an int
comparison, since slicing would make a bytes object for every relayed packet."""
EDGE_STREAM_MAGIC: Final = b"\xed\x9e"
"""An edge session over TCP starts with a 2-byte frame length, then the wire
format's magic; STUN has its message type and length there, and its own magic
cookie after them, so the two cannot be confused."""
EDGE_SNIFF: Final = 4
PORT_DRAWS: Final = 32
"""Random ports tried per allocation before the relay says it is out of ports (508)."""

LISTEN_BUFFER: Final = 4 << 20
"""Socket buffer of the listening UDP socket: every client's packets queue there,
and the default (about 200 KiB: 15 ms of 350 calls) overflows whenever another
process takes the core for a moment. As coturn does, ask for megabytes."""
RELAY_BUFFER: Final = 256 << 10

IDLE_TIMEOUT: Final = 30.0
"""A TCP client without an allocation that sends no whole message for this long is
closed: a stray HTTP request, say, whose first bytes read as a ChannelData header
announcing more than will ever come. A client with an allocation is governed by
the allocation's lifetime instead, and closed when the allocation ends."""

MAX_TCP_BUFFER: Final = 256 * 1024
"""A TCP client whose unsent answers exceed this is too slow to serve; it is closed."""

_log = logging.getLogger(__name__)

Clock = Callable[[], float]


class StreamHandler(Protocol):
    """Who takes over a TCP connection that carries an edge session."""

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self) -> None: ...


StreamFactory = Callable[[asyncio.Transport, Address], StreamHandler]


class RelayAdapter:
    """Sockets for one :class:`TurnServer`; build the core with :meth:`open_relay` and
    :meth:`close_relay` as its ``allocate_relay`` and ``release_relay``."""

    def __init__(
        self,
        relay_host: str,
        ports: range,
        *,
        max_connections: int = 1000,
        idle_timeout: float = IDLE_TIMEOUT,
        clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.relay_host = relay_host
        self.ports = ports
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.core: TurnServer | None = None
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: socket.socket | None = None
        self._relays: dict[Address, socket.socket] = {}
        self._streams: dict[Address, _TurnStream] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        """The core deadline the timer is set for: re-arming only when it changes saves
        a cancel and a ``call_at`` per relayed packet."""
        self._edge: DatagramCore | None = None
        self._edge_events: Callable[[object], None] = lambda event: None
        self._edge_timer: asyncio.TimerHandle | None = None
        self.edge_streams: StreamFactory | None = None
        """Makes the handler of a TCP connection whose first byte is 0xED (an edge
        session); None: such a connection is garbage to TURN and closed."""
        self._idle = asyncio.Event()
        self._idle.set()
        self.counters: Counter[str] = Counter()
        """Socket-level counts: ``os-error-*`` by errno, ``tcp-refused``, ``tcp-framing``,
        ``tcp-slow``, ``tcp-idle``, ``tcp-connections``, ``allocations-created`` and
        ``allocations-expired``."""

    # -- what the core calls

    def open_relay(self, client: Address) -> Address | None:
        """A fresh relayed UDP socket for ``client``'s allocation, or None when none is free."""
        for _ in range(PORT_DRAWS):
            port = self._rng.choice(self.ports)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.bind((self.relay_host, port))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            enlarge_buffers(sock, RELAY_BUFFER)
            relayed = cast(Address, sock.getsockname()[:2])
            self._relays[relayed] = sock
            self._running_loop().add_reader(sock.fileno(), self._relay_readable, relayed, sock)
            return relayed
        return None

    def close_relay(self, relayed: Address) -> None:
        sock = self._relays.pop(relayed, None)
        if sock is not None:
            self._running_loop().remove_reader(sock.fileno())
            sock.close()

    # -- lifecycle

    async def start(self, core: TurnServer, udp: socket.socket, tcp: list[socket.socket]) -> None:
        """Serve ``core`` on a bound UDP socket and bound (not yet listening) TCP sockets."""
        self.core = core
        self._loop = asyncio.get_running_loop()
        udp.setblocking(False)
        enlarge_buffers(udp, LISTEN_BUFFER)
        self._udp = udp
        self._loop.add_reader(udp.fileno(), self._client_readable)
        for sock in tcp:
            server = await self._loop.create_server(lambda: _TurnStream(self), sock=sock)
            self._servers.append(server)
        self._arm()

    def attach(self, core: DatagramCore, on_event: Callable[[object], None]) -> None:
        """Hand edge datagrams on the UDP port to ``core``; its events go to ``on_event``."""
        self._edge = core
        self._edge_events = on_event
        self.flush_edge()

    def stop_listening(self) -> None:
        """Take no new TCP clients; existing ones and UDP go on until :meth:`close`."""
        for server in self._servers:
            server.close()

    async def close(self) -> None:
        self.stop_listening()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for stream in list(self._streams.values()):
            stream.transport.abort()
        for timer in (self._timer, self._edge_timer):
            if timer is not None:
                timer.cancel()
        self._edge = None
        loop = self._running_loop()
        if self._udp is not None:
            loop.remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        for relayed in list(self._relays):
            self.close_relay(relayed)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no TCP client is left, at most ``timeout`` seconds; True if none is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return self._idle.is_set()

    @property
    def tcp_clients(self) -> int:
        return len(self._streams)

    # -- input

    def _client_readable(self) -> None:
        core, sock, now = self._core(), self._udp, self._clock()
        assert sock is not None
        edge = False
        for data, source in read_batch(sock, self.counters):
            if data and data[0] == EDGE_FIRST_BYTE and self._edge is not None:
                self._edge_datagram(self._edge, data, source)
                edge = True
            else:
                core.receive_from_client(data, source, now)
        self.flush()
        if edge:
            self.flush_edge()

    def _edge_datagram(self, core: DatagramCore, data: bytes, source: Address) -> None:
        try:
            core.receive_datagram(data, source, self._running_loop().time())
        except RemoteError as exc:
            self.counters[f"edge-rejected-{exc.code.name.lower()}"] += 1

    def flush_edge(self) -> None:
        core, udp = self._edge, self._udp
        if core is None or udp is None:
            return
        loop = self._running_loop()
        for data, address in core.datagrams_to_send(loop.time()):
            send(udp, data, address, self.counters)
        while (event := core.next_event()) is not None:
            self._edge_events(event)
        if self._edge_timer is not None:
            self._edge_timer.cancel()
            self._edge_timer = None
        deadline = core.get_timer()
        if deadline is not None:
            self._edge_timer = loop.call_at(deadline, self._on_edge_timer)

    def _on_edge_timer(self) -> None:
        self._edge_timer = None
        if self._edge is not None:
            self._edge.handle_timer(self._running_loop().time())
            self.flush_edge()

    def _relay_readable(self, relayed: Address, sock: socket.socket) -> None:
        core, now = self._core(), self._clock()
        for data, peer in read_batch(sock, self.counters):
            core.receive_from_peer(relayed, peer, data, now)
        self.flush()

    def stream_messages(self, client: Address, messages: list[bytes]) -> None:
        core, now = self._core(), self._clock()
        for message in messages:
            core.receive_from_client(message, client, now, stream=True)
        self.flush()

    def stream_idle(self, stream: _TurnStream) -> None:
        """A TCP client's idle time is up: keep it while it holds an allocation."""
        if self._core().has_allocation(stream.peer):
            stream.rearm()
        else:
            self.counters["tcp-idle"] += 1
            stream.close()

    def stream_gone(self, client: Address) -> None:
        if self._streams.pop(client, None) is not None:
            if not self._streams:
                self._idle.set()
            self._core().client_gone(client, self._clock())
            self.flush()

    # -- output

    def flush(self) -> None:
        """Send what the core queued, note its events and re-arm the timer."""
        core = self._core()
        udp = self._udp
        for data, client in core.datagrams_to_client():
            stream = self._streams.get(client)
            if stream is not None:
                stream.send(data)
            elif udp is not None:
                send(udp, data, client, self.counters)
        for relayed, peer, data in core.datagrams_to_peers():
            sock = self._relays.get(relayed)
            if sock is not None:
                send(sock, data, peer, self.counters)
        while (event := core.next_event()) is not None:
            if isinstance(event, AllocationCreated):
                self.counters["allocations-created"] += 1
            elif isinstance(event, AllocationDeleted):
                self._allocation_ended(event)
        self._arm()

    def _allocation_ended(self, event: AllocationDeleted) -> None:
        if event.expired:
            self.counters["allocations-expired"] += 1
        stream = self._streams.get(event.client)
        if stream is not None:
            # Over TCP the connection and the allocation live and die together (RFC 6062 §2).
            stream.close()

    def send_udp(self, data: bytes, address: Address) -> None:
        """Send from the listening UDP socket (answers another core builds)."""
        if self._udp is not None:
            send(self._udp, data, address, self.counters)

    def _arm(self) -> None:
        deadline = self._core().get_timer()
        if deadline == self._armed_for and (deadline is None or self._timer is not None):
            return  # the common case per relayed packet: nothing new can expire
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = deadline
        if deadline is not None:
            loop = self._running_loop()
            delay = max(0.0, deadline - self._clock())
            self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._armed_for = None
        self._core().handle_timer(self._clock())
        self.flush()

    # -- TCP connections

    def stream_opened(self, stream: _TurnStream) -> bool:
        """Register a new TCP client; False when it must be refused."""
        if len(self._streams) >= self.max_connections:
            self.counters["tcp-refused"] += 1
            return False
        self._streams[stream.peer] = stream
        self._idle.clear()
        self.counters["tcp-connections"] += 1
        return True

    def _core(self) -> TurnServer:
        if self.core is None:
            raise RuntimeError("RelayAdapter used before start()")
        return self.core

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("RelayAdapter used before start()")
        return self._loop


class _TurnStream(asyncio.Protocol):
    """One TCP client of the relay."""

    def __init__(self, relay: RelayAdapter) -> None:
        self.relay = relay
        self.deframer = StreamDeframer()
        self.transport: asyncio.Transport
        self.peer: Address = ("", 0)
        self.open = False
        self._idle: asyncio.TimerHandle | None = None
        self._head: bytes | None = b""
        self.edge: StreamHandler | None = None
        """Set when the connection turned out to carry an edge session, not TURN."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = cast(Address, transport.get_extra_info("peername")[:2])
        self.open = self.relay.stream_opened(self)
        if not self.open:
            self.transport.abort()
            return
        self.rearm()

    def rearm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.relay.idle_timeout, self.relay.stream_idle, self)

    def data_received(self, data: bytes) -> None:
        if self.edge is not None:
            self.edge.data_received(data)
            return
        if not self.open or self.transport.is_closing():
            return
        if self._head is not None:
            # Until 4 bytes have come, the connection may still be an edge session.
            data = self._head + data
            if len(data) < EDGE_SNIFF:
                self._head = data
                return
            self._head = None
            if data[2:EDGE_SNIFF] == EDGE_STREAM_MAGIC and self._hand_over(data):
                return
        try:
            messages = self.deframer.feed(data)
        except StunError as exc:
            self.relay.counters["tcp-framing"] += 1
            _log.debug("closing TURN TCP client %s:%d: %s", *self.peer, exc)
            self.close()
            return
        if messages:
            self.rearm()
            self.relay.stream_messages(self.peer, messages)

    def send(self, data: bytes) -> None:
        if self.transport.get_write_buffer_size() > MAX_TCP_BUFFER:
            self.relay.counters["tcp-slow"] += 1
            self.close()
            return
        self.transport.write(data)

    def close(self) -> None:
        # connection_lost follows from the loop, after the flush that may be running now.
        self.transport.abort()

    def _hand_over(self, data: bytes) -> bool:
        """The first byte is the edge wire format's: an edge session, if the supernode
        takes them over TCP. The relay forgets the connection; the handler owns it."""
        factory = self.relay.edge_streams
        if factory is None:
            return False
        if self._idle is not None:
            self._idle.cancel()
        self.relay.stream_gone(self.peer)
        self.open = False
        self.edge = factory(self.transport, self.peer)
        self.edge.data_received(data)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.edge is not None:
            self.edge.connection_lost()
            return
        if self._idle is not None:
            self._idle.cancel()
        if self.open:
            self.open = False
            self.relay.stream_gone(self.peer)

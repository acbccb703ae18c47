"""Direct TCP between two devices: the ``direct-tcp`` path kind.

Where a device's UDP cannot get out (a firewall that drops it) but its TCP
can, and the other device's TCP port P is reachable (a public host), the two
need no relay: the first opens a TCP connection to the second's port P and
their session runs over it. This is RFC 6544's idea cut down to what the
seed's cases need:

* each device offers a host TCP candidate, its port P, and listens there;
* checks for a pair with a TCP remote end go out on a connection this device
  opens to that end (from an ephemeral port); the device that accepts the
  connection sees them arrive from the connection's address, learns it as a
  peer-reflexive TCP candidate (:meth:`edge.client.call.Call.check_from`) and
  answers and checks back on the same connection — so one reachable side is
  enough, and nobody connects to an address a NAT made;
* on the wire every datagram (an edge datagram or a STUN check) is framed by
  a 2-byte length, as RFC 4571 frames RTP and STUN over TCP.

The rest of the device does not see TCP: a connection's far end is known by
the *TCP address* ``("tcp:IP", port)`` (:func:`tcp_address`), which the port
core (:class:`~edge.client.port.PortCore`) routes here, and what a
connection brings is handed to ``deliver`` from that address — the session
layer, the checks and the media work as they do over UDP.

Caps: :data:`MAX_CONNECTIONS` open or opening at once (inbound ones past it
are closed at once); :data:`MAX_PENDING` frames held per connection being
opened; frames over :data:`MAX_FRAME` or of length zero end the connection
(a byte stream cannot resynchronise); a connection that brings nothing for
:data:`IDLE_TIMEOUT` is closed; a peer that does not read past
:data:`MAX_WRITE_BUFFER` loses frames rather than memory. Each is counted in
:attr:`DirectTcp.counters`.
"""

import asyncio
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import cast

from edge.errors import RemoteError
from edge.sansio import Address
from edge.wire.codes import ErrorCode

TCP = "tcp:"
FRAME_HEADER = struct.Struct("!H")
MAX_FRAME = 4096
"""Well over an edge datagram (which keeps under a 1,280-byte path MTU) or a check."""
MAX_CONNECTIONS = 32
MAX_PENDING = 16
CONNECT_TIMEOUT = 5.0
IDLE_TIMEOUT = 30.0
MAX_WRITE_BUFFER = 256 << 10
BACKLOG = 16


def tcp_address(peer: Address) -> Address:
    """The address the device's sessions and checks use for ``peer`` over direct TCP."""
    return (f"{TCP}{peer[0]}", peer[1])


def tcp_peer(address: Address) -> Address | None:
    """The peer behind a TCP address, or None for any other address."""
    host = address[0]
    return (host[len(TCP) :], address[1]) if host.startswith(TCP) else None


class FramingError(RemoteError):
    """A direct TCP stream that cannot be cut into frames: the connection ends."""

    code = ErrorCode.MALFORMED


def frame(data: bytes) -> bytes:
    """``data`` with its 2-byte length in front (RFC 4571)."""
    if not 0 < len(data) <= MAX_FRAME:
        raise ValueError(f"a frame is 1 to {MAX_FRAME} bytes, not {len(data)}")
    return FRAME_HEADER.pack(len(data)) + data


class Deframer:
    """Whole frames out of one connection's bytes (sans-IO)."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The frames ``data`` completes. Raises FramingError for a length of zero or
        over the cap (announced before its bytes come, so nothing is held for it)."""
        self._buffer += data
        frames, start = [], 0
        while len(self._buffer) - start >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack_from(self._buffer, start)
            if not 0 < size <= self.max_frame:
                raise FramingError(f"a frame of {size} bytes (1 to {self.max_frame} allowed)")
            end = start + FRAME_HEADER.size + size
            if end > len(self._buffer):
                break
            frames.append(bytes(self._buffer[start + FRAME_HEADER.size : end]))
            start = end
        del self._buffer[:start]
        return frames


class _Connection(asyncio.Protocol):
    """One direct TCP connection, opened by us or accepted on port P."""

    def __init__(self, owner: "DirectTcp") -> None:
        self._owner = owner
        self._deframer = Deframer()
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self._heard = 0.0
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        host, port = self.transport.get_extra_info("peername")[:2]
        self.peer = (str(host), int(port))
        self._heard = asyncio.get_running_loop().time()
        self._arm()
        self._owner.opened(self)

    def data_received(self, data: bytes) -> None:
        self._heard = asyncio.get_running_loop().time()
        try:
            frames = self._deframer.feed(data)
        except FramingError:
            self._owner.counters["bad framing"] += 1
            self.close()
            return
        for one in frames:
            self._owner.deliver(one, tcp_address(self.peer))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._owner.closed(self)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self._owner.counters["frames dropped"] += 1
        elif transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self._owner.counters["frames dropped, peer not reading"] += 1
        else:
            transport.write(frame(data))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle = loop.call_at(self._heard + IDLE_TIMEOUT, self._check_idle)

    def _check_idle(self) -> None:
        if asyncio.get_running_loop().time() >= self._heard + IDLE_TIMEOUT:
            self._owner.counters["closed idle"] += 1
            self.close()
        else:
            self._arm()


class DirectTcp:
    """The device's direct TCP connections; see the module docstring. ``deliver(data,
    address)`` takes each frame that arrives, from the connection's TCP address."""

    def __init__(self, deliver: Callable[[bytes, Address], None]) -> None:
        self.deliver = deliver
        self.counters: Counter[str] = Counter()
        self._open: dict[Address, _Connection] = {}
        self._opening: dict[Address, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def connections(self) -> int:
        return len(self._open)

    async def listen(self, sock: socket.socket) -> None:
        """Accept connections on port P's TCP socket (bound, not yet listening)."""
        sock.listen(BACKLOG)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)

    def send(self, data: bytes, peer: Address) -> None:
        """Send ``data`` to ``peer`` on its connection, opening one if there is none."""
        if (conn := self._open.get(peer)) is not None:
            conn.write(data)
        elif (held := self._opening.get(peer)) is not None:
            if len(held) < MAX_PENDING:
                held.append(data)
            else:
                self.counters["frames dropped, still connecting"] += 1
        elif self._busy():
            self.counters["connections refused, at the cap"] += 1
        else:
            self._opening[peer] = [data]
            task = asyncio.create_task(self._connect(peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def connects_done(self) -> None:
        """Return once every connection being opened has opened or failed."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._open.values()):
            conn.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- the connections' side

    def opened(self, conn: _Connection) -> None:
        if conn.peer in self._opening:
            self._open[conn.peer] = conn
            for data in self._opening.pop(conn.peer):
                conn.write(data)
            self.counters["connections opened"] += 1
        elif self._busy() or conn.peer in self._open:
            self.counters["connections refused, at the cap"] += 1
            conn.close()
        else:
            self._open[conn.peer] = conn
            self.counters["connections accepted"] += 1

    def closed(self, conn: _Connection) -> None:
        if self._open.get(conn.peer) is conn:
            del self._open[conn.peer]

    def _busy(self) -> bool:
        return len(self._open) + len(self._opening) >= MAX_CONNECTIONS

    async def _connect(self, peer: Address) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), *peer), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError):
            self.counters["connections failed"] += 1
        finally:
            # Still held: the connection never came (opened() takes them when it does).
            held = self._opening.pop(peer, None)
            if held is not None:
                self.counters["frames dropped, no connection"] += len(held)

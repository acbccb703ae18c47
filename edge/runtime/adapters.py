"""Thin asyncio (uvloop) adapters that drive sans-IO protocol cores.

How it works: an adapter owns a transport and a core and does four things,
always in the same order after anything happens (bytes in, timer due, the
application poked the core):

1. feed the input to the core with ``now = loop.time()``;
2. transmit what the core wants sent;
3. hand the core's events to ``on_event``, at most ``max_events_per_wakeup``
   per wakeup; when the limit is hit, the rest follow on the next loop
   iteration (``call_soon``) so that one busy core cannot starve the loop;
4. re-arm its single timer at ``core.get_timer()``.

A :class:`~edge.errors.RemoteError` from the core means a peer sent garbage.
The datagram adapter counts it in ``dropped`` and goes on; the stream adapter
counts it and closes the connection, since a byte stream cannot resynchronise.
Any other exception is a bug and propagates to the event loop.

There is no protocol logic here. The application may call into the core
directly (to send a message, say) and must then call :meth:`poke` so that the
adapter transmits and re-arms. ``on_event`` may call ``poke``; the flush it asks
for runs on the next loop iteration.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
from collections.abc import Callable
from typing import Any, Final, Protocol, cast, runtime_checkable

from edge.errors import RemoteError
from edge.runtime.errors import RuntimeUsageError
from edge.runtime.logs import log_event
from edge.sansio import Address, DatagramCore, StreamCore
from edge.wire.codes import ErrorCode

DEFAULT_MAX_EVENTS: Final = 1024

_log = logging.getLogger(__name__)

EventHandler = Callable[[object], None]
ServerEventHandler = Callable[["StreamAdapter", object], None]


class _TimedCore(Protocol):
    """The part of both core protocols that the shared driver needs."""

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_event(self) -> object | None: ...


@runtime_checkable
class SupportsConnectionLost(Protocol):
    """A stream core that wants to know when its connection is gone.

    It may queue events (such as "closed") from ``connection_lost``; the
    adapter delivers them.
    """

    def connection_lost(self) -> None: ...


@runtime_checkable
class SupportsConnectionMade(Protocol):
    """A stream core that wants its peer's address and the time the connection opened.

    A server builds its cores before it knows who connects; this is how they learn.
    """

    def connection_made(self, address: Address, now: float) -> None: ...


class _CoreDriver:
    """Event delivery, the one timer and deferred flushes, shared by both adapters."""

    def __init__(self, core: _TimedCore, on_event: EventHandler, max_events: int) -> None:
        if max_events < 1:
            raise RuntimeUsageError(f"max_events_per_wakeup must be at least 1, got {max_events}")
        self._timed = core
        self._on_event = on_event
        self._max_events = max_events
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._deferred: asyncio.Handle | None = None
        self._flushing = False
        self._lost = False
        self._closed = asyncio.Event()
        self.dropped: collections.Counter[ErrorCode] = collections.Counter()
        """Inputs the core refused, by the error code it gave."""

    @property
    def is_closed(self) -> bool:
        """True once the transport has gone."""
        return self._lost

    def poke(self) -> None:
        """Transmit, deliver events and re-arm after the application called the core.

        Does nothing once the connection is closed.
        """
        if self._loop is None:
            raise RuntimeUsageError("poke() before the adapter was connected")
        self._flush()

    async def wait_closed(self) -> None:
        """Return once the transport is closed and final events were delivered."""
        await self._closed.wait()

    # -- hooks for the subclasses

    def _transmit(self) -> None:
        raise NotImplementedError

    def _on_remote_error(self, exc: RemoteError) -> None:
        raise NotImplementedError

    # -- shared machinery

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._flush()

    def _now(self) -> float:
        if self._loop is None:
            raise RuntimeUsageError("the adapter is not connected")
        return self._loop.time()

    def _flush(self) -> None:
        if self._flushing:
            # on_event poked us: finish this round first, then go again.
            self._defer()
            return
        self._flushing = True
        try:
            self._transmit()
            if self._deliver_events():
                self._defer()
            self._transmit()
        finally:
            self._flushing = False
            self._arm_timer()

    def _deliver_events(self) -> bool:
        """Hand events to the application; True if the per-wakeup limit was hit."""
        for _ in range(self._max_events):
            event = self._timed.next_event()
            if event is None:
                return False
            self._on_event(event)
        return True

    def _defer(self) -> None:
        if self._deferred is None and self._loop is not None:
            self._deferred = self._loop.call_soon(self._run_deferred)

    def _run_deferred(self) -> None:
        self._deferred = None
        self._flush()

    def _arm_timer(self) -> None:
        when = None if self._lost else self._timed.get_timer()
        if when == self._timer_at and (when is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = None
        if when is not None and self._loop is not None:
            self._timer = self._loop.call_at(when, self._fire_timer)

    def _fire_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self._timed.handle_timer(self._now())
        except RemoteError as exc:
            self._on_remote_error(exc)
        self._flush()

    def _count(self, exc: RemoteError, peer: Address | None) -> None:
        self.dropped[exc.code] += 1
        log_event(
            _log,
            logging.DEBUG,
            "input refused",
            peer=_show(peer),
            code=exc.code.name,
            reason=str(exc),
        )

    def _finish(self) -> None:
        """The transport is gone: stop the timer, deliver what is left, wake waiters."""
        self._lost = True
        self._arm_timer()
        self._flush()
        self._closed.set()


class DatagramAdapter(_CoreDriver, asyncio.DatagramProtocol):
    """Drives a :class:`~edge.sansio.DatagramCore` over one UDP socket.

    Create it with :func:`open_datagram`. ``dropped`` counts refused datagrams
    by error code, ``socket_errors`` the errors the socket reported (ICMP
    unreachable and the like) by errno name.
    """

    def __init__(
        self,
        core: DatagramCore,
        on_event: EventHandler,
        *,
        max_events_per_wakeup: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        _CoreDriver.__init__(self, core, on_event, max_events_per_wakeup)
        self.core = core
        self.socket_errors: collections.Counter[str] = collections.Counter()
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def local_address(self) -> Address:
        """The (host, port) the socket is bound to."""
        return _address(self._transport, "sockname")

    def close(self) -> None:
        """Close the socket; :meth:`wait_closed` returns once it is gone."""
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._start()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        # IPv6 addresses come with flow info and scope id; cores see (host, port).
        peer: Address = (addr[0], addr[1])
        try:
            self.core.receive_datagram(data, peer, self._now())
        except RemoteError as exc:
            self._count(exc, peer)
        self._flush()

    def error_received(self, exc: Exception) -> None:
        code = getattr(exc, "errno", None)
        name = (
            errno.errorcode.get(code, type(exc).__name__)
            if isinstance(code, int)
            else type(exc).__name__
        )
        self.socket_errors[name] += 1
        log_event(_log, logging.DEBUG, "socket error", error=name, reason=str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _transmit(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        for data, addr in self.core.datagrams_to_send(self._now()):
            transport.sendto(data, addr)

    def _on_remote_error(self, exc: RemoteError) -> None:
        self._count(exc, None)


class StreamAdapter(_CoreDriver, asyncio.Protocol):
    """Drives a :class:`~edge.sansio.StreamCore` over one TCP connection.

    While the transport asks to pause writing, the core's output stays in the
    core (whose buffer has its own cap) until writing resumes.
    """

    def __init__(
        self,
        core: StreamCore,
        on_event: EventHandler,
        *,
        max_events_per_wakeup: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        _CoreDriver.__init__(self, core, on_event, max_events_per_wakeup)
        self.core = core
        self._transport: asyncio.Transport | None = None
        self._paused = False

    @property
    def local_address(self) -> Address:
        return _address(self._transport, "sockname")

    @property
    def peer_address(self) -> Address:
        return _address(self._transport, "peername")

    def close(self) -> None:
        """Send what is buffered, then close; :meth:`wait_closed` returns once closed."""
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if isinstance(self.core, SupportsConnectionMade):
            peer = transport.get_extra_info("peername")
            self.core.connection_made((peer[0], peer[1]), asyncio.get_running_loop().time())
        self._start()

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self.core.receive_data(data, self._now())
        except RemoteError as exc:
            self._on_remote_error(exc)
            return
        self._flush()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(self.core, SupportsConnectionLost):
            self.core.connection_lost()
        self._finish()

    def _transmit(self) -> None:
        transport = self._transport
        if self._paused or transport is None or transport.is_closing():
            return
        data = self.core.data_to_send()
        if data:
            transport.write(data)

    def _on_remote_error(self, exc: RemoteError) -> None:
        peer = None if self._transport is None else _address(self._transport, "peername")
        self._count(exc, peer)
        # Let the core's last words (an ERROR frame, say) out before closing.
        self._flush()
        if self._transport is not None:
            self._transport.close()


async def open_datagram(
    core: DatagramCore,
    local_addr: Address,
    on_event: EventHandler,
    *,
    max_events_per_wakeup: int = DEFAULT_MAX_EVENTS,
) -> DatagramAdapter:
    """Bind a UDP socket at ``local_addr`` (port 0 picks one) and drive ``core`` on it."""
    loop = asyncio.get_running_loop()
    _, adapter = await loop.create_datagram_endpoint(
        lambda: DatagramAdapter(core, on_event, max_events_per_wakeup=max_events_per_wakeup),
        local_addr=local_addr,
    )
    return adapter


async def open_stream_client(
    core: StreamCore,
    host: str,
    port: int,
    on_event: EventHandler,
    *,
    max_events_per_wakeup: int = DEFAULT_MAX_EVENTS,
) -> StreamAdapter:
    """Connect to ``host:port`` over TCP and drive ``core`` on the connection."""
    loop = asyncio.get_running_loop()
    _, adapter = await loop.create_connection(
        lambda: StreamAdapter(core, on_event, max_events_per_wakeup=max_events_per_wakeup),
        host,
        port,
    )
    return adapter


async def open_stream_server(
    core_factory: Callable[[], StreamCore],
    host: str,
    port: int,
    on_event: ServerEventHandler,
    *,
    max_events_per_wakeup: int = DEFAULT_MAX_EVENTS,
) -> asyncio.Server:
    """Listen on ``host:port``; each accepted connection gets a fresh core.

    ``on_event(adapter, event)`` names the connection an event came from; the
    adapter is how the application replies (call its core, then ``poke()``).
    A core that must report the end of its connection implements
    :class:`SupportsConnectionLost`.
    """
    loop = asyncio.get_running_loop()

    def accept() -> StreamAdapter:
        adapter: StreamAdapter

        def forward(event: object) -> None:
            on_event(adapter, event)

        adapter = StreamAdapter(
            core_factory(), forward, max_events_per_wakeup=max_events_per_wakeup
        )
        return adapter

    return await loop.create_server(accept, host, port)


def _address(transport: asyncio.BaseTransport | None, name: str) -> Address:
    if transport is None:
        raise RuntimeUsageError("the adapter is not connected")
    info = transport.get_extra_info(name)
    if not isinstance(info, tuple) or len(info) < 2:
        raise RuntimeUsageError(f"the transport has no {name}")
    return (str(info[0]), int(info[1]))


def _show(peer: Address | None) -> str:
    if peer is None:
        return "-"
    host, port = peer
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = [
    "DEFAULT_MAX_EVENTS",
    "DatagramAdapter",
    "StreamAdapter",
    "SupportsConnectionLost",
    "open_datagram",
    "open_stream_client",
    "open_stream_server",
]

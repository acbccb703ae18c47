"""The uvloop adapters driving toy sans-IO cores over real loopback sockets, and run().

The cores below belong to these tests: an echo service small enough to read at
a glance, with one timer and one kind of refused input, so that every path of
the adapters (input, output, events, timer, refusal, back-pressure, closing)
is exercised over real UDP and TCP sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from collections import deque
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pytest
import uvloop

from edge.errors import RemoteError
from edge.runtime.adapters import (
    DatagramAdapter,
    StreamAdapter,
    open_datagram,
    open_stream_client,
    open_stream_server,
)
from edge.runtime.errors import RuntimeUsageError
from edge.runtime.loop import EXIT_SIGINT, run
from edge.sansio import Address
from edge.wire.codes import ErrorCode

T = TypeVar("T")
TIMEOUT = 5.0
LOCALHOST: Address = ("127.0.0.1", 0)


def run_uv(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def within(awaitable: Coroutine[Any, Any, T] | asyncio.Future[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


# ------------------------------------------------------------------ the toy cores


class ToyError(RemoteError):
    code = ErrorCode.MALFORMED


@dataclass(frozen=True)
class Received:
    data: bytes
    addr: Address | None = None


@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class Closed:
    pass


class ToyTimer:
    """One timer that emits a Tick; ``arm`` sets it ``delay`` seconds after ``now``."""

    def __init__(self) -> None:
        self.events: deque[object] = deque()
        self.timer: float | None = None
        self.timer_calls = 0

    def arm(self, now: float, delay: float) -> None:
        self.timer = now + delay

    def get_timer(self) -> float | None:
        return self.timer

    def handle_timer(self, now: float) -> None:
        self.timer_calls += 1
        if self.timer is not None and now >= self.timer:
            self.timer = None
            self.events.append(Tick(now))

    def next_event(self) -> object | None:
        return self.events.popleft() if self.events else None


class EchoDatagramCore(ToyTimer):
    """Echoes each datagram; b"bad..." is refused; b"arm" sets the timer."""

    def __init__(self, events_per_datagram: int = 1) -> None:
        super().__init__()
        self.outbox: list[tuple[bytes, Address]] = []
        self.events_per_datagram = events_per_datagram

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if data.startswith(b"bad"):
            raise ToyError("bad datagram")
        if data == b"arm":
            self.arm(now, 0.01)
        self.outbox.append((data, addr))
        self.events.extend(Received(data, addr) for _ in range(self.events_per_datagram))

    def send(self, data: bytes, addr: Address) -> None:
        self.outbox.append((data, addr))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self.outbox = self.outbox, []
        return out


class EchoStreamCore(ToyTimer):
    """Echoes bytes (unless ``echo`` is off); b"bad" answers b"ERR" and is refused."""

    def __init__(self, echo: bool = True) -> None:
        super().__init__()
        self.echo = echo
        self.pending = bytearray()

    def receive_data(self, data: bytes, now: float) -> None:
        if data.startswith(b"bad"):
            self.pending += b"ERR"
            raise ToyError("bad stream")
        if data == b"arm":
            self.arm(now, 0.01)
        if self.echo:
            self.pending += data
        self.events.append(Received(data))

    def send(self, data: bytes) -> None:
        self.pending += data

    def data_to_send(self) -> bytes:
        out = bytes(self.pending)
        self.pending.clear()
        return out

    def connection_lost(self) -> None:
        self.events.append(Closed())


# ------------------------------------------------------------------ helpers


class UdpPeer(asyncio.DatagramProtocol):
    """The far end of the datagram tests: a plain socket that queues what it gets."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not inherit from asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.inbox.put_nowait(data)

    def send(self, data: bytes, addr: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (host, port)


class EventLog:
    """Collects events and wakes a waiter when one matching a predicate arrives."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self._waiters: list[tuple[type, int, asyncio.Future[None]]] = []

    def __call__(self, event: object) -> None:
        self.events.append(event)
        for kind, count, future in self._waiters:
            if not future.done() and self.count(kind) >= count:
                future.set_result(None)

    def count(self, kind: type) -> int:
        return sum(isinstance(event, kind) for event in self.events)

    async def wait_for(self, kind: type, count: int = 1) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((kind, count, future))
        if self.count(kind) >= count:
            future.set_result(None)
        await within(future)


async def udp_peer() -> UdpPeer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=LOCALHOST)
    return peer


# ------------------------------------------------------------------ datagrams


def test_datagram_echo_timer_and_refusal() -> None:
    async def scenario() -> None:
        core, log = EchoDatagramCore(), EventLog()
        adapter = await open_datagram(core, LOCALHOST, log)
        assert isinstance(adapter, DatagramAdapter)
        peer = await udp_peer()

        peer.send(b"hello", adapter.local_address)
        assert await within(peer.inbox.get()) == b"hello"
        assert log.events == [Received(b"hello", peer.address)]

        peer.send(b"bad one", adapter.local_address)
        peer.send(b"after", adapter.local_address)
        assert await within(peer.inbox.get()) == b"after"
        assert adapter.dropped == {ErrorCode.MALFORMED: 1}

        peer.send(b"arm", adapter.local_address)
        await log.wait_for(Tick)
        assert core.get_timer() is None

        adapter.close()
        await within(adapter.wait_closed())
        assert adapter.is_closed
        assert peer.transport is not None
        peer.transport.close()

    run_uv(scenario())


def test_datagram_poke_transmits_what_the_application_queued() -> None:
    async def scenario() -> None:
        core = EchoDatagramCore()
        adapter = await open_datagram(core, LOCALHOST, EventLog())
        peer = await udp_peer()
        core.send(b"unsolicited", peer.address)
        adapter.poke()
        assert await within(peer.inbox.get()) == b"unsolicited"
        adapter.close()
        await within(adapter.wait_closed())
        adapter.poke()  # after closing: nothing to do, and no error

    run_uv(scenario())


def test_datagram_timer_is_rearmed_when_the_core_moves_it() -> None:
    async def scenario() -> None:
        core, log = EchoDatagramCore(), EventLog()
        adapter = await open_datagram(core, LOCALHOST, log)
        loop = asyncio.get_running_loop()
        core.arm(loop.time(), 3600)
        adapter.poke()
        core.arm(loop.time(), 0)
        adapter.poke()
        await log.wait_for(Tick)
        assert core.timer_calls == 1
        adapter.close()
        await within(adapter.wait_closed())

    run_uv(scenario())


def test_datagram_events_beyond_the_wakeup_limit_still_arrive() -> None:
    async def scenario() -> None:
        core, log = EchoDatagramCore(events_per_datagram=5), EventLog()
        adapter = await open_datagram(core, LOCALHOST, log, max_events_per_wakeup=2)
        peer = await udp_peer()
        peer.send(b"many", adapter.local_address)
        await log.wait_for(Received, 5)
        adapter.close()
        await within(adapter.wait_closed())

    run_uv(scenario())


def test_datagram_socket_errors_are_counted() -> None:
    async def scenario() -> None:
        adapter = await open_datagram(EchoDatagramCore(), LOCALHOST, EventLog())
        adapter.error_received(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
        adapter.error_received(OSError(errno.EHOSTUNREACH, "unreachable"))
        adapter.error_received(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
        assert adapter.socket_errors == {"ECONNREFUSED": 2, "EHOSTUNREACH": 1}
        adapter.close()
        await within(adapter.wait_closed())

    run_uv(scenario())


def test_adapter_misuse_is_a_local_error() -> None:
    adapter = DatagramAdapter(EchoDatagramCore(), EventLog())
    with pytest.raises(RuntimeUsageError):
        adapter.poke()
    with pytest.raises(RuntimeUsageError):
        _ = adapter.local_address
    with pytest.raises(RuntimeUsageError):
        DatagramAdapter(EchoDatagramCore(), EventLog(), max_events_per_wakeup=0)


# ------------------------------------------------------------------ streams


class Server:
    """Records (adapter, event) pairs from open_stream_server."""

    def __init__(self) -> None:
        self.log = EventLog()
        self.adapters: list[StreamAdapter] = []

    def __call__(self, adapter: StreamAdapter, event: object) -> None:
        if adapter not in self.adapters:
            self.adapters.append(adapter)
        self.log(event)


async def received_bytes(log: EventLog, total: int) -> bytes:
    """The bytes of Received events once at least ``total`` have arrived."""
    while True:
        data = b"".join(e.data for e in log.events if isinstance(e, Received))
        if len(data) >= total:
            return data
        await log.wait_for(Received, log.count(Received) + 1)


def test_stream_echo_timer_and_client_close() -> None:
    async def scenario() -> None:
        server_side = Server()
        server = await open_stream_server(EchoStreamCore, "127.0.0.1", 0, server_side)
        port = server.sockets[0].getsockname()[1]
        client_log, core = EventLog(), EchoStreamCore(echo=False)
        client = await open_stream_client(core, "127.0.0.1", port, client_log)
        assert client.core is core

        core.send(b"hello")
        client.poke()
        assert await received_bytes(client_log, 5) == b"hello"
        assert server_side.adapters[0].peer_address == client.local_address

        core.send(b"arm")
        client.poke()
        await server_side.log.wait_for(Tick)

        client.close()
        await within(client.wait_closed())
        await server_side.log.wait_for(Closed)
        await within(server_side.adapters[0].wait_closed())
        assert client_log.count(Closed) == 1
        server.close()
        await within(server.wait_closed())

    run_uv(scenario())


def test_stream_remote_error_sends_last_words_and_closes() -> None:
    async def scenario() -> None:
        server_side = Server()
        server = await open_stream_server(EchoStreamCore, "127.0.0.1", 0, server_side)
        port = server.sockets[0].getsockname()[1]
        client_log, core = EventLog(), EchoStreamCore(echo=False)
        client = await open_stream_client(core, "127.0.0.1", port, client_log)

        core.send(b"ok")
        client.poke()
        await received_bytes(client_log, 2)
        core.send(b"bad")
        client.poke()

        await client_log.wait_for(Closed)
        await within(client.wait_closed())
        assert await received_bytes(client_log, 5) == b"okERR"
        (adapter,) = server_side.adapters
        await within(adapter.wait_closed())
        assert adapter.dropped == {ErrorCode.MALFORMED: 1}
        assert server_side.log.count(Closed) == 1
        server.close()
        await within(server.wait_closed())

    run_uv(scenario())


def test_stream_output_waits_while_writing_is_paused() -> None:
    async def scenario() -> None:
        server_side = Server()
        server = await open_stream_server(EchoStreamCore, "127.0.0.1", 0, server_side)
        port = server.sockets[0].getsockname()[1]
        client_log = EventLog()
        core = EchoStreamCore(echo=False)
        client = await open_stream_client(core, "127.0.0.1", port, client_log)

        client.pause_writing()
        core.send(b"held")
        client.poke()
        assert core.pending == b"held"
        client.resume_writing()
        assert core.pending == b""
        assert await received_bytes(client_log, 4) == b"held"

        client.close()
        await within(client.wait_closed())
        server.close()
        await within(server.wait_closed())

    run_uv(scenario())


# ------------------------------------------------------------------ run()


@pytest.fixture
def default_policy() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)


def test_run_returns_the_result_on_uvloop(default_policy: None) -> None:
    async def main() -> int:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        return 7

    assert run(main()) == 7


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 0), (signal.SIGINT, EXIT_SIGINT)])
def test_run_turns_signals_into_cancellation(
    default_policy: None, signum: signal.Signals, status: int
) -> None:
    cleaned_up: list[bool] = []

    async def main() -> int:
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signum)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().create_future(), TIMEOUT)
        finally:
            cleaned_up.append(True)
        return 99

    assert run(main()) == status
    assert cleaned_up == [True]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_run_lets_errors_of_main_propagate(default_policy: None) -> None:
    async def main() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run(main())

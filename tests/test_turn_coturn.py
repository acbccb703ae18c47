"""Our TURN client against coturn on 127.0.0.1, over UDP and TCP, on uvloop.

coturn takes TURN REST credentials made by :func:`edge.login.relay.relay_credentials`
with the same shared secret. The client allocates, asks for a permission for a
plain UDP socket on 127.0.0.1 (the peer), relays to it through a Send
indication and then through ChannelData, and hears its answers both ways. The
cores run through the house adapters; every wait is for an event or a
datagram, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import uvloop

from edge.login.relay import relay_credentials
from edge.runtime.adapters import (
    DatagramAdapter,
    StreamAdapter,
    open_datagram,
    open_stream_client,
)
from edge.sansio import Address
from edge.stun.codec import Method
from edge.stun.events import (
    AllocationClosed,
    AllocationSucceeded,
    ChannelBound,
    DataReceived,
    PermissionCreated,
    TurnFailed,
)
from edge.stun.turnclient import TurnClient, TurnStream
from tests.coturn import Coturn, running_coturn

T = TypeVar("T")
SECRET = b"coturn interop secret"
TIMEOUT = 10.0
LOCALHOST: Address = ("127.0.0.1", 0)


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    with running_coturn(tmp_path, secret=SECRET) as server:
        yield server


def run_uv(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


class Inbox:
    """Collects what a callback hands over; :meth:`next` waits for the next item."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()

    def __call__(self, item: object) -> None:
        self.queue.put_nowait(item)

    async def next(self, kind: type[T]) -> T:
        item = await asyncio.wait_for(self.queue.get(), TIMEOUT)
        assert isinstance(item, kind), item
        return item


class Peer(asyncio.DatagramProtocol):
    """A plain UDP socket on 127.0.0.1: what it receives goes to an inbox."""

    def __init__(self) -> None:
        self.inbox = Inbox()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.inbox((data, (addr[0], addr[1])))

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (host, port)

    def send(self, data: bytes, to: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)


def make_client(server: Coturn, *, stream: bool, secret: bytes = SECRET) -> TurnClient:
    credentials = relay_credentials(secret, "alice", int(time.time()), 600)
    return TurnClient(server.address, credentials.username, credentials.password, stream=stream)


Opened = tuple[Callable[[], None], Callable[[], Awaitable[None]]]
"""An adapter's poke and its close-and-wait."""


async def open_client(client: TurnClient, events: Inbox) -> Opened:
    """Drive ``client`` over UDP or, when it is a stream client, over TCP."""
    adapter: DatagramAdapter | StreamAdapter
    if client.stream:
        host, port = client.server
        adapter = await open_stream_client(TurnStream(client), host, port, events)
    else:
        adapter = await open_datagram(client, LOCALHOST, events)

    async def close() -> None:
        adapter.close()
        await adapter.wait_closed()

    return adapter.poke, close


async def relay_both_ways(client: TurnClient, poke: Callable[[], None], events: Inbox) -> None:
    """Allocate, then relay to a peer and back: Send/Data indications, then a channel."""
    loop = asyncio.get_running_loop()
    client.allocate(loop.time())
    poke()
    allocated = await events.next(AllocationSucceeded)
    assert allocated.relayed[0] == "127.0.0.1"
    _, peer = await loop.create_datagram_endpoint(Peer, local_addr=LOCALHOST)
    try:
        client.create_permission(peer.address, loop.time())
        poke()
        assert await events.next(PermissionCreated) == PermissionCreated(peer.address)
        await round_trip(client, poke, events, peer, allocated.relayed, None)
        channel = client.bind_channel(peer.address, loop.time())
        poke()
        assert await events.next(ChannelBound) == ChannelBound(peer.address, channel)
        await round_trip(client, poke, events, peer, allocated.relayed, channel)
    finally:
        assert peer.transport is not None
        peer.transport.close()
    client.close(loop.time())
    poke()
    await events.next(AllocationClosed)


async def round_trip(
    client: TurnClient,
    poke: Callable[[], None],
    events: Inbox,
    peer: Peer,
    relayed: Address,
    channel: int | None,
) -> None:
    """The client sends to the peer (odd length: padding over TCP), the peer answers."""
    outgoing = b"to the peer on channel %r." % channel
    client.send(peer.address, outgoing, asyncio.get_running_loop().time())
    poke()
    assert await peer.inbox.next(tuple) == (outgoing, relayed)
    answer = b"back from the peer, channel %r" % channel
    peer.send(answer, relayed)
    assert await events.next(DataReceived) == DataReceived(peer.address, answer, channel)


@pytest.mark.parametrize("stream", [False, True], ids=["udp", "tcp"])
def test_our_turn_client_relays_through_coturn(coturn: Coturn, stream: bool) -> None:
    async def main() -> None:
        client = make_client(coturn, stream=stream)
        events = Inbox()
        poke, close = await open_client(client, events)
        try:
            await relay_both_ways(client, poke, events)
        finally:
            await close()
        assert not client.drops, client.drops

    try:
        run_uv(main())
    except BaseException:
        print(coturn.log_text())
        raise


@pytest.mark.parametrize("stream", [False, True], ids=["udp", "tcp"])
def test_credentials_from_the_wrong_secret_fail_with_401(coturn: Coturn, stream: bool) -> None:
    async def main() -> TurnFailed:
        client = make_client(coturn, stream=stream, secret=b"not the secret")
        events = Inbox()
        poke, close = await open_client(client, events)
        try:
            client.allocate(asyncio.get_running_loop().time())
            poke()
            return await events.next(TurnFailed)
        finally:
            await close()

    failed = run_uv(main())
    assert (failed.code, failed.method) == (401, Method.ALLOCATE)

"""RFC 5780 on real sockets: the supernode's three extra sockets on uvloop, its main
socket served by the TURN core through the hook, and the connectivity self-test
over a real UDP socket. The four server addresses are 127.0.0.1 and 127.0.0.2
(Linux routes all of 127/8 to the loopback) at two ports; no NAT, so "open"."""

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pytest
import uvloop

from edge.runtime.adapters import DatagramAdapter
from edge.sansio import Address
from edge.stun.attributes import AttrType, ChangeFlags
from edge.stun.codec import Class, Message, Method, build, parse
from edge.stun.events import FilteringBehaviour, MappingBehaviour, NatReport
from edge.stun.nat import ConnectivityTest
from edge.stun.server import Outcome
from edge.stun.turn import TurnLimits, TurnServer
from edge.supernode import discovery
from edge.supernode.discovery import DiscoverySockets
from edge.supernode.errors import SupernodeBindError
from edge.supernode.relay import RelayAdapter

T = TypeVar("T")
A1, A2 = "127.0.0.1", "127.0.0.2"
TIMEOUT = 10.0


def run_uv(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def udp_socket(host: str = A1, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    return sock


@dataclass
class Server:
    """A supernode's UDP side as the service wires it: the TURN core on the main
    socket through a RelayAdapter, and the discovery sockets behind its hook."""

    turn: TurnServer
    sockets: DiscoverySockets

    @property
    def primary(self) -> Address:
        return self.sockets.addresses.primary


@asynccontextmanager
async def supernode() -> AsyncIterator[Server]:
    main = udp_socket()
    relay = RelayAdapter(A1, range(46000, 46100))
    turn = TurnServer(
        "edge.test",
        os.urandom(32),
        relay.open_relay,
        now_nonce_secret=os.urandom(32),
        limits=TurnLimits(),
        release_relay=relay.close_relay,
    )
    await relay.start(turn, main, [])
    try:
        primary = cast(Address, main.getsockname()[:2])
        sockets = await discovery.start(primary, (A2, 0), main.sendto, software="edge test")
        turn.binding_hook = sockets.handle_main
        try:
            yield Server(turn, sockets)
        finally:
            sockets.close()
    finally:
        await relay.close()


class Peer(asyncio.DatagramProtocol):
    """A plain UDP socket: what arrives, and from where."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.put_nowait((data, (addr[0], addr[1])))


def binding(flags: ChangeFlags | None = None) -> bytes:
    message = Message(Method.BINDING, Class.REQUEST, os.urandom(12))
    if flags is not None:
        message.attributes.append((AttrType.CHANGE_REQUEST, int(flags)))
    return build(message)


async def self_test(server: Address) -> NatReport:
    """The device's side: the self-test core on one real UDP socket."""
    loop = asyncio.get_running_loop()
    sock = udp_socket()
    test = ConnectivityTest(server, cast(Address, sock.getsockname()[:2]), loop.time())
    done: asyncio.Future[NatReport] = loop.create_future()

    def on_event(event: object) -> None:
        if isinstance(event, NatReport) and not done.done():
            done.set_result(event)

    transport, _ = await loop.create_datagram_endpoint(
        lambda: DatagramAdapter(test, on_event), sock=sock
    )
    try:
        return await asyncio.wait_for(done, TIMEOUT)
    finally:
        transport.close()


def test_the_self_test_finds_no_nat_through_the_supernode() -> None:
    async def scenario() -> tuple[NatReport, Server]:
        async with supernode() as server:
            return await self_test(server.primary), server

    report, server = run_uv(scenario())
    assert report.classification == "open"
    assert report.nat_present is False
    assert report.mapping is MappingBehaviour.ENDPOINT_INDEPENDENT
    assert report.filtering is FilteringBehaviour.ENDPOINT_INDEPENDENT
    assert report.other_address == server.sockets.addresses.alternate
    # Test I and filtering test II, both through the main socket's hook.
    assert server.sockets.core.counts == {Outcome.SUCCESS: 2}
    assert server.turn.requests == {}


def test_each_socket_answers_from_the_one_the_flags_name() -> None:
    async def scenario() -> list[tuple[Address, Address, Address]]:
        loop = asyncio.get_running_loop()
        async with supernode() as server:
            transport, peer = await loop.create_datagram_endpoint(Peer, local_addr=(A1, 0))
            seen = []
            try:
                for local in server.sockets.addresses.sockets:
                    for flags in (ChangeFlags.CHANGE_PORT, ChangeFlags.CHANGE_IP):
                        transport.sendto(binding(flags), local)
                        data, source = await asyncio.wait_for(peer.received.get(), TIMEOUT)
                        origin = parse(data).get(AttrType.RESPONSE_ORIGIN)
                        assert origin == source
                        seen.append((local, source, server.sockets.addresses.changed(local, flags)))
            finally:
                transport.close()
            return seen

    for _, source, expected in run_uv(scenario()):
        assert source == expected


def test_garbage_on_an_extra_socket_is_counted_and_serving_goes_on() -> None:
    async def scenario() -> tuple[Server, Address]:
        loop = asyncio.get_running_loop()
        async with supernode() as server:
            transport, peer = await loop.create_datagram_endpoint(Peer, local_addr=(A1, 0))
            try:
                target = server.sockets.addresses.alternate
                transport.sendto(b"\xff" * 64, target)
                transport.sendto(binding(), target)
                _, source = await asyncio.wait_for(peer.received.get(), TIMEOUT)
            finally:
                transport.close()
            return server, source

    server, source = run_uv(scenario())
    assert source == server.sockets.addresses.alternate
    assert server.sockets.counts() == {"malformed": 1, "success": 1}


def test_the_wildcard_and_a_taken_port_are_refused_and_nothing_stays_open() -> None:
    async def scenario() -> None:
        with udp_socket() as main, udp_socket(A2) as taken:
            primary = cast(Address, main.getsockname()[:2])
            with pytest.raises(SupernodeBindError, match="own address"):
                await discovery.start(("0.0.0.0", primary[1]), (A2, 0), main.sendto)
            with pytest.raises(SupernodeBindError, match="two IPs"):
                await discovery.start(primary, (A1, 0), main.sendto)
            # A2:P2 is taken: the sockets already bound (A1:P2, A2:P1) are closed again.
            port = taken.getsockname()[1]
            with pytest.raises(SupernodeBindError, match="cannot bind"):
                await discovery.start(primary, (A2, port), main.sendto)
            with udp_socket(A1, port), udp_socket(A2, primary[1]):
                pass

    run_uv(scenario())


def test_once_closed_the_hook_declines() -> None:
    async def scenario() -> tuple[bool, bool]:
        with udp_socket() as main:
            primary = cast(Address, main.getsockname()[:2])
            sockets = await discovery.start(primary, (A2, 0), main.sendto)
            open_answer = sockets.handle_main(binding(), (A1, 9))
            sockets.close()
            return open_answer, sockets.handle_main(binding(), (A1, 9))

    assert run_uv(scenario()) == (True, False)

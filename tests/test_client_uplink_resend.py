"""A request to the supernode over UDP survives a lost datagram: the device sends it
again, and a search (a PRESENCE_LOOKUP) still answers.

A real supernode and a real agent, with a small UDP forwarder between them that
drops the next datagram from the device when told to: the loss a home uplink has.
"""

import asyncio
from pathlib import Path
from typing import Any, cast

from edge.runtime.control import request
from edge.sansio import Address
from tests.test_agent import network, run_uv


class LossyForwarder(asyncio.DatagramProtocol):
    """Forwards datagrams between one device and ``server``; ``drop`` datagrams from the
    device are lost on the way."""

    def __init__(self, server: Address) -> None:
        self.server = server
        self.device: Address | None = None
        self.drop = 0
        self.dropped = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's: no subclass

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.device = (addr[0], addr[1])
        if self.drop > 0:
            self.drop -= 1
            self.dropped += 1
            return
        assert self.upstream is not None
        self.upstream.sendto(data, self.server)

    def back(self, data: bytes) -> None:
        if self.transport is not None and self.device is not None:
            self.transport.sendto(data, self.device)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, forwarder: LossyForwarder) -> None:
        self.forwarder = forwarder

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.forwarder.back(data)


async def forwarder_to(server: Address) -> tuple[LossyForwarder, Address]:
    loop = asyncio.get_running_loop()
    forwarder = LossyForwarder(server)
    front, _ = await loop.create_datagram_endpoint(lambda: forwarder, local_addr=("127.0.0.1", 0))
    upstream, _ = await loop.create_datagram_endpoint(
        lambda: _Upstream(forwarder), local_addr=("127.0.0.1", 0)
    )
    forwarder.upstream = upstream
    host, port = front.get_extra_info("sockname")[:2]
    return forwarder, (host, port)


def test_a_lookup_whose_datagram_is_lost_is_sent_again_and_answered(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            forwarder, front = await forwarder_to(home)
            alice = net.agent_config("alice", [front])
            await net.agent(alice)
            await net.agent(net.agent_config("bob", [home]))
            forwarder.drop = 1  # the search's PRESENCE_LOOKUP goes nowhere
            found = await request(alice.control_socket, "search", {"user": "bob"})
            assert found["ok"], found
            assert [d["device"] for d in found["result"]["devices"]] == ["desk"]
            assert forwarder.dropped == 1

    run_uv(main())

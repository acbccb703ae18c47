"""Direct TCP between devices: RFC 4571 framing, and two real listeners on loopback."""

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.client import direct
from edge.client.direct import (
    MAX_FRAME,
    Deframer,
    DirectTcp,
    FramingError,
    frame,
    tcp_address,
    tcp_peer,
)
from edge.sansio import Address

# ---------------------------------------------------------------- framing


@given(st.lists(st.binary(min_size=1, max_size=MAX_FRAME), max_size=8), st.data())
def test_frames_come_out_whole_however_the_stream_is_cut(
    frames: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(frame(one) for one in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    deframer, out, start = Deframer(), [], 0
    for cut in [*cuts, len(stream)]:
        out += deframer.feed(stream[start:cut])
        start = cut
    assert out == frames


@pytest.mark.parametrize("length", [0, MAX_FRAME + 1, 0xFFFF])
def test_a_frame_of_length_zero_or_over_the_cap_breaks_the_stream(length: int) -> None:
    with pytest.raises(FramingError, match=f"{length} bytes"):
        Deframer().feed(length.to_bytes(2, "big") + b"x")


def test_nothing_empty_or_oversized_is_framed() -> None:
    for size in (0, MAX_FRAME + 1):
        with pytest.raises(ValueError, match="a frame is"):
            frame(b"x" * size)


def test_tcp_addresses_name_the_peer_and_nothing_else() -> None:
    assert tcp_peer(tcp_address(("198.18.0.2", 4000))) == ("198.18.0.2", 4000)
    assert tcp_peer(("198.18.0.2", 4000)) is None
    assert tcp_peer(("via:bob/desk", 0)) is None


# ---------------------------------------------------------------- two devices on loopback


class Device:
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()
        self.tcp = DirectTcp(lambda data, addr: self.got.put_nowait((data, addr)))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address: Address = self.sock.getsockname()

    async def next(self) -> tuple[bytes, Address]:
        return await asyncio.wait_for(self.got.get(), 5.0)


Scenario = Callable[[Device, Device], Awaitable[None]]


def between_two(scenario: Scenario) -> None:
    """Run ``scenario`` with two devices listening on loopback, closed afterwards."""

    async def main() -> None:
        a, b = Device(), Device()
        await a.tcp.listen(a.sock)
        await b.tcp.listen(b.sock)
        try:
            await scenario(a, b)
        finally:
            await a.tcp.close()
            await b.tcp.close()

    asyncio.run(main())


def test_the_first_frame_opens_the_connection_and_answers_come_back_on_it() -> None:
    async def scenario(a: Device, b: Device) -> None:
        a.tcp.send(b"check", b.address)
        a.tcp.send(b"held while connecting", b.address)
        data, source = await b.next()
        assert data == b"check"
        assert (await b.next())[0] == b"held while connecting"
        # The answer goes to the connection's address: the same connection, no new one.
        peer = tcp_peer(source)
        assert peer is not None
        b.tcp.send(b"answer", peer)
        assert await a.next() == (b"answer", tcp_address(b.address))
        assert a.tcp.counters["connections opened"] == 1
        assert b.tcp.counters["connections accepted"] == 1
        assert b.tcp.counters["connections opened"] == 0

    between_two(scenario)


def test_a_peer_that_cannot_be_reached_costs_its_frames_only() -> None:
    async def scenario(a: Device, b: Device) -> None:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        nowhere = closed.getsockname()
        closed.close()
        a.tcp.send(b"lost", nowhere)
        await a.tcp.connects_done()
        assert a.tcp.counters["connections failed"] == 1
        assert a.tcp.counters["frames dropped, no connection"] == 1
        assert a.tcp.connections == 0

    between_two(scenario)


def test_bad_framing_ends_the_connection_and_is_counted() -> None:
    async def scenario(a: Device, b: Device) -> None:
        reader, writer = await asyncio.open_connection(*b.address)
        writer.write(b"\x00\x00garbage")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed by b
        assert b.tcp.counters["bad framing"] == 1
        writer.close()

    between_two(scenario)


def test_connections_past_the_cap_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct, "MAX_CONNECTIONS", 1)

    async def scenario(a: Device, b: Device) -> None:
        first = await asyncio.open_connection(*b.address)
        first[1].write(frame(b"hello"))
        assert (await b.next())[0] == b"hello"
        second = await asyncio.open_connection(*b.address)
        assert await asyncio.wait_for(second[0].read(), 5.0) == b""
        assert b.tcp.counters["connections refused, at the cap"] == 1
        for _, writer in (first, second):
            writer.close()

    between_two(scenario)


def test_an_idle_connection_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct, "IDLE_TIMEOUT", 0.2)

    async def scenario(a: Device, b: Device) -> None:
        reader, writer = await asyncio.open_connection(*b.address)
        writer.write(frame(b"once"))
        await b.next()
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
        assert b.tcp.counters["closed idle"] == 1
        writer.close()

    between_two(scenario)

"""Interop on 127.0.0.1: aioice's STUN against our server and codec, our client against coturn.

aioice and coturn are implementations nobody here wrote: agreeing with them
byte for byte, and over real sockets, is what says we speak STUN and not a
dialect of our own. The cores run on uvloop through the house datagram adapter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import uvloop
from aioice import stun as aioice_stun

from edge.runtime.adapters import open_datagram
from edge.sansio import Address
from edge.stun.attributes import AttrType, ErrorValue
from edge.stun.client import BindingTransaction
from edge.stun.codec import (
    Class,
    Message,
    Method,
    build,
    check_fingerprint,
    check_integrity,
    parse,
)
from edge.stun.events import BindingFailed, BindingResult, Failure
from edge.stun.server import BindingServer, Outcome
from tests.coturn import running_coturn

T = TypeVar("T")
TIMEOUT = 10.0
LOCALHOST: Address = ("127.0.0.1", 0)
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")


def run_uv(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def query(server: Address, **kwargs: Any) -> tuple[BindingResult | BindingFailed, Address]:
    """Run one BindingTransaction over a fresh UDP socket: its event and the socket's address."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[BindingResult | BindingFailed] = loop.create_future()

    def on_event(event: object) -> None:
        if isinstance(event, BindingResult | BindingFailed) and not done.done():
            done.set_result(event)

    core = BindingTransaction(server, loop.time(), **kwargs)
    adapter = await open_datagram(core, LOCALHOST, on_event)
    try:
        return await asyncio.wait_for(done, TIMEOUT), adapter.local_address
    finally:
        adapter.close()
        await adapter.wait_closed()


# ------------------------------------------------------ aioice against our server


class AioiceClient(asyncio.DatagramProtocol):
    """The smallest aioice TransactionSender: sends its messages, feeds it responses."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.transaction: aioice_stun.Transaction | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.transaction is not None:
            self.transaction.response_received(aioice_stun.parse_message(data), (addr[0], addr[1]))

    def send_stun(self, message: aioice_stun.Message, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(message), addr)


async def aioice_binding(server: Address) -> tuple[aioice_stun.Message, Address, Address]:
    """aioice sends one Binding request to ``server``: its response, source, own address."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(AioiceClient, local_addr=LOCALHOST)
    try:
        request = aioice_stun.Message(
            message_method=aioice_stun.Method.BINDING,
            message_class=aioice_stun.Class.REQUEST,
        )
        request.add_fingerprint()
        client.transaction = aioice_stun.Transaction(request, server, client)
        response, source = await asyncio.wait_for(client.transaction.run(), TIMEOUT)
        host, port = transport.get_extra_info("sockname")[:2]
        return response, source, (host, port)
    finally:
        transport.close()


def test_aioice_binding_request_to_our_server_on_uvloop() -> None:
    async def main() -> None:
        server = BindingServer(software="edge interop")
        adapter = await open_datagram(server, LOCALHOST, lambda event: None)
        try:
            response, source, local = await aioice_binding(adapter.local_address)
        finally:
            adapter.close()
            await adapter.wait_closed()
        assert response.message_class == aioice_stun.Class.RESPONSE
        assert response.attributes["XOR-MAPPED-ADDRESS"] == local
        assert response.attributes["SOFTWARE"] == "edge interop"
        assert "FINGERPRINT" in response.attributes  # parse_message verified it
        assert source == adapter.local_address
        assert server.counts == {Outcome.SUCCESS: 1}
        assert not adapter.dropped

    run_uv(main())


def test_our_client_against_our_server_on_uvloop() -> None:
    async def main() -> None:
        server = BindingServer()
        adapter = await open_datagram(server, LOCALHOST, lambda event: None)
        try:
            event, local = await query(adapter.local_address)
        finally:
            adapter.close()
            await adapter.wait_closed()
        assert isinstance(event, BindingResult)
        assert event.mapped == local
        assert event.source == adapter.local_address

    run_uv(main())


# ------------------------------------------------------ byte level, both ways


def aioice_ice_check(key: bytes, **ice: Any) -> bytes:
    """An ICE connectivity check as aioice sends it (RFC 8445 §7.1.1), with integrity."""
    request = aioice_stun.Message(
        message_method=aioice_stun.Method.BINDING,
        message_class=aioice_stun.Class.REQUEST,
        transaction_id=TID,
        attributes={
            "USERNAME": "remote:local",
            "PRIORITY": 1853824767,
            **ice,
            "SOFTWARE": "aioice",
        },
    )
    request.add_message_integrity(key)
    request.add_fingerprint()
    return bytes(request)


def test_an_aioice_ice_check_parses_with_our_codec() -> None:
    key = b"pass"
    data = aioice_ice_check(key, **{"ICE-CONTROLLING": 0x0102030405060708})
    message = parse(data)
    assert (message.method, message.cls, message.transaction_id) == (
        Method.BINDING,
        Class.REQUEST,
        TID,
    )
    assert message.get(AttrType.USERNAME) == "remote:local"
    assert message.get(AttrType.SOFTWARE) == "aioice"
    assert message.get(AttrType.PRIORITY) == 1853824767
    assert message.get(AttrType.ICE_CONTROLLING) == 0x0102030405060708
    assert message.unknown_required == []
    check_integrity(data, key)
    check_fingerprint(data)
    assert build(message) == data


def test_an_aioice_nomination_parses_with_our_codec() -> None:
    data = aioice_ice_check(b"pass", **{"USE-CANDIDATE": None, "ICE-CONTROLLED": (1 << 64) - 1})
    message = parse(data)
    assert message.get(AttrType.USE_CANDIDATE) is None
    assert (AttrType.USE_CANDIDATE, None) in message.attributes
    assert message.get(AttrType.ICE_CONTROLLED) == (1 << 64) - 1
    assert message.unknown_required == []
    assert build(message) == data


def test_our_binding_server_answers_an_aioice_ice_check() -> None:
    data = aioice_ice_check(b"pass", **{"USE-CANDIDATE": None, "ICE-CONTROLLING": 7})
    server = BindingServer()
    answer = our_answer(server, data, ("192.0.2.1", 32853))
    response = aioice_stun.parse_message(answer)  # checks FINGERPRINT
    assert response.message_class == aioice_stun.Class.RESPONSE
    assert response.transaction_id == TID
    assert response.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.1", 32853)
    assert server.counts == {Outcome.SUCCESS: 1}


def test_an_aioice_response_parses_with_our_codec() -> None:
    response = aioice_stun.Message(
        message_method=aioice_stun.Method.BINDING,
        message_class=aioice_stun.Class.RESPONSE,
        transaction_id=TID,
        attributes={
            "XOR-MAPPED-ADDRESS": ("2001:db8::7", 40000),
            "MAPPED-ADDRESS": ("192.0.2.1", 32853),
            "RESPONSE-ORIGIN": ("192.0.2.10", 3478),
            "OTHER-ADDRESS": ("192.0.2.11", 3479),
        },
    )
    response.add_fingerprint()
    data = bytes(response)
    message = parse(data)
    assert message.cls is Class.SUCCESS
    assert message.get(AttrType.XOR_MAPPED_ADDRESS) == ("2001:db8::7", 40000)
    assert message.get(AttrType.MAPPED_ADDRESS) == ("192.0.2.1", 32853)
    assert message.get(AttrType.RESPONSE_ORIGIN) == ("192.0.2.10", 3478)
    assert message.get(AttrType.OTHER_ADDRESS) == ("192.0.2.11", 3479)
    check_fingerprint(data)
    assert build(message) == data


def test_an_aioice_error_response_parses_with_our_codec() -> None:
    response = aioice_stun.Message(
        message_method=aioice_stun.Method.ALLOCATE,
        message_class=aioice_stun.Class.ERROR,
        transaction_id=TID,
        attributes={"ERROR-CODE": (438, "Stale Nonce"), "NONCE": b"abcd", "REALM": "edge"},
    )
    data = bytes(response)
    message = parse(data)
    assert (message.method, message.cls) == (Method.ALLOCATE, Class.ERROR)
    assert message.get(AttrType.ERROR_CODE) == ErrorValue(438, "Stale Nonce")
    assert message.get(AttrType.NONCE) == "abcd"
    assert build(message) == data


def our_answer(server: BindingServer, request: bytes, source: Address) -> bytes:
    server.receive_datagram(request, source, 0.0)
    [(data, _)] = server.datagrams_to_send(0.0)
    return data


@pytest.mark.parametrize("source", [("192.0.2.1", 32853), ("2001:db8::7", 40000)])
def test_aioice_parses_our_success_response_byte_for_byte(source: Address) -> None:
    server = BindingServer(
        software="edge", other_address=("192.0.2.11", 3479), response_origin=("192.0.2.10", 3478)
    )
    data = our_answer(server, build(Message(Method.BINDING, Class.REQUEST, TID)), source)
    response = aioice_stun.parse_message(data)  # checks FINGERPRINT
    assert response.message_method == aioice_stun.Method.BINDING
    assert response.message_class == aioice_stun.Class.RESPONSE
    assert response.transaction_id == TID
    assert response.attributes["XOR-MAPPED-ADDRESS"] == source
    assert response.attributes["MAPPED-ADDRESS"] == source
    assert response.attributes["RESPONSE-ORIGIN"] == ("192.0.2.10", 3478)
    assert response.attributes["OTHER-ADDRESS"] == ("192.0.2.11", 3479)
    assert response.attributes["SOFTWARE"] == "edge"
    assert bytes(response) == data


def test_aioice_parses_our_error_response() -> None:
    request = build(Message(Method.BINDING, Class.REQUEST, TID, [(0x7F01, b"x")]))
    data = our_answer(BindingServer(), request, ("192.0.2.1", 32853))
    response = aioice_stun.parse_message(data)
    assert response.message_class == aioice_stun.Class.ERROR
    assert response.error_code == 420
    assert response.attributes["ERROR-CODE"] == (420, "Unknown Attribute")


def test_aioice_parses_our_request() -> None:
    transaction = BindingTransaction(("192.0.2.10", 3478), 0.0, transaction_id=TID)
    [(data, _)] = transaction.datagrams_to_send(0.0)
    request = aioice_stun.parse_message(data)  # checks FINGERPRINT
    assert request.message_method == aioice_stun.Method.BINDING
    assert request.message_class == aioice_stun.Class.REQUEST
    assert request.transaction_id == TID
    assert bytes(request) == data


# ------------------------------------------------------ our client against coturn


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[tuple[Address, Path]]:
    """coturn's turnserver on 127.0.0.1 and a free port, and its log; stopped afterwards."""
    with running_coturn(tmp_path) as server:
        yield server.address, server.log


POLL_TRIES = 5
"""Binding transactions tried while coturn starts; each retransmits for about 4 s."""


def test_our_client_against_coturn(coturn: tuple[Address, Path]) -> None:
    server, log = coturn

    async def main() -> None:
        # The transaction's own retransmissions wait for the server to come up.
        for _ in range(POLL_TRIES):
            event, local = await query(server, rto=0.05, software="edge test")
            if not (isinstance(event, BindingFailed) and event.code == Failure.TIMEOUT):
                break
        assert isinstance(event, BindingResult), (event, log.read_text(errors="replace"))
        assert event.mapped == local
        assert event.source == server
        assert event.response_origin in (None, server)  # coturn sends RESPONSE-ORIGIN

    run_uv(main())

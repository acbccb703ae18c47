"""Real supernodes on loopback, driven by devices over Noise sessions: presence published
at one supernode and found through another, forgeries refused, signalling carried between
supernodes, devices handed over at shutdown, dial-back tests attested."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from edge.crypto.cert import TrustStore, issue
from edge.crypto.keys import DeviceKeys, IssuerKey
from edge.crypto.revocation import sign_revocations
from edge.overlay.presence import PresenceCandidate, make_presence
from edge.runtime.adapters import DatagramAdapter, StreamAdapter, open_datagram, open_stream_client
from edge.session.datagram import DatagramEndpoint
from edge.session.events import MessageReceived, SessionEstablished
from edge.session.handshake import Identity
from edge.session.stream import StreamSession
from edge.supernode.config import OverlayConfig, RelayConfig, SupernodeConfig
from edge.supernode.dialback import verify_attestation
from edge.supernode.service import Supernode, supernode_keys
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import CandidateKind, Transport, decode, parse_signed_revocation_list

T = TypeVar("T")
TIMEOUT = 10.0


def run_uv(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def certify(issuer: IssuerKey, keys: DeviceKeys, user: str, serial: int) -> bytes:
    now = int(time.time())
    return issue(
        issuer, serial=serial, user_id=user, device_id="d1", sign_key=keys.sign_public,
        dh_key=keys.dh_public, not_before=now - 60, not_after=now + 86400,
    )  # fmt: skip


async def supernode(
    stack: AsyncExitStack, tmp: Path, issuer: IssuerKey, index: int, bootstrap: tuple[Any, ...]
) -> Supernode:
    state = tmp / f"supernode-{index}"
    keys = supernode_keys(state)
    certificate = state / "supernode.cert"
    certificate.write_bytes(certify(issuer, keys, f"supernode-{index}", 100 + index))
    config = SupernodeConfig(
        host="127.0.0.1",
        tcp_ports=(),
        state_dir=state,
        control_socket=tmp / f"supernode-{index}.sock",
        shutdown_grace=0.0,
        relay=RelayConfig(),
        overlay=OverlayConfig(
            certificate=certificate, issuer_key=issuer.public, address="127.0.0.1",
            bootstrap=bootstrap,
        ),
    )  # fmt: skip
    node = Supernode(config)
    await node.start()
    stack.push_async_callback(node.stop)
    await asyncio.wait_for(node.joined.wait(), TIMEOUT)
    return node


class Listener(asyncio.DatagramProtocol):
    def __init__(self, arrivals: asyncio.Queue[tuple[bytes, Any]]) -> None:
        self.arrivals = arrivals

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.arrivals.put_nowait((data, addr))


@dataclass
class Device:
    """A device's session to its supernode, with what it receives."""

    keys: DeviceKeys
    certificate: bytes
    endpoint: DatagramEndpoint
    adapter: DatagramAdapter
    events: asyncio.Queue[object]
    index: int = 0

    async def attach(self, node: Supernode) -> None:
        assert node.bound is not None
        loop = asyncio.get_running_loop()
        self.index = self.endpoint.connect(node.bound.udp, loop.time())
        self.adapter.poke()
        event = await self.next(SessionEstablished)
        assert event.index == self.index

    async def next(self, kind: type[T]) -> T:
        while True:
            event = await asyncio.wait_for(self.events.get(), TIMEOUT)
            if isinstance(event, kind):
                return event

    def send(self, msg_type: MsgType, body: dict[str, Any]) -> None:
        self.endpoint.send(self.index, msg_type, body)
        self.adapter.poke()

    async def receive(self, msg_type: MsgType) -> Any:
        while True:
            event = await self.next(MessageReceived)
            if event.message.type is msg_type:
                return event.message.body

    async def ask(self, msg_type: MsgType, body: dict[str, Any]) -> Any:
        self.send(msg_type, body)
        return await self.receive(MsgType.PRESENCE_RESULT)

    async def publish(self, node: Supernode) -> None:
        await self.attach(node)
        answer = await self.ask(
            MsgType.PRESENCE_PUBLISH, {"request_id": 1, "record": record_of(self, node)}
        )
        assert answer.code is ErrorCode.OK


@asynccontextmanager
async def device(issuer: IssuerKey, user: str, serial: int) -> AsyncIterator[Device]:
    keys = DeviceKeys.generate()
    certificate = certify(issuer, keys, user, serial)
    loop = asyncio.get_running_loop()
    endpoint = DatagramEndpoint(
        Identity(keys, certificate), TrustStore([issuer.public]),
        wall_offset=time.time() - loop.time(),
    )  # fmt: skip
    events: asyncio.Queue[object] = asyncio.Queue()
    adapter = await open_datagram(endpoint, ("127.0.0.1", 0), events.put_nowait)
    try:
        yield Device(keys, certificate, endpoint, adapter, events)
    finally:
        adapter.close()
        await adapter.wait_closed()


def record_of(dev: Device | TcpDevice, node: Supernode, seq: int = 1) -> bytes:
    assert node.bound is not None and node.clients is not None
    transport = Transport.UDP if isinstance(dev, Device) else Transport.TCP
    candidate = PresenceCandidate(
        CandidateKind.HOST, transport, dev.adapter.local_address, 2130706431
    )
    return make_presence(
        dev.keys, dev.certificate, supernode=node.bound.udp,
        supernode_key=node.clients.overlay.endpoint.identity.keys.dh_public,
        candidates=[candidate], seq=seq, now=time.time(),
    )  # fmt: skip


def test_a_device_is_found_through_another_supernode(tmp_path: Path) -> None:
    issuer = IssuerKey.generate()

    async def main() -> None:
        async with AsyncExitStack() as stack:
            first = await supernode(stack, tmp_path, issuer, 1, ())
            assert first.bound is not None
            others = [
                await supernode(stack, tmp_path, issuer, i, (first.bound.udp,)) for i in (2, 3)
            ]
            alice = await stack.enter_async_context(device(issuer, "alice", 1))
            bob = await stack.enter_async_context(device(issuer, "bob", 2))
            await alice.attach(others[0])
            record = record_of(alice, others[0])
            answer = await alice.ask(MsgType.PRESENCE_PUBLISH, {"request_id": 7, "record": record})
            assert (answer.request_id, answer.code) == (7, ErrorCode.OK)
            assert answer.stored == 3
            await bob.attach(others[1])
            found = await bob.ask(MsgType.PRESENCE_LOOKUP, {"request_id": 8, "user_id": "alice"})
            assert (found.request_id, found.code) == (8, ErrorCode.OK)
            assert [bytes(r) for r in found.records] == [record]
            missing = await bob.ask(MsgType.PRESENCE_LOOKUP, {"request_id": 9, "user_id": "carol"})
            assert (missing.code, list(missing.records)) == (ErrorCode.NOT_FOUND, [])

    run_uv(main())


def test_a_device_cannot_publish_for_another_user_nor_replay(tmp_path: Path) -> None:
    issuer = IssuerKey.generate()

    async def main() -> None:
        async with AsyncExitStack() as stack:
            node = await supernode(stack, tmp_path, issuer, 1, ())
            alice = await stack.enter_async_context(device(issuer, "alice", 1))
            mallory = await stack.enter_async_context(device(issuer, "mallory", 2))
            await alice.attach(node)
            await mallory.attach(node)
            newer, older = record_of(alice, node, seq=5), record_of(alice, node, seq=4)
            stolen = await mallory.ask(MsgType.PRESENCE_PUBLISH, {"request_id": 1, "record": newer})
            assert (stolen.code, stolen.stored) == (ErrorCode.FORBIDDEN, 0)
            ok = await alice.ask(MsgType.PRESENCE_PUBLISH, {"request_id": 2, "record": newer})
            assert (ok.code, ok.stored) == (ErrorCode.OK, 1)
            replay = await alice.ask(MsgType.PRESENCE_PUBLISH, {"request_id": 3, "record": older})
            assert (replay.code, replay.stored) == (ErrorCode.REPLAYED, 0)
            forged = bytearray(newer)
            forged[-1] ^= 1
            bad = await alice.ask(
                MsgType.PRESENCE_PUBLISH, {"request_id": 4, "record": bytes(forged)}
            )
            assert bad.code is ErrorCode.CERT_BAD_SIGNATURE or bad.code is not ErrorCode.OK
            assert node.clients is not None
            counts = node.clients.counts
            assert counts["publish"] == 4 and counts["published"] == 2
            assert counts["refused-wrong-user"] == counts["refused-bad-signature"] == 1

    run_uv(main())


def test_signalling_reaches_a_device_at_another_supernode_stamped_with_its_sender(
    tmp_path: Path,
) -> None:
    issuer = IssuerKey.generate()

    async def main() -> None:
        async with AsyncExitStack() as stack:
            first = await supernode(stack, tmp_path, issuer, 1, ())
            assert first.bound is not None
            second = await supernode(stack, tmp_path, issuer, 2, (first.bound.udp,))
            alice = await stack.enter_async_context(device(issuer, "alice", 1))
            bob = await stack.enter_async_context(device(issuer, "bob", 2))
            carol = await stack.enter_async_context(device(issuer, "carol", 3))
            await alice.publish(first)
            await bob.publish(second)
            await carol.attach(second)
            # Across two supernodes: bob at the second, alice at the first.
            bob.send(
                MsgType.SIGNAL_FORWARD, {"to_user": "alice", "to_device": "", "payload": b"hi"}
            )
            got = await alice.receive(MsgType.SIGNAL_RELAYED)
            assert (got.from_user, got.from_device, bytes(got.payload)) == ("bob", "d1", b"hi")
            assert tuple(got.from_address) == bob.adapter.local_address
            # And back, to a named device.
            alice.send(
                MsgType.SIGNAL_FORWARD, {"to_user": "bob", "to_device": "d1", "payload": b"yo"}
            )
            back = await bob.receive(MsgType.SIGNAL_RELAYED)
            assert (back.from_user, bytes(back.payload)) == ("alice", b"yo")
            assert tuple(back.from_address) == alice.adapter.local_address
            # Within one supernode: carol (attached, not published) to bob.
            carol.send(MsgType.SIGNAL_FORWARD, {"to_user": "bob", "to_device": "", "payload": b"x"})
            local = await bob.receive(MsgType.SIGNAL_RELAYED)
            assert local.from_user == "carol"
            assert second.clients is not None and first.clients is not None
            assert second.clients.counts["delivered"] == 2  # carol's, and alice's arriving here
            assert first.clients.counts["delivered"] == 1
            assert second.clients.counts["forwarded"] == 1

    run_uv(main())


def test_signalling_for_someone_offline_goes_nowhere_and_is_counted(tmp_path: Path) -> None:
    issuer = IssuerKey.generate()

    async def main() -> None:
        async with AsyncExitStack() as stack:
            node = await supernode(stack, tmp_path, issuer, 1, ())
            bob = await stack.enter_async_context(device(issuer, "bob", 2))
            await bob.publish(node)
            bob.send(
                MsgType.SIGNAL_FORWARD, {"to_user": "nobody", "to_device": "", "payload": b"?"}
            )
            # A lookup that follows the forward in the same session is answered after it.
            missing = await bob.ask(MsgType.PRESENCE_LOOKUP, {"request_id": 5, "user_id": "x"})
            assert missing.code is ErrorCode.NOT_FOUND
            assert node.clients is not None
            assert node.clients.counts["forward-not-found"] == 1

    run_uv(main())


def test_stopping_hands_attached_devices_to_the_other_supernodes(tmp_path: Path) -> None:
    issuer = IssuerKey.generate()

    async def main() -> None:
        async with AsyncExitStack() as stack:
            first = await supernode(stack, tmp_path, issuer, 1, ())
            assert first.bound is not None
            second = await supernode(stack, tmp_path, issuer, 2, (first.bound.udp,))
            assert second.bound is not None
            alice = await stack.enter_async_context(device(issuer, "alice", 1))
            await alice.attach(first)
            alice.send(MsgType.ATTACH, {"request_id": 1, "redirects": 0})
            attached = await alice.receive(MsgType.ATTACH_RESULT)
            assert attached.code is ErrorCode.OK
            # The second supernode joined through the first: the first has heard from it.
            await first.stop()
            detach = await alice.receive(MsgType.DETACH)
            assert detach.code is ErrorCode.UNAVAILABLE
            assert [tuple(e.address) for e in detach.alternatives] == [second.bound.udp]

    run_uv(main())


def test_a_dial_back_reaches_an_open_port_and_is_attested(tmp_path: Path) -> None:
    issuer = IssuerKey.generate()

    async def main() -> None:
        async with AsyncExitStack() as stack:
            node = await supernode(stack, tmp_path, issuer, 1, ())
            alice = await stack.enter_async_context(device(issuer, "alice", 1))
            await alice.attach(node)
            # The device's "port P": a plain socket the session never used.
            arrivals: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
            port_p, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: Listener(arrivals), local_addr=("127.0.0.1", 0)
            )
            stack.callback(port_p.close)
            port = port_p.get_extra_info("sockname")[1]
            alice.send(MsgType.DIALBACK_REQUEST, {"request_id": 6, "port": port})
            datagram, source = await asyncio.wait_for(arrivals.get(), TIMEOUT)
            assert node.bound is not None and source != node.bound.udp
            probe = decode(datagram)
            assert probe.type is MsgType.DIALBACK_PROBE
            alice.send(MsgType.DIALBACK_CONFIRM, {"request_id": 6, "nonce": probe.body.nonce})
            result = await alice.receive(MsgType.DIALBACK_RESULT)
            assert (result.request_id, result.code, result.reachable) == (6, ErrorCode.OK, True)
            assert tuple(result.observed) == ("127.0.0.1", port)
            attestation = verify_attestation(
                bytes(result.attestation), TrustStore([issuer.public]), time.time(),
                user_id="alice", device_id="d1",
            )  # fmt: skip
            assert attestation.observed == ("127.0.0.1", port)

    run_uv(main())


def revocations(issuer: IssuerKey, version: int, serials: list[int]) -> dict[str, Any]:
    now = int(time.time())
    raw = sign_revocations(
        issuer, version=version, issued_at=now, next_update=now + 3600, serials=serials
    )
    return dict(parse_signed_revocation_list(raw))


def test_a_revocation_spreads_between_supernodes_and_drops_the_records_it_revokes(
    tmp_path: Path,
) -> None:
    issuer = IssuerKey.generate()

    async def main() -> None:
        async with AsyncExitStack() as stack:
            first = await supernode(stack, tmp_path, issuer, 1, ())
            assert first.bound is not None
            second = await supernode(stack, tmp_path, issuer, 2, (first.bound.udp,))
            alice = await stack.enter_async_context(device(issuer, "alice", 1))
            bob = await stack.enter_async_context(device(issuer, "bob", 2))
            await alice.publish(first)
            await bob.publish(second)
            assert first.clients is not None and second.clients is not None
            held = [len(n.clients.overlay.node.store) for n in (first, second) if n.clients]
            assert held == [2, 2]
            # Bob's device passes on the login server's list that revokes alice (serial 1).
            bob.send(MsgType.REVOCATION_LIST, revocations(issuer, 2, [1]))
            missing = await bob.ask(MsgType.PRESENCE_LOOKUP, {"request_id": 3, "user_id": "alice"})
            assert missing.code is ErrorCode.NOT_FOUND
            assert second.clients.counts["records-revoked"] == 1
            # The second supernode passed it to the first, which dropped alice too.
            found = await alice.ask(MsgType.PRESENCE_LOOKUP, {"request_id": 4, "user_id": "bob"})
            assert found.code is ErrorCode.OK
            assert first.clients.counts["revocations-applied"] == 1
            assert len(first.clients.overlay.node.store) == 1
            # A stale list is answered with the newer one.
            bob.send(MsgType.REVOCATION_LIST, revocations(issuer, 1, []))
            newer = await bob.receive(MsgType.REVOCATION_LIST)
            assert newer.revocations.version == 2

    run_uv(main())


@dataclass
class TcpDevice:
    """A device that only gets TCP out: its session to the supernode is a stream."""

    keys: DeviceKeys
    certificate: bytes
    session: StreamSession
    adapter: StreamAdapter
    events: asyncio.Queue[object]

    def send(self, msg_type: MsgType, body: dict[str, Any]) -> None:
        self.session.send(msg_type, body)
        self.adapter.poke()

    async def receive(self, msg_type: MsgType) -> Any:
        while True:
            event = await asyncio.wait_for(self.events.get(), TIMEOUT)
            if isinstance(event, MessageReceived) and event.message.type is msg_type:
                return event.message.body


async def tcp_device(issuer: IssuerKey, user: str, serial: int, address: Any) -> TcpDevice:
    keys = DeviceKeys.generate()
    loop = asyncio.get_running_loop()
    certificate = certify(issuer, keys, user, serial)
    session = StreamSession(
        Identity(keys, certificate), TrustStore([issuer.public]),
        initiator=True, wall_offset=time.time() - loop.time(),
    )  # fmt: skip
    events: asyncio.Queue[object] = asyncio.Queue()
    adapter = await open_stream_client(session, address[0], address[1], events.put_nowait)
    device = TcpDevice(keys, certificate, session, adapter, events)
    while not isinstance(await asyncio.wait_for(events.get(), TIMEOUT), SessionEstablished):
        pass
    return device


def test_a_device_on_tcp_only_attaches_and_gets_signalling_from_one_on_udp(
    tmp_path: Path,
) -> None:
    issuer = IssuerKey.generate()

    async def main() -> None:
        async with AsyncExitStack() as stack:
            first = await supernode(stack, tmp_path, issuer, 1, ())
            assert first.bound is not None
            second = await supernode(stack, tmp_path, issuer, 2, (first.bound.udp,))
            assert second.bound is not None
            carol = await tcp_device(issuer, "carol", 3, second.bound.tcp[0])
            stack.callback(carol.adapter.close)
            carol.send(MsgType.ATTACH, {"request_id": 1, "redirects": 0})
            assert (await carol.receive(MsgType.ATTACH_RESULT)).code is ErrorCode.OK
            record = record_of(carol, second)
            carol.send(MsgType.PRESENCE_PUBLISH, {"request_id": 5, "record": record})
            assert (await carol.receive(MsgType.PRESENCE_RESULT)).code is ErrorCode.OK
            alice = await stack.enter_async_context(device(issuer, "alice", 1))
            await alice.publish(first)
            # Carol (TCP, second supernode) finds alice (UDP, first) and signals her.
            carol.send(MsgType.PRESENCE_LOOKUP, {"request_id": 2, "user_id": "alice"})
            found = await carol.receive(MsgType.PRESENCE_RESULT)
            assert found.code is ErrorCode.OK and len(found.records) == 1
            alice.send(
                MsgType.SIGNAL_FORWARD, {"to_user": "carol", "to_device": "", "payload": b"tcp?"}
            )
            got = await carol.receive(MsgType.SIGNAL_RELAYED)
            assert (got.from_user, bytes(got.payload)) == ("alice", b"tcp?")
            assert second.relay.counters["edge-tcp-connections"] == 1

    run_uv(main())

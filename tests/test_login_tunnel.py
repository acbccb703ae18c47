"""Logging in through the supernode when only the supernode is reachable.

First the tunnel's stream core alone, two ends back to back over a lossy,
reordering pipe. Then on loopback with a real login server, a real supernode
configured with it, and real agents whose own login address is a closed port:
the agent renews through the supernode, gets its revocations and relay
credentials (it allocates at the relay they name), comes online and says how
it logged in; the supernode counts the tunnels; a flood of tunnels from one
device is refused and counted while everything else goes on; and a tunnel
whose login server goes away ends cleanly on both sides.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge.client.agent import Agent
from edge.client.config import AgentConfig
from edge.client.errors import ServerError, UplinkFailed
from edge.client.login import Credentials, login, login_through
from edge.crypto.cert import issue
from edge.crypto.keys import DeviceKeys
from edge.login.server import LoginServer
from edge.runtime.config import write_atomic
from edge.runtime.control import request
from edge.supernode.config import OverlayConfig, RelayConfig, SupernodeConfig
from edge.supernode.service import Supernode, supernode_keys
from edge.supernode.tunnel import (
    MAX_TRIES,
    ChunkStream,
    CloseLogin,
    LoginTunnels,
    OpenLogin,
    ReadLogin,
    TunnelLimits,
    TunnelMessage,
)
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import Message, decode, encode, parse_certificate
from tests.test_agent import PASSWORD, TIMEOUT, Network, network, run_uv

SECRET = b"shared by the login server and the supernode's relay"
OPEN, CLOSE = MsgType.LOGIN_TUNNEL_OPEN, MsgType.LOGIN_TUNNEL_CLOSE


# ---------------------------------------------------------------- the stream core alone


Chunk = tuple[int, int, bytes]


def _pipe(
    sender: ChunkStream,
    receiver: ChunkStream,
    now: float,
    keep: Callable[[list[Chunk]], list[Chunk]],
) -> tuple[bytes, list[Chunk]]:
    """What ``sender`` sends now, through a pipe that keeps what ``keep`` says, into
    ``receiver``; the bytes delivered in order, and what the pipe lost."""
    delivered = b""
    chunks = sender.chunks(now)
    kept = keep(chunks)
    for seq, ack, data in kept:
        delivered += receiver.receive(seq, ack, data, now)
    return delivered, [c for c in chunks if c not in kept]


def test_the_stream_arrives_whole_and_in_order_through_loss_and_reordering() -> None:
    rng = random.Random(7)
    data = bytes(rng.randrange(256) for _ in range(40_000))
    a = ChunkStream(window=8 * 1024, buffer=64 * 1024)
    b = ChunkStream(window=8 * 1024, buffer=64 * 1024)
    assert a.write(data)
    got, now, losses = b"", 0.0, 0

    def lossy(chunks: list[Chunk]) -> list[Chunk]:
        kept = [c for i, c in enumerate(chunks) if (i * 7 + int(now * 10)) % 5 != 0]
        return kept[::-1] if len(kept) > 2 and int(now * 10) % 3 == 0 else kept

    while len(got) < len(data) and now < 120:
        delivered, lost = _pipe(a, b, now, lossy)
        got += delivered
        losses += len(lost)
        _pipe(b, a, now, lambda chunks: chunks)  # acks come back
        now += 0.1
        a.handle_timer(now)
    assert got == data
    assert losses > 0, "the pipe lost chunks, which were sent again"
    assert a.waiting == 0 and not a.failed


def test_the_window_caps_bytes_in_flight_and_the_buffer_caps_what_waits() -> None:
    a = ChunkStream(window=4096, buffer=10_000)
    assert a.write(bytes(9000))
    assert not a.write(bytes(2000)), "past the buffer cap nothing is queued"
    first = a.chunks(0.0)
    assert sum(len(c[2]) for c in first) == 4096
    assert a.chunks(0.0) == [], "nothing more until an ack"
    a.receive(0, 2, b"", 0.1)  # the first two chunks arrived
    assert sum(len(c[2]) for c in a.chunks(0.1)) == 2048


def test_a_stream_nobody_acknowledges_fails() -> None:
    a = ChunkStream(window=4096, buffer=4096)
    a.write(b"hello")
    a.chunks(0.0)
    now = 0.0
    while not a.failed and now < 100:
        timer = a.get_timer()
        assert timer is not None
        now = timer
        a.handle_timer(now)
        repeated = a.chunks(now)
        assert a.failed or repeated == [(0, 0, b"hello")]
    assert a.failed and now < 30, f"given up after {MAX_TRIES} repeats, at {now:.1f} s"


def test_a_repeated_or_early_chunk_is_not_delivered_and_is_acked_again() -> None:
    b = ChunkStream(window=4096, buffer=4096)
    assert b.receive(1, 0, b"later", 0.0) == b""
    assert b.chunks(0.0) == [(0, 0, b"")], "acks what it expects: chunk 0"
    assert b.receive(0, 0, b"first", 0.0) == b"first"
    assert b.receive(0, 0, b"first", 0.0) == b""
    assert b.chunks(0.0) == [(0, 1, b"")]


# ---------------------------------------------------------------- on loopback


def tunnel_network(tmp: Path, relay_port: int) -> AbstractAsyncContextManager[Network]:
    """A login server that hands out credentials for the relay at ``relay_port``."""
    uris = (f"turn:127.0.0.1:{relay_port}?transport=udp",)
    return network(tmp, relay_secret=SECRET, relay_uris=uris)


async def tunnelling_supernode(
    net: Network, port: int, login_servers: tuple[tuple[str, int], ...]
) -> Supernode:
    """A supernode at ``port`` that relays and carries login tunnels to ``login_servers``."""
    state = net.tmp / f"tunnelling-{port}"
    keys = supernode_keys(state)
    now = int(time.time())
    certificate = state / "supernode.cert"
    certificate.write_bytes(
        issue(
            net.login.keys.issuer, serial=2000 + len(net.supernodes), user_id="supernode-t",
            device_id="sn", sign_key=keys.sign_public, dh_key=keys.dh_public,
            not_before=now - 60, not_after=now + 86400,
        )
    )  # fmt: skip
    overlay = OverlayConfig(
        certificate=certificate,
        issuer_key=net.login.keys.issuer.public,
        address="127.0.0.1",
        login_servers=login_servers,
    )
    node = Supernode(
        SupernodeConfig(
            host="127.0.0.1", port=port, tcp_ports=(), state_dir=state,
            control_socket=net.tmp / f"tunnelling-{port}.sock", shutdown_grace=0.0,
            relay=RelayConfig(secret=SECRET, address="127.0.0.1"), overlay=overlay,
        )
    )  # fmt: skip
    await node.start()
    net.stack.push_async_callback(node.stop)
    await asyncio.wait_for(node.joined.wait(), TIMEOUT)
    net.supernodes.append(node)
    return node


async def enrol(config: AgentConfig) -> bytes:
    """Enrol the device of ``config`` directly, as its first start would; its certificate."""
    keys = DeviceKeys.load_or_generate(config.state_dir / "device.key")
    who = Credentials(config.user_id, config.device_id, keys)
    session = await login(config.login_address, config.server_key, who, password=PASSWORD)
    session.close()
    write_atomic(config.state_dir / "device.cert", session.certificate, 0o600)
    return session.certificate


def free_port() -> int:
    """A port free on UDP and TCP right now (the supernode binds both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


def closed_port(stack: AsyncExitStack) -> tuple[str, int]:
    """An address that refuses TCP connections: bound, never listening, held to the end."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    stack.callback(sock.close)
    return ("127.0.0.1", int(sock.getsockname()[1]))


async def tunnel_counts(node: Supernode) -> dict[str, int]:
    assert node.config.control_socket is not None
    status = (await request(node.config.control_socket, "status"))["result"]
    counts: dict[str, int] = status["overlay"]["login_tunnels"]
    return counts


async def until_counts(node: Supernode, check: Any) -> dict[str, int]:
    """Poll the supernode's control socket until ``check(counts)`` holds (with a deadline)."""
    deadline = time.monotonic() + TIMEOUT
    while not check(counts := await tunnel_counts(node)):
        assert time.monotonic() < deadline, f"tunnel counters never got there: {counts}"
        await asyncio.sleep(0.05)
    return counts


def test_an_agent_that_cannot_reach_the_login_server_logs_in_through_its_supernode(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        port = free_port()
        async with tunnel_network(tmp_path, port) as net:
            node = await tunnelling_supernode(net, port, (net.login_address,))
            config = net.agent_config("alice", [("127.0.0.1", port)])
            enrolled = await enrol(config)

            cut_off = replace(config, login_address=closed_port(net.stack))
            agent = await net.agent(cut_off, password=None)
            status = (await request(cut_off.control_socket, "status"))["result"]
            assert status["login"]["via"] == f"supernode 127.0.0.1:{port}"
            assert status["online"] is True
            renewed = parse_certificate(agent.certificate).tbs
            assert renewed.serial != parse_certificate(enrolled).tbs.serial, "a fresh certificate"
            assert (cut_off.state_dir / "device.cert").read_bytes() == agent.certificate
            issuer = net.login.keys.issuer.key_id
            assert agent.revocations.known_version(issuer) >= 1, "the revocation list came"
            # The relay credentials came through the tunnel too: the agent allocates with them.
            await asyncio.wait_for(agent.wait_for(lambda: agent.relayed is not None), TIMEOUT)
            counts = await until_counts(node, lambda c: c.get("tunnel-closed-device", 0) >= 1)
            assert counts["tunnel-open"] == 1 and counts["tunnel-connected"] == 1
            assert counts["tunnel-bytes-up"] > 0 and counts["tunnel-bytes-down"] > 0
            assert counts["open"] == 0

            # A later session (the buddy list) takes the same way, over the agent's own link.
            listing = await request(cut_off.control_socket, "buddies")
            assert listing["result"] == {"buddies": []}
            counts = await until_counts(node, lambda c: c.get("tunnel-closed-device", 0) >= 2)
            assert counts["tunnel-open"] == 2 and counts["open"] == 0

    run_uv(main())


def test_enrolling_needs_the_login_server_itself(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        async with tunnel_network(tmp_path, port) as net:
            await tunnelling_supernode(net, port, (net.login_address,))
            config = net.agent_config("bob", [("127.0.0.1", port)])
            cut_off = replace(config, login_address=closed_port(net.stack))
            with pytest.raises(UplinkFailed, match="enrolling needs the login server once"):
                await Agent(cut_off, password=PASSWORD).start()

    run_uv(main())


def test_a_flood_of_tunnels_from_one_device_is_refused_and_counted(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        async with tunnel_network(tmp_path, port) as net:
            node = await tunnelling_supernode(net, port, (net.login_address,))
            config = net.agent_config("carol", [("127.0.0.1", port)])
            agent = await net.agent(config)
            link = agent.link
            assert link is not None
            flood = 50
            for tunnel_id in range(1, flood + 1):
                link.send(MsgType.LOGIN_TUNNEL_OPEN, {"tunnel_id": tunnel_id})
            held = TunnelLimits().per_device
            counts = await until_counts(
                node, lambda c: c.get("tunnel-refused-device", 0) == flood - held
            )
            assert counts["tunnel-open"] == held and counts["open"] == held
            # One more, the way the agent itself would open it: refused with BUSY.
            who = Credentials(config.user_id, config.device_id, agent.keys)
            with pytest.raises(ServerError, match="BUSY") as refused:
                await login_through(link, config.server_key, who)
            assert refused.value.code is ErrorCode.BUSY
            # Nothing else broke: the device is still served, and once the flood's
            # tunnels are closed, its own login through the supernode works.
            status = (await request(config.control_socket, "status"))["result"]
            assert status["online"] is True and status["login"]["via"] == "direct"
            for tunnel_id in range(1, held + 1):
                link.send(MsgType.LOGIN_TUNNEL_CLOSE, {"tunnel_id": tunnel_id, "code": 0})
            await until_counts(node, lambda c: c["open"] == 0)
            session = await login_through(link, config.server_key, who)
            session.close()
            assert parse_certificate(session.certificate).tbs.user_id == "carol"

    run_uv(main())


def test_a_tunnel_whose_login_server_goes_ends_cleanly(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        async with tunnel_network(tmp_path, port) as net:
            # A second login server with the same keys and database, to stop midway.
            second = LoginServer(
                replace(net.login.config, listen=(("127.0.0.1", 0),)),
                net.store,
                net.login.keys,
            )
            (address,) = await second.start()
            node = await tunnelling_supernode(net, port, (address,))
            config = net.agent_config("dave", [("127.0.0.1", port)])
            agent = await net.agent(config)
            assert agent.link is not None
            who = Credentials(config.user_id, config.device_id, agent.keys)
            session = await login_through(agent.link, config.server_key, who)
            assert (await tunnel_counts(node))["open"] == 1
            await second.stop(grace=0.0)
            with pytest.raises(ServerError) as ended:
                await session.request(
                    MsgType.REVOCATION_FETCH, {"known_version": 0}, MsgType.REVOCATION_LIST
                )
            assert ended.value.code is ErrorCode.UNAVAILABLE
            session.close()
            counts = await until_counts(node, lambda c: c["open"] == 0)
            assert counts["tunnel-closed-server"] == 1
            assert (await request(config.control_socket, "status"))["result"]["online"] is True

    run_uv(main())


# ---------------------------------------------------------------- the supernode's core alone

SERVER = ("198.18.0.10", 443)


def _message(msg_type: MsgType, **body: Any) -> Message:
    return decode(encode(msg_type, body))


def _drain(tunnels: LoginTunnels) -> list[object]:
    actions = []
    while (action := tunnels.next_action()) is not None:
        actions.append(action)
    return actions


def test_the_supernode_core_caps_tunnels_in_total_and_ends_idle_ones() -> None:
    tunnels = LoginTunnels((SERVER,), TunnelLimits(per_device=2, total=3, idle=60.0))
    for index in range(4):
        tunnels.receive(index, (f"u{index}", "d"), _message(OPEN, tunnel_id=1), 0.0)
    actions = _drain(tunnels)
    assert [a for a in actions if isinstance(a, OpenLogin)] == [
        OpenLogin((i, 1), SERVER) for i in range(3)
    ]
    refused = [a for a in actions if isinstance(a, TunnelMessage)]
    assert refused == [TunnelMessage(3, CLOSE, {"tunnel_id": 1, "code": ErrorCode.BUSY})]
    assert tunnels.counts["tunnel-refused-full"] == 1
    assert tunnels.connected((0, 1), 1.0)
    assert tunnels.get_timer() == 60.0, "the ones never connected idle out first"
    tunnels.handle_timer(60.0)
    assert len(tunnels) == 1 and tunnels.counts["tunnel-closed-idle"] == 2
    assert CloseLogin((1, 1)) in _drain(tunnels)


def test_the_supernode_core_stops_reading_a_login_server_the_device_does_not_ack() -> None:
    limits = TunnelLimits(window=2048, pause_at=8192, buffer=16384)
    tunnels = LoginTunnels((SERVER,), limits)
    tunnels.receive(5, ("u", "d"), _message(OPEN, tunnel_id=9), 0.0)
    tunnels.connected((5, 9), 0.0)
    _drain(tunnels)
    tunnels.from_login((5, 9), bytes(9000), 0.1)
    actions = _drain(tunnels)
    assert ReadLogin((5, 9), False) in actions
    sent = [a.body["data"] for a in actions if isinstance(a, TunnelMessage)]
    assert sum(map(len, sent)) == 2048, "a window's worth, no more"
    tunnels.from_login((5, 9), bytes(8000), 0.2)  # past the buffer cap: the tunnel ends
    assert CloseLogin((5, 9)) in _drain(tunnels)
    assert tunnels.counts["tunnel-closed-overflow"] == 1 and len(tunnels) == 0


def test_the_supernode_core_answers_data_for_no_tunnel_and_needs_a_login_server() -> None:
    tunnels = LoginTunnels(())
    tunnels.receive(1, ("u", "d"), _message(OPEN, tunnel_id=2), 0.0)
    data = _message(MsgType.LOGIN_TUNNEL_DATA, tunnel_id=3, seq=0, ack=0, data=b"x")
    tunnels.receive(1, ("u", "d"), data, 0.0)
    assert _drain(tunnels) == [
        TunnelMessage(1, CLOSE, {"tunnel_id": 2, "code": ErrorCode.UNAVAILABLE}),
        TunnelMessage(1, CLOSE, {"tunnel_id": 3, "code": ErrorCode.NOT_FOUND}),
    ]
    assert tunnels.counts == {"tunnel-refused-no-server": 1, "tunnel-unknown": 1}


def test_the_supernode_core_limits_how_often_one_device_opens_tunnels() -> None:
    tunnels = LoginTunnels((SERVER,), TunnelLimits(opens_per_minute=3))
    for tunnel_id in range(1, 4):  # open and close, again and again
        tunnels.receive(1, ("u", "d"), _message(OPEN, tunnel_id=tunnel_id), float(tunnel_id))
        tunnels.receive(1, ("u", "d"), _message(CLOSE, tunnel_id=tunnel_id, code=0), 5.0)
    _drain(tunnels)
    tunnels.receive(1, ("u", "d"), _message(OPEN, tunnel_id=9), 10.0)
    tunnels.receive(2, ("v", "d"), _message(OPEN, tunnel_id=9), 10.0)
    assert _drain(tunnels) == [
        TunnelMessage(1, CLOSE, {"tunnel_id": 9, "code": ErrorCode.RATE_LIMITED}),
        OpenLogin((2, 9), SERVER),
    ], "another device is not held back"
    tunnels.receive(1, ("u", "d"), _message(OPEN, tunnel_id=9), 61.5)
    assert _drain(tunnels) == [OpenLogin((1, 9), SERVER)], "a minute after the first"
    assert tunnels.counts["tunnel-refused-rate"] == 1

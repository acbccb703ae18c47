"""The supernode on loopback: aioice's TURN client relays through it over UDP and TCP,
``edge ctl`` reads its counters, systemd hears it start and stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import uvloop
from aioice import turn as aioice_turn

from edge.crypto.cert import issue
from edge.crypto.keys import DeviceKeys, IssuerKey
from edge.login.relay import relay_credentials
from edge.runtime.config import loads
from edge.runtime.control import ControlUnreachable, request
from edge.runtime.errors import ConfigFileError
from edge.stun import codec as stun_codec
from edge.stun.attributes import AttrType
from edge.stun.codec import Class, Message, Method, build
from edge.stun.framing import StreamDeframer
from edge.supernode.config import OverlayConfig, RelayConfig, SupernodeConfig, from_doc
from edge.supernode.errors import SupernodeIdentityError
from edge.supernode.service import Supernode
from tests.daemon import notifying_daemon
from tests.test_supernode_discovery import self_test

T = TypeVar("T")
SECRET = b"shared with the login server"
TIMEOUT = 10.0


def run_uv(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return cast(int, sock.getsockname()[1])


def config_for(tmp_path: Path, **relay: Any) -> SupernodeConfig:
    return SupernodeConfig(
        host="127.0.0.1",
        tcp_ports=(free_tcp_port(),),
        state_dir=tmp_path / "state",
        control_socket=tmp_path / "supernode.sock",
        shutdown_grace=0.0,
        relay=RelayConfig(secret=SECRET, address="127.0.0.1", ports=range(42000, 43000), **relay),
    )


@asynccontextmanager
async def running(config: SupernodeConfig) -> AsyncIterator[Supernode]:
    node = Supernode(config)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


class Peer(asyncio.DatagramProtocol):
    """A plain UDP socket on loopback: the far end of a relayed conversation."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.put_nowait((data, (addr[0], addr[1])))


class Inbox(Peer):
    """The TURN client's side: what arrives through the allocation."""


async def relayed_round_trip(server: tuple[str, int], transport: str) -> tuple[str, int]:
    """aioice allocates on ``server``, talks to a UDP peer both ways; the relayed address."""
    loop = asyncio.get_running_loop()
    credentials = relay_credentials(SECRET, "alice", int(time.time()), 600)
    peer_transport, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    turn, inbox = await aioice_turn.create_turn_endpoint(
        Inbox, server, credentials.username, credentials.password, transport=transport
    )
    try:
        relayed = cast(tuple[str, int], turn.get_extra_info("sockname"))
        peer_address = peer_transport.get_extra_info("sockname")[:2]
        turn.sendto(b"hello through the relay", peer_address)
        data, source = await asyncio.wait_for(peer.received.get(), TIMEOUT)
        assert (data, source) == (b"hello through the relay", relayed)
        peer_transport.sendto(b"and back", relayed)
        data, source = await asyncio.wait_for(inbox.received.get(), TIMEOUT)
        assert (data, source) == (b"and back", peer_address)
        return relayed
    finally:
        turn.close()
        peer_transport.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_aioice_turn_client_relays_through_the_supernode(tmp_path: Path, transport: str) -> None:
    config = config_for(tmp_path)

    async def main() -> None:
        async with running(config) as node:
            assert node.bound is not None
            server = node.bound.udp if transport == "udp" else node.bound.tcp[0]
            relayed = await relayed_round_trip(server, transport)
            assert relayed[0] == "127.0.0.1" and relayed[1] in config.relay.ports
            counters = await request(config.control_socket, "counters")
            assert counters["ok"], counters
            result = counters["result"]
            assert result["requests"]["allocate 200"] == 1
            assert result["relayed"]["packets-to-peer"] == 1
            assert result["relayed"]["packets-to-client"] == 1

    run_uv(main())


def test_turn_over_the_extra_tcp_port_and_the_main_one(tmp_path: Path) -> None:
    config = config_for(tmp_path)

    async def main() -> None:
        async with running(config) as node:
            assert node.bound is not None
            main_tcp, extra = node.bound.tcp
            assert main_tcp[1] == node.bound.udp[1] == node.bound.port
            assert extra[1] == config.tcp_ports[0]
            await relayed_round_trip(main_tcp, "tcp")

    run_uv(main())


def test_a_closed_tcp_connection_frees_its_allocation(tmp_path: Path) -> None:
    config = config_for(tmp_path)

    async def main() -> None:
        async with running(config) as node:
            assert node.bound is not None
            await relayed_round_trip(node.bound.tcp[0], "tcp")
            # aioice's close deletes the allocation itself; a client that just vanishes:
            credentials = relay_credentials(SECRET, "bob", int(time.time()), 600)
            turn, _ = await aioice_turn.create_turn_endpoint(
                Inbox, node.bound.tcp[0], credentials.username, credentials.password,
                transport="tcp",
            )  # fmt: skip
            assert node.core.allocation_count == 1
            inner = turn._TurnTransport__inner_protocol  # type: ignore[attr-defined]
            inner.transport.abort()
            assert await node.relay.wait_idle(TIMEOUT)
            assert node.core.allocation_count == 0

    run_uv(main())


def test_wrong_credentials_get_no_allocation(tmp_path: Path) -> None:
    config = config_for(tmp_path)

    async def main() -> None:
        async with running(config) as node:
            assert node.bound is not None
            credentials = relay_credentials(b"another secret", "mallory", int(time.time()), 600)
            with pytest.raises(Exception, match="401"):
                await aioice_turn.create_turn_endpoint(
                    Inbox, node.bound.udp, credentials.username, credentials.password
                )
            assert node.core.allocation_count == 0
            counters = (await request(config.control_socket, "counters"))["result"]
            assert counters["requests"]["allocate 401"] >= 2

    run_uv(main())


def test_status_names_ports_and_relay(tmp_path: Path) -> None:
    config = config_for(tmp_path)

    async def main() -> None:
        async with running(config) as node:
            assert node.bound is not None
            answer = await request(config.control_socket, "status")
            status = answer["result"]
            assert status["role"] == "supernode"
            assert status["port"] == node.bound.port
            assert status["port_note"].startswith("first start: drew port")
            assert status["relay"] == {"enabled": True, "address": "127.0.0.1", "realm": "edge"}
            unknown = await request(config.control_socket, "reboot")
            assert unknown["ok"] is False
            assert unknown["error"]["code"] == "NOT_FOUND"
        with pytest.raises(ControlUnreachable):
            await request(config.control_socket, "status")

    run_uv(main())


def test_the_port_is_kept_across_restarts(tmp_path: Path) -> None:
    config = config_for(tmp_path)

    async def main() -> tuple[int, int, str]:
        async with running(config) as first:
            assert first.bound is not None
        async with running(config) as second:
            assert second.bound is not None
            return first.bound.port, second.bound.port, second.bound.port_note

    first, second, note = run_uv(main())
    assert first == second
    assert note == "kept from the last start"


def test_a_taken_extra_port_stops_the_start_with_its_name(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config.tcp_ports[0]))
        holder.listen()

        async def main() -> None:
            node = Supernode(config)
            with pytest.raises(Exception, match=f"TCP 127.0.0.1:{config.tcp_ports[0]}"):
                await node.start()

        run_uv(main())


# ------------------------------------------------------------ configuration


def parse(text: str) -> SupernodeConfig:
    return from_doc(loads(text, "supernode.toml"))


def test_defaults_serve_stun_on_a_drawn_port_and_80_443() -> None:
    config = parse("")
    assert (config.port, config.tcp_ports) == (0, (80, 443))
    assert not config.relay.enabled


def test_relaying_needs_a_concrete_address() -> None:
    with pytest.raises(ConfigFileError, match=r"relay\.address") as caught:
        parse('[relay]\nsecret = "s"\n')
    assert caught.value.path == "supernode.toml"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[supernode]\ntcp_ports = [443, 443]\n", "supernode.tcp_ports"),
        ("[supernode]\nport = 443\ntcp_ports = [443]\n", "supernode.tcp_ports"),
        ("[supernode]\nport = 70000\n", "supernode.port"),
        ('[relay]\naddress = "relay.example"\n', "relay.address"),
        ("[relay]\nports = [50000, 40000]\n", "relay.ports"),
        ("[relay]\nports = [80, 90]\n", "relay.ports[0]"),
        ("[relay]\nbandwith_bytes_per_second = 1\n", "relay.bandwith_bytes_per_second"),
    ],
)
def test_bad_values_name_their_key_and_line(text: str, key: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse(text)
    assert caught.value.key == key
    assert caught.value.line is not None


# ------------------------------------------------------------ as systemd runs it


def test_edge_supernode_notifies_serves_ctl_and_stops_on_sigterm(tmp_path: Path) -> None:
    control = tmp_path / "supernode.sock"
    config = tmp_path / "supernode.toml"
    config.write_text(
        f'[supernode]\nhost = "127.0.0.1"\ntcp_ports = [{free_tcp_port()}]\n'
        f'state_dir = "{tmp_path / "state"}"\ncontrol_socket = "{control}"\n'
    )
    with notifying_daemon(tmp_path, "supernode", "--config", str(config)) as (process, listener):
        assert listener.recv(4096).decode() == "READY=1"
        assert "relay off" in listener.recv(4096).decode()
        ctl = edge_ctl("--socket", str(control), "status")
        assert ctl.returncode == 0, ctl.stderr
        assert json.loads(ctl.stdout)["role"] == "supernode"
        process.send_signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert process.wait(timeout=30) == 0
    assert not control.exists()


def edge_ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "ctl", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_edge_ctl_without_a_daemon_exits_3_with_error_json(tmp_path: Path) -> None:
    ctl = edge_ctl("--socket", str(tmp_path / "none.sock"), "status")
    assert ctl.returncode == 3
    assert json.loads(ctl.stdout)["error"]["code"] == "UNAVAILABLE"


def test_edge_ctl_with_wrong_arguments_exits_2(tmp_path: Path) -> None:
    ctl = edge_ctl("--socket", str(tmp_path / "x"), "status", "extra")
    assert ctl.returncode == 2
    assert "status takes no arguments" in ctl.stderr


def test_tcp_clients_that_send_garbage_or_nothing_useful_are_closed(tmp_path: Path) -> None:
    config = config_for(tmp_path)

    async def closed_after(address: tuple[str, int], payload: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(*address)
        writer.write(payload)
        try:
            return await asyncio.wait_for(reader.read(), TIMEOUT)
        finally:
            writer.close()

    async def main() -> None:
        node = Supernode(config)
        node.relay.idle_timeout = 0.2
        await node.start()
        try:
            assert node.bound is not None
            tcp = node.bound.tcp[1]
            # TLS's first byte is neither STUN nor ChannelData: closed at once.
            assert await closed_after(tcp, b"\x16\x03\x01\x00\xa5") == b""
            # "GE" reads as a ChannelData header announcing 21,536 bytes: closed when idle.
            assert await closed_after(tcp, b"GET / HTTP/1.1\r\n\r\n") == b""
            counters = (await request(config.control_socket, "counters"))["result"]["sockets"]
            assert counters["tcp-framing"] == 1
            assert counters["tcp-idle"] == 1
            assert node.relay.tcp_clients == 0
        finally:
            await node.stop()

    run_uv(main())


def test_tcp_clients_beyond_the_cap_are_refused(tmp_path: Path) -> None:
    config = replace(config_for(tmp_path), max_tcp_connections=1)

    async def main() -> None:
        async with running(config) as node:
            assert node.bound is not None
            first = await asyncio.open_connection(*node.bound.tcp[0])
            reader, writer = await asyncio.open_connection(*node.bound.tcp[0])
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
            writer.close()
            assert node.relay.counters["tcp-refused"] == 1
            assert node.relay.tcp_clients == 1
            first[1].close()

    run_uv(main())


def test_the_overlay_needs_its_issuer_and_a_public_address() -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse('[overlay]\ncertificate = "sn.cert"\n')
    assert caught.value.key == "overlay.issuer_key"
    with pytest.raises(ConfigFileError) as caught:
        parse(f'[overlay]\ncertificate = "sn.cert"\nissuer_key = "{"ab" * 32}"\n')
    assert caught.value.key == "overlay.address"
    config = parse(
        f'[overlay]\ncertificate = "sn.cert"\nissuer_key = "{"ab" * 32}"\n'
        'address = "198.18.0.1"\nbootstrap = ["198.18.0.2:4000"]\n'
    )
    assert config.overlay.enabled and config.public_host == "198.18.0.1"
    assert config.overlay.bootstrap == (("198.18.0.2", 4000),)


def test_a_missing_certificate_stops_the_start_with_its_path(tmp_path: Path) -> None:
    overlay = OverlayConfig(
        certificate=tmp_path / "absent.cert", issuer_key=bytes(32), address="127.0.0.1"
    )
    config = replace(config_for(tmp_path), overlay=overlay)

    async def main() -> None:
        node = Supernode(config)
        with pytest.raises(SupernodeIdentityError, match=r"absent\.cert"):
            await node.start()
        assert node.bound is None

    run_uv(main())


def test_a_certificate_of_another_key_stops_the_start(tmp_path: Path) -> None:
    issuer = IssuerKey.generate()
    other = DeviceKeys.generate()
    path = tmp_path / "other.cert"
    path.write_bytes(
        issue(
            issuer, serial=1, user_id="supernode", device_id="sn", sign_key=other.sign_public,
            dh_key=other.dh_public, not_before=0, not_after=2**32 - 1,
        )
    )  # fmt: skip
    overlay = OverlayConfig(certificate=path, issuer_key=issuer.public, address="127.0.0.1")
    config = replace(config_for(tmp_path), overlay=overlay)

    async def main() -> None:
        with pytest.raises(SupernodeIdentityError, match="certifies another key"):
            await Supernode(config).start()

    run_uv(main())


def test_with_a_second_address_the_supernode_serves_nat_behaviour_discovery(
    tmp_path: Path,
) -> None:
    config = replace(config_for(tmp_path), alternate_host="127.0.0.2")

    async def main() -> None:
        async with running(config) as node:
            assert node.bound is not None and node.discovery is not None
            report = await self_test(node.bound.udp)
            assert report.classification == "open"
            assert report.other_address == node.discovery.addresses.alternate
            status = (await request(config.control_socket, "status"))["result"]
            assert status["nat_discovery"].startswith("127.0.0.2:")
            counters = (await request(config.control_socket, "counters"))["result"]
            assert counters["discovery"]

    run_uv(main())


@pytest.mark.parametrize(
    "text",
    [
        '[supernode]\nalternate_host = "127.0.0.2"\n',  # host left as the wildcard
        '[supernode]\nhost = "127.0.0.1"\nalternate_host = "127.0.0.1"\n',
        '[supernode]\nhost = "127.0.0.1"\nalternate_host = "second.example"\n',
    ],
)
def test_nat_discovery_needs_two_concrete_addresses(text: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse(text)
    assert caught.value.key == "supernode.alternate_host"


@pytest.mark.parametrize("which", [0, 1])
def test_stun_binding_over_tcp_on_each_port(tmp_path: Path, which: int) -> None:
    config = config_for(tmp_path)

    async def main() -> None:
        async with running(config) as node:
            assert node.bound is not None
            reader, writer = await asyncio.open_connection(*node.bound.tcp[which])
            request = Message(Method.BINDING, Class.REQUEST, os.urandom(12))
            writer.write(build(request))
            deframer = StreamDeframer()
            messages: list[bytes] = []
            while not messages:
                messages = deframer.feed(await asyncio.wait_for(reader.read(4096), TIMEOUT))
            answer = stun_codec.parse(messages[0])
            assert answer.cls is Class.SUCCESS
            assert answer.transaction_id == request.transaction_id
            local = writer.get_extra_info("sockname")[:2]
            assert answer.get(AttrType.XOR_MAPPED_ADDRESS) == local
            writer.close()

    run_uv(main())

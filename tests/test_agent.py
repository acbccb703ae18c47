"""The agent on loopback with a real login server and real supernodes: it enrols, attaches,
publishes its presence, runs its self-test, shows it all in ``edge ctl status``, and
moves to another supernode when its own goes away."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from edge.client.agent import Agent
from edge.client.config import AgentConfig, TurnServer
from edge.client.errors import UplinkFailed
from edge.crypto.cert import issue
from edge.login.cli import open_configured_store, server_keys
from edge.login.config import LoginConfig
from edge.login.passwords import Passwords
from edge.login.relay import relay_credentials
from edge.login.server import LoginServer
from edge.login.store import Store
from edge.runtime.control import request
from edge.supernode.config import OverlayConfig, RelayConfig, SupernodeConfig
from edge.supernode.service import Supernode, supernode_keys
from tests.coturn import running_coturn
from tests.test_login_server import CHEAP

T = TypeVar("T")
TIMEOUT = 15.0
PASSWORD = "correct horse"


def run_uv(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


@dataclass
class Network:
    tmp: Path
    login: LoginServer
    store: Store
    login_address: tuple[str, int]
    stack: AsyncExitStack
    supernodes: list[Supernode]

    async def supernode(
        self, *, bootstrap: tuple[Any, ...] = (), host: str = "127.0.0.1"
    ) -> Supernode:
        index = len(self.supernodes) + 1
        state = self.tmp / f"supernode-{index}"
        keys = supernode_keys(state)
        now = int(time.time())
        certificate = state / "supernode.cert"
        certificate.write_bytes(
            issue(
                self.login.keys.issuer, serial=1000 + index, user_id=f"supernode-{index}",
                device_id="sn", sign_key=keys.sign_public, dh_key=keys.dh_public,
                not_before=now - 60, not_after=now + 86400,
            )
        )  # fmt: skip
        config = SupernodeConfig(
            host=host,
            tcp_ports=(),
            state_dir=state,
            control_socket=self.tmp / f"supernode-{index}.sock",
            shutdown_grace=0.0,
            relay=RelayConfig(),
            overlay=OverlayConfig(
                certificate=certificate,
                issuer_key=self.login.keys.issuer.public,
                address=host,
                bootstrap=bootstrap,
            ),
        )
        node = Supernode(config)
        await node.start()
        self.stack.push_async_callback(node.stop)
        await asyncio.wait_for(node.joined.wait(), TIMEOUT)
        self.supernodes.append(node)
        return node

    def agent_config(self, user: str, bootstrap: list[tuple[str, int]]) -> AgentConfig:
        self.store.add_user(user, Passwords(CHEAP).hash(PASSWORD), int(time.time()))
        return AgentConfig(
            user_id=user,
            device_id="desk",
            login_address=self.login_address,
            server_key=self.login.keys.noise.dh_public,
            issuer_key=self.login.keys.issuer.public,
            bootstrap=tuple(bootstrap),
            state_dir=self.tmp / f"agent-{user}",
            control_socket=self.tmp / f"agent-{user}.sock",
            capture="none",
            playback="none",
        )

    async def home(self) -> tuple[str, int]:
        """One supernode, started; the address devices bootstrap from."""
        node = await self.supernode()
        assert node.bound is not None
        return node.bound.udp

    async def agent(self, config: AgentConfig, password: str | None = PASSWORD) -> Agent:
        agent = Agent(config, password=password)
        await agent.start()
        self.stack.push_async_callback(agent.stop)
        await asyncio.wait_for(agent.online.wait(), TIMEOUT)
        return agent


@asynccontextmanager
async def network(tmp: Path, **options: Any) -> AsyncIterator[Network]:
    """A login server on loopback (``options``: more of its LoginConfig), and a stack for
    the supernodes and agents of the test."""
    config = LoginConfig(
        listen=(("127.0.0.1", 0),),
        state_dir=tmp / "login",
        database=f"sqlite:///{tmp / 'login.db'}",
        password_cost=CHEAP,
        **options,
    )
    store = await asyncio.to_thread(open_configured_store, config)
    login = LoginServer(config, store, server_keys(config.state_dir))
    (address,) = await login.start()
    try:
        async with AsyncExitStack() as stack:
            yield Network(tmp, login, store, address, stack, [])
    finally:
        await login.stop(grace=1.0)
        store.close()


def test_an_agent_enrols_attaches_publishes_and_reports_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            node = await net.supernode()
            assert node.bound is not None
            config = net.agent_config("alice", [node.bound.udp])
            agent = await net.agent(config)
            status = (await request(config.control_socket, "status"))["result"]
            assert status["online"] is True
            assert status["user"] == "alice"
            assert status["supernode"]["address"] == f"127.0.0.1:{node.bound.port}"
            assert status["supernode"]["transport"] == "udp"
            assert status["presence"] == {
                "stored_on": 1,
                "published_at": status["presence"]["published_at"],
                "answer": "OK",
            }
            assert status["port"]["note"].startswith("first start")
            assert status["certificate_expires"] > time.time()
            assert (config.state_dir / "device.cert").stat().st_mode & 0o777 == 0o600
            assert node.clients is not None
            assert node.clients.attached.sessions_of("alice")
            # Its presence can be found through the overlay, as any device would look it up.
            assert node.clients.overlay.node.store.get(*_key_and_now("alice")), "the record is held"
            # The self-test ran from port P against the supernode (no second address here).
            await agent.wait_for(lambda: agent.nat is not None)
            assert agent.nat is not None and agent.nat.reflexive == (
                "127.0.0.1",
                status["port"]["port"],
            )

    run_uv(main())


def test_a_second_start_renews_without_the_password_and_keeps_its_port(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            config = net.agent_config("bob", [home])
            first = await net.agent(config)
            assert first.port is not None
            port = first.port.port
            await first.stop()
            again = await net.agent(config, password=None)
            assert again.port is not None and again.port.port == port
            assert again.port.note == "kept from the last start"

    run_uv(main())


def test_without_a_certificate_or_a_password_the_agent_says_what_it_needs(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            config = net.agent_config("carol", [("127.0.0.1", 9)])
            with pytest.raises(UplinkFailed, match="password_file"):
                await Agent(config).start()

    run_uv(main())


def test_when_its_supernode_stops_the_agent_moves_to_another(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            first = await net.supernode()
            assert first.bound is not None
            second = await net.supernode(bootstrap=(first.bound.udp,))
            assert second.bound is not None
            agent = await net.agent(net.agent_config("dave", [first.bound.udp]))
            assert agent.link is not None and agent.link.supernode == first.bound.udp
            await first.stop()
            moved = second.bound.udp
            await asyncio.wait_for(
                agent.wait_for(lambda: agent.online.is_set() and _at(agent, moved)), TIMEOUT
            )
            assert second.clients is not None and second.clients.attached.sessions_of("dave")

    run_uv(main())


def _at(agent: Agent, address: tuple[str, int]) -> bool:
    return agent.link is not None and agent.link.supernode == address


def _key_and_now(user: str) -> tuple[int, float]:
    from edge.overlay.ids import key_for_user

    return key_for_user(user), time.time()


def test_a_message_goes_end_to_end_between_agents_on_two_supernodes(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            first = await net.supernode()
            assert first.bound is not None
            second = await net.supernode(bootstrap=(first.bound.udp,))
            assert second.bound is not None
            alice_config = net.agent_config("alice", [first.bound.udp])
            bob_config = net.agent_config("bob", [second.bound.udp])
            await net.agent(alice_config)
            bob = await net.agent(bob_config)
            found = await request(alice_config.control_socket, "search", {"user": "bob"})
            (device,) = found["result"]["devices"]
            assert device["device"] == "desk" and device["online"] is True
            assert device["supernode"] == f"127.0.0.1:{second.bound.port}"
            sent = await request(alice_config.control_socket, "send", {"user": "bob", "text": "hi"})
            assert sent["result"] == {"delivered_to": ["bob/desk"], "devices": 1}
            inbox = (await request(bob_config.control_socket, "messages"))["result"]["messages"]
            assert [(m["from"], m["text"]) for m in inbox] == [("alice/desk", "hi")]
            # The supernodes carried the session's datagrams and saw ciphertext only.
            assert first.clients is not None and second.clients is not None
            assert first.clients.counts["forward"] >= 1 and second.clients.counts["forward"] >= 1
            assert bob.peers is not None and bob.peers.count == 1
            nobody = await request(
                alice_config.control_socket, "send", {"user": "zed", "text": "?"}
            )
            assert nobody["ok"] is False and nobody["error"]["code"] == "NOT_FOUND"

    run_uv(main())


def test_a_call_between_agents_finds_its_own_path_carries_media_and_hangs_up(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            first = await net.supernode()
            assert first.bound is not None
            second = await net.supernode(bootstrap=(first.bound.udp,))
            assert second.bound is not None
            alice_config = net.agent_config("alice", [first.bound.udp])
            bob_config = replace(
                net.agent_config("bob", [second.bound.udp]), auto_answer=frozenset({"alice"})
            )
            alice = await net.agent(alice_config)
            bob = await net.agent(bob_config)
            assert alice.calls is not None
            opened: list[tuple[str, int]] = []
            send_low_ttl = alice.calls.preopen

            def preopen(address: tuple[str, int]) -> None:
                opened.append(address)
                send_low_ttl(address)

            alice.calls.preopen = preopen
            placed = await request(alice_config.control_socket, "call", {"user": "bob"})
            assert placed["ok"], placed
            assert alice.calls is not None and bob.calls is not None
            # Both ends go active on a path of their own: loopback host to host.
            await asyncio.wait_for(_until_active(alice), TIMEOUT)
            await asyncio.wait_for(_until_active(bob), TIMEOUT)
            await asyncio.wait_for(_until_frames(alice, 10), TIMEOUT)
            await asyncio.wait_for(_until_frames(bob, 10), TIMEOUT)
            status = (await request(alice_config.control_socket, "status"))["result"]
            (call,) = status["calls"]
            assert (call["peer"], call["state"], call["path"]) == ("bob", "active", "direct-udp")
            # Its audio, as a listener would judge it: Opus, nothing concealed, a clean MOS.
            audio = call["audio"]
            assert (audio["codec"], audio["concealed"]) == ("opus", 0), audio
            assert audio["mos"] >= 4.3 and audio["bitrate_kbps"] > 0 and call["loss"] == 0
            forwarded = first.clients.counts["forward"] if first.clients else 0
            await asyncio.wait_for(_until_frames(alice, 30), TIMEOUT)
            # Media goes on the call's own path, not through the supernodes.
            assert first.clients is not None and first.clients.counts["forward"] == forwarded
            # Before its checks, alice opened her mapping towards bob's direct candidates.
            assert bob.port is not None and ("127.0.0.1", bob.port.port) in opened
            hung = await request(bob_config.control_socket, "hangup")
            assert hung["ok"], hung
            await asyncio.wait_for(_until_ended(alice), TIMEOUT)
            ended = (await request(alice_config.control_socket, "status"))["result"]["calls"]
            assert ended[0]["state"] == "ended" and ended[0]["reason"] == "hang-up"
            # Once the manager forgets the ended call, so does the driver: nothing of a
            # call stays for good, however many a device makes.
            alice.calls.manager.linger = 0.0
            alice.calls.manager.handle_timer(asyncio.get_running_loop().time())
            alice.calls.pump()
            assert alice.calls.status() == [] and alice.calls.paths == {}

    run_uv(main())


async def _until_active(agent: Agent) -> None:
    assert agent.calls is not None
    await agent.calls.wait_for(lambda: any(c["state"] == "active" for c in _calls(agent)))


async def _until_ended(agent: Agent) -> None:
    assert agent.calls is not None
    await agent.calls.wait_for(lambda: all(c["state"] == "ended" for c in _calls(agent)))


async def _until_frames(agent: Agent, n: int) -> None:
    assert agent.calls is not None
    await agent.calls.wait_for(lambda: any(c["frames_received"] >= n for c in _calls(agent)))


def _calls(agent: Agent) -> list[dict[str, Any]]:
    return agent.calls.status() if agent.calls is not None else []


def test_an_agent_allowed_to_serve_is_dialled_back_by_three_supernodes_and_promoted(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            first = await net.supernode()
            assert first.bound is not None
            for host in ("127.0.0.2", "127.0.0.3"):
                await net.supernode(bootstrap=(first.bound.udp,), host=host)
            bootstrap = [node.bound.udp for node in net.supernodes if node.bound is not None]
            config = replace(
                net.agent_config("eve", bootstrap), supernode="always", promotion_hold=1.0
            )
            agent = await net.agent(config)
            assert agent.promotion is not None
            await asyncio.wait_for(_until_promoted(agent), TIMEOUT)
            role = (await request(config.control_socket, "status"))["result"]["supernode_role"]
            assert role["state"] == "supernode" and role["supernode"] is True, role
            assert "3 dial-backs" in role["reason"] or "supernode since" in role["reason"]
            served = agent.promotion.supernode
            assert served is not None and served.clients is not None
            # It serves as a supernode of the overlay, with the device's own certified key.
            await asyncio.wait_for(served.joined.wait(), TIMEOUT)
            assert len(served.clients.overlay.node.table) >= 1
            assert first.clients is not None
            assert first.clients.dialback is not None
            assert first.clients.dialback.counts["reachable"] == 1

    run_uv(main())


def test_an_agent_that_may_not_serve_says_why(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            config = net.agent_config("fay", [home])
            await net.agent(config)
            role = (await request(config.control_socket, "status"))["result"]["supernode_role"]
            assert (role["state"], role["reason"]) == ("client", "never: operator setting")

    run_uv(main())


async def _until_promoted(agent: Agent) -> None:
    assert agent.promotion is not None
    await agent.promotion.serving.wait()


def test_a_device_configured_with_a_standard_turn_server_relays_through_it(
    tmp_path: Path,
) -> None:
    secret = b"the relay operator's own secret"
    (tmp_path / "coturn").mkdir()
    with running_coturn(tmp_path / "coturn", secret=secret) as coturn:
        credentials = relay_credentials(secret, "gus", int(time.time()), 3600)
        uri = f"turn:{coturn.address[0]}:{coturn.address[1]}?transport=udp"

        async def main() -> None:
            async with network(tmp_path) as net:
                node = await net.supernode()
                assert node.bound is not None
                config = replace(
                    net.agent_config("gus", [node.bound.udp]),
                    turn=(TurnServer(uri, credentials.username, credentials.password),),
                )
                agent = await net.agent(config)
                await asyncio.wait_for(agent.wait_for(lambda: agent.relayed is not None), TIMEOUT)
                status = (await request(config.control_socket, "status"))["result"]
                assert status["relay"].startswith(f"{coturn.address[0]}:")
                # The relayed address is a candidate of the device's calls and presence.
                assert agent.calls is not None
                kinds = [c.kind.name for c in agent.calls.manager.candidates]
                assert "RELAY" in kinds

        run_uv(main())


def test_buddies_are_asked_for_accepted_and_listed_through_edge_ctl(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            hal = net.agent_config("hal", [home])
            ida = net.agent_config("ida", [home])
            await net.agent(hal)
            await net.agent(ida)
            asked = await request(hal.control_socket, "buddy", {"op": "add", "user": "ida"})
            assert asked["result"]["buddy"]["state"] == "pending-out", asked
            waiting = (await request(ida.control_socket, "buddies"))["result"]["buddies"]
            assert [(b["user"], b["state"]) for b in waiting] == [("hal", "pending-in")]
            taken = await request(ida.control_socket, "buddy", {"op": "accept", "user": "hal"})
            assert taken["result"]["buddy"]["state"] == "accepted"
            both = (await request(hal.control_socket, "buddies"))["result"]["buddies"]
            assert [(b["user"], b["state"]) for b in both] == [("ida", "accepted")]
            wrong = await request(hal.control_socket, "buddy", {"op": "hug", "user": "ida"})
            assert wrong["ok"] is False

    run_uv(main())


def test_a_file_goes_end_to_end_and_arrives_whole(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            jim = net.agent_config("jim", [home])
            kim = net.agent_config("kim", [home])
            await net.agent(jim)
            receiver = await net.agent(kim)
            payload = os.urandom(1 << 20)
            source = tmp_path / "doorbell.wav"
            source.write_bytes(payload)
            sent = await request(
                jim.control_socket, "send-file", {"user": "kim", "path": str(source)},
                timeout=TIMEOUT,
            )  # fmt: skip
            assert sent["result"] == {"sent": "doorbell.wav", "to": "kim/desk"}, sent
            files = (await request(kim.control_socket, "files"))["result"]["received"]
            assert files == [{"name": "doorbell.wav", "size": 1 << 20}]
            landed = kim.state_dir / "downloads" / "doorbell.wav"
            assert landed.read_bytes() == payload
            assert landed.stat().st_mode & 0o777 == 0o600
            assert receiver.transfers is not None and not receiver.transfers._cores

    run_uv(main())


def test_a_message_for_someone_offline_waits_in_the_mailbox_until_they_log_in(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            lee = net.agent_config("lee", [home])
            max_ = net.agent_config("max", [home])
            await net.agent(lee)
            # max enrols once, then goes offline.
            first = await net.agent(max_)
            await first.stop()
            sent = await request(lee.control_socket, "send", {"user": "max", "text": "later"})
            assert sent["result"]["devices"] == 0 and sent["result"]["stored_offline"], sent
            await net.agent(max_, password=None)
            inbox = (await request(max_.control_socket, "messages"))["result"]["messages"]
            assert [(m["from"], m["text"], m["offline"]) for m in inbox] == [
                ("lee/desk", "later", True)
            ]

    run_uv(main())


def test_garbage_sprayed_at_port_p_leaves_a_call_alone(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            kay = net.agent_config("kay", [home])
            lou = replace(net.agent_config("lou", [home]), auto_answer=frozenset({"kay"}))
            caller = await net.agent(kay)
            callee = await net.agent(lou)
            assert (await request(kay.control_socket, "call", {"user": "lou"}))["ok"]
            await asyncio.wait_for(_until_active(callee), TIMEOUT)
            await asyncio.wait_for(_until_frames(callee, 10), TIMEOUT)
            assert callee.port is not None and callee._adapter is not None
            target = ("127.0.0.1", callee.port.port)
            before = sum(callee._adapter.dropped.values())
            # Garbage, edge datagrams of no session, STUN nonsense: none of it may disturb
            # the call. (Replays of the call's own datagrams meet the session's replay
            # window, tested with the session.)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spray:
                for size in range(1, 200):
                    spray.sendto(os.urandom(size), target)
                    spray.sendto(b"\xed\x9e\x01\x05" + os.urandom(size), target)
                    spray.sendto(b"\x00\x01" + os.urandom(size), target)
            assert caller.calls is not None
            frames = _calls(callee)[0]["frames_received"]
            await asyncio.wait_for(_until_frames(callee, frames + 25), TIMEOUT)
            assert _calls(callee)[0]["state"] == "active"
            assert sum(callee._adapter.dropped.values()) > before

    run_uv(main())


def test_a_corrupt_host_cache_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            config = net.agent_config("mel", [home])
            config.state_dir.mkdir(parents=True)
            (config.state_dir / "hostcache.json").write_bytes(b"{not json")
            agent = await net.agent(config)
            assert agent.online.is_set()
            saved = json.loads((config.state_dir / "hostcache.json").read_text())
            assert saved  # rewritten whole, with the supernode that worked

    run_uv(main())

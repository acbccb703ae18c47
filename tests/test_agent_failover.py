"""A supernode that silently swallows a device's signalling: the device notices, moves to
another supernode of its host cache, publishes its presence there and gets its message
through, within a bounded time. The silent supernode is a real ``edge supernode`` process,
stopped with SIGSTOP: it keeps its sockets and answers nothing."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from edge.client.config import AgentConfig
from edge.crypto.cert import issue
from edge.crypto.keys import IssuerKey
from edge.runtime.control import ControlUnreachable, JsonObject, request
from edge.supernode.service import supernode_keys
from tests.daemon import notifying_daemon
from tests.test_agent import TIMEOUT, network, run_uv

BOUND = 15.0
"""How long ``edge ctl send`` or ``call`` may take when the supernode has gone silent."""


@asynccontextmanager
async def supernode_process(
    tmp: Path, name: str, serial: int, issuer: IssuerKey, bootstrap: tuple[str, int]
) -> AsyncIterator[tuple[subprocess.Popen[str], tuple[str, int]]]:
    """``edge supernode`` in a process of its own, in the overlay through ``bootstrap``;
    yields the process and its address once it has joined."""
    state = tmp / name
    keys = supernode_keys(state)
    now = int(time.time())
    certificate = state / "supernode.cert"
    certificate.write_bytes(
        issue(
            issuer, serial=serial, user_id=name, device_id="sn",
            sign_key=keys.sign_public, dh_key=keys.dh_public,
            not_before=now - 60, not_after=now + 3600,
        )
    )  # fmt: skip
    control = state / "control.sock"
    config = state / "supernode.toml"
    config.write_text(
        f'[supernode]\nhost = "127.0.0.1"\ntcp_ports = []\n'
        f'state_dir = "{state}"\ncontrol_socket = "{control}"\nshutdown_grace_seconds = 0\n'
        f'[overlay]\ncertificate = "{certificate}"\nissuer_key = "{issuer.public.hex()}"\n'
        f'address = "127.0.0.1"\nbootstrap = ["{bootstrap[0]}:{bootstrap[1]}"]\n'
    )
    with notifying_daemon(state, "supernode", "--config", str(config)) as (process, listener):
        try:
            ready = await asyncio.to_thread(listener.recv, 4096)
            assert ready == b"READY=1", (ready, process.poll())
            await _until_status(control, lambda overlay: overlay.get("contacts", 0) >= 1)
            host, _, port = (await request(control, "status"))["result"]["udp"].rpartition(":")
            yield process, (host, int(port))
        finally:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            await asyncio.to_thread(process.wait, TIMEOUT)


async def _until_status(control: Path, condition: Callable[[JsonObject], bool]) -> None:
    """Poll the supernode's control socket until ``condition`` holds of its overlay status."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(ControlUnreachable):
            if condition((await request(control, "status"))["result"]["overlay"]):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the supernode at {control}: status never came to that")


@dataclass
class Stage:
    """Alice attached to a supernode process that has just gone silent; bob elsewhere."""

    alice: AgentConfig
    bob: AgentConfig
    other: tuple[str, int]
    """The supernode alice should move to."""


@asynccontextmanager
async def silent_supernode(tmp_path: Path) -> AsyncIterator[Stage]:
    async with network(tmp_path) as net:
        home = await net.supernode()
        assert home.bound is not None
        issuer = net.login.keys.issuer
        async with (
            supernode_process(tmp_path, "sn-a", 3001, issuer, home.bound.udp) as (a, at_a),
            supernode_process(tmp_path, "sn-b", 3002, issuer, home.bound.udp) as (b, at_b),
        ):
            bob = net.agent_config("bob", [home.bound.udp])
            await net.agent(bob)
            alice = net.agent_config("alice", [at_a, at_b])
            agent = await net.agent(alice)
            assert agent.link is not None
            silent, other = (a, at_b) if agent.link.supernode == at_a else (b, at_a)
            # Her self-test's result has her publish again: the device is idle after that.
            control = tmp_path / ("sn-a" if silent is a else "sn-b") / "control.sock"
            await _until_status(control, lambda overlay: overlay["presence"]["published"] >= 2)
            silent.send_signal(signal.SIGSTOP)
            yield Stage(alice, bob, other)


async def _timed(config: AgentConfig, command: str, args: JsonObject) -> JsonObject:
    """``edge ctl COMMAND``, which must succeed within :data:`BOUND`; its result."""
    began = time.monotonic()
    answer = await request(config.control_socket, command, args, timeout=BOUND)
    assert answer["ok"], answer
    assert time.monotonic() - began < BOUND
    result: JsonObject = answer["result"]
    return result


async def _moved(stage: Stage) -> None:
    status = (await request(stage.alice.control_socket, "status"))["result"]
    assert status["online"] is True
    assert status["supernode"]["address"] == f"{stage.other[0]}:{stage.other[1]}"
    assert "went silent" in status["last_error"], status["last_error"]


def test_a_message_gets_through_when_the_supernode_swallows_signalling(tmp_path: Path) -> None:
    async def main() -> None:
        async with silent_supernode(tmp_path) as stage:
            sent = await _timed(stage.alice, "send", {"user": "bob", "text": "still here"})
            assert sent["delivered_to"] == ["bob/desk"], sent
            await _moved(stage)
            inbox = (await request(stage.bob.control_socket, "messages"))["result"]
            assert [m["text"] for m in inbox["messages"]] == ["still here"]

    run_uv(main())


def test_a_call_gets_through_when_the_supernode_swallows_signalling(tmp_path: Path) -> None:
    async def main() -> None:
        async with silent_supernode(tmp_path) as stage:
            placed = await _timed(stage.alice, "call", {"user": "bob"})
            assert placed["device"] == "bob/desk", placed
            await _moved(stage)

    run_uv(main())

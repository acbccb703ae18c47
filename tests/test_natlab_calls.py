"""Calls through real kernel NAT: the login server, two supernodes and agents in the NAT
lab's namespaces, each a real process; a call between two sites finds the best path
the pair allows and carries media both ways.

The whole network runs as it would in the field: ``edge login-server`` in ``login``
(198.18.0.10:443), ``edge supernode`` in ``sn1`` (198.18.0.11:3478, with RFC 5780 on
198.18.0.12) and ``sn2`` (198.18.0.13:3478), and ``edge agent`` on each site's host,
40 ms round trip from the home sites to the internet. The test drives them with
``edge ctl`` through their control sockets, which live in the file system and so
cross namespaces.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.crypto.cert import issue
from edge.login.cli import open_configured_store, server_keys
from edge.login.config import LoginConfig
from edge.login.passwords import Passwords
from edge.runtime.control import request
from edge.supernode.service import supernode_keys
from tests.impair import Impairment
from tests.natlab import Lab, SiteSpec, lab, unavailable
from tests.test_login_server import CHEAP

UNAVAILABLE = unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))

LOGIN = ("198.18.0.10", 443)
SN1, SN1_ALT, SN2 = "198.18.0.11", "198.18.0.12", "198.18.0.13"
PORT = 3478
ONE_WAY = 0.02
PASSWORD = "correct horse"
SITES = (
    SiteSpec("pub1", "public"),
    SiteSpec("pub2", "public"),
    SiteSpec("home1", "cone", Impairment(delay=ONE_WAY)),
    SiteSpec("home2", "cone", Impairment(delay=ONE_WAY)),
    SiteSpec("sym1", "symmetric", Impairment(delay=ONE_WAY)),
    SiteSpec("sym2", "symmetric"),
    SiteSpec("blocked", "udp-blocked"),
    SiteSpec("office", "tcp-web-only", Impairment(delay=ONE_WAY)),
    SiteSpec("blocked2", "udp-blocked"),
    SiteSpec("office2", "tcp-web-only"),
)
SITE_KINDS = {site.name: site.kind for site in SITES}
RELAYED = ("relay-udp", "relay-tcp")
USERS = ["ann", "ben", "cat", "dan", "eve", "fay", "gil", "hal", "ivy", "jon"]
RELAY_SECRET = "shared by the login server and the supernode's relay"
TIMEOUT = 30.0
SETTLE = 5.0
"""Longer than a call's upgrade window (CallConfig.upgrade_window)."""


@dataclass
class Network:
    lab: Lab
    tmp: Path
    agents: dict[str, Path]
    """Control sockets of the agents, by site."""


def _notified(tmp: Path, name: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp / f"{name}.notify"))
    listener.settimeout(TIMEOUT)
    return listener


def _wait_for(listener: socket.socket, prefix: bytes) -> bytes:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        message = listener.recv(4096)
        if message.startswith(prefix):
            return message
    raise AssertionError(f"no {prefix!r} notification")


def _spawn(net: Lab, namespace: str, tmp: Path, name: str, *argv: str) -> socket.socket:
    listener = _notified(tmp, name)
    env = {"NOTIFY_SOCKET": str(tmp / f"{name}.notify")}
    net.spawn(namespace, sys.executable, "-m", "edge", *argv, env=env)
    return listener


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    tmp = tmp_path_factory.mktemp("natlab-calls")
    with lab("edgecall", sites=SITES) as built:
        keys = server_keys(tmp / "login")
        _login_server(built, tmp)
        _supernode(built, tmp, keys.issuer, "sn1", SN1, alternate=SN1_ALT)
        _supernode(built, tmp, keys.issuer, "sn2", SN2, bootstrap=f"{SN1}:{PORT}")
        agents = {}
        for site, user, supernode in (
            ("pub1", "ann", SN1), ("pub2", "ben", SN2),
            ("home1", "cat", SN1), ("home2", "dan", SN2),
            ("sym1", "eve", SN1), ("sym2", "fay", SN2),
            ("blocked", "gil", SN1), ("office", "hal", SN1),
            ("blocked2", "ivy", SN2), ("office2", "jon", SN2),
        ):  # fmt: skip
            agents[site] = _agent(built, tmp, site, user, supernode, keys)
        for site, control in agents.items():
            if SITE_KINDS[site] not in ("udp-blocked", "tcp-web-only"):
                _self_tested(control)
            _relayed(control)
        yield Network(built, tmp, agents)


def _login_server(net: Lab, tmp: Path) -> None:
    state = tmp / "login"
    config = LoginConfig(
        listen=(LOGIN,), state_dir=state, database=f"sqlite:///{tmp / 'login.db'}",
        password_cost=CHEAP,
    )  # fmt: skip
    store = open_configured_store(config)
    for user in USERS:
        store.add_user(user, Passwords(CHEAP).hash(PASSWORD), int(time.time()))
    store.close()
    path = tmp / "login.toml"
    path.write_text(
        f'[server]\nlisten = ["{LOGIN[0]}:{LOGIN[1]}"]\nstate_dir = "{state}"\n'
        f'database = "sqlite:///{tmp / "login.db"}"\n[passwords]\nops = 1\nmemory_kib = 8\n'
        f'[relay]\nsecret = "{RELAY_SECRET}"\nuris = ["turn:{SN1}:{PORT}?transport=udp"]\n'
    )
    listener = _spawn(net, net.hosts["login"], tmp, "login", "login-server", "--config", str(path))
    with listener:
        _wait_for(listener, b"READY=1")


def _supernode(
    net: Lab, tmp: Path, issuer: Any, name: str, host: str, *, alternate: str = "",
    bootstrap: str = "",
) -> None:  # fmt: skip
    state = tmp / name
    keys = supernode_keys(state)
    now = int(time.time())
    certificate = state / "supernode.cert"
    certificate.write_bytes(
        issue(
            issuer, serial=hash(name) & 0xFFFF, user_id=f"supernode-{name}", device_id="sn",
            sign_key=keys.sign_public, dh_key=keys.dh_public, not_before=now - 60,
            not_after=now + 86400,
        )
    )  # fmt: skip
    lines = [
        "[supernode]",
        f'host = "{host}"',
        f"port = {PORT}",
        f'state_dir = "{state}"',
        f'control_socket = "{tmp / name}.sock"',
        "shutdown_grace_seconds = 0",
        "[overlay]",
        f'certificate = "{certificate}"',
        f'issuer_key = "{issuer.public.hex()}"',
        f'address = "{host}"',
        f'login_servers = ["{LOGIN[0]}:{LOGIN[1]}"]',
    ]
    if alternate:
        lines.insert(3, f'alternate_host = "{alternate}"')
    if bootstrap:
        lines.append(f'bootstrap = ["{bootstrap}"]')
    # Both supernodes relay too (TURN on their port, for devices the login server hands
    # relay credentials to; a device on TCP only allocates at the supernode it reached).
    lines += ["[relay]", f'secret = "{RELAY_SECRET}"', f'address = "{host}"']
    # Voice needs about 10 kB/s; the 1 MB file that follows a call on its path needs more.
    lines.append("bandwidth_bytes_per_second = 1000000")
    path = tmp / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    listener = _spawn(net, net.hosts[name], tmp, name, "supernode", "--config", str(path))
    with listener:
        _wait_for(listener, b"READY=1")


def _agent(net: Lab, tmp: Path, site: str, user: str, supernode: str, keys: Any) -> Path:
    (tmp / f"{site}.password").write_text(PASSWORD)
    control = tmp / f"{site}.sock"
    path = tmp / f"{site}.toml"
    path.write_text(
        f'[account]\nuser_id = "{user}"\ndevice_id = "{site}"\n'
        f'password_file = "{tmp / site}.password"\n'
        f'[login]\naddress = "{LOGIN[0]}:{LOGIN[1]}"\n'
        f'server_key = "{keys.noise.dh_public.hex()}"\nissuer_key = "{keys.issuer.public.hex()}"\n'
        f'[supernodes]\nbootstrap = ["{supernode}:{PORT}"]\n'
        f'[state]\ndir = "{tmp / site}-state"\ncontrol_socket = "{control}"\n'
        f"[policy]\nauto_answer = {json.dumps(USERS)}\n"
        f'[audio]\ncapture = "none"\nplayback = "none"\n'
    )
    listener = _spawn(net, net.sites[site].host, tmp, site, "agent", "--config", str(path))
    with listener:
        _wait_for(listener, b"STATUS=online")
    return control


def _self_tested(control: Path) -> None:
    """Wait until the agent's connectivity self-test has reported (its reflexive
    address is a candidate from then on): up to about 8 s behind a NAT, where the
    filtering tests wait out their silence."""
    deadline = time.monotonic() + TIMEOUT
    while ctl(control, "status")["result"]["nat"] is None:
        assert time.monotonic() < deadline, "the self-test never reported"
        time.sleep(0.1)


def _relayed(control: Path) -> None:
    """Wait until the agent holds its TURN allocation (a relayed candidate)."""
    deadline = time.monotonic() + TIMEOUT
    while ctl(control, "status")["result"]["relay"] is None:
        assert time.monotonic() < deadline, "no relayed address"
        time.sleep(0.1)


def ctl(control: Path, command: str, **args: str) -> dict[str, Any]:
    answer: dict[str, Any] = asyncio.run(request(control, command, args, timeout=TIMEOUT))
    return answer


def _call_of(control: Path) -> dict[str, Any] | None:
    calls = ctl(control, "status")["result"]["calls"]
    return calls[-1] if calls else None


def _until(control: Path, state: str) -> dict[str, Any]:
    """The agent's latest call once it is in ``state``: its status, polled (the agent
    is another process; its control socket is the way to ask it)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        call = _call_of(control)
        if call is not None and call["state"] == state:
            return call
        time.sleep(0.1)
    raise AssertionError(f"the call never became {state}: {_call_of(control)}")


def _settled(control: Path, paths: tuple[str, ...]) -> dict[str, Any]:
    """The agent's latest call once its path is one of ``paths`` (or, after the time a
    call may take to move up, whatever it is then)."""
    deadline = time.monotonic() + SETTLE
    while (call := _call_of(control)) is not None and call["path"] not in paths:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert call is not None
    return call


@pytest.mark.parametrize(
    ("caller", "callee", "callee_user", "path"),
    [
        # First, on a fresh lab: a relayed call that no earlier traffic has prepared
        # (the relay's permissions must come from the call itself).
        ("sym1", "sym2", "fay", "relay-udp"),
        # The symmetric NAT's mapping towards pub1 is learnt from sym2's check.
        ("pub1", "sym2", "fay", "punched-udp"),
        ("pub1", "pub2", "ben", "direct-udp"),
        ("home1", "pub2", "ben", "punched-udp"),
        ("home1", "home2", "dan", "punched-udp"),
        ("sym1", "home2", "dan", "relay-udp"),
        # UDP blocked, TCP out: a connection of its own to the public device's port P.
        ("blocked", "pub2", "ben", "direct-tcp"),
        ("office", "home2", "dan", "relay-tcp"),
        ("home2", "blocked2", "ivy", "relay-udp"),
        ("sym1", "office2", "jon", "relay-udp"),
        ("pub1", "office2", "jon", "relay-udp"),
        ("sym2", "blocked2", "ivy", "relay-udp"),
        ("blocked", "blocked2", "ivy", "relay-tcp"),
        ("blocked", "office2", "jon", "relay-tcp"),
        ("office", "office2", "jon", "relay-tcp"),
    ],
)
def test_a_call_takes_the_best_path_the_pair_allows(
    network: Network, caller: str, callee: str, callee_user: str, path: str
) -> None:
    placed = ctl(network.agents[caller], "call", user=callee_user)
    assert placed["ok"], placed
    _until(network.agents[caller], "active")
    _until(network.agents[callee], "active")
    # The call starts on the first pair that works and moves up to a better one that
    # answers later: give it the time to settle on the best.
    assert _settled(network.agents[caller], (path,))["path"] == path
    # A side that reaches its relay over TCP says relay-tcp; the other sees a relayed
    # candidate and says relay-udp: both are relayed paths.
    theirs = _settled(network.agents[callee], RELAYED if path in RELAYED else (path,))
    assert theirs["path"] in (RELAYED if path in RELAYED else (path,))
    deadline = time.monotonic() + TIMEOUT
    while (
        time.monotonic() < deadline
        and min(
            (_call_of(network.agents[caller]) or {}).get("frames_received", 0),
            (_call_of(network.agents[callee]) or {}).get("frames_received", 0),
        )
        < 25
    ):
        time.sleep(0.1)
    caller_call, callee_call = _call_of(network.agents[caller]), _call_of(network.agents[callee])
    assert caller_call and callee_call
    assert caller_call["frames_received"] >= 25 and callee_call["frames_received"] >= 25
    assert ctl(network.agents[caller], "hangup")["ok"]
    assert _until(network.agents[callee], "ended")["reason"] == "hang-up"
    # A message and a 1 MB file go end to end between the same two devices.
    text = f"from {caller} to {callee}"
    sent = ctl(network.agents[caller], "send", user=callee_user, text=text)
    assert sent["ok"] and sent["result"]["devices"] == 1, sent
    inbox = ctl(network.agents[callee], "messages")["result"]["messages"]
    assert text in [m["text"] for m in inbox]
    name = f"{caller}-{callee}.bin"
    payload = os.urandom(1 << 20)
    (network.tmp / name).write_bytes(payload)
    shipped = ctl(
        network.agents[caller], "send-file", user=callee_user, path=str(network.tmp / name)
    )
    assert shipped["ok"], shipped
    assert (network.tmp / f"{callee}-state" / "downloads" / name).read_bytes() == payload

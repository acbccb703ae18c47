"""``edge demo``: the network on one machine, told in plain words.

Today: a throw-away login server (SQLite, random port) creates two accounts;
a desk phone and a door intercom make their keys, enrol with the account
password and renew with their device key alone; each then runs as its own
process with its own UDP socket on loopback; the phone completes a Noise
handshake with the intercom,
each side verifying the other's certificate, then sends an encrypted message
and gets an encrypted receipt back. Later the demo grows into the whole
network: login server, supernode, agents with simulated buttons and audio.

The parent process makes the keys and certificates in a state folder, starts
the two peers (``edge demo --peer ...``, the same code path a device runs),
and relays what they say, prefixed by who says it.
"""

import argparse
import asyncio
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.client.login import Credentials, login
from edge.crypto.cert import TrustStore
from edge.crypto.keys import DeviceKeys
from edge.errors import EdgeError, LocalError
from edge.keytool import describe, read_certificate
from edge.login.cli import open_configured_store, server_keys
from edge.login.config import LoginConfig
from edge.login.passwords import PasswordCost, Passwords
from edge.login.server import LoginServer
from edge.login.store import Store
from edge.runtime.adapters import open_datagram
from edge.runtime.config import write_atomic
from edge.runtime.loop import run
from edge.session.datagram import DatagramEndpoint
from edge.session.events import MessageReceived, SessionEstablished, SessionFailed
from edge.session.handshake import Identity
from edge.wire.codes import MsgType
from edge.wire.messages import ReceiptStatus, parse_certificate

PEER_TIMEOUT = 20.0
DEMO_COST = PasswordCost(ops=1, memory=8 << 20)
"""The demo's passwords are throw-away; a real server keeps the interactive cost."""


@dataclass(frozen=True)
class Device:
    name: str
    user_id: str
    device_id: str
    what: str


PHONE = Device("phone", "alice", "desk-phone", "Alice's desk phone")
INTERCOM = Device("intercom", "frontdoor", "door-intercom", "the front-door intercom")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "demo", help="run the network on this machine and say what happens"
    )
    parser.add_argument(
        "--state", type=Path, help="folder for keys and certificates (default: temporary)"
    )
    parser.add_argument(
        "--message", default="Hello from the desk phone", help="text the phone sends"
    )
    parser.add_argument("--peer", choices=["listen", "call"], help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    if args.peer:
        return run(_peer(args))
    return run(_orchestrate(args))


# -- the parent: keys, certificates, two processes ------------------------------------


async def _orchestrate(args: argparse.Namespace) -> int:
    # The story is told in plain words below; the server's own log would interleave.
    logging.getLogger("edge.login").setLevel(logging.WARNING)
    state = args.state or Path(tempfile.mkdtemp(prefix="edge-demo-"))
    state.mkdir(parents=True, exist_ok=True)
    try:
        await _provision(state)
        return await _run_peers(state, args.message)
    finally:
        if args.state is None:
            shutil.rmtree(state, ignore_errors=True)


async def _provision(state: Path) -> None:
    """A throw-away login server certifies both devices, as a real one would."""
    say("demo", f"state folder {state}")
    config = LoginConfig(
        listen=(("127.0.0.1", 0),),
        state_dir=state / "login",
        password_cost=DEMO_COST,
    )
    store = await asyncio.to_thread(open_configured_store, config)
    keys = server_keys(config.state_dir)
    server = LoginServer(config, store, keys)
    (address,) = await server.start()
    write_atomic(state / "issuer.pub", keys.issuer.public.hex().encode(), mode=0o644)
    say("login", f"login server listening on TCP {address[0]}:{address[1]}")
    say("login", f"its Noise key, which devices pin: {keys.noise.dh_public.hex()[:32]}...")
    try:
        for device in (PHONE, INTERCOM):
            await _enrol(device, state, address, keys.noise.dh_public, store)
    finally:
        await server.stop(grace=2.0)
        await asyncio.to_thread(store.close)


async def _enrol(
    device: Device, state: Path, address: tuple[str, int], server_key: bytes, store: Store
) -> None:
    password = secrets.token_urlsafe(12)
    await asyncio.to_thread(
        store.add_user, device.user_id, Passwords(DEMO_COST).hash(password), int(time.time())
    )
    say("login", f"account {device.user_id!r} created")
    keys = DeviceKeys.generate()
    keys.save(state / f"{device.name}.key")
    who = Credentials(device.user_id, device.device_id, keys)
    session = await login(address, server_key, who, password=password)
    session.close()
    first = parse_certificate(session.certificate).tbs.serial
    say(device.name, f"made its keys; enrolled with the account password: certificate {first}")
    renewed = await login(address, server_key, who)
    renewed.close()
    write_atomic(state / f"{device.name}.cert", renewed.certificate, mode=0o644)
    say(device.name, "renewed it by signing a challenge with its device key (no password):")
    for line in describe(renewed.certificate).splitlines():
        say(device.name, line.strip())


async def _run_peers(state: Path, message: str) -> int:
    intercom = await _spawn(state, INTERCOM, ["--peer", "listen"])
    assert intercom.stdout is not None
    ready = await asyncio.wait_for(intercom.stdout.readline(), PEER_TIMEOUT)
    port = _listening_port(ready.decode())
    phone = await _spawn(
        state, PHONE, ["--peer", "call", "--target", f"127.0.0.1:{port}", "--message", message]
    )
    codes = await asyncio.wait_for(
        asyncio.gather(_relay(INTERCOM, intercom), _relay(PHONE, phone)), PEER_TIMEOUT
    )
    if all(code == 0 for code in codes):
        say("demo", "done: handshake verified both ways, message and receipt exchanged")
        return 0
    say("demo", f"failed: intercom exited {codes[0]}, phone exited {codes[1]}")
    return 1


async def _spawn(state: Path, device: Device, extra: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        "demo",
        "--state",
        str(state),
        "--name",
        device.name,
        *extra,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _listening_port(line: str) -> int:
    words = line.split()
    if len(words) != 2 or words[0] != "LISTENING" or not words[1].isdigit():
        raise LocalError(f"intercom process did not report its port: {line!r}")
    return int(words[1])


async def _relay(device: Device, process: asyncio.subprocess.Process) -> int:
    assert process.stdout is not None
    async for line in process.stdout:
        print(f"[{device.name:>8}] {line.decode().rstrip()}", flush=True)
    return await process.wait()


def say(who: str, text: str) -> None:
    print(f"[{who:>8}] {text}", flush=True)


# -- one peer: the same session code a device runs ------------------------------------


class _Peer:
    def __init__(self, state: Path, device: Device) -> None:
        loop = asyncio.get_running_loop()
        keys = DeviceKeys.load(state / f"{device.name}.key")
        issuer_public = bytes.fromhex((state / "issuer.pub").read_text())
        identity = Identity(keys, read_certificate(state / f"{device.name}.cert"))
        self.core = DatagramEndpoint(
            identity, TrustStore([issuer_public]), wall_offset=time.time() - loop.time()
        )
        self.events: asyncio.Queue[object] = asyncio.Queue(maxsize=1024)

    def on_event(self, event: object) -> None:
        self.events.put_nowait(event)

    async def next(self, kind: type[Any]) -> Any:
        while True:
            event = await asyncio.wait_for(self.events.get(), PEER_TIMEOUT)
            if isinstance(event, SessionFailed):
                raise LocalError(f"session failed: {event.reason} ({event.code.name})")
            if isinstance(event, kind):
                return event


async def _peer(args: argparse.Namespace) -> int:
    device = PHONE if args.name == PHONE.name else INTERCOM
    peer = _Peer(args.state, device)
    adapter = await open_datagram(peer.core, ("127.0.0.1", 0), peer.on_event)
    try:
        if args.peer == "listen":
            await _listen(peer, adapter)
        else:
            await _call(peer, adapter, args.target, args.message)
    except (EdgeError, TimeoutError) as exc:
        print(f"error: {exc or 'timed out'}", flush=True)
        return 1
    finally:
        adapter.close()
    return 0


async def _listen(peer: _Peer, adapter: Any) -> None:
    print(f"LISTENING {adapter.local_address[1]}", flush=True)
    print(f"listening on UDP 127.0.0.1:{adapter.local_address[1]}", flush=True)
    up: SessionEstablished = await peer.next(SessionEstablished)
    _say_established(up)
    got: MessageReceived = await peer.next(MessageReceived)
    body = got.message.body
    print(f"message #{body.sequence} from {body.sender}: {body.text!r}", flush=True)
    peer.core.send(
        got.index,
        MsgType.MESSAGE_RECEIPT,
        {"message_id": body.message_id, "status": ReceiptStatus.DELIVERED},
    )
    adapter.poke()
    print("sent an encrypted delivery receipt", flush=True)


async def _call(peer: _Peer, adapter: Any, target: str, text: str) -> None:
    host, _, port = target.rpartition(":")
    loop = asyncio.get_running_loop()
    started = loop.time()
    print(f"starting a Noise XX handshake with {target}", flush=True)
    peer.core.connect((host, int(port)), loop.time(), expect_user=INTERCOM.user_id)
    adapter.poke()
    up: SessionEstablished = await peer.next(SessionEstablished)
    _say_established(up, took=loop.time() - started)
    message_id = secrets.token_bytes(16)
    sent_at = loop.time()
    peer.core.send(
        up.index,
        MsgType.INSTANT_MESSAGE,
        {
            "message_id": message_id,
            "sender": PHONE.user_id,
            "recipient": INTERCOM.user_id,
            "sequence": 1,
            "sent_ms": int(time.time() * 1000),
            "text": text,
        },
    )
    adapter.poke()
    print(f"sent message #1, encrypted end to end: {text!r}", flush=True)
    got: MessageReceived = await peer.next(MessageReceived)
    status = ReceiptStatus(got.message.body.status).name
    rtt = (loop.time() - sent_at) * 1000
    print(f"receipt: {status} (round trip {rtt:.1f} ms)", flush=True)


def _say_established(up: SessionEstablished, took: float | None = None) -> None:
    timing = f" in {took * 1000:.1f} ms" if took is not None else ""
    peer = up.certified_peer
    print(
        f"handshake complete{timing}: peer is {peer.user_id}/{peer.device_id} at "
        f"{up.address[0]}:{up.address[1]}, certificate serial {peer.serial} verified "
        f"(issuer {peer.issuer_key_id.hex()}, key bound to the Noise static key)",
        flush=True,
    )

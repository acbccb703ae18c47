"""``edge demo``: the whole network on one machine, told as a timeline.

What it shows: a login server, two supernodes and two devices on loopback.
Alice's desk phone and the front-door intercom enrol with their account
passwords, each attaches to a supernode of its own and publishes its
presence there; the intercom looks Alice up, sends her "Someone is at the
front door" end to end, and the message shows in the phone's inbox. Then
the intercom calls the phone, which answers (``edge ctl answer``): the call
finds its own direct path, each side plays a tune of its own into it from a WAV file (the
intercom a ding-dong, the phone three higher notes), records what it hears,
and after three seconds of audio the intercom hangs up. Last, each recording
is checked: its dominant tones must be the other side's tune, and none of its
own. Last the boards (their profiles from hw/, on gpiozero's mock pins, which
``edge ctl button PART press|release`` works as a finger would): the
intercom's call button rings the phone, whose ringing LED blinks; lifting the
handset answers; ``edge ctl door open`` on the phone energises the intercom's
door strike for a second; putting the handset down ends the call; the LEDs
and the relay are told at each step. Then everything stops the way a service
manager stops it.

How it works: the parent process makes a temporary state folder (``--keep``
keeps it), runs the login server in-process with its SQLite database there and
creates the two accounts. For each supernode it makes the keys the supernode
will use, has the login server's issuer certify them, and writes its TOML
configuration; each agent gets a configuration naming its account, its
password file (read once, to enrol), one supernode to bootstrap from and, in
``[audio]``, the WAV file it plays into calls (``capture = "file:..."``,
written by the parent from its tune, :mod:`edge.media.tones`) and the one it
records them to (``playback``). The
daemons run as child processes (``edge supernode --config ...``, ``edge agent
--config ...``), started as systemd would start them: each has its own
``NOTIFY_SOCKET`` in the state folder, and the parent learns from READY=1 that
one has started and from its ``STATUS=online via ...`` line that an agent is
online. The second supernode's "joined the overlay" log line says it has met
the first. No step waits for a fixed time.

The story is then driven through ``edge ctl``, run as a user would type it
(in the state folder) and printed before its answer. While a call changes
state the parent asks both agents for their status (what ``edge ctl status``
shows) every :data:`POLL` seconds, with a deadline, and says each new state;
the recordings are read back and analysed with the Goertzel algorithm
(:func:`edge.media.tones.heard`) in the parent. Last, SIGTERM stops the
agents, then the supernodes; each must exit with status 0.

Every line says when (milliseconds since the start) and who speaks; the
daemons' own logs are shown with ``--verbose``. A step that fails, or takes
longer than :data:`STEP_TIMEOUT`, ends the demo with one line saying which,
and exit status 1.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.client.agent import CERT_FILE
from edge.crypto.cert import issue
from edge.errors import LocalError
from edge.login.cli import open_configured_store, server_keys
from edge.login.config import LoginConfig
from edge.login.passwords import PasswordCost, Passwords
from edge.login.server import LoginServer, ServerKeys
from edge.login.store import Store
from edge.media.tones import Note, heard, melody
from edge.media.wav import FRAME_SAMPLES, RATE, read_wav, write_wav
from edge.runtime import notify
from edge.runtime.config import write_atomic
from edge.runtime.control import JsonObject
from edge.runtime.control import request as control_request
from edge.runtime.logs import LineFormatter
from edge.runtime.loop import run
from edge.sansio import Address
from edge.supernode.service import supernode_keys
from edge.wire.messages import parse_certificate

MESSAGE = "Someone is at the front door"
STEP_TIMEOUT = 15.0
"""Seconds any one step may take: a daemon starting, coming online, a command."""
DEMO_COST = PasswordCost(ops=1, memory=8 << 20)
"""The demo's passwords are throw-away; a real server keeps the interactive cost."""
CERTIFICATE_HOURS = 24
LOG_TAIL = 5
"""Log lines kept from each daemon, to say why it failed."""


@dataclass(frozen=True)
class Device:
    name: str
    """Who speaks in the timeline; its files in the state folder carry this name."""
    user_id: str
    device_id: str
    tune: tuple[Note, ...]
    """What it plays into a call, looped: (Hz, seconds), 0 Hz for a rest."""


PHONE = Device(
    "phone", "alice", "desk-phone", ((880.0, 0.3), (1174.66, 0.3), (1396.91, 0.3), (0.0, 0.2))
)
INTERCOM = Device("intercom", "front-door", "intercom", ((659.25, 0.4), (523.25, 0.6), (0.0, 0.2)))
"""A ding-dong: E5, then C5."""
CALL_SECONDS = 3.0
"""Audio each way before the intercom hangs up."""
DOOR_OPEN_MS = 1000
"""How long the demo's intercom energises its door strike."""
HW = Path(__file__).resolve().parent.parent / "hw"
"""The board profiles of the source tree."""
POLL = 0.05
"""Seconds between looks at a call's status while waiting for it to change."""


class DemoFailed(LocalError):
    """A step of the demo did not happen; the message says which."""


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "demo", help="run the network on this machine and say what happens"
    )
    parser.add_argument("--message", default=MESSAGE, help="what the intercom sends the phone")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the state folder (configurations, keys, databases)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show the daemons' own log lines as well"
    )
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    return run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    timeline = Timeline(verbose=args.verbose)
    login_log = logging.getLogger("edge.login")
    if args.verbose:
        login_log.addHandler(TimelineHandler("login", timeline))
        login_log.propagate = False
    else:
        # The story is told in plain words; the login server's own log would interleave.
        login_log.setLevel(logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="edge-demo-"))
    timeline.say("demo", f"state folder {folder}; every command below runs there")
    try:
        async with AsyncExitStack() as stack:
            await Demo(folder, timeline, stack).run(args.message)
        timeline.say("login", "stopped")
    finally:
        if args.keep:
            timeline.say("demo", f"kept the state folder {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    timeline.say("demo", "boards: the intercom's button rang the phone, which opened the door")
    timeline.say("demo", "done: both devices online, the intercom found the phone, its message")
    timeline.say("demo", "was delivered end to end, and their call carried each side's tones")
    timeline.say("demo", "to the other's recording; everything stopped cleanly")
    return 0


class Timeline:
    """Prints who says what, and when, counted from the start of the demo."""

    def __init__(self, *, verbose: bool) -> None:
        self.verbose = verbose
        self._start = time.monotonic()

    def say(self, who: str, text: str) -> None:
        elapsed = round((time.monotonic() - self._start) * 1000)
        print(f"[{elapsed:5d} ms] [{who:>8}] {text}", flush=True)

    def relay(self, who: str, line: str) -> None:
        """One of a daemon's own log lines; shown with ``--verbose`` only."""
        if self.verbose:
            print(f"{'':10} [{who:>8}] {line}", flush=True)


class TimelineHandler(logging.Handler):
    """Shows an in-process server's log records as :meth:`Timeline.relay` shows a daemon's."""

    def __init__(self, who: str, timeline: Timeline) -> None:
        super().__init__()
        self.setFormatter(LineFormatter())
        self.who = who
        self.timeline = timeline

    def emit(self, record: logging.LogRecord) -> None:
        self.timeline.relay(self.who, self.format(record))


@dataclass(frozen=True)
class Login:
    store: Store
    address: Address
    keys: ServerKeys


# -- the story ---------------------------------------------------------------------------


class Demo:
    """One run: the state folder, the timeline, and what must be stopped at the end."""

    def __init__(self, folder: Path, timeline: Timeline, stack: AsyncExitStack) -> None:
        self.folder = folder
        self.say = timeline.say
        self.timeline = timeline
        self.stack = stack
        self.supernodes: dict[str, Address] = {}
        """Each supernode's name and UDP address, in the order they started."""
        self.daemons: dict[str, Daemon] = {}

    async def run(self, message: str) -> None:
        login = await self.start_login()
        for device in (PHONE, INTERCOM):
            await self.create_account(login, device)
        await self.start_supernode("super-1", login)
        await self.start_supernode("super-2", login, bootstrap="super-1")
        for device in (PHONE, INTERCOM):
            self.write_tune(device)
        agents = {
            PHONE: await self.spawn_agent(PHONE, login, "super-1"),
            INTERCOM: await self.spawn_agent(INTERCOM, login, "super-2"),
        }
        for device, daemon in agents.items():
            await self.until_online(device, daemon)
        await self.search_and_send(message)
        await self.call()
        self.check_recordings()
        await self.door_story()
        await self.show_supernodes()
        self.say("demo", "SIGTERM to the agents, then to the supernodes")
        await self.stop(list(agents.values()))
        await self.stop([self.daemons[name] for name in self.supernodes])

    # -- the login server and the accounts

    async def start_login(self) -> Login:
        config = LoginConfig(
            listen=(("127.0.0.1", 0),), state_dir=self.folder / "login", password_cost=DEMO_COST
        )
        store = await asyncio.to_thread(open_configured_store, config)
        self.stack.push_async_callback(asyncio.to_thread, store.close)
        keys = server_keys(config.state_dir)
        server = LoginServer(config, store, keys)
        (address,) = await server.start()
        self.stack.push_async_callback(server.stop, 1.0)
        self.say("login", f"login server on TCP {_show(address)}, its database in login/")
        self.say("login", f"devices pin its Noise key {keys.noise.dh_public.hex()[:16]}...")
        self.say("login", f"its issuer {keys.issuer.key_id.hex()} signs every certificate")
        return Login(store, address, keys)

    async def create_account(self, login: Login, device: Device) -> None:
        password = secrets.token_urlsafe(12)
        hashed = Passwords(DEMO_COST).hash(password)
        await asyncio.to_thread(login.store.add_user, device.user_id, hashed, int(time.time()))
        write_atomic(self.folder / f"{device.name}.password", password.encode(), 0o600)
        self.say("login", f"account {device.user_id!r} created, password in {device.name}.password")

    # -- supernodes

    async def start_supernode(self, name: str, login: Login, bootstrap: str = "") -> None:
        self._certify_supernode(name, login)
        self._write_config(
            name,
            supernode={
                "host": "127.0.0.1",
                "tcp_ports": [],
                "state_dir": name,
                "control_socket": f"{name}.sock",
                "shutdown_grace_seconds": 1,
            },
            overlay={
                "certificate": f"{name}/supernode.cert",
                "issuer_key": login.keys.issuer.public.hex(),
                "address": "127.0.0.1",
                "bootstrap": [_show(self.supernodes[bootstrap])] if bootstrap else [],
                "login_servers": [_show(login.address)],
            },
        )
        daemon = await self.spawn(name, "supernode")
        await daemon.expect("notify", "READY=1", "started")
        if bootstrap:
            await daemon.expect("log", "joined the overlay", "joined the overlay")
        status = await self.status(name)
        host, _, port = str(status["udp"]).rpartition(":")
        self.supernodes[name] = (host, int(port))
        self.say(name, f"ready on UDP and TCP {status['udp']} ({status['port_note']})")
        if bootstrap:
            known = status["overlay"]["contacts"]
            if not known:
                raise DemoFailed(f"{name} joined the overlay but met no other supernode")
            self.say(name, f"joined the overlay through {bootstrap}: knows {known} supernode(s)")

    def _certify_supernode(self, name: str, login: Login) -> None:
        keys = supernode_keys(self.folder / name)
        now = int(time.time())
        certificate = issue(
            login.keys.issuer, serial=secrets.randbits(63), user_id=name, device_id="supernode",
            sign_key=keys.sign_public, dh_key=keys.dh_public,
            not_before=now - 60, not_after=now + CERTIFICATE_HOURS * 3600,
        )  # fmt: skip
        write_atomic(self.folder / name / "supernode.cert", certificate, 0o644)
        self.say("login", f"issued {name}'s certificate over its keys in {name}/")

    async def show_supernodes(self) -> None:
        """What each supernode holds and carried, asked of all at once."""
        names = list(self.supernodes)
        statuses = await asyncio.gather(*(self.ctl(name, "status") for name in names))
        for name, status in zip(names, statuses, strict=True):
            overlay = status["overlay"]
            carried = overlay["presence"].get("forward", 0)
            self.say(
                name,
                f"{overlay['devices']} device(s) attached, {overlay['records']} presence"
                f" record(s) held; passed on {carried} datagram(s) of the devices' session,"
                " unread",
            )

    # -- agents

    async def spawn_agent(self, device: Device, login: Login, supernode: str) -> "Daemon":
        self._write_config(
            device.name,
            account={
                "user_id": device.user_id,
                "device_id": device.device_id,
                "password_file": f"{device.name}.password",
            },
            login={
                "address": _show(login.address),
                "server_key": login.keys.noise.dh_public.hex(),
                "issuer_key": login.keys.issuer.public.hex(),
            },
            supernodes={"bootstrap": [_show(self.supernodes[supernode])]},
            state={"dir": device.name, "control_socket": f"{device.name}.sock"},
            audio={
                "capture": f"file:{device.name}-plays.wav",
                "playback": f"file:{device.name}-heard.wav",
            },
            board={"profile": self.write_board(device)},
        )
        return await self.spawn(device.name, "agent")

    async def until_online(self, device: Device, daemon: "Daemon") -> None:
        await daemon.expect("notify", "READY=1", "started")
        tbs = parse_certificate((self.folder / device.name / CERT_FILE).read_bytes()).tbs
        self.say(
            device.name,
            f"enrolled with its password: certificate {tbs.serial} for "
            f"{tbs.user_id}/{tbs.device_id}, kept in {device.name}/{CERT_FILE}",
        )
        status = await daemon.expect("notify", "STATUS=online via ", "come online")
        self.say(device.name, self._named(status.removeprefix("STATUS=")))

    # -- what the devices do

    async def search_and_send(self, message: str) -> None:
        found = (await self.ctl(INTERCOM.name, "search", PHONE.user_id))["devices"]
        for device in found:
            state = "online" if device["online"] else "last seen"
            self.say(
                INTERCOM.name,
                f"found {PHONE.user_id}/{device['device']}, {state} at supernode "
                + self._named(device["supernode"])
                + f", candidates: {', '.join(device['candidates'])}",
            )
        if not any(device["online"] for device in found):
            raise DemoFailed(f"the intercom found no device of {PHONE.user_id!r} online")
        sent = await self.ctl(INTERCOM.name, "send", PHONE.user_id, message)
        if not sent["delivered_to"]:
            raise DemoFailed(f"the intercom's message reached none of {sent['devices']} device(s)")
        delivered = ", ".join(sent["delivered_to"])
        self.say(INTERCOM.name, f"delivered to {delivered}: encrypted end to end, receipt back")
        waiting = await self.until_board(
            PHONE.name, lambda b: b["leds"]["message"] == "message-waiting", "showing the message"
        )
        self.say(PHONE.name, _board_line(waiting))
        inbox = (await self.ctl(PHONE.name, "messages"))["messages"]
        for got in inbox:
            self.say(PHONE.name, f"inbox: from {got['from']}: {got['text']!r}")
        if not any(got["text"] == message for got in inbox):
            raise DemoFailed("the message is not in the phone's inbox")

    # -- the call

    def write_tune(self, device: Device) -> None:
        write_wav(self.folder / f"{device.name}-plays.wav", melody(device.tune))
        self.say(
            device.name,
            f"will play {_tones(_notes(device))} into calls ({device.name}-plays.wav)"
            f" and record them to {device.name}-heard.wav",
        )

    async def call(self) -> None:
        """The intercom calls the phone, which answers by itself; ~3 s of audio each way,
        then the intercom hangs up."""
        placed = await self.ctl(INTERCOM.name, "call", PHONE.user_id)
        self.say(INTERCOM.name, f"calling {placed['device']}")
        await self.until_calls(
            lambda name, call: name == INTERCOM.name or call["state"] == "ringing", "ringing"
        )
        self.say(PHONE.name, f"ringing: a call from {INTERCOM.user_id}")
        await self.ctl(PHONE.name, "answer")
        await self.follow_call("active")
        frames = round(CALL_SECONDS * RATE / FRAME_SAMPLES)
        self.say("demo", f"letting the call carry {CALL_SECONDS:.0f} s of audio each way")
        call = (await self.ctl(PHONE.name, "status"))["calls"][-1]
        self.say(
            PHONE.name,
            f"call with {call['peer']}: {call['state']} on a {call['path']} path,"
            f" rtt {call['rtt_ms']} ms, {call['frames_received']} frames received so far",
        )
        await self.until_calls(lambda _, call: call["frames_received"] >= frames, "carried audio")
        await self.ctl(INTERCOM.name, "hangup")
        ended = await self.follow_call("ended")
        for device in (INTERCOM, PHONE):
            call = ended[device.name]
            self.say(
                device.name,
                f"call ended ({call['reason']}): {call['frames_sent']} frames sent,"
                f" {call['frames_received']} received",
            )

    async def follow_call(self, state: str) -> dict[str, JsonObject]:
        """Say each state the devices' calls pass through until both are in ``state``."""
        shown: dict[str, str] = {}

        def show(name: str, call: JsonObject) -> bool:
            if shown.get(name) != call["state"]:
                shown[name] = call["state"]
                path = f" on a {call['path']} path" if state == "active" else ""
                self.say(name, f"call with {call['peer']}: {call['state']}{path}")
            return bool(call["state"] == state)

        return await self.until_calls(show, f"a call that is {state}")

    async def until_calls(
        self, done: Callable[[str, JsonObject], bool], what: str
    ) -> dict[str, JsonObject]:
        """Poll both devices' latest call until ``done(name, call)`` holds for both;
        a device that has no call yet (the invitation is on its way) is not done."""
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                while True:
                    calls = await self.latest_calls()
                    # Every device is asked, so that each says its own new state.
                    finished = [done(name, call) for name, call in calls.items()]
                    if len(finished) == 2 and all(finished):
                        return calls
                    await asyncio.sleep(POLL)
        except TimeoutError:
            raise DemoFailed(f"the devices had no {what} after {STEP_TIMEOUT:.0f} s") from None

    async def latest_calls(self) -> dict[str, JsonObject]:
        """Each device's latest call, by name; one without a call yet is left out."""
        names = [INTERCOM.name, PHONE.name]
        statuses = await asyncio.gather(*(self.status(name) for name in names))
        return {
            name: status["calls"][-1]
            for name, status in zip(names, statuses, strict=True)
            if status["calls"]
        }

    # -- the boards: buttons, LEDs and the door strike on gpiozero mock pins

    def write_board(self, device: Device) -> str:
        """The device's board profile, from hw/, with the people filled in: the intercom
        rings the phone's user; the phone's first speed dial is the intercom."""
        name = "intercom-pizero2w" if device is INTERCOM else "desk-phone-pi4"
        source = HW / f"{name}.toml"
        if not source.is_file():
            raise DemoFailed(f"no board profile {source}: run the demo from the source tree")
        text = source.read_text()
        if device is INTERCOM:
            text = text.replace("targets = []", f'targets = ["{PHONE.user_id}"]', 1)
            text = text.replace("door_open_ms = 3000", f"door_open_ms = {DOOR_OPEN_MS}")
        else:
            text = text.replace('speed_dial = ["", ', f'speed_dial = ["{INTERCOM.user_id}", ')
        write_atomic(self.folder / f"{device.name}-board.toml", text.encode(), 0o644)
        return f"{device.name}-board.toml"

    async def door_story(self) -> None:
        """The intercom's button rings the phone; the phone goes off hook, opens the
        door, goes on hook; the LEDs and the relay told at each step."""
        self.say("demo", "the boards run on gpiozero mock pins (GPIOZERO_PIN_FACTORY=mock)")
        await self.show_board(INTERCOM.name)
        await self.ctl(INTERCOM.name, "button", "call", "press")
        await self.until_board(PHONE.name, lambda b: b["leds"]["ring"] == "ringing", "ringing")
        await self.show_board(PHONE.name)
        await self.ctl(INTERCOM.name, "button", "call", "release")
        self.say(PHONE.name, "lifting the handset: the hook switch closes")
        await self.ctl(PHONE.name, "button", "hook", "press")
        await self.follow_call("active")
        await self.until_board(INTERCOM.name, lambda b: b["leds"]["status"] == "in-call", "lit")
        for name in (PHONE.name, INTERCOM.name):
            await self.show_board(name)
        await self.ctl(PHONE.name, "door", "open")
        opened = await self.until_board(
            INTERCOM.name, lambda b: b["relays"]["door"] == "on", "its door strike energised"
        )
        self.say(INTERCOM.name, f"door strike on: {_board_line(opened)}")
        closed = await self.until_board(
            INTERCOM.name, lambda b: b["relays"]["door"] == "off", "its door strike released"
        )
        self.say(INTERCOM.name, f"door strike off again after {DOOR_OPEN_MS} ms")
        self.say(PHONE.name, "putting the handset down: the hook switch opens")
        await self.ctl(PHONE.name, "button", "hook", "release")
        await self.follow_call("ended")
        for name in (PHONE.name, INTERCOM.name):
            await self.show_board(name)
        if closed["counters"].get("door opened") != 1:
            raise DemoFailed(f"the intercom counted {closed['counters']} of the door")

    async def show_board(self, name: str) -> None:
        self.say(name, _board_line((await self.status(name))["board"]))

    async def until_board(
        self, name: str, done: Callable[[JsonObject], bool], what: str
    ) -> JsonObject:
        """Poll ``name``'s board status until ``done(board)`` holds."""
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                while True:
                    board: JsonObject = (await self.status(name))["board"]
                    if done(board):
                        return board
                    await asyncio.sleep(POLL)
        except TimeoutError:
            raise DemoFailed(
                f"the {name}'s board was not {what} after {STEP_TIMEOUT:.0f} s"
            ) from None

    def check_recordings(self) -> None:
        """Each side's recording holds the other side's tones, and none of its own."""
        every = sorted({*_notes(PHONE), *_notes(INTERCOM)})
        for listener, speaker in ((PHONE, INTERCOM), (INTERCOM, PHONE)):
            name = f"{listener.name}-heard.wav"
            rate, pcm = read_wav(self.folder / name)
            found = list(dict.fromkeys(heard(pcm, every, rate=rate)))
            seconds = len(pcm) / (2 * rate)
            played = _notes(speaker)
            if sorted(found) != sorted(played):
                raise DemoFailed(
                    f"{name} ({seconds:.1f} s) holds {_tones(found)},"
                    f" not the {speaker.name}'s {_tones(played)}"
                )
            self.say(
                listener.name,
                f"{name}: {seconds:.1f} s, dominant tones {_tones(found)}"
                f" = what the {speaker.name} played",
            )

    # -- running the daemons

    async def spawn(self, name: str, role: str) -> "Daemon":
        """Start ``edge ROLE --config NAME.toml`` in the state folder, notifying NAME.notify."""
        argv = [role, "--config", f"{name}.toml"]
        self.say("demo", f"$ edge {shlex.join(argv)}")
        daemon = await Daemon.start(name, self.folder, self.timeline, *argv)
        self.stack.push_async_callback(daemon.close)
        self.daemons[name] = daemon
        return daemon

    async def stop(self, daemons: list["Daemon"]) -> None:
        codes = await asyncio.gather(*(daemon.stop() for daemon in daemons))
        for daemon, code in zip(daemons, codes, strict=True):
            if code != 0:
                raise DemoFailed(f"{daemon.name} exited with status {code}{daemon.last_words()}")
            self.say(daemon.name, "stopped, exit status 0")

    async def status(self, name: str) -> JsonObject:
        """A daemon's ``status``, asked in-process (plumbing, not part of the story)."""
        answer = await control_request(self.folder / f"{name}.sock", "status", timeout=STEP_TIMEOUT)
        if not answer["ok"]:
            raise DemoFailed(f"{name} refused its status: {answer['error']['message']}")
        result: JsonObject = answer["result"]
        return result

    async def ctl(self, who: str, *words: str) -> JsonObject:
        """Run ``edge ctl --socket WHO.sock WORDS`` as a user would; its JSON result."""
        argv = ["edge", "ctl", "--socket", f"{who}.sock", *words]
        command = shlex.join(argv)
        self.say(who, f"$ {command}")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *argv, cwd=self.folder,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                out, err = await process.communicate()
        except TimeoutError:
            raise DemoFailed(f"`{command}` had no answer after {STEP_TIMEOUT:.0f} s") from None
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        answer = _json_object(out)
        if process.returncode != 0 or answer is None:
            why = answer.get("error", {}).get("message") if answer else err.decode().strip()
            raise DemoFailed(f"`{command}` failed (exit status {process.returncode}): {why}")
        return answer

    def _write_config(self, name: str, **sections: dict[str, Any]) -> None:
        lines = []
        for section, keys in sections.items():
            lines.append(f"[{section}]")
            # JSON strings, numbers and arrays of them are valid TOML as they are.
            lines.extend(f"{key} = {json.dumps(value)}" for key, value in keys.items())
            lines.append("")
        write_atomic(self.folder / f"{name}.toml", "\n".join(lines).encode(), 0o600)

    def _named(self, text: str) -> str:
        """``text`` with the supernode it names, by name."""
        for name, address in self.supernodes.items():
            if _show(address) in text:
                return f"{text} ({name})"
        return text


# -- one daemon, as a service manager sees it ---------------------------------------------


class Daemon:
    """An ``edge`` daemon started as systemd starts one, with a NOTIFY_SOCKET of its own.

    What it notifies and what it logs (its stderr) are read as they come;
    :meth:`expect` waits for the next that says something, and fails at once,
    with the daemon's last log line, if the daemon exits first.
    """

    def __init__(
        self,
        name: str,
        process: asyncio.subprocess.Process,
        listener: socket.socket,
        timeline: Timeline,
    ) -> None:
        self.name = name
        self.process = process
        self._listener = listener
        self._timeline = timeline
        self._tail: deque[str] = deque(maxlen=LOG_TAIL)
        self._heard: dict[str, asyncio.Queue[str | None]] = {
            "notify": asyncio.Queue(),
            "log": asyncio.Queue(),
        }
        self._notices = asyncio.create_task(self._read_notices())
        self._log = asyncio.create_task(self._read_log())

    @classmethod
    async def start(cls, name: str, folder: Path, timeline: Timeline, *argv: str) -> "Daemon":
        path = folder / f"{name}.notify"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(str(path))
            listener.setblocking(False)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge", *argv, cwd=folder,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, limit=1 << 20,
                env={**os.environ, "NOTIFY_SOCKET": str(path), **MOCK_PINS},
            )  # fmt: skip
        except BaseException:
            listener.close()
            raise
        return cls(name, process, listener, timeline)

    async def expect(self, kind: str, text: str, what: str) -> str:
        """The next line of ``kind`` ("notify" or "log") that holds ``text``; ``what``
        the daemon has then done, for the error when that line does not come."""
        queue = self._heard[kind]
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                while (line := await queue.get()) is not None:
                    if text in line:
                        return line
                queue.put_nowait(None)
                code = await self.process.wait()
        except TimeoutError:
            raise DemoFailed(
                f"{self.name} has not {what} after {STEP_TIMEOUT:.0f} s{self.last_words()}"
            ) from None
        raise DemoFailed(
            f"{self.name} exited with status {code} before it {what}{self.last_words()}"
        )

    async def stop(self) -> int:
        """SIGTERM, as a service manager stops a service; its exit status."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                code = await self.process.wait()
                await self._log
        except TimeoutError:
            raise DemoFailed(f"{self.name} did not stop after {STEP_TIMEOUT:.0f} s") from None
        return code

    async def close(self) -> None:
        """Kill it if it still runs (the demo failed) and let go of its socket."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        for task in (self._notices, self._log):
            task.cancel()
        await asyncio.gather(self._notices, self._log, return_exceptions=True)
        self._listener.close()

    def last_words(self) -> str:
        return f" (its last log line: {self._tail[-1]})" if self._tail else ""

    async def _read_notices(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            datagram = await loop.sock_recv(self._listener, notify.MAX_STATE_BYTES)
            for line in datagram.decode("utf-8", "replace").splitlines():
                self._heard["notify"].put_nowait(line)

    async def _read_log(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            self._timeline.relay(self.name, line)
            self._heard["log"].put_nowait(line)
        for queue in self._heard.values():
            queue.put_nowait(None)


def _json_object(data: bytes) -> JsonObject | None:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _tones(frequencies: Iterable[float]) -> str:
    """ "659, 523 Hz": the frequencies, rests (0 Hz) left out."""
    named = [str(round(hz)) for hz in frequencies if hz]
    return f"{', '.join(named)} Hz" if named else "no tone"


def _notes(device: Device) -> list[float]:
    return [hz for hz, _ in device.tune if hz]


MOCK_PINS = {"GPIOZERO_PIN_FACTORY": "mock", "GPIOZERO_MOCK_PIN_CLASS": "mockpwmpin"}
"""What has the daemons' boards run on gpiozero's mock pins (dimming LEDs included)."""


def _board_line(board: JsonObject) -> str:
    """A board's LEDs and relays, as one line of the timeline."""
    leds = ", ".join(f"{name} {state}" for name, state in board["leds"].items())
    relays = "".join(f"; relay {name} {state}" for name, state in board["relays"].items())
    return f"LEDs: {leds}{relays}"


def _show(address: Address) -> str:
    return f"{address[0]}:{address[1]}"

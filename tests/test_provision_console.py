"""The serial provisioning console: its core driven with bytes and times, and
``edge console`` run for real on one end of a pty pair, a terminal on the other."""

import asyncio
import json
import math
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from gpiozero.pins.mock import MockFactory, MockPWMPin
from hypothesis import given
from hypothesis import strategies as st

from edge.client import config as agent_config
from edge.client.agent import KEY_FILE
from edge.crypto.keys import DeviceKeys
from edge.media import tones
from edge.provision.console import (
    LINE_MAX,
    Console,
    Lock,
    Mode,
    pin_delay,
)
from edge.provision.errors import ConsoleUsageError, ProvisionError
from edge.provision.events import CommandRequested, PinOffered
from edge.provision.provisioner import Provisioner, dump_toml
from edge.provision.serialport import ConsolePort
from edge.runtime.config import loads

KEY_A = "11" * 32
KEY_B = "22" * 32
DEADLINE = 30.0
HW = Path(__file__).parent.parent / "hw"


# -- the core, bytes and times in ------------------------------------------------------


def open_console(mode: Mode = Mode.LINE) -> Console:
    console = Console(pin_set=False, jumper=True, mode=mode)
    console.data_to_send()
    return console


def test_line_mode_echoes_rubs_out_and_ends_lines_on_cr_lf_and_crlf() -> None:
    console = open_console()
    console.receive(b"statuz\x7f\x08us\r\n", 0.0)
    assert console.data_to_send() == b"statuz\b \b\b \bus\r\n"
    assert console.next_event() == CommandRequested("status", {})
    console.complete("fine", 0.0)
    assert console.data_to_send() == b"fine\r\nedge> "
    console.receive(b"junk\x15keys\n", 0.0)
    assert console.data_to_send() == b"junk" + b"\b \b" * 4 + b"keys\r\n"
    assert console.next_event() == CommandRequested("keys", {})


def test_arrow_keys_and_control_bytes_are_ignored_and_counted() -> None:
    console = open_console()
    console.receive(b"\x1b[A\x1b[1;5Cst\x00\x07\xffatus\r", 0.0)
    assert console.next_event() == CommandRequested("status", {})
    assert console.stats["noise"] == 5
    assert b"\x1b" not in console.data_to_send()


def test_a_control_byte_ends_an_escape_sequence_and_still_counts() -> None:
    console = open_console()
    console.receive(b"\x1b[12\rstatus\r", 0.0)
    assert console.data_to_send().startswith(b"\r\nedge> status")
    assert console.next_event() == CommandRequested("status", {})


def test_an_over_long_line_is_refused_not_buffered() -> None:
    console = open_console()
    console.receive(b"x" * (LINE_MAX * 4), 0.0)
    assert console.data_to_send() == b"x" * LINE_MAX
    console.receive(b"\r", 0.0)
    assert b"error: line longer than 512 characters: refused" in console.data_to_send()
    assert console.next_event() is None
    assert console.stats["overlong"] == 1
    console.receive(b"status\r", 0.0)
    assert console.next_event() == CommandRequested("status", {})


def test_set_takes_the_rest_of_the_line_as_the_value() -> None:
    console = open_console()
    console.receive(b"set password two words  \r", 0.0)
    assert console.next_event() == CommandRequested(
        "set", {"name": "password", "value": "two words"}
    )


def test_lines_typed_while_a_command_runs_wait_in_order_and_are_capped() -> None:
    console = open_console()
    console.receive(b"status\r" + b"export\r" * 20, 0.0)
    assert console.next_event() == CommandRequested("status", {})
    assert console.next_event() is None
    assert console.stats["dropped"] == 20 - 16
    console.complete({}, 1.0)
    assert console.next_event() == CommandRequested("export", {})
    with pytest.raises(ConsoleUsageError):
        console.pin_checked(True, 1.0)
    with pytest.raises(ConsoleUsageError):
        open_console().fail("failed", "nothing was asked", 1.0)


def test_wrong_pins_double_the_wait_and_attempts_meanwhile_are_refused() -> None:
    assert [pin_delay(n) for n in range(5)] == [0, 1, 2, 4, 8]
    assert pin_delay(40) == 600
    console = Console(pin_set=True)
    assert console.data_to_send().endswith(b"PIN: ")
    console.receive(b"status\r", 0.0)  # not a PIN: refused without a guess counted
    assert console.next_event() is None
    assert b"a PIN is 4 to 16 digits" in console.data_to_send()
    console.receive(b"1111\r", 0.0)
    assert console.data_to_send().endswith(b"****\r\n")
    assert console.next_event() == PinOffered("1111", new=False)
    console.pin_checked(False, 10.0)
    console.receive(b"2222\r", 10.5)
    assert console.next_event() is None
    assert b"too many wrong PINs (1): wait 0 s" in console.data_to_send()
    console.receive(b"2222\r", 11.0)
    assert console.next_event() == PinOffered("2222", new=False)
    console.pin_checked(False, 11.0)
    assert b"wrong PIN (2 wrong so far); wait 2 s" in console.data_to_send()
    console.receive(b"3333\r", 12.9)
    assert console.next_event() is None
    console.receive(b"3333\r", 13.0)
    assert console.next_event() == PinOffered("3333", new=False)
    console.pin_checked(True, 13.0)
    assert console.lock is Lock.OPEN
    assert (console.stats["wrong_pin"], console.stats["throttled"]) == (2, 2)


def test_an_open_console_locks_itself_after_five_idle_minutes() -> None:
    console = Console(pin_set=True)
    console.receive(b"1234\r", 100.0)
    console.next_event()
    assert console.get_timer() is None  # not while the PIN is being checked
    console.pin_checked(True, 100.1)
    assert console.get_timer() == 400.0
    console.receive(b"set user half-typ", 200.0)
    assert console.get_timer() == 500.0
    console.handle_timer(499.9)
    assert console.get_timer() == 500.0  # still open
    console.data_to_send()
    console.handle_timer(500.0)
    assert console.lock is Lock.LOCKED
    assert console.data_to_send() == b"\r\nlocked after 300 s without input\r\nPIN: "
    assert console.get_timer() is None
    console.receive(b"ed\r", 501.0)  # the rest of the old line is no command now
    assert console.next_event() is None


def test_changing_the_pin_asks_twice_and_shows_nothing() -> None:
    console = open_console()
    console.receive(b"pin\r", 0.0)
    assert console.data_to_send().endswith(b"set a provisioning PIN (4 to 16 digits): ")
    console.receive(b"5678\r5678\r", 0.0)
    assert b"5678" not in console.data_to_send()
    assert console.next_event() == PinOffered("5678", new=True)
    console.pin_checked(True, 0.0)
    assert console.data_to_send() == b"PIN changed\r\nedge> "


def test_wrong_pins_before_a_restart_still_cost_their_wait() -> None:
    console = Console(pin_set=True, failures=3, now=50.0)
    console.receive(b"1234\r", 53.9)
    assert b"too many wrong PINs (3): wait 0 s" in console.data_to_send()
    console.receive(b"1234\r", 54.0)
    assert console.next_event() == PinOffered("1234", new=False)


def test_a_new_pin_is_typed_twice_and_must_match() -> None:
    console = Console(pin_set=False)
    console.receive(b"status\r", 0.0)
    assert b"a PIN is 4 to 16 digits" in console.data_to_send()
    console.receive(b"1234\r4321\r", 0.0)
    assert b"the two PINs differ" in console.data_to_send()
    assert console.next_event() is None
    console.receive(b"1234\r1234\r", 0.0)
    assert console.next_event() == PinOffered("1234", new=True)


def test_machine_mode_answers_each_json_line_with_one_json_line() -> None:
    console = open_console(mode=Mode.MACHINE)
    console.receive(b'{"cmd": "status", "id": 7}\n', 0.0)
    assert console.next_event() == CommandRequested("status", {})
    console.complete({"pin": True}, 0.0)
    assert json.loads(console.data_to_send()) == {"ok": True, "result": {"pin": True}, "id": 7}
    console.receive(b'not json\n[1]\n{"cmd": "nope"}\n\xff\xfe\n{"cmd": "set", "args": 3}\n', 0.0)
    replies = [json.loads(line) for line in console.data_to_send().splitlines()]
    assert [r["error"]["code"] for r in replies] == [
        "bad-json",
        "bad-json",
        "unknown-command",
        "not-utf8",
        "bad-args",
    ]
    assert console.stats["bad_json"] == 2


@given(st.text(max_size=64))
def test_any_text_value_survives_the_toml_writer(value: str) -> None:
    text = dump_toml({"account": {"user_id": value, "list": [value, "x"]}})
    assert tomllib.loads(text) == {"account": {"user_id": value, "list": [value, "x"]}}


# -- edge console over a pty -----------------------------------------------------------


class Terminal:
    """The installer's side of a pty whose other end ``edge console`` holds."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo by the pty itself before the console opens it
        self.seen = b""
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge",
                "console",
                "--port",
                os.ttyname(self._slave),
                "--config",
                str(tmp_path / "agent.toml"),
                "--reboot-command",
                f"touch {tmp_path / 'rebooted'}",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if "--machine" in extra:
            self.expect(b'"result":"edge provisioning console, machine mode"}\n')

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, wanted: bytes) -> bytes:
        """Everything up to and including ``wanted``, waiting for it to come."""
        deadline = time.monotonic() + DEADLINE
        while wanted not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {wanted!r} in {self.seen[-400:]!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                self.seen += os.read(self.master, 4096)
        end = self.seen.index(wanted) + len(wanted)
        got, self.seen = self.seen[:end], self.seen[end:]
        return got

    def ask(self, cmd: str, **args: object) -> dict[str, object]:
        self.send(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
        reply: dict[str, object] = json.loads(self.expect(b"\n"))
        return reply

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process.stderr.close()  # type: ignore[union-attr]
        os.close(self.master)
        os.close(self._slave)


@pytest.fixture
def terminals(tmp_path: Path) -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def start(terminals: list[Terminal], tmp_path: Path, *extra: str) -> Terminal:
    terminal = Terminal(tmp_path, *extra)
    terminals.append(terminal)
    return terminal


def test_a_person_sets_a_pin_edits_and_is_told_why_a_value_is_wrong(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    term = start(terminals, tmp_path)
    term.expect(b"set a provisioning PIN (4 to 16 digits): ")
    term.send(b"2468\r")
    term.expect(b"the same PIN again: ")
    term.send(b"2468\r")
    term.expect(b"unlocked\r\nedge> ")
    term.send(b"hepl\x7f\x7flp\r")
    assert term.expect(b"edge> ").startswith(b"hepl\b \b\b \blp\r\nhelp: list the commands")
    term.send(b"set user alice\r")
    assert b"account.user_id set" in term.expect(b"edge> ")
    term.send(b"set login nowhere:99999\r")
    said = term.expect(b"edge> ")
    assert b"error: key 'login.address': " in said and b"99999" in said
    term.send(b"set server-key 1234\r")
    assert b"expected 64 hex digits (32 bytes), got 4 characters" in term.expect(b"edge> ")
    term.send(b"set colour blue\r")
    assert b"error: cannot set 'colour': expected one of password, user" in term.expect(b"edge> ")
    term.send(b"gpio\r")
    assert b"no board profile is configured" in term.expect(b"edge> ")
    term.send(b"network\r")
    assert b"nmcli is not installed" in term.expect(b"edge> ")
    term.send(b"status\r")
    said = term.expect(b"edge> ")
    assert b"user: alice\r\n" in said
    assert b"missing: account.device_id, login.address" in said
    assert tomllib.loads((tmp_path / "agent.toml").read_text()) == {"account": {"user_id": "alice"}}


def test_noise_garbage_and_over_long_lines_leave_the_console_working(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    term = start(terminals, tmp_path)
    term.expect(b"PIN (4 to 16 digits): ")
    noise = random.Random(7).randbytes(3000)
    term.send(noise)
    term.send(b"\x15" + b"y" * 5000 + b"\r")
    term.expect(b"error: line longer than 512 characters: refused")
    term.send(b"\x1b[B\x15machine\r")
    term.expect(b'{"ok":true,"result":"machine mode"}\n')
    assert term.ask("status")["error"]["code"] == "locked"  # type: ignore[index]
    term.send(b"\xff\x00{{{\n" + b"z" * 200_000 + b"\n")
    term.expect(b'"code":"not-utf8"')
    term.expect(b'"code":"too-long","message":"line longer than 98304 characters: refused"}}\n')
    assert term.ask("unlock", pin="97531")["result"] == "unlocked"
    status = term.ask("status")["result"]
    assert isinstance(status, dict)
    counted = status["line"]
    assert counted["overlong"] == 2 and counted["noise"] > 100, counted
    assert (tmp_path / "console.pin").exists()
    assert term.process.poll() is None


def test_a_device_is_provisioned_from_zero_in_machine_mode(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    term = start(terminals, tmp_path, "--machine")
    assert term.ask("status")["error"] == {
        "code": "locked",
        "message": "locked: give the provisioning PIN first",
    }
    assert term.ask("unlock", pin="1357")["ok"] is True
    status = term.ask("status")["result"]
    assert isinstance(status, dict)
    assert (status["configured"], status["problem"]) == (False, None)
    assert len(status["missing"]) == 5
    settings = {
        "user": "alice",
        "device": "desk-1",
        "login": "198.18.0.10:4443",
        "server-key": KEY_A,
        "issuer-key": KEY_B,
        "bootstrap": "198.18.0.20:33033, 198.18.0.21:33033",
        "state-dir": "state",
        "password": "correct horse",
    }
    for name, value in settings.items():
        assert term.ask("set", name=name, value=value)["ok"] is True, name
    keys = term.ask("keys")["result"]
    assert isinstance(keys, dict) and keys["new"] is True
    status = term.ask("status")["result"]
    assert isinstance(status, dict)
    assert (status["configured"], status["missing"]) == (True, [])

    config = agent_config.read(tmp_path / "agent.toml")
    assert (config.user_id, config.device_id) == ("alice", "desk-1")
    assert config.login_address == ("198.18.0.10", 4443)
    assert (config.server_key, config.issuer_key) == (bytes.fromhex(KEY_A), bytes.fromhex(KEY_B))
    assert config.bootstrap == (("198.18.0.20", 33033), ("198.18.0.21", 33033))
    assert config.state_dir == tmp_path / "state"
    assert config.password_file is not None
    assert config.password_file.read_text() == "correct horse\n"
    stored = DeviceKeys.load(tmp_path / "state" / KEY_FILE)
    assert keys["ed25519"] == stored.sign_public.hex()
    assert term.ask("keys")["result"] == {**keys, "new": False}


def test_the_pin_is_asked_again_after_a_restart_and_wrong_ones_are_throttled(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    Provisioner(tmp_path / "agent.toml").set_pin("8642")
    term = start(terminals, tmp_path)
    term.expect(b"PIN: ")
    term.send(b"status\r")
    term.expect(b"error: a PIN is 4 to 16 digits\r\nPIN: ")
    # The right PIN typed straight after a wrong one waits behind its check, then
    # meets the wait the wrong one earned.
    term.send(b"1111\r8642\r")
    said = term.expect(b"too many wrong PINs (1): wait 1 s and try again\r\nPIN: ")
    assert b"error: wrong PIN (1 wrong so far); wait 1 s" in said
    assert b"8642" not in said
    term.send(b"machine\r")
    term.expect(b'"result":"machine mode"}\n')
    assert term.ask("export")["error"] == {
        "code": "locked",
        "message": "locked: give the provisioning PIN first",
    }
    # Hanging up buys no fresh guess: the wrong PIN is remembered, its wait runs again.
    term.close()
    terminals.remove(term)
    assert Provisioner(tmp_path / "agent.toml").wrong_pins() == 1
    term = start(terminals, tmp_path, "--machine")
    refused = term.ask("unlock", pin="8642")["error"]
    assert isinstance(refused, dict) and refused["code"] == "throttled"
    assert refused["message"].startswith("too many wrong PINs (1): wait ")
    # Waiting out the throttle is what is tested here: try again until let in.
    deadline = time.monotonic() + DEADLINE
    while (reply := term.ask("unlock", pin="8642"))["ok"] is not True:
        assert reply["error"]["code"] == "throttled"  # type: ignore[index]
        assert time.monotonic() < deadline
    assert Provisioner(tmp_path / "agent.toml").wrong_pins() == 0


def test_export_import_round_trip_and_a_wrong_import_changes_nothing(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    term = start(terminals, tmp_path, "--machine")
    term.ask("unlock", pin="1234")
    for name, value in {"user": "bob", "device": "door", "login": "login.example.net"}.items():
        term.ask("set", name=name, value=value)
    exported = term.ask("export")["result"]
    assert isinstance(exported, str)
    complete = exported + f'server_key = "{KEY_A}"\nissuer_key = "{KEY_B}"\n'
    assert term.ask("import", toml=complete)["result"] == "configuration imported"
    assert agent_config.read(tmp_path / "agent.toml").server_key == bytes.fromhex(KEY_A)
    before = (tmp_path / "agent.toml").read_bytes()
    refused = term.ask("import", toml=complete.replace('"door"', '"door"\ncolour = "red"'))
    assert "unknown key 'account.colour'" in refused["error"]["message"]  # type: ignore[index]
    assert "account" not in term.ask("import", toml=exported)["error"]["code"]  # type: ignore[index]
    assert (tmp_path / "agent.toml").read_bytes() == before

    term.send(b'{"cmd": "line"}\n')
    term.expect(b"edge> ")
    term.send(b"import\r")
    term.expect(b"a single '.'\r\n")
    term.send(complete.replace("bob", "carol").replace("\n", "\r").encode() + b".\r")
    assert b"configuration imported" in term.expect(b"edge> ")
    assert agent_config.read(tmp_path / "agent.toml").user_id == "carol"


def test_factory_reset_asks_first_then_erases_and_reboot_runs_its_command(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    term = start(terminals, tmp_path)
    term.expect(b": ")
    term.send(b"1234\r1234\r")
    term.expect(b"edge> ")
    for line in (b"set user eve", b"set state-dir st", b"set password pw", b"keys"):
        term.send(line + b"\r")
        term.expect(b"edge> ")
    term.send(b"factory-reset\r")
    term.expect(b"type 'yes': ")
    term.send(b"no\r")
    assert b"factory reset cancelled" in term.expect(b"edge> ")
    assert (tmp_path / "agent.toml").exists()
    term.send(b"factory-reset\r")
    term.expect(b"type 'yes': ")
    term.send(b"yes\r")
    said = term.expect(b"set a provisioning PIN (4 to 16 digits): ")
    for gone in ("agent.toml", "console.pin", "agent.password", f"st/{KEY_FILE}"):
        assert str(tmp_path / gone).encode() in said
        assert not (tmp_path / gone).exists()
    term.send(b"4321\r4321\r")
    term.expect(b"edge> ")
    term.send(b"reboot\r")
    assert b"rebooting" in term.expect(b"edge> ")
    assert (tmp_path / "rebooted").exists()


# -- a power cut during a write ----------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edge.provision.provisioner import Provisioner

    provisioner = Provisioner(Path(sys.argv[1]))
    # Two hundred supernodes make each write some kilobytes long.
    many = [f"198.18.{n // 250}.{n % 250 + 1}:33033" for n in range(200)]
    given = {"device": "d", "login": "login.example.net", "server-key": "11" * 32,
             "issuer-key": "22" * 32, "bootstrap": many}
    for name, value in given.items():
        provisioner.run("set", {"name": name, "value": value})
    for round in range(1_000_000):
        provisioner.run("set", {"name": "user", "value": f"user-{round}-" + "x" * 40})
        print(round, flush=True)
    """
)


def test_a_write_killed_midway_leaves_the_old_or_the_new_config(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    chance = random.Random(11)
    for _ in range(12):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        for _ in range(chance.randint(1, 30)):
            last = int(writer.stdout.readline())
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        for line in writer.stdout.read().splitlines():
            last = int(line)
        writer.stdout.close()
        config = agent_config.from_doc(loads(path.read_text(), str(path)))
        assert len(config.bootstrap) == 200
        # The round printed last was written; the one after it may have been too.
        assert config.user_id in (f"user-{last}-" + "x" * 40, f"user-{last + 1}-" + "x" * 40)
    Provisioner(path).sweep_temporaries()
    assert [p.name for p in tmp_path.iterdir()] == ["agent.toml"]


# -- the GPIO test on gpiozero's mock pins -------------------------------------------


class PtyEnd:
    """The terminal's end of a pty, read on the event loop."""

    def __init__(self, master: int) -> None:
        self.master, self.seen = master, b""
        self._grew = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _readable(self) -> None:
        self.seen += os.read(self.master, 4096)
        self._grew.set()

    async def expect(self, wanted: bytes) -> bytes:
        async with asyncio.timeout(DEADLINE):
            while wanted not in self.seen:
                self._grew.clear()
                await self._grew.wait()
        end = self.seen.index(wanted) + len(wanted)
        got, self.seen = self.seen[:end], self.seen[end:]
        return got

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)


def test_gpio_shows_each_press_as_it_comes_and_blinks_each_led(tmp_path: Path) -> None:
    shutil.copy(HW / "intercom-pizero2w.toml", tmp_path / "door.toml")
    provisioner = Provisioner(tmp_path / "agent.toml")
    provisioner.run("set", {"name": "profile", "value": "door.toml"})
    provisioner.set_pin("1234")
    factory = MockFactory(pin_class=MockPWMPin)
    button = factory.pin(17)  # [buttons.call] of the profile, pulled up
    led = factory.pin(12)  # [leds.status]

    async def session() -> bytes:
        master, slave = os.openpty()
        tty.setraw(slave)
        port = serial.serial_for_url(os.ttyname(slave), timeout=0)
        console = ConsolePort(port, provisioner, Mode.MACHINE, pin_factory=factory)
        serving = asyncio.create_task(console.serve())
        term = PtyEnd(master)
        try:
            await term.expect(b'machine mode"}\n')
            os.write(master, b'{"cmd": "unlock", "args": {"pin": "1234"}}\n')
            await term.expect(b'"result":"unlocked"}\n')
            os.write(master, b'{"cmd": "gpio", "args": {"seconds": 3}}\n')
            await term.expect(b'{"progress":"door: press each button within 3 s"}\n')
            await term.expect(b'{"progress":"LED status blinking"}\n')
            await asyncio.to_thread(button.drive_low)
            await term.expect(b'{"progress":"button call pressed"}\n')
            await asyncio.to_thread(button.drive_high)
            await term.expect(b'{"progress":"button call released"}\n')
            return await term.expect(b"}}\n")
        finally:
            term.close()
            await asyncio.wait_for(serving, DEADLINE)
            port.close()
            os.close(slave)

    said = asyncio.run(session())
    assert json.loads(said.splitlines()[-1]) == {
        "ok": True,
        "result": {"pressed": ["call"], "leds": ["status"]},
    }
    assert any(state.state > 0 for state in led.states)
    assert led.state == 0


def test_gpio_without_a_board_profile_says_so(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="no board profile is configured"):
        Provisioner(tmp_path / "agent.toml").board_profile()


# -- the sound test on the ALSA test card ------------------------------------------------

MIC_HZ = 440.0


def test_audio_plays_a_tone_and_measures_what_the_microphone_hears(tmp_path: Path) -> None:
    """In a child process, as PortAudio reads the ALSA configuration once, at start."""
    from tests.test_media_sound import last_json, on_test_card

    done = on_test_card(tmp_path, ["dev"], f"{__name__}:sound_child", str(tmp_path))
    result = last_json(done)
    assert result["tone"] == "1000 Hz, 1 s"
    # The microphone hears a tone at tones.AMPLITUDE of full scale.
    expected = 20 * math.log10(tones.AMPLITUDE)
    assert expected - 3 <= result["input_peak_dbfs"] <= expected + 1
    assert tones.heard((tmp_path / "played.raw").read_bytes(), [MIC_HZ, 1000.0]) == [1000.0]


def sound_child(argv: list[str]) -> None:
    from tests.test_media_sound import Mic, Speaker

    folder = Path(argv[0])
    mic = Mic(folder / "dev-mic.fifo", tones.RATE, tones.tone(MIC_HZ, 1.0))
    speaker = Speaker(folder / "dev-spk.fifo", tones.RATE)
    mic.plug()
    speaker.plug()
    provisioner = Provisioner(folder / "agent.toml")
    try:
        provisioner.run("set", {"name": "user", "value": "a"})
        text = (folder / "agent.toml").read_text()
        (folder / "agent.toml").write_text(
            text + '[audio]\ncapture = "dev-mic"\nplayback = "dev-spk"\n'
        )
        print(json.dumps(provisioner.run("audio", {})))
    finally:
        mic.stop()
        speaker.stop()
        (folder / "played.raw").write_bytes(speaker.heard())


def test_network_hands_wifi_to_nmcli_and_reports_its_failure(tmp_path: Path) -> None:
    # A stand-in for NetworkManager's command line, which this machine lacks.
    nmcli = tmp_path / "nmcli"
    nmcli.write_text(
        '#!/bin/sh\necho "$@" >> "$0.log"\n'
        '[ "$4" = "Nowhere" ] && echo "No network" >&2 && exit 10\n'
        "echo wlan0:wifi:connected:Shop\n"
    )
    nmcli.chmod(0o755)
    provisioner = Provisioner(tmp_path / "agent.toml", nmcli=str(nmcli))
    assert provisioner.run("network", {}) == ["wlan0:wifi:connected:Shop"]
    provisioner.run("network", {"action": "wifi", "ssid": "Shop", "password": "secret123"})
    with pytest.raises(ProvisionError, match=r"nmcli failed \(exit 10\): No network"):
        provisioner.run("network", {"action": "wifi", "ssid": "Nowhere"})
    with pytest.raises(ProvisionError, match="a WPA passphrase is 8 to 63 characters"):
        provisioner.run("network", {"action": "wifi", "ssid": "Shop", "password": "short"})
    assert (tmp_path / "nmcli.log").read_text().splitlines() == [
        "-t -f DEVICE,TYPE,STATE,CONNECTION device",
        "device wifi connect Shop password secret123",
        "device wifi connect Nowhere",
    ]


def test_a_damaged_configuration_is_reported_and_not_edited(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b'[account]\nuser_id = "al\xffice"\n')
    provisioner = Provisioner(path)
    status = provisioner.run("status", {})
    assert isinstance(status, dict) and status["configured"] is False
    assert "not valid UTF-8" in status["problem"]
    with pytest.raises(ProvisionError, match="import one or factory-reset"):
        provisioner.run("set", {"name": "device", "value": "d"})
    assert path.read_bytes() == b'[account]\nuser_id = "al\xffice"\n'

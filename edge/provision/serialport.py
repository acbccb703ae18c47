"""``edge console --port URL``: the provisioning console on a pyserial port.

The adapter feeds what the port delivers to :class:`~edge.provision.console.Console`,
writes what it answers, and runs the commands it asks for on a worker thread
(scrypt, nmcli and the sound test block), one at a time. A port with a file
descriptor (a tty, a pty) is watched with ``add_reader``; one without
(``loop://``) is read by a thread that hands bytes to the loop. The console
ends when the line hangs up.
"""

import argparse
import asyncio
import contextlib
import logging
import shlex
import shutil
import threading
from pathlib import Path
from typing import Any

import serial

from edge.device.events import ButtonEdge, LedPattern
from edge.device.gpio import Gpio
from edge.errors import EdgeError, LocalError
from edge.provision.console import Console, Mode
from edge.provision.errors import ProvisionError
from edge.provision.events import CommandRequested, PinOffered
from edge.provision.provisioner import REBOOT, Provisioner, gpio_seconds

_log = logging.getLogger(__name__)
READ_MAX = 4096


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("console", help="the serial provisioning console")
    parser.add_argument("--port", required=True, help="pyserial URL: /dev/ttyAMA0, loop://, ...")
    parser.add_argument("--baud", type=int, default=115200, help="line speed (default 115200)")
    parser.add_argument(
        "--config", type=Path, default=Path("/etc/edge/agent.toml"), help="agent configuration"
    )
    parser.add_argument("--pin-file", type=Path, help="PIN hash (default: console.pin beside it)")
    parser.add_argument("--reboot-command", default=shlex.join(REBOOT), help="what 'reboot' runs")
    parser.add_argument("--machine", action="store_true", help="start in machine mode")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    provisioner = Provisioner(
        args.config,
        pin_file=args.pin_file,
        reboot=shlex.split(args.reboot_command),
        nmcli=shutil.which("nmcli"),
    )
    try:
        port = serial.serial_for_url(args.port, baudrate=args.baud, timeout=0)
    except (serial.SerialException, ValueError) as exc:
        raise LocalError(f"cannot open {args.port}: {exc}") from None
    mode = Mode.MACHINE if args.machine else Mode.LINE
    if provisioner.sweep_temporaries():
        _log.info("console: removed what an interrupted write left beside %s", args.config)
    with port:
        asyncio.run(ConsolePort(port, provisioner, mode).serve())
    return 0


class ConsolePort:
    """One console on one open port; :meth:`serve` returns when the line hangs up."""

    def __init__(
        self,
        port: serial.SerialBase,
        provisioner: Provisioner,
        mode: Mode,
        *,
        pin_factory: Any = None,
    ) -> None:
        self.port = port
        self.provisioner = provisioner
        self.pin_factory = pin_factory
        """gpiozero's pin factory for the GPIO test; None: gpiozero's own choice."""
        self.mode = mode
        self._working = False
        self._timer: asyncio.TimerHandle | None = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.console = Console(
            pin_set=self.provisioner.has_pin(),
            mode=self.mode,
            failures=self.provisioner.wrong_pins(),
            now=loop.time(),
        )
        self._hangup = loop.create_future()
        self._flush()
        fd = _fileno(self.port)
        if fd is None:
            threading.Thread(target=self._read_thread, name="serial reader", daemon=True).start()
        else:
            loop.add_reader(fd, self._readable)
        try:
            await self._hangup
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if fd is not None:
                loop.remove_reader(fd)

    def _readable(self) -> None:
        try:
            data = self.port.read(READ_MAX)
        except (serial.SerialException, OSError) as exc:
            self._hung_up(exc)
            return
        self._feed(data)

    def _read_thread(self) -> None:
        self.port.timeout = 0.2  # how soon the thread notices that the console has ended
        # RuntimeError: the loop has closed under a late read; nobody is listening.
        with contextlib.suppress(RuntimeError):
            while not self._hangup.done():
                try:
                    data = self.port.read(READ_MAX)
                except (serial.SerialException, OSError) as exc:
                    self._loop.call_soon_threadsafe(self._hung_up, exc)
                    return
                if data:
                    self._loop.call_soon_threadsafe(self._feed, data)

    def _hung_up(self, exc: BaseException) -> None:
        _log.info("console: the line hung up (%s); counted %s", exc, self.console.stats)
        if not self._hangup.done():
            self._hangup.set_result(None)

    def _feed(self, data: bytes) -> None:
        self.console.receive(data, self._loop.time())
        self._flush()
        self._next()
        self._rearm()

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.console.get_timer()
        self._timer = None if deadline is None else self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.console.handle_timer(self._loop.time())
        self._flush()
        self._rearm()

    def _next(self) -> None:
        if self._working:
            return
        event = self.console.next_event()
        if event is not None:
            self._working = True
            self._loop.create_task(self._carry_out(event))

    async def _carry_out(self, event: CommandRequested | PinOffered) -> None:
        try:
            if isinstance(event, PinOffered):
                await self._offered(event)
            else:
                await self._command(event)
        finally:
            self._working = False
        self._flush()
        self._next()
        self._rearm()

    async def _offered(self, event: PinOffered) -> None:
        try:
            ok = await asyncio.to_thread(self._pin, event)
        except EdgeError as exc:
            self.console.fail("failed", f"cannot keep the PIN: {exc}", self._loop.time())
            return
        self.console.pin_checked(ok, self._loop.time())

    def _pin(self, event: PinOffered) -> bool:
        if event.new:
            self.provisioner.set_pin(event.pin)
            ok = True
        else:
            ok = self.provisioner.check_pin(event.pin)
        if ok:
            self.provisioner.forget_wrong_pins()
        else:
            self.provisioner.count_wrong_pin()
        return ok

    async def _command(self, event: CommandRequested) -> None:
        now = self._loop.time
        try:
            if event.name == "gpio":
                result = await self._gpio(event.args)
            else:
                result = await asyncio.to_thread(self.provisioner.run, event.name, event.args)
        except ProvisionError as exc:
            self.console.fail(exc.reason, str(exc), now())
            return
        except EdgeError as exc:
            self.console.fail("failed", str(exc), now())
            return
        if event.name == "factory-reset":
            self.console.relock(pin_set=False)
        if event.name == "status" and isinstance(result, dict):
            result = {**result, "line": dict(self.console.stats)}
        self.console.complete(result, now())

    async def _gpio(self, args: dict[str, Any]) -> object:
        """Blink each LED in turn while telling every button edge as it comes."""
        seconds = gpio_seconds(args)
        profile = await asyncio.to_thread(self.provisioner.board_profile)
        pressed: set[str] = set()

        def tell(edge: ButtonEdge) -> None:
            if edge.pressed:
                pressed.add(edge.part)
            self.console.progress(f"button {edge.part} {'pressed' if edge.pressed else 'released'}")
            self._flush()

        try:
            gpio = Gpio(profile, self._loop, tell, pin_factory=self.pin_factory)
        except Exception as exc:  # gpiozero's errors share no base: no pins, pins busy
            raise ProvisionError(f"cannot use the board's pins: {exc}", reason="failed") from None
        try:
            self.console.progress(f"{profile.name}: press each button within {seconds:g} s")
            self._flush()
            gpio.report_pressed()
            await self._blink_each(gpio, seconds)
        finally:
            gpio.close()
        return {"pressed": sorted(pressed), "leds": list(profile.leds)}

    async def _blink_each(self, gpio: Gpio, seconds: float) -> None:
        leds: list[str | None] = [*gpio.leds] or [None]
        for led in leds:
            if led is not None:
                gpio.show(led, LedPattern.CONNECTING)
                self.console.progress(f"LED {led} blinking")
                self._flush()
            # The test's own length, shared between the LEDs; not a synchronisation.
            await asyncio.sleep(seconds / len(leds))
            if led is not None:
                gpio.show(led, LedPattern.OFF)

    def _flush(self) -> None:
        out = self.console.data_to_send()
        if out:
            try:
                self.port.write(out)
            except (serial.SerialException, OSError) as exc:
                self._hung_up(exc)


def _fileno(port: serial.SerialBase) -> int | None:
    try:
        fd: int = port.fileno()
    except (AttributeError, OSError, serial.SerialException):
        return None
    return fd

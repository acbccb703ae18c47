"""The provisioning console's core: bytes from a serial line in, bytes and events out.

Theory of operation. :meth:`Console.receive` takes whatever the line delivered
(a keystroke, a pasted block, noise) with the time ``now``; :meth:`data_to_send`
hands back what to write to the line; :meth:`next_event` hands back what the
adapter must do: run a command (:class:`CommandRequested`) or check a PIN
(:class:`PinOffered`). The adapter answers with :meth:`complete`, :meth:`fail` or
:meth:`pin_checked`; until it does, finished lines wait in a short queue, so a
script that types ahead is served in order. Nothing here touches a file, a clock
or a port.

Two modes share one port:

* **line mode**, for a person on any terminal: characters are echoed, backspace
  and DEL rub out, Ctrl-U and Ctrl-C drop the line, CR, LF and CRLF all end it,
  escape sequences (arrow keys) and other control bytes are ignored and counted;
  a line over :data:`LINE_MAX` characters is refused whole when it ends rather
  than buffered. Only printable ASCII is taken: a terminal at the wrong speed
  produces bytes above 0x7f, which are counted as noise.
* **machine mode**, for factory scripts: one JSON object a line,
  ``{"cmd": NAME, "args": {...}, "id": ANY}``, answered by one JSON line,
  ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"code", "message"}}``;
  no echo, no prompt; one unasked line at start says the console is ready,
  and a command that reports as it goes (``gpio``) sends ``{"progress": TEXT}``
  lines before its answer.

The console starts locked. Unlocking takes the provisioning PIN (set on first
use: typed twice in line mode) unless the adapter says a jumper stands in for
it. Each wrong PIN doubles the wait before the next attempt is even looked at
(:func:`pin_delay`); attempts during the wait are refused, counted and told how
long is left.
"""

import json
import shlex
from collections import deque
from dataclasses import dataclass
from enum import Enum
from types import UnionType
from typing import Any, Final

from edge.provision.errors import ConsoleUsageError
from edge.provision.events import CommandRequested, PinOffered

LINE_MAX: Final = 512
"""Longest line a person may type, in characters."""
MACHINE_LINE_MAX: Final = 96 * 1024
"""Longest JSON line: room for an imported configuration (at most :data:`IMPORT_MAX`)."""
IMPORT_MAX: Final = 64 * 1024
"""Largest configuration accepted by ``import``, in characters."""
IDLE_LOCK: Final = 300.0
"""Seconds without input after which an open console locks itself."""
HELD_MAX: Final = 16
"""Lines kept while a command runs; beyond that they are refused."""
ID_MAX: Final = 64
PIN_MIN: Final = 4
PIN_MAX: Final = 16
PIN_DELAY_BASE: Final = 1.0
PIN_DELAY_MAX: Final = 600.0

CR, LF, BS, DEL, ESC = 0x0D, 0x0A, 0x08, 0x7F, 0x1B
CTRL_C, CTRL_U, TAB = 0x03, 0x15, 0x09
RUBOUT: Final = b"\b \b"


@dataclass(frozen=True)
class Spec:
    """A command as a person types it: its words after the name, and a line of help.
    ``rest`` gives the last argument everything after the words before it, spaces
    and quotes included (a password, a list of addresses)."""

    words: tuple[str, ...]
    help: str
    rest: bool = False
    locked: bool = False
    """Allowed before the PIN is given."""


COMMANDS: Final[dict[str, Spec]] = {
    "help": Spec((), "list the commands", locked=True),
    "status": Spec((), "what is configured, what is missing, keys, PIN, network tool"),
    "set": Spec(
        ("name", "value"),
        "set NAME VALUE: user, device, password, login, server-key, issuer-key, "
        "bootstrap (addresses, comma-separated), state-dir, profile",
        rest=True,
    ),
    "keys": Spec((), "generate the device keys if there are none; show the public keys"),
    "network": Spec(
        ("action", "ssid", "password"),
        "network | network wifi SSID [PASSWORD]: show or join Wi-Fi (NetworkManager)",
    ),
    "audio": Spec((), "play a tone and show the microphone's level"),
    "gpio": Spec(("seconds",), "gpio [SECONDS]: show button presses live, blink each LED"),
    "export": Spec((), "print the configuration"),
    "import": Spec((), "paste a whole configuration, ended by a line with a single '.'"),
    "factory-reset": Spec((), "erase configuration, password, keys and PIN (asks first)"),
    "reboot": Spec((), "restart the device"),
    "pin": Spec(("new",), "pin: change the provisioning PIN (asked twice, not shown)"),
    "lock": Spec((), "lock the console until the PIN is given again"),
    "machine": Spec((), "switch to machine mode (JSON lines)", locked=True),
    "line": Spec((), "switch back to line mode (from machine mode)", locked=True),
}


class Mode(Enum):
    LINE = "line"
    MACHINE = "machine"


class Lock(Enum):
    UNSET = "no PIN set"
    LOCKED = "locked"
    OPEN = "open"


class _Wait(Enum):
    """What the next line of line mode is, apart from a command."""

    COMMAND = "command"
    NEW_PIN = "new PIN"
    PIN_AGAIN = "PIN again"
    CONFIRM_RESET = "confirm"
    IMPORT = "import"


class _Refused(Enum):
    """Why a finished line was refused before it was read."""

    TOO_LONG = "too-long"
    NOT_UTF8 = "not-utf8"


def pin_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` wrong PINs in a row: 1, 2, 4, ... up to 10 min."""
    if failures <= 0:
        return 0.0
    return min(PIN_DELAY_BASE * float(2 ** min(failures - 1, 30)), PIN_DELAY_MAX)


def valid_pin(pin: str) -> bool:
    return PIN_MIN <= len(pin) <= PIN_MAX and pin.isascii() and pin.isdigit()


class Console:
    """One console session on one line (see the module's opening comment)."""

    def __init__(
        self,
        *,
        pin_set: bool,
        jumper: bool = False,
        mode: Mode = Mode.LINE,
        idle_lock: float = IDLE_LOCK,
        failures: int = 0,
        now: float = 0.0,
    ) -> None:
        """``failures``: wrong PINs in a row so far, kept across restarts by the
        adapter, so that hanging up does not buy a fresh guess; their wait runs
        from ``now``."""
        self.mode = mode
        self.idle_lock = idle_lock
        self._last_input = now
        self.lock = Lock.OPEN if jumper else (Lock.LOCKED if pin_set else Lock.UNSET)
        self.jumper = jumper
        self.stats = dict.fromkeys(
            ("noise", "overlong", "bad_json", "wrong_pin", "throttled", "dropped", "commands"),
            0,
        )
        self._out = bytearray()
        self._line = bytearray()
        self._overlong = False
        self._escape = 0  # 0: none, 1: after ESC, 2: inside a CSI/SS3 sequence
        self._after_cr = False
        self._held: deque[str | _Refused] = deque()
        self._events: deque[CommandRequested | PinOffered] = deque()
        self._asked: CommandRequested | PinOffered | None = None
        self._reply_id: Any = None
        self._wait = _Wait.COMMAND
        self._new_pin = ""
        self._import: list[str] = []
        self._import_size = 0
        self._failures = max(0, failures)
        self._retry_at = now + pin_delay(self._failures)
        self._now = 0.0
        # Opening a serial port flushes what came before, so a script waits for this.
        self._greet()

    # -- the adapter's side ---------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """Take bytes from the line; then drain :meth:`data_to_send` and :meth:`next_event`."""
        self._now = self._last_input = now
        for byte in data:
            if self.mode is Mode.LINE:
                self._line_byte(byte)
            else:
                self._machine_byte(byte)

    def get_timer(self) -> float | None:
        """When to call :meth:`handle_timer`: the idle lock's deadline while open."""
        if self.lock is not Lock.OPEN or self.jumper or self._busy:
            return None
        return self._last_input + self.idle_lock

    def handle_timer(self, now: float) -> None:
        """Lock the console if nothing came for :attr:`idle_lock` seconds: a serial
        line has no carrier to say the installer has gone."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return
        self.lock, self._wait, self._new_pin, self._import = Lock.LOCKED, _Wait.COMMAND, "", []
        self._line.clear()
        if self.mode is Mode.LINE:
            self._write(f"\r\nlocked after {self.idle_lock:g} s without input\r\n".encode())
            self._prompt()

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> CommandRequested | PinOffered | None:
        return self._events.popleft() if self._events else None

    def complete(self, result: object, now: float) -> None:
        """The command asked for has succeeded with ``result`` (JSON-able)."""
        self._finish(now, CommandRequested)
        self._reply(result)
        self._after_reply()

    def fail(self, code: str, message: str, now: float) -> None:
        """The command (or the PIN check) asked for has failed: ``code`` for scripts,
        ``message`` for people."""
        self._finish(now, CommandRequested | PinOffered)
        self._error(code, message)
        self._after_reply()

    def progress(self, text: str) -> None:
        """A line of news from the command still running (a button pressed)."""
        if not isinstance(self._asked, CommandRequested):
            raise ConsoleUsageError("progress came with no command running")
        if self.mode is Mode.MACHINE:
            self._write(json.dumps({"progress": text}, separators=(",", ":")).encode() + b"\n")
        else:
            self._write(_render(text))

    def pin_checked(self, ok: bool, now: float) -> None:
        """The PIN offered was right (or has been stored, when it was new), or wrong."""
        self._finish(now, PinOffered)
        if ok:
            changing = self.lock is Lock.OPEN
            self.lock, self._failures = Lock.OPEN, 0
            self._reply("PIN changed" if changing else "unlocked")
        else:
            self._failures += 1
            self.stats["wrong_pin"] += 1
            delay = pin_delay(self._failures)
            self._retry_at = now + delay
            self._error("wrong-pin", f"wrong PIN ({self._failures} wrong so far); wait {delay:g} s")
        self._after_reply()

    def relock(self, *, pin_set: bool) -> None:
        """Lock again (after a factory reset, ``pin_set`` is false: a new PIN is asked)."""
        if not self.jumper:
            self.lock = Lock.LOCKED if pin_set else Lock.UNSET

    # -- line mode ----------------------------------------------------------------------

    def _line_byte(self, byte: int) -> None:
        if self._escape:
            self._skip_escape(byte)
            return
        after_cr, self._after_cr = self._after_cr, byte == CR
        if byte in (CR, LF):
            if not (byte == LF and after_cr):  # CRLF is one line end
                self._write(b"\r\n")
                self._end_line()
        elif byte in (BS, DEL):
            if self._line:
                del self._line[-1]
                self._write(RUBOUT)
        elif byte in (CTRL_U, CTRL_C):
            self._write(RUBOUT * min(len(self._line), LINE_MAX))
            self._line.clear()
            self._overlong = False
        elif byte == ESC:
            self._escape = 1
            self.stats["noise"] += 1
        elif byte == TAB or 0x20 <= byte < 0x7F:
            self._take(b" "[0] if byte == TAB else byte)
        else:
            self.stats["noise"] += 1

    def _skip_escape(self, byte: int) -> None:
        # ESC [ params final and ESC O final are arrow and function keys (ECMA-48);
        # ESC and a printable byte is Alt and a key. A control byte ends the
        # sequence and counts as itself, so noise cannot swallow a line end.
        if self._escape == 1 and byte in (ord("["), ord("O")):
            self._escape = 2
        elif self._escape == 2 and 0x20 <= byte <= 0x3F:
            pass
        elif 0x20 <= byte < 0x7F:
            self._escape = 0
        else:
            self._escape = 0
            self._line_byte(byte)

    def _take(self, byte: int) -> None:
        if len(self._line) >= LINE_MAX:
            self._overlong = True
            return
        self._line.append(byte)
        secret = self._wait in (_Wait.NEW_PIN, _Wait.PIN_AGAIN) or self.lock is not Lock.OPEN
        self._write(b"*" if secret else bytes((byte,)))

    def _end_line(self) -> None:
        raw, overlong = bytes(self._line), self._overlong
        self._line.clear()
        self._overlong = False
        if overlong:
            self.stats["overlong"] += 1
            self._queue(_Refused.TOO_LONG)
            return
        try:
            self._queue(raw.decode("utf-8"))
        except UnicodeDecodeError:
            self.stats["noise"] += 1
            self._queue(_Refused.NOT_UTF8)

    def _queue(self, line: "str | _Refused") -> None:
        """A finished line (or the reason it was refused), now or after the command."""
        if self._busy:
            if len(self._held) >= HELD_MAX:
                self.stats["dropped"] += 1
                return
            self._held.append(line)
            return
        self._handle(line)

    def _handle(self, text: "str | _Refused") -> None:
        if isinstance(text, _Refused):
            limit = LINE_MAX if self.mode is Mode.LINE else MACHINE_LINE_MAX
            message = {
                _Refused.TOO_LONG: f"line longer than {limit} characters: refused",
                _Refused.NOT_UTF8: "line is not UTF-8: refused",
            }[text]
            self._error(text.value, message)
            self._after_reply()
        elif self.mode is Mode.MACHINE:
            self._machine_line(text)
        else:
            self._human_line(text)

    def _human_line(self, text: str) -> None:
        handler = {
            _Wait.NEW_PIN: self._typed_new_pin,
            _Wait.PIN_AGAIN: self._typed_pin_again,
            _Wait.CONFIRM_RESET: self._typed_confirmation,
            _Wait.IMPORT: self._typed_import_line,
        }.get(self._wait)
        if handler is not None:
            handler(text)
            return
        words = text.strip()
        if not words:
            self._prompt()
        elif self.lock is not Lock.OPEN and words not in ("help", "machine"):
            self._typed_pin(words)
        else:
            self._typed_command(words)

    def _typed_pin(self, pin: str) -> None:
        if self.lock is Lock.UNSET:
            self._wait = _Wait.NEW_PIN
            self._typed_new_pin(pin)
        elif not valid_pin(pin):
            # Line noise is not a guess: refusing it unchecked keeps it from
            # throttling the installer out.
            self._error("bad-pin", f"a PIN is {PIN_MIN} to {PIN_MAX} digits")
            self._after_reply()
        else:
            self._offer_pin(pin, new=False)

    def _typed_new_pin(self, pin: str) -> None:
        if not valid_pin(pin.strip()):
            self._wait = _Wait.COMMAND
            self._error("bad-pin", f"a PIN is {PIN_MIN} to {PIN_MAX} digits")
            self._after_reply()
            return
        self._new_pin, self._wait = pin.strip(), _Wait.PIN_AGAIN
        self._prompt()

    def _typed_pin_again(self, pin: str) -> None:
        first, self._new_pin, self._wait = self._new_pin, "", _Wait.COMMAND
        if pin.strip() != first:
            self._error("bad-pin", "the two PINs differ; nothing changed")
            self._after_reply()
            return
        self._request(PinOffered(first, new=True))

    def _typed_confirmation(self, answer: str) -> None:
        self._wait = _Wait.COMMAND
        if answer.strip() != "yes":
            self._reply("factory reset cancelled")
            self._after_reply()
            return
        self._request(CommandRequested("factory-reset", {"confirm": True}))

    def _typed_import_line(self, line: str) -> None:
        if line.strip() == ".":
            text, self._import, self._import_size = "\n".join(self._import) + "\n", [], 0
            self._wait = _Wait.COMMAND
            self._request(CommandRequested("import", {"toml": text}))
            return
        self._import_size += len(line) + 1
        if self._import_size > IMPORT_MAX:
            self._import, self._import_size, self._wait = [], 0, _Wait.COMMAND
            self._error("too-long", f"a configuration is at most {IMPORT_MAX} characters")
            self._after_reply()
            return
        self._import.append(line)

    def _typed_command(self, text: str) -> None:
        name, _, rest = text.partition(" ")
        spec = COMMANDS.get(name)
        if spec is None:
            self._error("unknown-command", f"unknown command {name[:32]!r}; type 'help'")
            self._after_reply()
            return
        try:
            args = _words(spec, rest)
        except ValueError as exc:
            self._error("bad-args", f"{name}: {exc}")
            self._after_reply()
            return
        self._command(name, args)

    # -- machine mode ---------------------------------------------------------------

    def _machine_byte(self, byte: int) -> None:
        if byte in (CR, LF):
            self._end_line()
        elif (byte >= 0x20 and byte != DEL) or byte == TAB:
            if len(self._line) >= MACHINE_LINE_MAX:
                self._overlong = True
            else:
                self._line.append(byte)
        else:
            self.stats["noise"] += 1

    def _machine_line(self, raw: str) -> None:
        if not raw.strip():
            return
        try:
            request = json.loads(raw)
        except ValueError:
            self.stats["bad_json"] += 1
            self._error("bad-json", "expected one JSON object a line")
            return
        if not isinstance(request, dict):
            self.stats["bad_json"] += 1
            self._error("bad-json", 'expected {"cmd": NAME, "args": {...}}')
            return
        self._reply_id = _reply_id(request.get("id"))
        name, args = request.get("cmd"), request.get("args", {})
        if not isinstance(name, str) or name not in COMMANDS | {"unlock": None}:
            self._error("unknown-command", f"unknown command {str(name)[:32]!r}")
        elif not isinstance(args, dict):
            self._error("bad-args", '"args" must be an object')
        elif name == "unlock":
            self._machine_unlock(args)
        else:
            self._command(name, args)

    def _machine_unlock(self, args: dict[str, Any]) -> None:
        pin = args.get("pin")
        if self.lock is Lock.OPEN:
            self._reply("unlocked")
        elif not isinstance(pin, str) or not valid_pin(pin):
            self._error("bad-pin", f"a PIN is {PIN_MIN} to {PIN_MAX} digits")
        else:
            self._offer_pin(pin, new=self.lock is Lock.UNSET)

    # -- shared -----------------------------------------------------------------------

    def _command(self, name: str, args: dict[str, Any]) -> None:
        spec = COMMANDS[name]
        if self.lock is not Lock.OPEN and not spec.locked:
            self._error("locked", "locked: give the provisioning PIN first")
            self._after_reply()
        elif name in ("help", "machine", "line", "lock", "import", "factory-reset", "pin"):
            self._local(name, args)
        else:
            self._request(CommandRequested(name, args))

    def _local(self, name: str, args: dict[str, Any]) -> None:
        """The commands the console answers itself, or asks about before running."""
        if name == "help":
            self._reply({n: s.help for n, s in COMMANDS.items()})
        elif name in ("machine", "line"):
            self.mode = Mode(name)
            self._reply(f"{name} mode")
        elif name == "lock":
            self.relock(pin_set=True)
            self._reply("locked" if self.lock is Lock.LOCKED else "a jumper keeps it open")
        elif self.mode is Mode.MACHINE or (name == "pin" and args):
            self._request(CommandRequested(name, args))
            return
        elif name == "pin":
            self._wait = _Wait.NEW_PIN
        elif name == "import":
            self._wait = _Wait.IMPORT
            self._reply("paste the configuration, then a line with a single '.'")
        else:
            self._wait = _Wait.CONFIRM_RESET
            self._write(b"erase configuration, password, keys and PIN? type 'yes': ")
            return
        self._after_reply()

    def _offer_pin(self, pin: str, *, new: bool) -> None:
        wait = self._retry_at - self._now
        if wait > 0:
            self.stats["throttled"] += 1
            self._error(
                "throttled",
                f"too many wrong PINs ({self._failures}): wait {wait:.0f} s and try again",
            )
            self._after_reply()
            return
        self._request(PinOffered(pin, new=new))

    def _request(self, event: CommandRequested | PinOffered) -> None:
        if isinstance(event, CommandRequested):
            self.stats["commands"] += 1
        self._asked = event
        self._events.append(event)

    def _finish(self, now: float, answers: type | UnionType) -> None:
        if not isinstance(self._asked, answers):
            raise ConsoleUsageError(f"a reply to {answers} came while {self._asked} waits")
        self._asked, self._now = None, now

    @property
    def _busy(self) -> bool:
        return self._asked is not None

    def _after_reply(self) -> None:
        """Prompt, then take the lines that came while the command ran."""
        self._prompt()
        while self._held and not self._busy:
            self._handle(self._held.popleft())

    def _reply(self, result: object) -> None:
        if self.mode is Mode.MACHINE:
            self._send_json({"ok": True, "result": result})
        else:
            self._write(_render(result))

    def _error(self, code: str, message: str) -> None:
        if self.mode is Mode.MACHINE:
            self._send_json({"ok": False, "error": {"code": code, "message": message}})
        else:
            self._write(f"error: {message}\r\n".encode("ascii", "replace"))

    def _send_json(self, reply: dict[str, Any]) -> None:
        if self._reply_id is not None:
            reply["id"] = self._reply_id
            self._reply_id = None
        self._write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")

    def _greet(self) -> None:
        if self.mode is Mode.MACHINE:
            self._send_json({"ok": True, "result": "edge provisioning console, machine mode"})
            return
        self._write(b"\r\nedge provisioning console; type 'help'\r\n")
        self._prompt()

    def _prompt(self) -> None:
        if self.mode is Mode.MACHINE or self._busy or self._wait is _Wait.IMPORT:
            return
        if self._wait is _Wait.NEW_PIN or (self._wait is _Wait.COMMAND and self.lock is Lock.UNSET):
            self._write(b"set a provisioning PIN (4 to 16 digits): ")
        elif self._wait is _Wait.PIN_AGAIN:
            self._write(b"the same PIN again: ")
        elif self.lock is Lock.LOCKED:
            self._write(b"PIN: ")
        else:
            self._write(b"edge> ")

    def _write(self, data: bytes) -> None:
        self._out += data


def _words(spec: Spec, rest: str) -> dict[str, Any]:
    """A typed command's arguments by name; raises ValueError with the reason."""
    if spec.rest:
        words = [word.strip() for word in rest.split(None, len(spec.words) - 1)]
    else:
        words = shlex.split(rest)
    if len(words) > len(spec.words):
        raise ValueError(f"expected at most {len(spec.words)} arguments, got {len(words)}")
    return dict(zip(spec.words, words, strict=False))


def _reply_id(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return value
    if isinstance(value, str):
        return value[:ID_MAX]
    return None


def _render(result: object) -> bytes:
    """A result for a person: a mapping as ``key: value`` lines, a list one item a line."""
    if isinstance(result, dict):
        lines = [f"{key}: {_flat(value)}" for key, value in result.items()]
    elif isinstance(result, list):
        lines = [_flat(item) for item in result]
    else:
        lines = str(result).splitlines() or [""]
    text = "".join(f"{line}\r\n" for line in lines)
    return text.encode("utf-8", "replace")


def _flat(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "(none)"
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)

"""What the console's commands do to the device: configuration, keys, PIN, network.

The configuration is the agent's own TOML file (:mod:`edge.client.config`). A
``set`` edits a draft of it, kept as the parsed tables; before anything is
written the draft is turned back into TOML and read by the agent's own parser,
with stand-ins for the required keys not yet given, so a device provisioned
step by step is refused a wrong value at once and the file on disk only ever
lacks keys, never holds a wrong one. An ``import`` is checked whole, with no
stand-ins. Every file goes through :func:`~edge.runtime.config.write_atomic`:
after a power cut the old file or the new, never a mix.

The PIN is kept as an scrypt hash (RFC 7914) with a random salt, in a file of
its own (mode 0600). Commands here block (scrypt, nmcli, sound): the adapter
runs them off the event loop.
"""

import copy
import hashlib
import hmac
import json
import math
import re
import secrets
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edge.client.agent import KEY_FILE
from edge.client.config import from_doc
from edge.crypto.keys import DeviceKeys
from edge.device.profile import Profile
from edge.device.profile import read as read_profile
from edge.errors import EdgeError
from edge.provision.console import IMPORT_MAX, valid_pin
from edge.provision.errors import ProvisionError
from edge.runtime.config import MAX_CONFIG_BYTES, load, loads, write_atomic

_PLACE: Final = re.compile(r"^[^\n]*?:\d+(:\d+)?: ")
DEFAULT_STATE: Final = Path("/var/lib/edge/agent")
REBOOT: Final = ("systemctl", "reboot")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
PIN_FILE_MAX: Final = 512
WRONG_PINS_MAX: Final = 64
VALUE_MAX: Final = 4096
PASSWORD_MAX: Final = 256
COMMAND_TIMEOUT: Final = 60.0
GPIO_SECONDS: Final = 10.0
GPIO_SECONDS_MAX: Final = 120.0

REQUIRED: Final = {
    ("account", "user_id"): "x",
    ("account", "device_id"): "x",
    ("login", "address"): "127.0.0.1:443",
    ("login", "server_key"): "00" * 32,
    ("login", "issuer_key"): "00" * 32,
}
"""The keys the agent cannot start without, and harmless stand-ins for checking a draft."""


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    is_list: bool = False


SETTINGS: Final = {
    "user": Setting("account", "user_id"),
    "device": Setting("account", "device_id"),
    "login": Setting("login", "address"),
    "server-key": Setting("login", "server_key"),
    "issuer-key": Setting("login", "issuer_key"),
    "bootstrap": Setting("supernodes", "bootstrap", is_list=True),
    "state-dir": Setting("state", "dir"),
    "profile": Setting("board", "profile"),
}


class Provisioner:
    """Carries out console commands on one agent configuration file."""

    def __init__(
        self,
        config: Path,
        *,
        pin_file: Path | None = None,
        reboot: Sequence[str] = REBOOT,
        nmcli: str | None = None,
    ) -> None:
        self.config = config
        self.pin_file = pin_file or config.with_name("console.pin")
        self.reboot_command = tuple(reboot)
        self.nmcli = nmcli
        self._handlers: dict[str, Callable[[dict[str, Any]], object]] = {
            "status": self.status,
            "set": self.set,
            "keys": self.keys,
            "network": self.network,
            "audio": self.audio,
            "export": self.export,
            "import": self.import_,
            "factory-reset": self.factory_reset,
            "reboot": self.reboot,
            "pin": self.change_pin,
        }

    def run(self, name: str, args: dict[str, Any]) -> object:
        """Carry out command ``name``; raises :class:`ProvisionError` with the reason."""
        handler = self._handlers.get(name)
        if handler is None:
            raise ProvisionError(f"unknown command {name[:32]!r}")
        return handler(args)

    # -- PIN --------------------------------------------------------------------------

    def has_pin(self) -> bool:
        return self.pin_file.exists()

    def set_pin(self, pin: str) -> None:
        if not valid_pin(pin):
            raise ProvisionError("a PIN is 4 to 16 digits")
        salt = secrets.token_bytes(16)
        line = f"scrypt {SCRYPT_N} {SCRYPT_R} {SCRYPT_P} {salt.hex()} {_scrypt(pin, salt).hex()}\n"
        write_atomic(self.pin_file, line.encode())

    def check_pin(self, pin: str) -> bool:
        """Whether ``pin`` is the stored PIN; a damaged PIN file matches nothing."""
        try:
            with self.pin_file.open("rb") as file:
                fields = file.read(PIN_FILE_MAX).decode("ascii").split()
            salt, stored = bytes.fromhex(fields[4]), bytes.fromhex(fields[5])
            if fields[:4] != ["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P)]:
                return False
        except (OSError, ValueError, IndexError):
            return False
        return valid_pin(pin) and hmac.compare_digest(_scrypt(pin, salt), stored)

    @property
    def password_file(self) -> Path:
        """Where ``set password`` keeps the enrolment password: beside the configuration."""
        return self.config.with_name(f"{self.config.stem}.password")

    @property
    def wrong_pin_file(self) -> Path:
        return self.pin_file.with_name(f"{self.pin_file.name}.wrong")

    def wrong_pins(self) -> int:
        """Wrong PINs in a row, across restarts; a damaged count counts as many."""
        try:
            with self.wrong_pin_file.open("rb") as file:
                return min(int(file.read(16)), WRONG_PINS_MAX)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            return WRONG_PINS_MAX

    def count_wrong_pin(self) -> None:
        write_atomic(self.wrong_pin_file, b"%d\n" % min(self.wrong_pins() + 1, WRONG_PINS_MAX))

    def forget_wrong_pins(self) -> None:
        self.wrong_pin_file.unlink(missing_ok=True)

    def change_pin(self, args: dict[str, Any]) -> object:
        self.set_pin(_text(args, "new", PIN_FILE_MAX))
        return "PIN changed"

    # -- configuration ----------------------------------------------------------------

    def status(self, args: dict[str, Any]) -> object:
        problem = None
        try:
            values = self._draft()
        except ProvisionError as exc:
            values, problem = {}, str(exc)
        keys = self._state_dir(values) / KEY_FILE
        return {
            "config": str(self.config),
            "problem": problem,
            "configured": problem is None and not _missing(values),
            "missing": [f"{s}.{k}" for s, k in _missing(values)],
            "user": _get(values, "account", "user_id"),
            "device": _get(values, "account", "device_id"),
            "login": _get(values, "login", "address"),
            "server_key": _get(values, "login", "server_key"),
            "bootstrap": _get(values, "supernodes", "bootstrap") or [],
            "password": _get(values, "account", "password_file") is not None,
            "keys": self._public_keys(keys) if keys.exists() else None,
            "pin": self.has_pin(),
            "network": "nmcli" if self.nmcli else "no NetworkManager",
        }

    def set(self, args: dict[str, Any]) -> object:
        name = _text(args, "name", 32)
        if name == "password":
            return self._set_password(_text(args, "value", PASSWORD_MAX))
        setting = SETTINGS.get(name)
        if setting is None:
            known = ", ".join(["password", *SETTINGS])
            raise ProvisionError(f"cannot set {name!r}: expected one of {known}")
        value = _setting_value(setting, args.get("value"))
        draft = self._draft()
        draft.setdefault(setting.section, {})[setting.key] = value
        self._save(draft)
        return f"{setting.section}.{setting.key} set"

    def _set_password(self, password: str) -> object:
        if not password or not password.isprintable():
            raise ProvisionError("a password is 1 to 256 printable characters")
        draft = self._draft()
        # Named relative to the configuration, so that it is found wherever the two
        # travel together (the agent's unit hands both over as credentials).
        draft.setdefault("account", {})["password_file"] = self.password_file.name
        self._check(draft)
        write_atomic(self.password_file, password.encode() + b"\n")
        self._save(draft)
        return "password stored (read once, at enrolment)"

    def export(self, args: dict[str, Any]) -> object:
        if not self.config.exists():
            raise ProvisionError(f"no configuration yet at {self.config}", reason="not-found")
        return self.config.read_bytes()[:MAX_CONFIG_BYTES].decode("utf-8", "replace")

    def import_(self, args: dict[str, Any]) -> object:
        text = _text(args, "toml", IMPORT_MAX)
        try:
            from_doc(loads(text, str(self.config), base_dir=self.config.parent))
        except EdgeError as exc:
            raise ProvisionError(f"not imported: {exc}") from None
        write_atomic(self.config, text.encode())
        return "configuration imported"

    def factory_reset(self, args: dict[str, Any]) -> object:
        if args.get("confirm") is not True:
            raise ProvisionError('factory-reset needs {"confirm": true}')
        values = self._draft_or_none() or {}
        doomed = [
            self.config,
            self.pin_file,
            self.wrong_pin_file,
            self._state_dir(values) / KEY_FILE,
        ]
        password = _get(values, "account", "password_file")
        if isinstance(password, str):
            doomed.append(self.config.parent / password)
        removed = []
        for path in doomed:
            if path.exists():
                path.unlink()
                removed.append(str(path))
        return {"removed": removed}

    def sweep_temporaries(self) -> int:
        """Remove the temporary files a write cut short left beside the configuration
        (the file itself is whole); how many. Only while no write is under way."""
        removed = 0
        for name in (self.config.name, self.pin_file.name):
            for stale in self.config.parent.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
                removed += 1
        return removed

    def _draft_or_none(self) -> dict[str, Any] | None:
        try:
            return self._draft() if self.config.exists() else None
        except ProvisionError:
            return None

    def _draft(self) -> dict[str, Any]:
        """The configuration's tables as a mutable copy; empty when there is none yet."""
        if not self.config.exists():
            return {}
        try:
            data = load(self.config).data
        except EdgeError as exc:
            raise ProvisionError(
                f"the configuration cannot be read ({exc}): import one or factory-reset"
            ) from None
        return copy.deepcopy(dict(data))

    def _check(self, draft: Mapping[str, Any]) -> None:
        """Refuse ``draft`` unless the agent's parser takes it, stand-ins filling gaps."""
        whole = copy.deepcopy(dict(draft))
        for (section, key), stand_in in REQUIRED.items():
            whole.setdefault(section, {}).setdefault(key, stand_in)
        try:
            from_doc(loads(dump_toml(whole), str(self.config), base_dir=self.config.parent))
        except EdgeError as exc:
            # The line number would point into the draft with its stand-ins, not a file.
            raise ProvisionError(_PLACE.sub("", str(exc), count=1)) from None

    def _save(self, draft: Mapping[str, Any]) -> None:
        self._check(draft)
        self.config.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config, dump_toml(draft).encode())

    def _state_dir(self, values: Mapping[str, Any]) -> Path:
        written = _get(values, "state", "dir")
        if not isinstance(written, str):
            return DEFAULT_STATE
        return self.config.parent / written

    # -- keys, network, sound, GPIO, reboot -----------------------------------------

    def keys(self, args: dict[str, Any]) -> object:
        path = self._state_dir(self._draft()) / KEY_FILE
        new = not path.exists()
        try:
            DeviceKeys.load_or_generate(path)
        except (EdgeError, OSError) as exc:
            raise ProvisionError(f"cannot make keys at {path}: {exc}", reason="failed") from None
        return {"new": new, **self._public_keys(path)}

    def _public_keys(self, path: Path) -> dict[str, str]:
        try:
            keys = DeviceKeys.load(path)
        except EdgeError as exc:
            return {"file": str(path), "error": str(exc)}
        return {
            "file": str(path),
            "ed25519": keys.sign_public.hex(),
            "x25519": keys.dh_public.hex(),
        }

    def network(self, args: dict[str, Any]) -> object:
        if self.nmcli is None:
            raise ProvisionError(
                "NetworkManager's nmcli is not installed on this device: "
                "set the network up by hand (systemd-networkd or /etc/network/interfaces)",
                reason="not-available",
            )
        action = args.get("action")
        if action is None:
            return self._nmcli("-t", "-f", "DEVICE,TYPE,STATE,CONNECTION", "device")
        if action != "wifi":
            raise ProvisionError(f"network: expected no action or 'wifi', got {action!r}")
        ssid = _text(args, "ssid", 32)
        if not ssid:
            raise ProvisionError("network wifi: the SSID is empty")
        if args.get("password") is None:
            return self._nmcli("device", "wifi", "connect", ssid)
        password = _text(args, "password", 63)
        if len(password) < 8:  # WPA2-PSK passphrases are 8 to 63 characters
            raise ProvisionError("network wifi: a WPA passphrase is 8 to 63 characters")
        return self._nmcli("device", "wifi", "connect", ssid, "password", password)

    def _nmcli(self, *argv: str) -> object:
        assert self.nmcli is not None
        return _run_tool([self.nmcli, *argv]).splitlines()

    def audio(self, args: dict[str, Any]) -> object:
        values = self._draft()
        capture = _get(values, "audio", "capture") or "default"
        playback = _get(values, "audio", "playback") or "default"
        if "none" in (capture, playback):
            raise ProvisionError(
                'sound is off in the configuration ([audio] capture or playback is "none")',
                reason="not-available",
            )
        try:
            return _sound_check(str(capture), str(playback))
        except EdgeError as exc:
            raise ProvisionError(f"sound test failed: {exc}", reason="failed") from None

    def board_profile(self) -> Profile:
        """The board profile the configuration names, checked whole."""
        written = _get(self._draft(), "board", "profile")
        if not written:
            raise ProvisionError(
                "no board profile is configured: 'set profile PATH' first (one of hw/*.toml)",
                reason="not-available",
            )
        try:
            return read_profile(self.config.parent / str(written))
        except EdgeError as exc:
            raise ProvisionError(f"the board profile is wrong: {exc}") from None

    def reboot(self, args: dict[str, Any]) -> object:
        _run_tool(list(self.reboot_command))
        return "rebooting"


# -- helpers ---------------------------------------------------------------------------


def _scrypt(pin: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        pin.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20, dklen=32
    )


def gpio_seconds(args: Mapping[str, Any]) -> float:
    """How long the GPIO test runs: ``seconds`` from 1 to 120, 10 when not given."""
    value = args.get("seconds", GPIO_SECONDS)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not 1 <= seconds <= GPIO_SECONDS_MAX:
        raise ProvisionError(f"gpio: seconds is a number from 1 to {GPIO_SECONDS_MAX:g}")
    return seconds


def _text(args: Mapping[str, Any], key: str, limit: int) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise ProvisionError(f"missing {key!r} (text)")
    if len(value) > limit:
        raise ProvisionError(f"{key!r} is longer than {limit} characters")
    return value


def _setting_value(setting: Setting, value: object) -> object:
    if setting.is_list:
        if isinstance(value, str):
            value = [item for item in value.replace(",", " ").split() if item]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ProvisionError(f"{setting.key}: expected a list of addresses")
        if sum(len(item) for item in value) > VALUE_MAX:
            raise ProvisionError(f"{setting.key}: longer than {VALUE_MAX} characters")
        return value
    if not isinstance(value, str) or not value.strip():
        raise ProvisionError(f"{setting.key}: expected a value")
    if len(value) > VALUE_MAX:
        raise ProvisionError(f"{setting.key}: longer than {VALUE_MAX} characters")
    return value.strip()


def _get(values: Mapping[str, Any], section: str, key: str) -> Any:
    table = values.get(section)
    return table.get(key) if isinstance(table, dict) else None


def _missing(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(s, k) for s, k in REQUIRED if _get(values, s, k) is None]


def _run_tool(argv: list[str]) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvisionError(f"{argv[0]}: {exc}", reason="failed") from None
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip()[-300:] or "no message"
        raise ProvisionError(
            f"{argv[0]} failed (exit {done.returncode}): {reason}", reason="failed"
        )
    return done.stdout[-4096:]


def _sound_check(capture: str, playback: str, seconds: float = 1.0) -> dict[str, object]:
    """Play a 1 kHz tone while listening; the loudest input seen, in dBFS."""
    from edge.media.sound import SoundSink, SoundSource
    from edge.media.tones import tone

    frame = 640  # 20 ms of 16 kHz s16le
    sink, source = SoundSink(playback), SoundSource(capture)
    try:
        sink.wait_for_running(5.0)
        source.wait_for_running(5.0)
        pcm, peak, pace = tone(1000.0, seconds), 0, threading.Event()
        for start in range(0, len(pcm), frame):
            sink.write(pcm[start : start + frame])
            peak = max(peak, _peak(source.read()))
            pace.wait(0.02)  # the devices' own pace, not a synchronisation
    finally:
        sink.close()
        source.close()
    level = 20 * math.log10(peak / 32768) if peak else -math.inf
    return {"tone": "1000 Hz, 1 s", "input_peak_dbfs": round(level, 1)}


def _peak(pcm: bytes) -> int:
    samples = memoryview(pcm).cast("h") if len(pcm) % 2 == 0 else memoryview(b"").cast("h")
    return max((abs(s) for s in samples), default=0)


# -- TOML -------------------------------------------------------------------------------


def dump_toml(tables: Mapping[str, Any]) -> str:
    """The draft as TOML: tables of plain values, and arrays of tables."""
    parts: list[str] = []
    for name, body in tables.items():
        if isinstance(body, list):
            for entry in body:
                parts.append(f"[[{name}]]\n{_table_body(entry)}")
        elif isinstance(body, dict):
            parts.append(f"[{name}]\n{_table_body(body)}")
        else:
            raise ProvisionError(f"unexpected value outside a table: {name!r}")
    return "\n".join(parts)


def _table_body(table: object) -> str:
    if not isinstance(table, dict):
        raise ProvisionError("an array of tables holds something else")
    return "".join(f"{_key(key)} = {_value(value)}\n" for key, value in table.items())


def _key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else _string(key)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise ProvisionError(f"cannot write a {type(value).__name__} value back")


def _string(text: str) -> str:
    # JSON's escapes are TOML's, apart from DEL, which TOML wants escaped too.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")

"""Board profiles: which pin drives which part, read from TOML in hw/ and checked whole.

A profile names the board's kind (``desk-phone`` or ``intercom``), its sound
card, and each part under ``[buttons.NAME]``, ``[leds.NAME]`` or
``[relays.NAME]`` with its BCM pin, its active level and pull (buttons), its
debounce and hold times (buttons) and whether it dims (LEDs). The kind fixes
which parts must be there (:data:`REQUIRED`) and which may (:data:`OPTIONAL`);
the ``[phone]`` or ``[intercom]`` table carries what the behaviour does with
them (speed-dial buddies; targets to ring, how, how long the door opens).

Every mistake is refused before the agent starts, as
``FILE:LINE: key 'buttons.call.pin': reason``: an unknown key or part, a pin
outside BCM 0-27, a pin the board's buses hold (:data:`RESERVED`), a pin used
twice, a required part missing, a pull that contradicts the active level,
debounce and hold times out of range. :func:`wiring_table` renders the
profile as the pin-to-part table that hw/README.md carries (a test keeps the
two the same).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edge.runtime.config import ConfigDoc, load

KINDS: Final = ("desk-phone", "intercom")
GROUPS: Final = ("buttons", "leds", "relays")
REQUIRED: Final[Mapping[str, Mapping[str, tuple[str, ...]]]] = {
    "desk-phone": {
        "buttons": ("hook", "call", "answer", "speed_1", "speed_2", "speed_3", "speed_4"),
        "leds": ("ring", "message", "in_call"),
        "relays": (),
    },
    "intercom": {"buttons": ("call",), "leds": ("status",), "relays": ("door",)},
}
"""The parts each kind of board must have, by group."""
OPTIONAL: Final[Mapping[str, Mapping[str, tuple[str, ...]]]] = {
    "desk-phone": {"buttons": (), "leds": (), "relays": ()},
    "intercom": {"buttons": ("button_2",), "leds": (), "relays": ()},
}
BCM_PINS: Final = range(28)
"""The GPIO lines of the 40-pin header, by BCM number."""
RESERVED: Final[Mapping[int, str]] = {
    0: "the HAT ID EEPROM (ID_SD)",
    1: "the HAT ID EEPROM (ID_SC)",
    2: "I2C SDA, the codec's control bus",
    3: "I2C SCL, the codec's control bus",
    14: "UART TXD, the serial provisioning console",
    15: "UART RXD, the serial provisioning console",
    18: "I2S PCM_CLK, the sound card",
    19: "I2S PCM_FS, the sound card",
    20: "I2S PCM_DIN, the sound card",
    21: "I2S PCM_DOUT, the sound card",
}
"""Pins both supported boards give to their buses: the sound card (I2S, with I2C for
the codec's registers), the serial console (UART) and the HAT's ID EEPROM."""
HEADER_PIN: Final[Mapping[int, int]] = {
    0: 27, 1: 28, 2: 3, 3: 5, 4: 7, 5: 29, 6: 31, 7: 26, 8: 24, 9: 21, 10: 19, 11: 23,
    12: 32, 13: 33, 14: 8, 15: 10, 16: 36, 17: 11, 18: 12, 19: 35, 20: 38, 21: 40,
    22: 15, 23: 16, 24: 18, 25: 22, 26: 37, 27: 13,
}  # fmt: skip
"""BCM number to physical pin of the 40-pin header, for the wiring table."""
PULLS: Final = ("up", "down", "none")
LEVELS: Final = ("low", "high")
BOUNCE_MS: Final = (0, 200)
HOLD_MS: Final = (20, 10_000)
RING_MODES: Final = ("sequence", "parallel")
MAX_TARGETS: Final = 8
SPEED_DIALS: Final = 4
USER_MAX: Final = 64
TEXT_MAX: Final = 200


@dataclass(frozen=True)
class ButtonSpec:
    pin: int
    pull: str
    """"up" (active low), "down" (active high) or "none" (an external resistor)."""
    active_high: bool
    bounce: float
    """Seconds an edge must stay before it counts (0: none)."""
    hold: float
    """Seconds a press must last to count as held (an intercom's call button: a press)."""
    part: str

    @property
    def pull_up(self) -> bool | None:
        """gpiozero's ``pull_up``: None when the board has its own resistor."""
        return {"up": True, "down": False}.get(self.pull)


@dataclass(frozen=True)
class OutputSpec:
    pin: int
    active_high: bool
    pwm: bool
    part: str


@dataclass(frozen=True)
class AudioSpec:
    overlay: str
    """The device-tree overlay that brings the sound card up."""
    capture: str
    playback: str
    rate: int
    echo_cancel: bool = False
    """Hands-free: the loudspeaker's echo cancelled from the microphone."""


@dataclass(frozen=True)
class PhoneSettings:
    speed_dial: tuple[str, ...]
    """The buddies of speed-dial buttons 1 to 4; "" for none."""


@dataclass(frozen=True)
class IntercomSettings:
    targets: tuple[str, ...]
    targets_2: tuple[str, ...]
    """Whom the optional second button rings."""
    ring: str
    """"sequence" (one after the other) or "parallel" (all at once)."""
    ring_seconds: float
    """How long one target (sequence) or all of them (parallel) may ring unanswered."""
    door_seconds: float


@dataclass(frozen=True)
class Profile:
    name: str
    kind: str
    model: str
    audio: AudioSpec
    buttons: Mapping[str, ButtonSpec]
    leds: Mapping[str, OutputSpec]
    relays: Mapping[str, OutputSpec]
    phone: PhoneSettings | None = None
    intercom: IntercomSettings | None = None


def read(path: Path) -> Profile:
    """The profile at ``path``, or the first mistake in it (a ConfigFileError)."""
    return from_doc(load(path), path.stem)


def from_doc(doc: ConfigDoc, name: str) -> Profile:
    board = doc.get_table("board", required=True)
    board.check_unknown({"kind", "model"})
    kind = board.get_enum("kind", KINDS)
    used: dict[int, str] = {}
    buttons = {n: _button(n, t, used) for n, t in _parts(doc, kind, "buttons")}
    leds = {n: _output(n, t, used, pwm_allowed=True) for n, t in _parts(doc, kind, "leds")}
    relays = {n: _output(n, t, used, pwm_allowed=False) for n, t in _parts(doc, kind, "relays")}
    doc.check_unknown({"board", "audio", *GROUPS, "phone" if kind == "desk-phone" else "intercom"})
    return Profile(
        name=name,
        kind=kind,
        model=board.get_str("model", "", max_length=TEXT_MAX),
        audio=_audio(doc.get_table("audio", required=True)),
        buttons=buttons,
        leds=leds,
        relays=relays,
        phone=_phone(doc.get_table("phone")) if kind == "desk-phone" else None,
        intercom=_intercom(doc.get_table("intercom")) if kind == "intercom" else None,
    )


def _parts(doc: ConfigDoc, kind: str, group: str) -> list[tuple[str, ConfigDoc]]:
    """The parts of ``group`` in the order written: each known to ``kind``, the
    required ones all there."""
    table = doc.get_table(group)
    required, optional = REQUIRED[kind][group], OPTIONAL[kind][group]
    table.check_unknown({*required, *optional})
    for part in required:
        table.get_table(part, required=True)
    return [(part, table.get_table(part, required=True)) for part in table]


def _pin(name: str, table: ConfigDoc, used: dict[int, str]) -> int:
    pin = table.get_int("pin", min=BCM_PINS.start, max=BCM_PINS.stop - 1)
    if pin in RESERVED:
        raise table.error("pin", f"BCM {pin} is reserved for {RESERVED[pin]} on this board")
    if pin in used:
        raise table.error("pin", f"BCM {pin} is already used by {used[pin]}")
    used[pin] = name
    return pin


def _button(name: str, table: ConfigDoc, used: dict[int, str]) -> ButtonSpec:
    table.check_unknown({"pin", "pull", "active", "bounce_ms", "hold_ms", "part"})
    pin = _pin(f"buttons.{name}", table, used)
    pull = table.get_enum("pull", PULLS)
    # With the pin's own resistor the level at rest is fixed, so only one active
    # level makes sense; an external resistor must say which it is.
    expected = {"up": "low", "down": "high"}.get(pull)
    if expected is None:
        active = table.get_enum("active", LEVELS)
    else:
        active = table.get_enum("active", LEVELS, expected)
    if expected is not None and active != expected:
        raise table.error(
            "active",
            f"a pull-{pull} button rests {_other(expected)} and reads {expected} when "
            f'pressed, not {active}; use pull = "none" for an external resistor',
        )
    bounce = table.get_int("bounce_ms", 20, min=BOUNCE_MS[0], max=BOUNCE_MS[1])
    hold = table.get_int("hold_ms", 1000, min=HOLD_MS[0], max=HOLD_MS[1])
    if hold <= bounce:
        raise table.error("hold_ms", f"must exceed bounce_ms ({bounce}), got {hold}")
    part = table.get_str("part", name, max_length=TEXT_MAX)
    return ButtonSpec(pin, pull, active == "high", bounce / 1000, hold / 1000, part)


def _output(name: str, table: ConfigDoc, used: dict[int, str], *, pwm_allowed: bool) -> OutputSpec:
    keys = {"pin", "active", "part"}
    table.check_unknown(keys | {"pwm"} if pwm_allowed else keys)
    pin = _pin(f"{'leds' if pwm_allowed else 'relays'}.{name}", table, used)
    active = table.get_enum("active", LEVELS, "high")
    pwm = table.get_bool("pwm", False) if pwm_allowed else False
    return OutputSpec(pin, active == "high", pwm, table.get_str("part", name, max_length=TEXT_MAX))


def _other(level: str) -> str:
    return "high" if level == "low" else "low"


def _audio(table: ConfigDoc) -> AudioSpec:
    table.check_unknown({"overlay", "capture", "playback", "rate", "echo_cancel"})
    return AudioSpec(
        overlay=table.get_str("overlay", "", max_length=TEXT_MAX),
        capture=table.get_str("capture", min_length=1, max_length=TEXT_MAX),
        playback=table.get_str("playback", min_length=1, max_length=TEXT_MAX),
        rate=table.get_int("rate", 48000, min=8000, max=48000),
        echo_cancel=table.get_bool("echo_cancel", False),
    )


def _phone(table: ConfigDoc) -> PhoneSettings:
    table.check_unknown({"speed_dial"})
    dials = table.get_list_of_str(
        "speed_dial", [""] * SPEED_DIALS, max_items=SPEED_DIALS, max_length=USER_MAX
    )
    return PhoneSettings(tuple(dials) + ("",) * (SPEED_DIALS - len(dials)))


def _intercom(table: ConfigDoc) -> IntercomSettings:
    table.check_unknown({"targets", "targets_2", "ring", "ring_seconds", "door_open_ms"})
    return IntercomSettings(
        targets=_targets(table, "targets"),
        targets_2=_targets(table, "targets_2"),
        ring=table.get_enum("ring", RING_MODES, "sequence"),
        ring_seconds=table.get_float("ring_seconds", 20.0, min=2.0, max=120.0),
        door_seconds=table.get_int("door_open_ms", 3000, min=200, max=30_000) / 1000,
    )


def _targets(table: ConfigDoc, key: str) -> tuple[str, ...]:
    users = table.get_list_of_str(key, [], max_items=MAX_TARGETS, max_length=USER_MAX)
    if any(not user for user in users) or len(set(users)) != len(users):
        raise table.error(key, f"expected distinct, non-empty user ids, got {users}")
    return tuple(users)


def wiring_table(profile: Profile) -> str:
    """The profile's pins as a Markdown table, by BCM number: the wiring notes."""
    rows = [(spec.pin, name, "button", _button_notes(spec), spec.part)
            for name, spec in profile.buttons.items()]  # fmt: skip
    for group, specs in (("LED", profile.leds), ("relay", profile.relays)):
        for name, out in specs.items():
            level = "active high" if out.active_high else "active low"
            rows.append((out.pin, name, group, level + (", PWM" if out.pwm else ""), out.part))
    lines = ["| BCM | header pin | name | kind | electrical | part |", "|---|---|---|---|---|---|"]
    for pin, name, kind, notes, part in sorted(rows):
        lines.append(f"| {pin} | {HEADER_PIN[pin]} | {name} | {kind} | {notes} | {part} |")
    return "\n".join(lines) + "\n"


def _button_notes(spec: ButtonSpec) -> str:
    pull = "external resistor" if spec.pull == "none" else f"pull-{spec.pull}"
    level = "active high" if spec.active_high else "active low"
    ms = f"bounce {round(spec.bounce * 1000)} ms, hold {round(spec.hold * 1000)} ms"
    return f"{pull}, {level}, {ms}"

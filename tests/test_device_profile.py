"""Board profiles: the two in hw/ load, their wiring tables match hw/README.md, and every
kind of mistake is refused naming the file, the key and the reason."""

from pathlib import Path

import pytest

from edge.device.profile import RESERVED, from_doc, read, wiring_table
from edge.runtime.config import loads
from edge.runtime.errors import ConfigFileError, ConfigMissingKeyError, ConfigUnknownKeyError

HW = Path(__file__).parent.parent / "hw"
DESK = (HW / "desk-phone-pi4.toml").read_text()
INTERCOM = (HW / "intercom-pizero2w.toml").read_text()


def load(text: str, name: str = "board.toml"):  # type: ignore[no-untyped-def]
    return from_doc(loads(text, name), "board")


def refused(text: str) -> str:
    with pytest.raises(ConfigFileError) as caught:
        load(text)
    return str(caught.value)


def test_both_profiles_load_with_every_part() -> None:
    desk = read(HW / "desk-phone-pi4.toml")
    assert desk.kind == "desk-phone" and desk.phone is not None
    assert set(desk.buttons) == {"hook", "call", "answer", "speed_1", "speed_2", "speed_3",
                                 "speed_4"}  # fmt: skip
    assert set(desk.leds) == {"ring", "message", "in_call"} and not desk.relays
    assert desk.buttons["hook"].pull_up is True and not desk.buttons["hook"].active_high
    assert desk.leds["ring"].pwm and desk.audio.capture.startswith("hw:CARD=wm8960")
    door = read(HW / "intercom-pizero2w.toml")
    assert door.kind == "intercom" and door.intercom is not None
    assert set(door.buttons) == {"call", "button_2"} and set(door.relays) == {"door"}
    assert door.buttons["call"].hold == pytest.approx(0.15)
    assert door.intercom.ring == "sequence" and door.intercom.door_seconds == 3.0


@pytest.mark.parametrize("name", ["desk-phone-pi4", "intercom-pizero2w"])
def test_the_readme_carries_each_profiles_wiring_table(name: str) -> None:
    table = wiring_table(read(HW / f"{name}.toml"))
    assert table in (HW / "README.md").read_text()
    pins = [int(row.split("|")[1]) for row in table.splitlines()[2:]]
    assert pins == sorted(pins) and not set(pins) & set(RESERVED)


def test_a_pin_used_twice_names_both_parts() -> None:
    text = DESK.replace("[buttons.call]\npin = 27", "[buttons.call]\npin = 17")
    message = refused(text)
    line = text[: text.index("[buttons.call]\npin = 17")].count("\n") + 2
    assert message == (
        f"board.toml:{line}: key 'buttons.call.pin': BCM 17 is already used by buttons.hook"
    )


@pytest.mark.parametrize(("pin", "reason"), [(28, "from 0 to 27"), (-1, "from 0 to 27"),
                                             (18, "I2S PCM_CLK"), (14, "UART TXD"),
                                             (2, "I2C SDA")])  # fmt: skip
def test_unknown_and_reserved_pins_are_refused(pin: int, reason: str) -> None:
    message = refused(INTERCOM.replace("[relays.door]\npin = 23", f"[relays.door]\npin = {pin}"))
    assert "key 'relays.door.pin'" in message and reason in message, message


def test_a_missing_required_part_is_named() -> None:
    text = DESK.replace('[buttons.speed_4]\npin = 26\npull = "up"\npart = "speed-dial button 4"',
                        "")  # fmt: skip
    with pytest.raises(ConfigMissingKeyError) as caught:
        load(text)
    assert "buttons.speed_4" in str(caught.value)
    without_door = (
        INTERCOM[: INTERCOM.index("[relays.door]")] + INTERCOM[INTERCOM.index("[intercom]") :]
    )
    with pytest.raises(ConfigMissingKeyError, match=r"relays\.door"):
        load(without_door)


def test_an_unknown_part_or_key_is_refused() -> None:
    with pytest.raises(ConfigUnknownKeyError, match=r"relays\.door"):
        load(DESK + "\n[relays.door]\npin = 24\n")  # a desk phone has no door
    with pytest.raises(ConfigUnknownKeyError, match="bounce"):
        load(DESK.replace("bounce_ms = 30", "bounce = 30"))
    with pytest.raises(ConfigUnknownKeyError, match="intercom"):
        load(DESK + "\n[intercom]\ntargets = []\n")


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        ("bounce_ms = 30\nhold_ms = 1000", "bounce_ms = 500\nhold_ms = 1000", "bounce_ms",
         "from 0 to 200"),
        ("bounce_ms = 30\nhold_ms = 1000", "bounce_ms = 30\nhold_ms = 20", "hold_ms",
         "must exceed bounce_ms (30)"),
        ("bounce_ms = 30\nhold_ms = 1000", "bounce_ms = 30\nhold_ms = 99999", "hold_ms",
         "from 20 to 10000"),
        ('pull = "up"\nactive = "low"', 'pull = "up"\nactive = "high"', "active",
         "a pull-up button rests high"),
        ('pull = "up"\nactive = "low"', 'pull = "none"', "active", "missing"),
        ('pull = "up"\nactive = "low"', 'pull = "sideways"', "pull", "sideways"),
    ],
)  # fmt: skip
def test_bad_button_settings_are_refused(old: str, new: str, key: str, reason: str) -> None:
    assert old in DESK
    message = refused(DESK.replace(old, new, 1))
    assert f"buttons.hook.{key}" in message and reason in message, message


def test_an_external_resistor_takes_either_level() -> None:
    profile = load(DESK.replace('pull = "up"\nactive = "low"', 'pull = "none"\nactive = "high"'))
    hook = profile.buttons["hook"]
    assert hook.pull_up is None and hook.active_high


def test_intercom_settings_are_checked() -> None:
    message = refused(INTERCOM.replace("targets = []", 'targets = ["bob", "bob"]', 1))
    assert "intercom.targets" in message and "distinct" in message
    message = refused(INTERCOM.replace('ring = "sequence"', 'ring = "shout"'))
    assert "intercom.ring" in message
    message = refused(INTERCOM.replace("door_open_ms = 3000", "door_open_ms = 600000"))
    assert "intercom.door_open_ms" in message


def test_a_wrong_kind_and_a_missing_board_table_are_refused() -> None:
    message = refused(DESK.replace('kind = "desk-phone"', 'kind = "toaster"'))
    assert "board.kind" in message and "toaster" in message
    with pytest.raises(ConfigMissingKeyError, match="board"):
        load("[audio]\ncapture = 'x'\nplayback = 'y'\n")

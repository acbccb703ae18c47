"""The board's parts as gpiozero devices; their callbacks handed to the event loop.

How it works: each button of the profile becomes a gpiozero ``Button`` (its
pull, active level, ``bounce_time`` and ``hold_time`` from the profile), each
LED an ``LED`` or, when it dims, a ``PWMLED``, each relay an
``OutputDevice``, all on the pin factory given (gpiozero's own choice when
None: ``GPIOZERO_PIN_FACTORY``, lgpio on the boards, ``mock`` in tests and
the demo). gpiozero calls ``when_pressed`` and ``when_released`` on its own
threads: :class:`Gpio` only hands the level to the loop
(``call_soon_threadsafe``), where it is stamped with the loop's time and
given to the owner as a :class:`~edge.device.events.ButtonEdge`. A button
already pressed when the devices are made (a lifted handset) is reported
as pressed at once.

LED patterns are gpiozero's own background blinking (:data:`BLINKS`); a relay
pulse switches the output on and schedules it off on the loop, a new pulse
extending the old one.
"""

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from gpiozero import LED, PWMLED, Button, OutputDevice

from edge.device.errors import DeviceMisuse
from edge.device.events import ButtonEdge, LedPattern
from edge.device.profile import Profile

BLINKS: dict[LedPattern, tuple[float, float]] = {
    LedPattern.RINGING: (0.4, 0.2),
    LedPattern.MESSAGE_WAITING: (0.1, 1.9),
    LedPattern.CONNECTING: (0.5, 0.5),
    LedPattern.ERROR: (0.1, 0.1),
}
"""On and off seconds of each blinking pattern; ON and IN_CALL are lit, OFF dark."""
LIT = frozenset({LedPattern.ON, LedPattern.IN_CALL})
FADE = 0.1
"""Seconds a dimming LED takes to fade in and out while it blinks."""


class Gpio:
    """The profile's devices; see the module docstring."""

    def __init__(
        self,
        profile: Profile,
        loop: asyncio.AbstractEventLoop,
        on_edge: Callable[[ButtonEdge], None],
        *,
        pin_factory: Any = None,
    ) -> None:
        self._loop, self._on_edge = loop, on_edge
        self._closed = False
        self.buttons: dict[str, Any] = {}
        self.leds: dict[str, Any] = {}
        self.relays: dict[str, Any] = {}
        self.patterns: dict[str, LedPattern] = {}
        self.pulses = 0
        self.changed: Callable[[], None] = lambda: None
        """Called when a relay is released (the owner's wait_for looks again)."""
        self._release: dict[str, asyncio.TimerHandle] = {}
        self._pwm: set[str] = set()
        self._active_high: dict[str, bool] = {}
        try:
            self._make(profile, pin_factory)
        except Exception:
            self.close()
            raise

    def _make(self, profile: Profile, factory: Any) -> None:
        for name, spec in profile.buttons.items():
            button = Button(
                spec.pin, pull_up=spec.pull_up,
                active_state=None if spec.pull_up is not None else spec.active_high,
                bounce_time=spec.bounce or None, hold_time=spec.hold, pin_factory=factory,
            )  # fmt: skip
            button.when_pressed = self._from_thread(name, True)
            button.when_released = self._from_thread(name, False)
            self.buttons[name] = button
            self._active_high[name] = spec.active_high
        for name, out in profile.leds.items():
            kind = PWMLED if out.pwm else LED
            self.leds[name] = kind(out.pin, active_high=out.active_high, pin_factory=factory)
            self.patterns[name] = LedPattern.OFF
            if out.pwm:
                self._pwm.add(name)
        for name, out in profile.relays.items():
            self.relays[name] = OutputDevice(
                out.pin, active_high=out.active_high, initial_value=False, pin_factory=factory
            )

    def report_pressed(self) -> None:
        """Tell the owner of every button pressed now (before any edge could)."""
        for name, button in self.buttons.items():
            if button.is_pressed:
                self._edge(name, True)

    def _from_thread(self, name: str, pressed: bool) -> Callable[[], None]:
        def hand_over() -> None:
            # The loop may be closing as a late callback comes: it is dropped then.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._edge, name, pressed)

        return hand_over

    def _edge(self, name: str, pressed: bool) -> None:
        if not self._closed:
            self._on_edge(ButtonEdge(name, pressed, self._loop.time()))

    def drive(self, part: str, pressed: bool) -> None:
        """Press or release button ``part`` by driving its pin, on a mock pin factory
        only (tests and the demo, ``GPIOZERO_PIN_FACTORY=mock``): gpiozero then calls
        back as it would for a finger on the button."""
        pin = self._device(self.buttons, part).pin
        if not hasattr(pin, "drive_low"):
            raise DeviceMisuse(f"{part} is on a real pin: only a mock pin is pressed from here")
        if pressed == self._active_high[part]:
            pin.drive_high()
        else:
            pin.drive_low()

    # -- outputs

    def show(self, part: str, pattern: LedPattern) -> None:
        led = self._device(self.leds, part)
        self.patterns[part] = pattern
        blink = BLINKS.get(pattern)
        if blink is not None and part in self._pwm:
            on, off = blink
            fade = min(FADE, on / 2, off / 2)
            led.blink(on - fade, off - fade, fade_in_time=fade, fade_out_time=fade)
        elif blink is not None:
            led.blink(*blink)
        elif pattern in LIT:
            led.on()
        else:
            led.off()

    def pulse(self, part: str, seconds: float) -> None:
        """Energise relay ``part`` for ``seconds`` (from now, if it is on already)."""
        relay = self._device(self.relays, part)
        previous = self._release.pop(part, None)
        if previous is not None:
            previous.cancel()
        relay.on()
        self.pulses += 1
        self._release[part] = self._loop.call_later(seconds, self._off, part)

    def _off(self, part: str) -> None:
        self._release.pop(part, None)
        if not self._closed:
            self.relays[part].off()
            self.changed()

    def _device(self, devices: dict[str, Any], part: str) -> Any:
        device = devices.get(part)
        if device is None or self._closed:
            raise DeviceMisuse(f"no open device {part!r} on this board")
        return device

    def status(self) -> dict[str, object]:
        return {
            "leds": {name: pattern.value for name, pattern in self.patterns.items()},
            "relays": {name: "on" if r.value else "off" for name, r in self.relays.items()},
            "pressed": [name for name, b in self.buttons.items() if b.is_pressed],
            "relay_pulses": self.pulses,
        }

    def close(self) -> None:
        """Release every pin (relays off first: a door left open is the worst outcome)."""
        self._closed = True
        for handle in self._release.values():
            handle.cancel()
        self._release.clear()
        for devices in (self.relays, self.leds, self.buttons):
            for device in devices.values():
                device.close()

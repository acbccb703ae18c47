"""What the desk phone and the intercom share (sans-IO): settled buttons, the calls
they see, the LEDs they last set, the actions they hand out.

Theory of operation: the adapter stamps each raw level change of a button
with the loop's time and feeds it as :class:`~edge.device.events.ButtonEdge`;
the agent's call changes, placing results, unheard-message counts and peers'
door commands come in as the other events of :mod:`edge.device.events`. A
behaviour answers with actions (:meth:`Behaviour.next_action`) and one timer
(:meth:`Behaviour.get_timer`, :meth:`Behaviour.handle_timer`). Nothing here
reads a clock or touches a pin.

:class:`Buttons` settles raw edges before a behaviour sees them: a level
counts once it has stayed ``bounce`` seconds (the profile's ``bounce_ms``),
whatever the pin factory's own debounce did, so contact bounce never reaches
the behaviour. A level that flips back within that time is a bounce, counted.
A button pressed longer than :data:`STUCK_AFTER` is reported stuck (in
:attr:`Buttons.stuck` and the counters) until it is released; since every
behaviour acts on edges, a stuck button acts once, never again until it
comes back up.
"""

import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass

from edge.client.call import CallState
from edge.device.events import (
    Action,
    ButtonEdge,
    CallNotPlaced,
    CallPlaced,
    CallUpdate,
    DoorCommand,
    Event,
    LedPattern,
    SetLed,
    Unheard,
)
from edge.device.profile import ButtonSpec, Profile

STUCK_AFTER = 30.0
"""Seconds a button may stay pressed before it is reported stuck."""
ERROR_SHOWN = 3.0
"""Seconds an LED shows the error pattern after something failed."""
MAX_ACTIONS = 256
MAX_CALLS = 32
"""Calls remembered (live and just ended); the agent holds a handful at most."""
MAX_UNHEARD = 1_000_000


@dataclass
class _Level:
    bounce: float
    settled: bool = False
    raw: bool = False
    raw_at: float = -math.inf
    pressed_at: float | None = None
    stuck: bool = False


class Buttons:
    """Raw edges in, settled edges out; see the module docstring."""

    def __init__(self, specs: Mapping[str, ButtonSpec], *, stuck_after: float = STUCK_AFTER):
        self._levels = {name: _Level(spec.bounce) for name, spec in specs.items()}
        self.stuck_after = stuck_after
        self.counters: Counter[str] = Counter()

    @property
    def stuck(self) -> list[str]:
        return [name for name, level in self._levels.items() if level.stuck]

    def is_pressed(self, part: str) -> bool:
        return self._levels[part].settled

    def edge(self, edge: ButtonEdge) -> list[ButtonEdge]:
        """Take a raw edge; the settled edges it makes at once (none while bouncing)."""
        level = self._levels.get(edge.part)
        if level is None:
            self.counters["edges of unknown buttons"] += 1
            return []
        if edge.pressed == level.raw:
            self.counters["repeated edges"] += 1
            return []
        if level.raw != level.settled:
            self.counters["bounces"] += 1  # back to the settled level before it counted
        level.raw, level.raw_at = edge.pressed, edge.at
        return self._settle(edge.part, level, edge.at) if level.bounce == 0 else []

    def get_timer(self) -> float | None:
        times = [lv.raw_at + lv.bounce for lv in self._levels.values() if lv.raw != lv.settled]
        times += [
            lv.pressed_at + self.stuck_after
            for lv in self._levels.values()
            if lv.pressed_at is not None and not lv.stuck
        ]
        return min(times, default=None)

    def handle_timer(self, now: float) -> list[ButtonEdge]:
        settled: list[ButtonEdge] = []
        for name, level in self._levels.items():
            if level.raw != level.settled and now >= level.raw_at + level.bounce:
                settled += self._settle(name, level, now)
            due = level.pressed_at is not None and now >= level.pressed_at + self.stuck_after
            if due and not level.stuck:
                level.stuck = True
                self.counters["stuck buttons"] += 1
        return settled

    def _settle(self, name: str, level: _Level, now: float) -> list[ButtonEdge]:
        level.settled = level.raw
        level.pressed_at = level.raw_at if level.raw else None
        level.stuck = False
        return [ButtonEdge(name, level.raw, level.raw_at)]


class Behaviour:
    """The part of a board's behaviour every kind shares; see the module docstring."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.buttons = Buttons(profile.buttons)
        self.counters: Counter[str] = Counter()
        self.leds: dict[str, LedPattern] = dict.fromkeys(profile.leds, LedPattern.OFF)
        self.calls: dict[str, CallUpdate] = {}
        """The calls seen, by id: the live ones and the latest ended ones."""
        self.unheard = 0
        self._actions: deque[Action] = deque()
        self._error_until: float | None = None

    # -- the owner's side

    def handle(self, event: Event, now: float) -> None:
        if isinstance(event, ButtonEdge):
            self._edge(event, now)
        elif isinstance(event, CallUpdate):
            self._track(event)
            self._call(event, now)
        elif isinstance(event, CallPlaced):
            self._placed(event, now)
        elif isinstance(event, CallNotPlaced):
            self.counters["calls not placed"] += 1
            self._not_placed(event, now)
        elif isinstance(event, Unheard):
            self.unheard = min(max(event.count, 0), MAX_UNHEARD)
        else:
            self.door(event, now)
        self._show(now)

    def door(self, command: DoorCommand, now: float) -> str | None:
        """A peer's door command: None when carried out, else why it was refused."""
        self.counters["door commands refused: no door"] += 1
        return "this device has no door"

    def get_timer(self) -> float | None:
        times = [self.buttons.get_timer(), self._error_until, self._next_timer()]
        return min((t for t in times if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        for edge in self.buttons.handle_timer(now):
            self._button(edge, now)
        if self._error_until is not None and now >= self._error_until:
            self._error_until = None
        self._timer(now)
        self._show(now)

    def next_action(self) -> Action | None:
        return self._actions.popleft() if self._actions else None

    def status(self) -> dict[str, object]:
        return {
            "leds": {name: pattern.value for name, pattern in self.leds.items()},
            "stuck": self.buttons.stuck,
            "unheard": self.unheard,
            "counters": dict(self.counters + self.buttons.counters),
        }

    # -- for the kinds

    def live(self) -> list[CallUpdate]:
        return [c for c in self.calls.values() if c.state is not CallState.ENDED]

    def ringing(self) -> CallUpdate | None:
        """The incoming call that is ringing, if one is."""
        return next((c for c in self.live() if c.state is CallState.RINGING), None)

    def _emit(self, action: Action) -> None:
        if len(self._actions) >= MAX_ACTIONS:
            self.counters["actions dropped"] += 1
            return
        self._actions.append(action)

    def _set_led(self, part: str, pattern: LedPattern) -> None:
        if part in self.leds and self.leds[part] is not pattern:
            self.leds[part] = pattern
            self._emit(SetLed(part, pattern))

    def _fail(self, now: float, why: str) -> None:
        self.counters[why] += 1
        self._error_until = now + ERROR_SHOWN

    def _showing_error(self) -> bool:
        return self._error_until is not None

    def _edge(self, edge: ButtonEdge, now: float) -> None:
        for settled in self.buttons.edge(edge):
            self._button(settled, now)

    def _track(self, update: CallUpdate) -> None:
        self.calls.pop(update.call_id, None)
        self.calls[update.call_id] = update  # newest last
        while len(self.calls) > MAX_CALLS:
            ended = [k for k, c in self.calls.items() if c.state is CallState.ENDED]
            del self.calls[ended[0] if ended else next(iter(self.calls))]

    # -- what each kind does

    def _button(self, edge: ButtonEdge, now: float) -> None:
        raise NotImplementedError

    def _call(self, update: CallUpdate, now: float) -> None:
        pass

    def _placed(self, placed: CallPlaced, now: float) -> None:
        pass

    def _not_placed(self, failed: CallNotPlaced, now: float) -> None:
        pass

    def _next_timer(self) -> float | None:
        return None

    def _timer(self, now: float) -> None:
        pass

    def _show(self, now: float) -> None:
        raise NotImplementedError

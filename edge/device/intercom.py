"""The door intercom's behaviour (sans-IO): a press rings the targets, the callee opens the door.

A press counts only once the button has been held its ``hold_ms`` (settled,
see :class:`~edge.device.behaviour.Buttons`); a shorter one is a phantom press
(interference on a long cable, a brush of the hand), counted and ignored. A
press while a call is under way or ringing out is ignored too.

A press rings the button's targets (``targets`` for ``call``, ``targets_2``
for ``button_2``) as a *ring*:

* ``sequence``: one target at a time, each for ``ring_seconds``; a target that
  cannot be called, refuses or does not answer in time gives way to the next;
* ``parallel``: every target at once (the agent holds several outgoing calls,
  each in its own session), all for ``ring_seconds``.

The first call answered (it reaches CONNECTING) wins: every other call of the
ring is hung up, and a call placed after that is hung up as soon as it is
known. When nobody answers the status LED shows the error pattern.

Incoming calls are answered by the agent itself when the caller is in
``[policy] auto_answer`` (certified users, see
:class:`~edge.client.call.CallManager`); the intercom never answers one.

The door opens (:class:`~edge.device.events.PulseRelay` for ``door_open_ms``)
on a DEVICE_COMMAND "open-door" only when it names the call that is active,
comes from that call's peer, in that call's own session: a tone or a message
from anyone else does nothing. Every refusal is counted by reason.
"""

from dataclasses import dataclass, field

from edge.client.call import CallState
from edge.device.behaviour import Behaviour
from edge.device.errors import DeviceMisuse
from edge.device.events import (
    ButtonEdge,
    CallNotPlaced,
    CallPlaced,
    CallUpdate,
    DoorCommand,
    HangUp,
    LedPattern,
    PlaceCall,
    PulseRelay,
)
from edge.device.profile import Profile

OPEN_DOOR = "open-door"
ANSWERED = frozenset({CallState.CONNECTING, CallState.ACTIVE})


@dataclass
class _Ring:
    """The calls one press started."""

    targets: tuple[str, ...]
    next: int = 0
    calls: dict[str, str] = field(default_factory=dict)
    """Call id to target, for the calls of this ring not ended."""
    placing: set[str] = field(default_factory=set)
    """Targets whose PlaceCall has no answer yet."""
    winner: str | None = None
    deadline: float | None = None


class Intercom(Behaviour):
    """See the module docstring."""

    def __init__(self, profile: Profile) -> None:
        if profile.intercom is None:
            raise DeviceMisuse(f"{profile.name} is not an intercom's profile")
        super().__init__(profile)
        self.settings = profile.intercom
        self.ring: _Ring | None = None
        self._pressed: dict[str, float] = {}
        self._fired: set[str] = set()

    # -- the buttons

    def _button(self, edge: ButtonEdge, now: float) -> None:
        if edge.pressed:
            self._pressed[edge.part] = edge.at
            self._timer(now)  # a button with no bounce time may be due already
            return
        began = self._pressed.pop(edge.part, None)
        if edge.part not in self._fired and began is not None:
            self.counters["phantom presses"] += 1
        self._fired.discard(edge.part)

    def _next_timer(self) -> float | None:
        holds = [
            began + self.profile.buttons[part].hold
            for part, began in self._pressed.items()
            if part not in self._fired
        ]
        if self.ring is not None and self.ring.deadline is not None:
            holds.append(self.ring.deadline)
        return min(holds, default=None)

    def _timer(self, now: float) -> None:
        for part, began in list(self._pressed.items()):
            if part not in self._fired and now >= began + self.profile.buttons[part].hold:
                self._fired.add(part)
                self._press(part, now)
        ring = self.ring
        if ring is not None and ring.deadline is not None and now >= ring.deadline:
            self._ring_timed_out(ring, now)

    def _press(self, part: str, now: float) -> None:
        targets = self.settings.targets if part == "call" else self.settings.targets_2
        if not targets:
            self._fail(now, "presses with no targets")
        elif self.ring is not None or self.live():
            self.counters["presses while busy"] += 1
        else:
            self.counters["presses"] += 1
            self.ring = _Ring(targets)
            if self.settings.ring == "parallel":
                for user in targets:
                    self._place(self.ring, user)
                self.ring.deadline = now + self.settings.ring_seconds
            else:
                self._place_next(self.ring, now)

    # -- ringing the targets

    def _place(self, ring: _Ring, user: str) -> None:
        ring.placing.add(user)
        self._emit(PlaceCall(user))

    def _place_next(self, ring: _Ring, now: float) -> None:
        if ring.next >= len(ring.targets):
            self._nobody(now)
            return
        self._place(ring, ring.targets[ring.next])
        ring.next += 1
        ring.deadline = now + self.settings.ring_seconds

    def _placed(self, placed: CallPlaced, now: float) -> None:
        ring = self.ring
        if ring is None or placed.user not in ring.placing or ring.winner is not None:
            # Placed for a ring that is over or already answered: nobody wants it.
            self._emit(HangUp(placed.call_id))
            return
        ring.placing.discard(placed.user)
        ring.calls[placed.call_id] = placed.user

    def _not_placed(self, failed: CallNotPlaced, now: float) -> None:
        ring = self.ring
        if ring is not None and failed.user in ring.placing:
            ring.placing.discard(failed.user)
            self._lost_one(ring, now)

    def _call(self, update: CallUpdate, now: float) -> None:
        ring = self.ring
        if ring is None or update.call_id not in ring.calls:
            return
        if update.state in ANSWERED and ring.winner is None:
            ring.winner, ring.deadline = update.call_id, None
            self.counters["rings answered"] += 1
            for other in [c for c in ring.calls if c != update.call_id]:
                self._emit(HangUp(other))
                del ring.calls[other]
        elif update.state is CallState.ENDED:
            del ring.calls[update.call_id]
            if update.call_id == ring.winner:
                self.ring = None
            else:
                self._lost_one(ring, now)

    def _lost_one(self, ring: _Ring, now: float) -> None:
        """A call of ``ring`` ended or could not be placed: try on, or give up."""
        if ring.winner is not None or ring.calls or ring.placing:
            return
        if self.settings.ring == "sequence":
            self._place_next(ring, now)
        else:
            self._nobody(now)

    def _ring_timed_out(self, ring: _Ring, now: float) -> None:
        ring.deadline = None
        self.counters["rings timed out"] += 1
        for call_id in ring.calls:
            self._emit(HangUp(call_id))
        ring.calls.clear()
        ring.placing.clear()  # a call placed late is hung up when it is known
        self._lost_one(ring, now)

    def _nobody(self, now: float) -> None:
        self.ring = None
        self._fail(now, "rings nobody answered")

    # -- the door

    def door(self, command: DoorCommand, now: float) -> str | None:
        refusal = self._refusal(command)
        if refusal is not None:
            self.counters[f"door commands refused: {refusal}"] += 1
            return refusal
        self.counters["door opened"] += 1
        self._emit(PulseRelay("door", self.settings.door_seconds))
        return None

    def _refusal(self, command: DoorCommand) -> str | None:
        call = self.calls.get(command.call_id)
        if command.action != OPEN_DOOR:
            return f"unknown action {command.action!r}"
        if call is None or call.state is not CallState.ACTIVE:
            return "not in that call"
        if call.peer != command.peer or not command.in_call_session:
            return "not from the peer of the call"
        return None

    # -- the LED

    def _show(self, now: float) -> None:
        live = self.live()
        if any(c.state is CallState.ACTIVE for c in live):
            pattern = LedPattern.IN_CALL
        elif self.ring is not None or any(c.state is CallState.CONNECTING for c in live):
            pattern = LedPattern.CONNECTING
        elif self.ringing() is not None:
            pattern = LedPattern.RINGING
        elif self._showing_error():
            pattern = LedPattern.ERROR
        else:
            pattern = LedPattern.OFF
        self._set_led("status", pattern)

"""The desk phone's behaviour (sans-IO): hook switch, buttons and LEDs over the agent's calls.

* Lifting the handset (the hook switch closes) answers the call that rings, or,
  with no call, dials speed dial 1; putting it down hangs up every call.
* The answer button answers the call that rings, else hangs up the call under way.
* The call button dials the last number dialled again (speed dial 1 before any);
  speed-dial button N dials buddy N. A dial while a call is under way, or to an
  empty speed dial, does nothing but count (and show the error pattern).
* LEDs: ``ring`` shows the ringing pattern while a call rings and the connecting
  pattern while one of ours is being set up; ``in_call`` is lit while a call is
  active and shows the error pattern for a while after a call failed;
  ``message`` shows the message-waiting pattern while unheard messages exist.
"""

from edge.client.call import CallState, EndReason
from edge.device.behaviour import Behaviour
from edge.device.errors import DeviceMisuse
from edge.device.events import (
    Answer,
    ButtonEdge,
    CallNotPlaced,
    CallPlaced,
    CallUpdate,
    HangUp,
    LedPattern,
    PlaceCall,
)
from edge.device.profile import Profile

FAILED = frozenset({EndReason.FAILED, EndReason.ERROR, EndReason.PATH_LOST, EndReason.BUSY})
"""Call endings the phone shows as an error (not a plain hang-up or no answer)."""
SETTING_UP = frozenset({CallState.INVITING, CallState.CONNECTING})


class DeskPhone(Behaviour):
    """See the module docstring."""

    def __init__(self, profile: Profile) -> None:
        if profile.phone is None:
            raise DeviceMisuse(f"{profile.name} is not a desk phone's profile")
        super().__init__(profile)
        self.speed_dial = profile.phone.speed_dial
        self.off_hook = False
        self.last_dialled = ""
        self._placing: str | None = None

    def _button(self, edge: ButtonEdge, now: float) -> None:
        if edge.part == "hook":
            self._hook(edge.pressed, now)
        elif not edge.pressed:
            return
        elif edge.part == "answer":
            self._answer_or_hang_up(now)
        elif edge.part == "call":
            self._dial(self.last_dialled or self.speed_dial[0], now)
        elif edge.part.startswith("speed_"):
            self._dial(self.speed_dial[int(edge.part.removeprefix("speed_")) - 1], now)

    def _hook(self, lifted: bool, now: float) -> None:
        self.off_hook = lifted
        if not lifted:
            for call in self.live():
                self._emit(HangUp(call.call_id))
            return
        ringing = self.ringing()
        if ringing is not None:
            self._emit(Answer(ringing.call_id))
        elif not self.live() and self.speed_dial[0]:
            self._dial(self.speed_dial[0], now)

    def _answer_or_hang_up(self, now: float) -> None:
        ringing, live = self.ringing(), self.live()
        if ringing is not None:
            self._emit(Answer(ringing.call_id))
        elif live:
            self._emit(HangUp(live[-1].call_id))
        else:
            self.counters["answer with no call"] += 1

    def _dial(self, user: str, now: float) -> None:
        if not user:
            self._fail(now, "dials with no number")
        elif self.live() or self._placing is not None:
            self._fail(now, "dials during a call")
        else:
            self._placing = self.last_dialled = user
            self._emit(PlaceCall(user))

    def _placed(self, placed: CallPlaced, now: float) -> None:
        self._placing = None

    def _not_placed(self, failed: CallNotPlaced, now: float) -> None:
        self._placing = None
        self._fail(now, "dials that failed")

    def _call(self, update: CallUpdate, now: float) -> None:
        if update.state is CallState.ENDED and update.reason in FAILED:
            self._fail(now, "calls failed")

    def _show(self, now: float) -> None:
        live = self.live()
        if self.ringing() is not None:
            ring = LedPattern.RINGING
        elif self._placing is not None or any(c.state in SETTING_UP for c in live):
            ring = LedPattern.CONNECTING
        else:
            ring = LedPattern.OFF
        self._set_led("ring", ring)
        if any(c.state is CallState.ACTIVE for c in live):
            self._set_led("in_call", LedPattern.IN_CALL)
        else:
            self._set_led("in_call", LedPattern.ERROR if self._showing_error() else LedPattern.OFF)
        waiting = LedPattern.MESSAGE_WAITING if self.unheard > 0 else LedPattern.OFF
        self._set_led("message", waiting)

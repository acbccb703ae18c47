"""What the device behaviours take in and hand out (sans-IO): frozen dataclasses.

In: :class:`ButtonEdge` (a raw level change, stamped by the adapter), the
agent's calls (:class:`CallUpdate`, :class:`CallPlaced`, :class:`CallNotPlaced`),
the unheard messages (:class:`Unheard`) and a peer's :class:`DoorCommand`.
Out: :class:`SetLed`, :class:`PulseRelay`, and what the agent should do with
its calls (:class:`PlaceCall`, :class:`Answer`, :class:`HangUp`).
"""

from dataclasses import dataclass
from enum import Enum

from edge.client.call import CallState, EndReason


class LedPattern(Enum):
    """What an LED shows; the gpio adapter turns each into on/off times."""

    OFF = "off"
    ON = "on"
    RINGING = "ringing"
    MESSAGE_WAITING = "message-waiting"
    CONNECTING = "connecting"
    IN_CALL = "in-call"
    ERROR = "error"


# -- in


@dataclass(frozen=True)
class ButtonEdge:
    """The button's level changed: ``pressed`` is its new state, ``at`` loop time."""

    part: str
    pressed: bool
    at: float


@dataclass(frozen=True)
class CallUpdate:
    """One of the agent's calls moved to ``state``."""

    call_id: str
    peer: str
    state: CallState
    outgoing: bool
    reason: EndReason | None = None


@dataclass(frozen=True)
class CallPlaced:
    """A :class:`PlaceCall` became the call ``call_id``."""

    user: str
    call_id: str


@dataclass(frozen=True)
class CallNotPlaced:
    """A :class:`PlaceCall` failed (nobody online, refused...)."""

    user: str
    reason: str


@dataclass(frozen=True)
class Unheard:
    """How many messages in the history nobody has read yet."""

    count: int


@dataclass(frozen=True)
class DoorCommand:
    """A DEVICE_COMMAND from ``peer``, naming ``call_id``; ``in_call_session`` says
    whether it came in the session that call's signalling uses."""

    peer: str
    call_id: str
    action: str
    in_call_session: bool


Event = ButtonEdge | CallUpdate | CallPlaced | CallNotPlaced | Unheard | DoorCommand

# -- out


@dataclass(frozen=True)
class SetLed:
    part: str
    pattern: LedPattern


@dataclass(frozen=True)
class PulseRelay:
    """Energise the relay for ``seconds``, then release it."""

    part: str
    seconds: float


@dataclass(frozen=True)
class PlaceCall:
    """Call ``user``; answer with :class:`CallPlaced` or :class:`CallNotPlaced`."""

    user: str


@dataclass(frozen=True)
class Answer:
    call_id: str


@dataclass(frozen=True)
class HangUp:
    call_id: str


Action = SetLed | PulseRelay | PlaceCall | Answer | HangUp

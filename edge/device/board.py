"""A board profile at work inside the agent: gpiozero devices, a behaviour, the agent's calls.

How it works: :class:`Board` builds the profile's devices (:class:`~edge.device.gpio.Gpio`)
and its behaviour (:class:`~edge.device.phone.DeskPhone` or
:class:`~edge.device.intercom.Intercom`), then feeds the behaviour

* the buttons' edges, handed to the loop by the adapter;
* the agent's call changes, read from the call driver's history whenever it
  changes (:meth:`~edge.client.calls.CallDriver.wait_for`);
* the number of unheard messages (incoming, not READ), whenever the messages
  change;
* DEVICE_COMMANDs that peers send (:meth:`Board.command`);

and carries out what it says: LED patterns and relay pulses on the devices,
calls placed (through the agent, as ``edge ctl call`` would), answered and
hung up. One loop timer stands for the behaviour's :meth:`get_timer`.

:func:`send_door_command` is the other end: ``edge ctl door open`` on the
callee's device sends OPEN_DOOR in the active call's own session.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from edge.client.call import Call, CallState, CallStateChanged
from edge.client.calls import CallDriver
from edge.client.messages import MessageDriver
from edge.client.messaging import MAX_HISTORY, Status
from edge.client.peers import Peers
from edge.device.behaviour import Behaviour
from edge.device.errors import CommandRefused, DeviceMisuse
from edge.device.events import (
    Action,
    Answer,
    CallNotPlaced,
    CallPlaced,
    CallUpdate,
    DoorCommand,
    Event,
    HangUp,
    PlaceCall,
    PulseRelay,
    SetLed,
    Unheard,
)
from edge.device.gpio import Gpio
from edge.device.intercom import OPEN_DOOR, Intercom
from edge.device.phone import DeskPhone
from edge.device.profile import Profile
from edge.errors import EdgeError
from edge.wire.codes import MsgType
from edge.wire.messages import DeviceAction, Message

_log = logging.getLogger(__name__)

ACTIONS = {DeviceAction.OPEN_DOOR: OPEN_DOOR}
"""The wire's device actions by the names the behaviours use."""
MAX_PLACING = 8
"""Calls being placed at once for the behaviour (an intercom ringing in parallel)."""


class Host(Protocol):
    """What a board needs of its agent."""

    calls: CallDriver | None
    chat: MessageDriver | None

    async def call(self, args: Mapping[str, Any]) -> dict[str, Any]: ...


def behaviour_for(profile: Profile) -> Behaviour:
    return DeskPhone(profile) if profile.kind == "desk-phone" else Intercom(profile)


class Board:
    """See the module docstring; :meth:`start` once the agent's calls exist."""

    def __init__(self, profile: Profile, host: Host, *, pin_factory: Any = None) -> None:
        self.profile = profile
        self.behaviour = behaviour_for(profile)
        self._host = host
        self._pin_factory = pin_factory
        self.gpio: Gpio | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._last_change: CallStateChanged | None = None
        self._unheard = 0
        self.placing = 0
        self._changes = asyncio.Event()

    async def start(self) -> None:
        calls, chat = self._host.calls, self._host.chat
        if calls is None or chat is None:
            raise DeviceMisuse("the board starts after the agent's calls and messages")
        loop = asyncio.get_running_loop()
        self.gpio = Gpio(self.profile, loop, self.feed, pin_factory=self._pin_factory)
        self.gpio.changed = self._changed
        self._unheard = -1  # tell the behaviour the first count, whatever it is
        self._spawn(self._follow(calls.wait_for, lambda: self._call_changes(calls)))
        self._spawn(self._follow(chat.wait_for, lambda: self._unheard_changed(chat)))
        self.gpio.report_pressed()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.gpio is not None:
            self.gpio.close()
            self.gpio = None  # status no longer reads closed devices

    def press(self, part: str, action: str) -> dict[str, Any]:
        """``button PART press|release`` on a mock pin factory (see :meth:`Gpio.drive`)."""
        if self.gpio is None or part not in self.gpio.buttons:
            known = ", ".join(self.profile.buttons)
            raise DeviceMisuse(f"no button {part!r} on this board (it has {known})")
        if action not in ("press", "release"):
            raise DeviceMisuse(f"button {part} takes press or release, not {action!r}")
        self.gpio.drive(part, action == "press")
        return {"button": part, "pressed": action == "press"}

    def status(self) -> dict[str, object]:
        return {
            "profile": self.profile.name,
            "kind": self.profile.kind,
            **self.behaviour.status(),
            **(self.gpio.status() if self.gpio is not None else {}),
        }

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checked after every event the behaviour
        takes and every relay released."""
        while not condition():
            await self._changes.wait()

    def _changed(self) -> None:
        self._changes.set()
        self._changes = asyncio.Event()

    # -- in

    def feed(self, event: Event) -> None:
        """Give the behaviour ``event`` now and carry out what it says."""
        self.behaviour.handle(event, self._now())
        self._drain()

    def command(self, peer: tuple[str, str], session: int | None, message: Message) -> None:
        """A DEVICE_COMMAND from ``peer``'s session: the behaviour decides; refusals
        are counted there and logged here."""
        call_id = bytes(message.body.call_id).hex()
        action = ACTIONS.get(message.body.action, str(message.body.action))
        calls = self._host.calls
        in_session = calls is not None and session is not None and (
            _session_of_call(calls, call_id) == session
        )  # fmt: skip
        command = DoorCommand(peer[0], call_id, action, in_session)
        refusal = self.behaviour.door(command, self._now())
        self._drain()
        if refusal is not None:
            _log.warning("device command from %s/%s refused: %s", *peer, refusal)

    async def _follow(self, wait: Callable[[Callable[[], bool]], Awaitable[None]],
                      changed: Callable[[], bool]) -> None:  # fmt: skip
        """Feed what ``changed`` finds each time the driver behind ``wait`` changes."""
        while True:
            await wait(changed)

    def _call_changes(self, calls: CallDriver) -> bool:
        """Feed the call changes since the last look; False (never done) to wait again."""
        for change in self._fresh(calls.history):
            call = calls.manager.calls.get(change.call_id)
            self.feed(_update(change, call))
        return False

    def _fresh(self, history: list[CallStateChanged]) -> list[CallStateChanged]:
        # The driver keeps its latest changes only: find the last one fed by identity.
        for index in range(len(history) - 1, -1, -1):
            if history[index] is self._last_change:
                fresh = history[index + 1 :]
                break
        else:
            fresh = list(history)
        if fresh:
            self._last_change = fresh[-1]
        return fresh

    def _unheard_changed(self, chat: MessageDriver) -> bool:
        entries = chat.core.history.recent(limit=MAX_HISTORY)
        count = sum(1 for e in entries if not e.outgoing and e.status is not Status.READ)
        if count != self._unheard:
            self._unheard = count
            self.feed(Unheard(count))
        return False

    # -- out

    def _drain(self) -> None:
        while (action := self.behaviour.next_action()) is not None:
            try:
                self._do(action)
            except EdgeError as exc:
                self.behaviour.counters["actions failed"] += 1
                _log.warning("board action %s failed: %s", action, exc)
        self._arm()
        self._changed()

    def _do(self, action: Action) -> None:
        assert self.gpio is not None
        if isinstance(action, SetLed):
            self.gpio.show(action.part, action.pattern)
        elif isinstance(action, PulseRelay):
            self.gpio.pulse(action.part, action.seconds)
        elif isinstance(action, PlaceCall):
            self._place(action.user)
        else:
            self._act(action)

    def _act(self, action: Answer | HangUp) -> None:
        calls, now = self._host.calls, self._now()
        if calls is None:
            return
        call_id = bytes.fromhex(action.call_id)
        if call_id not in calls.manager.calls or calls.manager.calls[call_id].is_ended:
            return  # ended meanwhile: nothing to answer or hang up
        if isinstance(action, Answer):
            calls.act(call_id, lambda call: call.answer(now))
        else:
            calls.act(call_id, lambda call: call.hangup(now))

    def _place(self, user: str) -> None:
        if self.placing >= MAX_PLACING:
            self.feed(CallNotPlaced(user, "too many calls being placed"))
            return
        self.placing += 1
        self._spawn(self._placing(user))

    async def _placing(self, user: str) -> None:
        try:
            answer = await self._host.call({"user": user})
        except (EdgeError, OSError) as exc:
            self.feed(CallNotPlaced(user, str(exc)))
        else:
            self.feed(CallPlaced(user, str(answer["call"])))
        finally:
            self.placing -= 1

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.behaviour.get_timer()
        if at is not None:
            self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.behaviour.handle_timer(self._now())
        self._drain()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A board that stops following its agent must say so, not go quiet.
            self.behaviour.counters["board tasks failed"] += 1
            _log.error("board task failed", exc_info=task.exception())

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()


def _update(change: CallStateChanged, call: Call | None) -> CallUpdate:
    peer = call.peer if call is not None else ""
    outgoing = call.controlling if call is not None else False
    return CallUpdate(change.call_id.hex(), peer, change.new, outgoing, change.reason)


def _session_of_call(calls: CallDriver, call_id: str) -> int | None:
    # The driver remembers each call's session but offers no accessor for it yet.
    return calls._session_of.get(bytes.fromhex(call_id))


def send_door_command(calls: CallDriver | None, peers: Peers | None) -> dict[str, Any]:
    """OPEN_DOOR to the peer of the active call, in that call's session."""
    if calls is None or peers is None:
        raise CommandRefused("this device is not running yet")
    active = [c for c in calls.manager.calls.values() if c.state is CallState.ACTIVE]
    if not active:
        raise CommandRefused("no call is active: the door opens only for the peer of one")
    call = active[-1]
    session = calls._session_of.get(call.call_id)
    if session is None or not peers.core.endpoint.is_established(session):
        raise CommandRefused(f"the session of the call with {call.peer} is gone")
    body = {"call_id": call.call_id, "action": DeviceAction.OPEN_DOOR}
    peers.send(session, MsgType.DEVICE_COMMAND, body)
    return {"sent": "open-door", "to": call.peer, "call": call.call_id.hex()}

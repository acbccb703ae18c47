"""The agent's instant messages on its peer sessions: the messaging core, its timer,
the mailbox and the history file.

How it works: :class:`MessageDriver` owns the agent's one
:class:`~edge.client.messaging.Messenger` and does what the core leaves to its
owner:

* its :class:`~edge.client.messaging.Send` actions travel in the end-to-end
  sessions with the other devices (:class:`~edge.client.peers.Peers`): a new
  message to every device of the user with a session up, a receipt to the
  device that sent the message. A receipt for a device with no session (a
  message that came through the mailbox) waits, capped, until one comes up;
* the core hears ``path_up`` when a session with a user opens (we opened it,
  or a message came in on it) and ``path_down`` once none of that user's
  sessions is established any more (checked whenever the driver runs);
* :class:`~edge.client.messaging.OfflineDelivery` becomes
  :func:`edge.client.mailbox.leave` through a fresh login session; mailbox
  items fetched at login go back in through ``receive_offline``, so they are
  ordered and de-duplicated with the rest;
* one loop timer, armed at the core's ``get_timer``;
* the history in ``messages.json`` in the state dir: loaded at start (a file
  that cannot be used is renamed ``messages.json.corrupt`` and the agent
  starts empty, with a warning), saved atomically a second after a change and
  when the agent stops.

``send`` is what ``edge ctl send`` waits on: open sessions with the user's
online devices, send, wait up to :data:`RECEIPT_TIMEOUT` for every one of
them to say DELIVERED; with no answer at all, hand the message to the
mailbox at once. A device that has not answered after :data:`FRESH_AFTER`
gets a fresh session beside the old one: a device that restarted has
forgotten its sessions, and would otherwise see the message only at its next
login, through the mailbox. ``edge ctl messages`` shows the history (:meth:`listing`)
and marks what it showed READ, which tells the senders.
"""

import asyncio
import contextlib
import logging
import os
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.client import mailbox
from edge.client.errors import MessageRefused, MessagingMisuse, OutboxFull, PeerUnreachable
from edge.client.login import LoginSession
from edge.client.messaging import (
    MAX_HISTORY,
    Entry,
    Event,
    History,
    HistoryFileError,
    Limits,
    MessageDelivered,
    Messenger,
    OfflineDelivery,
    ReceiptReceived,
    Send,
    Status,
    load_history,
    save_history,
)
from edge.client.peers import Peers
from edge.client.port import via_address
from edge.crypto.cert import TrustStore
from edge.errors import EdgeError
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import MailKind, Message, ReceiptStatus

_log = logging.getLogger(__name__)

HISTORY_FILE = "messages.json"
CORRUPT_SUFFIX = ".corrupt"
RECEIPT_TIMEOUT = 10.0
"""How long ``send`` waits for the online devices' receipts before the mailbox."""
FRESH_AFTER = 2.0
"""Without a receipt after this (the message went twice: at once and a second
later), ``send`` opens a fresh session beside the old one, in time for the
core's third try at 3 s."""
SAVE_DELAY = 1.0
"""A burst of messages is saved once, not once per message."""
MAX_SHOWN = 200
"""Messages each way that ``edge ctl messages`` lists, the newest."""
CLOSE_TIMEOUT = 5.0
"""How long a stopping agent waits for mailbox deliveries under way."""
MAX_HELD_RECEIPTS = 256
MAX_USERS = 256
MAX_DEVICES_PER_USER = 16
MESSAGE_TYPES = frozenset({MsgType.INSTANT_MESSAGE, MsgType.MESSAGE_RECEIPT})
ANSWERED = frozenset({ReceiptStatus.DELIVERED, ReceiptStatus.READ})

Device = tuple[str, str]
Login = Callable[[], Awaitable[LoginSession]]


@dataclass
class _Waiting:
    """A ``send`` waiting for the receipts of the devices it sent to."""

    user: str
    devices: frozenset[str]
    answered: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class MessageDriver:
    """The instant messages of one agent; see the module docstring.

    ``login`` opens a fresh session with the login server, for the mailbox;
    ``trust`` checks the recipients' certificates the mailbox seals to;
    ``mail`` is what the mailbox held at login.
    """

    def __init__(
        self,
        user_id: str,
        peers: Peers,
        state_dir: Path,
        *,
        login: Login,
        trust: TrustStore,
        wall_offset: float,
        mail: Iterable[mailbox.Delivered] = (),
        limits: Limits | None = None,
    ) -> None:
        self.peers = peers
        self.path = state_dir / HISTORY_FILE
        self._login = login
        self._trust = trust
        history, warning = load_or_set_aside(self.path)
        if warning:
            _log.warning("%s", warning)
        self.core = Messenger(user_id, history=history, limits=limits, wall_offset=wall_offset)
        self.counters: Counter[str] = Counter()
        """Dropped and refused input by reason (the core keeps its own)."""
        self._devices: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()
        self._up: set[str] = set()
        self._held: deque[Send] = deque()
        self._waiting: dict[bytes, _Waiting] = {}
        self._mailed: dict[bytes, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._saving: asyncio.TimerHandle | None = None
        self._changes = asyncio.Event()
        self._closed = False
        self.core.requeue_pending(self._now())
        self._pump()
        self.receive_mail(mail)

    # -- what the agent asks

    async def send(self, user: str, text: str, devices: Iterable[Device]) -> dict[str, Any]:
        """Send ``text`` to ``user`` through sessions with ``devices`` (those online);
        the answer of ``edge ctl send``. Raises PeerUnreachable when nothing took it."""
        devices = list(devices)
        message_id = self._write(user, text)
        opened = await self._open_sessions(devices)
        if opened:
            # At once to every device now reachable, not at the next retry.
            self._path_up(user, again=True)
            self._pump()
            answered = await self._wait_receipts(message_id, user, opened)
            if answered:
                return {"delivered_to": [f"{user}/{d}" for d in answered], "devices": len(devices)}
        # Nobody online, or its records said online but no device answered: gone since.
        if not self.core.hand_to_mailbox(message_id) and message_id not in self._mailed:
            # A receipt came in just as the wait ran out.
            return {"delivered_to": [], "devices": len(devices)}
        await self._stored(message_id, user)
        return {"delivered_to": [], "devices": 0, "stored_offline": message_id.hex()}

    def on_message(self, peer: Device, message: Message) -> bool:
        """An INSTANT_MESSAGE or MESSAGE_RECEIPT from ``peer``'s session; False for
        any other message."""
        if message.type not in MESSAGE_TYPES:
            return False
        self._remember(peer)
        self._path_up(peer[0])
        if message.type is MsgType.MESSAGE_RECEIPT:
            self._note_receipt(peer, message.body)
        try:
            self.core.receive(
                message.type, message.body, self._now(), from_user=peer[0], from_device=peer[1]
            )
        except MessageRefused as exc:
            _log.info("message from %s/%s refused: %s", peer[0], peer[1], exc)
        self._pump()
        self._changed()  # a held or duplicate message is a change too, for wait_for
        return True

    def receive_mail(self, items: Iterable[mailbox.Delivered]) -> None:
        """Mailbox items fetched at login: the messages among them, delivered in order
        with the rest (an item that is also in the history is not delivered again)."""
        for item in items:
            if item.kind is not MailKind.MESSAGE:
                continue
            try:
                self.core.receive_offline(
                    item.content, self._now(), from_user=item.sender, from_device=item.sender_device
                )
            except MessageRefused as exc:
                _log.info("mailbox item from %s refused: %s", item.sender, exc)
            self._pump()

    def listing(self, *, mark_read: bool = True) -> dict[str, Any]:
        """The newest messages in and out, oldest first, and what was refused or
        dropped, by reason; the messages in are marked READ."""
        entries = self.core.history.recent(limit=MAX_HISTORY)
        incoming = [e for e in entries if not e.outgoing][-MAX_SHOWN:]
        outgoing = [e for e in entries if e.outgoing][-MAX_SHOWN:]
        shown = {
            "messages": [_incoming(e) for e in incoming],
            "sent": [_outgoing(e) for e in outgoing],
            "counters": dict(self.core.counters + self.counters),
        }
        if mark_read:
            self._mark_read(incoming)
        return shown

    def status(self, message_id: bytes) -> str | None:
        """Where an outgoing message stands ("sending", "delivered", ...), or None."""
        entry = self.core.history.get(message_id)
        return entry.status.value if entry is not None and entry.outgoing else None

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checked after each message, receipt or save."""
        while not condition():
            changes = self._changes
            await changes.wait()

    async def close(self) -> None:
        """Stop the timers, let mailbox deliveries under way finish, save the history."""
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=CLOSE_TIMEOUT)
            for task in late:
                task.cancel()
        # From here on nothing is armed: a save due later could overwrite the file of
        # the agent that starts next in this state dir.
        self._closed = True
        self.save()

    def save(self) -> None:
        if self._saving is not None:
            self._saving.cancel()
            self._saving = None
        try:
            save_history(self.core.history, self.path)
        except EdgeError as exc:
            self.counters["history not saved"] += 1
            _log.warning("message history not saved: %s", exc)

    # -- sending

    async def _open_sessions(self, devices: list[Device]) -> list[str]:
        """The devices with a session now (opened through the supernodes if need be)."""
        opened = await asyncio.gather(*(self._open_one(device) for device in devices))
        return [device for (_, device), ok in zip(devices, opened, strict=True) if ok]

    async def _open_one(self, device: Device) -> bool:
        try:
            await self.peers.session(*device)
        except EdgeError as exc:
            _log.info("no session with %s/%s: %s", device[0], device[1], exc)
            return False
        self._remember(device)
        return True

    def _write(self, user: str, text: str) -> bytes:
        try:
            message_id = self.core.send(text, user, self._now())
        except OutboxFull:
            raise
        except MessagingMisuse as exc:
            # The text and the user come from the ctl caller: MALFORMED, not INTERNAL.
            raise MessagingMisuse(f"not sent: {exc}", code=ErrorCode.MALFORMED) from None
        self._pump()
        return message_id

    async def _wait_receipts(self, message_id: bytes, user: str, devices: list[str]) -> list[str]:
        waiting = _Waiting(user, frozenset(devices))
        self._waiting[message_id] = waiting
        try:
            if not await _within(waiting.done, FRESH_AFTER):
                for device in waiting.devices.difference(waiting.answered):
                    self._fresh_session((user, device))
                await _within(waiting.done, RECEIPT_TIMEOUT - FRESH_AFTER)
        finally:
            del self._waiting[message_id]
        return list(waiting.answered)

    def _fresh_session(self, device: Device) -> None:
        """Handshake with ``device`` again, beside the session that brought no receipt:
        the peer may have restarted and forgotten it. A call on the old session keeps
        it; :class:`~edge.client.peers.Peers` takes the new one for the device once it
        is established, and the core's next retransmission goes there."""
        try:
            index = self.peers.core.endpoint.connect(
                via_address(*device), self._now(), expect_user=device[0]
            )
        except EdgeError as exc:
            self.counters["no fresh session"] += 1
            _log.info("no fresh session with %s/%s: %s", device[0], device[1], exc)
            return
        self.counters["fresh session"] += 1
        _log.debug("fresh session %#x with %s/%s", index, device[0], device[1])
        self.peers.adapter.poke()

    def _note_receipt(self, peer: Device, body: Any) -> None:
        waiting = self._waiting.get(bytes(body.message_id))
        if waiting is None or waiting.user != peer[0] or body.status not in ANSWERED:
            return
        if peer[1] not in waiting.answered:
            waiting.answered.append(peer[1])
        if waiting.devices <= set(waiting.answered):
            waiting.done.set()

    async def _stored(self, message_id: bytes, user: str) -> None:
        self._pump()
        left = self._mailed.get(message_id)
        if left is None:  # the core handed it over and the mailbox answered already
            if self.status(message_id) == Status.FAILED:
                raise PeerUnreachable(f"{user} has no device online, and the mailbox refused it")
            return
        try:
            await left
        except EdgeError as exc:
            raise PeerUnreachable(f"{user} has no device online, and the mailbox: {exc}") from None

    def _offline(self, event: OfflineDelivery) -> None:
        message_id = event.message.message_id
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._mailed[message_id] = done
        task = asyncio.create_task(self._leave(event, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _leave(self, event: OfflineDelivery, done: asyncio.Future[None]) -> None:
        """Seal the message to each of the user's devices at the login server, which
        cannot read it; they fetch it when they next log in."""
        entry = event.message
        try:
            session = await self._login()
            try:
                await mailbox.leave(session, self._trust, entry.peer, event.content)
            finally:
                session.close()
        except (EdgeError, OSError) as exc:
            self.counters["mailbox refused"] += 1
            self.core.mailbox_failed(entry.message_id)
            _log.warning("message to %s not left in the mailbox: %s", entry.peer, exc)
            done.set_exception(exc if isinstance(exc, EdgeError) else PeerUnreachable(str(exc)))
            done.exception()  # retrieved here: a send may not be waiting for it
        else:
            done.set_result(None)
        finally:
            if not done.done():  # cancelled as the agent stops
                done.cancel()
            del self._mailed[entry.message_id]
            self._changed()

    def _mark_read(self, entries: list[Entry]) -> None:
        now = self._now()
        for entry in entries:
            self.core.mark_read(entry.message_id, now)
        self._pump()

    # -- the core's output

    def _pump(self) -> None:
        self._check_paths()
        for send in self.core.messages_to_send():
            self._carry(send)
        self._flush_held()
        changed = False
        while (event := self.core.next_event()) is not None:
            self._event(event)
            changed = True
        if changed:
            self._save_soon()
            self._changed()
        self._arm()

    def _event(self, event: Event) -> None:
        if isinstance(event, OfflineDelivery):
            self._offline(event)
        elif isinstance(event, MessageDelivered):
            _log.info("message %s from %s/%s", event.sequence, event.peer, event.device)
        elif isinstance(event, ReceiptReceived):
            _log.debug("receipt %s from %s", event.status.name, event.peer)
        else:
            _log.info("messages %d to %d from %s never came", event.missing_from,
                      event.missing_to, event.peer)  # fmt: skip

    def _carry(self, send: Send) -> None:
        if send.msg_type is MsgType.MESSAGE_RECEIPT:
            if not self._send_to((send.to_user, send.to_device), send):
                self._hold(send)
            return
        sent = [self._send_to((send.to_user, d), send) for d in self._known(send.to_user)]
        if not any(sent):
            self.counters["no session"] += 1  # the core sends again, or goes to the mailbox

    def _send_to(self, device: Device, send: Send) -> bool:
        index = self.peers.session_of(device)
        if index is None or not self.peers.core.endpoint.is_established(index):
            return False
        try:
            self.peers.send(index, send.msg_type, send.body)
        except EdgeError as exc:
            self.counters["not sent"] += 1
            _log.info("to %s/%s: %s", device[0], device[1], exc)
            return False
        return True

    def _hold(self, send: Send) -> None:
        if len(self._held) >= MAX_HELD_RECEIPTS:
            self._held.popleft()
            self.counters["receipt dropped"] += 1
        self._held.append(send)

    def _flush_held(self) -> None:
        waiting = list(self._held)
        self._held.clear()
        for send in waiting:
            if not self._send_to((send.to_user, send.to_device), send):
                self._held.append(send)

    # -- sessions as paths

    def _remember(self, device: Device) -> None:
        user, name = device
        known = self._devices.pop(user, OrderedDict())
        self._devices[user] = known
        known[name] = None
        known.move_to_end(name)
        while len(known) > MAX_DEVICES_PER_USER:
            known.popitem(last=False)
        while len(self._devices) > MAX_USERS:
            forgotten, _ = self._devices.popitem(last=False)
            self._path_down(forgotten)

    def _known(self, user: str) -> list[str]:
        return list(self._devices.get(user, ()))

    def _path_up(self, user: str, *, again: bool = False) -> None:
        """Tell the core; ``again`` has it send what waits for ``user`` even if the
        path was up already (a device of theirs has just been reached)."""
        if user in self._up and not again:
            return
        try:
            self.core.path_up(user, self._now())
        except MessagingMisuse as exc:
            self.counters["path refused"] += 1
            _log.info("messages to %s wait: %s", user, exc)
            return
        self._up.add(user)

    def _path_down(self, user: str) -> None:
        if user in self._up:
            self._up.discard(user)
            self.core.path_down(user)

    def _check_paths(self) -> None:
        for user in list(self._up):
            if not any(self._established((user, d)) for d in self._known(user)):
                self._path_down(user)

    def _established(self, device: Device) -> bool:
        index = self.peers.session_of(device)
        return index is not None and self.peers.core.endpoint.is_established(index)

    # -- time and saving

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.core.get_timer()
        if at is not None and not self._closed:
            self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(self._now())
        self._pump()

    def _save_soon(self) -> None:
        if self._saving is None and not self._closed:
            self._saving = asyncio.get_running_loop().call_later(SAVE_DELAY, self._saved_later)

    def _saved_later(self) -> None:
        self._saving = None
        self.save()
        self._changed()

    def _changed(self) -> None:
        self._changes.set()
        self._changes = asyncio.Event()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()


async def _within(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` is set within ``seconds``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


def load_or_set_aside(path: Path) -> tuple[History, str | None]:
    """The saved history and no warning; or, when the file cannot be used, an empty
    history and the warning to log, the bad file renamed beside it for a person to look at."""
    try:
        return load_history(path), None
    except HistoryFileError as exc:
        aside = path.with_name(path.name + CORRUPT_SUFFIX)
        try:
            os.replace(path, aside)
        except OSError as move:
            return History(), f"{exc}; not set aside ({move.strerror}); starting empty"
        return History(), f"{exc}; set aside as {aside.name}, starting with an empty history"


def _incoming(entry: Entry) -> dict[str, Any]:
    return {
        "from": f"{entry.peer}/{entry.device}",
        "text": entry.text,
        "sent_ms": entry.sent_ms,
        "id": entry.message_id.hex(),
        "seq": entry.sequence,
        "late": entry.late,
        "offline": entry.offline,
        "status": entry.status.value,
    }


def _outgoing(entry: Entry) -> dict[str, Any]:
    return {
        "to": entry.peer,
        "text": entry.text,
        "sent_ms": entry.sent_ms,
        "id": entry.message_id.hex(),
        "seq": entry.sequence,
        "status": entry.status.value,
    }

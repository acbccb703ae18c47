"""Instant messages between devices: receipts, retries, order, de-duplication, history.

Theory of operation
-------------------
:class:`Messenger` is the sans-IO core of one device. It never touches a socket
or a clock: the owner passes decoded INSTANT_MESSAGE and MESSAGE_RECEIPT
bodies and ``now`` (monotonic seconds) in, then drains :class:`Send` actions
(:meth:`Messenger.messages_to_send`) and events (:meth:`Messenger.next_event`),
and calls :meth:`Messenger.handle_timer` at :meth:`Messenger.get_timer`. The
bodies travel inside an end-to-end Noise session between two devices; which
session, and whether one exists, is the owner's business, told to the core
with :meth:`Messenger.path_up` and :meth:`Messenger.path_down`.

Sending. :meth:`Messenger.send` gives the message a random 16-byte id and the
next sequence number of the conversation with that user (1, 2, 3 ..., kept in
the history so it survives a restart), and keeps it in the *outbox* until a
receipt comes. While a path to the user is up the message is sent, and sent
again after 1, 2, 4, 8, 8 ... seconds; without a path it waits. A message
still without a receipt ``deliver_within`` seconds after it was written leaves
the outbox as an :class:`OfflineDelivery` event (at once, when the owner
knows no device will answer and calls :meth:`Messenger.hand_to_mailbox`): the
owner leaves its ``content`` (the encoded INSTANT_MESSAGE) in the login
server's mailbox with :func:`edge.client.mailbox.leave`, or reports
:meth:`Messenger.mailbox_failed`, and the recipient feeds it back in with
:meth:`Messenger.receive_offline` (such messages are marked ``offline``).
Receipts move an outgoing message through :data:`RECEIPT_TRANSITIONS`; a
status never goes back (a late DELIVERED after READ changes nothing).

Receiving. Each sending *device* numbers its messages to us, so order is kept
per (user, device), a :class:`Conversation`:

- a message id seen lately (the last ``dedup_window`` per conversation,
  seeded from the history after a restart) is a duplicate: it is not
  delivered again, but its receipt is sent again, since the first may have
  been lost;
- the next expected sequence is delivered at once, with any held messages
  that follow it;
- a later one is *held* until the gap fills; after ``hold_timeout`` (or when
  ``max_held`` are held) the gap is accepted: :class:`GapSkipped` names the
  missing range and delivery goes on. A missing message that turns up later
  (from the mailbox, say) is still delivered, marked ``late``, so nothing is
  lost and nothing is delivered twice;
- the start of a conversation we know nothing about is taken from the first
  message (at once if it is sequence 1, else after the hold, without a gap);
- sequence 1 with a new id, once we have had a sequence 1 from that device,
  means the sender lost its state and started again: the conversation
  restarts with it. Without one, it is a late message like any other.

Every delivered message is answered with a DELIVERED receipt to the device
that sent it, and with READ when the owner calls :meth:`Messenger.mark_read`.
A message addressed to another user is answered with REJECTED.

Every table has a cap (:class:`Limits`): the outbox refuses new messages when
full (:class:`~edge.client.errors.OutboxFull`), the least recently active
conversation is dropped (its held messages delivered first), the queue of
sends drops its oldest (retries make up for it). Bad input raises
:class:`~edge.client.errors.MessageRefused` and is counted in
:attr:`Messenger.counters`; nothing else changes.

History. :class:`History` keeps the last :data:`MAX_HISTORY` messages in and
out, and the next sequence per user; :func:`save_history` writes it
atomically, :func:`load_history` reads it back with strict checks and refuses
a damaged file with :class:`HistoryFileError` (:func:`load_history_or_empty`
starts empty with a warning instead). After loading, call
:meth:`Messenger.requeue_pending` so messages that were waiting for a receipt
are sent again.
"""

import math
import secrets
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeGuard, TypeVar

from edge.client.errors import MessageRefused, MessagingMisuse, OutboxFull
from edge.errors import EdgeError
from edge.runtime.config import write_atomic
from edge.runtime.statefile import StateFileError, dump_document, load_document, read_capped
from edge.runtime.statefile import StateFileInvalid as _Invalid
from edge.wire.codes import MsgType
from edge.wire.errors import WireError
from edge.wire.messages import DEVICE_ID_MAX, USER_ID_MAX, ReceiptStatus, decode, encode

TEXT_MAX = 4096
"""Bytes of UTF-8 text in one INSTANT_MESSAGE (the cap of its ``text`` field)."""

MAX_HISTORY = 1000
"""Messages the history keeps; the oldest go first."""

MAX_SEQUENCE_PEERS = 4096
"""Users whose next sequence the history keeps; the least recently used go first."""

FILE_FORMAT = "edge message history"
FILE_VERSION = 1
MAX_FILE_BYTES = 32 * 1024 * 1024
"""A larger history file is corrupt: a full one is at most about 25 MiB (1000
texts of 4096 bytes, each byte escaped to 6 in JSON)."""

_U64 = 1 << 64
_ID_BYTES = 16

Peer = tuple[str, str]
"""A sending device: (user id, device id). The device id may be "" when unknown."""


class Status(StrEnum):
    """Where a message stands, as the history shows it."""

    SENDING = "sending"
    """Outgoing, waiting for a receipt."""
    OFFLINE = "offline"
    """Outgoing, handed to the owner for the mailbox."""
    DELIVERED = "delivered"
    """Outgoing: the recipient's device has it. Incoming: delivered to the owner."""
    READ = "read"
    REJECTED = "rejected"
    """Outgoing: the recipient's device refused it (addressed to someone else)."""
    FAILED = "failed"
    """Outgoing: no device answered and the mailbox would not take it either."""


RECEIPT_TRANSITIONS: dict[Status, dict[ReceiptStatus, Status]] = {
    Status.SENDING: {
        ReceiptStatus.DELIVERED: Status.DELIVERED,
        ReceiptStatus.READ: Status.READ,
        ReceiptStatus.STORED_OFFLINE: Status.OFFLINE,
        ReceiptStatus.REJECTED: Status.REJECTED,
    },
    Status.OFFLINE: {
        ReceiptStatus.DELIVERED: Status.DELIVERED,
        ReceiptStatus.READ: Status.READ,
        ReceiptStatus.REJECTED: Status.REJECTED,
    },
    Status.DELIVERED: {ReceiptStatus.READ: Status.READ},
    Status.READ: {},
    Status.REJECTED: {},
    Status.FAILED: {
        ReceiptStatus.DELIVERED: Status.DELIVERED,
        ReceiptStatus.READ: Status.READ,
        ReceiptStatus.REJECTED: Status.REJECTED,
    },
}
"""Where a receipt takes an outgoing message; a receipt not listed changes nothing."""


@dataclass(frozen=True)
class Limits:
    """Caps and timings (seconds) of one :class:`Messenger`."""

    max_outbox: int = 256
    """Messages waiting for a receipt, all users together."""
    max_conversations: int = 256
    """Sending devices whose order and duplicates are tracked; also the most
    users with a path up at once."""
    dedup_window: int = 512
    """Message ids remembered per conversation."""
    max_held: int = 64
    """Out-of-order messages held per conversation."""
    hold_timeout: float = 3.0
    retransmit_first: float = 1.0
    retransmit_max: float = 8.0
    deliver_within: float = 30.0
    """After this without a receipt, a message goes to the mailbox."""
    max_queued_sends: int = 4096

    def __post_init__(self) -> None:
        counts = ("max_outbox", "max_conversations", "dedup_window", "max_held", "max_queued_sends")
        for name in counts:
            if getattr(self, name) < 1:
                raise MessagingMisuse(f"messaging limits: {name} must be at least 1")
        seconds = ("hold_timeout", "retransmit_first", "retransmit_max", "deliver_within")
        check_seconds(self, seconds, MessagingMisuse)


def check_seconds(limits: object, names: Iterable[str], error: type[EdgeError]) -> None:
    """Raise ``error`` unless each of ``limits``' fields ``names`` is a positive number."""
    for name in names:
        value = getattr(limits, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise error(f"{type(limits).__name__}: {name} must be a positive number")


# -- actions and events


@dataclass(frozen=True)
class Send:
    """A message for the owner to send over its session with ``to_user``.

    ``to_device`` is "" for a new message (any path to the user will do) and
    names the device for a receipt (it goes back to the device that sent).
    """

    to_user: str
    msg_type: MsgType
    body: Mapping[str, Any]
    to_device: str = ""


@dataclass(frozen=True)
class Entry:
    """One message of the history, in or out."""

    message_id: bytes
    peer: str
    """The other user: the recipient of an outgoing message, the sender of an incoming one."""
    outgoing: bool
    sequence: int
    sent_ms: int
    """The sender's clock, Unix milliseconds."""
    text: str
    status: Status
    device: str = ""
    """The sending device of an incoming message; "" for outgoing ones."""
    late: bool = False
    """Incoming: it came after its gap had been skipped (:class:`GapSkipped`)."""
    offline: bool = False
    """Incoming: it came from the mailbox (:meth:`Messenger.receive_offline`)."""


@dataclass(frozen=True)
class MessageDelivered:
    """A message for the owner to show, in order and once."""

    peer: str
    text: str
    message_id: bytes
    sequence: int
    sent_ms: int
    device: str = ""
    late: bool = False
    """It came after its gap had been skipped (:class:`GapSkipped`)."""
    offline: bool = False
    """It came from the mailbox rather than over a session."""


@dataclass(frozen=True)
class ReceiptReceived:
    """The recipient says what became of a message we sent."""

    peer: str
    message_id: bytes
    status: ReceiptStatus


@dataclass(frozen=True)
class GapSkipped:
    """Sequences ``missing_from`` to ``missing_to`` from ``peer`` never came in time."""

    peer: str
    missing_from: int
    missing_to: int
    device: str = ""


@dataclass(frozen=True)
class OfflineDelivery:
    """No receipt in time: leave ``content`` in ``message.peer``'s mailbox.

    ``content`` is the encoded INSTANT_MESSAGE; pass it to
    :func:`edge.client.mailbox.leave`. A receipt that comes later still counts.
    """

    message: Entry
    content: bytes


Event = MessageDelivered | ReceiptReceived | GapSkipped | OfflineDelivery


# -- the history


class History:
    """The last messages in and out, and the next sequence to each user."""

    def __init__(
        self,
        entries: Iterable[Entry] = (),
        sequences: Mapping[str, int] | None = None,
        *,
        limit: int = MAX_HISTORY,
    ) -> None:
        if not 0 < limit <= MAX_HISTORY:
            raise MessagingMisuse(f"history: a limit of {limit} is not in 1..{MAX_HISTORY}")
        self.limit = limit
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._sequences: OrderedDict[str, int] = OrderedDict(sequences or {})
        for entry in entries:
            self.add(entry)
        while len(self._sequences) > MAX_SEQUENCE_PEERS:
            self._sequences.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, message_id: bytes) -> Entry | None:
        return self._entries.get(message_id)

    def add(self, entry: Entry) -> None:
        """Append ``entry`` (or replace the entry with its id, in place)."""
        self._entries[entry.message_id] = entry
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def update(self, entry: Entry) -> None:
        """Replace the entry with ``entry``'s id, if the history still holds it."""
        if entry.message_id in self._entries:
            self._entries[entry.message_id] = entry

    def recent(self, peer: str | None = None, limit: int = 50) -> list[Entry]:
        """The last ``limit`` messages (with ``peer`` only, if given), oldest first."""
        chosen = [e for e in reversed(self._entries.values()) if peer in (None, e.peer)]
        return chosen[:limit][::-1]

    def pending(self) -> list[Entry]:
        """Outgoing messages still waiting for a receipt, oldest first."""
        return [e for e in self._entries.values() if e.outgoing and e.status is Status.SENDING]

    def received_from(self, peer: Peer) -> list[Entry]:
        """Incoming messages from one device, oldest first."""
        return [e for e in self._entries.values() if not e.outgoing and (e.peer, e.device) == peer]

    def sequences(self) -> dict[str, int]:
        """The next sequence to each user."""
        return dict(self._sequences)

    def take_sequence(self, peer: str) -> int:
        """The sequence for a new message to ``peer``; the next one will be one more."""
        sequence = self._sequences.pop(peer, 1)
        if sequence >= _U64 - 1:
            raise MessagingMisuse(f"history: the sequences to {peer!r} are used up")
        self._sequences[peer] = sequence + 1
        if len(self._sequences) > MAX_SEQUENCE_PEERS:
            # The forgotten user's device sees sequence 1 again and starts over with us.
            self._sequences.popitem(last=False)
        return sequence


# -- the core


SendT = TypeVar("SendT")
EventT = TypeVar("EventT")


class CoreQueues(Generic[SendT, EventT]):
    """What a client core fills and its owner drains: messages to send and events.

    The send queue is capped: past ``max_sends`` the oldest is dropped and
    counted, which is safe because the cores repeat what is not answered.
    Events are not capped; they are bounded by the input, if drained after
    every call. :mod:`edge.client.files` uses it too.
    """

    def __init__(self, max_sends: int) -> None:
        self.counters: Counter[str] = Counter()
        """Refused and dropped input by reason, for ``edge ctl`` and the logs."""
        self._max_sends = max_sends
        self._sends: deque[SendT] = deque()
        self._events: deque[EventT] = deque()

    def messages_to_send(self) -> list[SendT]:
        """The messages to send now, oldest first; the queue is emptied."""
        sends = list(self._sends)
        self._sends.clear()
        return sends

    def next_event(self) -> EventT | None:
        """The next event, or None. Drain after every call into the core."""
        return self._events.popleft() if self._events else None

    def _send(self, send: SendT) -> None:
        if len(self._sends) >= self._max_sends:
            self._sends.popleft()
            self.counters["send queue overflow"] += 1
        self._sends.append(send)


def check_now(now: float, error: type[EdgeError] = MessagingMisuse) -> None:
    """Raise ``error`` unless ``now`` is a finite number of seconds."""
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise error(f"now must be a finite number, not {now!r}")


@dataclass(frozen=True)
class _Incoming:
    message_id: bytes
    sender: str
    recipient: str
    sequence: int
    sent_ms: int
    text: str
    offline: bool = False


@dataclass
class _Outgoing:
    entry: Entry
    deadline: float
    resend_at: float | None
    interval: float


@dataclass
class _Held:
    message: _Incoming
    arrived: float


@dataclass
class Conversation:
    """What one sending device has sent us: the next sequence, ids seen, messages held."""

    expected: int | None = None
    """The next sequence to deliver; None until the start is known."""
    first_id: bytes | None = None
    """The id of the message with sequence 1, once we have had it."""
    seen: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    held: dict[int, _Held] = field(default_factory=dict)

    def hold_deadline(self, hold_timeout: float) -> float | None:
        if not self.held:
            return None
        return min(held.arrived for held in self.held.values()) + hold_timeout


class Messenger(CoreQueues[Send, Event]):
    """Instant messages of one device (``user_id``); see the module docstring.

    ``wall_offset`` turns ``now`` into Unix time (``now + wall_offset``), for
    the ``sent_ms`` stamp; ``random_bytes`` makes message ids.
    """

    def __init__(
        self,
        user_id: str,
        *,
        history: History | None = None,
        limits: Limits | None = None,
        wall_offset: float = 0.0,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        _check_user(user_id, "user_id")
        self.limits = limits or Limits()
        super().__init__(self.limits.max_queued_sends)
        self.user_id = user_id
        self.history = history if history is not None else History()
        self._wall_offset = wall_offset
        self._random = random_bytes
        self._outbox: OrderedDict[bytes, _Outgoing] = OrderedDict()
        self._paths: set[str] = set()
        self._conversations: OrderedDict[Peer, Conversation] = OrderedDict()

    # -- the owner's calls

    def send(self, text: str, to_user: str, now: float) -> bytes:
        """Queue ``text`` for ``to_user``; return its message id.

        Raises :class:`MessagingMisuse` for empty or oversized text or a bad
        user id, :class:`OutboxFull` when too many messages wait for receipts.
        """
        check_now(now)
        _check_text(text)
        _check_user(to_user, "to_user")
        if len(self._outbox) >= self.limits.max_outbox:
            raise OutboxFull(f"{len(self._outbox)} messages wait for a receipt already")
        message_id = self._random(_ID_BYTES)
        if len(message_id) != _ID_BYTES or self.history.get(message_id) is not None:
            raise MessagingMisuse("random_bytes gave a short or repeated message id")
        entry = Entry(
            message_id,
            to_user,
            True,
            self.history.take_sequence(to_user),
            self._wall_ms(now),
            text,
            Status.SENDING,
        )
        self.history.add(entry)
        self._queue_out(entry, now)
        return message_id

    def requeue_pending(self, now: float) -> int:
        """Put the history's unanswered messages back in the outbox, after a restart.

        Those that do not fit go straight to the mailbox (:class:`OfflineDelivery`).
        Returns how many were requeued.
        """
        check_now(now)
        requeued = 0
        for entry in self.history.pending():
            if entry.message_id in self._outbox:
                continue
            if len(self._outbox) >= self.limits.max_outbox:
                self._hand_to_mailbox(entry)
                continue
            self._queue_out(entry, now)
            requeued += 1
        return requeued

    def path_up(self, peer: str, now: float) -> None:
        """A session to ``peer`` exists: send what waits for them now."""
        check_now(now)
        _check_user(peer, "peer")
        if peer not in self._paths and len(self._paths) >= self.limits.max_conversations:
            raise MessagingMisuse(f"more than {self.limits.max_conversations} paths are up")
        self._paths.add(peer)
        for out in self._outbox.values():
            if out.entry.peer == peer:
                out.interval = self.limits.retransmit_first
                self._transmit(out, now)

    def path_down(self, peer: str) -> None:
        """The session to ``peer`` is gone: stop retrying until :meth:`path_up`."""
        self._paths.discard(peer)
        for out in self._outbox.values():
            if out.entry.peer == peer:
                out.resend_at = None

    def receive(
        self,
        msg_type: MsgType,
        body: Mapping[str, Any],
        now: float,
        *,
        from_user: str,
        from_device: str = "",
    ) -> None:
        """Take an INSTANT_MESSAGE or MESSAGE_RECEIPT body from a session with
        ``from_user``'s device ``from_device`` (as its certificate names them).

        Raises :class:`MessageRefused` (and counts it) when the body breaks the
        rules; :class:`MessagingMisuse` for any other message type.
        """
        check_now(now)
        peer = (from_user, from_device)
        if msg_type is MsgType.INSTANT_MESSAGE:
            self._on_message(_read_message(body), peer, now)
        elif msg_type is MsgType.MESSAGE_RECEIPT:
            self._on_receipt(body, peer)
        else:
            raise MessagingMisuse(f"the messenger does not take {msg_type!r}")

    def receive_offline(
        self, content: bytes, now: float, *, from_user: str, from_device: str = ""
    ) -> None:
        """Take an item's content from the mailbox (an encoded INSTANT_MESSAGE).

        It is ordered and de-duplicated with those that came directly.
        """
        check_now(now)
        try:
            message = decode(content)
        except WireError as exc:
            self._refuse("undecodable", f"mailbox item from {from_user!r}: {exc}")
        if message.type is not MsgType.INSTANT_MESSAGE:
            self._refuse("undecodable", f"mailbox item from {from_user!r}: {message.type.name}")
        incoming = replace(_read_message(message.body), offline=True)
        self._on_message(incoming, (from_user, from_device), now)

    def mark_read(self, message_id: bytes, now: float) -> bool:
        """The user has read an incoming message: tell its sender (READ receipt).

        Returns False when the history no longer holds it or it was marked already.
        """
        check_now(now)
        entry = self.history.get(message_id)
        if entry is not None and entry.outgoing:
            raise MessagingMisuse("mark_read: that message is one we sent")
        if entry is None or entry.status is Status.READ:
            return False
        self.history.update(replace(entry, status=Status.READ))
        self._receipt((entry.peer, entry.device), message_id, ReceiptStatus.READ)
        return True

    def hand_to_mailbox(self, message_id: bytes) -> bool:
        """Give up waiting for a receipt now: :class:`OfflineDelivery` follows at once.

        For an owner that knows no device will answer (none is online). Returns
        False when the message is not waiting for a receipt.
        """
        out = self._outbox.pop(message_id, None)
        if out is None:
            return False
        self._hand_to_mailbox(out.entry)
        return True

    def mailbox_failed(self, message_id: bytes) -> bool:
        """The mailbox refused an :class:`OfflineDelivery`: the message is FAILED.

        A receipt that comes later still counts. Returns False when the message
        was not waiting for the mailbox.
        """
        entry = self.history.get(message_id)
        if entry is None or not entry.outgoing or entry.status is not Status.OFFLINE:
            return False
        self.history.update(replace(entry, status=Status.FAILED))
        return True

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` wants to be called, or None."""
        times: list[float] = []
        for out in self._outbox.values():
            times.append(out.deadline)
            if out.resend_at is not None:
                times.append(out.resend_at)
        for conversation in self._conversations.values():
            deadline = conversation.hold_deadline(self.limits.hold_timeout)
            if deadline is not None:
                times.append(deadline)
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        """Send again, give up to the mailbox, accept gaps: whatever is due at ``now``."""
        check_now(now)
        for out in list(self._outbox.values()):
            if now >= out.deadline:
                del self._outbox[out.entry.message_id]
                self._hand_to_mailbox(out.entry)
            elif out.resend_at is not None and now >= out.resend_at:
                self._transmit(out, now)
        for peer, conversation in self._conversations.items():
            self._expire_holds(peer, conversation, now)

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)

    # -- sending

    def _queue_out(self, entry: Entry, now: float) -> None:
        out = _Outgoing(entry, now + self.limits.deliver_within, None, self.limits.retransmit_first)
        self._outbox[entry.message_id] = out
        if entry.peer in self._paths:
            self._transmit(out, now)

    def _transmit(self, out: _Outgoing, now: float) -> None:
        entry = out.entry
        self._send(Send(entry.peer, MsgType.INSTANT_MESSAGE, _message_body(entry, self.user_id)))
        out.resend_at = now + out.interval
        out.interval = min(out.interval * 2, self.limits.retransmit_max)

    def _hand_to_mailbox(self, entry: Entry) -> None:
        offline = replace(entry, status=Status.OFFLINE)
        self.history.update(offline)
        content = encode(MsgType.INSTANT_MESSAGE, _message_body(entry, self.user_id))
        self._events.append(OfflineDelivery(offline, content))

    def _on_receipt(self, body: Mapping[str, Any], peer: Peer) -> None:
        message_id, status = _read_receipt(body)
        out = self._outbox.get(message_id)
        entry = out.entry if out is not None else self.history.get(message_id)
        if entry is None or not entry.outgoing:
            self.counters["unknown receipt"] += 1
            return
        if entry.peer != peer[0]:
            self._refuse("receipt from a stranger", f"MESSAGE_RECEIPT from {peer[0]!r}")
        current = self.history.get(message_id) or entry
        new = RECEIPT_TRANSITIONS[current.status].get(status)
        if new is None:
            self.counters["stale receipt"] += 1
            return
        self.history.update(replace(current, status=new))
        self._outbox.pop(message_id, None)
        self._events.append(ReceiptReceived(peer[0], message_id, status))

    # -- receiving

    def _on_message(self, message: _Incoming, peer: Peer, now: float) -> None:
        if message.sender != peer[0]:
            self._refuse(
                "sender mismatch",
                f"INSTANT_MESSAGE: sender {message.sender!r} on a session with {peer[0]!r}",
            )
        if message.recipient != self.user_id:
            self._receipt(peer, message.message_id, ReceiptStatus.REJECTED)
            self._refuse("not for us", f"INSTANT_MESSAGE for {message.recipient!r}")
        conversation = self._conversation(peer)
        if message.message_id in conversation.seen:
            self.counters["duplicate"] += 1
            self._receipt(peer, message.message_id, ReceiptStatus.DELIVERED)
            return
        held = conversation.held.get(message.sequence)
        if held is not None:
            if held.message.message_id != message.message_id:
                self._refuse("sequence reused", f"INSTANT_MESSAGE: sequence {message.sequence}")
            self.counters["duplicate"] += 1
            return
        self._place(peer, conversation, message, now)

    def _place(
        self, peer: Peer, conversation: Conversation, message: _Incoming, now: float
    ) -> None:
        sequence = message.sequence
        if conversation.expected is None and sequence == 1:
            conversation.expected = 1
        expected = conversation.expected
        if expected is not None and sequence < expected:
            if sequence != 1 or conversation.first_id is None:
                self._deliver(peer, conversation, message, late=True)
                return
            # We had a sequence 1 and this one has another id: the sender started over.
            self._start_over(peer, conversation)
        if sequence == conversation.expected:
            self._deliver(peer, conversation, message)
            self._release(peer, conversation)
        elif len(conversation.held) >= self.limits.max_held:
            # No room to wait for the gap: accept it now, then place this one again.
            self._skip_gap(peer, conversation)
            self._place(peer, conversation, message, now)
        else:
            conversation.held[sequence] = _Held(message, now)

    def _start_over(self, peer: Peer, conversation: Conversation) -> None:
        self.counters["sender started over"] += 1
        while conversation.held:
            self._skip_gap(peer, conversation)
        conversation.expected = 1

    def _skip_gap(self, peer: Peer, conversation: Conversation) -> None:
        first = min(conversation.held)
        expected = conversation.expected
        if expected is not None and first > expected:
            self.counters["gap"] += 1
            self._events.append(GapSkipped(peer[0], expected, first - 1, peer[1]))
        conversation.expected = first
        self._release(peer, conversation)

    def _release(self, peer: Peer, conversation: Conversation) -> None:
        while conversation.expected is not None and conversation.expected in conversation.held:
            held = conversation.held.pop(conversation.expected)
            self._deliver(peer, conversation, held.message)

    def _expire_holds(self, peer: Peer, conversation: Conversation, now: float) -> None:
        while True:
            deadline = conversation.hold_deadline(self.limits.hold_timeout)
            if deadline is None or now < deadline:
                return
            self._skip_gap(peer, conversation)

    def _deliver(
        self, peer: Peer, conversation: Conversation, message: _Incoming, *, late: bool = False
    ) -> None:
        if not late:
            conversation.expected = message.sequence + 1
        if message.sequence == 1:
            conversation.first_id = message.message_id
        _remember(conversation.seen, message.message_id, self.limits.dedup_window)
        user, device = peer
        self.history.add(
            Entry(
                message.message_id,
                user,
                False,
                message.sequence,
                message.sent_ms,
                message.text,
                Status.DELIVERED,
                device,
                late,
                message.offline,
            )
        )
        self._events.append(
            MessageDelivered(
                user,
                message.text,
                message.message_id,
                message.sequence,
                message.sent_ms,
                device,
                late,
                message.offline,
            )
        )
        self._receipt(peer, message.message_id, ReceiptStatus.DELIVERED)

    def _conversation(self, peer: Peer) -> Conversation:
        conversation = self._conversations.get(peer)
        if conversation is not None:
            self._conversations.move_to_end(peer)
            return conversation
        if len(self._conversations) >= self.limits.max_conversations:
            self._forget_oldest()
        conversation = self._conversation_from_history(peer)
        self._conversations[peer] = conversation
        return conversation

    def _conversation_from_history(self, peer: Peer) -> Conversation:
        # After a restart, the history says which ids we have and where the sender was.
        conversation = Conversation()
        for entry in self.history.received_from(peer)[-self.limits.dedup_window :]:
            conversation.seen[entry.message_id] = None
            conversation.expected = max(conversation.expected or 0, entry.sequence + 1)
            if entry.sequence == 1:
                conversation.first_id = entry.message_id
        return conversation

    def _forget_oldest(self) -> None:
        peer, conversation = next(iter(self._conversations.items()))
        while conversation.held:
            self._skip_gap(peer, conversation)  # deliver what is held rather than lose it
        del self._conversations[peer]

    # -- output

    def _receipt(self, peer: Peer, message_id: bytes, status: ReceiptStatus) -> None:
        body = {"message_id": message_id, "status": status}
        self._send(Send(peer[0], MsgType.MESSAGE_RECEIPT, body, peer[1]))

    def _refuse(self, reason: str, message: str) -> NoReturn:
        self.counters[reason] += 1
        raise MessageRefused(message)

    def _wall_ms(self, now: float) -> int:
        return max(0, min(_U64 - 1, int((now + self._wall_offset) * 1000)))


def _remember(seen: OrderedDict[bytes, None], message_id: bytes, window: int) -> None:
    seen[message_id] = None
    while len(seen) > window:
        seen.popitem(last=False)


def _message_body(entry: Entry, sender: str) -> dict[str, Any]:
    return {
        "message_id": entry.message_id,
        "sender": sender,
        "recipient": entry.peer,
        "sequence": entry.sequence,
        "sent_ms": entry.sent_ms,
        "text": entry.text,
    }


# -- checking input


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not text:
        raise MessagingMisuse("a message needs some text")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise MessagingMisuse("the text is not valid Unicode") from None
    if size > TEXT_MAX:
        raise MessagingMisuse(f"the text is {size} bytes, at most {TEXT_MAX}")


def _check_user(user_id: str, what: str) -> None:
    if not _is_text(user_id, USER_ID_MAX) or not user_id:
        raise MessagingMisuse(f"{what} {user_id!r} is not a user id")


def _is_text(value: object, cap: int) -> TypeGuard[str]:
    if not isinstance(value, str):
        return False
    try:
        return len(value.encode("utf-8")) <= cap
    except UnicodeEncodeError:
        return False


def _is_u64(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value < _U64


def _is_id(value: object) -> TypeGuard[bytes]:
    return isinstance(value, bytes) and len(value) == _ID_BYTES


def _read_message(body: Mapping[str, Any]) -> _Incoming:
    try:
        message = _Incoming(
            bytes(body["message_id"]),
            body["sender"],
            body["recipient"],
            body["sequence"],
            body["sent_ms"],
            body["text"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageRefused(f"INSTANT_MESSAGE: not a message ({exc!r})") from None
    if not (
        _is_id(message.message_id)
        and _is_text(message.sender, USER_ID_MAX)
        and _is_text(message.recipient, USER_ID_MAX)
        and _is_text(message.text, TEXT_MAX)
        and _is_u64(message.sequence)
        and message.sequence >= 1
        and _is_u64(message.sent_ms)
    ):
        raise MessageRefused("INSTANT_MESSAGE: a field is of the wrong kind or out of range")
    return message


def _read_receipt(body: Mapping[str, Any]) -> tuple[bytes, ReceiptStatus]:
    try:
        message_id, status = bytes(body["message_id"]), ReceiptStatus(body["status"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageRefused(f"MESSAGE_RECEIPT: not a receipt ({exc!r})") from None
    if not _is_id(message_id):
        raise MessageRefused("MESSAGE_RECEIPT: message_id is not 16 bytes")
    return message_id, status


# -- the history file


class HistoryFileError(StateFileError):
    """The history file cannot be used; the message names the file and the problem."""

    kind = "message history"


def save_history(history: History, path: Path) -> None:
    """Write ``history`` to ``path``: atomically, mode 0600.

    Raises :class:`~edge.runtime.errors.AtomicWriteError`; the old file is then intact.
    """
    entries = [_entry_json(entry) for entry in history.recent(limit=history.limit)]
    fields = {"sequences": history.sequences(), "messages": entries}
    write_atomic(path, dump_document(FILE_FORMAT, FILE_VERSION, fields))


def load_history(path: Path, *, limit: int = MAX_HISTORY) -> History:
    """The history saved at ``path``; an empty one if there is no file.

    Raises :class:`HistoryFileError` when the file cannot be read or is not a
    history this version of edge understands; nothing is half-loaded.
    """
    try:
        raw = read_capped(path, MAX_FILE_BYTES)
        if raw is None:
            return History(limit=limit)
        document = load_document(raw, "message history", FILE_FORMAT, FILE_VERSION)
        return History(
            _entries_from(document.get("messages")),
            _sequences_from(document.get("sequences")),
            limit=limit,
        )
    except _Invalid as exc:
        raise HistoryFileError(path, str(exc)) from None


def load_history_or_empty(path: Path) -> tuple[History, str | None]:
    """The saved history and no warning, or an empty one and the warning to log.

    Starting empty restarts every conversation at sequence 1, which the other
    side takes as "started over"; the next save replaces the bad file.
    """
    try:
        return load_history(path), None
    except HistoryFileError as exc:
        return History(), f"{exc}; starting with an empty message history"


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.message_id.hex(),
        "peer": entry.peer,
        "device": entry.device,
        "direction": "out" if entry.outgoing else "in",
        "sequence": entry.sequence,
        "sent_ms": entry.sent_ms,
        "status": entry.status.value,
        "text": entry.text,
        "late": entry.late,
        "offline": entry.offline,
    }


def _entries_from(items: object) -> list[Entry]:
    if not isinstance(items, list):
        raise _Invalid("messages: not a list")
    if len(items) > MAX_HISTORY:
        raise _Invalid(f"messages: {len(items)} entries, at most {MAX_HISTORY}")
    entries: dict[bytes, Entry] = {}
    for i, item in enumerate(items):
        entry = _entry_from(item, f"messages[{i}]")
        if entry.message_id in entries:
            raise _Invalid(f"messages[{i}].id: listed twice")
        entries[entry.message_id] = entry
    return list(entries.values())


_INCOMING_STATUSES = {Status.DELIVERED, Status.READ}


def _entry_from(item: object, where: str) -> Entry:
    if not isinstance(item, dict):
        raise _Invalid(f"{where}: not an object")
    direction = item.get("direction")
    if direction not in ("in", "out"):
        raise _Invalid(f'{where}.direction: {direction!r} is not "in" or "out"')
    status = _status_from(item.get("status"), direction == "out", where)
    peer = _text_from(item, "peer", USER_ID_MAX, where)
    if not peer:
        raise _Invalid(f"{where}.peer: empty")
    text = _text_from(item, "text", TEXT_MAX, where)
    return Entry(
        _id_from(item.get("id"), where),
        peer,
        direction == "out",
        _number_from(item, "sequence", 1, where),
        _number_from(item, "sent_ms", 0, where),
        text,
        status,
        _text_from(item, "device", DEVICE_ID_MAX, where),
        _flag_from(item, "late", where),
        _flag_from(item, "offline", where),
    )


def _status_from(value: object, outgoing: bool, where: str) -> Status:
    allowed = set(Status) if outgoing else _INCOMING_STATUSES
    for status in allowed:
        if value == status.value:
            return status
    raise _Invalid(f"{where}.status: {value!r} is not a status of this direction")


def _flag_from(item: dict[str, object], key: str, where: str) -> bool:
    # Absent in files written before the flag existed: those messages had neither.
    value = item.get(key, False)
    if not isinstance(value, bool):
        raise _Invalid(f"{where}.{key}: {value!r} is not true or false")
    return value


def _id_from(value: object, where: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != _ID_BYTES or value != raw.hex():
        raise _Invalid(f"{where}.id: {value!r} is not 32 lower-case hex digits")
    return raw


def _number_from(item: dict[str, object], key: str, low: int, where: str) -> int:
    value = item.get(key)
    if not _is_u64(value) or value < low:
        raise _Invalid(f"{where}.{key}: {value!r} is not a whole number from {low} to 2^64 - 1")
    return value


def _text_from(item: dict[str, object], key: str, cap: int, where: str) -> str:
    value = item.get(key)
    if not _is_text(value, cap):
        raise _Invalid(f"{where}.{key}: not valid text of at most {cap} bytes")
    return value


def _sequences_from(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise _Invalid("sequences: not an object")
    if len(value) > MAX_SEQUENCE_PEERS:
        raise _Invalid(f"sequences: {len(value)} users, at most {MAX_SEQUENCE_PEERS}")
    for peer, sequence in value.items():
        if not peer or not _is_text(peer, USER_ID_MAX):
            raise _Invalid(f"sequences: {peer!r} is not a user id")
        if not _is_u64(sequence) or sequence < 1:
            raise _Invalid(f"sequences.{peer}: {sequence!r} is not a sequence")
    return value

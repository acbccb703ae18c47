"""File transfer between two devices: offer, accept, windowed chunks, resume, hash check.

Theory of operation
-------------------
Two sans-IO cores, one per side of one transfer. Neither reads a clock or a
disk: ``now`` comes in, :class:`Send` actions and events go out, and the file
bytes move through the owner's callbacks. The messages (FILE_OFFER,
FILE_CHUNK, FILE_ACK) travel inside the two devices' end-to-end session, which
is the owner's business; the cores only need it to be mostly in order.

1. :class:`FileSender` sends FILE_OFFER (again every so often until it is
   answered). The receiver's owner checks it (:meth:`Offer.from_body` refuses
   a name with a directory in it, a size over the cap) and builds a
   :class:`FileReceiver`, whose :meth:`FileReceiver.accept` answers FILE_ACK
   with ``offset`` (0, or where a saved transfer stopped) and ``window``.
2. The sender sends chunks from ``offset`` up to ``offset + window`` and no
   further: the window is the receiver's *credit*. Each chunk the receiver
   writes moves ``offset`` on, and its FILE_ACK grants credit up to
   ``offset + window`` again. Credit once granted is never taken back.
3. Loss is repaired by **go-back-N** with cumulative acknowledgements. The
   receiver writes in order only; a chunk that arrives ahead of its
   ``offset`` is kept in memory until the gap before it fills (at most the
   credit it granted, so the window bounds that memory too), and a repeated
   chunk is answered with the ACK again. When acknowledgements stop moving
   for a retransmission interval (0.5 s, doubling to 4 s), the sender goes
   back to the last acknowledged offset and sends that one chunk; the ACK
   that answers it says how far the receiver now is (past what it kept), and
   the sender goes on from there, resending what the receiver did not keep.
   FILE_ACK has no room for selective acknowledgements, and on a path that
   rarely reorders or loses (a Noise session over UDP or TCP) none are
   needed. After ``give_up_after`` seconds without progress the sender gives
   up (:class:`TransferFailed`) and the receiver reports
   :class:`TransferStalled`, keeping its state.
4. Resume. :meth:`FileReceiver.transfer_state` is a :class:`TransferState`
   (the offer, the offset written so far and the SHA-256 of those bytes)
   that the owner saves with :func:`save_transfer`. In a new session, the
   sender offers the same file (same ``file_id``) again; the receiver's owner
   loads the state, and the new receiver re-hashes the part already on disk
   (through ``read_back``) and accepts at the saved offset, so the new sender
   starts there. A part shorter than the state says, or whose bytes no longer
   hash to the saved prefix (changed while nobody was looking), is not
   trusted at all: the receiver starts from 0 (counted as ``part unreadable``
   or ``part changed``). An offer that differs from the saved one is refused.
5. When ``offset`` reaches the size, the receiver compares the SHA-256 of the
   whole file with the offer's: :class:`FileReceived` or :class:`FileCorrupt`.
   A wrong file is never reported as received.

What the receiver's owner must do with the disk:

- ``write_chunk(offset, data)`` writes into ``<name>.part`` in the download
  directory (opened with ``O_NOFOLLOW``, created if missing, mode 0600); it
  is called in order, each byte once per session, never leaving a hole;
- ``read_back(offset, n)`` reads the part back when resuming (short reads
  mean the part is damaged: the transfer restarts from 0); once the receiver
  is built, cut the part to its :attr:`FileReceiver.offset`, so that no
  byte past what was verified can end up in the file;
- before saving :meth:`FileReceiver.transfer_state`, fsync the part: the
  state must never claim bytes the disk may not hold. Saving it before
  sending the FILE_ACKs of a call means no acknowledged byte is ever sent
  twice; saving less often only costs resending;
- :class:`FileReceived`: fsync, rename ``<name>.part`` to ``<name>`` (not
  over an existing file), delete the state file;
- :class:`FileCorrupt`: delete the part and the state file. Which bytes are
  wrong is unknown, so resuming cannot help; a new offer starts from 0;
- :class:`TransferStalled`, or a session that breaks: keep both, for a resume.

The sender learns of a refusal or a corrupt file only through an ERROR whose
``detail`` starts with ``file <file_id in hex>:`` (:func:`error_file_id`);
FILE_ACK has no field for it.

Caps: the size (:class:`FileLimits`), the name (255 bytes), the chunk size
(16 KiB), the window, the queue of sends. A chunk outside the window or
beyond the size, or a FILE_ACK beyond the size, raises
:class:`~edge.client.errors.FileProtocolError` and is counted; the transfer
goes on.
"""

import hashlib
import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

from edge.client.errors import FileMisuse, FileProtocolError, FileRefused
from edge.client.messaging import CoreQueues, check_now, check_seconds
from edge.errors import EdgeError
from edge.runtime.config import write_atomic
from edge.runtime.statefile import StateFileError, dump_document, load_document, read_capped
from edge.runtime.statefile import StateFileInvalid as _Invalid
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import DETAIL_MAX, FILE_CHUNK_MAX

NAME_MAX = 255
"""Bytes of a file name (the cap of FILE_OFFER's ``name``)."""

PEER_MAX = 2 * NAME_MAX + 1
"""Characters of the ``user/device`` a saved transfer names as its sender."""

FILE_FORMAT = "edge file transfer"
FILE_VERSION = 1
MAX_STATE_BYTES = 4096

_U64 = 1 << 64
_U32 = 1 << 32
_ID_BYTES = 16
_HASH_BYTES = 32
_REHASH_STEP = 64 * 1024
_AHEAD_MAX = 1024
"""Chunks a receiver keeps ahead of a gap (tiny chunks must not make a huge table)."""


@dataclass(frozen=True)
class FileLimits:
    """Caps and timings (seconds) of one transfer."""

    max_size: int = 1 << 30
    """The largest file a receiver accepts."""
    window: int = 256 * 1024
    """Credit the receiver grants beyond what it has written."""
    retransmit_first: float = 0.5
    retransmit_max: float = 4.0
    give_up_after: float = 60.0
    """Seconds without progress before the sender gives up and the receiver stalls."""
    max_queued_sends: int = 1024

    def __post_init__(self) -> None:
        if not 0 <= self.max_size < _U64:
            raise FileMisuse("file limits: max_size must be from 0 to 2^64 - 1")
        if not 0 < self.window < _U32:
            raise FileMisuse("file limits: window must be from 1 to 2^32 - 1")
        if self.max_queued_sends < 1:
            raise FileMisuse("file limits: max_queued_sends must be at least 1")
        check_seconds(self, ("retransmit_first", "retransmit_max", "give_up_after"), FileMisuse)


# -- the offer, the saved state, actions and events


@dataclass(frozen=True)
class Offer:
    """What a FILE_OFFER says, checked."""

    file_id: bytes
    name: str
    size: int
    sha256: bytes
    chunk_size: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any], limits: FileLimits | None = None) -> "Offer":
        """The offer in a FILE_OFFER body; raises :class:`FileRefused` if it is not
        acceptable (answer it with :func:`refusal`)."""
        try:
            offer = cls(
                bytes(body["file_id"]),
                body["name"],
                body["size"],
                bytes(body["sha256"]),
                body["chunk_size"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FileRefused(f"FILE_OFFER: not an offer ({exc!r})") from None
        problem = offer.problem(limits or FileLimits())
        if problem is not None:
            raise FileRefused(f"FILE_OFFER: {problem}")
        return offer

    def problem(self, limits: FileLimits) -> str | None:
        """What makes this offer unacceptable, or None."""
        if not (isinstance(self.file_id, bytes) and len(self.file_id) == _ID_BYTES):
            return "file_id is not 16 bytes"
        if not (isinstance(self.sha256, bytes) and len(self.sha256) == _HASH_BYTES):
            return "sha256 is not 32 bytes"
        if type(self.chunk_size) is not int or not 1 <= self.chunk_size <= FILE_CHUNK_MAX:
            return f"chunk_size {self.chunk_size!r} is not from 1 to {FILE_CHUNK_MAX}"
        if type(self.size) is not int or not 0 <= self.size <= limits.max_size:
            return f"size {self.size!r} is over the cap of {limits.max_size} bytes"
        return _name_problem(self.name)

    def body(self) -> dict[str, Any]:
        """The FILE_OFFER body."""
        return {
            "file_id": self.file_id,
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
        }


@dataclass(frozen=True)
class TransferState:
    """What a receiver saves to resume: the offer and how far it has written."""

    offer: Offer
    offset: int
    prefix_sha256: bytes | None = None
    """SHA-256 of the first ``offset`` bytes as they were written; a resume checks the
    part against it (None: not checked, the hash of the whole file still is)."""
    peer: str = ""
    """Who sends the file (``user/device``), for the owner to show; the cores ignore it."""


@dataclass(frozen=True)
class Send:
    """A message for the owner to send to the other side of this transfer."""

    msg_type: MsgType
    body: Mapping[str, Any]


@dataclass(frozen=True)
class TransferStarted:
    """Sender: the receiver accepted, from ``offset`` (above 0 when resuming)."""

    file_id: bytes
    offset: int


@dataclass(frozen=True)
class FileSent:
    """Sender: every byte is acknowledged (the receiver checks the hash)."""

    file_id: bytes


@dataclass(frozen=True)
class TransferFailed:
    """Sender: no progress for too long, or the receiver refused; ``reason`` says which."""

    file_id: bytes
    reason: str


@dataclass(frozen=True)
class FileReceived:
    """Receiver: the whole file is written and its SHA-256 matches the offer."""

    file_id: bytes
    name: str
    size: int


@dataclass(frozen=True)
class FileCorrupt:
    """Receiver: the whole file is written but its SHA-256 is not the offer's."""

    file_id: bytes
    name: str
    expected: bytes
    actual: bytes


@dataclass(frozen=True)
class TransferStalled:
    """Receiver: nothing new for too long; the state is kept for a resume."""

    file_id: bytes
    offset: int


Event = TransferStarted | FileSent | TransferFailed | FileReceived | FileCorrupt | TransferStalled


# -- the state machines


class SenderState(Enum):
    OFFERING = "offering"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


class SenderTrigger(Enum):
    ACCEPTED = "accepted"
    COMPLETE = "complete"
    GAVE_UP = "gave up"
    REFUSED = "refused"


SENDER_TRANSITIONS: dict[SenderState, dict[SenderTrigger, SenderState]] = {
    SenderState.OFFERING: {
        SenderTrigger.ACCEPTED: SenderState.SENDING,
        SenderTrigger.GAVE_UP: SenderState.FAILED,
        SenderTrigger.REFUSED: SenderState.FAILED,
    },
    SenderState.SENDING: {
        SenderTrigger.COMPLETE: SenderState.DONE,
        SenderTrigger.GAVE_UP: SenderState.FAILED,
        SenderTrigger.REFUSED: SenderState.FAILED,
    },
    SenderState.DONE: {},
    SenderState.FAILED: {},
}
"""Where each trigger takes the sender; a trigger not listed changes nothing."""


class ReceiverState(Enum):
    RECEIVING = "receiving"
    STALLED = "stalled"
    DONE = "done"
    CORRUPT = "corrupt"


class ReceiverTrigger(Enum):
    PROGRESS = "progress"
    IDLE = "idle"
    VERIFIED = "verified"
    MISMATCH = "mismatch"


RECEIVER_TRANSITIONS: dict[ReceiverState, dict[ReceiverTrigger, ReceiverState]] = {
    ReceiverState.RECEIVING: {
        ReceiverTrigger.IDLE: ReceiverState.STALLED,
        ReceiverTrigger.VERIFIED: ReceiverState.DONE,
        ReceiverTrigger.MISMATCH: ReceiverState.CORRUPT,
    },
    ReceiverState.STALLED: {
        ReceiverTrigger.PROGRESS: ReceiverState.RECEIVING,
        ReceiverTrigger.VERIFIED: ReceiverState.DONE,
        ReceiverTrigger.MISMATCH: ReceiverState.CORRUPT,
    },
    ReceiverState.DONE: {},
    ReceiverState.CORRUPT: {},
}
"""Where each trigger takes the receiver; a trigger not listed changes nothing."""


StateT = TypeVar("StateT")
TriggerT = TypeVar("TriggerT")


def _advance(
    table: Mapping[StateT, Mapping[TriggerT, StateT]], state: StateT, trigger: TriggerT
) -> StateT | None:
    """Where ``trigger`` takes ``state`` by ``table``; None when it is not listed."""
    return table[state].get(trigger)


class _Core(CoreQueues[Send, Event]):
    """What both sides share: the limits, the queues and counters, refusing input."""

    def __init__(self, limits: FileLimits | None) -> None:
        self.limits = limits or FileLimits()
        super().__init__(self.limits.max_queued_sends)

    def _message(self, msg_type: MsgType, body: Mapping[str, Any]) -> None:
        self._send(Send(msg_type, body))

    def _refuse(self, reason: str, message: str) -> FileProtocolError:
        self.counters[reason] += 1
        return FileProtocolError(message)


# -- the sender


class FileSender(_Core):
    """The sending side of one transfer; see the module docstring.

    ``read_chunk(offset, n)`` returns exactly ``n`` bytes of the file from
    ``offset``. Call :meth:`start`, then feed FILE_ACK (and ERROR) bodies to
    :meth:`receive`.
    """

    def __init__(
        self,
        file_id: bytes,
        name: str,
        size: int,
        sha256: bytes,
        chunk_size: int,
        read_chunk: Callable[[int, int], bytes],
        *,
        limits: FileLimits | None = None,
    ) -> None:
        super().__init__(limits)
        self.offer = Offer(file_id, name, size, sha256, chunk_size)
        problem = self.offer.problem(FileLimits(max_size=_U64 - 1))
        if problem is not None:
            raise FileMisuse(f"file sender: {problem}")
        self.state = SenderState.OFFERING
        self.acked = 0
        """Bytes the receiver has acknowledged, from the start."""
        self.bytes_sent = 0
        """File bytes put in FILE_CHUNKs, resends included."""
        self._read = read_chunk
        self._next = 0
        self._edge = 0
        self._interval = self.limits.retransmit_first
        self._resend_at: float | None = None
        self._progress_at = 0.0

    def start(self, now: float) -> None:
        """Send the offer; it is repeated until the receiver answers."""
        check_now(now, FileMisuse)
        self._progress_at = now
        self._message(MsgType.FILE_OFFER, self.offer.body())
        self._resend_at = now + self._interval

    def receive(self, msg_type: MsgType, body: Mapping[str, Any], now: float) -> None:
        """Take a FILE_ACK, or an ERROR that may refuse this file.

        Raises :class:`FileProtocolError` for an ACK beyond the size or for another file.
        """
        check_now(now, FileMisuse)
        if msg_type is MsgType.FILE_ACK:
            self._on_ack(body, now)
        elif msg_type is MsgType.ERROR:
            self._on_error(body)
        else:
            raise FileMisuse(f"a file sender does not take {msg_type!r}")

    def get_timer(self) -> float | None:
        return self._resend_at

    def handle_timer(self, now: float) -> None:
        """Repeat the offer, or go back to the last acknowledged offset; give up in the end."""
        check_now(now, FileMisuse)
        if self._resend_at is None or now < self._resend_at:
            return
        if now - self._progress_at >= self.limits.give_up_after:
            self._fail(SenderTrigger.GAVE_UP, f"no progress for {self.limits.give_up_after:g} s")
            return
        self._interval = min(self._interval * 2, self.limits.retransmit_max)
        if self.state is SenderState.OFFERING:
            self._message(MsgType.FILE_OFFER, self.offer.body())
        else:
            self.counters["went back"] += 1
            self._next = self.acked
            self._fill(most=1)  # its ACK says where the receiver really is
        self._resend_at = now + self._interval

    @property
    def is_finished(self) -> bool:
        return self.state in (SenderState.DONE, SenderState.FAILED)

    def _on_ack(self, body: Mapping[str, Any], now: float) -> None:
        offset, window = self._read_ack(body)
        if self.is_finished:
            self.counters["late ack"] += 1
            return
        if offset < self.acked:
            self.counters["stale ack"] += 1  # overtaken by a later one
            return
        if self.state is SenderState.OFFERING:
            self._fire(SenderTrigger.ACCEPTED)
            self._events.append(TransferStarted(self.offer.file_id, offset))
            self._next = offset
        if offset > self.acked or self._edge == 0:
            # Only progress moves the timer: repeated ACKs must not put off the go-back.
            self.acked = offset
            self._progress_at = now
            self._interval = self.limits.retransmit_first
            self._resend_at = now + self._interval
        self._edge = max(self._edge, min(self.offer.size, offset + window))
        self._next = max(self._next, offset)
        if offset == self.offer.size:
            self._fire(SenderTrigger.COMPLETE)
            self._resend_at = None
            self._events.append(FileSent(self.offer.file_id))
            return
        self._fill()

    def _read_ack(self, body: Mapping[str, Any]) -> tuple[int, int]:
        try:
            file_id, offset, window = bytes(body["file_id"]), body["offset"], body["window"]
        except (KeyError, TypeError, ValueError) as exc:
            raise self._refuse("malformed", f"FILE_ACK: not an ack ({exc!r})") from None
        if file_id != self.offer.file_id:
            raise self._refuse("other file", "FILE_ACK for another file")
        if not (_is_int(offset, _U64) and _is_int(window, _U32)):
            raise self._refuse("malformed", "FILE_ACK: offset or window out of range")
        if offset > self.offer.size:
            raise self._refuse(
                "beyond the size", f"FILE_ACK: offset {offset} beyond {self.offer.size} bytes"
            )
        return offset, window

    def _on_error(self, body: Mapping[str, Any]) -> None:
        if error_file_id(body) != self.offer.file_id or self.is_finished:
            self.counters["other error"] += 1
            return
        self._fail(SenderTrigger.REFUSED, str(body.get("detail", "")))

    def _fill(self, most: int = _U32) -> None:
        for _ in range(most):
            if self._next >= self._edge:
                return
            size = min(self.offer.chunk_size, self._edge - self._next)
            data = self._read(self._next, size)
            if not isinstance(data, bytes) or len(data) != size:
                raise FileMisuse(f"read_chunk({self._next}, {size}) did not return {size} bytes")
            body = {"file_id": self.offer.file_id, "offset": self._next, "data": data}
            self._message(MsgType.FILE_CHUNK, body)
            self.bytes_sent += size
            self._next += size

    def _fail(self, trigger: SenderTrigger, reason: str) -> None:
        if self._fire(trigger):
            self._resend_at = None
            self._events.append(TransferFailed(self.offer.file_id, reason))

    def _fire(self, trigger: SenderTrigger) -> bool:
        new = _advance(SENDER_TRANSITIONS, self.state, trigger)
        self.state = new or self.state
        return new is not None


# -- the receiver


class FileReceiver(_Core):
    """The receiving side of one transfer; see the module docstring for what the
    owner must do with the disk.

    ``state`` is a saved :class:`TransferState` to resume from; it must carry
    the same offer, and ``read_back`` must be given when it has bytes written.
    Call :meth:`accept`, then feed FILE_CHUNK (and repeated FILE_OFFER) bodies
    to :meth:`receive`. An exception from ``write_chunk`` reaches the caller;
    :attr:`offset` still counts only bytes written, and the sender's go-back
    sends the rest again.
    """

    def __init__(
        self,
        offer: Offer,
        write_chunk: Callable[[int, bytes], None],
        state: TransferState | None = None,
        *,
        read_back: Callable[[int, int], bytes] | None = None,
        limits: FileLimits | None = None,
    ) -> None:
        super().__init__(limits)
        problem = offer.problem(self.limits)
        if problem is not None:
            raise FileRefused(f"FILE_OFFER: {problem}")
        if state is not None and state.offer != offer:
            raise FileRefused("FILE_OFFER differs from the saved transfer with the same id")
        self.offer = offer
        self.state = ReceiverState.RECEIVING
        self._write = write_chunk
        self._ahead: dict[int, bytes] = {}
        """Chunks that came before the gap in front of them filled, by offset."""
        self._ahead_order: list[int] = []
        """The offsets of ``_ahead`` as a heap, lowest first."""
        self._ahead_bytes = 0
        self._hash = hashlib.sha256()
        self._offset = 0
        self._edge = 0
        self._idle_at: float | None = None
        if state is not None and state.offset > 0:
            self._resume(state, read_back)

    @property
    def offset(self) -> int:
        """Bytes written contiguously from the start."""
        return self._offset

    @property
    def is_finished(self) -> bool:
        return self.state in (ReceiverState.DONE, ReceiverState.CORRUPT)

    def transfer_state(self) -> TransferState:
        """What to save (after fsyncing the part) to resume this transfer later."""
        return TransferState(self.offer, self._offset, self._hash.copy().digest())

    def accept(self, now: float) -> None:
        """Answer the offer: FILE_ACK from where the file stands, with credit."""
        check_now(now, FileMisuse)
        self._idle_at = now + self.limits.give_up_after
        if self._offset == self.offer.size:
            self._finish()
        else:
            self._ack()

    def receive(self, msg_type: MsgType, body: Mapping[str, Any], now: float) -> None:
        """Take a FILE_CHUNK, or the same FILE_OFFER again (answered with an ACK).

        Raises :class:`FileProtocolError` for a chunk outside the window,
        beyond the size or of another file; :class:`FileRefused` for a
        different offer with this id.
        """
        check_now(now, FileMisuse)
        if msg_type is MsgType.FILE_CHUNK:
            self._on_chunk(body, now)
        elif msg_type is MsgType.FILE_OFFER:
            if Offer.from_body(body, self.limits) != self.offer:
                raise FileRefused("FILE_OFFER differs from the one accepted with this id")
            self.counters["repeated offer"] += 1
            self._answer_again()
        else:
            raise FileMisuse(f"a file receiver does not take {msg_type!r}")

    def get_timer(self) -> float | None:
        return self._idle_at if self.state is ReceiverState.RECEIVING else None

    def handle_timer(self, now: float) -> None:
        """Report a stall when nothing new has come for ``give_up_after``."""
        check_now(now, FileMisuse)
        timer = self.get_timer()
        if timer is not None and now >= timer and self._fire(ReceiverTrigger.IDLE):
            self._events.append(TransferStalled(self.offer.file_id, self._offset))

    def _resume(self, state: TransferState, read_back: Callable[[int, int], bytes] | None) -> None:
        if read_back is None:
            raise FileMisuse("file receiver: resuming needs read_back to hash the part")
        offset = state.offset
        if not 0 < offset <= self.offer.size:
            raise FileRefused(f"saved offset {offset} is beyond the size")
        at = 0
        while at < offset:
            size = min(_REHASH_STEP, offset - at)
            data = read_back(at, size)
            if not isinstance(data, bytes) or len(data) != size:
                # The part is shorter than the state says: start again from 0.
                self.counters["part unreadable"] += 1
                self._hash, at = hashlib.sha256(), 0
                break
            self._hash.update(data)
            at += size
        if at and state.prefix_sha256 is not None and self._hash.digest() != state.prefix_sha256:
            # Changed on disk since the save: which bytes is unknown, so none are kept.
            self.counters["part changed"] += 1
            self._hash, at = hashlib.sha256(), 0
        self._offset = self._edge = at

    def _on_chunk(self, body: Mapping[str, Any], now: float) -> None:
        offset, data = self._read_chunk(body)
        end = offset + len(data)
        if self.is_finished:
            self.counters["after the end"] += 1
            self._answer_again()
        elif end <= self._offset:
            self.counters["duplicate chunk"] += 1
            self._ack()  # the ACK that would have stopped the resend was lost
        elif offset > self._offset:
            self._keep(offset, data)
        else:
            self._take(data[self._offset - offset :], now)

    def _keep(self, offset: int, data: bytes) -> None:
        self.counters["out of order"] += 1
        full = len(self._ahead) >= _AHEAD_MAX or self._ahead_bytes + len(data) > self.limits.window
        if full or offset in self._ahead:
            self.counters["not kept"] += 1  # no room, or a repeat: it will come again
            return
        self._ahead[offset] = data
        heapq.heappush(self._ahead_order, offset)
        self._ahead_bytes += len(data)

    def _read_chunk(self, body: Mapping[str, Any]) -> tuple[int, bytes]:
        try:
            file_id, offset, data = bytes(body["file_id"]), body["offset"], bytes(body["data"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._refuse("malformed", f"FILE_CHUNK: not a chunk ({exc!r})") from None
        if file_id != self.offer.file_id:
            raise self._refuse("other file", "FILE_CHUNK for another file")
        if not _is_int(offset, _U64) or not 0 < len(data) <= self.offer.chunk_size:
            raise self._refuse(
                "malformed", f"FILE_CHUNK: {len(data)} bytes, chunk size {self.offer.chunk_size}"
            )
        end = offset + len(data)
        if end > self.offer.size:
            raise self._refuse(
                "beyond the size", f"FILE_CHUNK: bytes {offset}..{end} of a {self.offer.size}"
            )
        if end > self._edge:
            raise self._refuse(
                "outside the window", f"FILE_CHUNK: bytes {offset}..{end}, credit to {self._edge}"
            )
        return offset, data

    def _take(self, data: bytes, now: float) -> None:
        self._append(data)
        while self._ahead_order and self._ahead_order[0] <= self._offset:
            start = heapq.heappop(self._ahead_order)
            kept = self._ahead.pop(start)
            self._ahead_bytes -= len(kept)
            if start + len(kept) > self._offset:
                self._append(kept[self._offset - start :])
        self._idle_at = now + self.limits.give_up_after
        self._fire(ReceiverTrigger.PROGRESS)
        if self._offset == self.offer.size:
            self._finish()
        else:
            self._ack()

    def _append(self, data: bytes) -> None:
        self._write(self._offset, data)
        self._hash.update(data)
        self._offset += len(data)

    def _finish(self) -> None:
        actual = self._hash.digest()
        offer = self.offer
        if actual == offer.sha256:
            self._fire(ReceiverTrigger.VERIFIED)
            self._events.append(FileReceived(offer.file_id, offer.name, offer.size))
            self._ack()
        else:
            self._fire(ReceiverTrigger.MISMATCH)
            self._events.append(FileCorrupt(offer.file_id, offer.name, offer.sha256, actual))
            self._message(MsgType.ERROR, _error_body(offer.file_id, "SHA-256 does not match"))

    def _answer_again(self) -> None:
        if self.state is ReceiverState.CORRUPT:
            self._message(MsgType.ERROR, _error_body(self.offer.file_id, "SHA-256 does not match"))
        else:
            self._ack()

    def _ack(self) -> None:
        window = min(self.limits.window, self.offer.size - self._offset)
        self._edge = max(self._edge, self._offset + window)
        body = {"file_id": self.offer.file_id, "offset": self._offset, "window": window}
        self._message(MsgType.FILE_ACK, body)

    def _fire(self, trigger: ReceiverTrigger) -> bool:
        new = _advance(RECEIVER_TRANSITIONS, self.state, trigger)
        self.state = new or self.state
        return new is not None


# -- refusals


def refusal(body: Mapping[str, Any], error: EdgeError) -> Send | None:
    """The ERROR that tells a sender why its offer (``body``) was refused, or None
    when the offer has no usable file id."""
    try:
        file_id = bytes(body["file_id"])
    except (KeyError, TypeError, ValueError):
        return None
    if len(file_id) != _ID_BYTES:
        return None
    return Send(MsgType.ERROR, _error_body(file_id, str(error), error.code))


def error_file_id(body: Mapping[str, Any]) -> bytes | None:
    """The file an ERROR body is about (its detail starts ``file <hex id>:``), or None."""
    detail = body.get("detail")
    if not isinstance(detail, str) or not detail.startswith("file "):
        return None
    hex_id = detail[5 : 5 + 2 * _ID_BYTES]
    if detail[5 + 2 * _ID_BYTES : 6 + 2 * _ID_BYTES] != ":":
        return None
    try:
        return bytes.fromhex(hex_id)
    except ValueError:
        return None


def _error_body(
    file_id: bytes, reason: str, code: ErrorCode = ErrorCode.MALFORMED
) -> dict[str, Any]:
    detail = f"file {file_id.hex()}: {reason}"
    raw = detail.encode("utf-8")[:DETAIL_MAX]
    return {
        "code": code,
        "about_type": MsgType.FILE_OFFER,
        "detail": raw.decode("utf-8", errors="ignore"),
    }


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "the name is empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "the name is not valid Unicode"
    if size > NAME_MAX:
        return f"the name is {size} bytes, at most {NAME_MAX}"
    if "/" in name or "\\" in name or ".." in name:
        return f"the name {name!r} has a directory in it"
    if name.startswith(".") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return f"the name {name!r} is hidden or has control characters"
    return None


def _is_int(value: object, limit: int) -> TypeGuard[int]:
    return type(value) is int and 0 <= value < limit


# -- the state file


class TransferFileError(StateFileError):
    """A transfer state file cannot be used; the message names the file and the problem."""

    kind = "file transfer state"


def save_transfer(state: TransferState, path: Path) -> None:
    """Write ``state`` to ``path``, atomically, mode 0600 (fsync the part first).

    Raises :class:`~edge.runtime.errors.AtomicWriteError`; the old file is then intact.
    """
    offer = state.offer
    fields = {
        "file_id": offer.file_id.hex(),
        "name": offer.name,
        "size": offer.size,
        "sha256": offer.sha256.hex(),
        "chunk_size": offer.chunk_size,
        "offset": state.offset,
        "prefix_sha256": None if state.prefix_sha256 is None else state.prefix_sha256.hex(),
        "peer": state.peer,
    }
    write_atomic(path, dump_document(FILE_FORMAT, FILE_VERSION, fields))


def load_transfer(path: Path, limits: FileLimits | None = None) -> TransferState | None:
    """The state saved at ``path``, or None if there is no file.

    Raises :class:`TransferFileError` when it is damaged; the owner then
    deletes it and the part, and the transfer starts from 0.
    """
    try:
        raw = read_capped(path, MAX_STATE_BYTES)
        if raw is None:
            return None
        return _state_from(load_document(raw, "file transfer state", FILE_FORMAT, FILE_VERSION))
    except (_Invalid, FileRefused) as exc:
        raise TransferFileError(path, str(exc)) from None


def _state_from(document: dict[str, Any]) -> TransferState:
    offer = Offer.from_body(
        {
            "file_id": _hex_from(document, "file_id", _ID_BYTES),
            "name": document.get("name"),
            "size": document.get("size"),
            "sha256": _hex_from(document, "sha256", _HASH_BYTES),
            "chunk_size": document.get("chunk_size"),
        },
        FileLimits(max_size=_U64 - 1),
    )
    offset = document.get("offset")
    if not _is_int(offset, _U64) or offset > offer.size:
        raise _Invalid(f"offset {offset!r} is not from 0 to the size")
    prefix = None
    if document.get("prefix_sha256") is not None:
        prefix = _hex_from(document, "prefix_sha256", _HASH_BYTES)
    return TransferState(offer, offset, prefix, _peer_from(document))


def _peer_from(document: dict[str, Any]) -> str:
    peer = document.get("peer", "")
    if not isinstance(peer, str) or len(peer) > PEER_MAX:
        raise _Invalid(f"peer is not a string of at most {PEER_MAX} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in peer):
        raise _Invalid(f"peer {peer!r} has control characters")
    return peer


def _hex_from(document: dict[str, Any], key: str, size: int) -> bytes:
    value = document.get(key)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size or value != raw.hex():
        raise _Invalid(f"{key}: {value!r} is not {2 * size} lower-case hex digits")
    return raw

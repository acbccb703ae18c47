"""The agent's file transfers on its peer sessions: the file cores, their disk and timer.

How it works: :class:`TransferDriver` owns the :class:`~edge.client.files.FileSender`
and :class:`~edge.client.files.FileReceiver` cores of the agent's transfers,
carries their FILE_* messages (and the ERRORs about them) in the end-to-end
session with the other device (:class:`~edge.client.peers.Peers`, through the
supernodes or on a call's path), and does the disk work the cores leave to
their owner:

* sending reads the file through an open handle, in chunks of
  :data:`CHUNK_SIZE` (a FILE_CHUNK in a TRANSPORT datagram stays under a
  1,280-byte path MTU), with a credit of :data:`WINDOW` bytes: a larger burst
  overflows the socket buffers of the supernodes and the peer (about 200 KiB
  on Linux), and each datagram lost there costs a go-back interval;
* receiving writes ``<name>.part`` in the download folder (created 0600, never
  following a link), fsyncs it and renames it to ``<name>`` once the SHA-256
  matches (a number is added when that name is taken), or deletes it when it
  does not.

Resuming. A file's ``file_id`` is :func:`transfer_id`: a hash of the sender,
the recipient, the name and the content, so the same file sent again to the
same device has the same id, and any other file, name or pair of devices
another. The receiver keeps one part per name, and beside it, in the hidden
folder :data:`STATE_FOLDER` of the download folder (a received name never
starts with a dot), that transfer's :class:`~edge.client.files.TransferState`:
saved atomically, after an fsync of the part, every :data:`SAVE_EVERY` bytes
or :data:`SAVE_INTERVAL` seconds while bytes come in, when the transfer
stalls, and when the agent's port closes; deleted once the file is received
or found corrupt; at most :data:`MAX_SAVED` of them, the oldest going first
(with its part). An offer that matches the saved state opens the part as it
is, and the receiver re-hashes it and accepts at the saved offset; a part
changed or cut short since then starts over from 0. An offer for the same
name that does not match (another file, a damaged state file) starts over
cleanly: the old part and state go, with a warning in the log.

The sender gives up after :data:`GIVE_UP_AFTER` seconds without progress, and
``edge ctl send-file`` then says how far the receiver had acknowledged. Run
again, it offers the same id and goes on from the receiver's offset; a send
of the same file still running is replaced. An offer unanswered for
:data:`OFFER_TIMEOUT` seconds means the peer no longer knows the session (it
restarted, say): the session is closed and the offer made once more in a new
one. A sender does not retry by itself: whoever sent the file sends it again.

Offers are accepted at once from any certified user, up to
:data:`MAX_FILE` bytes: a desk phone has no one to ask, and the sender's
identity is proved by the session. The cores' timers, the offer deadlines and
the saves share one loop timer.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from edge.client.errors import FileMisuse, FileRefused
from edge.client.files import (
    FileCorrupt,
    FileLimits,
    FileReceived,
    FileReceiver,
    FileSender,
    FileSent,
    Offer,
    ReceiverState,
    SenderState,
    TransferFailed,
    TransferFileError,
    TransferStalled,
    TransferStarted,
    TransferState,
    error_file_id,
    load_transfer,
    refusal,
    save_transfer,
)
from edge.client.peers import Peers
from edge.errors import EdgeError
from edge.wire.codes import MsgType
from edge.wire.messages import Message

_log = logging.getLogger(__name__)

CHUNK_SIZE = 1024
WINDOW = 64 * 1024
MAX_FILE = 64 << 20
MAX_TRANSFERS = 16
MAX_SAVED = 32
"""Partial transfers kept on disk for a resume."""
MAX_HISTORY = 100
"""Entries kept in each of the lists of files received and sent."""
GIVE_UP_AFTER = 20.0
OFFER_TIMEOUT = 5.0
SAVE_EVERY = 1 << 20
SAVE_INTERVAL = 1.0
STALLED_AFTER = 5.0
"""Seconds without a new byte after which ``edge ctl files`` calls a transfer stalled."""
STATE_FOLDER = ".transfers"
FILE_TYPES = frozenset({MsgType.FILE_OFFER, MsgType.FILE_CHUNK, MsgType.FILE_ACK})

Listing = dict[str, Any]


@dataclass(frozen=True)
class SendOutcome:
    """How one send ended: ``event`` is :class:`FileSent` or :class:`TransferFailed`."""

    event: FileSent | TransferFailed
    name: str
    size: int
    to: str
    started_at: int
    """Where the receiver accepted: above 0 when it resumed a saved transfer."""
    acked: int
    bytes_sent: int
    """File bytes put in chunks in this send, resends included."""
    unanswered: bool = False

    def summary(self) -> Listing:
        return {
            "name": self.name,
            "size": self.size,
            "to": self.to,
            "sent": isinstance(self.event, FileSent),
            "from": self.started_at,
            "acked": self.acked,
            "bytes_sent": self.bytes_sent,
            "reason": self.event.reason if isinstance(self.event, TransferFailed) else "",
        }


@dataclass
class _Outgoing:
    session: int
    core: FileSender
    handle: BinaryIO
    to: str
    done: "asyncio.Future[SendOutcome]"
    offer_until: float
    started_at: int = 0


@dataclass
class _Incoming:
    session: int
    core: FileReceiver
    handle: BinaryIO
    peer: str
    state_path: Path
    saved_offset: int
    saved_at: float
    progress_at: float
    seen_offset: int
    save_failed: bool = False


_Entry = _Outgoing | _Incoming


class TransferDriver:
    """The file transfers of one agent; see the module docstring."""

    def __init__(self, peers: Peers, downloads: Path) -> None:
        self.peers = peers
        self.downloads = downloads
        self.limits = FileLimits(max_size=MAX_FILE, window=WINDOW, give_up_after=GIVE_UP_AFTER)
        self.counters: Counter[str] = Counter()
        self.received: deque[Listing] = deque(maxlen=MAX_HISTORY)
        """Files that arrived whole, newest last."""
        self.sent: deque[Listing] = deque(maxlen=MAX_HISTORY)
        """How each send ended, newest last."""
        self.closed = asyncio.Event()
        self._cores: dict[bytes, _Entry] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._changes = asyncio.Event()

    @property
    def saved_folder(self) -> Path:
        return self.downloads / STATE_FOLDER

    # -- sending

    async def send(
        self, open_session: Callable[[], Awaitable[int]], path: Path, *, sender: str, recipient: str
    ) -> SendOutcome:
        """Send the file at ``path`` from ``sender`` to ``recipient`` (both ``user/device``)
        in the session ``open_session()`` gives; how it ended."""
        size, digest = await asyncio.to_thread(_measure, path)
        file_id = transfer_id(sender, recipient, path.name, digest)
        session = await open_session()
        outcome = await self._send_once(session, path, file_id, (size, digest), recipient)
        if outcome.unanswered:
            # The peer has forgotten this session (it restarted, say): a new handshake, once.
            self.counters["session renewed"] += 1
            self.peers.core.endpoint.close(session)
            session = await open_session()
            outcome = await self._send_once(session, path, file_id, (size, digest), recipient)
        self.sent.append(outcome.summary())
        return outcome

    async def _send_once(
        self, session: int, path: Path, file_id: bytes, measured: tuple[int, bytes], to: str
    ) -> SendOutcome:
        if self.closed.is_set():
            raise EdgeError("file transfers have stopped with the agent's port")
        self._replace_earlier(path.name, to)
        if file_id in self._cores:
            raise EdgeError(f"a transfer with the id of {path.name} is running already")
        if len(self._cores) >= MAX_TRANSFERS:
            raise EdgeError(f"{MAX_TRANSFERS} transfers are running already")
        self._watch_port()
        size, digest = measured
        handle = path.open("rb")
        try:
            core = FileSender(
                file_id, path.name, size, digest, CHUNK_SIZE, _reader(handle), limits=self.limits
            )
        except EdgeError:
            handle.close()
            raise
        now = self._now()
        done: asyncio.Future[SendOutcome] = asyncio.get_running_loop().create_future()
        self._cores[file_id] = _Outgoing(session, core, handle, to, done, now + OFFER_TIMEOUT)
        core.start(now)
        self._pump()
        return await done

    def _replace_earlier(self, name: str, to: str) -> None:
        """A send of ``name`` to ``to`` still running is of this file or an older
        version of it: the new send takes over (the receiver keeps one part per name)."""
        for file_id, entry in list(self._cores.items()):
            if isinstance(entry, _Outgoing) and (entry.core.offer.name, entry.to) == (name, to):
                self._end_outgoing(file_id, entry, f"replaced by a new send of {name}")
                self.counters["send replaced"] += 1

    def _end_outgoing(
        self, file_id: bytes, out: _Outgoing, reason: str = "", *, unanswered: bool = False
    ) -> None:
        """Close an outgoing transfer and answer its sender with how it ended."""
        if self._cores.get(file_id) is out:
            del self._cores[file_id]
        _close(out.handle)
        core = out.core
        event: FileSent | TransferFailed = (
            FileSent(file_id) if core.state is SenderState.DONE else TransferFailed(file_id, reason)
        )
        outcome = SendOutcome(
            event, core.offer.name, core.offer.size, out.to, out.started_at, core.acked,
            core.bytes_sent, unanswered,
        )  # fmt: skip
        if not out.done.done():
            out.done.set_result(outcome)

    # -- receiving

    def on_message(self, session: int, message: Message) -> bool:
        """A FILE_* message of a peer session, or an ERROR about one of our files;
        False for any other message."""
        file_id = self._file_of(message)
        if file_id is None:
            return False
        entry = self._cores.get(file_id)
        try:
            if entry is None:
                self._first_of(session, message)
            elif entry.session == session or self._rebound(entry, session, message):
                take = partial(entry.core.receive, message.type, message.body, self._now())
                self._drive(file_id, entry, take)
            else:
                self.counters["from another session"] += 1
        except EdgeError as exc:
            self._refused(session, message, exc)
        except OSError as exc:
            # The disk refused a write: nothing is counted as written, the sender goes back.
            self.counters["disk error"] += 1
            _log.warning("file transfer: %s", exc)
        self._pump()
        return True

    def _file_of(self, message: Message) -> bytes | None:
        if message.type in FILE_TYPES:
            return bytes(message.body.file_id)
        if message.type is MsgType.ERROR:
            file_id = error_file_id(message.body)
            if isinstance(self._cores.get(file_id or b""), _Outgoing):
                return file_id
        return None

    def _first_of(self, session: int, message: Message) -> None:
        if message.type is not MsgType.FILE_OFFER:
            self.counters["no such transfer"] += 1  # one that ended, or from before a restart
            return
        self._watch_port()
        offer = Offer.from_body(message.body, self.limits)
        if len(self._cores) >= MAX_TRANSFERS:
            raise FileRefused(f"{MAX_TRANSFERS} transfers are running already")
        peer = self._peer_of(session)
        self._clear_name(offer.name, peer)
        try:
            incoming = self._open_incoming(session, offer, peer)
        except OSError as exc:
            raise FileRefused(f"cannot write {offer.name}: {exc.strerror or exc}") from None
        self._cores[offer.file_id] = incoming
        incoming.core.accept(self._now())

    def _rebound(self, entry: _Entry, session: int, message: Message) -> bool:
        """The sender of a transfer we are receiving came back in a new session
        (it restarted): carry on in that one."""
        if not (isinstance(entry, _Incoming) and message.type is MsgType.FILE_OFFER):
            return False
        if self._peer_of(session) != entry.peer:
            return False
        entry.session = session
        self.counters["resumed in a new session"] += 1
        return True

    def _refused(self, session: int, message: Message, exc: EdgeError) -> None:
        self.counters[f"refused: {type(exc).__name__}"] += 1
        if message.type is not MsgType.FILE_OFFER:
            return  # a bad chunk or ACK is dropped; the transfer goes on
        _log.info("file offer refused: %s", exc)
        answer = refusal(message.body, exc)
        if answer is not None and self.peers.core.endpoint.is_established(session):
            self.peers.send(session, answer.msg_type, answer.body)

    def _clear_name(self, name: str, peer: str) -> None:
        """Make room for a new file called ``name``: one part per name."""
        for file_id, entry in list(self._cores.items()):
            if not (isinstance(entry, _Incoming) and entry.core.offer.name == name):
                continue
            if entry.peer != peer:
                raise FileRefused(f"{name} is being received from another device")
            # The same sender has moved on to another version of the file.
            del self._cores[file_id]
            _close(entry.handle)
            self.counters["replaced by another version"] += 1

    def _open_incoming(self, session: int, offer: Offer, peer: str) -> _Incoming:
        self.downloads.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.saved_folder.mkdir(mode=0o700, exist_ok=True)
        state_path = self.saved_folder / _state_name(offer.name)
        part = self.downloads / f"{offer.name}.part"
        saved = self._usable_state(state_path, offer, part)
        handle = _open_part(part)
        try:
            core = FileReceiver(
                offer, _writer(handle), saved, read_back=_reader(handle), limits=self.limits
            )
            handle.truncate(core.offset)  # nothing past the verified bytes may stay
        except (EdgeError, OSError):
            handle.close()
            raise
        if saved is not None:
            self._note_resume(core, saved)
        now = self._now()
        return _Incoming(
            session, core, handle, peer, state_path, core.offset, now, now, core.offset
        )

    def _usable_state(self, state_path: Path, offer: Offer, part: Path) -> TransferState | None:
        """The saved state to resume ``offer`` from, or None (and none on disk) to start over."""
        try:
            saved = load_transfer(state_path)
        except TransferFileError as exc:
            self.counters["saved state damaged"] += 1
            _log.warning("%s; %s starts over", exc, offer.name)
            _remove(state_path, part)
            return None
        if saved is not None and saved.offer != offer:
            self.counters["saved state of another file"] += 1
            _log.warning(
                "%s is offered, but not the file saved part-way (%s, %d bytes): it starts over",
                offer.name, saved.peer or "unknown sender", saved.offer.size,
            )  # fmt: skip
            _remove(state_path, part)
            return None
        return saved

    def _note_resume(self, core: FileReceiver, saved: TransferState) -> None:
        name = core.offer.name
        if core.offset == saved.offset:
            self.counters["resumed"] += 1
            _log.info("%s resumes at %d of %d bytes", name, core.offset, core.offer.size)
            return
        self.counters["part not as saved"] += 1
        _log.warning(
            "the part of %s is not what was saved at %d bytes (changed or cut short): "
            "it starts over", name, saved.offset,
        )  # fmt: skip

    # -- saving the receivers' state

    def _save_due(self, now: float) -> None:
        for entry in list(self._cores.values()):
            if isinstance(entry, _Incoming) and self._save_at(entry) <= now:
                self._save(entry, now)

    @staticmethod
    def _save_at(entry: _Incoming) -> float:
        ahead = entry.core.offset - entry.saved_offset
        if ahead <= 0 or entry.core.is_finished:
            return float("inf")
        if ahead >= SAVE_EVERY and not entry.save_failed:
            return float("-inf")
        return entry.saved_at + SAVE_INTERVAL  # after a failure too: try again, not at once

    def _save(self, entry: _Incoming, now: float) -> None:
        """Save how far ``entry`` has come, the part fsynced first."""
        state = replace(entry.core.transfer_state(), peer=entry.peer)
        try:
            entry.handle.flush()
            os.fsync(entry.handle.fileno())
            if not entry.state_path.exists():
                self._make_room()
            save_transfer(state, entry.state_path)
        except (OSError, EdgeError) as exc:
            self.counters["state not saved"] += 1
            _log.warning("state of %s not saved: %s", entry.core.offer.name, exc)
            entry.saved_at, entry.save_failed = now, True
            return
        self.counters["states saved"] += 1
        entry.saved_offset, entry.saved_at, entry.save_failed = state.offset, now, False

    def _make_room(self) -> None:
        """Make room for one more saved transfer under :data:`MAX_SAVED`: the oldest
        that is not running goes, with its part."""
        active = {e.state_path for e in self._cores.values() if isinstance(e, _Incoming)}
        every = list(self.saved_folder.glob("*.json"))
        idle = sorted((p for p in every if p not in active), key=lambda p: p.stat().st_mtime)
        for path in idle[: max(0, len(every) + 1 - MAX_SAVED)]:
            with contextlib.suppress(EdgeError):
                state = load_transfer(path)
                if state is not None:
                    _remove(self.downloads / f"{state.offer.name}.part")
            _remove(path)
            self.counters["saved state dropped for room"] += 1

    # -- output, events, time

    def _pump(self) -> None:
        now = self._now()
        for file_id, entry in list(self._cores.items()):
            self._transmit(entry)
            if isinstance(entry, _Incoming) and entry.core.offset != entry.seen_offset:
                entry.seen_offset, entry.progress_at = entry.core.offset, now
            while (event := entry.core.next_event()) is not None:
                self._event(file_id, entry, event, now)
        self._save_due(now)
        self._changed()
        self._arm()

    def _transmit(self, entry: _Entry) -> None:
        for send in entry.core.messages_to_send():
            if self.peers.core.endpoint.is_established(entry.session):
                self.peers.send(entry.session, send.msg_type, send.body)

    def _event(self, file_id: bytes, entry: _Entry, event: object, now: float) -> None:
        if isinstance(entry, _Outgoing):
            if isinstance(event, TransferStarted):
                entry.started_at = event.offset
            elif isinstance(event, FileSent | TransferFailed):
                reason = event.reason if isinstance(event, TransferFailed) else ""
                self._end_outgoing(file_id, entry, reason)
        elif isinstance(event, FileReceived):
            self._finish_received(file_id, entry, event)
        elif isinstance(event, FileCorrupt):
            self.counters["corrupt"] += 1
            _log.warning("%s arrived whole but its SHA-256 does not match: deleted", event.name)
            self._drop_incoming(file_id, entry, forget=True)
        elif isinstance(event, TransferStalled):
            self._save(entry, now)
            self._drop_incoming(file_id, entry, forget=False)

    def _finish_received(self, file_id: bytes, entry: _Incoming, event: FileReceived) -> None:
        final = _free_name(self.downloads / event.name)
        try:
            entry.handle.flush()
            os.fsync(entry.handle.fileno())
            os.rename(self.downloads / f"{event.name}.part", final)
        except OSError as exc:
            # Verified but not in place: the saved state lets the next offer finish it.
            self.counters["not renamed"] += 1
            _log.warning("%s arrived whole but could not be put in place: %s", event.name, exc)
            self._drop_incoming(file_id, entry, forget=False)
            return
        self._drop_incoming(file_id, entry, forget=False)
        _remove(entry.state_path)
        self.received.append({"name": final.name, "size": event.size})

    def _drop_incoming(self, file_id: bytes, entry: _Incoming, *, forget: bool) -> None:
        if self._cores.get(file_id) is entry:
            del self._cores[file_id]
        _close(entry.handle)
        if forget:
            _remove(entry.state_path, self.downloads / f"{entry.core.offer.name}.part")

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = min((self._deadline(e) for e in self._cores.values()), default=float("inf"))
        if at != float("inf"):
            self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)

    def _deadline(self, entry: _Entry) -> float:
        timer = entry.core.get_timer()
        at = float("inf") if timer is None else timer
        if isinstance(entry, _Outgoing) and entry.core.state is SenderState.OFFERING:
            return min(at, entry.offer_until)
        if isinstance(entry, _Incoming):
            return min(at, self._save_at(entry))
        return at

    def _on_timer(self) -> None:
        self._timer = None
        now = self._now()
        for file_id, entry in list(self._cores.items()):
            at = entry.core.get_timer()
            if at is not None and at <= now:
                self._drive(file_id, entry, partial(entry.core.handle_timer, now))
            if isinstance(entry, _Outgoing) and self._unanswered(entry, now):
                self._end_outgoing(file_id, entry, "no answer to the offer", unanswered=True)
        self._pump()

    def _drive(self, file_id: bytes, entry: _Entry, action: Callable[[], None]) -> None:
        """``action()`` on ``entry``'s core; a sender whose file no longer reads as it
        measured (changed or cut short while it was sent) ends."""
        try:
            action()
        except FileMisuse as exc:
            if not isinstance(entry, _Outgoing):
                raise
            self.counters["file changed while sent"] += 1
            self._end_outgoing(file_id, entry, f"the file changed while it was sent ({exc})")

    @staticmethod
    def _unanswered(entry: _Outgoing, now: float) -> bool:
        return entry.core.state is SenderState.OFFERING and entry.offer_until <= now

    # -- the agent's port closing

    def _watch_port(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._close_with_port())

    async def _close_with_port(self) -> None:
        await self.peers.adapter.wait_closed()
        self.close()

    def close(self) -> None:
        """Every session has ended with the agent's port: save what each receiver has,
        tell each sender where it stopped."""
        now = self._now()
        for file_id, entry in list(self._cores.items()):
            if isinstance(entry, _Incoming):
                self._save(entry, now)
                self._drop_incoming(file_id, entry, forget=False)
            else:
                self._end_outgoing(file_id, entry, "this device stopped")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.closed.set()
        self._changed()

    # -- what edge ctl files shows

    def listing(self) -> Listing:
        """Files received, partial incoming transfers, sends running and sends ended."""
        return {
            "received": list(self.received),
            "partial": self._partial(),
            "sending": [self._sending(e) for e in self._cores.values() if isinstance(e, _Outgoing)],
            "sent": list(self.sent),
        }

    def _partial(self) -> list[Listing]:
        now = self._now()
        active = [e for e in self._cores.values() if isinstance(e, _Incoming)]
        shown = [
            _partial_entry(e.core.offer, e.core.offset, e.peer, self._state_of(e, now))
            for e in active
        ]
        paths = {e.state_path for e in active}
        for path in sorted(self.saved_folder.glob("*.json"))[:MAX_SAVED]:
            if path in paths:
                continue
            with contextlib.suppress(EdgeError):
                state = load_transfer(path)
                if state is not None:
                    shown.append(_partial_entry(state.offer, state.offset, state.peer, "stalled"))
        return shown

    @staticmethod
    def _state_of(entry: _Incoming, now: float) -> str:
        idle = now - entry.progress_at >= STALLED_AFTER
        stalled = entry.core.state is ReceiverState.STALLED or idle
        return "stalled" if stalled else "receiving"

    @staticmethod
    def _sending(entry: _Outgoing) -> Listing:
        offer = entry.core.offer
        return {
            "name": offer.name,
            "size": offer.size,
            "to": entry.to,
            "acked": entry.core.acked,
            "state": entry.core.state.value,
        }

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checked whenever a transfer moves."""
        while not condition():
            await self._changes.wait()

    def _changed(self) -> None:
        self._changes.set()
        self._changes = asyncio.Event()

    def _peer_of(self, session: int) -> str:
        try:
            certificate = self.peers.core.endpoint.peer(session)
        except EdgeError:
            return "unknown"
        return f"{certificate.user_id}/{certificate.device_id}"

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()


def transfer_id(sender: str, recipient: str, name: str, sha256: bytes) -> bytes:
    """The ``file_id`` of the file ``name`` with this content from ``sender`` to
    ``recipient``: the same when it is sent again, so the transfer resumes; another
    for any other content, name, sender or recipient, so transfers never collide."""
    digest = hashlib.sha256(b"edge file id")
    for field in (sender.encode(), recipient.encode(), name.encode(), sha256):
        digest.update(len(field).to_bytes(4, "big") + field)  # length-prefixed: unambiguous
    return digest.digest()[:16]


def _partial_entry(offer: Offer, offset: int, peer: str, state: str) -> Listing:
    return {"name": offer.name, "size": offer.size, "bytes": offset, "peer": peer, "state": state}


def _state_name(name: str) -> str:
    """The state file of the part of ``name``: a hash, since a name may be 255 bytes."""
    return hashlib.sha256(name.encode()).hexdigest()[:32] + ".json"


def _open_part(part: Path) -> BinaryIO:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(part, flags, 0o600), "r+b")


def _close(handle: BinaryIO) -> None:
    # A part's last buffered bytes may not reach a full disk: they were never saved as
    # written, so the transfer only resends them.
    with contextlib.suppress(OSError):
        handle.close()


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _measure(path: Path) -> tuple[int, bytes]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while block := file.read(1 << 16):
            digest.update(block)
            size += len(block)
    return size, digest.digest()


def _reader(handle: BinaryIO) -> Callable[[int, int], bytes]:
    def read(offset: int, n: int) -> bytes:
        handle.seek(offset)
        return handle.read(n)

    return read


def _writer(handle: BinaryIO) -> Callable[[int, bytes], None]:
    def write(offset: int, data: bytes) -> None:
        handle.seek(offset)
        handle.write(data)

    return write


def _free_name(path: Path) -> Path:
    """``path``, or ``name (2).ext`` and so on when it exists: never overwrite a file."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem} ({number}){path.suffix}")
    return candidate

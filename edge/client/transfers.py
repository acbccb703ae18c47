"""The agent's file transfers on its peer sessions: the file cores, their disk and timer.

How it works: :class:`TransferDriver` owns the :class:`~edge.client.files.FileSender`
and :class:`~edge.client.files.FileReceiver` cores of the agent's transfers,
carries their FILE_* messages in the end-to-end session with the other
device (:class:`~edge.client.peers.Peers`, through the supernodes or on a
call's path), and does the disk work the cores leave to their owner:

* sending reads the file through an open handle, in chunks of
  :data:`CHUNK_SIZE` (a FILE_CHUNK in a TRANSPORT datagram stays under a
  1,280-byte path MTU);
* receiving writes ``<name>.part`` in the download folder (created 0600, never
  following a link), fsyncs it and renames it to ``<name>`` once the SHA-256
  matches (a number is added when that name is taken), or deletes it when it
  does not.

Offers are accepted at once from any certified user, up to
:data:`MAX_FILE` bytes: a desk phone has no one to ask, and the sender's
identity is proved by the session. The cores' timers share one loop timer.
"""

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from edge.client.files import (
    FileCorrupt,
    FileLimits,
    FileReceived,
    FileReceiver,
    FileSender,
    FileSent,
    Offer,
    TransferFailed,
    refusal,
)
from edge.client.peers import Peers
from edge.errors import EdgeError
from edge.wire.codes import MsgType
from edge.wire.messages import Message

CHUNK_SIZE = 1024
MAX_FILE = 64 << 20
MAX_TRANSFERS = 16
FILE_TYPES = frozenset({MsgType.FILE_OFFER, MsgType.FILE_CHUNK, MsgType.FILE_ACK})

Core = FileSender | FileReceiver


class TransferDriver:
    """The file transfers of one agent; see the module docstring."""

    def __init__(self, peers: Peers, downloads: Path) -> None:
        self.peers = peers
        self.downloads = downloads
        self.limits = FileLimits(max_size=MAX_FILE)
        self._cores: dict[bytes, tuple[int, Core]] = {}
        self._files: dict[bytes, BinaryIO] = {}
        self._done: dict[bytes, asyncio.Future[object]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.received: list[dict[str, Any]] = []
        """Files that arrived whole, newest last."""

    async def send(self, session: int, path: Path) -> object:
        """Send the file at ``path`` in ``session``; the sender's last event."""
        if len(self._cores) >= MAX_TRANSFERS:
            raise EdgeError(f"{MAX_TRANSFERS} transfers are running already")
        size, digest = await asyncio.to_thread(_measure, path)
        handle = path.open("rb")
        file_id = os.urandom(16)
        sender = FileSender(
            file_id, path.name, size, digest, CHUNK_SIZE, _reader(handle), limits=self.limits
        )
        self._cores[file_id] = (session, sender)
        self._files[file_id] = handle
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._done[file_id] = done
        sender.start(self._now())
        self._pump()
        return await done

    def on_message(self, session: int, message: Message) -> bool:
        """A FILE_* message of a peer session; False for any other message."""
        if message.type not in FILE_TYPES:
            return False
        file_id = bytes(message.body.file_id)
        entry = self._cores.get(file_id)
        try:
            if entry is None and message.type is MsgType.FILE_OFFER:
                self._offered(session, message)
            elif entry is not None and entry[0] == session:
                entry[1].receive(message.type, message.body, self._now())
        except EdgeError as exc:
            answer = refusal(message.body, exc)
            if answer is not None:
                self.peers.send(session, answer.msg_type, answer.body)
        self._pump()
        return True

    def _offered(self, session: int, message: Message) -> None:
        offer = Offer.from_body(message.body, self.limits)
        self.downloads.mkdir(mode=0o700, parents=True, exist_ok=True)
        part = self.downloads / f"{offer.name}.part"
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        handle = os.fdopen(os.open(part, flags, 0o600), "r+b")
        receiver = FileReceiver(offer, _writer(handle), limits=self.limits)
        self._cores[offer.file_id] = (session, receiver)
        self._files[offer.file_id] = handle
        receiver.accept(self._now())

    # -- output, events, time

    def _pump(self) -> None:
        for file_id, (session, core) in list(self._cores.items()):
            for send in core.messages_to_send():
                if self.peers.core.endpoint.is_established(session):
                    self.peers.send(session, send.msg_type, send.body)
            while (event := core.next_event()) is not None:
                self._event(file_id, core, event)
        self._arm()

    def _event(self, file_id: bytes, core: Core, event: object) -> None:
        if isinstance(event, FileReceived):
            self._finish_received(file_id, event)
        elif isinstance(event, FileCorrupt):
            self._close(file_id, remove=self.downloads / f"{event.name}.part")
        elif isinstance(event, FileSent | TransferFailed):
            self._close(file_id)
            done = self._done.pop(file_id, None)
            if done is not None and not done.done():
                done.set_result(event)

    def _finish_received(self, file_id: bytes, event: FileReceived) -> None:
        handle = self._files.get(file_id)
        if handle is not None:
            handle.flush()
            os.fsync(handle.fileno())
        self._close(file_id)
        final = _free_name(self.downloads / event.name)
        os.rename(self.downloads / f"{event.name}.part", final)
        self.received.append({"name": final.name, "size": event.size})

    def _close(self, file_id: bytes, *, remove: Path | None = None) -> None:
        self._cores.pop(file_id, None)
        handle = self._files.pop(file_id, None)
        if handle is not None:
            handle.close()
        if remove is not None:
            remove.unlink(missing_ok=True)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        timers = [t for _, core in self._cores.values() if (t := core.get_timer()) is not None]
        if timers:
            self._timer = asyncio.get_running_loop().call_at(min(timers), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._now()
        for _, core in list(self._cores.values()):
            at = core.get_timer()
            if at is not None and at <= now:
                core.handle_timer(now)
        self._pump()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()


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

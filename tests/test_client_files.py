"""File transfer between a sender and a receiver core wired back to back through
the lossy, duplicating, reordering in-memory channel of the messaging tests, on
a simulated clock: the file arrives exact or the transfer fails loudly, a break
resumes without resending acknowledged bytes, and bad offers and chunks are
refused."""

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.client.errors import FileMisuse, FileProtocolError, FileRefused
from edge.client.files import (
    Event,
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
from edge.wire.codes import MsgType
from edge.wire.messages import Message
from tests.test_client_messaging import Channel, earliest

FILE_ID = bytes(range(16))


class Disk:
    """The receiver's owner: ``<name>.part`` as a byte array."""

    def __init__(self) -> None:
        self.part = bytearray()
        self.written = 0

    def write(self, offset: int, data: bytes) -> None:
        assert offset <= len(self.part)  # in order: never a hole
        self.part[offset : offset + len(data)] = data
        self.written += len(data)

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.part[offset : offset + size])


class Transfer:
    """One sender and (once the offer arrives) one receiver, with a channel each way.

    ``saved`` is the receiver's state as its owner last saved it: before the
    FILE_ACKs of each step go out, as the module docstring advises.
    """

    def __init__(
        self,
        data: bytes,
        *,
        seed: int = 1,
        chunk_size: int = 1024,
        limits: FileLimits | None = None,
        disk: Disk | None = None,
        saved: TransferState | None = None,
        mangle: Callable[[Message], Message] | None = None,
        **impair: float,
    ) -> None:
        self.data = data
        self.limits = limits or FileLimits(window=8 * 1024)
        self.reads: list[tuple[int, int]] = []
        self.sender = FileSender(
            FILE_ID,
            "report.pdf",
            len(data),
            hashlib.sha256(data).digest(),
            chunk_size,
            self._read,
            limits=self.limits,
        )
        self.receiver: FileReceiver | None = None
        self.disk = disk or Disk()
        self.saved = saved
        self.mangle = mangle
        self.to_receiver = Channel(seed * 2, **impair)
        self.to_sender = Channel(seed * 2 + 1, **impair)
        self.events: list[Event] = []
        self.refused = 0
        self.now = 0.0

    def _read(self, offset: int, size: int) -> bytes:
        self.reads.append((offset, size))
        return self.data[offset : offset + size]

    def start(self) -> None:
        self.sender.start(self.now)

    def run(self, until: float) -> None:
        while True:
            self.pump()
            at = earliest(
                self.sender.get_timer(),
                self.receiver.get_timer() if self.receiver else None,
                self.to_receiver.next_time(),
                self.to_sender.next_time(),
            )
            if at is None or at > until:
                self.now = max(self.now, until)
                return
            self.now = max(self.now, at)
            self.step()

    def pump(self) -> None:
        for send in self.sender.messages_to_send():
            self.to_receiver.put(send.msg_type, send.body, self.now)
        self._drain(self.sender)
        if self.receiver is not None:
            self.saved = self.receiver.transfer_state()
            for send in self.receiver.messages_to_send():
                self.to_sender.put(send.msg_type, send.body, self.now)
            self._drain(self.receiver)

    def _drain(self, core: FileSender | FileReceiver) -> None:
        while (event := core.next_event()) is not None:
            self.events.append(event)

    def step(self) -> None:
        for message in self.to_receiver.take(self.now):
            self._at_receiver(self.mangle(message) if self.mangle else message)
        for message in self.to_sender.take(self.now):
            self.sender.receive(message.type, message.body, self.now)
        for core in (self.sender, self.receiver):
            timer = core.get_timer() if core else None
            if core is not None and timer is not None and timer <= self.now:
                core.handle_timer(self.now)

    def _at_receiver(self, message: Message) -> None:
        try:
            if self.receiver is None:
                offer = Offer.from_body(message.body, self.limits)
                self.receiver = FileReceiver(
                    offer, self.disk.write, self.saved, read_back=self.disk.read, limits=self.limits
                )
                self.receiver.accept(self.now)
            else:
                self.receiver.receive(message.type, message.body, self.now)
        except (FileProtocolError, FileRefused):
            self.refused += 1  # as an adapter would: count and go on

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def payload(size: int, seed: int = 5) -> bytes:
    return random.Random(seed).randbytes(size)


# -- whole transfers


def test_a_megabyte_crosses_a_lossy_reordering_channel_with_a_small_window() -> None:
    data = payload(1024 * 1024)
    transfer = Transfer(data, seed=3, loss=0.05, duplicate=0.05, jitter=0.004)
    transfer.start()
    transfer.run(600.0)
    assert transfer.of(FileReceived) == [FileReceived(FILE_ID, "report.pdf", len(data))]
    assert transfer.of(FileSent) == [FileSent(FILE_ID)]
    assert bytes(transfer.disk.part) == data
    assert transfer.sender.state is SenderState.DONE
    assert transfer.receiver is not None and transfer.receiver.state is ReceiverState.DONE
    counters = transfer.receiver.counters
    assert counters["out of order"] > 0 and counters["duplicate chunk"] > 0
    assert transfer.sender.counters["went back"] > 0
    assert transfer.sender.bytes_sent < 1.5 * len(data)  # what was lost, and little more
    assert transfer.to_receiver.lost > 0 and transfer.refused == 0


def test_the_sender_never_goes_beyond_the_credit_granted() -> None:
    data = payload(100_000)
    limits = FileLimits(window=5000)
    transfer = Transfer(data, chunk_size=1500, limits=limits)
    transfer.start()
    transfer.run(0.001)  # the offer is out, nothing answered yet
    assert transfer.reads == []
    transfer.run(0.006)  # the receiver accepted
    transfer.run(0.011)  # the ACK has come back: one window of chunks
    assert [n for _, n in transfer.reads] == [1500, 1500, 1500, 500]
    transfer.run(60.0)
    assert bytes(transfer.disk.part) == data and transfer.refused == 0


def test_a_break_resumes_without_resending_acknowledged_bytes(tmp_path: Path) -> None:
    data = payload(1024 * 1024, seed=9)
    first = Transfer(data, seed=4, loss=0.05, jitter=0.003)
    first.start()
    while first.receiver is None or first.receiver.offset < 400_000:
        first.run(first.now + 0.01)
    # The break: nothing gets through for a while, then both sides are thrown away.
    first.to_receiver.up = first.to_sender.up = False
    first.run(first.now + 20.0)
    acknowledged = first.sender.acked
    assert first.of(FileReceived) == [] and 400_000 <= acknowledged < len(data)
    assert first.saved is not None
    save_transfer(first.saved, tmp_path / "report.pdf.transfer")

    saved = load_transfer(tmp_path / "report.pdf.transfer")
    assert saved == first.saved and saved is not None and saved.offset >= acknowledged
    second = Transfer(data, seed=5, loss=0.05, jitter=0.003, disk=first.disk, saved=saved)
    second.now = first.now
    second.start()
    second.run(second.now + 600.0)

    assert second.of(TransferStarted) == [TransferStarted(FILE_ID, saved.offset)]
    assert second.of(FileReceived) == [FileReceived(FILE_ID, "report.pdf", len(data))]
    assert bytes(second.disk.part) == data
    resent = sum(max(0, min(o + n, acknowledged) - o) for o, n in second.reads)
    assert resent == 0
    assert min(offset for offset, _ in second.reads) == saved.offset


def test_a_flipped_byte_is_reported_corrupt_and_the_sender_told() -> None:
    data = payload(50_000)
    flipped: list[bool] = []

    def flip_once(message: Message) -> Message:
        if message.type is MsgType.FILE_CHUNK and message.body.offset == 20_480 and not flipped:
            flipped.append(True)
            raw = bytearray(message.body.data)
            raw[7] ^= 0x01
            message.body.data = bytes(raw)
        return message

    transfer = Transfer(data, mangle=flip_once)
    transfer.start()
    transfer.run(60.0)
    [corrupt] = transfer.of(FileCorrupt)
    assert corrupt.expected == hashlib.sha256(data).digest()
    assert corrupt.actual == hashlib.sha256(transfer.disk.part).digest() != corrupt.expected
    assert transfer.of(FileReceived) == []
    [failed] = transfer.of(TransferFailed)
    assert "SHA-256 does not match" in failed.reason
    assert transfer.sender.state is SenderState.FAILED
    assert transfer.receiver is not None and transfer.receiver.state is ReceiverState.CORRUPT


def test_an_empty_file_is_received_at_once() -> None:
    transfer = Transfer(b"")
    transfer.start()
    transfer.run(1.0)
    assert transfer.of(FileReceived) == [FileReceived(FILE_ID, "report.pdf", 0)]
    assert transfer.of(FileSent) == [FileSent(FILE_ID)]
    assert transfer.reads == []


def test_with_nothing_getting_through_the_sender_gives_up_and_the_receiver_stalls() -> None:
    data = payload(40_000)
    transfer = Transfer(data, limits=FileLimits(window=4096, give_up_after=30.0))
    transfer.start()
    transfer.run(0.1)
    transfer.to_receiver.up = transfer.to_sender.up = False
    transfer.run(100.0)
    [failed] = transfer.of(TransferFailed)
    assert "no progress for 30 s" in failed.reason
    [stalled] = transfer.of(TransferStalled)
    assert stalled.offset == transfer.disk.written > 0
    assert transfer.sender.get_timer() is None
    assert transfer.receiver is not None and transfer.receiver.get_timer() is None


def test_an_unanswered_offer_is_repeated_then_given_up() -> None:
    sender = FileSender(FILE_ID, "a.txt", 10, bytes(32), 4, lambda o, n: bytes(n))
    sender.start(0.0)
    offers = len(sender.messages_to_send())
    now = 0.0
    while (timer := sender.get_timer()) is not None:
        now = timer
        sender.handle_timer(now)
        offers += len(sender.messages_to_send())
    assert offers > 5 and now >= FileLimits().give_up_after
    assert isinstance(sender.next_event(), TransferFailed)


# -- resuming


def test_a_resume_rehashes_the_part_and_a_short_part_starts_again() -> None:
    data = payload(30_000)
    offer = Offer(FILE_ID, "report.pdf", len(data), hashlib.sha256(data).digest(), 1000)
    disk = Disk()
    disk.part[:] = data[:12_000]
    receiver = FileReceiver(offer, disk.write, TransferState(offer, 12_000), read_back=disk.read)
    assert receiver.offset == 12_000
    receiver.accept(0.0)
    [ack] = receiver.messages_to_send()
    assert ack.body["offset"] == 12_000

    short = Disk()
    short.part[:] = data[:5_000]  # the state claims more than the disk holds
    restarted = FileReceiver(offer, short.write, TransferState(offer, 12_000), read_back=short.read)
    assert restarted.offset == 0 and restarted.counters["part unreadable"] == 1

    with pytest.raises(FileMisuse, match="read_back"):
        FileReceiver(offer, disk.write, TransferState(offer, 12_000))


def test_a_resumed_transfer_whose_part_went_bad_ends_corrupt_not_received() -> None:
    data = payload(30_000)
    disk = Disk()
    disk.part[:] = data[:12_000]
    disk.part[100] ^= 0xFF  # damaged on disk after the state was saved
    offer = Offer(FILE_ID, "report.pdf", len(data), hashlib.sha256(data).digest(), 1024)
    transfer = Transfer(data, disk=disk, saved=TransferState(offer, 12_000))
    transfer.start()
    transfer.run(60.0)
    assert transfer.of(FileReceived) == [] and len(transfer.of(FileCorrupt)) == 1


def test_an_offer_that_differs_from_the_saved_one_is_refused() -> None:
    offer = Offer(FILE_ID, "report.pdf", 100, bytes(32), 10)
    other = Offer(FILE_ID, "report.pdf", 100, b"\x01" * 32, 10)
    with pytest.raises(FileRefused, match="differs from the saved"):
        FileReceiver(other, Disk().write, TransferState(offer, 50), read_back=Disk().read)
    receiver = FileReceiver(offer, Disk().write)
    receiver.accept(0.0)
    with pytest.raises(FileRefused, match="differs from the one accepted"):
        receiver.receive(MsgType.FILE_OFFER, other.body(), 0.0)
    receiver.receive(MsgType.FILE_OFFER, offer.body(), 0.0)  # the same again: ACK again
    assert [s.msg_type for s in receiver.messages_to_send()] == [MsgType.FILE_ACK] * 2


# -- refusals


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"name": "a/b.txt"}, "directory"),
        ({"name": "../etc/passwd"}, "directory"),
        ({"name": ".."}, "directory"),
        ({"name": "a\\b"}, "directory"),
        ({"name": "."}, "hidden"),
        ({"name": ".bashrc"}, "hidden"),
        ({"name": "bell\x07"}, "control"),
        ({"name": ""}, "empty"),
        ({"name": "é" * 128}, "at most 255"),
        ({"size": (1 << 30) + 1}, "over the cap"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"sha256": b"short"}, "sha256"),
        ({"file_id": b"short"}, "file_id"),
        ({"size": None}, "size"),
    ],
)
def test_a_bad_offer_is_refused_and_the_sender_told(change: dict[str, Any], problem: str) -> None:
    body = {**Offer(FILE_ID, "ok.txt", 100, bytes(32), 10).body(), **change}
    with pytest.raises(FileRefused, match=problem) as caught:
        Offer.from_body(body)
    answer = refusal(body, caught.value)
    if change.keys() == {"file_id"}:
        assert answer is None  # no id to name
        return
    assert answer is not None and answer.msg_type is MsgType.ERROR
    assert error_file_id(answer.body) == FILE_ID
    sender = FileSender(FILE_ID, "ok.txt", 100, bytes(32), 10, lambda o, n: bytes(n))
    sender.start(0.0)
    sender.receive(MsgType.ERROR, answer.body, 0.0)
    event = sender.next_event()
    assert isinstance(event, TransferFailed) and problem.split()[0] in event.reason
    assert sender.state is SenderState.FAILED and sender.get_timer() is None


def test_a_smaller_cap_refuses_sizes_the_default_would_take() -> None:
    body = Offer(FILE_ID, "big.iso", 5000, bytes(32), 10).body()
    with pytest.raises(FileRefused, match="over the cap of 4096"):
        Offer.from_body(body, FileLimits(max_size=4096))


def test_the_sender_checks_its_own_arguments() -> None:
    with pytest.raises(FileMisuse, match="directory"):
        FileSender(FILE_ID, "a/b", 1, bytes(32), 1, lambda o, n: b"")
    sender = FileSender(FILE_ID, "a", 10, bytes(32), 4, lambda o, n: b"")
    sender.start(0.0)
    ack = {"file_id": FILE_ID, "offset": 0, "window": 100}
    with pytest.raises(FileMisuse, match="did not return 4 bytes"):
        sender.receive(MsgType.FILE_ACK, ack, 0.0)
    with pytest.raises(FileMisuse, match="does not take"):
        sender.receive(MsgType.FILE_CHUNK, {}, 0.0)
    with pytest.raises(FileMisuse, match="finite"):
        sender.handle_timer(float("nan"))


def _accepted(size: int = 10_000, window: int = 4000) -> FileReceiver:
    offer = Offer(FILE_ID, "x.bin", size, bytes(32), 1000)
    receiver = FileReceiver(offer, Disk().write, limits=FileLimits(window=window))
    receiver.accept(0.0)
    receiver.messages_to_send()
    return receiver


def chunk(offset: int, size: int = 1000, file_id: bytes = FILE_ID) -> dict[str, Any]:
    return {"file_id": file_id, "offset": offset, "data": bytes(size)}


@pytest.mark.parametrize(
    ("body", "reason", "problem"),
    [
        (chunk(3500), "outside the window", "credit to 4000"),
        (chunk(9500), "beyond the size", "of a 10000"),
        (chunk(0, 1001), "malformed", "chunk size 1000"),
        (chunk(0, 0), "malformed", "0 bytes"),
        (chunk(0, file_id=b"\x00" * 16), "other file", "another file"),
        ({"file_id": FILE_ID}, "malformed", "not a chunk"),
    ],
)
def test_a_chunk_that_breaks_the_rules_is_refused_and_counted(
    body: dict[str, Any], reason: str, problem: str
) -> None:
    receiver = _accepted()
    with pytest.raises(FileProtocolError, match=problem):
        receiver.receive(MsgType.FILE_CHUNK, body, 0.0)
    assert receiver.counters[reason] == 1 and receiver.offset == 0
    receiver.receive(MsgType.FILE_CHUNK, chunk(0), 0.0)  # and the transfer goes on
    assert receiver.offset == 1000


def test_chunks_ahead_wait_for_the_gap_and_repeats_are_answered() -> None:
    receiver = _accepted()
    receiver.receive(MsgType.FILE_CHUNK, chunk(2000), 0.0)
    receiver.receive(MsgType.FILE_CHUNK, chunk(2000), 0.0)
    assert receiver.offset == 0 and receiver.counters["out of order"] == 2
    assert receiver.counters["not kept"] == 1  # the repeat
    assert receiver.messages_to_send() == []
    receiver.receive(MsgType.FILE_CHUNK, chunk(0), 0.0)
    receiver.receive(MsgType.FILE_CHUNK, chunk(0), 0.0)
    acks = [s.body for s in receiver.messages_to_send()]
    assert [(a["offset"], a["window"]) for a in acks] == [(1000, 4000), (1000, 4000)]
    # A chunk overlapping what is written adds its new tail, then what was kept.
    receiver.receive(MsgType.FILE_CHUNK, {**chunk(500), "data": bytes(1000)}, 0.0)
    assert receiver.offset == 1500
    receiver.receive(MsgType.FILE_CHUNK, chunk(1500, 500), 0.0)
    assert receiver.offset == 3000


def test_what_is_kept_ahead_is_capped_by_the_window() -> None:
    receiver = _accepted(window=3000)
    for offset in (1000, 1500, 2000):  # overlapping: 3000 bytes for 2000 of the file
        receiver.receive(MsgType.FILE_CHUNK, chunk(offset), 0.0)
    assert receiver.counters["not kept"] == 0
    receiver.receive(MsgType.FILE_CHUNK, chunk(1200), 0.0)
    assert receiver.counters["not kept"] == 1  # past the 3000 bytes granted
    receiver.receive(MsgType.FILE_CHUNK, chunk(0), 0.0)
    assert receiver.offset == 3000


def test_a_failed_write_loses_nothing() -> None:
    disk, failures = Disk(), [OSError("disk full")]

    def write(offset: int, data: bytes) -> None:
        if failures:
            raise failures.pop()
        disk.write(offset, data)

    offer = Offer(FILE_ID, "x.bin", 2000, hashlib.sha256(bytes(2000)).digest(), 1000)
    receiver = FileReceiver(offer, write)
    receiver.accept(0.0)
    with pytest.raises(OSError, match="disk full"):
        receiver.receive(MsgType.FILE_CHUNK, chunk(0), 0.0)
    assert receiver.offset == 0
    for offset in (0, 1000):
        receiver.receive(MsgType.FILE_CHUNK, chunk(offset), 0.0)
    assert receiver.next_event() == FileReceived(FILE_ID, "x.bin", 2000)
    assert bytes(disk.part) == bytes(2000)


def test_an_ack_beyond_the_size_or_for_another_file_is_refused() -> None:
    sender = FileSender(FILE_ID, "a", 10, bytes(32), 4, lambda o, n: bytes(n))
    sender.start(0.0)
    with pytest.raises(FileProtocolError, match="beyond 10 bytes"):
        sender.receive(MsgType.FILE_ACK, {"file_id": FILE_ID, "offset": 11, "window": 1}, 0.0)
    with pytest.raises(FileProtocolError, match="another file"):
        sender.receive(MsgType.FILE_ACK, {"file_id": bytes(16), "offset": 0, "window": 1}, 0.0)
    sender.receive(MsgType.FILE_ACK, {"file_id": FILE_ID, "offset": 4, "window": 4}, 0.0)
    sender.receive(MsgType.FILE_ACK, {"file_id": FILE_ID, "offset": 0, "window": 4}, 0.0)
    assert sender.acked == 4 and sender.counters["stale ack"] == 1
    assert sender.counters["beyond the size"] == 1 and sender.counters["other file"] == 1


# -- the state file


def test_the_state_file_round_trips(tmp_path: Path) -> None:
    offer = Offer(FILE_ID, "report.pdf", 1000, bytes(range(32)), 100)
    path = tmp_path / "report.pdf.transfer"
    assert load_transfer(path) is None
    save_transfer(TransferState(offer, 300), path)
    assert load_transfer(path) == TransferState(offer, 300)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"offset": 1001}, "offset"),
        ({"offset": -1}, "offset"),
        ({"file_id": "zz"}, "file_id"),
        ({"sha256": "AB" * 32}, "sha256"),
        ({"name": "../x"}, "directory"),
        ({"format": "edge message history"}, "not a file transfer state"),
    ],
)
def test_a_damaged_state_file_is_refused(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "report.pdf.transfer"
    save_transfer(TransferState(Offer(FILE_ID, "report.pdf", 1000, bytes(32), 100), 300), path)
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(TransferFileError, match=problem):
        load_transfer(path)


# -- properties


@settings(max_examples=30)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 20_000),
    chunk_size=st.integers(256, 4096),
    window=st.integers(256, 20_000),
    loss=st.floats(0.0, 0.5),
    duplicate=st.floats(0.0, 0.3),
    jitter=st.floats(0.0, 0.05),
    flip=st.one_of(st.none(), st.integers(0, 20_000)),
)
def test_any_loss_or_reordering_ends_in_the_exact_file_or_a_clear_failure(
    seed: int,
    size: int,
    chunk_size: int,
    window: int,
    loss: float,
    duplicate: float,
    jitter: float,
    flip: int | None,
) -> None:
    data = payload(size, seed)

    def flip_byte(message: Message) -> Message:
        body = message.body
        if message.type is not MsgType.FILE_CHUNK or flip is None:
            return message
        if body.offset <= flip < body.offset + len(body.data):
            raw = bytearray(body.data)
            raw[flip - body.offset] ^= 0x80
            body.data = bytes(raw)
        return message

    limits = FileLimits(window=window, give_up_after=120.0)
    transfer = Transfer(
        data,
        seed=seed,
        chunk_size=chunk_size,
        limits=limits,
        mangle=flip_byte,
        loss=loss,
        duplicate=duplicate,
        jitter=jitter,
    )
    transfer.start()
    transfer.run(2000.0)
    received, corrupt = transfer.of(FileReceived), transfer.of(FileCorrupt)
    assert len(received) + len(corrupt) <= 1
    if received:
        assert bytes(transfer.disk.part) == data
    if corrupt:
        assert flip is not None and flip < size and bytes(transfer.disk.part) != data
    if not received and not corrupt:
        assert transfer.of(TransferFailed) or transfer.of(TransferStalled)

"""Instant messages between two messaging cores wired back to back through an
in-memory channel that loses, duplicates and reorders (seeded, on a simulated
clock): each message is delivered once and in order, receipts come back, the
undeliverable go to the mailbox, and the history file is never half-trusted."""

import heapq
import itertools
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.client.errors import MessageRefused, MessagingMisuse, OutboxFull
from edge.client.messaging import (
    MAX_FILE_BYTES,
    TEXT_MAX,
    Entry,
    Event,
    GapSkipped,
    History,
    HistoryFileError,
    Limits,
    MessageDelivered,
    Messenger,
    OfflineDelivery,
    ReceiptReceived,
    Status,
    load_history,
    load_history_or_empty,
    save_history,
)
from edge.wire.codes import MsgType
from edge.wire.messages import Message, ReceiptStatus, decode, encode

# -- the channel and the pair


class Channel:
    """One direction of a path: each message is encoded, maybe lost, maybe
    duplicated, and delivered after ``delay`` plus up to ``jitter`` seconds
    (jitter larger than the gap between messages reorders them)."""

    def __init__(
        self,
        seed: int,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay: float = 0.005,
        jitter: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.loss, self.duplicate, self.delay, self.jitter = loss, duplicate, delay, jitter
        self.up = True
        """While False, everything put in is lost (a break)."""
        self.lost = 0
        self._order = itertools.count()
        self._queue: list[tuple[float, int, bytes]] = []

    def put(self, msg_type: MsgType, body: Any, now: float) -> None:
        data = encode(msg_type, body)
        if not self.up or self.rng.random() < self.loss:
            self.lost += 1
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            at = now + self.delay + self.rng.random() * self.jitter
            heapq.heappush(self._queue, (at, next(self._order), data))

    def next_time(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def take(self, now: float) -> list[Message]:
        due: list[Message] = []
        while self._queue and self._queue[0][0] <= now:
            due.append(decode(heapq.heappop(self._queue)[2]))
        return due

    def clear(self) -> None:
        self._queue.clear()


def earliest(*times: float | None) -> float | None:
    return min((t for t in times if t is not None), default=None)


USERS = {"alice": "phone", "bob": "door"}


class Pair:
    """Alice's and Bob's messengers, each with a channel towards the other."""

    def __init__(self, seed: int = 1, limits: Limits | None = None, **impair: float) -> None:
        self.now = 0.0
        self.limits = limits or Limits()
        self.cores = {user: self.messenger(user, seed) for user in USERS}
        self.channels = {
            "alice": Channel(seed * 2, **impair),  # towards alice
            "bob": Channel(seed * 2 + 1, **impair),
        }
        self.events: dict[str, list[Event]] = {user: [] for user in USERS}
        self.refused: Counter[str] = Counter()

    def messenger(self, user: str, seed: int, history: History | None = None) -> Messenger:
        rng = random.Random(f"{user}{seed}")
        return Messenger(user, history=history, limits=self.limits, random_bytes=rng.randbytes)

    def connect(self) -> None:
        self.cores["alice"].path_up("bob", self.now)
        self.cores["bob"].path_up("alice", self.now)

    def pump(self) -> None:
        for user, core in self.cores.items():
            for send in core.messages_to_send():
                assert send.to_device in ("", USERS[send.to_user])
                self.channels[send.to_user].put(send.msg_type, send.body, self.now)
            while (event := core.next_event()) is not None:
                self.events[user].append(event)

    def run(self, until: float) -> None:
        while True:
            self.pump()
            at = earliest(
                *(core.get_timer() for core in self.cores.values()),
                *(channel.next_time() for channel in self.channels.values()),
            )
            if at is None or at > until:
                self.now = max(self.now, until)
                return
            self.now = max(self.now, at)
            self.step()

    def step(self) -> None:
        for user, core in self.cores.items():
            other = "bob" if user == "alice" else "alice"
            for message in self.channels[user].take(self.now):
                try:
                    core.receive(
                        message.type,
                        message.body,
                        self.now,
                        from_user=other,
                        from_device=USERS[other],
                    )
                except MessageRefused:
                    self.refused[user] += 1  # as an adapter would: count and go on
            timer = core.get_timer()
            if timer is not None and timer <= self.now:
                core.handle_timer(self.now)

    def delivered(self, user: str) -> list[MessageDelivered]:
        return [e for e in self.events[user] if isinstance(e, MessageDelivered)]

    def of(self, user: str, kind: type[Any]) -> list[Any]:
        return [e for e in self.events[user] if isinstance(e, kind)]


def body(
    sequence: int,
    text: str = "hi",
    *,
    message_id: bytes | None = None,
    sender: str = "alice",
    recipient: str = "bob",
) -> dict[str, Any]:
    return {
        "message_id": message_id or bytes([sequence % 256]) * 15 + b"\x01",
        "sender": sender,
        "recipient": recipient,
        "sequence": sequence,
        "sent_ms": 1_700_000_000_000 + sequence,
        "text": text,
    }


def feed(core: Messenger, sequence: int, now: float = 0.0, **kwargs: Any) -> None:
    core.receive(MsgType.INSTANT_MESSAGE, body(sequence, **kwargs), now, from_user="alice")


def drain(core: Messenger) -> list[Event]:
    events: list[Event] = []
    while (event := core.next_event()) is not None:
        events.append(event)
    return events


def delivered_sequences(events: list[Event]) -> list[int]:
    return [e.sequence for e in events if isinstance(e, MessageDelivered)]


# -- end to end through a bad channel


def test_a_lossy_duplicating_reordering_channel_delivers_each_message_once_in_order() -> None:
    limits = Limits(hold_timeout=30.0, deliver_within=300.0, max_held=128)
    pair = Pair(seed=7, limits=limits, loss=0.2, duplicate=0.15, jitter=0.05)
    pair.connect()
    sent: dict[str, list[str]] = {"alice": [], "bob": []}
    for i in range(150):
        user = "alice" if i % 3 else "bob"
        text = f"message {i} from {user}"
        sent[user].append(text)
        pair.cores[user].send(text, "bob" if user == "alice" else "alice", pair.now)
        pair.run(pair.now + 0.01)
    pair.run(pair.now + 400)

    assert [e.text for e in pair.delivered("bob")] == sent["alice"]
    assert [e.text for e in pair.delivered("alice")] == sent["bob"]
    for user, core in pair.cores.items():
        assert core.outbox_size == 0
        assert not pair.of(user, GapSkipped) and not pair.of(user, OfflineDelivery)
        assert core.counters["duplicate"] > 0  # the channel did duplicate; none got through
        receipts = pair.of(user, ReceiptReceived)
        assert len(receipts) == len(sent[user])
        assert {r.status for r in receipts} == {ReceiptStatus.DELIVERED}
    assert pair.channels["bob"].lost > 0
    assert not pair.refused


def test_sequences_count_per_conversation_and_receipts_name_the_message() -> None:
    pair = Pair()
    pair.connect()
    first = pair.cores["alice"].send("one", "bob", 0.0)
    pair.cores["alice"].send("two", "bob", 0.0)
    pair.cores["alice"].send("to carol", "carol", 0.0)
    pair.run(1.0)
    got = pair.delivered("bob")
    assert [(e.sequence, e.text, e.peer, e.device) for e in got] == [
        (1, "one", "alice", "phone"),
        (2, "two", "alice", "phone"),
    ]
    assert got[0].message_id == first and len(first) == 16
    assert got[0].sent_ms == 0
    assert pair.of("alice", ReceiptReceived)[0] == ReceiptReceived(
        "bob", first, ReceiptStatus.DELIVERED
    )
    history = pair.cores["alice"].history
    assert [e.sequence for e in history.recent()] == [1, 2, 1]
    assert history.get(first) is not None and history.get(first).status is Status.DELIVERED  # type: ignore[union-attr]


def test_read_receipts_move_forward_only() -> None:
    pair = Pair()
    pair.connect()
    message_id = pair.cores["alice"].send("read me", "bob", 0.0)
    pair.run(1.0)
    bob = pair.cores["bob"]
    assert bob.mark_read(message_id, pair.now)
    assert not bob.mark_read(message_id, pair.now)  # once is enough
    assert not bob.mark_read(b"\x00" * 16, pair.now)
    pair.run(2.0)
    statuses = [r.status for r in pair.of("alice", ReceiptReceived)]
    assert statuses == [ReceiptStatus.DELIVERED, ReceiptStatus.READ]
    # A DELIVERED that comes late changes nothing.
    receipt = {"message_id": message_id, "status": ReceiptStatus.DELIVERED}
    alice = pair.cores["alice"]
    alice.receive(MsgType.MESSAGE_RECEIPT, receipt, pair.now, from_user="bob")
    assert drain(alice) == [] and alice.counters["stale receipt"] == 1
    assert alice.history.get(message_id).status is Status.READ  # type: ignore[union-attr]
    with pytest.raises(MessagingMisuse, match="one we sent"):
        alice.mark_read(message_id, pair.now)


# -- receiving: duplicates, order, gaps


def test_a_duplicate_is_not_delivered_again_but_its_receipt_is_sent_again() -> None:
    bob = Messenger("bob")
    feed(bob, 1)
    feed(bob, 1)
    assert delivered_sequences(drain(bob)) == [1]
    receipts = bob.messages_to_send()
    assert len(receipts) == 2
    assert all(r.msg_type is MsgType.MESSAGE_RECEIPT and r.to_user == "alice" for r in receipts)
    assert bob.counters["duplicate"] == 1


def test_out_of_order_messages_wait_for_the_gap_to_fill() -> None:
    bob = Messenger("bob")
    for sequence in (1, 3, 4, 3):
        feed(bob, sequence)
    assert delivered_sequences(drain(bob)) == [1]
    assert bob.counters["duplicate"] == 1  # the held 3, again
    assert bob.get_timer() == Limits().hold_timeout
    feed(bob, 2, now=1.0)
    assert delivered_sequences(drain(bob)) == [2, 3, 4]
    assert bob.get_timer() is None


def test_a_gap_is_accepted_after_the_hold_and_a_late_message_still_comes_once() -> None:
    bob = Messenger("bob")
    feed(bob, 1)
    feed(bob, 4, now=0.5)
    feed(bob, 5, now=1.0)
    drain(bob)
    bob.handle_timer(3.4)  # too early: the oldest held came at 0.5
    assert drain(bob) == []
    bob.handle_timer(3.5)
    events = drain(bob)
    assert events[0] == GapSkipped("alice", 2, 3, "")
    assert delivered_sequences(events) == [4, 5]
    feed(bob, 3, now=4.0)  # from the mailbox, say
    feed(bob, 3, now=4.0)
    late = drain(bob)
    assert len(late) == 1 and isinstance(late[0], MessageDelivered) and late[0].late
    feed(bob, 6, now=5.0)
    assert delivered_sequences(drain(bob)) == [6]


def test_too_many_held_messages_accept_the_gap_at_once() -> None:
    bob = Messenger("bob", limits=Limits(max_held=2))
    feed(bob, 1)
    feed(bob, 3)
    feed(bob, 4)
    drain(bob)
    feed(bob, 6)  # no room to hold a third
    events = drain(bob)
    assert events[0] == GapSkipped("alice", 2, 2, "")
    assert delivered_sequences(events) == [3, 4]
    bob.handle_timer(10.0)
    events = drain(bob)
    assert events[0] == GapSkipped("alice", 5, 5, "")
    assert delivered_sequences(events) == [6]


def test_an_unknown_conversation_starts_where_the_sender_is() -> None:
    bob = Messenger("bob")
    feed(bob, 42)
    feed(bob, 41)
    assert drain(bob) == []
    bob.handle_timer(10.0)
    events = drain(bob)
    assert delivered_sequences(events) == [41, 42]
    assert not [e for e in events if isinstance(e, GapSkipped)]  # we never knew a start


def test_sequence_one_with_a_new_id_means_the_sender_started_over() -> None:
    bob = Messenger("bob")
    for sequence in (1, 2, 3):
        feed(bob, sequence)
    feed(bob, 1, message_id=b"\xaa" * 16, text="fresh start")
    feed(bob, 2, message_id=b"\xbb" * 16)
    assert delivered_sequences(drain(bob)) == [1, 2, 3, 1, 2]
    assert bob.counters["sender started over"] == 1


def test_each_sending_device_has_its_own_order() -> None:
    bob = Messenger("bob")
    bob.receive(MsgType.INSTANT_MESSAGE, body(1), 0.0, from_user="alice", from_device="phone")
    other = body(1, message_id=b"\x07" * 16)
    bob.receive(MsgType.INSTANT_MESSAGE, other, 0.0, from_user="alice", from_device="desk")
    events = drain(bob)
    assert [(e.device, e.sequence) for e in events if isinstance(e, MessageDelivered)] == [
        ("phone", 1),
        ("desk", 1),
    ]
    assert [r.to_device for r in bob.messages_to_send()] == ["phone", "desk"]


def test_the_oldest_conversation_is_dropped_after_delivering_what_it_held() -> None:
    bob = Messenger("bob", limits=Limits(max_conversations=1))
    feed(bob, 5)
    carol = body(1, sender="carol", message_id=b"\x0c" * 16)
    bob.receive(MsgType.INSTANT_MESSAGE, carol, 0.0, from_user="carol")
    assert [(e.peer, e.sequence) for e in drain(bob) if isinstance(e, MessageDelivered)] == [
        ("alice", 5),
        ("carol", 1),
    ]


# -- sending: retries, paths, the mailbox


def test_retries_back_off_while_a_path_exists_and_stop_without_one() -> None:
    alice = Messenger("alice", limits=Limits(retransmit_first=1.0, retransmit_max=4.0))
    alice.send("anyone there?", "bob", 0.0)
    assert alice.messages_to_send() == []  # no path yet
    assert alice.get_timer() == Limits().deliver_within
    alice.path_up("bob", 1.0)
    times = [1.0]
    assert len(alice.messages_to_send()) == 1
    while (timer := alice.get_timer()) is not None and timer < 20.0:
        alice.handle_timer(timer)
        assert len(alice.messages_to_send()) == 1
        times.append(timer)
    assert times == [1.0, 2.0, 4.0, 8.0, 12.0, 16.0]
    alice.path_down("bob")
    assert alice.get_timer() == 30.0
    few = Messenger("alice", limits=Limits(max_conversations=1))
    few.path_up("bob", 0.0)
    few.path_up("bob", 0.0)
    with pytest.raises(MessagingMisuse, match="paths"):
        few.path_up("carol", 0.0)


def test_no_receipt_in_time_hands_the_message_to_the_mailbox() -> None:
    pair = Pair()
    alice, bob = pair.cores["alice"], pair.cores["bob"]
    message_id = alice.send("are you there?", "bob", 0.0)
    pair.run(31.0)  # no path ever
    [offline] = pair.of("alice", OfflineDelivery)
    assert offline.message.message_id == message_id
    assert offline.message.status is Status.OFFLINE
    assert alice.history.get(message_id).status is Status.OFFLINE  # type: ignore[union-attr]
    assert alice.outbox_size == 0 and alice.get_timer() is None
    mailbox_item = decode(offline.content)
    assert mailbox_item.type is MsgType.INSTANT_MESSAGE
    assert mailbox_item.body.text == "are you there?"

    bob.receive_offline(offline.content, pair.now, from_user="alice", from_device="phone")
    bob.receive_offline(offline.content, pair.now, from_user="alice", from_device="phone")
    pair.pump()
    assert [e.text for e in pair.delivered("bob")] == ["are you there?"]
    # The mailbox's receipt, or one over a path later, still counts.
    receipt = {"message_id": message_id, "status": ReceiptStatus.DELIVERED}
    alice.receive(MsgType.MESSAGE_RECEIPT, receipt, pair.now, from_user="bob")
    assert drain(alice) == [ReceiptReceived("bob", message_id, ReceiptStatus.DELIVERED)]
    assert alice.history.get(message_id).status is Status.DELIVERED  # type: ignore[union-attr]


def test_a_path_that_comes_up_in_time_delivers_directly() -> None:
    pair = Pair()
    pair.cores["alice"].send("later", "bob", 0.0)
    pair.run(10.0)
    pair.connect()
    pair.run(40.0)
    assert [e.text for e in pair.delivered("bob")] == ["later"]
    assert not pair.of("alice", OfflineDelivery)


def test_the_outbox_is_capped_and_the_send_queue_drops_its_oldest() -> None:
    alice = Messenger("alice", limits=Limits(max_outbox=2, max_queued_sends=2))
    alice.path_up("bob", 0.0)
    alice.send("1", "bob", 0.0)
    alice.send("2", "bob", 0.0)
    with pytest.raises(OutboxFull):
        alice.send("3", "bob", 0.0)
    alice.handle_timer(1.0)
    assert [s.body["text"] for s in alice.messages_to_send()] == ["1", "2"]
    assert alice.counters["send queue overflow"] == 2


# -- wrong input


@pytest.mark.parametrize(
    ("text", "to_user", "now", "problem"),
    [
        ("", "bob", 0.0, "needs some text"),
        ("x" * (TEXT_MAX + 1), "bob", 0.0, "at most 4096"),
        ("\ud800", "bob", 0.0, "not valid Unicode"),
        ("hi", "", 0.0, "not a user id"),
        ("hi", "b" * 65, 0.0, "not a user id"),
        ("hi", "bob", float("nan"), "finite number"),
    ],
)
def test_misuse_is_a_local_error(text: str, to_user: str, now: float, problem: str) -> None:
    alice = Messenger("alice")
    with pytest.raises(MessagingMisuse, match=problem):
        alice.send(text, to_user, now)
    assert alice.outbox_size == 0 and len(alice.history) == 0


def test_the_messenger_takes_only_its_own_message_types() -> None:
    with pytest.raises(MessagingMisuse, match="does not take"):
        Messenger("bob").receive(MsgType.FILE_ACK, {}, 0.0, from_user="alice")
    with pytest.raises(MessagingMisuse, match="at least 1"):
        Limits(max_held=0)
    with pytest.raises(MessagingMisuse, match="positive"):
        Limits(hold_timeout=float("inf"))


@pytest.mark.parametrize(
    ("change", "reason", "problem"),
    [
        ({"sender": "mallory"}, "sender mismatch", "sender 'mallory'"),
        ({"recipient": "carol"}, "not for us", "for 'carol'"),
    ],
)
def test_a_message_that_lies_about_who_it_is_from_or_for_is_refused(
    change: dict[str, str], reason: str, problem: str
) -> None:
    bob = Messenger("bob")
    with pytest.raises(MessageRefused, match=problem):
        bob.receive(MsgType.INSTANT_MESSAGE, {**body(1), **change}, 0.0, from_user="alice")
    assert bob.counters[reason] == 1 and drain(bob) == [] and len(bob.history) == 0
    if reason == "not for us":
        [rejected] = bob.messages_to_send()
        assert rejected.body["status"] is ReceiptStatus.REJECTED


@pytest.mark.parametrize(
    "broken",
    [
        {},
        {**body(1), "sequence": 0},
        {**body(1), "sequence": -1},
        {**body(1), "message_id": b"short"},
        {**body(1), "text": 7},
        {**body(1), "sent_ms": 1 << 64},
    ],
)
def test_a_malformed_message_is_refused(broken: dict[str, Any]) -> None:
    bob = Messenger("bob")
    with pytest.raises(MessageRefused, match="INSTANT_MESSAGE"):
        bob.receive(MsgType.INSTANT_MESSAGE, broken, 0.0, from_user="alice")
    assert drain(bob) == [] and bob.messages_to_send() == []


def test_receipts_from_strangers_or_for_unknown_messages_change_nothing() -> None:
    alice = Messenger("alice")
    message_id = alice.send("hi", "bob", 0.0)
    receipt = {"message_id": message_id, "status": ReceiptStatus.DELIVERED}
    with pytest.raises(MessageRefused, match="from 'mallory'"):
        alice.receive(MsgType.MESSAGE_RECEIPT, receipt, 0.0, from_user="mallory")
    unknown = {"message_id": b"\x01" * 16, "status": ReceiptStatus.READ}
    alice.receive(MsgType.MESSAGE_RECEIPT, unknown, 0.0, from_user="bob")
    with pytest.raises(MessageRefused, match="not a receipt"):
        alice.receive(
            MsgType.MESSAGE_RECEIPT, {"message_id": message_id, "status": 9}, 0.0, from_user="bob"
        )
    assert alice.counters["unknown receipt"] == 1 and alice.outbox_size == 1
    assert drain(alice) == []


def test_a_mailbox_item_that_is_not_a_message_is_refused() -> None:
    bob = Messenger("bob")
    with pytest.raises(MessageRefused, match="mailbox item"):
        bob.receive_offline(b"\xed\x9e junk", 0.0, from_user="alice")
    receipt = encode(MsgType.MESSAGE_RECEIPT, {"message_id": b"\x00" * 16, "status": 1})
    with pytest.raises(MessageRefused, match="MESSAGE_RECEIPT"):
        bob.receive_offline(receipt, 0.0, from_user="alice")
    assert bob.counters["undecodable"] == 2


# -- the history file


def test_history_round_trips_and_a_restart_carries_on(tmp_path: Path) -> None:
    path = tmp_path / "messages.json"
    pair = Pair()
    pair.connect()
    pair.cores["alice"].send("first", "bob", 0.0)
    pair.cores["alice"].send("second", "bob", 0.0)
    pair.run(1.0)
    pending = pair.cores["alice"].send("unanswered", "bob", pair.now)
    for user, core in pair.cores.items():
        save_history(core.history, tmp_path / f"{user}.json")
    save_history(pair.cores["alice"].history, path)
    loaded = load_history(path)
    assert loaded.recent() == pair.cores["alice"].history.recent()
    assert loaded.sequences() == {"bob": 4}
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    # Both restart from their files: the pending message goes again, the
    # sequence goes on, and bob does not deliver what he had already.
    pair.channels["bob"].clear()
    pair.cores = {
        user: pair.messenger(user, 99, load_history(tmp_path / f"{user}.json")) for user in USERS
    }
    pair.events = {user: [] for user in USERS}
    assert pair.cores["alice"].requeue_pending(pair.now) == 1
    pair.cores["alice"].send("third", "bob", pair.now)
    pair.connect()
    pair.run(pair.now + 5.0)
    assert [(e.text, e.sequence) for e in pair.delivered("bob")] == [
        ("unanswered", 3),
        ("third", 4),
    ]
    assert pair.cores["alice"].history.get(pending).status is Status.DELIVERED  # type: ignore[union-attr]
    # A retransmission of an old message after the restart is a duplicate.
    old = pair.cores["alice"].history.recent()[0]
    replay = body(old.sequence, old.text, message_id=old.message_id)
    pair.cores["bob"].receive(
        MsgType.INSTANT_MESSAGE, replay, pair.now, from_user="alice", from_device="phone"
    )
    assert drain(pair.cores["bob"]) == [] and pair.cores["bob"].counters["duplicate"] == 1


def test_the_history_keeps_only_the_most_recent() -> None:
    history = History(limit=3)
    for i in range(5):
        history.add(Entry(bytes([i]) * 16, "bob", True, i + 1, 0, str(i), Status.SENDING))
    assert [e.text for e in history.recent()] == ["2", "3", "4"]
    assert [e.text for e in history.recent(limit=2)] == ["3", "4"]
    assert history.recent(peer="carol") == []


def test_a_missing_history_file_is_an_empty_history(tmp_path: Path) -> None:
    assert len(load_history(tmp_path / "none.json")) == 0


def _saved(tmp_path: Path) -> dict[str, Any]:
    alice = Messenger("alice")
    alice.send("hello", "bob", 0.0)
    path = tmp_path / "good.json"
    save_history(alice.history, path)
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _message(document: dict[str, Any], **change: Any) -> dict[str, Any]:
    return {**document, "messages": [{**document["messages"][0], **change}]}


CORRUPTIONS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("format", lambda d: {**d, "format": "edge buddy cache"}, "not a message history"),
    ("version", lambda d: {**d, "format_version": 2}, "format_version 2"),
    ("messages", lambda d: {**d, "messages": {}}, "messages: not a list"),
    ("id", lambda d: _message(d, id="00"), "messages\\[0\\].id"),
    ("upper id", lambda d: _message(d, id="AB" * 16), "messages\\[0\\].id"),
    ("direction", lambda d: _message(d, direction="sideways"), "direction"),
    ("status", lambda d: _message(d, status="lost"), "status"),
    ("in sending", lambda d: _message(d, direction="in"), "status"),
    ("sequence", lambda d: _message(d, sequence=0), "sequence"),
    ("bool", lambda d: _message(d, sent_ms=True), "sent_ms"),
    ("text", lambda d: _message(d, text="x" * 4097), "text"),
    ("peer", lambda d: _message(d, peer=""), "peer"),
    ("twice", lambda d: {**d, "messages": d["messages"] * 2}, "listed twice"),
    ("sequences", lambda d: {**d, "sequences": {"bob": -1}}, "sequences.bob"),
    ("not an object", lambda d: [d], "not a message history"),
]


@pytest.mark.parametrize(
    ("name", "corrupt", "problem"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS]
)
def test_a_corrupt_history_file_is_refused_with_a_clear_error(
    tmp_path: Path, name: str, corrupt: Callable[[dict[str, Any]], Any], problem: str
) -> None:
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(corrupt(_saved(tmp_path))))
    with pytest.raises(HistoryFileError, match=problem) as caught:
        load_history(path)
    assert str(path) in str(caught.value)
    history, warning = load_history_or_empty(path)
    assert len(history) == 0 and warning is not None and "starting with an empty" in warning


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b'{"format": "edge message history",', "not JSON"),
        (b'{"x": NaN}', "not JSON"),
        (b" " * (MAX_FILE_BYTES + 1), "larger than"),
    ],
)
def test_a_history_file_that_is_not_json_is_refused(
    tmp_path: Path, raw: bytes, problem: str
) -> None:
    path = tmp_path / "messages.json"
    path.write_bytes(raw)
    with pytest.raises(HistoryFileError, match=problem):
        load_history(path)


# -- properties


@settings(max_examples=40)
@given(
    seed=st.integers(0, 2**32),
    loss=st.floats(0.0, 0.6),
    duplicate=st.floats(0.0, 0.5),
    jitter=st.floats(0.0, 0.5),
    count=st.integers(1, 25),
)
def test_whatever_the_channel_does_each_message_arrives_exactly_once(
    seed: int, loss: float, duplicate: float, jitter: float, count: int
) -> None:
    """Directly or through the mailbox, every message comes once; those not
    marked late come in order, and every late one is accounted for."""
    pair = Pair(seed, loss=loss, duplicate=duplicate, jitter=jitter)
    pair.connect()
    sent = [pair.cores["alice"].send(f"m{i}", "bob", pair.now) for i in range(count)]
    pair.run(60.0)
    for offline in pair.of("alice", OfflineDelivery):  # the mailbox never loses
        pair.cores["bob"].receive_offline(
            offline.content, pair.now, from_user="alice", from_device="phone"
        )
    pair.run(120.0)

    got = pair.delivered("bob")
    assert sorted(e.message_id for e in got) == sorted(sent)
    in_order = [e.sequence for e in got if not e.late]
    assert in_order == sorted(in_order)
    # A late message lies in a reported gap, or before the first one delivered
    # when the conversation's start had to be guessed.
    gaps = pair.of("bob", GapSkipped)
    for late in (e for e in got if e.late):
        reported = any(g.missing_from <= late.sequence <= g.missing_to for g in gaps)
        assert reported or late.sequence < in_order[0]
    assert all(e.text == f"m{e.sequence - 1}" for e in got)

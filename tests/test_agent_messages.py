"""Instant messages between real agents on loopback, with a real login server and
supernode: in order, with DELIVERED then READ receipts, once however often a real
peer session repeats them, kept across restarts, and through the mailbox when
nobody is online, which does not deliver anything twice either. Last, what the
driver asks of the messaging core beyond its own tests: the mailbox at once, a
refusal marked, and the history's mailbox and late flags."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge.client import mailbox
from edge.client.agent import Agent
from edge.client.messages import HISTORY_FILE
from edge.client.messaging import (
    HistoryFileError,
    Messenger,
    OfflineDelivery,
    Status,
    load_history,
    save_history,
)
from edge.runtime.control import request
from edge.wire.codes import MsgType
from edge.wire.messages import ReceiptStatus, encode
from tests.test_agent import TIMEOUT, Network, network, run_uv


async def _send(agent: Agent, user: str, text: str) -> dict[str, Any]:
    answer = await request(
        agent.config.control_socket, "send", {"user": user, "text": text}, timeout=TIMEOUT
    )
    assert answer["ok"], answer
    result: dict[str, Any] = answer["result"]
    return result


async def _listing(agent: Agent) -> dict[str, Any]:
    answer = await request(agent.config.control_socket, "messages")
    assert answer["ok"], answer
    result: dict[str, Any] = answer["result"]
    return result


async def _until(agent: Agent, condition: Any) -> None:
    assert agent.chat is not None
    await asyncio.wait_for(agent.chat.wait_for(condition), TIMEOUT)


def _statuses(agent: Agent) -> list[str]:
    assert agent.chat is not None
    return [m["status"] for m in agent.chat.listing(mark_read=False)["sent"]]


def _incoming(agent: Agent) -> list[dict[str, Any]]:
    assert agent.chat is not None
    messages: list[dict[str, Any]] = agent.chat.listing(mark_read=False)["messages"]
    return messages


def _body(sender: str, sequence: int, text: str, message_id: bytes) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "sender": sender,
        "recipient": "bob",
        "sequence": sequence,
        "sent_ms": 1_700_000_000_000 + sequence,
        "text": text,
    }


async def _pair(net: Network, first: str = "alice") -> tuple[Agent, Agent]:
    home = await net.home()
    sender = await net.agent(net.agent_config(first, [home]))
    bob = await net.agent(net.agent_config("bob", [home]))
    return sender, bob


def test_messages_arrive_in_order_and_the_sender_sees_delivered_then_read(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            alice, bob = await _pair(net)
            for text in ("one", "two", "three"):
                sent = await _send(alice, "bob", text)
                assert sent == {"delivered_to": ["bob/desk"], "devices": 1}
            shown = await _listing(alice)
            assert [(m["to"], m["text"], m["seq"], m["status"]) for m in shown["sent"]] == [
                ("bob", "one", 1, "delivered"),
                ("bob", "two", 2, "delivered"),
                ("bob", "three", 3, "delivered"),
            ]
            inbox = (await _listing(bob))["messages"]
            assert [(m["from"], m["text"], m["seq"]) for m in inbox] == [
                ("alice/desk", "one", 1),
                ("alice/desk", "two", 2),
                ("alice/desk", "three", 3),
            ]
            assert [m["id"] for m in inbox] == [m["id"] for m in shown["sent"]]
            assert not any(m["late"] or m["offline"] for m in inbox)
            assert {m["status"] for m in inbox} == {"delivered"}  # as first shown
            # Showing them marked them read, and the sender hears of it.
            await _until(alice, lambda: _statuses(alice) == ["read"] * 3)
            assert {m["status"] for m in (await _listing(bob))["messages"]} == {"read"}
            assert alice.chat is not None and alice.chat.core.outbox_size == 0

    run_uv(main())


def test_every_online_device_of_the_user_gets_the_message_and_answers(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            alice, desk = await _pair(net)
            door_config = replace(
                desk.config,
                device_id="door",
                state_dir=tmp_path / "bob-door",
                control_socket=tmp_path / "bob-door.sock",
            )
            door = await net.agent(door_config)
            sent = await _send(alice, "bob", "to both")
            assert sorted(sent["delivered_to"]) == ["bob/desk", "bob/door"] and sent["devices"] == 2
            for device in (desk, door):
                assert [(m["from"], m["seq"]) for m in _incoming(device)] == [("alice/desk", 1)]
            refused = await request(
                alice.config.control_socket, "send", {"user": "bob", "text": ""}
            )
            assert refused["error"]["code"] == "MALFORMED", refused

    run_uv(main())


def test_a_message_a_real_peer_sends_twice_shows_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            carol, bob = await _pair(net, "carol")
            assert carol.peers is not None and bob.chat is not None
            session = await carol.peers.session("bob", "desk")
            body = _body("carol", 1, "ding dong", bytes(range(16)))
            carol.peers.send(session, MsgType.INSTANT_MESSAGE, body)
            carol.peers.send(session, MsgType.INSTANT_MESSAGE, body)
            await _until(bob, lambda: bob.chat is not None and bob.chat.core.counters["duplicate"])
            assert [(m["from"], m["text"]) for m in _incoming(bob)] == [("carol/desk", "ding dong")]
            shown = await _listing(bob)
            assert shown["messages"][0]["id"] == bytes(range(16)).hex()
            assert shown["counters"]["duplicate"] == 1

    run_uv(main())


def test_messages_a_real_peer_sends_out_of_order_are_delivered_in_order(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            carol, bob = await _pair(net, "carol")
            assert carol.peers is not None and bob.chat is not None
            chat = bob.chat
            session = await carol.peers.session("bob", "desk")
            carol.peers.send(
                session, MsgType.INSTANT_MESSAGE, _body("carol", 2, "second", b"2" * 16)
            )
            # Held, not shown: bob waits for the first (the hold is the core's one timer).
            await _until(bob, lambda: chat.core.get_timer() is not None)
            assert _incoming(bob) == []
            carol.peers.send(
                session, MsgType.INSTANT_MESSAGE, _body("carol", 1, "first", b"1" * 16)
            )
            await _until(bob, lambda: len(_incoming(bob)) == 2)
            inbox = (await _listing(bob))["messages"]
            assert [(m["text"], m["seq"], m["late"]) for m in inbox] == [
                ("first", 1, False),
                ("second", 2, False),
            ]
            assert chat.core.counters["gap"] == 0 and chat.core.get_timer() is None

    run_uv(main())


def test_the_history_survives_a_restart_and_sequences_go_on(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            alice, bob = await _pair(net)
            for text in ("one", "two"):
                assert (await _send(alice, "bob", text))["delivered_to"] == ["bob/desk"]
            await _listing(bob)
            await _until(alice, lambda: _statuses(alice) == ["read", "read"])
            await bob.stop()
            await alice.stop()
            saved = load_history(bob.config.state_dir / HISTORY_FILE)
            assert [e.text for e in saved.recent()] == ["one", "two"]
            bob = await net.agent(bob.config, password=None)
            alice = await net.agent(alice.config, password=None)
            # Nothing is delivered again; what was read stays read.
            assert [(m["text"], m["status"]) for m in _incoming(bob)] == [
                ("one", "read"),
                ("two", "read"),
            ]
            assert _statuses(alice) == ["read", "read"]
            assert (await _send(alice, "bob", "three"))["delivered_to"] == ["bob/desk"]
            inbox = (await _listing(bob))["messages"]
            assert [(m["text"], m["seq"], m["late"]) for m in inbox] == [
                ("one", 1, False),
                ("two", 2, False),
                ("three", 3, False),
            ]
            # An old message sent again after the restart is known for what it is.
            first = bytes.fromhex(inbox[0]["id"])
            assert alice.peers is not None and bob.chat is not None
            session = await alice.peers.session("bob", "desk")
            alice.peers.send(session, MsgType.INSTANT_MESSAGE, _body("alice", 1, "one", first))
            await _until(bob, lambda: bob.chat is not None and bob.chat.core.counters["duplicate"])
            assert [m["text"] for m in _incoming(bob)] == ["one", "two", "three"]

    run_uv(main())


def test_a_device_that_restarted_gets_the_next_message_on_a_fresh_session(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            alice, bob = await _pair(net)
            assert (await _send(alice, "bob", "before"))["delivered_to"] == ["bob/desk"]
            # bob forgets the session alice still holds.
            await bob.stop()
            bob = await net.agent(bob.config, password=None)
            assert (await _send(alice, "bob", "after"))["delivered_to"] == ["bob/desk"]
            assert alice.chat is not None and alice.chat.counters["fresh session"] == 1
            assert [(m["text"], m["seq"]) for m in _incoming(bob)] == [("before", 1), ("after", 2)]
            assert _statuses(alice) == ["delivered", "delivered"]

    run_uv(main())


def test_a_corrupt_history_file_is_set_aside_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            config = net.agent_config("bob", [home])
            config.state_dir.mkdir(parents=True)
            damaged = b'{"format": "edge message history", "format_version": 1, "mess'
            (config.state_dir / HISTORY_FILE).write_bytes(damaged)
            with caplog.at_level(logging.WARNING, logger="edge.client.messages"):
                bob = await net.agent(config)
            (warning,) = [r.getMessage() for r in caplog.records if "history" in r.getMessage()]
            assert "not JSON" in warning and "set aside as messages.json.corrupt" in warning
            assert (config.state_dir / "messages.json.corrupt").read_bytes() == damaged
            alice = await net.agent(net.agent_config("alice", [home]))
            assert (await _send(alice, "bob", "still here"))["delivered_to"] == ["bob/desk"]
            assert [m["text"] for m in _incoming(bob)] == ["still here"]
            await bob.stop()
            saved = load_history(config.state_dir / HISTORY_FILE)
            assert [e.text for e in saved.recent()] == ["still here"]

    run_uv(main())


def test_the_mailbox_fallback_delivers_once_and_the_receipts_follow(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            alice = await net.agent(net.agent_config("alice", [home]))
            bob_config = net.agent_config("bob", [home])
            await (await net.agent(bob_config)).stop()  # enrolled, then away
            sent = await _send(alice, "bob", "later")
            assert sent["devices"] == 0 and sent["delivered_to"] == [], sent
            assert _statuses(alice) == ["offline"]
            assert alice.chat is not None
            (entry,) = alice.chat.core.history.recent()
            assert sent["stored_offline"] == entry.message_id.hex()
            # The same message left again (as a sender retrying after a restart would):
            # two mailbox items, one message.
            content = encode(MsgType.INSTANT_MESSAGE, _body("alice", 1, "later", entry.message_id))
            session = await alice._renewed_session()
            try:
                await mailbox.leave(session, alice.trust, "bob", content)
            finally:
                session.close()
            bob = await net.agent(bob_config, password=None)
            inbox = (await _listing(bob))["messages"]
            assert [(m["from"], m["text"], m["offline"], m["seq"]) for m in inbox] == [
                ("alice/desk", "later", True, 1)
            ]
            assert bob.chat is not None and bob.chat.core.counters["duplicate"] == 1
            # bob's receipts wait for a session with alice's device: his reply opens one.
            assert _statuses(alice) == ["offline"]
            assert (await _send(bob, "alice", "got it"))["delivered_to"] == ["alice/desk"]
            await _until(alice, lambda: _statuses(alice) == ["read"])
            # Fetched and acknowledged once: a restart brings nothing new.
            await bob.stop()
            bob = await net.agent(bob_config, password=None)
            assert [(m["text"], m["status"]) for m in _incoming(bob)] == [("later", "read")]

    run_uv(main())


# -- what the driver asks of the core, without the network


def test_the_core_hands_a_message_to_the_mailbox_when_told_and_marks_a_refusal() -> None:
    alice = Messenger("alice", random_bytes=lambda n: b"m" * n)
    message_id = alice.send("anyone?", "bob", 0.0)
    assert alice.hand_to_mailbox(message_id) and not alice.hand_to_mailbox(message_id)
    offline = alice.next_event()
    assert isinstance(offline, OfflineDelivery) and offline.message.status is Status.OFFLINE
    assert alice.outbox_size == 0 and alice.get_timer() is None
    assert alice.mailbox_failed(message_id) and not alice.mailbox_failed(message_id)
    assert _status(alice, message_id) is Status.FAILED
    # A receipt that comes after all still counts.
    receipt = {"message_id": message_id, "status": ReceiptStatus.DELIVERED}
    alice.receive(MsgType.MESSAGE_RECEIPT, receipt, 1.0, from_user="bob", from_device="desk")
    assert _status(alice, message_id) is Status.DELIVERED


def test_mailbox_and_late_flags_are_kept_in_the_history_file(tmp_path: Path) -> None:
    bob = Messenger("bob")
    content = encode(MsgType.INSTANT_MESSAGE, _body("alice", 1, "left", b"a" * 16))
    bob.receive_offline(content, 0.0, from_user="alice", from_device="desk")
    bob.receive(MsgType.INSTANT_MESSAGE, _body("alice", 3, "three", b"c" * 16), 0.0,
                from_user="alice", from_device="desk")  # fmt: skip
    bob.handle_timer(10.0)  # the gap at 2 is accepted
    bob.receive(MsgType.INSTANT_MESSAGE, _body("alice", 2, "two", b"b" * 16), 11.0,
                from_user="alice", from_device="desk")  # fmt: skip
    path = tmp_path / HISTORY_FILE
    save_history(bob.history, path)
    flags = [(e.text, e.offline, e.late) for e in load_history(path).recent()]
    assert flags == [("left", True, False), ("three", False, False), ("two", False, True)]
    # A file written before the flags existed reads as neither.
    document = json.loads(path.read_text())
    for item in document["messages"]:
        del item["late"], item["offline"]
    path.write_text(json.dumps(document))
    assert not any(e.late or e.offline for e in load_history(path).recent())
    document["messages"][0]["late"] = "yes"
    path.write_text(json.dumps(document))
    with pytest.raises(HistoryFileError, match=r"messages\[0\]\.late"):
        load_history(path)


def _status(core: Messenger, message_id: bytes) -> Status | None:
    entry = core.history.get(message_id)
    return entry.status if entry is not None else None

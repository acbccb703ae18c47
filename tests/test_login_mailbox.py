"""The offline mailbox end to end: sealed per device, delivered, receipted, bounded."""

import pytest

from edge.client.errors import ServerError
from edge.client.login import Credentials
from edge.client.mailbox import device_certificates, fetch, leave
from edge.login.store import Quota
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import MailKind
from tests.test_login_server import World, device, scenario


async def _enrolled(w: World, *who: Credentials) -> None:
    for creds in who:
        (await w.login(creds, password="correct horse")).close()


async def _sealed_to_each_device(w: World) -> None:
    w.add_user("alice")
    w.add_user("bob")
    alice, desk, phone = device("alice"), device("bob", "desk"), device("bob", "phone")
    await _enrolled(w, desk, phone)
    sender = await w.login(alice, password="correct horse")
    certs = await device_certificates(sender, "bob", w.trust)
    assert sorted(c.device_id for c in certs) == ["desk", "phone"]
    message_id = await leave(sender, w.trust, "bob", b"the parcel is at the door")
    stored = w.store.mail_fetch("bob", int(w.clock.now))
    assert len(stored) == 2
    assert all(b"parcel" not in item.sealed for item in stored)  # the server cannot read it

    for creds in (desk, phone):
        session = await w.login(creds)
        delivered, unreadable = await fetch(session, creds.keys.dh)
        assert unreadable == []
        (item,) = delivered
        assert (item.sender, item.sender_device, item.kind) == ("alice", "desk-1", MailKind.MESSAGE)
        assert (item.content, item.message_id) == (b"the parcel is at the door", message_id)
        assert await fetch(session, creds.keys.dh) == ([], [])  # acknowledged: gone
        session.close()

    receipts, _ = await fetch(sender, alice.keys.dh)
    assert [(r.kind, r.sender, r.sender_device, r.message_id) for r in receipts] == [
        (MailKind.RECEIPT, "bob", "desk", message_id),
        (MailKind.RECEIPT, "bob", "phone", message_id),
    ]
    sender.close()


test_items_are_sealed_to_each_device_delivered_and_receipted = scenario(_sealed_to_each_device)


async def _full(w: World) -> None:
    w.add_user("alice")
    w.add_user("bob")
    bob = device("bob", "desk")
    await _enrolled(w, bob)
    sender = await w.login(device("alice"), password="correct horse")
    await leave(sender, w.trust, "bob", b"one")
    with pytest.raises(ServerError) as info:
        await leave(sender, w.trust, "bob", b"two")
    assert info.value.code is ErrorCode.BUSY
    assert "full" in str(info.value)
    assert len(w.store.mail_fetch("bob", int(w.clock.now))) == 1
    sender.close()


test_a_full_mailbox_is_an_explicit_error = scenario(_full, mailbox_quota=Quota(items=1))


async def _expiry(w: World) -> None:
    w.add_user("alice")
    w.add_user("bob")
    bob = device("bob", "desk")
    await _enrolled(w, bob)
    sender = await w.login(device("alice"), password="correct horse")
    await leave(sender, w.trust, "bob", b"soon stale")
    sender.close()
    w.clock.now += 2 * 86400 + 1
    session = await w.login(bob)
    assert await fetch(session, bob.keys.dh) == ([], [])
    session.close()


test_items_expire = scenario(_expiry, mailbox_days=2)


async def _refusals(w: World) -> None:
    w.add_user("alice")
    sender = await w.login(device("alice"), password="correct horse")
    with pytest.raises(ServerError) as info:
        await sender.request(
            MsgType.MAILBOX_PUT,
            {
                "recipient": "nobody",
                "recipient_device": "x",
                "message_id": bytes(16),
                "kind": MailKind.MESSAGE,
                "sealed": b"",
            },
            MsgType.MAILBOX_STORED,
        )
    assert info.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ServerError) as info:
        await sender.request(
            MsgType.MAILBOX_PUT,
            {
                "recipient": "alice",
                "recipient_device": "desk-1",
                "message_id": bytes(16),
                "kind": MailKind.RECEIPT,
                "sealed": b"",
            },
            MsgType.MAILBOX_STORED,
        )
    assert info.value.code is ErrorCode.FORBIDDEN
    sender.close()


test_unknown_recipients_and_forged_receipts_are_refused = scenario(_refusals)

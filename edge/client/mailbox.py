"""The device side of the offline mailbox: leave sealed items, fetch and open them.

To leave an item for a user, a device asks the login server for the
certificates of that user's devices (DEVICE_KEYS), checks each against the
issuer it trusts, seals the item once per device to that device's X25519 key,
and puts each copy in the mailbox. The server stores ciphertext it cannot
read. When a recipient device fetches, opens and acknowledges an item, the
server puts a RECEIPT for the sender's device in the sender's mailbox.
"""

import secrets
import time
from dataclasses import dataclass

from edge.client.errors import NoDevices
from edge.client.login import LoginSession
from edge.crypto.cert import Certificate, TrustStore
from edge.crypto.errors import CryptoError
from edge.crypto.noise import KeyPair
from edge.crypto.sealed import open_sealed, seal
from edge.wire.codes import MsgType
from edge.wire.messages import MAILBOX_ACK_MAX, MailKind

MAX_FETCH_ROUNDS = 64


@dataclass(frozen=True)
class Delivered:
    """One item from the mailbox, opened (receipts carry nothing to open)."""

    item_id: int
    sender: str
    sender_device: str
    message_id: bytes
    kind: MailKind
    content: bytes
    stored_ms: int


@dataclass(frozen=True)
class Unreadable:
    """An item this device could not open (sealed to other keys, or damaged)."""

    item_id: int
    sender: str
    reason: str


async def device_certificates(
    session: LoginSession, user_id: str, trust: TrustStore
) -> list[Certificate]:
    """The verified certificates of ``user_id``'s devices; an empty list if none."""
    reply = await session.request(
        MsgType.DEVICE_KEYS_REQUEST, {"user_id": user_id}, MsgType.DEVICE_KEYS
    )
    now = time.time()
    return [trust.verify(bytes(raw), now, user_id=user_id) for raw in reply.body.certificates]


async def leave(
    session: LoginSession,
    trust: TrustStore,
    recipient: str,
    content: bytes,
    *,
    kind: MailKind = MailKind.MESSAGE,
) -> bytes:
    """Seal ``content`` to every device of ``recipient`` and store each copy; return
    the message id that the receipts will name. Raises ServerError (BUSY) when the
    recipient's mailbox is full."""
    devices = await device_certificates(session, recipient, trust)
    if not devices:
        raise NoDevices(f"{recipient!r} has no device to leave an item for")
    message_id = secrets.token_bytes(16)
    for device in devices:
        await session.request(
            MsgType.MAILBOX_PUT,
            {
                "recipient": recipient,
                "recipient_device": device.device_id,
                "message_id": message_id,
                "kind": kind,
                "sealed": seal(content, device.dh_key),
            },
            MsgType.MAILBOX_STORED,
        )
    return message_id


async def fetch(
    session: LoginSession, keys: KeyPair, *, acknowledge: bool = True
) -> tuple[list[Delivered], list[Unreadable]]:
    """Everything waiting for this device, opened, and acknowledged unless told not to.

    Without acknowledging, one batch is fetched (the server would send the same
    items again)."""
    delivered: list[Delivered] = []
    unreadable: list[Unreadable] = []
    for _ in range(MAX_FETCH_ROUNDS):
        opened, failed, waiting = await _fetch_batch(session, keys)
        delivered += opened
        unreadable += failed
        ids = [item.item_id for item in opened] + [item.item_id for item in failed]
        if not acknowledge:
            break
        if ids:
            await session.request(MsgType.MAILBOX_ACK, {"item_ids": ids}, MsgType.MAILBOX_STATUS)
        if not waiting:
            break
    return delivered, unreadable


async def _fetch_batch(
    session: LoginSession, keys: KeyPair
) -> tuple[list[Delivered], list[Unreadable], int]:
    delivered: list[Delivered] = []
    unreadable: list[Unreadable] = []
    session.send(MsgType.MAILBOX_FETCH, {"max_items": MAILBOX_ACK_MAX})
    while True:
        message = await session.receive(MsgType.MAILBOX_ITEM, MsgType.MAILBOX_STATUS)
        if message.type is MsgType.MAILBOX_STATUS:
            return delivered, unreadable, int(message.body.waiting)
        body = message.body
        try:
            sealed = bytes(body.sealed)
            content = b"" if body.kind == MailKind.RECEIPT else open_sealed(sealed, keys)
        except CryptoError as exc:
            unreadable.append(Unreadable(body.item_id, body.sender, str(exc)))
            continue
        delivered.append(
            Delivered(
                body.item_id,
                body.sender,
                body.sender_device,
                bytes(body.message_id),
                MailKind(body.kind),
                content,
                body.stored_ms,
            )
        )

"""The device's sessions with other devices, first opened through the supernodes.

How it works: to reach a user, the device asks its supernode where the user
is (PRESENCE_LOOKUP), checks every record it gets as any holder would
(:func:`~edge.overlay.presence.verify_presence`: a supernode can hide a
device, not invent one), and opens a Noise session with each device at its
*signalling address* (:func:`~edge.client.port.via_address`): the handshake
and everything after it travel in SIGNAL_FORWARD / SIGNAL_RELAYED through the
two supernodes, end to end encrypted, the certificate of the peer checked
against the user asked for. Calls later move a session to a path of its own;
messages are happy with this one.

A device that is called receives the first handshake message the same way
and answers it; the session is then known by the peer's certified user and
device. Sessions are kept by (user, device) and reused.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.client.errors import PeerUnreachable
from edge.client.port import PortCore, via_address, via_peer
from edge.client.uplink import Link
from edge.crypto.cert import TrustStore
from edge.errors import RemoteError
from edge.overlay.ids import id_to_bytes, key_for_user
from edge.overlay.presence import VerifiedPresence, verify_presence
from edge.runtime.adapters import DatagramAdapter
from edge.session.events import (
    MediaReceived,
    MessageReceived,
    SessionEstablished,
    SessionFailed,
)
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import Message

HANDSHAKE_TIMEOUT = 5.0
"""Through two supernodes a handshake takes a few round trips: well under a second."""
MAX_PEERS = 256

Device = tuple[str, str]


@dataclass(frozen=True)
class Found:
    """A device of a user, as its verified presence record describes it."""

    user: str
    device: str
    online: bool
    presence: VerifiedPresence


class Peers:
    """Sessions with other devices; see the module docstring."""

    def __init__(self, core: PortCore, adapter: DatagramAdapter, trust: TrustStore) -> None:
        self.core = core
        self.adapter = adapter
        self.trust = trust
        self.on_message: Callable[[Device, Message], None] = lambda peer, message: None
        self.on_media: Callable[[MediaReceived], None] = lambda event: None
        self._by_peer: dict[Device, int] = {}
        self._by_index: dict[int, Device] = {}
        self._waiting: dict[int, asyncio.Future[None]] = {}

    # -- finding and reaching users

    async def find(self, link: Link, user: str) -> list[Found]:
        """The devices of ``user`` that the overlay knows, each record verified."""
        answer = await link.request(
            MsgType.PRESENCE_LOOKUP, {"user_id": user}, MsgType.PRESENCE_RESULT
        )
        if answer.body.code is ErrorCode.NOT_FOUND:
            return []
        key, now = id_to_bytes(key_for_user(user)), time.time()
        found = []
        for raw in answer.body.records:
            try:
                verified = verify_presence(key, bytes(raw), self.trust, now)
            except RemoteError:
                continue  # a record that does not hold up is ignored, as a holder would
            certificate = verified.certificate
            online = verified.presence.is_online(now)
            found.append(Found(certificate.user_id, certificate.device_id, online, verified))
        return found

    async def session(self, user: str, device: str) -> int:
        """The session with ``user``'s ``device``, opened through the supernodes if need be."""
        peer = (user, device)
        index = self._by_peer.get(peer)
        if index is not None and self.core.endpoint.is_established(index):
            return index
        if len(self._by_peer) >= MAX_PEERS:
            raise PeerUnreachable(f"already {MAX_PEERS} peer sessions; close some first")
        loop = asyncio.get_running_loop()
        index = self.core.endpoint.connect(via_address(user, device), loop.time(), expect_user=user)
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting[index] = waiter
        self._remember(peer, index)
        self.adapter.poke()
        try:
            await asyncio.wait_for(waiter, HANDSHAKE_TIMEOUT)
        except TimeoutError:
            raise PeerUnreachable(
                f"{user}/{device} did not answer through the supernodes"
            ) from None
        finally:
            self._waiting.pop(index, None)
        return index

    def session_of(self, peer: Device) -> int | None:
        return self._by_peer.get(peer)

    def send(self, index: int, msg_type: MsgType, body: Mapping[str, object]) -> None:
        self.core.endpoint.send(index, msg_type, body)
        self.adapter.poke()

    # -- what the supernode and the endpoint hand in

    def relayed(self, body: Any, now: float) -> None:
        """SIGNAL_RELAYED from the supernode: a datagram of a session with its sender."""
        sender = via_address(body.from_user, body.from_device)
        # A bad relayed datagram changes nothing; the endpoint's own checks refuse it.
        with contextlib.suppress(RemoteError):
            self.core.endpoint.receive_datagram(bytes(body.payload), sender, now)
        self.adapter.poke()

    def route(self, event: object) -> bool:
        """Take an endpoint event that belongs to a peer session; False otherwise."""
        if isinstance(event, SessionEstablished):
            return self._established(event)
        index = getattr(event, "index", None)
        peer = self._by_index.get(index) if isinstance(index, int) else None
        if peer is None:
            return False
        if isinstance(event, SessionFailed):
            self._forget(event.index)
            waiter = self._waiting.get(event.index)
            if waiter is not None and not waiter.done():
                waiter.set_exception(PeerUnreachable(f"{peer[0]}/{peer[1]}: {event.reason}"))
        elif isinstance(event, MessageReceived):
            self.on_message(peer, event.message)
        elif isinstance(event, MediaReceived):
            self.on_media(event)
        return True

    def _established(self, event: SessionEstablished) -> bool:
        via = via_peer(event.address)
        if via is None:
            return False
        if event.peer is not None:
            # Known from now on by who the certificate says, not by the supernode's stamp.
            self._remember((event.peer.user_id, event.peer.device_id), event.index)
        waiter = self._waiting.get(event.index)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def _remember(self, peer: Device, index: int) -> None:
        self._by_peer[peer] = index
        self._by_index[index] = peer

    def _forget(self, index: int) -> None:
        peer = self._by_index.pop(index, None)
        if peer is not None and self._by_peer.get(peer) == index:
            del self._by_peer[peer]

    @property
    def count(self) -> int:
        return len(self._by_peer)

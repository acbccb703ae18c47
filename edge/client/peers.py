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
device. Sessions are kept by (user, device) and reused. A handshake that
gets no answer in time raises :class:`~edge.client.errors.SignalTimeout` and
is counted until one works again: the agent's sign that its supernode
swallows signalling.

Refusals are kept for ``edge ctl status``: a record that does not verify, a
record that says "online" under a certificate that is no longer valid now
(the device could not finish a handshake with it), a handshake whose
certificate is refused, either way round. Each becomes a :class:`Refusal`
naming the device and why ("certificate revoked (serial 12)"), the latest
:data:`MAX_REFUSALS` kept, all of them counted. Whatever else comes bad in
SIGNAL_RELAYED is counted in :attr:`Peers.drops` by error code.
"""

import asyncio
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge.client.errors import PeerRefused, PeerUnreachable, SignalTimeout
from edge.client.port import PortCore, via_address, via_peer
from edge.client.uplink import Link
from edge.crypto.cert import TrustStore
from edge.errors import EdgeError, RemoteError
from edge.overlay.ids import id_to_bytes, key_for_user
from edge.overlay.presence import VerifiedPresence, parse_presence, verify_presence
from edge.runtime.adapters import DatagramAdapter
from edge.session.events import (
    MediaReceived,
    MessageReceived,
    SessionEstablished,
    SessionFailed,
)
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import Message, parse_certificate

HANDSHAKE_TIMEOUT = 5.0
"""Through two supernodes a handshake takes a few round trips: well under a second."""
MAX_PEERS = 256
MAX_REFUSALS = 32
"""Refusals kept for ``edge ctl status``, newest last; older ones are only counted."""
MAX_REASON = 200

Device = tuple[str, str]

CERTIFICATE_REASONS = {
    ErrorCode.CERT_EXPIRED: "certificate expired",
    ErrorCode.CERT_NOT_YET_VALID: "certificate not yet valid",
    ErrorCode.CERT_UNKNOWN_ISSUER: "certificate from an issuer not trusted here",
    ErrorCode.CERT_BAD_SIGNATURE: "certificate signature does not verify",
    ErrorCode.CERT_REVOKED: "certificate revoked",
    ErrorCode.CERT_KEY_MISMATCH: "certificate of another key or user",
}
"""How a refused certificate reads in a refusal, by the error's code."""
_SERIAL = re.compile(r"certificate serial (\d+)")


@dataclass(frozen=True)
class Refusal:
    """A device this one would not talk to, and why."""

    peer: str
    """``user/device`` as the record or the supernode's stamp names it."""
    reason: str
    at: float
    """Unix seconds."""
    incoming: bool = False
    """The device tried to reach us, rather than we it."""


@dataclass(frozen=True)
class Found:
    """A device of a user, as its verified presence record describes it."""

    user: str
    device: str
    online: bool
    presence: VerifiedPresence


@dataclass(frozen=True)
class Lookup:
    """What a presence lookup brought: the devices whose records hold up, and the rest."""

    found: tuple[Found, ...]
    refused: tuple[Refusal, ...]


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
        self.refusals: deque[Refusal] = deque(maxlen=MAX_REFUSALS)
        """The latest refusals, newest last."""
        self.refused = 0
        """Every refusal since start."""
        self.drops: Counter[str] = Counter()
        """SIGNAL_RELAYED payloads the endpoint refused, by error code."""
        self.signal_timeouts = 0
        """Handshakes through the supernodes that timed out since the last one that
        worked: the agent's sign that its supernode swallows signalling."""
        self._refusal = asyncio.Event()

    # -- finding and reaching users

    async def lookup(self, link: Link, user: str) -> Lookup:
        """The devices of ``user`` the overlay knows: those whose records hold up, and a
        :class:`Refusal` (also kept in :attr:`refusals`) for each of the others."""
        answer = await link.request(
            MsgType.PRESENCE_LOOKUP, {"user_id": user}, MsgType.PRESENCE_RESULT
        )
        if answer.body.code is ErrorCode.NOT_FOUND:
            return Lookup((), ())
        key, now = id_to_bytes(key_for_user(user)), time.time()
        found, refused = [], []
        for raw in answer.body.records:
            try:
                found.append(self._verified(key, bytes(raw), now))
            except RemoteError as exc:
                # Not one to reach, as a holder would judge it; the user learns why.
                refused.append(self._refuse(_record_owner(bytes(raw), user), exc.code, str(exc)))
        return Lookup(tuple(found), tuple(refused))

    def _verified(self, key: bytes, raw: bytes, now: float) -> Found:
        verified = verify_presence(key, raw, self.trust, now)
        certificate = verified.certificate
        online = verified.presence.is_online(now)
        if online:
            # The record was judged as its certificate stood when it was signed; a
            # handshake needs the certificate valid now, so an expired one cannot answer.
            self.trust.verify(certificate.raw, now)
        return Found(certificate.user_id, certificate.device_id, online, verified)

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
            self.signal_timeouts += 1
            raise SignalTimeout(f"{user}/{device} did not answer through the supernodes") from None
        finally:
            self._waiting.pop(index, None)
        self.signal_timeouts = 0
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
        try:
            self.core.endpoint.receive_datagram(bytes(body.payload), sender, now)
        except RemoteError as exc:
            # A bad relayed datagram changes nothing; the endpoint's own checks refused it.
            self.drops[exc.code.name] += 1
            peer = (str(body.from_user), str(body.from_device))
            if exc.code in CERTIFICATE_REASONS and not self._calling(peer):
                self._refuse(f"{peer[0]}/{peer[1]}", exc.code, str(exc), incoming=True)
        self.adapter.poke()

    def _calling(self, peer: Device) -> bool:
        """Whether we wait for our own handshake with ``peer`` (its failure is ours to tell)."""
        index = self._by_peer.get(peer)
        return index is not None and index in self._waiting

    def route(self, event: object) -> bool:
        """Take an endpoint event that belongs to a peer session; False otherwise."""
        if isinstance(event, SessionEstablished):
            return self._established(event)
        index = getattr(event, "index", None)
        peer = self._by_index.get(index) if isinstance(index, int) else None
        if peer is None:
            return False
        if isinstance(event, SessionFailed):
            self._failed(peer, event)
        elif isinstance(event, MessageReceived):
            self.on_message(peer, event.message)
        elif isinstance(event, MediaReceived):
            self.on_media(event)
        return True

    def _failed(self, peer: Device, event: SessionFailed) -> None:
        self._forget(event.index)
        name = f"{peer[0]}/{peer[1]}"
        error = PeerUnreachable(f"{name}: {event.reason}")
        if event.code in CERTIFICATE_REASONS:
            error = refused_error([self._refuse(name, event.code, event.reason)])
        waiter = self._waiting.get(event.index)
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _refuse(
        self, peer: str, code: ErrorCode, detail: str, *, incoming: bool = False
    ) -> Refusal:
        refusal = Refusal(peer, _reason(code, detail), time.time(), incoming)
        self.refusals.append(refusal)
        self.refused += 1
        self._refusal.set()
        self._refusal = asyncio.Event()
        return refusal

    async def wait_for_refusals(self, count: int) -> None:
        """Return once :attr:`refused` has reached ``count``."""
        while self.refused < count:
            await self._refusal.wait()

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


def refused_error(refusals: Sequence[Refusal]) -> PeerRefused:
    """The error that names each refused device and why, for ``edge ctl``."""
    return PeerRefused("; ".join(f"{r.peer}: {r.reason}" for r in refusals))


def _reason(code: ErrorCode, detail: str) -> str:
    """What a refusal says: "certificate revoked (serial 12)", or the error's own text."""
    phrase = CERTIFICATE_REASONS.get(code)
    if phrase is None:
        return detail[:MAX_REASON]
    # The trust store names the serial in its text; its errors carry no field for it.
    serial = _SERIAL.search(detail)
    return f"{phrase} (serial {serial.group(1)})" if serial else phrase


def _record_owner(raw: bytes, user: str) -> str:
    """``user/device`` as a refused record claims it (unverified: for the user to read)."""
    try:
        tbs = parse_certificate(parse_presence(raw).certificate).tbs
    except EdgeError:
        return f"{user}/?"
    return f"{tbs.user_id}/{tbs.device_id}"

"""What a supernode does for the devices attached to it: admission, host cache,
presence, rendezvous.

How it works: :class:`ClientService` sits above the supernode's
:class:`~edge.supernode.overlay.OverlayService` and drives it as a sans-IO
core. Devices reach the supernode in Noise sessions on the same UDP port as
the overlay, or over TCP where UDP does not get through; UDP messages arrive as
the overlay's pass-through events, TCP ones through :meth:`ClientService.stream_event`,
both answered through one :class:`~edge.supernode.sessions.SessionTable`, and
:data:`ClientService._HANDLERS` says who answers each type.

* ATTACH: :class:`~edge.supernode.admission.Admission` decides — attached,
  or (above the soft limit, or full) ATTACH_RESULT BUSY naming peers known to
  have room. The table of attached devices is
  :class:`~edge.supernode.attach.Attachments`.
* HOSTCACHE_REQUEST: a page of the host cache this supernode offers (live
  peers by freshness and round-trip time, full ones left out, login servers
  last).
* Load gossip: every :data:`GOSSIP_INTERVAL` a few peers from the routing
  table are pinged; their PONGs carry their load and give the round-trip
  time, which feed the admission's table. The same round detaches devices
  gone silent.
* REVOCATION_LIST, from a device or another supernode: the login server's
  signed list, applied when newer (records of revoked certificates are
  dropped at once, not at their expiry) and passed on by gossip.
* DIALBACK_REQUEST and DIALBACK_CONFIRM go to the
  :class:`~edge.supernode.dialback.DialbackService`; its probes come up as
  :class:`~edge.supernode.dialback.SendProbe` events for the adapter to send
  from a socket of their own, its results go back in the session.
* :meth:`ClientService.detach_all` (at shutdown) sends every attached device
  DETACH with the best alternatives, so they move before the port closes.

* PRESENCE_PUBLISH: the record is checked completely before the overlay sees
  it (:func:`~edge.overlay.presence.verify_presence`: certificate, signature,
  key, times), and it must be the record of the user whose certificate the
  session verified, so a client speaks only for itself. A refused record is
  answered at once with the refusal's code; a valid one is published at the
  ``k`` closest supernodes and answered with how many took it.
* PRESENCE_LOOKUP: a FIND_VALUE for the user's key; the answer carries the
  records found (at most :data:`MAX_RECORDS`), each still signed by its
  owner, so the asker verifies them itself and the supernode cannot forge
  presence; ``NOT_FOUND`` when there are none.

Both answers are PRESENCE_RESULT with the request's id.

A device that publishes its presence here without ATTACH is attached on the
way unless this supernode is full (it chose this supernode; a full one says
BUSY).

Rendezvous. Signalling is delivered to devices attached here. SIGNAL_FORWARD from a client
carries opaque bytes for another user (the two clients' own Noise session:
its handshake first, then call signalling inside it, so supernodes see only
ciphertext) and becomes SIGNAL_RELAYED, stamped with the sender's certified
user and device and the address its session comes from — its reflexive
address as a third party sees it, which the callee uses for hole punching.
When the callee is attached here it is delivered at once; otherwise the
callee's presence records name the supernodes it is attached to, and each
gets the SIGNAL_RELAYED over the overlay (a session opened with the key the
record names). A supernode hands SIGNAL_RELAYED only to devices attached to
it and never forwards it again, so a message crosses at most two supernodes.
The stamped fields are routing hints; the clients' session authenticates who
is who.

Login tunnels. LOGIN_TUNNEL_OPEN, _DATA and _CLOSE go to
:class:`~edge.supernode.tunnel.LoginTunnels`: a device that reaches this
supernode but not the login server carries its own session with the login
server through here, as opaque bytes. The core's messages for the device are
sent in the device's session; its TCP work (:class:`~edge.supernode.tunnel.OpenLogin`
and the like) goes up as events for the adapter (:mod:`edge.supernode.logintcp`),
which reports back to :attr:`ClientService.tunnels` and then calls
:meth:`ClientService.pump_tunnels`. A device's tunnels end with its session.

Every other event
goes up unchanged through :meth:`next_event`. Caps: requests waiting for the
overlay (beyond it a client is told BUSY); the overlay caps the rest.
"""

import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from edge.crypto.cert import TrustStore
from edge.crypto.revocation import RevocationCache, verify_revocations
from edge.errors import RemoteError
from edge.overlay.errors import OverlayError, PresenceRefused
from edge.overlay.ids import id_to_bytes, key_for_user
from edge.overlay.presence import parse_presence, verify_presence
from edge.sansio import Address
from edge.session.events import MessageReceived, SessionFailed
from edge.supernode.admission import Admission, Admitted
from edge.supernode.attach import Attachments
from edge.supernode.dialback import DialbackService, Requester, SendProbe
from edge.supernode.overlay import Found, OverlayService, PeerHeard, Published
from edge.supernode.sessions import SessionTable
from edge.supernode.tunnel import LoginTunnels, TunnelMessage
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import build_signed_revocation_list, parse_signed_revocation_list

MAX_RECORDS = 8
"""Records in one PRESENCE_RESULT: a user's devices online at once."""

GOSSIP_INTERVAL = 30.0
"""Seconds between rounds of load gossip: half the age at which a load report is
ignored, so a supernode's view of its peers' loads stays fresh."""
GOSSIP_FANOUT = 4
"""Supernodes pinged per round."""

RELAYED_FIELDS = ("to_user", "to_device", "from_user", "from_device", "from_address")


@dataclass(frozen=True)
class ClientLimits:
    max_waiting: int = 1024
    """PRESENCE requests, and signalling waiting for a lookup, from all clients together."""


_Handler = Callable[["ClientService", MessageReceived, float], None]


@dataclass(frozen=True)
class _Asker:
    index: int
    request_id: int


class ClientService:
    """Presence for attached clients, over an :class:`OverlayService`; a DatagramCore."""

    def __init__(
        self,
        overlay: OverlayService,
        trust: TrustStore,
        *,
        limits: ClientLimits | None = None,
        admission: Admission | None = None,
        rng: random.Random | None = None,
        dialback: DialbackService | None = None,
        verify: Callable[[bytes, bytes, TrustStore, float], Any] = verify_presence,
        tunnels: LoginTunnels | None = None,
    ) -> None:
        self.overlay = overlay
        self.sessions = SessionTable(overlay.endpoint)
        self.trust = trust
        self.limits = limits or ClientLimits()
        self._rng = rng or random.SystemRandom()
        self.admission = admission or Admission(overlay.node.contact.address)
        self.attached = Attachments(self.admission, self._rng)
        overlay.report_load = lambda: min(100, round(100 * self.admission.load))
        self._verify = verify
        self.dialback = dialback
        self.tunnels = LoginTunnels(()) if tunnels is None else tunnels
        """Login tunnels; without login servers configured, every OPEN is refused."""
        self.revocations = RevocationCache(trust)
        self._latest_list: dict[bytes, bytes] = {}
        """The newest signed revocation list applied, per issuer, to pass on."""
        self._waiting: dict[int, _Asker] = {}
        self._forwards: dict[int, dict[str, Any]] = {}
        self._gossip_at: float | None = None
        self._events: deque[object] = deque()
        self.counts: Counter[str] = Counter()
        """``publish``, ``lookup``, ``published``, ``found``, ``not-found``, ``busy``,
        and ``refused-<reason>`` for each refused record."""

    def join(self, bootstrap: Iterable[Address], now: float) -> None:
        """Join the overlay (:meth:`OverlayService.join`); :class:`Joined` comes up as an event."""
        self.overlay.join(bootstrap, now)
        self._gossip_at = now + GOSSIP_INTERVAL
        self._pump(now)

    def detach_all(self, code: ErrorCode = ErrorCode.UNAVAILABLE, now: float = 0.0) -> int:
        """Tell every attached device to go elsewhere (shutting down); how many were told."""
        alternatives = self.attached.best_alternatives(now)
        told = 0
        for index in self.attached.sessions():
            if self.sessions.is_established(index):
                body = {"code": code, "alternatives": alternatives}
                self.sessions.send(index, MsgType.DETACH, body)
                told += 1
            self.attached.detach_session(index)
        self.counts["detached"] += told
        return told

    # -- the DatagramCore protocol, passed through to the overlay

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        try:
            self.overlay.receive_datagram(data, addr, now)
        finally:
            self._pump(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        return self.overlay.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        dialback = self.dialback.get_timer() if self.dialback is not None else None
        timers = [self.overlay.get_timer(), self._gossip_at, dialback, self.tunnels.get_timer()]
        return min((t for t in timers if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        self.overlay.handle_timer(now)
        if self._gossip_at is not None and self._gossip_at <= now:
            self._gossip(now)
        if self.dialback is not None:
            self.dialback.handle_timer(now)
            self._dialback_actions()
        self.tunnels.handle_timer(now)
        self.pump_tunnels()
        self._pump(now)

    def _gossip(self, now: float) -> None:
        """Ask a few supernodes how full they are, and forget devices gone silent."""
        self._gossip_at = now + GOSSIP_INTERVAL
        contacts = self.overlay.node.table.contacts()
        for contact in self._rng.sample(contacts, min(GOSSIP_FANOUT, len(contacts))):
            self.overlay.ping(contact, now)
        self.counts["detached-idle"] += len(self.attached.detach_idle(now))

    def next_event(self) -> object | None:
        return self._events.popleft() if self._events else None

    def stream_event(self, index: int, event: object, now: float) -> None:
        """An event of the TCP session numbered ``index`` (its own events say index 0)."""
        if isinstance(event, MessageReceived):
            handler = self._HANDLERS.get(event.message.type)
            if handler is None:
                self.counts["stream-unhandled"] += 1
                return
            self.attached.touch(index, now)
            handler(self, MessageReceived(index, event.message), now)
            self._pump(now)
        elif isinstance(event, SessionFailed):
            self.attached.detach_session(index)
            self.sessions.remove_stream(index)
            self.tunnels.session_gone(index)
            self.pump_tunnels()

    def _address_of(self, index: int) -> Address | None:
        contact = self.overlay.contact_of(index)
        return self.sessions.address(index, contact.address if contact is not None else None)

    # -- events

    def _pump(self, now: float) -> None:
        while (event := self.overlay.next_event()) is not None:
            handler = (
                self._HANDLERS.get(event.message.type)
                if isinstance(event, MessageReceived)
                else None
            )
            if handler is not None:
                assert isinstance(event, MessageReceived)
                self.attached.touch(event.index, now)
                handler(self, event, now)
            elif isinstance(event, PeerHeard):
                self._peer_heard(event, now)
            elif isinstance(event, Found) and event.tag in self._forwards:
                self._forward_found(event, now)
            elif isinstance(event, Found | Published) and event.tag in self._waiting:
                self._answer(event)
            else:
                if isinstance(event, SessionFailed):
                    self.attached.detach_session(event.index)
                    self.tunnels.session_gone(event.index)
                    self.pump_tunnels()
                self._events.append(event)

    def _publish(self, event: MessageReceived, now: float) -> None:
        self.counts["publish"] += 1
        body = event.message.body
        record = bytes(body.record)
        try:
            verified = self._verify_for_session(event.index, record, now)
        except (PresenceRefused, RemoteError) as exc:
            reason = getattr(exc, "reason", exc.code.name.lower())
            self.counts[f"refused-{reason}"] += 1
            self._result(event.index, body.request_id, exc.code)
            return
        device = (verified.certificate.user_id, verified.certificate.device_id)
        if not self._admit_publisher(event.index, device, now):
            self.counts["busy"] += 1
            self._result(event.index, body.request_id, ErrorCode.BUSY)
            return
        key = key_for_user(verified.presence.user_id)
        self._start(event.index, body.request_id, lambda: self.overlay.publish(key, record, now))

    def _verify_for_session(self, index: int, record: bytes, now: float) -> Any:
        user = self.sessions.peer(index).user_id
        wall = now + self.overlay.wall_offset
        verified = self._verify(id_to_bytes(key_for_user(user)), record, self.trust, wall)
        return verified

    def _lookup(self, event: MessageReceived, now: float) -> None:
        self.counts["lookup"] += 1
        body = event.message.body
        key = key_for_user(body.user_id)
        self._start(event.index, body.request_id, lambda: self.overlay.find(key, now))

    def _start(self, index: int, request_id: int, operation: Callable[[], int]) -> None:
        if len(self._waiting) >= self.limits.max_waiting:
            self.counts["busy"] += 1
            self._result(index, request_id, ErrorCode.BUSY)
            return
        try:
            tag = operation()
        except OverlayError as exc:
            self._result(index, request_id, exc.code)
            return
        self._waiting[tag] = _Asker(index, request_id)

    def _answer(self, event: Found | Published) -> None:
        asker = self._waiting.pop(event.tag)
        if isinstance(event, Published):
            self.counts["published"] += 1
            refusal = event.refusal if event.refusal is not ErrorCode.OK else ErrorCode.UNAVAILABLE
            code = ErrorCode.OK if event.stored else refusal
            self._result(asker.index, asker.request_id, code, stored=event.stored)
            return
        records = event.records[:MAX_RECORDS]
        self.counts["found" if records else "not-found"] += 1
        code = ErrorCode.OK if records else ErrorCode.NOT_FOUND
        self._result(asker.index, asker.request_id, code, records=records)

    # -- revocation lists, spread by gossip

    def _on_revocations(self, event: MessageReceived, now: float) -> None:
        """A signed list from anyone: apply it if newer, drop what it revokes, pass it on.

        Devices pass on what they fetched from the login server; supernodes pass
        a newer list to a few peers, and answer a stale one with the newer they
        hold, so a revocation reaches every holder in a few rounds.
        """
        raw = build_signed_revocation_list(event.message.body)
        try:
            verified = verify_revocations(raw, self.trust, now + self.overlay.wall_offset)
        except RemoteError as exc:
            self.counts[f"revocations-refused-{exc.code.name.lower()}"] += 1
            return
        if self.revocations.apply(verified):
            self.counts["revocations-applied"] += 1
            self._latest_list[verified.issuer_key_id] = verified.raw
            dropped = self.overlay.node.store.revalidate(now + self.overlay.wall_offset)
            self.counts["records-revoked"] += dropped
            self._spread(verified.raw, now)
            return
        newer = self._latest_list.get(verified.issuer_key_id)
        known = self.revocations.known_version(verified.issuer_key_id)
        if newer is not None and verified.version < known:
            self._send_list(event.index, newer)

    def _spread(self, raw: bytes, now: float) -> None:
        contacts = self.overlay.node.table.contacts()
        for contact in self._rng.sample(contacts, min(GOSSIP_FANOUT, len(contacts))):
            self.overlay.send_to_contact(
                contact, MsgType.REVOCATION_LIST, parse_signed_revocation_list(raw), now
            )

    def _send_list(self, index: int, raw: bytes) -> None:
        if self.sessions.is_established(index):
            body = parse_signed_revocation_list(raw)
            self.sessions.send(index, MsgType.REVOCATION_LIST, body)
            self.counts["revocations-answered"] += 1

    # -- dial-back tests for devices that would be supernodes

    def _on_dialback(self, event: MessageReceived, now: float) -> None:
        if self.dialback is None:
            self.counts["dialback-off"] += 1
            return
        peer = self.sessions.peer(event.index)
        address = self._address_of(event.index)
        if address is None:
            return
        who = Requester(event.index, peer.user_id, peer.device_id, address)
        self.dialback.receive(who, event.message, now)
        self._dialback_actions()

    def _dialback_actions(self) -> None:
        assert self.dialback is not None
        while (action := self.dialback.next_action()) is not None:
            if isinstance(action, SendProbe):
                # Leaves from a socket the device's session never used: the adapter's job.
                self._events.append(action)
            elif self.sessions.is_established(action.index):
                self.sessions.send(action.index, MsgType.DIALBACK_RESULT, action.body())

    # -- login tunnels: a device's own session with the login server, carried

    def _on_tunnel(self, event: MessageReceived, now: float) -> None:
        peer = self.sessions.peer(event.index)
        self.tunnels.receive(event.index, (peer.user_id, peer.device_id), event.message, now)
        self.pump_tunnels()

    def pump_tunnels(self) -> None:
        """Send the tunnels' messages to their devices; their TCP work goes up as events."""
        while (action := self.tunnels.next_action()) is not None:
            if not isinstance(action, TunnelMessage):
                self._events.append(action)
            elif self.sessions.is_established(action.index):
                self.sessions.send(action.index, action.type, action.body)

    # -- rendezvous: signalling between clients, through one or two supernodes

    def _admit_publisher(self, index: int, device: tuple[str, str], now: float) -> bool:
        """A device publishing here chose this supernode: let it in unless it is full."""
        if self.attached.is_attached(device):
            return True
        hops = self.admission.limits.max_hops
        return isinstance(self.attached.attach(index, device, now, redirects=hops), Admitted)

    # -- attaching and the host cache

    def _on_attach(self, event: MessageReceived, now: float) -> None:
        body = event.message.body
        peer = self.sessions.peer(event.index)
        outcome = self.attached.attach(
            event.index, (peer.user_id, peer.device_id), now, redirects=body.redirects
        )
        load = min(100, round(100 * self.admission.load))
        answer: dict[str, Any] = {"request_id": body.request_id, "load": load}
        if isinstance(outcome, Admitted):
            self.counts["attached"] += 1
            answer |= {"code": ErrorCode.OK, "alternatives": []}
        else:
            self.counts["redirected"] += 1
            alternatives = self.attached.alternatives(outcome.alternatives)
            answer |= {"code": ErrorCode.BUSY, "alternatives": alternatives}
        self.sessions.send(event.index, MsgType.ATTACH_RESULT, answer)

    def _on_hostcache(self, event: MessageReceived, now: float) -> None:
        body = event.message.body
        total, entries = self.attached.host_cache_page(now, body.offset)
        answer = {
            "request_id": body.request_id,
            "total": total,
            "offset": body.offset,
            "entries": entries,
        }
        self.sessions.send(event.index, MsgType.HOSTCACHE, answer)

    def _peer_heard(self, event: PeerHeard, now: float) -> None:
        try:
            self.admission.note_peer(event.contact.address, now, rtt=event.rtt, load=event.load)
        except RemoteError:
            self.counts["bad-load-report"] += 1

    # -- rendezvous: signalling between clients, through one or two supernodes

    def _forward(self, event: MessageReceived, now: float) -> None:
        """A client's signalling for another user: stamp who sent it, and route it."""
        self.counts["forward"] += 1
        body = event.message.body
        peer = self.sessions.peer(event.index)
        address = self._address_of(event.index)
        relayed = {
            "to_user": body.to_user,
            "to_device": body.to_device,
            "from_user": peer.user_id,
            "from_device": peer.device_id,
            "from_address": address or ("0.0.0.0", 0),
            "payload": bytes(body.payload),
        }
        if self._deliver(relayed):
            return
        if len(self._forwards) >= self.limits.max_waiting:
            self.counts["forward-busy"] += 1
            return
        try:
            tag = self.overlay.find(key_for_user(body.to_user), now)
        except OverlayError:
            self.counts["forward-busy"] += 1
            return
        self._forwards[tag] = relayed

    def _relayed(self, event: MessageReceived, now: float) -> None:
        """Signalling another supernode routed here: hand it to the device if it is ours."""
        body = event.message.body
        relayed = {name: getattr(body, name) for name in RELAYED_FIELDS}
        relayed["payload"] = bytes(body.payload)
        if not self._deliver(relayed):
            self.counts["relayed-not-here"] += 1

    def _deliver(self, relayed: dict[str, Any]) -> bool:
        """Send to the addressed devices attached here; False when none is."""
        targets = self.attached.sessions_of(relayed["to_user"], relayed["to_device"])
        for index in targets:
            if self.sessions.is_established(index):
                self.sessions.send(index, MsgType.SIGNAL_RELAYED, relayed)
                self.counts["delivered"] += 1
        return bool(targets)

    def _forward_found(self, event: Found, now: float) -> None:
        """The callee's presence records name its supernodes: pass the signalling on."""
        relayed = self._forwards.pop(event.tag)
        own = self.overlay.node.contact.address
        sent: set[Address] = set()
        for raw in event.records:
            try:
                presence = parse_presence(raw)
            except RemoteError:
                continue
            if presence.supernode in sent or presence.supernode == own:
                continue
            sent.add(presence.supernode)
            self.overlay.send_to_node(
                presence.supernode, presence.supernode_key, MsgType.SIGNAL_RELAYED, relayed, now
            )
        self.counts["forwarded" if sent else "forward-not-found"] += 1

    def _result(
        self,
        index: int,
        request_id: int,
        code: ErrorCode,
        *,
        stored: int = 0,
        records: tuple[bytes, ...] = (),
    ) -> None:
        if not self.sessions.is_established(index):
            self.counts["asker-gone"] += 1
            return
        body = {"request_id": request_id, "code": code, "stored": stored, "records": list(records)}
        self.sessions.send(index, MsgType.PRESENCE_RESULT, body)

    _HANDLERS: ClassVar[dict[MsgType, _Handler]] = {
        MsgType.PRESENCE_PUBLISH: _publish,
        MsgType.PRESENCE_LOOKUP: _lookup,
        MsgType.SIGNAL_FORWARD: _forward,
        MsgType.SIGNAL_RELAYED: _relayed,
        MsgType.ATTACH: _on_attach,
        MsgType.HOSTCACHE_REQUEST: _on_hostcache,
        MsgType.REVOCATION_LIST: _on_revocations,
        MsgType.DIALBACK_REQUEST: _on_dialback,
        MsgType.DIALBACK_CONFIRM: _on_dialback,
        MsgType.LOGIN_TUNNEL_OPEN: _on_tunnel,
        MsgType.LOGIN_TUNNEL_DATA: _on_tunnel,
        MsgType.LOGIN_TUNNEL_CLOSE: _on_tunnel,
    }
    """The client messages a supernode answers, and who answers each."""

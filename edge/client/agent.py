"""``edge agent``: the device daemon — logged in, attached to a supernode, present.

How it starts:

1. Its keys (``device.key``, made at first start) and certificate
   (``device.cert``): it logs in to the login server it pins, enrolling with
   the password from ``[account] password_file`` when it holds no
   certificate yet, else renewing with its device key alone. The issuer's
   signed revocation list comes on the same session.
2. Its port P, as the seed's client chose it (:mod:`edge.client.ports`): UDP
   for its sessions and STUN tests (:class:`~edge.client.port.PortCore`), TCP
   for direct TCP connections from other devices (:mod:`edge.client.direct`).

3. Its supernode: the ladder races the best supernodes of its host cache
   (bootstrap list first time) over UDP, TCP, TCP 80 and TCP 443
   (:mod:`edge.client.uplink`), attaches (following redirects), and hands the
   supernode the revocation list. The host cache is saved atomically.
4. Its presence: a record signed with its certified key, naming its
   supernode and its candidates, published at the supernode and signed again
   every :data:`~edge.overlay.presence.REFRESH_EVERY` seconds. Over UDP the
   connectivity self-test (RFC 5780) runs from port P against the supernode
   and adds the server-reflexive candidate it finds.

When the supernode goes (DETACH, or the session ends) the agent goes back to
step 3 after a pause that doubles up to a minute, with jitter, preferring
the alternatives it was handed. When it stops it publishes a record that says
"last seen" rather than "online".

Then, on behalf of ``edge ctl``: sessions with other devices through the
supernodes (:mod:`edge.client.peers`), messages in them with a receipt, or
sealed into the login server's mailbox when no device of the user answers
(fetched at the next login); calls (:mod:`edge.client.calls`) with host,
reflexive and relayed candidates — the relay allocated over UDP from port P
at a configured standard TURN server or the login server's, or over the TCP
connection the link took when only TCP gets out; files
(:mod:`edge.client.transfers`); the buddy list, synced at login; and, when
the operator allows it, promotion to supernode (:mod:`edge.client.promote`).
``edge ctl status`` shows all of it.
"""

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from edge.client import buddies, hostcache, mailbox
from edge.client.call import Call, CallManager
from edge.client.calls import CallDriver
from edge.client.config import AgentConfig
from edge.client.direct import DirectTcp
from edge.client.errors import PeerUnreachable, UplinkFailed
from edge.client.files import TransferFailed
from edge.client.login import Credentials, LoginSession, login
from edge.client.peers import Found, Peers
from edge.client.port import PortCore, relay_address
from edge.client.ports import PortChoice, bind_both, choose
from edge.client.promote import PromotionDriver
from edge.client.promotion import Promotion, Thresholds
from edge.client.transfers import TransferDriver
from edge.client.uplink import Ladder, Link, attach, connect
from edge.crypto.cert import TrustStore, read_certificate
from edge.crypto.keys import DeviceKeys
from edge.crypto.revocation import RevocationCache, verify_revocations
from edge.errors import EdgeError
from edge.overlay.presence import REFRESH_EVERY, PresenceCandidate, make_presence, next_sequence
from edge.runtime.adapters import DatagramAdapter, StreamAdapter, open_stream_client
from edge.runtime.config import write_atomic
from edge.runtime.control import ControlServer, JsonObject
from edge.sansio import Address
from edge.session.datagram import DatagramEndpoint
from edge.session.handshake import Identity
from edge.stun.events import AllocationSucceeded, DataReceived, NatReport, TurnFailed
from edge.stun.nat import ConnectivityTest
from edge.stun.turnclient import TurnClient, TurnStream
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import (
    BuddyOp,
    CandidateKind,
    MailKind,
    Message,
    ReceiptStatus,
    Transport,
    build_signed_revocation_list,
    decode,
    encode,
    parse_certificate,
    parse_signed_revocation_list,
)

_log = logging.getLogger(__name__)

KEY_FILE = "device.key"
CERT_FILE = "device.cert"
HOSTCACHE_FILE = "hostcache.json"
BUDDIES_FILE = "buddies.json"
BUDDY_OPS = {
    "add": BuddyOp.ADD_REQUEST,
    "accept": BuddyOp.ACCEPT,
    "deny": BuddyOp.DENY,
    "remove": BuddyOp.REMOVE,
    "block": BuddyOp.BLOCK,
    "unblock": BuddyOp.UNBLOCK,
}
RECONNECT_FIRST = 1.0
RECONNECT_MAX = 60.0
MAX_INBOX = 200
RECEIPT_TIMEOUT = 10.0
HOST_PRIORITY = (126 << 24) | (65535 << 8) | 255
SRFLX_PRIORITY = (100 << 24) | (65535 << 8) | 255
RELAY_PRIORITY = (0 << 24) | (65535 << 8) | 255
RELAY_TTL = 3600
RELAY_CONNECT_TIMEOUT = 5.0
GOODBYE_TIMEOUT = 1.0
KEEPALIVE_INTERVAL = 15.0
"""Half of the 30 s after which Linux conntrack forgets an unanswered UDP mapping."""
BINDING_INDICATION = bytes.fromhex("0011 0000 2112a442") + bytes(12)
"""A STUN Binding indication (RFC 8489 §6.2), with no attributes: a server answers
nothing, but the NAT on the way sees traffic and keeps the mapping."""


@dataclass
class Presence:
    seq: int = 0
    published_at: float = 0.0
    stored: int = 0
    code: str = ""


class Agent:
    """One device on the network; see the module docstring."""

    def __init__(self, config: AgentConfig, *, password: str | None = None) -> None:
        self.config = config
        self._password = password
        self.trust = TrustStore([config.issuer_key])
        self.revocations = RevocationCache(self.trust)
        self.keys = DeviceKeys.load_or_generate(config.state_dir / KEY_FILE)
        self.certificate = b""
        self._revocation_list = b""
        self._relays: list[RelayServer] = []
        """TURN servers to allocate at over UDP, with credentials: configured ones first."""
        self._login_relay: tuple[str, str] | None = None
        """The login server's TURN credentials, for the supernode a TCP link reaches."""
        self._turn_stream: StreamAdapter | None = None
        self.relayed: Address | None = None
        self.port: PortChoice | None = None
        self.link: Link | None = None
        self.nat: NatReport | None = None
        self.presence = Presence()
        self.last_error = ""
        self._rng = random.SystemRandom()
        self._cache, warning = hostcache.load_or_empty(config.state_dir / HOSTCACHE_FILE)
        if warning:
            _log.warning("%s", warning)
        self.buddies, warning = buddies.load_or_empty(config.state_dir / BUDDIES_FILE)
        if warning:
            _log.warning("%s", warning)
        self._sockets: list[socket.socket] = []
        self._adapter: DatagramAdapter | None = None
        self._ladder: Ladder | None = None
        self._detached = asyncio.Event()
        self._republish = asyncio.Event()
        """Set when the device's candidates changed: publish at once, not at the refresh."""
        self.online = asyncio.Event()
        """Set while the device is attached and its presence is stored."""
        self._changes = asyncio.Event()
        self._alternatives: list[Address] = []
        self._task: asyncio.Task[None] | None = None
        self.peers: Peers | None = None
        self.calls: CallDriver | None = None
        self.transfers: TransferDriver | None = None
        self.direct: DirectTcp | None = None
        """Direct TCP connections with other devices, on and from port P's TCP side."""

        self.promotion: PromotionDriver | None = None
        self._promoting: asyncio.Task[None] | None = None
        self._keeping: asyncio.Task[None] | None = None
        self.inbox: deque[JsonObject] = deque(maxlen=MAX_INBOX)
        """The latest messages received, newest last, for ``edge ctl messages``."""
        self._receipts: dict[bytes, asyncio.Future[int]] = {}
        self._signal_drops = 0
        self.control = ControlServer(
            config.control_socket,
            {
                "status": self.status,
                "search": self.search,
                "send": self.send_text,
                "messages": self.messages,
                "call": self.call,
                "answer": self.answer,
                "hangup": self.hangup,
                "buddies": self.list_buddies,
                "send-file": self.send_file,
                "files": self.files,
                "buddy": self.change_buddy,
            },
        )

    # -- lifecycle

    async def start(self) -> None:
        await self._login()
        await self._open_port()
        await self.control.start()
        self._task = asyncio.create_task(self._stay_online())
        self._keeping = asyncio.create_task(self._keep_mappings_open())
        if self.promotion is not None and self.config.supernode != "never":
            self._promoting = asyncio.create_task(self.promotion.run())

    async def stop(self) -> None:
        await self._say_goodbye()
        if self._keeping is not None:
            self._keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeping
        if self._promoting is not None:
            self._promoting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._promoting
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.link is not None:
            self.link.close()
        if self._turn_stream is not None:
            self._turn_stream.close()
        await self.control.stop()
        if self._adapter is not None:
            self._adapter.close()
            await self._adapter.wait_closed()
        if self.direct is not None:
            await self.direct.close()

        for sock in self._sockets:
            sock.close()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checked whenever the agent's state changes
        (on or off line, a self-test result)."""
        while not condition():
            await self._changes.wait()

    def _changed(self) -> None:
        self._changes.set()
        self._changes = asyncio.Event()

    async def _say_goodbye(self) -> None:
        """Publish a record that says "last seen now" rather than "online", so that
        nobody tries to reach this device where it no longer is (best effort)."""
        link = self.link
        if link is None or link.closed.is_set() or not self.online.is_set():
            return
        with contextlib.suppress(EdgeError, OSError, TimeoutError):
            await asyncio.wait_for(self._publish(link, online=False), GOODBYE_TIMEOUT)

    async def _keep_mappings_open(self) -> None:
        """Every :data:`KEEPALIVE_INTERVAL`, a datagram to the supernode (in the link's
        session) and to the TURN server (a STUN Binding indication, which asks for no
        answer): a NAT forgets an idle UDP mapping after about 30 s (Linux conntrack's
        default), and the supernode's signalling and the relay's data come in through
        those mappings."""
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            link, turn = self.link, self._core.turn
            if link is not None and link.transport == "udp" and not link.closed.is_set():
                with contextlib.suppress(EdgeError):
                    link.send(MsgType.KEEPALIVE, {"nonce": 0, "sent_ms": 0, "echo": False})
            if turn is not None and not turn.stream and turn.is_allocated:
                self._core.raw_out.append((BINDING_INDICATION, turn.server))
                assert self._adapter is not None
                self._adapter.poke()

    # -- 1. login

    async def _login(self) -> None:
        config = self.config
        path = config.state_dir / CERT_FILE
        held = read_certificate(path) if path.exists() else b""
        password = None if held else self._password
        if not held and password is None:
            raise UplinkFailed(
                "this device holds no certificate yet: give the account's password once "
                "([account] password_file) to enrol it"
            )
        who = Credentials(config.user_id, config.device_id, self.keys)
        session = await login(config.login_address, config.server_key, who, password=password)
        try:
            self.certificate = session.certificate
            write_atomic(config.state_dir / CERT_FILE, self.certificate, 0o600)
            reply = await session.request(
                MsgType.REVOCATION_FETCH, {"known_version": 0}, MsgType.REVOCATION_LIST
            )
            raw = build_signed_revocation_list(reply.body)
            self.revocations.apply(verify_revocations(raw, self.trust, time.time()))
            self._revocation_list = raw
            self._relays, self._login_relay = await _relay_servers(session, config)
            await self._sync_buddies(session)
            await self._fetch_mail(session)
        finally:
            session.close()

    async def _fetch_mail(self, session: LoginSession) -> None:
        """Messages left in the mailbox while this device was away, into the inbox."""
        delivered, unreadable = await mailbox.fetch(session, self.keys.dh)
        for item in delivered:
            if item.kind is not MailKind.MESSAGE:
                continue
            try:
                text = decode(item.content).body.text
            except EdgeError:
                continue  # sealed to us, but not a message we can read: skip it
            self.inbox.append(
                {"from": f"{item.sender}/{item.sender_device}", "text": text,
                 "sent_ms": item.stored_ms, "id": item.message_id.hex(), "offline": True}
            )  # fmt: skip
        if unreadable:
            _log.warning("%d mailbox items could not be opened", len(unreadable))

    async def _renewed_session(self) -> LoginSession:
        """A fresh session with the login server, renewed with the device key alone."""
        config = self.config
        who = Credentials(config.user_id, config.device_id, self.keys)
        return await login(config.login_address, config.server_key, who)

    async def _sync_buddies(self, session: LoginSession) -> None:
        await buddies.sync(session, self.buddies)
        buddies.save(self.buddies, self.config.state_dir / BUDDIES_FILE)

    # -- 2. port P

    async def _open_port(self) -> None:
        try_bind, held = bind_both("0.0.0.0")
        self.port = choose(self.config.state_dir, self.config.port, try_bind, self._rng)
        udp, tcp = held
        self._sockets = [tcp]
        loop = asyncio.get_running_loop()
        wall_offset = time.time() - loop.time()
        endpoint = DatagramEndpoint(Identity(self.keys, self.certificate), self.trust,
                                    wall_offset=wall_offset)  # fmt: skip
        self._core = PortCore(endpoint)
        _, adapter = await loop.create_datagram_endpoint(
            lambda: DatagramAdapter(self._core, self._on_event), sock=udp
        )
        self._adapter = adapter
        self._ladder = Ladder(Identity(self.keys, self.certificate), self.trust, endpoint,
                              adapter, wall_offset)  # fmt: skip
        self.peers = Peers(self._core, adapter, self.trust)
        self.peers.on_message = self._peer_message
        self._core.forward = self._forward_signal
        manager = CallManager(self.config.user_id, auto_answer=self.config.auto_answer)
        self.calls = CallDriver(manager, self.peers, self._core, adapter.poke)
        self.peers.on_media = self.calls.on_media
        self._core.checks = self.calls.on_stun
        self.calls.preopen = partial(_preopen, udp)
        self.calls.permit = self._permit
        self.direct = DirectTcp(adapter.datagram_received)
        self._core.tcp_out = self.direct.send
        await self.direct.listen(tcp)

        self.transfers = TransferDriver(self.peers, self.config.state_dir / "downloads")
        self.promotion = self._promotion_driver(wall_offset)
        _log.info("port %d: %s", self.port.port, self.port.note)

    def _promotion_driver(self, wall_offset: float) -> PromotionDriver:
        config = self.config
        hold = config.promotion_hold
        thresholds = Thresholds(promote_hold=hold, demote_hold=hold, min_dwell=hold)
        policy = Promotion(
            config.supernode, self.trust, user_id=config.user_id, device_id=config.device_id,
            thresholds=thresholds, wall_offset=wall_offset,
        )  # fmt: skip
        assert self._ladder is not None and self.port is not None
        return PromotionDriver(
            policy, keys=self.keys, certificate=self.certificate, issuer_key=config.issuer_key,
            state_dir=config.state_dir, port=self.port.port,
            bandwidth_bps=config.bandwidth_kbps * 1000.0, ladder=self._ladder,
            cache=self._cache, core=self._core, attached=lambda: self.link,
        )  # fmt: skip

    def _on_event(self, event: object) -> None:
        if self._ladder is not None and self._ladder.route(event):
            return
        if self.peers is not None and self.peers.route(event):
            return
        if isinstance(event, NatReport):
            self._nat_found(event)
        elif isinstance(event, AllocationSucceeded | DataReceived | TurnFailed):
            self._relay_event(event)

    # -- 3. the supernode, and staying with one

    async def _stay_online(self) -> None:
        pause = RECONNECT_FIRST
        while True:
            try:
                await self._serve_once()
                pause = RECONNECT_FIRST
            except (EdgeError, OSError) as exc:
                self.last_error = str(exc)
                _log.warning("offline: %s; trying again in %.0f s", exc, pause)
            self.presence.stored = 0
            self.online.clear()
            self._changed()
            await asyncio.sleep(pause * self._rng.uniform(0.5, 1.0))
            pause = min(RECONNECT_MAX, pause * 2)

    async def _serve_once(self) -> None:
        link = await self._attach()
        self.link = link
        link.on_message = self._on_message
        self._detached.clear()
        if self._revocation_list:
            link.send(MsgType.REVOCATION_LIST, parse_signed_revocation_list(self._revocation_list))
        self._start_self_test(link)
        if link.transport == "tcp":
            await self._start_tcp_relay(link)
        else:
            self._start_relay()
        await self._publish(link)
        while True:
            closed = asyncio.ensure_future(link.closed.wait())
            detached = asyncio.ensure_future(self._detached.wait())
            changed = asyncio.ensure_future(self._republish.wait())
            done, pending = await asyncio.wait(
                {closed, detached, changed},
                timeout=REFRESH_EVERY,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in pending:
                task.cancel()
            if closed in done or detached in done:
                link.close()
                reason = "handed over" if detached in done else link.reason
                raise UplinkFailed(f"left {link.where}: {reason}")
            self._republish.clear()
            await self._publish(link)

    async def _attach(self) -> Link:
        assert self._ladder is not None
        now = time.time
        for address in self.config.bootstrap:
            self._cache.learn(address, now(), source="config")
        order = self._alternatives or [e.address for e in self._cache.ranked(now(), self._rng)]
        self._alternatives = []
        try:
            rung, link = await connect(self._ladder, self._cache, order, now)
            attached = await attach(self._ladder, self._cache, link, now)
        finally:
            self._save_cache()
        _log.info("attached to %s (%s, load %d%%)", attached.link.where, rung, attached.load)
        return attached.link

    def _on_message(self, message: Message) -> None:
        if message.type is MsgType.DETACH:
            self._alternatives = [
                (str(e.address[0]), int(e.address[1])) for e in message.body.alternatives
            ]
            self._detached.set()
        elif message.type is MsgType.SIGNAL_RELAYED and self.peers is not None:
            self.peers.relayed(message.body, asyncio.get_running_loop().time())
        elif message.type is MsgType.REVOCATION_LIST:
            raw = build_signed_revocation_list(message.body)
            with contextlib.suppress(EdgeError):
                if self.revocations.apply(verify_revocations(raw, self.trust, time.time())):
                    self._revocation_list = raw

    def _save_cache(self) -> None:
        try:
            hostcache.save(self._cache, self.config.state_dir / HOSTCACHE_FILE)
        except EdgeError as exc:
            _log.warning("host cache not saved: %s", exc)

    # -- 4. presence

    async def _publish(self, link: Link, *, online: bool = True) -> None:
        candidates = self._candidates(link)
        if self.calls is not None:
            reflexive = self.nat.reflexive if self.nat is not None else None
            self.calls.gather(
                candidates[0].address, reflexive, self.relayed, tcp=self.direct is not None
            )

        record = make_presence(
            self.keys,
            self.certificate,
            supernode=link.supernode,
            supernode_key=link.supernode_key,
            candidates=candidates,
            seq=(seq := next_sequence(self.presence.seq, time.time())),
            now=time.time(),
            online_for=None if online else 0,
        )
        answer = await link.request(
            MsgType.PRESENCE_PUBLISH, {"record": record}, MsgType.PRESENCE_RESULT
        )
        self.presence = Presence(seq, time.time(), answer.body.stored, answer.body.code.name)
        if answer.body.code is not ErrorCode.OK:
            raise UplinkFailed(f"presence refused by {link.where}: {answer.body.code.name}")
        self.online.set()
        self._changed()

    def _candidates(self, link: Link) -> list[PresenceCandidate]:
        assert self.port is not None
        local = (_local_ip_towards(link.supernode), self.port.port)
        found = [PresenceCandidate(CandidateKind.HOST, Transport.UDP, local, HOST_PRIORITY)]
        reflexive = self.nat.reflexive if self.nat is not None else None
        if reflexive is not None and reflexive != local:
            found.append(
                PresenceCandidate(
                    CandidateKind.SERVER_REFLEXIVE, Transport.UDP, reflexive, SRFLX_PRIORITY
                )
            )
        if self.relayed is not None:
            found.append(
                PresenceCandidate(CandidateKind.RELAY, Transport.UDP, self.relayed, RELAY_PRIORITY)
            )
        return found

    def _start_self_test(self, link: Link) -> None:
        if link.transport != "udp" or self._core.stun is not None or self.port is None:
            return
        loop = asyncio.get_running_loop()
        local = (_local_ip_towards(link.supernode), self.port.port)
        self._core.stun = ConnectivityTest(link.supernode, local, loop.time())
        assert self._adapter is not None
        self._adapter.poke()

    def _permit(self, peer: Address) -> None:
        self._core.permit(peer, asyncio.get_running_loop().time())
        assert self._adapter is not None
        self._adapter.poke()

    def _start_relay(self) -> None:
        """Allocate a relayed address at the first TURN server we hold credentials for."""
        if self._core.turn is not None or not self._relays:
            return
        server = self._relays[0]
        client = TurnClient(server.address, server.username, server.password)
        self._core.turn = client
        client.allocate(asyncio.get_running_loop().time())
        assert self._adapter is not None
        self._adapter.poke()

    async def _start_tcp_relay(self, link: Link) -> None:
        """Where only TCP gets out: allocate at our supernode over the same kind of TCP
        connection the link took (its port, 80 or 443); media then goes relay-tcp."""
        if self._core.turn is not None or self._login_relay is None:
            return
        username, password = self._login_relay
        client = TurnClient(link.address, username, password, stream=True)
        try:
            adapter = await asyncio.wait_for(
                open_stream_client(TurnStream(client), *link.address, self._turn_stream_event),
                RELAY_CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            _log.warning("TURN over TCP to %s: %s", link.where, exc)
            return
        self._turn_stream = adapter
        self._core.turn = client
        self._core.turn_poke = adapter.poke
        if self.calls is not None:
            self.calls.relay_over_tcp = True
        client.allocate(asyncio.get_running_loop().time())
        adapter.poke()

    def _turn_stream_event(self, event: object) -> None:
        if isinstance(event, AllocationSucceeded | DataReceived | TurnFailed):
            self._relay_event(event)

    def _relay_event(self, event: AllocationSucceeded | DataReceived | TurnFailed) -> None:
        if isinstance(event, AllocationSucceeded):
            self.relayed = event.relayed
            _log.info("relayed address %s", _show(event.relayed))
            self._republish.set()
            self._changed()
        elif isinstance(event, TurnFailed):
            _log.warning("TURN: %s", event.reason)
            if self._core.turn is not None and not self._core.turn.is_allocated:
                self._core.turn = None
                self._relays = self._relays[1:]  # try the next server at the next attach
        else:
            self._relayed_datagram(event.peer, event.data)

    def _relayed_datagram(self, peer: Address, data: bytes) -> None:
        """A peer sent ``data`` to our relayed address: a check, or its session's datagram."""
        now = asyncio.get_running_loop().time()
        if data[:1] == b"\xed":
            with contextlib.suppress(EdgeError):
                self._core.endpoint.receive_datagram(data, relay_address(peer), now)
        elif self.calls is not None:
            self.calls.on_stun(data, peer, now, relayed=self.relayed)
        assert self._adapter is not None
        self._adapter.poke()

    def _nat_found(self, report: NatReport) -> None:
        self.nat = report
        self._core.stun = None
        if report.reflexive is not None:
            self._republish.set()
        self._changed()
        _log.info(
            "connectivity self-test: %s, reflexive %s", report.classification, report.reflexive
        )

    # -- other devices

    def _forward_signal(self, data: bytes, user: str, device: str) -> None:
        link = self.link
        if link is None or link.closed.is_set():
            self._signal_drops += 1
            return
        link.send(MsgType.SIGNAL_FORWARD, {"to_user": user, "to_device": device, "payload": data})

    def _peer_message(self, peer: tuple[str, str], message: Message) -> None:
        assert self.peers is not None and self.calls is not None
        assert self.transfers is not None
        index = self.peers.session_of(peer)
        if index is not None and (
            self.calls.on_signal(index, message) or self.transfers.on_message(index, message)
        ):
            return
        body = message.body
        if message.type is MsgType.INSTANT_MESSAGE:
            self.inbox.append(
                {"from": f"{peer[0]}/{peer[1]}", "text": body.text, "sent_ms": body.sent_ms,
                 "id": bytes(body.message_id).hex()}
            )  # fmt: skip
            assert self.peers is not None
            index = self.peers.session_of(peer)
            if index is not None:
                receipt = {"message_id": body.message_id, "status": ReceiptStatus.DELIVERED}
                self.peers.send(index, MsgType.MESSAGE_RECEIPT, receipt)
        elif message.type is MsgType.MESSAGE_RECEIPT:
            waiter = self._receipts.get(bytes(body.message_id))
            if waiter is not None and not waiter.done():
                waiter.set_result(int(body.status))

    def _online_link(self) -> Link:
        link = self.link
        if link is None or link.closed.is_set() or self.peers is None:
            raise PeerUnreachable("this device is not attached to a supernode right now")
        return link

    async def search(self, args: Mapping[str, Any]) -> JsonObject:
        """Where ``args["user"]`` is: each device the overlay knows, verified."""
        assert self.peers is not None
        found = await self.peers.find(self._online_link(), str(args.get("user", "")))
        return {"devices": [_found(f) for f in found]}

    async def send_text(self, args: Mapping[str, Any]) -> JsonObject:
        """Send ``args["text"]`` to every online device of ``args["user"]``, end to end."""
        user, text = str(args.get("user", "")), str(args.get("text", ""))
        link = self._online_link()
        assert self.peers is not None
        devices = [f for f in await self.peers.find(link, user) if f.online]
        if not devices:
            return await self._leave_in_mailbox(user, text)
        delivered = []
        for found in devices:
            with contextlib.suppress(PeerUnreachable):
                if await self._send_one(found, text):
                    delivered.append(f"{found.user}/{found.device}")
        if not delivered:
            # Its records said online, but no device answered: gone since.
            return await self._leave_in_mailbox(user, text)
        return {"delivered_to": delivered, "devices": len(devices)}

    async def _leave_in_mailbox(self, user: str, text: str) -> JsonObject:
        """Nobody online: seal the message to each of the user's devices at the login
        server, which cannot read it; they fetch it when they next log in."""
        content = encode(MsgType.INSTANT_MESSAGE, self._message_body(user, text, os.urandom(16)))
        session = await self._renewed_session()
        try:
            message_id = await mailbox.leave(session, self.trust, user, content)
        except EdgeError as exc:
            raise PeerUnreachable(f"{user} has no device online, and the mailbox: {exc}") from None
        finally:
            session.close()
        return {"delivered_to": [], "devices": 0, "stored_offline": message_id.hex()}

    def _message_body(self, user: str, text: str, message_id: bytes) -> dict[str, Any]:
        return {
            "message_id": message_id,
            "sender": self.config.user_id,
            "recipient": user,
            "sequence": next_sequence(0, time.time()),
            "sent_ms": int(time.time() * 1000),
            "text": text,
        }

    async def _send_one(self, found: Found, text: str) -> bool:
        assert self.peers is not None
        index = await self.peers.session(found.user, found.device)
        message_id = os.urandom(16)
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._receipts[message_id] = waiter
        body = self._message_body(found.user, text, message_id)
        try:
            self.peers.send(index, MsgType.INSTANT_MESSAGE, body)
            return await asyncio.wait_for(waiter, RECEIPT_TIMEOUT) == ReceiptStatus.DELIVERED
        except TimeoutError:
            return False
        finally:
            self._receipts.pop(message_id, None)

    def messages(self, args: Any) -> JsonObject:
        return {"messages": list(self.inbox)}

    async def call(self, args: Mapping[str, Any]) -> JsonObject:
        """Call ``args["user"]``: its first online device, through a session of its own."""
        user = str(args.get("user", ""))
        link = self._online_link()
        assert self.peers is not None and self.calls is not None
        devices = [f for f in await self.peers.find(link, user) if f.online]
        if not devices:
            raise PeerUnreachable(f"{user} has no device online")
        session = await self.peers.session(devices[0].user, devices[0].device)
        call_id = self.calls.place(user, session)
        return {"call": call_id.hex(), "device": f"{devices[0].user}/{devices[0].device}"}

    async def send_file(self, args: Mapping[str, Any]) -> JsonObject:
        """Send the file at ``args["path"]`` to ``args["user"]``'s first online device."""
        user, path = str(args.get("user", "")), Path(str(args.get("path", "")))
        if not path.is_file():
            raise PeerUnreachable(f"no file at {path}")
        link = self._online_link()
        assert self.peers is not None and self.transfers is not None
        devices = [f for f in await self.peers.find(link, user) if f.online]
        if not devices:
            raise PeerUnreachable(f"{user} has no device online")
        session = await self.peers.session(devices[0].user, devices[0].device)
        outcome = await self.transfers.send(session, path)
        if isinstance(outcome, TransferFailed):
            raise PeerUnreachable(f"the transfer failed: {outcome.reason}")
        return {"sent": path.name, "to": f"{devices[0].user}/{devices[0].device}"}

    def files(self, args: Any) -> JsonObject:
        return {"received": list(self.transfers.received) if self.transfers else []}

    async def list_buddies(self, args: Any) -> JsonObject:
        """The buddy list, brought up to date with the login server first."""
        session = await self._renewed_session()
        try:
            await self._sync_buddies(session)
        finally:
            session.close()
        return {"buddies": [_buddy(b) for b in self.buddies.buddies()]}

    async def change_buddy(self, args: Mapping[str, Any]) -> JsonObject:
        """``buddy add|accept|deny|remove|block|unblock USER``, as the login server keeps it."""
        op = BUDDY_OPS.get(str(args.get("op", "")))
        if op is None:
            raise PeerUnreachable(f"buddy takes one of {', '.join(BUDDY_OPS)}")
        user = str(args.get("user", ""))
        session = await self._renewed_session()
        try:
            await buddies.buddy_op(session, self.buddies, op, user)
            buddies.save(self.buddies, self.config.state_dir / BUDDIES_FILE)
        finally:
            session.close()
        found = self.buddies.get(user)
        return {"buddy": _buddy(found) if found else {"user": user, "state": "removed"}}

    def answer(self, args: Any) -> JsonObject:
        return self._act_on_call(lambda call, now: call.answer(now))

    def hangup(self, args: Any) -> JsonObject:
        return self._act_on_call(lambda call, now: call.hangup(now))

    def _act_on_call(self, do: Callable[[Call, float], None]) -> JsonObject:
        if self.calls is None:
            raise PeerUnreachable("this device is not running yet")
        now = asyncio.get_running_loop().time()
        call_id = self.calls.act(None, lambda call: do(call, now))
        return {"call": call_id.hex()}

    # -- ctl

    def status(self, args: Any) -> JsonObject:
        link, nat, port = self.link, self.nat, self.port
        online = link is not None and not link.closed.is_set() and self.presence.stored > 0
        return {
            "user": self.config.user_id,
            "device": self.config.device_id,
            "online": online,
            "port": {"port": port.port, "note": port.note} if port else None,
            "supernode": None if link is None else {
                "address": _show(link.supernode),
                "via": link.where,
                "transport": link.transport,
                "rtt_ms": round(link.rtt * 1000, 1),
            },
            "nat": None if nat is None else {
                "type": nat.classification,
                "reflexive": _show(nat.reflexive) if nat.reflexive else None,
                "mapping": nat.mapping.value,
                "filtering": nat.filtering.value,
            },
            "presence": {
                "stored_on": self.presence.stored,
                "published_at": round(self.presence.published_at),
                "answer": self.presence.code,
            },
            "certificate_expires": _not_after(self.certificate),
            "peers": self.peers.count if self.peers else 0,
            "relay": None if self.relayed is None else _show(self.relayed),
            "calls": self.calls.status() if self.calls else [],
            "supernode_role": self.promotion.status() if self.promotion else None,
            "last_error": self.last_error,
        }  # fmt: skip


@dataclass(frozen=True)
class RelayServer:
    address: Address
    username: str
    password: str


async def _relay_servers(
    session: LoginSession, config: AgentConfig
) -> tuple[list[RelayServer], tuple[str, str] | None]:
    """The TURN servers to try over UDP: the configured ones (any standard TURN
    server), then the login server's relays, credentials left empty being the login
    server's; and those credentials."""
    username = password = ""
    uris: list[str] = []
    try:
        reply = await session.request(
            MsgType.RELAY_REQUEST, {"ttl": RELAY_TTL}, MsgType.RELAY_CREDENTIALS
        )
        username, password = reply.body.username, reply.body.password
        uris = list(reply.body.uris)
    except EdgeError as exc:
        _log.info("no relay credentials from the login server: %s", exc)
    servers = []
    for uri, user, secret in [(t.uri, t.username, t.password) for t in config.turn] + [
        (uri, "", "") for uri in uris
    ]:
        address = _turn_udp_address(uri)
        if address is not None and (user or username):
            servers.append(RelayServer(address, user or username, secret or password))
    return servers, ((username, password) if username else None)


def _turn_udp_address(uri: str) -> Address | None:
    """``turn:HOST:PORT[?transport=udp]`` (RFC 7065) as an address, for UDP only."""
    scheme, _, rest = uri.partition(":")
    target, _, query = rest.partition("?")
    if scheme != "turn" or query not in ("", "transport=udp"):
        return None
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return None
    return (host, int(port))


def _buddy(buddy: buddies.Buddy) -> JsonObject:
    return {
        "user": buddy.user_id,
        "state": buddy.state.name.lower().replace("_", "-"),
        "name": buddy.display_name,
        "note": buddy.note,
    }


def _found(found: Found) -> JsonObject:
    presence = found.presence.presence
    return {
        "device": found.device,
        "online": found.online,
        "supernode": _show(presence.supernode),
        "last_seen": presence.issued_at,
        "candidates": [f"{c.kind.name.lower()} {_show(c.address)}" for c in presence.candidates],
    }


PREOPEN_TTL = 2
"""Hops a mapping-opening packet lives: past our own NAT, dead before the peer's."""


def _preopen(sock: socket.socket, address: Address) -> None:
    """One empty datagram to ``address`` with a low TTL, from port P itself."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, PREOPEN_TTL)
        try:
            sock.sendto(b"", address)
        finally:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, DEFAULT_TTL)


DEFAULT_TTL = 64


def _not_after(certificate: bytes) -> int | None:
    try:
        return int(parse_certificate(certificate).tbs.not_after)
    except EdgeError:
        return None


def _local_ip_towards(address: Address) -> str:
    """The source address this host uses towards ``address`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(address)
        except OSError:
            return "0.0.0.0"
        return str(probe.getsockname()[0])


def _show(address: Address) -> str:
    return f"{address[0]}:{address[1]}"

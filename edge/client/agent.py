"""``edge agent``: the device daemon — logged in, attached to a supernode, present.

How it starts:

1. Its keys (``device.key``, made at first start) and certificate
   (``device.cert``): it logs in to the login server it pins, enrolling with
   the password from ``[account] password_file`` when it holds no
   certificate yet, else renewing with its device key alone. The issuer's
   signed revocation list comes on the same session. When the login server
   cannot be reached at all (refused, no answer; not when it says no) and the
   device holds a certificate, it opens its port, attaches to a supernode
   with that certificate, and logs in through it instead: the same session,
   pinned to the same key, carried end to end in a login tunnel
   (:func:`~edge.client.login.login_through`); later sessions with the login
   server (buddies, the mailbox) do the same over the device's link. A device
   with no certificate has to reach the login server itself once to enrol.
   ``edge ctl status`` says which way it went (``login.via``).
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
the alternatives it was handed. A supernode that goes silent — a handshake
through it times out and it does not answer a host-cache request in 1.5 s,
or two handshakes in a row time out — is marked failed in the host cache and
left the same way, and what was being tried goes once more through the next
supernode. When it stops it publishes a record that says "last seen" rather
than "online".

The network under it is watched (:mod:`edge.client.netwatch`, netlink): when
no route leads to the supernode any more the link is dropped at once (the
device shows offline, "the network went down") and the agent waits for the
network rather than trying; when the network comes back, or the source
address towards the supernode changes, or the interface it leaves by went
down and up, the agent runs the self-test again and republishes its
candidates, reconnecting at once if it had lost its supernode. Calls ride
out the gap by themselves (:mod:`edge.client.call`: a short outage resumes on
the same path, a long one ends path-lost).

Then, on behalf of ``edge ctl``: sessions with other devices through the
supernodes (:mod:`edge.client.peers`; a device whose record or certificate
fails — revoked, expired — is refused, with the reason in the answer and in
``status``), messages in them (:mod:`edge.client.messages`: in order, once,
with receipts, a history kept across restarts, sealed into the login
server's mailbox when no device of the user answers); calls
(:mod:`edge.client.calls`) with host, reflexive, peer-reflexive, relayed and
direct-TCP candidates — the relay allocated over UDP from port P at a
configured standard TURN server or the login server's, or over the TCP
connection the link took when only TCP gets out — and audio from the
configured source into the call and out to the configured sink; files
(:mod:`edge.client.transfers`, resumed after a break); the buddy list, synced
at login; and, when the operator allows it, promotion to supernode
(:mod:`edge.client.promote`). ``edge ctl status`` shows all of it.
"""

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from edge.client import buddies, hostcache, mailbox
from edge.client.call import Call, CallConfig, CallManager
from edge.client.calls import CallDriver
from edge.client.config import AgentConfig
from edge.client.direct import DirectTcp
from edge.client.errors import LoginUnreachable, PeerUnreachable, SignalTimeout, UplinkFailed
from edge.client.files import TransferFailed
from edge.client.login import Credentials, LoginSession, login, login_through
from edge.client.messages import MessageDriver
from edge.client.netwatch import NetWatcher, NetworkSettled, watch_network
from edge.client.peers import Found, Peers, Refusal, refused_error
from edge.client.port import PortCore, relay_address
from edge.client.ports import PortChoice, bind_both, choose
from edge.client.promote import PromotionDriver
from edge.client.promotion import Promotion, Thresholds
from edge.client.transfers import TransferDriver
from edge.client.uplink import Ladder, Link, attach, connect
from edge.crypto.cert import TrustStore, read_certificate
from edge.crypto.keys import DeviceKeys
from edge.crypto.revocation import RevocationCache, verify_revocations
from edge.device import profile as board_profile
from edge.device.board import Board, send_door_command
from edge.errors import EdgeError
from edge.media.pipeline import CallAudio, wait_devices_released
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
    Codec,
    Message,
    Transport,
    build_signed_revocation_list,
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
SOUND_RELEASE_TIMEOUT = 2.0
DEFAULT_DEVICE = "default"
"""The ``[audio]`` capture and playback left unset: a board profile's sound card wins."""
PROBE_TIMEOUT = 1.5
"""How long the supernode may take to answer a HOSTCACHE_REQUEST asked to see if it is alive."""
SILENT_AFTER_TIMEOUTS = 2
"""Handshakes through the supernode that time out in a row before it counts as silent."""
FAILOVER_TIMEOUT = 8.0
"""How long moving to another supernode may take before the request gives up."""
_T = TypeVar("_T")
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

    def __init__(
        self, config: AgentConfig, *, password: str | None = None, pin_factory: Any = None
    ) -> None:
        self.config = config
        self._password = password
        self._board_profile = self._read_board(config)
        self._pin_factory = pin_factory
        """The board's gpiozero pin factory; None: gpiozero's choice (GPIOZERO_PIN_FACTORY)."""
        self.board: Board | None = None
        self._device_refused = 0
        """DEVICE_COMMANDs refused for want of a board."""
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
        self.timings: dict[str, float] = {}
        """Milliseconds from start to logged in (``login_ms``) and from the ladder's first
        attempt to attached (``attach_ms``, the latest), and the wall-clock time presence
        was first stored (``online_at``): what ``edge ctl status`` shows of a start."""
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
        self.chat: MessageDriver | None = None
        """Instant messages: sent, received, their history (created with port P)."""
        self._mail: list[mailbox.Delivered] = []
        """What the mailbox held at login, for the messages to take once they start."""
        self._signal_drops = 0
        self._silent: Address | None = None
        """A supernode that went silent on us: tried last at the next attach."""
        self._netwatch: NetWatcher | None = None
        self.network_changes = 0
        """Times the network under the device changed in a way that matters to it."""
        self._network_down = False
        self._network_back = asyncio.Event()
        """Set when the network came back: a reconnect waiting out its pause goes now."""
        self._tested_at: float | None = None
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
                "door": self.door,
                "button": self.button,
            },
        )

    # -- lifecycle

    async def start(self) -> None:
        began = time.monotonic()
        self.login_via, self.login_at = "", 0.0
        """How the last login went ("direct", or "supernode A:P" through a login
        tunnel), and when."""
        await self._login()
        self.timings["login_ms"] = _ms_since(began)
        if self.port is None:  # a login through a supernode opened it already
            await self._open_port()
        await self._start_board()
        await self.control.start()
        self._netwatch = watch_network(self._network_settled)
        self._task = asyncio.create_task(self._stay_online())
        self._keeping = asyncio.create_task(self._keep_mappings_open())
        if self.promotion is not None and self.config.supernode != "never":
            self._promoting = asyncio.create_task(self.promotion.run())

    async def stop(self) -> None:
        await self._stop_board()
        if self._netwatch is not None:
            self._netwatch.close()
        await self._say_goodbye()
        if self.chat is not None:
            await self.chat.close()  # the history, saved
        if self.calls is not None:
            self.calls.close_audio()  # recordings finished
            # Sound devices released before the process goes (a restart opens them again).
            await asyncio.to_thread(wait_devices_released, SOUND_RELEASE_TIMEOUT)
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
        self.certificate = held
        session = await self._login_session(password)
        try:
            self.certificate = session.certificate
            write_atomic(config.state_dir / CERT_FILE, self.certificate, 0o600)
            if self._ladder is not None:  # port P opened with the held certificate
                identity = Identity(self.keys, self.certificate)
                self._ladder.identity = self._core.endpoint.identity = identity
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
        """Messages left in the mailbox while this device was away, to be ordered and
        de-duplicated with the rest (kept until the messages start, if they have not)."""
        delivered, unreadable = await mailbox.fetch(session, self.keys.dh)
        if self.chat is not None:  # a login through a supernode opened port P first
            self.chat.receive_mail(delivered)
        else:
            self._mail = delivered
        if unreadable:
            _log.warning("%d mailbox items could not be opened", len(unreadable))

    async def _renewed_session(self) -> LoginSession:
        """A fresh session with the login server, renewed with the device key alone."""
        return await self._login_session()

    async def _login_session(self, password: str | None = None) -> LoginSession:
        """A session with the login server: direct when it answers, else (holding a
        certificate) through a login tunnel at the supernode, over this device's link
        or, at start, over one attached for the login alone."""
        config = self.config
        who = Credentials(config.user_id, config.device_id, self.keys)
        try:
            session = await login(config.login_address, config.server_key, who, password=password)
        except LoginUnreachable as exc:
            if password is not None:
                raise UplinkFailed(f"{exc}; enrolling needs the login server once") from None
            _log.warning("%s; logging in through a supernode", exc)
        else:
            self.login_via, self.login_at = "direct", time.time()
            return session
        link, own = self.link, False
        if link is None or link.closed.is_set():
            if self.port is None:
                await self._open_port()
            link, own = await self._attach(), True
        session = await login_through(link, config.server_key, who, own_link=own)
        self.login_via, self.login_at = f"supernode {_show(link.supernode)}", time.time()
        return session

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
        manager = CallManager(self.config.user_id, auto_answer=self.config.auto_answer,
                              config=CallConfig(codecs=self.config.codecs))  # fmt: skip
        self.calls = CallDriver(
            manager,
            self.peers,
            self._core,
            adapter.poke,
            audio=_call_audio(self.config, self._board_profile),
        )
        self.peers.on_media = self.calls.on_media
        self._core.checks = self.calls.on_stun
        self.calls.preopen = partial(_preopen, udp)
        self.calls.permit = self._permit
        self.direct = DirectTcp(adapter.datagram_received)
        self._core.tcp_out = self.direct.send
        await self.direct.listen(tcp)
        self.transfers = TransferDriver(self.peers, self.config.state_dir / "downloads")
        self.chat = MessageDriver(
            self.config.user_id, self.peers, self.config.state_dir, login=self._renewed_session,
            trust=self.trust, wall_offset=wall_offset, mail=self._mail,
        )  # fmt: skip
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
            if self.online.is_set():
                pause = RECONNECT_FIRST  # it served until now: a new failure, back off afresh
            self.presence.stored = 0
            self.online.clear()
            self._changed()
            await self._pause(pause * self._rng.uniform(0.5, 1.0))
            pause = min(RECONNECT_MAX, pause * 2)

    async def _serve_once(self) -> None:
        began = time.monotonic()
        link = await self._attach()
        self.timings["attach_ms"] = _ms_since(began)
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
        self.timings.setdefault("online_at", time.time())
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
        order.sort(key=lambda address: address == self._silent)  # the silent one last
        self._alternatives = []
        try:
            rung, link = await connect(self._ladder, self._cache, order, now)
            attached = await attach(self._ladder, self._cache, link, now)
        finally:
            self._save_cache()
        _log.info("attached to %s (%s, load %d%%)", attached.link.where, rung, attached.load)
        self._silent = None
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
        """Test our connectivity from port P against ``link``'s supernode. A test under
        way gives way to the new one: it measured a network that may be gone."""
        if link.transport != "udp" or self.port is None:
            return
        loop = asyncio.get_running_loop()
        local = (_local_ip_towards(link.supernode), self.port.port)
        self._core.stun = ConnectivityTest(link.supernode, local, loop.time())
        self._tested_at = time.time()
        assert self._adapter is not None
        self._adapter.poke()

    # -- the network under the device

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` before trying the supernodes again, or less when the
        network comes back meanwhile: then the device reconnects at once. With no
        route at all, trying is pointless: wait for the network instead (a minute
        at most, should its return go unnoticed)."""
        wait = RECONNECT_MAX if self._network_down else seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._network_back.wait(), wait)
        self._network_back.clear()

    def _network_settled(self, settled: NetworkSettled) -> None:
        """The network changed (without netlink: the periodic check is due). What
        matters is the way to the supernode: gone, a new source address, or the
        interface it leaves by went down and came back."""
        link = self.link
        if link is None:
            if settled.changes:
                self._network_back.set()  # not attached yet: the next try need not wait
            return
        source = _local_ip_towards(link.supernode)
        if source == UNROUTED:
            self._network_lost(link)
            return
        used = self._netwatch.index_of(source) if self._netwatch is not None else None
        published = self._published_host()
        moved = published is not None and source != published
        flapped = used is not None and used in settled.came_back
        if not (moved or flapped or self._network_down):
            return
        self._network_down = False
        self.network_changes += 1
        self._changed()
        _log.info("the network changed (leaving by %s): testing it again", source)
        if link.closed.is_set():
            self._network_back.set()
        else:
            # The link may have survived; publishing proves it (or ends it) and
            # carries the candidates the new test and address give.
            self._start_self_test(link)
            self._republish.set()

    def _network_lost(self, link: Link) -> None:
        """No route leads to the supernode: the link went with the network. Say so
        now, not at the next refresh minutes away; the reconnect waits for it."""
        if self._network_down:
            return
        self._network_down = True
        self._changed()
        _log.warning("the network is down: no route to %s", _show(link.supernode))
        if not link.closed.is_set():
            link.reason = "the network went down"
            link.close()

    def _published_host(self) -> str | None:
        """The host address our calls offer, as the last publish found it."""
        offered = self.calls.manager.candidates if self.calls is not None else []
        return offered[0].address[0] if offered else None

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
        try:
            link.send(
                MsgType.SIGNAL_FORWARD, {"to_user": user, "to_device": device, "payload": data}
            )
        except EdgeError:
            # The session with the supernode ended under us: lost as a datagram would be.
            self._signal_drops += 1

    def _peer_message(self, peer: tuple[str, str], message: Message) -> None:
        assert self.peers is not None and self.calls is not None
        assert self.transfers is not None
        index = self.peers.session_of(peer)
        if index is not None and (
            self.calls.on_signal(index, message) or self.transfers.on_message(index, message)
        ):
            return
        if message.type is MsgType.DEVICE_COMMAND:
            self._device_command(peer, index, message)
            return
        if self.chat is not None:
            self.chat.on_message(peer, message)  # INSTANT_MESSAGE, MESSAGE_RECEIPT

    def _online_link(self) -> Link:
        link = self.link
        if link is None or link.closed.is_set() or self.peers is None:
            raise PeerUnreachable("this device is not attached to a supernode right now")
        return link

    async def _reachable(self, user: str, *, mailbox: bool = False) -> list[Found]:
        """The online devices of ``user`` whose records and certificates hold up now.

        None: :class:`~edge.client.errors.PeerRefused` naming each device refused and
        why, where some were; else PeerUnreachable, or with ``mailbox`` an empty list
        (the message goes to the mailbox).
        """
        assert self.peers is not None
        lookup = await self.peers.lookup(self._online_link(), user)
        online = [found for found in lookup.found if found.online]
        if online or (mailbox and lookup.found):
            return online
        if lookup.refused:
            raise refused_error(lookup.refused)
        if mailbox:
            return []
        raise PeerUnreachable(f"{user} has no device online")

    async def _session_with(self, user: str) -> tuple[Found, int]:
        """A session with the first online device of ``user`` that answers."""
        assert self.peers is not None
        failures: list[PeerUnreachable] = []
        for found in await self._reachable(user):
            try:
                return found, await self.peers.session(found.user, found.device)
            except PeerUnreachable as exc:
                failures.append(exc)
        if len(failures) == 1:
            raise failures[0]
        raise type(failures[0])("; ".join(str(exc) for exc in failures))

    async def _through_supernode(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """``attempt()``; once more through another supernode when ours went silent."""
        link = self._online_link()
        try:
            return await attempt()
        except (UplinkFailed, SignalTimeout):
            if not await self._went_silent(link):
                raise
        await self._leave(link)
        return await attempt()

    async def _went_silent(self, link: Link) -> bool:
        """After a request or a handshake through ``link`` timed out: is the supernode
        the one at fault? It is when it left, when signalling through it timed out
        twice in a row, or when it does not answer a request it answers by itself."""
        assert self.peers is not None
        if link.closed.is_set() or self.peers.signal_timeouts >= SILENT_AFTER_TIMEOUTS:
            return True
        try:
            await link.request(
                MsgType.HOSTCACHE_REQUEST, {"offset": 0}, MsgType.HOSTCACHE, timeout=PROBE_TIMEOUT
            )
        except UplinkFailed:
            return True
        return False

    async def _leave(self, link: Link) -> None:
        """Drop ``link`` (its supernode tried last from now on), then wait until the
        device is attached and present through another."""
        assert self.peers is not None
        if link is self.link and not link.closed.is_set():
            _log.warning("%s went silent: moving to another supernode", link.where)
            self._silent = link.supernode
            self._cache.failure(link.supernode, time.time())
            link.reason = "it went silent"
            link.close()
        self.peers.signal_timeouts = 0
        try:
            await asyncio.wait_for(
                self.wait_for(lambda: self.online.is_set() and self.link is not link),
                FAILOVER_TIMEOUT,
            )
        except TimeoutError:
            raise PeerUnreachable(
                f"{link.where} went silent and no other supernode took this device"
            ) from None

    async def search(self, args: Mapping[str, Any]) -> JsonObject:
        """Where ``args["user"]`` is: each device the overlay knows, verified."""
        assert self.peers is not None
        lookup = await self.peers.lookup(self._online_link(), str(args.get("user", "")))
        return {
            "devices": [_found(f) for f in lookup.found],
            "refused": [_refusal(r) for r in lookup.refused],
        }

    async def send_text(self, args: Mapping[str, Any]) -> JsonObject:
        """Send ``args["text"]`` to every online device of ``args["user"]``, end to end,
        or to the mailbox when none answers (see :mod:`edge.client.messages`)."""
        user, text = str(args.get("user", "")), str(args.get("text", ""))
        assert self.peers is not None and self.chat is not None
        online = await self._through_supernode(lambda: self._reachable(user, mailbox=True))
        return await self.chat.send(user, text, [(f.user, f.device) for f in online])

    def messages(self, args: Any) -> JsonObject:
        """Messages in (``messages``) and out (``sent``, with their status), oldest
        first; those shown are marked READ, which their senders see."""
        if self.chat is None:
            raise PeerUnreachable("this device is not running yet")
        return self.chat.listing()

    async def call(self, args: Mapping[str, Any]) -> JsonObject:
        """Call ``args["user"]``: its first online device, through a session of its own."""
        user = str(args.get("user", ""))
        assert self.calls is not None
        found, session = await self._through_supernode(lambda: self._session_with(user))
        call_id = self.calls.place(user, session)
        return {"call": call_id.hex(), "device": f"{found.user}/{found.device}"}

    async def send_file(self, args: Mapping[str, Any]) -> JsonObject:
        """Send the file at ``args["path"]`` to ``args["user"]``'s first online device;
        sent again after a break, it goes on from where the receiver stopped."""
        user, path = str(args.get("user", "")), Path(str(args.get("path", "")))
        if not path.is_file():
            raise PeerUnreachable(f"no file at {path}")
        assert self.transfers is not None and self.peers is not None
        found, _ = await self._through_supernode(lambda: self._session_with(user))
        peers, peer = self.peers, f"{found.user}/{found.device}"
        outcome = await self.transfers.send(
            lambda: peers.session(found.user, found.device), path,
            sender=f"{self.config.user_id}/{self.config.device_id}", recipient=peer,
        )  # fmt: skip
        if isinstance(outcome.event, TransferFailed):
            raise PeerUnreachable(
                f"the transfer of {path.name} stopped at {outcome.acked} of {outcome.size} "
                f"bytes: {outcome.event.reason}; send it again to go on from there"
            )
        return {"sent": path.name, "to": peer}

    def files(self, args: Any) -> JsonObject:
        """Files received, partial incoming transfers (receiving or stalled), sends."""
        if self.transfers is None:
            return {"received": [], "partial": [], "sending": [], "sent": []}
        return self.transfers.listing()

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

    # -- the board: a profile's buttons, LEDs and relays, and DEVICE_COMMANDs

    @staticmethod
    def _read_board(config: AgentConfig) -> board_profile.Profile | None:
        """The board profile ``[board] profile`` names, checked whole before anything
        starts (a mistake in it is a configuration error like any other)."""
        path = config.board_profile
        return board_profile.read(path) if path is not None else None

    async def _start_board(self) -> None:
        if self._board_profile is None:
            return
        self.board = Board(self._board_profile, self, pin_factory=self._pin_factory)
        await self.board.start()

    async def _stop_board(self) -> None:
        if self.board is not None:
            await self.board.stop()

    def _device_command(self, peer: tuple[str, str], index: int | None, message: Message) -> None:
        if self.board is None:
            self._device_refused += 1
            _log.warning("device command from %s/%s refused: this device has no board", *peer)
            return
        self.board.command(peer, index, message)

    def _board_refusals(self) -> JsonObject | None:
        refused = self._device_refused
        return {"profile": None, "commands_refused": refused} if refused else None

    def door(self, args: Mapping[str, Any]) -> JsonObject:
        """``door open``: ask the peer of the active call to open its door (an intercom
        does, for the peer of its active call alone)."""
        if str(args.get("op", "")) != "open":
            raise PeerUnreachable("door takes one word: open")
        return send_door_command(self.calls, self.peers)

    def button(self, args: Mapping[str, Any]) -> JsonObject:
        """``button PART press|release``: work a button of the board on mock pins."""
        if self.board is None:
            raise PeerUnreachable("this device has no board profile")
        return self.board.press(str(args.get("part", "")), str(args.get("action", "")))

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
                "tested_at": None if self._tested_at is None else round(self._tested_at, 1),
                "testing": self._core.stun is not None,
            },
            "network_changes": self.network_changes,
            "presence": {
                "stored_on": self.presence.stored,
                "published_at": round(self.presence.published_at),
                "answer": self.presence.code,
            },
            "certificate_expires": _not_after(self.certificate),
            "peers": self.peers.count if self.peers else 0,
            "relay": None if self.relayed is None else _show(self.relayed),
            "calls": self.calls.status() if self.calls else [],
            "board": self.board.status() if self.board else self._board_refusals(),
            "supernode_role": self.promotion.status() if self.promotion else None,
            "refused": [_refusal(r) for r in self.peers.refusals] if self.peers else [],
            "refused_count": self.peers.refused if self.peers else 0,
            "drops": self._drops(),
            "timings": dict(self.timings),
            "login": {"via": self.login_via, "at": round(self.login_at)},
            "last_error": self.last_error,
        }  # fmt: skip

    def _drops(self) -> JsonObject:
        """Input refused or lost, by where and why, for ``edge ctl status``: port P's
        datagrams by error code, the socket's errors, signalling refused coming in by
        error code and lost going out, what the relay and the session table dropped."""
        adapter, peers = self._adapter, self.peers
        if adapter is None or peers is None:
            return {}
        stats = self._core.endpoint.stats
        return {
            "port": {code.name: count for code, count in adapter.dropped.items()},
            "socket_errors": dict(adapter.socket_errors),
            "signalling_in": dict(peers.drops),
            "signalling_out": self._signal_drops,
            "relay": self._core.relay_drops,
            "sessions": {key: stats[key] for key in SESSION_DROPS if stats[key]},
        }


SESSION_DROPS = ("datagrams_dropped", "events_dropped", "handshakes_failed")
"""The session table's counters that ``drops`` shows: output and events it had no
room for, handshakes that failed."""


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


def _refusal(refusal: Refusal) -> JsonObject:
    return {
        "peer": refusal.peer,
        "reason": refusal.reason,
        "at": round(refusal.at),
        "direction": "incoming" if refusal.incoming else "outgoing",
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


UNROUTED = "0.0.0.0"
"""What :func:`_local_ip_towards` says when no route leads there."""


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


def _ms_since(began: float) -> float:
    return round((time.monotonic() - began) * 1000, 1)


def _call_audio(
    config: AgentConfig, board: board_profile.Profile | None = None
) -> Callable[[Codec], CallAudio]:
    """How a call opens its audio in the codec it negotiated: the ``[audio]`` capture
    and playback it names — or, where those are left at "default" and the device has a
    board profile, the profile's sound card at its rate — with echo cancellation when
    ``echo_cancel`` is on in either (a hands-free board's profile sets it)."""
    capture, playback, rate = config.capture, config.playback, None
    if board is not None:
        sound = board.audio
        if capture == DEFAULT_DEVICE:
            capture, rate = sound.capture, sound.rate
        if playback == DEFAULT_DEVICE:
            playback, rate = sound.playback, sound.rate
    echo = config.echo_cancel or (board is not None and board.audio.echo_cancel)
    return partial(CallAudio.open, capture, playback, echo_cancel=echo, rate=rate)

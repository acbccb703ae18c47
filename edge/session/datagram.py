"""Secure sessions over datagrams: a sans-IO core for one UDP socket.

Theory of operation
-------------------
One :class:`DatagramEndpoint` serves every peer of a socket. Each session has
a random 32-bit local index; the peer puts it in every packet it sends us
(``receiver_index``), so a packet finds its session with one dict lookup and
address changes (NAT rebinding) do not break a call.

Handshakes are Noise XX or IK run by :class:`~edge.session.handshake.HandshakeDriver`::

    initiator                              responder
    HANDSHAKE_INIT  (pattern, sender_index, cookie, noise 1)  ->
                <-  COOKIE_REPLY (only when the responder is under load)
                <-  HANDSHAKE_RESP (sender_index, receiver_index, noise 2)
    HANDSHAKE_FINISH (receiver_index, noise 3)  ->            (XX only)

Loss is handled by repetition, never by new state: the initiator repeats its
INIT until the RESP comes; an XX responder repeats its RESP until the FINISH
comes, and an initiator that sees a RESP again repeats its FINISH. A repeated
INIT from the same address and index gets the same RESP again. After a few
tries the handshake fails with a timeout.

The table :data:`TRANSITIONS` lists, per session state, the message types a
session accepts; anything else is refused with a specific error, which the
adapter counts. TRANSPORT packets take a fast path (``struct``, no construct)
and MEDIA_FRAME plaintexts too.
"""

import heapq
import os
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

from edge.crypto.cert import Certificate, TrustStore
from edge.crypto.transport import DatagramTransport
from edge.errors import RemoteError
from edge.sansio import Address
from edge.session.cookie import NO_COOKIE, CookieGate
from edge.session.errors import (
    NotAllowedHere,
    Overloaded,
    SessionUnusable,
    UnknownSession,
)
from edge.session.events import (
    MediaReceived,
    MessageReceived,
    PeerMoved,
    SessionEstablished,
    SessionFailed,
)
from edge.session.handshake import HandshakeDriver, Identity, ReplayGuard
from edge.wire import hot
from edge.wire.codes import PROTOCOL_VERSION, ErrorCode, MsgType, NoisePattern
from edge.wire.errors import UnsupportedVersion
from edge.wire.messages import Codec, Message, decode, encode

SESSION_TYPES = frozenset(
    {
        MsgType.HANDSHAKE_INIT,
        MsgType.HANDSHAKE_RESP,
        MsgType.HANDSHAKE_FINISH,
        MsgType.COOKIE_REPLY,
        MsgType.TRANSPORT,
    }
)


class State(Enum):
    INIT_SENT = auto()
    """Initiator: INIT sent, waiting for RESP (or a COOKIE_REPLY)."""
    RESP_SENT = auto()
    """XX responder: RESP sent, waiting for FINISH."""
    ESTABLISHED = auto()
    """Transport keys in place; both sides may send."""


TRANSITIONS: dict[State, dict[MsgType, str]] = {
    State.INIT_SENT: {
        MsgType.COOKIE_REPLY: "_on_cookie",
        MsgType.HANDSHAKE_RESP: "_on_resp",
    },
    State.RESP_SENT: {
        MsgType.HANDSHAKE_FINISH: "_on_finish",
    },
    State.ESTABLISHED: {
        MsgType.HANDSHAKE_RESP: "_on_repeated_resp",
        MsgType.HANDSHAKE_FINISH: "_on_repeated_finish",
    },
}
"""Which message each state accepts, and the method that handles it."""


@dataclass(frozen=True)
class Limits:
    """Caps that keep memory bounded whatever the peers send."""

    max_sessions: int = 4096
    max_half_open: int = 512
    max_queued_datagrams: int = 4096
    max_queued_events: int = 4096
    retry_base: float = 0.5
    handshake_tries: int = 5
    max_cookie_replies: int = 3
    ik_replay_memory: int = 4096


@dataclass
class _Session:
    index: int
    address: Address
    initiator: bool
    state: State
    driver: HandshakeDriver | None
    remote_index: int = 0
    transport: DatagramTransport | None = None
    peer: Certificate | None = None
    repeat: bytes = b""
    """The datagram we send again when the next step does not come."""
    repeat_at: float | None = None
    repeats: int = 0
    cookie_replies: int = 0
    noise1: bytes = field(default=b"", repr=False)
    peer_said: str = ""
    """An unauthenticated ERROR from the peer's address, quoted if the handshake fails."""
    pattern: NoisePattern = NoisePattern.XX


class DatagramEndpoint:
    """Sessions of one UDP socket. Drive it with :class:`edge.runtime.adapters.DatagramAdapter`."""

    def __init__(
        self,
        identity: Identity,
        trust: TrustStore,
        *,
        wall_offset: float = 0.0,
        random: Callable[[int], bytes] = os.urandom,
        limits: Limits = Limits(),
        cookie_gate: CookieGate | None = None,
    ) -> None:
        self.identity = identity
        self.trust = trust
        self.wall_offset = wall_offset
        """Add to ``now`` to get Unix time, for certificate validity."""
        self.limits = limits
        self.stats: Counter[str] = Counter()
        self._random = random
        self._gate = cookie_gate or CookieGate(random)
        self._sessions: dict[int, _Session] = {}
        self._half_open = 0
        self._by_remote: dict[tuple[Address, int], int] = {}
        self._timers: list[tuple[float, int]] = []
        self._out: deque[tuple[bytes, Address]] = deque()
        self._events: deque[object] = deque()
        self._replay_guard = ReplayGuard(limits.ik_replay_memory)

    # -- the application's side -------------------------------------------------

    def connect(
        self,
        address: Address,
        now: float,
        *,
        remote_static: bytes | None = None,
        expect_user: str | None = None,
    ) -> int:
        """Start a handshake with ``address``; IK when its static key is known, else XX.

        Returns the session index; :class:`SessionEstablished` or
        :class:`SessionFailed` with that index follows.
        """
        if len(self._sessions) >= self.limits.max_sessions:
            raise SessionUnusable(f"session table full ({self.limits.max_sessions})")
        pattern = NoisePattern.XX if remote_static is None else NoisePattern.IK
        driver = HandshakeDriver(
            self.identity,
            self.trust,
            pattern,
            initiator=True,
            remote_static=remote_static,
            expect_user=expect_user,
        )
        session = _Session(
            index=self._new_index(),
            address=address,
            initiator=True,
            state=State.INIT_SENT,
            driver=driver,
            pattern=pattern,
        )
        session.noise1 = driver.write(now + self.wall_offset)
        self._add(session)
        self._send_repeating(session, self._init_datagram(session, NO_COOKIE), now)
        return session.index

    def send(
        self, index: int, msg_type: MsgType, body: Mapping[str, Any], *, flags: int = 0
    ) -> None:
        """Encrypt one message to the peer of an established session."""
        if msg_type in SESSION_TYPES:
            raise SessionUnusable(f"{msg_type.name} is the session layer's own message")
        self._seal_and_queue(self._established(index), encode(msg_type, body, flags))

    def send_media(
        self,
        index: int,
        *,
        stream_id: int,
        codec: Codec,
        flags: int,
        sequence: int,
        timestamp: int,
        payload: bytes,
    ) -> None:
        """Encrypt one media frame; the fast path for 50 frames a second per call."""
        plaintext = hot.pack_media(stream_id, codec, flags, sequence, timestamp, payload)
        self._seal_and_queue(self._established(index), plaintext)

    def close(self, index: int) -> None:
        """Forget a session at once (the application says goodbye above this layer)."""
        session = self._sessions.pop(index, None)
        if session is None:
            return
        if session.state is not State.ESTABLISHED:
            self._half_open -= 1
        if session.remote_index:
            self._by_remote.pop((session.address, session.remote_index), None)

    def move(self, index: int, address: Address) -> None:
        """Send this session's datagrams to ``address`` from now on: a call has chosen a
        path of its own for a session that began through the supernodes. The peer
        follows when our first datagram arrives from there (the roaming rule)."""
        session = self._established(index)
        if address != session.address:
            self._move(session, address)

    def peer(self, index: int) -> Certificate:
        """The verified certificate of an established session's peer."""
        peer = self._established(index).peer
        assert peer is not None
        return peer

    def is_established(self, index: int) -> bool:
        session = self._sessions.get(index)
        return session is not None and session.state is State.ESTABLISHED

    # -- the adapter's side ---------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Take one datagram; raises a RemoteError for the adapter to count when it is bad."""
        try:
            msg_type = hot.peek_type(data)
        except UnsupportedVersion:
            self._answer_version(data, addr)
            raise
        if msg_type is MsgType.TRANSPORT:
            self._on_transport(data, addr)
            return
        message = decode(data)
        if message.type is MsgType.HANDSHAKE_INIT:
            self._on_init(message, addr, now)
            return
        if message.type is MsgType.ERROR:
            self._on_peer_error(message, addr)
            return
        if message.type not in SESSION_TYPES:
            raise NotAllowedHere(f"{message.type.name} from {addr} outside a session")
        session = self._session_for(message, addr)
        handler = TRANSITIONS[session.state].get(message.type)
        if handler is None:
            raise NotAllowedHere(
                f"{message.type.name} from {addr} in state {session.state.name} "
                f"of session {session.index:#x}"
            )
        getattr(self, handler)(session, message, addr, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = list(self._out)
        self._out.clear()
        return out

    def next_event(self) -> object | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        while self._timers:
            at, index = self._timers[0]
            session = self._sessions.get(index)
            if session is not None and session.repeat_at == at:
                return at
            heapq.heappop(self._timers)
        return None

    def handle_timer(self, now: float) -> None:
        while (at := self.get_timer()) is not None and at <= now:
            _, index = heapq.heappop(self._timers)
            self._repeat_or_give_up(self._sessions[index], now)

    # -- handshake messages -----------------------------------------------------------

    def _on_init(self, message: Message, addr: Address, now: float) -> None:
        body = message.body
        known = self._by_remote.get((addr, body.sender_index))
        if known is not None:
            self._repeat_for_duplicate(self._sessions[known])
            return
        if not self._gate.admit(addr, bytes(body.cookie), now):
            reply = encode(
                MsgType.COOKIE_REPLY,
                {"receiver_index": body.sender_index, "cookie": self._gate.make(addr, now)},
            )
            self.stats["cookie_replies_sent"] += 1
            self._queue(reply, addr)
            return
        self._check_room()
        pattern = NoisePattern(body.pattern)
        driver = HandshakeDriver(
            self.identity, self.trust, pattern, initiator=False, replay_guard=self._replay_guard
        )
        wall = now + self.wall_offset
        driver.read(bytes(body.noise), wall)
        session = _Session(
            index=self._new_index(),
            address=addr,
            initiator=False,
            state=State.RESP_SENT,
            driver=driver,
            remote_index=body.sender_index,
            pattern=pattern,
        )
        resp = encode(
            MsgType.HANDSHAKE_RESP,
            {
                "sender_index": session.index,
                "receiver_index": body.sender_index,
                "noise": driver.write(wall),
            },
        )
        self._add(session)
        self._by_remote[(addr, session.remote_index)] = session.index
        if driver.is_finished:
            session.repeat = resp
            self._queue(resp, addr)
            self._establish(session)
        else:
            self._send_repeating(session, resp, now)

    def _on_cookie(self, session: _Session, message: Message, addr: Address, now: float) -> None:
        if session.cookie_replies >= self.limits.max_cookie_replies:
            raise NotAllowedHere(f"too many cookie replies for session {session.index:#x}")
        session.cookie_replies += 1
        self.stats["cookie_replies_received"] += 1
        session.repeats = 0
        self._send_repeating(session, self._init_datagram(session, bytes(message.body.cookie)), now)

    def _on_resp(self, session: _Session, message: Message, addr: Address, now: float) -> None:
        driver = self._driver(session)
        wall = now + self.wall_offset
        try:
            driver.read(bytes(message.body.noise), wall)
            session.remote_index = message.body.sender_index
            if not driver.is_finished:
                finish = encode(
                    MsgType.HANDSHAKE_FINISH,
                    {"receiver_index": session.remote_index, "noise": driver.write(wall)},
                )
                session.repeat = finish
                self._queue(finish, session.address)
        except RemoteError as exc:
            self._fail(session, exc.code, str(exc))
            raise
        self._establish(session)

    def _on_finish(self, session: _Session, message: Message, addr: Address, now: float) -> None:
        try:
            self._driver(session).read(bytes(message.body.noise), now + self.wall_offset)
        except RemoteError:
            self.close(session.index)
            raise
        session.repeat = b""
        self._establish(session)

    def _on_repeated_resp(
        self, session: _Session, message: Message, addr: Address, now: float
    ) -> None:
        # Our FINISH was lost and the responder repeats its RESP: repeat the FINISH.
        if session.initiator and message.body.sender_index == session.remote_index:
            self._repeat_for_duplicate(session)

    def _on_repeated_finish(
        self, session: _Session, message: Message, addr: Address, now: float
    ) -> None:
        self.stats["duplicate_finish"] += 1

    def _answer_version(self, data: bytes, addr: Address) -> None:
        # Tell a newer (or older) peer what we speak, but never answer with
        # more bytes than came in: no amplification for a spoofed source.
        reply = encode(
            MsgType.ERROR,
            {
                "code": ErrorCode.UNSUPPORTED_VERSION,
                "about_type": 0,
                "detail": f"this node speaks edge protocol version {PROTOCOL_VERSION}",
            },
        )
        if len(reply) <= len(data):
            self.stats["version_errors_sent"] += 1
            self._queue(reply, addr)

    def _on_peer_error(self, message: Message, addr: Address) -> None:
        # Unauthenticated, so it ends nothing by itself (anyone can forge it);
        # it explains a handshake that then times out.
        body = message.body
        code = body.code.name if isinstance(body.code, ErrorCode) else str(body.code)
        said = f"{addr[0]}:{addr[1]} said {code}: {body.detail}"
        self.stats["peer_errors"] += 1
        for session in self._sessions.values():
            if session.state is State.INIT_SENT and session.address == addr:
                session.peer_said = said

    # -- transport ------------------------------------------------------------------------

    def _on_transport(self, data: bytes, addr: Address) -> None:
        receiver_index, counter, ciphertext = hot.unpack_transport(data)
        session = self._sessions.get(receiver_index)
        if session is None or session.transport is None:
            raise UnknownSession(f"TRANSPORT from {addr} for unknown session {receiver_index:#x}")
        plaintext = session.transport.open(counter, ciphertext)
        if addr != session.address:
            self._move(session, addr)
        self._deliver(session, plaintext)

    def _deliver(self, session: _Session, plaintext: bytes) -> None:
        inner = hot.peek_type(plaintext)
        if inner is MsgType.MEDIA_FRAME:
            stream_id, codec, flags, sequence, timestamp, payload = hot.unpack_media(plaintext)
            self._event(
                MediaReceived(session.index, stream_id, codec, flags, sequence, timestamp, payload)
            )
            return
        if inner in SESSION_TYPES:
            raise NotAllowedHere(f"{inner.name} inside session {session.index:#x}")
        self._event(MessageReceived(session.index, decode(plaintext)))

    def _seal_and_queue(self, session: _Session, plaintext: bytes) -> None:
        assert session.transport is not None
        counter, ciphertext = session.transport.seal(plaintext)
        self._queue(hot.pack_transport(session.remote_index, counter, ciphertext), session.address)

    # -- helpers --------------------------------------------------------------------------

    def _session_for(self, message: Message, addr: Address) -> _Session:
        index = message.body.receiver_index
        session = self._sessions.get(index)
        if session is None:
            raise UnknownSession(f"{message.type.name} from {addr} for unknown session {index:#x}")
        return session

    def _established(self, index: int) -> _Session:
        session = self._sessions.get(index)
        if session is None or session.state is not State.ESTABLISHED:
            raise SessionUnusable(f"session {index:#x} is not established")
        return session

    def _driver(self, session: _Session) -> HandshakeDriver:
        assert session.driver is not None, "handshake driver of a session in handshake"
        return session.driver

    def _init_datagram(self, session: _Session, cookie: bytes) -> bytes:
        return encode(
            MsgType.HANDSHAKE_INIT,
            {
                "pattern": session.pattern,
                "sender_index": session.index,
                "cookie": cookie,
                "noise": session.noise1,
            },
        )

    def _establish(self, session: _Session) -> None:
        driver = self._driver(session)
        hs = driver.state
        assert driver.peer is not None and hs.remote_static is not None
        event = SessionEstablished(
            session.index,
            session.address,
            driver.peer,
            session.initiator,
            hs.remote_static,
            hs.handshake_hash,
        )
        session.transport = DatagramTransport.from_handshake(hs)
        session.peer = driver.peer
        session.driver = None
        session.state = State.ESTABLISHED
        self._half_open -= 1
        session.repeat_at = None
        session.repeats = 0
        self.stats["sessions_established"] += 1
        self._event(event)

    def _fail(self, session: _Session, code: ErrorCode, reason: str) -> None:
        self.close(session.index)
        self.stats["handshakes_failed"] += 1
        if session.initiator:
            self._event(SessionFailed(session.index, session.address, code, reason))

    def _send_repeating(self, session: _Session, datagram: bytes, now: float) -> None:
        session.repeat = datagram
        session.repeat_at = now + self.limits.retry_base * (2**session.repeats)
        heapq.heappush(self._timers, (session.repeat_at, session.index))
        self._queue(datagram, session.address)

    def _repeat_or_give_up(self, session: _Session, now: float) -> None:
        session.repeats += 1
        if session.repeats >= self.limits.handshake_tries:
            reason = "handshake timed out: " + (session.peer_said or "no answer")
            self._fail(session, ErrorCode.HANDSHAKE_FAILED, reason)
            return
        self._send_repeating(session, session.repeat, now)

    def _repeat_for_duplicate(self, session: _Session) -> None:
        # Bounded, so a replayed packet cannot make us an amplifier.
        if session.repeat and session.repeats < self.limits.handshake_tries:
            session.repeats += 1
            self.stats["handshake_repeats"] += 1
            self._queue(session.repeat, session.address)

    def _add(self, session: _Session) -> None:
        self._sessions[session.index] = session
        self._half_open += 1

    def _check_room(self) -> None:
        if self._half_open >= self.limits.max_half_open:
            raise Overloaded(f"{self._half_open} handshakes in progress; initiation dropped")
        if len(self._sessions) >= self.limits.max_sessions:
            raise Overloaded(f"session table full ({len(self._sessions)}); initiation dropped")

    def _move(self, session: _Session, addr: Address) -> None:
        if session.remote_index:
            self._by_remote.pop((session.address, session.remote_index), None)
            self._by_remote[(addr, session.remote_index)] = session.index
        session.address = addr
        self._event(PeerMoved(session.index, addr))

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self._random(4), "big")
            if index and index not in self._sessions:
                return index

    def _queue(self, datagram: bytes, addr: Address) -> None:
        if len(self._out) >= self.limits.max_queued_datagrams:
            self.stats["datagrams_dropped"] += 1
            return
        self._out.append((datagram, addr))

    def _event(self, event: object) -> None:
        if len(self._events) >= self.limits.max_queued_events:
            self.stats["events_dropped"] += 1
            return
        self._events.append(event)

"""Secure sessions over one byte stream (TCP): a sans-IO core per connection.

The same handshake as over datagrams, with the same HANDSHAKE_* messages,
each framed by a 2-byte length as Noise suggests for streams; the indices in
them are zero because a connection needs no demultiplexing, and there is no
cookie because TCP's own handshake has already proved the peer's address.
After the handshake every frame is a Noise transport message whose plaintext
is one whole edge message.

A stream cannot resynchronise after a bad frame, so any error is final: the
core raises, marks itself closed, and the adapter drops the connection.
"""

from collections import deque
from collections.abc import Mapping
from typing import Any

from edge.crypto.cert import Certificate, TrustStore
from edge.crypto.errors import FrameError
from edge.crypto.transport import Deframer, StreamTransport, frame
from edge.errors import EdgeError
from edge.sansio import Address
from edge.session.cookie import NO_COOKIE
from edge.session.datagram import SESSION_TYPES
from edge.session.errors import (
    HandshakeTimeout,
    NotAllowedHere,
    Overloaded,
    PeerRefused,
    SessionUnusable,
)
from edge.session.events import MessageReceived, SessionEstablished, SessionFailed
from edge.session.handshake import HandshakeDriver, Identity, ReplayGuard
from edge.wire.codes import ErrorCode, MsgType, NoisePattern
from edge.wire.messages import BODY_CAPS, HEADER_SIZE, decode, encode

HANDSHAKE_TIMEOUT = 10.0
MAX_QUEUED_EVENTS = 1024
MAX_UNSENT = 1 << 20
"""Bytes of sealed output the adapter has not taken yet; past it ``send`` refuses."""
MAX_HANDSHAKE_FRAME = HEADER_SIZE + BODY_CAPS[MsgType.HANDSHAKE_INIT]
"""No handshake message is larger: a bigger frame before the handshake ends is refused
as soon as its 2-byte length arrives, so an unauthenticated peer cannot make us hold more."""
_EXPECTED = {
    # (initiator?, messages read so far) -> the type the peer must send next
    (False, 0): MsgType.HANDSHAKE_INIT,
    (True, 0): MsgType.HANDSHAKE_RESP,
    (False, 1): MsgType.HANDSHAKE_FINISH,
}


class StreamSession:
    """One TCP connection's secure session; ``index`` in its events is always 0."""

    def __init__(
        self,
        identity: Identity,
        trust: TrustStore,
        *,
        initiator: bool,
        wall_offset: float = 0.0,
        remote_static: bytes | None = None,
        expect_user: str | None = None,
        replay_guard: ReplayGuard | None = None,
        require_certificate: bool = True,
        pinned_static: bytes | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        """``replay_guard``: a server passes one guard to all its connections, so
        an IK first message replayed on a new connection is refused too.
        ``require_certificate`` and ``pinned_static``: see
        :class:`~edge.session.handshake.HandshakeDriver`."""
        self._require_certificate = require_certificate
        self._handshake_timeout = handshake_timeout
        self._pinned_static = pinned_static
        self.handshake_hash = b""
        self.remote_static = b""
        self.initiator = initiator
        self._replay_guard = replay_guard or ReplayGuard()
        self.wall_offset = wall_offset
        self.address: Address = ("", 0)
        self.closed = False
        self._identity = identity
        self._trust = trust
        self._expect_user = expect_user
        self._remote_static = remote_static
        self._deadline: float | None = None
        self._deframer = Deframer()
        self._out = bytearray()
        self._events: deque[object] = deque()
        self._read_count = 0
        self._transport: StreamTransport | None = None
        self._driver: HandshakeDriver | None = None
        self.peer: Certificate | None = None

    def connection_made(self, address: Address, now: float) -> None:
        """The connection is open: start the handshake clock, and as initiator, the handshake."""
        self.address = address
        self._deadline = now + self._handshake_timeout
        if self.initiator:
            pattern = NoisePattern.XX if self._remote_static is None else NoisePattern.IK
            self._driver = self._new_driver(pattern, self._remote_static)
            self._write_handshake(MsgType.HANDSHAKE_INIT, now)

    def connection_lost(self) -> None:
        self._close(ErrorCode.UNAVAILABLE, "connection closed")

    def close(self) -> None:
        """Our side ends the session: no failure event; the adapter closes the socket."""
        self.closed = True

    def refuse(self, code: ErrorCode, detail: str) -> None:
        """Answer a new connection with a plaintext ERROR instead of a handshake (a busy
        server): the peer learns why; a SessionFailed event tells the owner to close."""
        body = {"code": code, "about_type": 0, "detail": detail[:200]}
        self._out += frame(encode(MsgType.ERROR, body))
        self._close(code, detail)

    # -- application side --------------------------------------------------------------

    def send(self, msg_type: MsgType, body: Mapping[str, Any], *, flags: int = 0) -> None:
        if self._transport is None or self.closed:
            raise SessionUnusable("stream session is not established")
        if msg_type in SESSION_TYPES:
            raise SessionUnusable(f"{msg_type.name} is the session layer's own message")
        if len(self._out) > MAX_UNSENT:
            raise SessionUnusable(f"more than {MAX_UNSENT} bytes wait to be sent; slow down")
        self._out += self._transport.seal_frame(encode(msg_type, body, flags))

    # -- adapter side ------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        if self.closed:
            return
        if self._deadline is None and self._transport is None:
            self._deadline = now + self._handshake_timeout
        try:
            for raw in self._deframer.feed(data):
                if self._transport is None:
                    self._on_handshake(raw, now)
                else:
                    self._deliver(self._transport.open_frame(raw))
            if self._transport is None:
                self._check_handshake_frame()
        except EdgeError as exc:
            self._close(exc.code, str(exc))
            raise

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> object | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        return None if self.closed else self._deadline

    def handle_timer(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline and not self.closed:
            reason = f"handshake with {self.address[0]}:{self.address[1]} timed out"
            self._close(ErrorCode.HANDSHAKE_FAILED, reason)
            raise HandshakeTimeout(reason)

    # -- handshake ---------------------------------------------------------------------

    def _check_handshake_frame(self) -> None:
        size = max(self._deframer.announced, self._deframer.pending - 2)
        if size > MAX_HANDSHAKE_FRAME:
            raise FrameError(
                f"{self.address}: frame of {size} bytes during the handshake "
                f"(handshake messages are at most {MAX_HANDSHAKE_FRAME})"
            )

    def _on_handshake(self, raw: bytes, now: float) -> None:
        message = decode(raw)
        if message.type is MsgType.ERROR:
            raise PeerRefused(f"{self.address[0]}:{self.address[1]} refused: {message.body.detail}")
        expected = _EXPECTED.get((self.initiator, self._read_count))
        if message.type is not expected:
            raise NotAllowedHere(
                f"{message.type.name} from {self.address} where "
                f"{expected.name if expected else 'nothing'} was due"
            )
        self._read_count += 1
        if message.type is MsgType.HANDSHAKE_INIT:
            self._driver = self._new_driver(NoisePattern(message.body.pattern), None)
        driver = self._driver
        if driver is None:
            raise NotAllowedHere(f"{message.type.name} from {self.address} before we began")
        driver.read(bytes(message.body.noise), now + self.wall_offset)
        if not driver.is_finished:
            reply = (
                MsgType.HANDSHAKE_RESP
                if self._read_count == 1 and not self.initiator
                else MsgType.HANDSHAKE_FINISH
            )
            self._write_handshake(reply, now)
        if driver.is_finished:
            self._establish(driver)

    def _write_handshake(self, msg_type: MsgType, now: float) -> None:
        driver = self._driver
        assert driver is not None
        noise = driver.write(now + self.wall_offset)
        if msg_type is MsgType.HANDSHAKE_INIT:
            body: dict[str, Any] = {
                "pattern": driver.pattern,
                "sender_index": 0,
                "cookie": NO_COOKIE,
                "noise": noise,
            }
        elif msg_type is MsgType.HANDSHAKE_RESP:
            body = {"sender_index": 0, "receiver_index": 0, "noise": noise}
        else:
            body = {"receiver_index": 0, "noise": noise}
        self._out += frame(encode(msg_type, body))
        if driver.is_finished:
            self._establish(driver)

    def _new_driver(self, pattern: NoisePattern, remote_static: bytes | None) -> HandshakeDriver:
        return HandshakeDriver(
            self._identity,
            self._trust,
            pattern,
            initiator=self.initiator,
            remote_static=remote_static,
            expect_user=self._expect_user,
            replay_guard=self._replay_guard,
            require_certificate=self._require_certificate,
            pinned_static=self._pinned_static,
        )

    def _establish(self, driver: HandshakeDriver) -> None:
        if self._transport is not None:
            return
        hs = driver.state
        remote = hs.remote_static
        assert remote is not None, "XX and IK both prove the peer's static key"
        self.handshake_hash = hs.handshake_hash
        self._transport = StreamTransport.from_handshake(hs)
        self.peer = driver.peer
        self.remote_static = remote
        self._driver = None
        self._deadline = None
        self._events.append(
            SessionEstablished(
                0, self.address, driver.peer, self.initiator, remote, self.handshake_hash
            )
        )

    def _deliver(self, plaintext: bytes) -> None:
        message = decode(plaintext)
        if message.type in SESSION_TYPES:
            raise NotAllowedHere(f"{message.type.name} inside the session with {self.address}")
        if len(self._events) >= MAX_QUEUED_EVENTS:
            raise Overloaded(
                f"{self.address} sent more than {MAX_QUEUED_EVENTS} messages "
                "before the application read them"
            )
        self._events.append(MessageReceived(0, message))

    def _close(self, code: ErrorCode, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self._events.append(SessionFailed(0, self.address, code, reason))

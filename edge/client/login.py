"""Logging in to the login server: enrol once with a password, renew with the device key.

:func:`login` opens a TCP connection, runs a Noise XX handshake that accepts
only the server's pinned key, and speaks the login conversation
(:mod:`edge.login.service`). It returns a :class:`LoginSession` holding the
fresh certificate, through which the device can go on asking (revocation
list, relay credentials, buddy list). Each request waits for its answer; the
server answers in order. A connection that cannot be made raises
:class:`~edge.client.errors.LoginUnreachable`, which says the server was
never heard (unlike a refusal).

:func:`login_through` does the same through a supernode the device holds a
link with, when only the supernode is reachable: the same Noise session,
pinned to the same key, and the same conversation, carried as opaque bytes
in a login tunnel (:mod:`edge.supernode.tunnel`) by a :class:`TunnelCarrier`
in place of the TCP connection's adapter. The supernode sees ciphertext only.
The device needs a certificate for its session with the supernode, so a
device enrols directly, once.
"""

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edge import __version__
from edge.client.errors import (
    LoginRefused,
    LoginUnreachable,
    ServerError,
    UnexpectedReply,
    UplinkFailed,
)
from edge.client.uplink import Link
from edge.crypto.cert import TrustStore
from edge.crypto.keys import DeviceKeys
from edge.errors import LocalError, RemoteError
from edge.login.proof import sign_proof
from edge.runtime.adapters import open_stream_client
from edge.sansio import Address
from edge.session.events import MessageReceived, SessionEstablished, SessionFailed
from edge.session.handshake import Identity
from edge.session.stream import StreamSession
from edge.supernode.tunnel import DeviceState, DeviceTunnel
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import Message

DEFAULT_TIMEOUT = 15.0
CONNECT_TIMEOUT = 5.0
"""Seconds a TCP connection to the login server may take before it counts as unreachable."""
TUNNEL_TYPES = frozenset(
    {MsgType.LOGIN_TUNNEL_OPEN, MsgType.LOGIN_TUNNEL_DATA, MsgType.LOGIN_TUNNEL_CLOSE}
)


class Carrier(Protocol):
    """What carries a login session's bytes: a TCP connection's
    :class:`~edge.runtime.adapters.StreamAdapter`, or a :class:`TunnelCarrier`."""

    def poke(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Credentials:
    """Who logs in: the account, this device's id and keys."""

    user_id: str
    device_id: str
    keys: DeviceKeys


class LoginSession:
    """An authenticated session with the login server."""

    def __init__(
        self,
        adapter: Carrier,
        session: StreamSession,
        inbox: "asyncio.Queue[object]",
        timeout: float,
    ) -> None:
        self._adapter = adapter
        self._session = session
        self._timeout = timeout
        self._inbox = inbox
        self.certificate = b""

    async def established(self) -> SessionEstablished:
        event = await self._next()
        if not isinstance(event, SessionEstablished):
            raise UnexpectedReply(f"expected the handshake to finish, got {event!r}")
        return event

    async def request(
        self, msg_type: MsgType, body: Mapping[str, Any], *expect: MsgType
    ) -> Message:
        """Send one request and return the answer, which must be one of ``expect``."""
        self.send(msg_type, body)
        return await self.receive(*expect)

    def send(self, msg_type: MsgType, body: Mapping[str, Any]) -> None:
        if self._session.closed:
            # The server went away: a remote condition, the same as receive() reports.
            raise ServerError("the connection to the login server is closed", ErrorCode.UNAVAILABLE)
        self._session.send(msg_type, body)
        self._adapter.poke()

    async def receive(self, *expect: MsgType) -> Message:
        event = await self._next()
        if not isinstance(event, MessageReceived):
            raise UnexpectedReply(f"expected {[t.name for t in expect]}, got {event!r}")
        message = event.message
        if message.type is MsgType.ERROR and MsgType.ERROR not in expect:
            body = message.body
            code = body.code if isinstance(body.code, ErrorCode) else ErrorCode.INTERNAL
            raise ServerError(f"login server: {body.detail}", code)
        if message.type not in expect:
            raise UnexpectedReply(f"expected {[t.name for t in expect]}, got {message.type.name}")
        return message

    async def _next(self) -> object:
        event = await asyncio.wait_for(self._inbox.get(), self._timeout)
        if isinstance(event, SessionFailed):
            raise ServerError(f"connection to the login server: {event.reason}", event.code)
        return event

    def close(self) -> None:
        self._session.close()
        self._adapter.close()


async def login(
    server: Address,
    server_key: bytes,
    who: Credentials,
    *,
    password: str | None = None,
    register: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> LoginSession:
    """Log in and return the open session; ``session.certificate`` is the new certificate.

    With ``password`` the device enrols (or, with ``register``, creates the
    account first); without, it renews with its device key alone.
    """
    if register and password is None:
        raise LocalError("registering needs a password")
    stream = _login_stream(who, server_key)
    # Events can arrive as soon as the connection is up: the queue exists first.
    inbox: asyncio.Queue[object] = asyncio.Queue(maxsize=1024)
    try:
        adapter = await asyncio.wait_for(
            open_stream_client(stream, server[0], server[1], inbox.put_nowait),
            min(timeout, CONNECT_TIMEOUT),
        )
    except (OSError, TimeoutError) as exc:
        why = str(exc) or "no answer"
        raise LoginUnreachable(f"login server {server[0]}:{server[1]}: {why}") from None
    session = LoginSession(adapter, stream, inbox, timeout)
    await _converse(session, who, password, register)
    return session


async def login_through(
    link: Link,
    server_key: bytes,
    who: Credentials,
    *,
    password: str | None = None,
    own_link: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> LoginSession:
    """:func:`login` through the supernode at the other end of ``link``.

    With ``own_link`` the link was made for this login alone, and closes with
    the session.
    """
    stream = _login_stream(who, server_key)
    inbox: asyncio.Queue[object] = asyncio.Queue(maxsize=1024)
    carrier = TunnelCarrier(link, stream, inbox.put_nowait, own_link=own_link)
    session = LoginSession(carrier, stream, inbox, timeout)
    await _converse(session, who, password, False)
    return session


def _login_stream(who: Credentials, server_key: bytes) -> StreamSession:
    loop = asyncio.get_running_loop()
    return StreamSession(
        Identity(who.keys, b""),
        TrustStore(),
        initiator=True,
        wall_offset=time.time() - loop.time(),
        pinned_static=server_key,
    )


async def _converse(
    session: LoginSession, who: Credentials, password: str | None, register: bool
) -> None:
    """The handshake, then the login conversation; the session is closed if either fails."""
    try:
        up = await session.established()
        await _conversation(session, up, who, password, register)
    except BaseException:
        session.close()
        raise


async def _conversation(
    session: LoginSession,
    up: SessionEstablished,
    who: Credentials,
    password: str | None,
    register: bool,
) -> None:
    hello = {
        "user_id": who.user_id,
        "device_id": who.device_id,
        "sign_key": who.keys.sign_public,
        "dh_key": who.keys.dh_public,
        "client_version": f"edge {__version__}",
    }
    reply = await session.request(
        MsgType.LOGIN_HELLO, hello, MsgType.LOGIN_CHALLENGE, MsgType.LOGIN_RESULT
    )
    if reply.type is MsgType.LOGIN_RESULT:
        _refused(reply)
    if password is not None:
        kind = MsgType.LOGIN_REGISTER if register else MsgType.LOGIN_PASSWORD
        session.send(kind, {"password": password})
    signature = sign_proof(
        who.keys.sign, up.handshake_hash, bytes(reply.body.nonce), who.user_id, who.device_id
    )
    result = await session.request(
        MsgType.LOGIN_DEVICE_PROOF, {"signature": signature}, MsgType.LOGIN_RESULT
    )
    if result.body.status != ErrorCode.OK:
        _refused(result)
    session.certificate = bytes(result.body.certificate)


def _refused(result: Message) -> None:
    status = result.body.status
    code = status if isinstance(status, ErrorCode) else ErrorCode.INTERNAL
    raise LoginRefused(f"login refused: {result.body.detail}", code)


class TunnelCarrier:
    """Drives a login :class:`StreamSession` through a login tunnel on ``link``, as a
    :class:`~edge.runtime.adapters.StreamAdapter` drives one over TCP: the session's
    bytes go into a :class:`~edge.supernode.tunnel.DeviceTunnel`, whose messages go
    on the link; the tunnel's bytes from the supernode go into the session, whose
    events go to ``on_event``. The session starts its handshake once the supernode
    says the tunnel is open."""

    def __init__(
        self,
        link: Link,
        session: StreamSession,
        on_event: Callable[[object], None],
        *,
        own_link: bool = False,
    ) -> None:
        self._link = link
        self._session = session
        self._on_event = on_event
        self._own_link = own_link
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._demux = _TunnelDemux.of(link)
        self._tunnel = DeviceTunnel(self._demux.add(self), self._loop.time())
        self._done = False
        self.poke()

    def deliver(self, message: Message) -> None:
        """A LOGIN_TUNNEL_* message of this tunnel, from the link."""
        now = self._loop.time()
        opening = self._tunnel.state is DeviceState.OPENING
        data = self._tunnel.receive(message, now)
        if opening and self._tunnel.state is DeviceState.OPEN:
            self._session.connection_made(self._link.supernode, now)
        if data:
            try:
                self._session.receive_data(data, now)
            except RemoteError:
                self._tunnel.close()  # the session queued its own failure event
        self.poke()

    def poke(self) -> None:
        """Send what the session and the tunnel have, deliver events, re-arm the timer."""
        if self._done:
            return
        now = self._loop.time()
        sealed = self._session.data_to_send()
        if sealed:
            self._tunnel.write(sealed)
        try:
            for msg_type, body in self._tunnel.messages(now):
                self._link.send(msg_type, body)
        except UplinkFailed:
            self._tunnel.close()
            self._fail(ErrorCode.UNAVAILABLE, f"the link with {self._link.where} ended")
        if self._tunnel.state is DeviceState.CLOSED:
            self._tunnel_closed(self._tunnel.code)
        self._events()
        if self._tunnel.state is DeviceState.CLOSED:
            self._end()
        else:
            self._arm()

    def close(self) -> None:
        """Our side is done: the session closes, the supernode is told."""
        self._session.close()
        self._tunnel.close()
        self.poke()

    def _events(self) -> None:
        while (event := self._session.next_event()) is not None:
            self._on_event(event)

    def _tunnel_closed(self, code: ErrorCode) -> None:
        if code is ErrorCode.OK:
            self._session.connection_lost()  # the login server left: as over TCP
        else:
            self._fail(code, f"{self._link.where} closed the login tunnel: {code.name}")

    def _fail(self, code: ErrorCode, reason: str) -> None:
        if not self._session.closed:
            self._session.close()
            self._on_event(SessionFailed(0, self._link.supernode, code, reason))

    def _end(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._demux.remove(self._tunnel.tunnel_id)
        if self._own_link:
            self._link.close()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        timers = [self._tunnel.get_timer(), self._session.get_timer()]
        when = min((t for t in timers if t is not None), default=None)
        self._timer = None if when is None else self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        if self._link.closed.is_set():
            self._tunnel.close()
        self._tunnel.handle_timer(now)
        with contextlib.suppress(RemoteError):  # the session queued its own failure event
            self._session.handle_timer(now)
        self.poke()


class _TunnelDemux:
    """Takes a link's LOGIN_TUNNEL_* messages off it for their carriers, and passes
    every other message to the handler the link had."""

    def __init__(self, link: Link) -> None:
        self._fallback = link.on_message
        self._carriers: dict[int, TunnelCarrier] = {}
        self.strays = 0
        """Tunnel messages for no tunnel of ours (late ones, after a close)."""
        link.on_message = self.deliver

    @classmethod
    def of(cls, link: Link) -> "_TunnelDemux":
        """The link's demultiplexer, installed on first use."""
        current = getattr(link.on_message, "__self__", None)
        return current if isinstance(current, cls) else cls(link)

    def add(self, carrier: TunnelCarrier) -> int:
        """A fresh tunnel id for ``carrier``."""
        while (tunnel_id := int.from_bytes(os.urandom(4))) in self._carriers:
            pass
        self._carriers[tunnel_id] = carrier
        return tunnel_id

    def remove(self, tunnel_id: int) -> None:
        self._carriers.pop(tunnel_id, None)

    def deliver(self, message: Message) -> None:
        if message.type not in TUNNEL_TYPES:
            self._fallback(message)
            return
        carrier = self._carriers.get(int(message.body.tunnel_id))
        if carrier is None:
            self.strays += 1
            return
        carrier.deliver(message)

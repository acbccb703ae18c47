"""Logging in to the login server: enrol once with a password, renew with the device key.

:func:`login` opens a TCP connection, runs a Noise XX handshake that accepts
only the server's pinned key, and speaks the login conversation
(:mod:`edge.login.service`). It returns a :class:`LoginSession` holding the
fresh certificate, through which the device can go on asking (revocation
list, relay credentials, buddy list). Each request waits for its answer; the
server answers in order.
"""

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge import __version__
from edge.client.errors import LoginRefused, ServerError, UnexpectedReply
from edge.crypto.cert import TrustStore
from edge.crypto.keys import DeviceKeys
from edge.errors import LocalError
from edge.login.proof import sign_proof
from edge.runtime.adapters import StreamAdapter, open_stream_client
from edge.sansio import Address
from edge.session.events import MessageReceived, SessionEstablished, SessionFailed
from edge.session.handshake import Identity
from edge.session.stream import StreamSession
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import Message

DEFAULT_TIMEOUT = 15.0


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
        adapter: StreamAdapter,
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
    loop = asyncio.get_running_loop()
    stream = StreamSession(
        Identity(who.keys, b""),
        TrustStore(),
        initiator=True,
        wall_offset=time.time() - loop.time(),
        pinned_static=server_key,
    )
    # Events can arrive as soon as the connection is up: the queue exists first.
    inbox: asyncio.Queue[object] = asyncio.Queue(maxsize=1024)
    adapter = await asyncio.wait_for(
        open_stream_client(stream, server[0], server[1], inbox.put_nowait), timeout
    )
    session = LoginSession(adapter, stream, inbox, timeout)
    try:
        up = await session.established()
        await _conversation(session, up, who, password, register)
    except BaseException:
        session.close()
        raise
    return session


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

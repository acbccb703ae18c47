"""The login server on the network: listeners, connections, limits, graceful stop.

Each accepted TCP connection gets a :class:`~edge.session.stream.StreamSession`
(responder, devices need no certificate to come in) driven by a stream
adapter; once its handshake completes, a :class:`~edge.login.service.Conversation`
answers its messages one at a time from a per-connection task, so a slow
request (argon2id, the database) never blocks the event loop or another
connection.

Limits: at most ``max_connections`` connections; one more is answered with a
plaintext ERROR saying the server is busy and closed. A connection that stalls
in its handshake is dropped after the session's handshake timeout. Each
connection may have a few requests queued; a device that pipelines more is
disconnected.

Stopping (SIGTERM): listeners close first, each connection finishes the
request it is serving (up to ``grace`` seconds), then everything closes.
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from edge.crypto.cert import TrustStore
from edge.crypto.keys import DeviceKeys, IssuerKey
from edge.login.config import LoginConfig
from edge.login.errors import StoreError
from edge.login.service import Conversation, LoginService
from edge.login.store import Store
from edge.runtime.adapters import StreamAdapter, open_stream_server
from edge.runtime.logs import log_event
from edge.sansio import Address
from edge.session.events import MessageReceived, SessionEstablished, SessionFailed
from edge.session.handshake import Identity, ReplayGuard
from edge.session.stream import StreamSession
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import Message

_log = logging.getLogger(__name__)

MAX_QUEUED_REQUESTS = 16
MAIL_EXPIRY_INTERVAL = 3600.0


@dataclass(frozen=True)
class ServerKeys:
    """The server's Noise key (devices pin its public half) and its issuer key."""

    noise: DeviceKeys
    issuer: IssuerKey


@dataclass
class _Connection:
    adapter: StreamAdapter
    conversation: Conversation | None = None
    queue: "asyncio.Queue[Message | None]" = field(
        default_factory=lambda: asyncio.Queue(MAX_QUEUED_REQUESTS)
    )
    task: "asyncio.Task[None] | None" = None


class LoginServer:
    """Serves the login protocol on every configured address."""

    def __init__(
        self,
        config: LoginConfig,
        store: Store,
        keys: ServerKeys,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.keys = keys
        self.service = LoginService(config, store, keys.issuer, clock=clock)
        self.stats: Counter[str] = Counter()
        self._identity = Identity(keys.noise, b"")
        self._guard = ReplayGuard()
        self._listeners: list[asyncio.Server] = []
        self._connections: dict[StreamAdapter, _Connection] = {}
        self._open = 0
        self._wall_offset = 0.0
        self._expiry: asyncio.Task[None] | None = None

    async def start(self) -> list[Address]:
        """Listen on every configured address; return the bound addresses (port 0 resolved)."""
        loop = asyncio.get_running_loop()
        self._wall_offset = self.service.clock() - loop.time()
        bound: list[Address] = []
        for host, port in self.config.listen:
            listener = await open_stream_server(self._new_session, host, port, self._on_event)
            self._listeners.append(listener)
            bound.extend(
                (str(s.getsockname()[0]), int(s.getsockname()[1])) for s in listener.sockets
            )
        self._expiry = loop.create_task(self._expire_mail())
        log_event(_log, logging.INFO, "login server listening", addresses=bound)
        return bound

    async def _expire_mail(self) -> None:
        """Delete expired mailbox items now and then (fetches skip them meanwhile)."""
        service = self.service
        while True:
            try:
                removed = await service.db(service.store.mail_expire, service.now())
            except StoreError as exc:
                log_event(_log, logging.WARNING, "mailbox expiry failed", error=str(exc))
            else:
                if removed:
                    log_event(_log, logging.INFO, "mailbox items expired", count=removed)
            await asyncio.sleep(MAIL_EXPIRY_INTERVAL)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop listening, let each connection finish its current request, close all."""
        for listener in self._listeners:
            listener.close()
        if self._expiry is not None:
            self._expiry.cancel()
        tasks = []
        for connection in list(self._connections.values()):
            if connection.task is not None:
                _wake(connection)
                tasks.append(connection.task)
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for connection in list(self._connections.values()):
            if connection.task is not None:
                connection.task.cancel()
            connection.adapter.close()
        for listener in self._listeners:
            await listener.wait_closed()

    @property
    def open_connections(self) -> int:
        return self._open

    # -- connections --------------------------------------------------------------

    def _new_session(self) -> StreamSession:
        return _ServerSession(self)

    def _admit(self) -> bool:
        if self._open >= self.config.max_connections:
            self.stats["refused_busy"] += 1
            return False
        self._open += 1
        return True

    def _release(self) -> None:
        self._open -= 1

    def _on_event(self, adapter: StreamAdapter, event: object) -> None:
        if isinstance(event, SessionEstablished):
            self._begin(adapter, event)
        elif isinstance(event, MessageReceived):
            self._enqueue(adapter, event.message)
        elif isinstance(event, SessionFailed):
            self._end(adapter, event)

    def _begin(self, adapter: StreamAdapter, up: SessionEstablished) -> None:
        session = cast(StreamSession, adapter.core)

        def send(msg_type: MsgType, body: Mapping[str, Any]) -> None:
            session.send(msg_type, body)
            adapter.poke()

        connection = _Connection(adapter)
        connection.conversation = Conversation(
            self.service,
            send,
            address=up.address,
            remote_static=up.remote_static,
            handshake_hash=up.handshake_hash,
        )
        connection.task = asyncio.get_running_loop().create_task(self._serve(connection))
        self._connections[adapter] = connection
        self.stats["sessions"] += 1

    def _enqueue(self, adapter: StreamAdapter, message: Message) -> None:
        connection = self._connections.get(adapter)
        if connection is None:
            return
        try:
            connection.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.stats["dropped_pipelining"] += 1
            adapter.close()

    def _end(self, adapter: StreamAdapter, failed: SessionFailed) -> None:
        connection = self._connections.pop(adapter, None)
        if failed.code is ErrorCode.BUSY:
            adapter.poke()
            adapter.close()
        if connection is not None and connection.task is not None:
            _wake(connection)

    async def _serve(self, connection: _Connection) -> None:
        conversation = connection.conversation
        assert conversation is not None
        try:
            while (message := await connection.queue.get()) is not None:
                await conversation.handle(message)
                if conversation.finished:
                    break
        except Exception:
            # A bug of ours: say so in the log, and never leave the device hanging.
            _log.exception("request from %s failed", conversation.address)
            self.stats["internal_errors"] += 1
        finally:
            connection.adapter.close()


def _wake(connection: _Connection) -> None:
    """Tell a connection's task to finish after its current request."""
    with contextlib.suppress(asyncio.QueueFull):
        connection.queue.put_nowait(None)


class _ServerSession(StreamSession):
    """A responder session that counts itself against the server's connection limit."""

    def __init__(self, server: LoginServer) -> None:
        super().__init__(
            server._identity,
            TrustStore(),
            initiator=False,
            wall_offset=server._wall_offset,
            replay_guard=server._guard,
            require_certificate=False,
            handshake_timeout=server.config.handshake_timeout,
        )
        self._server = server
        self._counted = False

    def connection_made(self, address: Address, now: float) -> None:
        if not self._server._admit():
            self.address = address
            self.refuse(ErrorCode.BUSY, "the login server is busy; try again later")
            return
        self._counted = True
        super().connection_made(address, now)

    def connection_lost(self) -> None:
        if self._counted:
            self._counted = False
            self._server._release()
        super().connection_lost()

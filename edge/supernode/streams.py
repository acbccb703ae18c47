"""Devices that reach the supernode over TCP: one secure stream session per connection.

How it works: the relay's TCP listeners (the supernode's port, 80 and 443)
hand over a connection whose first frame is an edge session's
(:attr:`~edge.supernode.relay.RelayAdapter.edge_streams`). :class:`EdgeStream`
then drives a responder :class:`~edge.session.stream.StreamSession` over it,
registers it in the :class:`~edge.supernode.clients.ClientService`'s session
table, and passes every event it produces to
:meth:`~edge.supernode.clients.ClientService.stream_event`, so a device on
TCP is served exactly like one on UDP. After each event the supernode's UDP
side is flushed too (``after``), since serving a device on TCP can mean
sending datagrams to other supernodes.

Bad bytes end the connection (a stream cannot resynchronise), counted by
error code; a handshake that stalls ends at the session's handshake timeout.
"""

import asyncio
from collections import Counter
from collections.abc import Callable

from edge.crypto.cert import TrustStore
from edge.errors import RemoteError
from edge.sansio import Address
from edge.session.handshake import Identity, ReplayGuard
from edge.session.stream import StreamSession
from edge.supernode.clients import ClientService

MAX_WRITE_BUFFER = 1 << 20
"""A device that does not read what it is sent, past this, is disconnected."""


class EdgeStream:
    """One device's TCP connection to the supernode."""

    def __init__(
        self,
        transport: asyncio.Transport,
        peer: Address,
        clients: ClientService,
        identity: Identity,
        trust: TrustStore,
        *,
        replay_guard: ReplayGuard,
        counters: Counter[str],
        after: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.clients = clients
        self.counters = counters
        self._after = after
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self.session = StreamSession(
            identity,
            trust,
            initiator=False,
            wall_offset=clients.overlay.wall_offset,
            replay_guard=replay_guard,
        )
        index = clients.sessions.add_stream(self.session, self.flush)
        if index is None:
            counters["edge-tcp-refused"] += 1
            transport.abort()
            index = -1
        self.index = index
        self.session.connection_made(peer, self._loop.time())
        counters["edge-tcp-connections"] += 1
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.index < 0 or self.transport.is_closing():
            return
        try:
            self.session.receive_data(data, self._loop.time())
        except RemoteError as exc:
            self.counters[f"edge-tcp-{exc.code.name.lower()}"] += 1
            self._events()
            self.flush()
            self.transport.close()
            return
        self._events()

    def connection_lost(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.index < 0:
            return
        self.session.connection_lost()
        self._events()
        self.clients.sessions.remove_stream(self.index)

    def flush(self) -> None:
        data = self.session.data_to_send()
        if not data or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.counters["edge-tcp-slow"] += 1
            self.transport.abort()
            return
        self.transport.write(data)

    def _events(self) -> None:
        now = self._loop.time()
        while (event := self.session.next_event()) is not None:
            self.clients.stream_event(self.index, event, now)
        self.flush()
        self._after()
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.session.get_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.session.handle_timer(self._loop.time())
        except RemoteError as exc:
            self.counters[f"edge-tcp-{exc.code.name.lower()}"] += 1
            self._events()
            self.transport.close()
            return
        self._arm()

"""The device's link to its supernode: the login ladder, attaching, and what travels on it.

How it works: the ladder tries each supernode of the host cache, best first,
the way the seed's client did — UDP first, then TCP at the supernode's port,
then TCP 80, then TCP 443 — but raced with staggered starts
(:func:`~edge.runtime.race.race`, 250 ms apart) instead of seconds per rung,
so a device whose UDP is blocked reaches a supernode over TCP 443 within a
second. UDP attempts are sessions of the device's own
:class:`~edge.session.datagram.DatagramEndpoint` (on its port P, shared with
its calls); TCP attempts are :class:`~edge.session.stream.StreamSession`
connections. Either way the winner is a :class:`Link`: send a message,
receive the next one of some types.

:func:`attach` then asks the supernode to serve the device (ATTACH). A
supernode above its soft limit answers BUSY with alternatives; they are tried
next, counting redirects, so the device lands where there is room. Every
attempt's outcome is reported to the host cache (success with the handshake's
round-trip time, or failure), which the caller saves.
"""

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from edge.client.errors import UplinkFailed
from edge.client.hostcache import HostCache
from edge.crypto.cert import TrustStore
from edge.errors import RemoteError
from edge.runtime.adapters import DatagramAdapter, StreamAdapter, open_stream_client
from edge.runtime.race import Attempt, race
from edge.sansio import Address
from edge.session.datagram import DatagramEndpoint
from edge.session.events import MessageReceived, SessionEstablished, SessionFailed
from edge.session.handshake import Identity
from edge.session.stream import StreamSession
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import Message

ATTEMPT_TIMEOUT = 3.0
RESEND_AFTER = 0.5
"""Over UDP, a request that asks for nothing to change is sent again after this long
without an answer, then after twice as long, and so on until its timeout: one lost
datagram costs half a second, not the request (a call, a search)."""
IDEMPOTENT = frozenset(
    {MsgType.PRESENCE_LOOKUP, MsgType.PRESENCE_PUBLISH, MsgType.HOSTCACHE_REQUEST}
)
"""Requests the supernode may take twice with no harm (a publish carries the same
signed record, with its sequence number)."""
"""Seconds one rung may take (a handshake over a 40 ms path takes under 0.2 s)."""
TCP_PORTS = (80, 443)
MAX_SUPERNODES_TRIED = 4
"""Supernodes raced at once; the rest wait for the next round."""
MAX_REDIRECTS = 3
MAX_INBOX = 256


class Link:
    """A session with one supernode, over UDP or TCP.

    Answers are paired with requests by ``request_id``; any other message goes
    to :attr:`on_message` (DETACH, signalling for this device, a newer
    revocation list). Until the handshake is done, events wait in ``inbox``.
    """

    def __init__(
        self, address: Address, transport: str, rtt: float, supernode: Address | None = None
    ) -> None:
        self.address = address
        """Where this session goes (the supernode's port, or its TCP 80 or 443)."""
        self.supernode = supernode or address
        """The supernode's own address, as host caches and presence records name it."""
        self.supernode_key = b""
        """Its Noise static key, which the handshake proved."""
        self.transport = transport
        """``"udp"`` or ``"tcp"``."""
        self.rtt = rtt
        self.inbox: asyncio.Queue[object] = asyncio.Queue(MAX_INBOX)
        self.up = False
        self.closed = asyncio.Event()
        self.reason = ""
        self.on_message: Callable[[Message], None] = lambda message: None
        self._pending: dict[tuple[MsgType, int], asyncio.Future[Message]] = {}
        self._next_id = 0

    def send(self, msg_type: MsgType, body: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def deliver(self, event: object) -> None:
        """An event of this link's session, from the adapter."""
        if isinstance(event, SessionFailed):
            self._fail(event.reason)
        elif not self.up:
            if not self.inbox.full():
                self.inbox.put_nowait(event)
        elif isinstance(event, MessageReceived):
            self._message(event.message)

    def _message(self, message: Message) -> None:
        request_id = getattr(message.body, "request_id", None)
        waiter = self._pending.pop((message.type, request_id), None) if request_id else None
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(message)
            return
        self.on_message(message)

    def _fail(self, reason: str) -> None:
        self.reason = reason
        self.closed.set()
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(UplinkFailed(f"session with {self.where} ended: {reason}"))
        self._pending.clear()
        if not self.up and not self.inbox.full():
            self.inbox.put_nowait(UplinkFailed(reason))

    async def request(
        self,
        msg_type: MsgType,
        body: Mapping[str, Any],
        answer: MsgType,
        *,
        timeout: float = ATTEMPT_TIMEOUT,
    ) -> Message:
        """Send a request, with a fresh ``request_id``, and wait for its ``answer``."""
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        key = (answer, self._next_id)
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[key] = waiter
        request = {**body, "request_id": self._next_id}
        resend = self.transport == "udp" and msg_type in IDEMPOTENT
        loop = asyncio.get_running_loop()
        deadline, gap = loop.time() + timeout, RESEND_AFTER
        try:
            while True:
                self.send(msg_type, request)
                wait = deadline - loop.time()
                if resend:
                    wait = min(wait, gap)
                    gap *= 2
                try:
                    return await asyncio.wait_for(asyncio.shield(waiter), max(wait, 0.0))
                except TimeoutError:
                    if loop.time() >= deadline:
                        raise
        except TimeoutError:
            raise UplinkFailed(f"no {answer.name} from {self.where}") from None
        finally:
            waiter.cancel()
            self._pending.pop(key, None)

    async def handshake(self) -> None:
        """Wait for the session to be up (or fail)."""
        event = await asyncio.wait_for(self.inbox.get(), ATTEMPT_TIMEOUT)
        if not isinstance(event, SessionEstablished):
            raise UplinkFailed(f"handshake with {self.where}: {event}")
        self.supernode_key = event.remote_static
        self.up = True

    @property
    def where(self) -> str:
        return f"{self.address[0]}:{self.address[1]} over {self.transport}"


class UdpLink(Link):
    def __init__(
        self,
        address: Address,
        rtt: float,
        endpoint: DatagramEndpoint,
        adapter: DatagramAdapter,
        index: int,
    ) -> None:
        super().__init__(address, "udp", rtt)
        self.endpoint = endpoint
        self.adapter = adapter
        self.index = index

    def send(self, msg_type: MsgType, body: Mapping[str, Any]) -> None:
        if not self.endpoint.is_established(self.index):
            raise UplinkFailed(f"the session with {self.where} is gone")
        self.endpoint.send(self.index, msg_type, body)
        self.adapter.poke()

    def close(self) -> None:
        self.endpoint.close(self.index)
        self.closed.set()


class TcpLink(Link):
    def __init__(self, address: Address, session: StreamSession, supernode: Address) -> None:
        super().__init__(address, "tcp", 0.0, supernode)
        self.session = session
        self.adapter: StreamAdapter | None = None

    def send(self, msg_type: MsgType, body: Mapping[str, Any]) -> None:
        if self.session.closed or self.adapter is None:
            raise UplinkFailed(f"the connection to {self.where} is closed")
        self.session.send(msg_type, body)
        self.adapter.poke()

    def close(self) -> None:
        self.session.close()
        if self.adapter is not None:
            self.adapter.close()
        self.closed.set()


@dataclass
class Ladder:
    """What the ladder needs: the device's identity, its UDP endpoint, and a way to
    hear about the endpoint's sessions (the owner routes their events here)."""

    identity: Identity
    trust: TrustStore
    endpoint: DatagramEndpoint
    adapter: DatagramAdapter
    wall_offset: float
    links: dict[int, Link] = field(default_factory=dict)
    """UDP sessions by index, so the owner's router can hand each its events."""
    tcp_ports: Sequence[int] = TCP_PORTS

    def route(self, event: object) -> bool:
        """Give an endpoint event to the link it belongs to; False if none."""
        index = getattr(event, "index", None)
        link = self.links.get(index) if isinstance(index, int) else None
        if link is None:
            return False
        link.deliver(event)
        if isinstance(event, SessionFailed):
            self.links.pop(event.index, None)
        return True

    def attempts(self, address: Address) -> list[Attempt[Link]]:
        """The rungs for one supernode: UDP at its port, TCP at its port, 80, 443."""
        rungs = [Attempt(f"udp {_show(address)}", partial(self.udp, address))]
        for port in dict.fromkeys((address[1], *self.tcp_ports)):
            target = (address[0], port)
            rungs.append(Attempt(f"tcp {_show(target)}", partial(self._tcp, target, address)))
        return rungs

    async def udp(self, address: Address) -> Link:
        """A UDP session with the supernode at ``address`` (the first rung)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        index = self.endpoint.connect(address, started)
        link = UdpLink(address, 0.0, self.endpoint, self.adapter, index)
        self.links[index] = link
        self.adapter.poke()
        try:
            await link.handshake()
        except BaseException:
            self.links.pop(index, None)
            self.endpoint.close(index)
            raise
        link.rtt = loop.time() - started
        return link

    async def _tcp(self, address: Address, supernode: Address) -> Link:
        loop = asyncio.get_running_loop()
        started = loop.time()
        session = StreamSession(
            self.identity, self.trust, initiator=True, wall_offset=self.wall_offset
        )
        link = TcpLink(address, session, supernode)
        link.adapter = await asyncio.wait_for(
            open_stream_client(session, address[0], address[1], link.deliver), ATTEMPT_TIMEOUT
        )
        try:
            await link.handshake()
        except BaseException:
            link.close()
            raise
        link.rtt = loop.time() - started
        return link


async def connect(
    ladder: Ladder, cache: HostCache, order: Sequence[Address], now: Callable[[], float]
) -> tuple[str, Link]:
    """Race the rungs of the first supernodes in ``order``; the winning rung and link."""
    attempts: list[Attempt[Link]] = []
    for address in order[:MAX_SUPERNODES_TRIED]:
        attempts += ladder.attempts(address)
    try:
        name, link = await race(attempts)
    except RemoteError:
        for address in order[:MAX_SUPERNODES_TRIED]:
            cache.failure(address, now())
        raise
    cache.success(link.address, link.rtt, now())
    return name, link


@dataclass(frozen=True)
class Attached:
    link: Link
    load: int
    redirects: int


async def attach(
    ladder: Ladder, cache: HostCache, first: Link, now: Callable[[], float]
) -> Attached:
    """ATTACH at ``first``; on BUSY follow the alternatives it names (at most a few)."""
    link, redirects = first, 0
    while True:
        answer = await link.request(MsgType.ATTACH, {"redirects": redirects}, MsgType.ATTACH_RESULT)
        body = answer.body
        if body.code is ErrorCode.OK:
            return Attached(link, body.load, redirects)
        alternatives = [tuple(entry.address) for entry in body.alternatives]
        for address in alternatives:
            cache.learn(address, now())
        link.close()
        redirects += 1
        if redirects > MAX_REDIRECTS or not alternatives:
            raise UplinkFailed(f"{link.where} is busy and no alternative took this device")
        _, link = await connect(ladder, cache, alternatives, now)


def _show(address: Address) -> str:
    return f"{address[0]}:{address[1]}"

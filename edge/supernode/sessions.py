"""Every secure session a supernode holds with devices, over UDP or over TCP, by one index.

How it works: devices whose UDP gets through reach the supernode in sessions
of its :class:`~edge.session.datagram.DatagramEndpoint`, each with a random
32-bit index. Devices behind a firewall that lets only TCP out (to 80 and
443, say) reach it over TCP instead, with one
:class:`~edge.session.stream.StreamSession` per connection. The
:class:`SessionTable` gives those an index of their own, above every 32-bit
one, so the supernode's services address a device the same way whichever
transport it came by: :meth:`SessionTable.send`, :meth:`SessionTable.peer`,
:meth:`SessionTable.is_established`, :meth:`SessionTable.address`.

A stream session's output leaves as soon as it is sealed: the table calls the
connection's ``flush`` after every send, since the send may be caused by a
datagram from someone else (signalling relayed to a device on TCP, say).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.crypto.cert import Certificate
from edge.sansio import Address
from edge.session.datagram import DatagramEndpoint
from edge.session.errors import SessionUnusable
from edge.session.stream import StreamSession
from edge.wire.codes import MsgType

STREAM_BASE = 1 << 32
"""Stream sessions are numbered from here, above every datagram session's index."""

MAX_STREAMS = 100_000


@dataclass
class _Stream:
    session: StreamSession
    flush: Callable[[], None]


class SessionTable:
    """The datagram endpoint's sessions and the TCP ones, by index."""

    def __init__(self, endpoint: DatagramEndpoint) -> None:
        self.endpoint = endpoint
        self._streams: dict[int, _Stream] = {}
        self._next = STREAM_BASE

    def add_stream(self, session: StreamSession, flush: Callable[[], None]) -> int | None:
        """Number a new TCP session; None when the table is full (close the connection)."""
        if len(self._streams) >= MAX_STREAMS:
            return None
        index = self._next
        self._next += 1
        self._streams[index] = _Stream(session, flush)
        return index

    def remove_stream(self, index: int) -> None:
        self._streams.pop(index, None)

    def send(self, index: int, msg_type: MsgType, body: Mapping[str, Any]) -> None:
        stream = self._streams.get(index)
        if stream is None:
            self.endpoint.send(index, msg_type, body)
            return
        stream.session.send(msg_type, body)
        stream.flush()

    def peer(self, index: int) -> Certificate:
        stream = self._streams.get(index)
        if stream is None:
            return self.endpoint.peer(index)
        if stream.session.peer is None:
            raise SessionUnusable(f"stream session {index:#x} is not established")
        return stream.session.peer

    def is_established(self, index: int) -> bool:
        stream = self._streams.get(index)
        if stream is None:
            return self.endpoint.is_established(index)
        return stream.session.peer is not None and not stream.session.closed

    def address(self, index: int, datagram_address: Address | None) -> Address | None:
        """Where the device's session comes from: its TCP peer, or (for UDP) the
        address the overlay saw, passed in as ``datagram_address``."""
        stream = self._streams.get(index)
        return stream.session.address if stream is not None else datagram_address

    @property
    def streams(self) -> int:
        return len(self._streams)

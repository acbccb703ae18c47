"""Login tunnels: a device's TCP stream with the login server, carried through its supernode.

Why: a device that reaches a supernode but not the login server (a site that
lets out only the supernode's port, or a login server behind a filtered path)
still has to renew its certificate and fetch its revocations, relay
credentials, buddies and mailbox. So it asks its supernode to connect to the
login server for it and carries the bytes of its own Noise session with the
login server — pinned to the server's key, so the supernode sees ciphertext
only — inside its session with the supernode.

How it works, sans-IO (bytes and ``now`` in, messages and actions out):

* :class:`ChunkStream` makes one byte stream reliable over a session that may
  lose datagrams (a device's session with its supernode is often UDP). Bytes
  go out in numbered chunks of at most
  :data:`~edge.wire.messages.TUNNEL_CHUNK_MAX` bytes, at most ``window`` bytes
  unacknowledged at a time; every chunk carries a cumulative ack of the other
  direction. The receiver takes only the chunk it expects next and acks again
  otherwise; the sender repeats everything unacknowledged when its timer runs
  out (go-back-N), with the interval doubling, and gives up after
  :data:`MAX_TRIES`. An empty chunk is only an ack and is not numbered.
* :class:`DeviceTunnel` is the device's end: LOGIN_TUNNEL_OPEN, repeated until
  the supernode answers (an empty LOGIN_TUNNEL_DATA: connected) or refuses
  (LOGIN_TUNNEL_CLOSE), then the stream.
* :class:`LoginTunnels` is the supernode's end, for every device: it checks the
  caps (tunnels per device, in total, bytes waiting per tunnel, idle time),
  asks its adapter to connect (:class:`OpenLogin`), write (:class:`WriteLogin`),
  pause or resume reading (:class:`ReadLogin`) and close (:class:`CloseLogin`),
  and hands out the messages for the devices (:class:`TunnelMessage`). It
  counts everything in :attr:`LoginTunnels.counts`.

A tunnel ends when either side sends LOGIN_TUNNEL_CLOSE, when the login
server's connection ends (after what it sent has been delivered), when the
device's session with the supernode ends, when chunks go unacknowledged too
long, or when nothing moved for ``idle`` seconds.
"""

from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

from edge.sansio import Address
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import TUNNEL_CHUNK_MAX, Message

RTO_FIRST = 0.5
"""Seconds before unacknowledged chunks are sent again; doubles on each repeat."""
RTO_MAX = 4.0
MAX_TRIES = 7
"""Repeats before a tunnel is given up: about 20 s of silence."""
SEQ_LIMIT = 0xFFFFFFFF
"""Chunk numbers are u32; a tunnel that would need more ends instead of wrapping."""

REFUSALS = {
    "no-server": ErrorCode.UNAVAILABLE,
    "full": ErrorCode.BUSY,
    "device": ErrorCode.BUSY,
    "rate": ErrorCode.RATE_LIMITED,
}
"""Why LOGIN_TUNNEL_OPEN is refused (its counter's suffix) and the code the device gets."""

Key = tuple[int, int]
"""(the device's session index, its tunnel id)."""
Device = tuple[str, str]


@dataclass(frozen=True)
class TunnelLimits:
    per_device: int = 2
    """Tunnels one device (user, device) may hold open at once."""
    total: int = 64
    """Tunnels of all devices together."""
    window: int = 16 * 1024
    """Bytes sent but not yet acknowledged, per tunnel and direction."""
    buffer: int = 512 * 1024
    """Bytes waiting to be sent, per tunnel; past it the tunnel ends."""
    pause_at: int = 64 * 1024
    """Bytes waiting from the login server at which the supernode stops reading it."""
    idle: float = 60.0
    """Seconds without a byte either way after which a tunnel ends."""
    opens_per_minute: int = 10
    """Tunnels one device may open in a minute. Each is a connection to the login
    server, which throttles failures by source address: the supernode's, for every
    device it carries, so one device must not spend the others' allowance."""


class ChunkStream:
    """One tunnel's byte stream, both directions, as numbered and acknowledged chunks."""

    def __init__(self, *, window: int, buffer: int) -> None:
        self._window = window
        self._buffer = buffer
        self._pending = bytearray()
        self._unacked: deque[tuple[int, bytes]] = deque()
        self._in_flight = 0
        self._next_seq = 0
        self._expected = 0
        self._ack_due = False
        self._repeat = False
        self._repeat_at: float | None = None
        self._tries = 0
        self.failed = False
        """True once chunks went unacknowledged :data:`MAX_TRIES` times: the tunnel is dead."""

    @property
    def waiting(self) -> int:
        """Bytes written but not yet acknowledged by the other end."""
        return len(self._pending) + self._in_flight

    def write(self, data: bytes) -> bool:
        """Queue ``data``; False (nothing queued) when it would pass the buffer cap."""
        if self.waiting + len(data) > self._buffer:
            return False
        self._pending += data
        return True

    def announce(self) -> None:
        """Send an empty chunk (an ack) at the next :meth:`chunks`, even with nothing new."""
        self._ack_due = True

    def receive(self, seq: int, ack: int, data: bytes, now: float) -> bytes:
        """A chunk from the other end; the bytes it adds to the stream, in order."""
        self._acknowledged(ack, now)
        if not data:
            return b""
        self._ack_due = True
        if seq != self._expected or self._expected >= SEQ_LIMIT:
            return b""  # a repeat, or ahead of a lost one: the ack says where we are
        self._expected += 1
        return data

    def chunks(self, now: float) -> list[tuple[int, int, bytes]]:
        """(seq, ack, data) of the LOGIN_TUNNEL_DATA to send now."""
        out = [(seq, self._expected, data) for seq, data in self._unacked] if self._repeat else []
        self._repeat = False
        while self._pending and self._in_flight < self._window and self._next_seq < SEQ_LIMIT:
            data = bytes(self._pending[:TUNNEL_CHUNK_MAX])
            del self._pending[:TUNNEL_CHUNK_MAX]
            self._unacked.append((self._next_seq, data))
            self._in_flight += len(data)
            out.append((self._next_seq, self._expected, data))
            self._next_seq += 1
        if self._unacked and self._repeat_at is None:
            self._repeat_at = now + RTO_FIRST
        if not out and self._ack_due:
            out.append((self._next_seq, self._expected, b""))
        self._ack_due = False
        return out

    def get_timer(self) -> float | None:
        return self._repeat_at

    def handle_timer(self, now: float) -> None:
        if self._repeat_at is None or now < self._repeat_at:
            return
        self._tries += 1
        if self._tries > MAX_TRIES:
            self.failed = True
            self._repeat_at = None
            return
        self._repeat = True
        self._repeat_at = now + min(RTO_MAX, RTO_FIRST * 2**self._tries)

    def _acknowledged(self, ack: int, now: float) -> None:
        if ack > self._next_seq:
            return  # acks a chunk never sent: nothing to learn from it
        moved = False
        while self._unacked and self._unacked[0][0] < ack:
            _, data = self._unacked.popleft()
            self._in_flight -= len(data)
            moved = True
        if moved:
            self._tries = 0
            self._repeat = False
            self._repeat_at = now + RTO_FIRST if self._unacked else None


def data_messages(tunnel_id: int, stream: ChunkStream, now: float) -> list[dict[str, Any]]:
    """LOGIN_TUNNEL_DATA bodies for what ``stream`` has to send now."""
    return [
        {"tunnel_id": tunnel_id, "seq": seq, "ack": ack, "data": data}
        for seq, ack, data in stream.chunks(now)
    ]


# ---------------------------------------------------------------- the device's end


class DeviceState(Enum):
    OPENING = auto()
    """LOGIN_TUNNEL_OPEN sent (and repeated), no answer yet."""
    OPEN = auto()
    """The supernode is connected to the login server: the stream flows."""
    CLOSED = auto()


class DeviceTunnel:
    """The device's end of one login tunnel; see the module docstring."""

    def __init__(self, tunnel_id: int, now: float, limits: TunnelLimits | None = None) -> None:
        limits = limits or TunnelLimits()
        self.tunnel_id = tunnel_id
        self.state = DeviceState.OPENING
        self.code = ErrorCode.OK
        """Why the tunnel closed, once :attr:`state` is CLOSED."""
        self.stream = ChunkStream(window=limits.window, buffer=limits.buffer)
        self._out: list[tuple[MsgType, dict[str, Any]]] = [self._open()]
        self._tries = 0
        self._open_at: float | None = now + RTO_FIRST

    def write(self, data: bytes) -> None:
        """Bytes of the login stream to carry; past the buffer cap the tunnel closes."""
        if self.state is not DeviceState.CLOSED and not self.stream.write(data):
            self._end(ErrorCode.BUSY, tell=True)

    def receive(self, message: Message, now: float) -> bytes:
        """A LOGIN_TUNNEL_DATA or _CLOSE of this tunnel; the stream bytes it carried."""
        if self.state is DeviceState.CLOSED:
            return b""
        body = message.body
        if message.type is MsgType.LOGIN_TUNNEL_CLOSE:
            self._end(body.code if isinstance(body.code, ErrorCode) else ErrorCode.UNAVAILABLE)
            return b""
        if message.type is not MsgType.LOGIN_TUNNEL_DATA:
            return b""
        if self.state is DeviceState.OPENING:
            self.state = DeviceState.OPEN
            self._open_at = None
        return self.stream.receive(body.seq, body.ack, bytes(body.data), now)

    def close(self) -> None:
        """Our side is done: LOGIN_TUNNEL_CLOSE goes out at the next :meth:`messages`."""
        if self.state is not DeviceState.CLOSED:
            self._end(ErrorCode.OK, tell=True)

    def messages(self, now: float) -> list[tuple[MsgType, dict[str, Any]]]:
        """The messages to send the supernode now."""
        out, self._out = self._out, []
        if self.state is DeviceState.OPEN:
            out += [(MsgType.LOGIN_TUNNEL_DATA, body) for body in self._data(now)]
        return out

    def get_timer(self) -> float | None:
        return self._open_at if self.state is DeviceState.OPENING else self.stream.get_timer()

    def handle_timer(self, now: float) -> None:
        if self.state is DeviceState.OPENING:
            self._repeat_open(now)
        elif self.state is DeviceState.OPEN:
            self.stream.handle_timer(now)
            if self.stream.failed:
                self._end(ErrorCode.UNAVAILABLE, tell=True)

    def _repeat_open(self, now: float) -> None:
        if self._open_at is None or now < self._open_at:
            return
        self._tries += 1
        if self._tries > MAX_TRIES:
            self._end(ErrorCode.UNAVAILABLE)
            return
        self._out.append(self._open())
        self._open_at = now + min(RTO_MAX, RTO_FIRST * 2**self._tries)

    def _data(self, now: float) -> list[dict[str, Any]]:
        return data_messages(self.tunnel_id, self.stream, now)

    def _open(self) -> tuple[MsgType, dict[str, Any]]:
        return (MsgType.LOGIN_TUNNEL_OPEN, {"tunnel_id": self.tunnel_id})

    def _end(self, code: ErrorCode, *, tell: bool = False) -> None:
        self.state = DeviceState.CLOSED
        self.code = code
        self._open_at = None
        if tell:
            self._out.append(
                (MsgType.LOGIN_TUNNEL_CLOSE, {"tunnel_id": self.tunnel_id, "code": code})
            )


# ---------------------------------------------------------------- the supernode's end


@dataclass(frozen=True)
class OpenLogin:
    """Connect to the login server at ``address`` for tunnel ``key``; then call
    :meth:`LoginTunnels.connected`, or :meth:`LoginTunnels.login_closed` if it fails."""

    key: Key
    address: Address


@dataclass(frozen=True)
class WriteLogin:
    """Write ``data`` to tunnel ``key``'s connection to the login server."""

    key: Key
    data: bytes


@dataclass(frozen=True)
class ReadLogin:
    """Resume (``reading``) or pause reading tunnel ``key``'s login server connection."""

    key: Key
    reading: bool


@dataclass(frozen=True)
class CloseLogin:
    """Close tunnel ``key``'s connection to the login server (or stop connecting)."""

    key: Key


@dataclass(frozen=True)
class TunnelMessage:
    """A message for the device in session ``index``."""

    index: int
    type: MsgType
    body: Mapping[str, Any]


@dataclass
class _Tunnel:
    device: Device
    stream: ChunkStream
    heard: float
    connected: bool = False
    reading: bool = True
    server_gone: bool = False


@dataclass
class LoginTunnels:
    """Every login tunnel a supernode carries; see the module docstring."""

    login_servers: Sequence[Address]
    limits: TunnelLimits = field(default_factory=TunnelLimits)
    counts: Counter[str] = field(default_factory=Counter)
    """``tunnel-open``, ``tunnel-refused-device``, ``tunnel-refused-full``,
    ``tunnel-connected``, ``tunnel-connect-failed``, ``tunnel-bytes-up`` and
    ``-down``, ``tunnel-closed-<why>``, ..."""
    _tunnels: dict[Key, _Tunnel] = field(default_factory=dict)
    _actions: deque[object] = field(default_factory=deque)
    _opened: int = 0
    _recent: deque[tuple[float, Device]] = field(default_factory=deque)
    """When each tunnel of the last minute was opened, and by whom."""

    def __len__(self) -> int:
        return len(self._tunnels)

    def next_action(self) -> object | None:
        return self._actions.popleft() if self._actions else None

    # -- from devices

    def receive(self, index: int, device: Device, message: Message, now: float) -> None:
        """A LOGIN_TUNNEL_* message from the device in session ``index``."""
        key = (index, int(message.body.tunnel_id))
        if message.type is MsgType.LOGIN_TUNNEL_OPEN:
            self._open(key, device, now)
        elif message.type is MsgType.LOGIN_TUNNEL_DATA:
            self._data(key, message, now)
        elif message.type is MsgType.LOGIN_TUNNEL_CLOSE and key in self._tunnels:
            self._close(key, "device", tell=None)

    def session_gone(self, index: int) -> None:
        """The device's session ended: so do its tunnels."""
        for key in [key for key in self._tunnels if key[0] == index]:
            self._close(key, "session", tell=None)

    def _open(self, key: Key, device: Device, now: float) -> None:
        tunnel = self._tunnels.get(key)
        if tunnel is not None:
            # Our answer was lost, or is on its way: answer again once connected.
            self.counts["tunnel-open-repeated"] += 1
            if tunnel.connected:
                tunnel.stream.announce()
                self._flush(key, tunnel, now)
            return
        refusal = self._refusal(device, now)
        if refusal is not None:
            self.counts[f"tunnel-refused-{refusal}"] += 1
            self._tell_closed(key, REFUSALS[refusal])
            return
        self._recent.append((now, device))
        limits = self.limits
        stream = ChunkStream(window=limits.window, buffer=limits.buffer)
        self._tunnels[key] = _Tunnel(device, stream, now)
        server = self.login_servers[self._opened % len(self.login_servers)]
        self._opened += 1
        self.counts["tunnel-open"] += 1
        self._actions.append(OpenLogin(key, server))

    def _refusal(self, device: Device, now: float) -> str | None:
        if not self.login_servers:
            return "no-server"
        if len(self._tunnels) >= self.limits.total:
            return "full"
        held = sum(1 for tunnel in self._tunnels.values() if tunnel.device == device)
        if held >= self.limits.per_device:
            return "device"
        while self._recent and self._recent[0][0] <= now - 60.0:
            self._recent.popleft()
        opened = sum(1 for _, who in self._recent if who == device)
        return "rate" if opened >= self.limits.opens_per_minute else None

    def _data(self, key: Key, message: Message, now: float) -> None:
        tunnel = self._tunnels.get(key)
        if tunnel is None or not tunnel.connected:
            self.counts["tunnel-unknown" if tunnel is None else "tunnel-early"] += 1
            if tunnel is None:
                self._tell_closed(key, ErrorCode.NOT_FOUND)
            return
        body = message.body
        data = tunnel.stream.receive(body.seq, body.ack, bytes(body.data), now)
        tunnel.heard = now
        if data:
            self.counts["tunnel-bytes-up"] += len(data)
            self._actions.append(WriteLogin(key, data))
        if not tunnel.reading and tunnel.stream.waiting < self.limits.pause_at // 2:
            tunnel.reading = True
            self._actions.append(ReadLogin(key, True))
        self._flush(key, tunnel, now)

    # -- from the adapter

    def connected(self, key: Key, now: float) -> bool:
        """The login server took the connection: tell the device the tunnel is open.
        False when the tunnel has ended meanwhile: close the connection."""
        tunnel = self._tunnels.get(key)
        if tunnel is None:
            return False
        tunnel.connected = True
        tunnel.heard = now
        self.counts["tunnel-connected"] += 1
        tunnel.stream.announce()
        self._flush(key, tunnel, now)
        return True

    def from_login(self, key: Key, data: bytes, now: float) -> None:
        """Bytes the login server sent on tunnel ``key``'s connection."""
        tunnel = self._tunnels.get(key)
        if tunnel is None:
            return
        if not tunnel.stream.write(data):
            self._close(key, "overflow", tell=ErrorCode.BUSY)
            return
        tunnel.heard = now
        self.counts["tunnel-bytes-down"] += len(data)
        if tunnel.reading and tunnel.stream.waiting >= self.limits.pause_at:
            tunnel.reading = False
            self._actions.append(ReadLogin(key, False))
        self._flush(key, tunnel, now)

    def login_closed(self, key: Key, now: float) -> None:
        """Tunnel ``key``'s connection ended, or never came up."""
        tunnel = self._tunnels.get(key)
        if tunnel is None:
            return
        if not tunnel.connected:
            self.counts["tunnel-connect-failed"] += 1
            self._close(key, "unreachable", tell=ErrorCode.UNAVAILABLE, action=False)
            return
        # What the server said last still has to reach the device: close once delivered.
        tunnel.server_gone = True
        self._close_if_delivered(key, tunnel)

    # -- time

    def get_timer(self) -> float | None:
        timers = [tunnel.heard + self.limits.idle for tunnel in self._tunnels.values()]
        repeats = [tunnel.stream.get_timer() for tunnel in self._tunnels.values()]
        timers += [t for t in repeats if t is not None]
        return min(timers, default=None)

    def handle_timer(self, now: float) -> None:
        for key, tunnel in list(self._tunnels.items()):
            tunnel.stream.handle_timer(now)
            if tunnel.stream.failed:
                self._close(key, "lost", tell=ErrorCode.UNAVAILABLE)
            elif now >= tunnel.heard + self.limits.idle:
                self._close(key, "idle", tell=ErrorCode.UNAVAILABLE)
            else:
                self._flush(key, tunnel, now)

    # -- the rest

    def _flush(self, key: Key, tunnel: _Tunnel, now: float) -> None:
        for body in data_messages(key[1], tunnel.stream, now):
            self._actions.append(TunnelMessage(key[0], MsgType.LOGIN_TUNNEL_DATA, body))
        self._close_if_delivered(key, tunnel)

    def _close_if_delivered(self, key: Key, tunnel: _Tunnel) -> None:
        if tunnel.server_gone and tunnel.stream.waiting == 0:
            self._close(key, "server", tell=ErrorCode.OK, action=False)

    def _close(
        self,
        key: Key,
        why: str,
        *,
        tell: ErrorCode | None = ErrorCode.OK,
        action: bool = True,
    ) -> None:
        del self._tunnels[key]
        self.counts[f"tunnel-closed-{why}"] += 1
        if action:
            self._actions.append(CloseLogin(key))
        if tell is not None:
            self._tell_closed(key, tell)

    def _tell_closed(self, key: Key, code: ErrorCode) -> None:
        body = {"tunnel_id": key[1], "code": code}
        self._actions.append(TunnelMessage(key[0], MsgType.LOGIN_TUNNEL_CLOSE, body))

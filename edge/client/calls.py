"""The agent's calls on its sockets: the call cores driven over port P and peer sessions.

How it works: :class:`CallDriver` holds the device's
:class:`~edge.client.call.CallManager` and does for it what its docstring asks
of an owner:

* signalling (CALL_*, PATH_UPDATE) goes through the end-to-end session with the
  peer's device (:class:`~edge.client.peers.Peers`), which at first travels
  through the supernodes; each call remembers its session;
* connectivity checks are STUN Binding requests with short-term credentials,
  sent from port P (:attr:`~edge.client.port.PortCore.raw_out`); the answers,
  and the peer's checks, come back to :meth:`CallDriver.on_stun` through the
  port's STUN routing (a request is answered by the call whose ufrag opens its
  USERNAME; a response is matched by transaction id);
* :class:`~edge.client.call.UsePath` moves the call's session to the pair's
  remote address (:meth:`~edge.session.datagram.DatagramEndpoint.move`), so
  media and signalling leave the supernodes for the call's own path; the
  session, its keys and counters stay the same;
* media: while a call is ACTIVE, every 20 ms (:data:`FRAME_INTERVAL`) a tick
  sends the next frame of the call's source, encoded in the call's negotiated
  codec by its :class:`~edge.media.pipeline.CallAudio` (opened when the call goes active,
  closed at the first tick after it ends), and pulls one frame from that
  pipeline's jitter buffer into its sink; frames that arrive go into the
  jitter buffer. Frames and keepalives that arrive tell the call its path is
  alive.

Candidates: the host address towards the supernode at port P and, when the
self-test found one, the server-reflexive address; the relayed address of the
device's TURN allocation; and the host address on TCP, port P, where the
device takes direct TCP connections (:mod:`edge.client.direct`). A check from
an address no candidate of the peer's names teaches the call a peer-reflexive
one (:meth:`~edge.client.call.Call.check_from`).
"""

import asyncio
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from edge.client.call import (
    Call,
    CallManager,
    CallState,
    CallStateChanged,
    PathChanged,
    SendCheck,
    SendSignal,
    UsePath,
    parse_check_response,
)
from edge.client.direct import tcp_address, tcp_peer
from edge.client.errors import CallMisuse, PeerUnreachable
from edge.client.ice import Pair, candidate
from edge.client.peers import Peers
from edge.client.port import PortCore, relay_address, via_peer
from edge.errors import RemoteError
from edge.media.errors import MediaError
from edge.media.pipeline import CallAudio, silent_payload
from edge.media.stats import ReceptionStats
from edge.sansio import Address
from edge.session.events import MediaReceived
from edge.stun.attributes import AttrType
from edge.stun.codec import Class, parse
from edge.wire.codes import MsgType
from edge.wire.messages import CandidateKind, Codec, Message, PathKind, Transport

_log = logging.getLogger(__name__)

FRAME_INTERVAL = 0.020
MAX_TICK_LAG = 0.2
"""A tick this late (the loop stalled) restarts the grid rather than catching up in a
burst of frames."""
MAX_TRANSACTIONS = 1024
CALL_TYPES = frozenset(
    {
        MsgType.CALL_INVITE,
        MsgType.CALL_RINGING,
        MsgType.CALL_ACCEPT,
        MsgType.CALL_REJECT,
        MsgType.CALL_BYE,
        MsgType.PATH_UPDATE,
    }
)


@dataclass
class _Media:
    sequence: int = 0
    sent: int = 0
    received: int = 0
    stats: ReceptionStats = field(default_factory=ReceptionStats)
    """Loss and jitter of the frames received, from their sequence numbers and timestamps."""
    started: float | None = None
    """Loop time the invite went out (caller) or came in (callee)."""
    first_sent: float | None = None
    first_received: float | None = None

    def setup_ms(self) -> float | None:
        """Milliseconds from :attr:`started` until media had gone both ways, if it has."""
        if self.started is None or self.first_sent is None or self.first_received is None:
            return None
        return round((max(self.first_sent, self.first_received) - self.started) * 1000, 1)


def _reception(stats: ReceptionStats, now: float | None) -> dict[str, Any]:
    """What a call's status shows of the frames received: loss (a fraction), frames
    lost, jitter, and how long nothing has come by ``now`` (None before the first
    frame, or with no ``now``: the call is over)."""
    last = stats.last_at
    return {
        "loss": round(stats.loss, 3),
        "lost": stats.lost,
        "jitter_ms": round(stats.jitter_ms, 1),
        "silent_ms": None if last is None or now is None else round((now - last) * 1000),
    }


def _destination(pair: Pair) -> Address:
    """Where datagrams for ``pair`` go: the remote address, through our relay when the
    pair's local end is our relayed candidate, on a direct connection for TCP."""
    if pair.local.kind is CandidateKind.RELAY:
        return relay_address(pair.remote.address)
    if pair.local.transport is Transport.TCP:
        return tcp_address(pair.remote.address)
    return pair.remote.address


class CallDriver:
    """The calls of one agent; see the module docstring."""

    def __init__(
        self,
        manager: CallManager,
        peers: Peers,
        core: PortCore,
        poke: Callable[[], None],
        *,
        audio: Callable[[Codec], CallAudio] = CallAudio.silent,
    ) -> None:
        self.manager = manager
        self.peers = peers
        self.core = core
        self._poke = poke
        self.preopen: Callable[[Address], None] = lambda address: None
        self.permit: Callable[[Address], None] = lambda address: None
        """Have our TURN allocation accept traffic from ``address``'s IP."""
        self.relay_over_tcp = False
        """Our relayed candidate is reached over TCP: a path through it is relay-tcp."""
        """Send a short-lived packet to ``address`` from port P (the agent's socket)."""
        self._session_of: dict[bytes, int] = {}
        self._transactions: OrderedDict[bytes, tuple[bytes, Pair]] = OrderedDict()
        self._media: dict[bytes, _Media] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._tick_due = -math.inf
        self.history: list[CallStateChanged] = []
        self.paths: dict[bytes, PathChanged] = {}
        self._changes = asyncio.Event()
        self._open_audio = audio
        """Opens a new call's audio in the call's codec: its source and sink, as the
        configuration names them."""
        self._audio: dict[bytes, CallAudio | None] = {}
        """Each active call's pipeline; None once opening it failed (the call sends silence)."""

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checked whenever a call changes state or
        path, or a frame arrives."""
        while not condition():
            await self._changes.wait()

    def _changed(self) -> None:
        self._changes.set()
        self._changes = asyncio.Event()

    # -- the user's side

    def gather(
        self,
        host: Address,
        reflexive: Address | None,
        relayed: Address | None = None,
        *,
        tcp: bool = False,
    ) -> None:
        """Set the candidates new calls offer: host, server-reflexive, relayed, and with
        ``tcp`` the host address on TCP (port P listening for direct connections)."""
        found = [candidate(CandidateKind.HOST, Transport.UDP, host)]
        if reflexive is not None and reflexive != host:
            found.append(candidate(CandidateKind.SERVER_REFLEXIVE, Transport.UDP, reflexive, host))
        if relayed is not None:
            found.append(candidate(CandidateKind.RELAY, Transport.UDP, relayed, relayed))
        if tcp:
            found.append(candidate(CandidateKind.HOST, Transport.TCP, host))
        self.manager.candidates = found

    def place(self, user: str, session: int) -> bytes:
        now = self._now()
        call = self.manager.place(user, now)
        self._session_of[call.call_id] = session
        self.pump()
        return call.call_id

    def act(self, call_id: bytes | None, do: Callable[[Call], None]) -> bytes:
        """Run ``do`` on the call named, or on the one call under way."""
        chosen = call_id or self._current()
        if chosen not in self.manager.calls:
            raise CallMisuse("no such call")
        self.manager.act(chosen, do)
        self.pump()
        return chosen

    def _current(self) -> bytes:
        live = [c.call_id for c in self.manager.calls.values() if not c.is_ended]
        if not live:
            raise PeerUnreachable("no call is under way")
        return live[-1]

    # -- what comes in

    def on_signal(self, session: int, message: Message) -> bool:
        """A CALL_* or PATH_UPDATE from a peer session; False for any other message."""
        if message.type not in CALL_TYPES:
            return False
        call_id = bytes(message.body.call_id)
        self._session_of.setdefault(call_id, session)
        self.manager.receive(message.type, message.body, self._now())
        self.pump()
        return True

    def on_media(self, event: MediaReceived) -> None:
        # The session with a device outlives a call: its frames belong to the call
        # under way with it, not to an ended one before.
        for call_id, session in self._session_of.items():
            call = self.manager.calls.get(call_id)
            if session != event.index or call is None or call.is_ended:
                continue
            if call.pair is not None:
                media = self._media.setdefault(call_id, _Media())
                media.received += 1
                media.first_received = media.first_received or self._now()
                media.stats.frame(event.sequence, event.timestamp, self._now())
                call.media_received(call.pair, self._now())
                self._hear(call, event)
                self._changed()
                return

    def on_stun(
        self, data: bytes, source: Address, now: float, *, relayed: Address | None = None
    ) -> bool:
        """A STUN message on port P, or (``relayed``) one that came to our relayed
        address: a check from a peer, or the answer to one of ours."""
        try:
            message = parse(data)
        except RemoteError:
            return False
        if message.cls is Class.REQUEST:
            return self._answer(data, message.get(AttrType.USERNAME), source, now, relayed)
        entry = self._transactions.pop(message.transaction_id, None)
        if entry is None:
            return False
        call = self.manager.calls.get(entry[0])
        if call is None or call.remote_credentials is None:
            return True
        try:
            answer = parse_check_response(data, remote=call.remote_credentials)
        except RemoteError:
            return True
        call.check_result(entry[1], answer.ok, now, mapped=answer.mapped)
        self.manager.act(call.call_id, lambda c: None)
        self.pump()
        return True

    def _answer(
        self, data: bytes, username: object, source: Address, now: float, relayed: Address | None
    ) -> bool:
        ours = str(username or "").partition(":")[0]
        call = next((c for c in self.manager.calls.values() if c.credentials.ufrag == ours), None)
        if call is None or call.is_ended:
            return False
        direct = tcp_peer(source)
        response, request = call.answer_check(data, direct or source)
        self.core.raw_out.append((response, relay_address(source) if relayed else source))
        if request is not None:
            host = call.candidates[0].base if call.candidates else ("0.0.0.0", 0)
            if direct is not None:
                call.check_from(host, direct, request, now, Transport.TCP)
            else:
                call.check_from(relayed or host, source, request, now)
            self.manager.act(call.call_id, lambda c: None)
        self.pump()
        return True

    # -- what goes out

    def pump(self) -> None:
        while (item := self.manager.next_action()) is not None:
            call_id, action = item
            self._do(call_id, action)
        while (event := self.manager.next_event()) is not None:
            self._note(event)
        self._forget()
        self._arm()
        self._poke()

    def _forget(self) -> None:
        """Drop what we kept of the calls the manager has forgotten (ended a while
        ago): the tables stay as small as the manager's, and each frame's lookup cheap."""
        known = self.manager.calls
        if len(self._session_of) > len(known) or len(self._media) > len(known):
            for table in (self._session_of, self._media, self.paths):
                for call_id in [c for c in table if c not in known]:
                    del table[call_id]

    def _do(self, call_id: bytes, action: SendSignal | SendCheck | UsePath) -> None:
        session = self._session_of.get(call_id)
        if isinstance(action, SendSignal):
            if session is not None and self.peers.core.endpoint.is_established(session):
                self.peers.send(session, action.msg_type, action.body)
        elif isinstance(action, SendCheck):
            call = self.manager.calls.get(call_id)
            if call is None:
                return
            transaction = os.urandom(12)
            self._transactions[transaction] = (call_id, action.pair)
            while len(self._transactions) > MAX_TRANSACTIONS:
                self._transactions.popitem(last=False)
            check = call.build_check(action, transaction)
            self.core.raw_out.append((check, _destination(action.pair)))
        elif session is not None and via_peer(action.pair.remote.address) is None:
            # The session leaves the supernodes for the call's own path.
            self.peers.core.endpoint.move(session, _destination(action.pair))

    def _note(self, event: object) -> None:
        self._changed()
        if isinstance(event, CallStateChanged):
            self.history.append(event)
            del self.history[:-64]
            if event.old is CallState.IDLE:
                self._media.setdefault(event.call_id, _Media()).started = self._now()
            if event.new is CallState.CONNECTING:
                self._open_mappings(event.call_id)
            if event.new is CallState.ACTIVE:
                self._media.setdefault(event.call_id, _Media())
                self._start_media()
        elif isinstance(event, PathChanged):
            self.paths[event.call_id] = event

    def _open_mappings(self, call_id: bytes) -> None:
        """Before the checks, open our NAT's mapping towards each of the peer's direct
        candidates with a packet that dies on the way (low TTL), so that the peer's
        first check finds our door open and its NAT never sees a packet of ours
        arrive before its own mapping exists (the conntrack race DESIGN.md describes)."""
        call = self.manager.calls.get(call_id)
        if call is None:
            return
        udp = [pair for pair in call.pairs if pair.local.transport is Transport.UDP]
        targets = {
            pair.remote.address
            for pair in udp
            if pair.local.kind is not CandidateKind.RELAY
            and pair.remote.kind is not CandidateKind.RELAY
        }
        for address in targets:
            self.preopen(address)
        # Our relay passes the peer's checks only from IPs it has a permission for:
        # ask for every candidate of the peer's before the first check arrives.
        for remote in {pair.remote.address for pair in udp}:
            self.permit(remote)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.manager.get_timer()
        if at is not None:
            self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.manager.handle_timer(self._now())
        self.pump()

    # -- media

    def _start_media(self) -> None:
        """Tick every :data:`FRAME_INTERVAL` on a fixed grid: each tick is due one
        interval after the one before was *due*, not after it ran, so the rate of
        frames is the sound card's (re-arming after each tick's work would run a few
        per cent slow, and the card's ring would drop and pad frames to make up)."""
        if self._ticker is not None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = self._tick_due + FRAME_INTERVAL
        if not now - MAX_TICK_LAG <= due:
            due = now + FRAME_INTERVAL  # the first tick, or one long stalled: start afresh
        self._tick_due = due
        self._ticker = loop.call_at(due, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        active = [c for c in self.manager.calls.values() if c.state is CallState.ACTIVE]
        self._close_audio(keep={c.call_id for c in active})
        for call in active:
            self._play(call.call_id)
            session = self._session_of.get(call.call_id)
            if session is None or not self.peers.core.endpoint.is_established(session):
                continue
            media = self._media.setdefault(call.call_id, _Media())
            media.sequence = (media.sequence + 1) & 0xFFFF
            audio = self._audio.get(call.call_id)
            self.peers.core.endpoint.send_media(
                session, stream_id=0, codec=self._codec(call.call_id), sequence=media.sequence,
                flags=audio.flags if audio else 0,
                timestamp=(media.sequence * 320) & 0xFFFFFFFF, payload=self._payload(call.call_id),
            )  # fmt: skip
            media.sent += 1
            media.first_sent = media.first_sent or self._now()
        if active:
            self._poke()
            self._start_media()

    def _pipeline(self, call_id: bytes) -> CallAudio | None:
        if call_id not in self._audio:
            try:
                self._audio[call_id] = self._open_audio(self._codec(call_id))
            except MediaError as exc:
                _log.warning("call %s: no audio, sending silence: %s", call_id.hex(), exc)
                self._audio[call_id] = None
        return self._audio[call_id]

    def _payload(self, call_id: bytes) -> bytes:
        audio = self._pipeline(call_id)
        return silent_payload(self._codec(call_id)) if audio is None else audio.payload()

    def _codec(self, call_id: bytes) -> Codec:
        """What the call negotiated (every active call has)."""
        call = self.manager.calls.get(call_id)
        return call.codec if call is not None and call.codec is not None else Codec.OPUS

    def _hear(self, call: Call, event: MediaReceived) -> None:
        """A frame of an active call to its jitter buffer; one of a call still
        connecting at our end (the peer went active first) is dropped."""
        audio = self._pipeline(call.call_id) if call.state is CallState.ACTIVE else None
        if audio is not None:
            audio.receive(
                event.codec,
                event.sequence,
                event.timestamp,
                event.payload,
                self._now(),
                flags=event.flags,
            )

    def _play(self, call_id: bytes) -> None:
        audio = self._pipeline(call_id)
        if audio is not None:
            audio.play(self._now())

    def _close_audio(self, keep: Collection[bytes] = ()) -> None:
        for call_id in [c for c in self._audio if c not in keep]:
            audio = self._audio.pop(call_id)
            if audio is not None:
                audio.close()

    def close_audio(self) -> None:
        """Close every call's audio (its files): for the owner, as it stops."""
        self._close_audio()

    def status(self) -> list[dict[str, Any]]:
        out = []
        for call in self.manager.calls.values():
            media = self._media.get(call.call_id, _Media())
            path = self.paths.get(call.call_id)
            out.append(
                {
                    "id": call.call_id.hex(),
                    "peer": call.peer,
                    "state": call.state.name.lower(),
                    "reason": call.reason.value if call.reason else None,
                    "path": self._path_name(call),
                    "rtt_ms": round(path.rtt * 1000, 1) if path and path.rtt else None,
                    "pairs": len(call.pairs),
                    "frames_sent": media.sent,
                    "frames_received": media.received,
                    **_reception(media.stats, None if call.is_ended else self._now()),
                    "setup_ms": media.setup_ms(),
                    "audio": self._quality(call.call_id, path.rtt if path else None),
                }
            )
        return out

    def _quality(self, call_id: bytes, rtt: float | None) -> dict[str, object] | None:
        """The call's audio, while it has some (:meth:`CallAudio.quality`)."""
        audio = self._audio.get(call_id)
        return None if audio is None else audio.quality(rtt * 1000 if rtt else None)

    def _path_name(self, call: Call) -> str | None:
        kind = call.path_kind
        if kind is None or call.pair is None:
            return None
        if self.relay_over_tcp and call.pair.local.kind is CandidateKind.RELAY:
            kind = PathKind.RELAY_TCP
        return kind.name.lower().replace("_", "-")

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

"""Two call cores back to back over a simulated network and a simulated clock.

The network knows each side's candidates and NAT (one endpoint-independent
mapping per base). A packet on a pair leaves from the local candidate (its NAT
mapping when the destination is public, the relay for a relayed candidate),
reaches the remote address if it is public or on the same LAN, and arrives
at the peer's base (or relay). A path is the two addresses on the wire; the
test kills paths. Checks are real STUN bytes built and answered by the cores'
helpers; signalling is encoded and decoded with edge.wire, so every body the
cores send is a valid message.
"""

import contextlib
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aioice import stun as aioice_stun
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge.client.call import (
    MAX_LEARNED,
    Action,
    Call,
    CallConfig,
    CallManager,
    CallState,
    CallStateChanged,
    EndReason,
    Event,
    IceCredentials,
    PathChanged,
    RemoteAlerting,
    SendCheck,
    SendSignal,
    UsePath,
    answer_check,
    build_check,
    parse_check,
    parse_check_response,
)
from edge.client.errors import CallMisuse, CheckRefused
from edge.client.ice import PATH_KINDS, ROLES, Candidate, Pair, Role, candidate, path_kind
from edge.errors import EdgeError
from edge.sansio import Address
from edge.stun.attributes import AttrType
from edge.stun.codec import Class, Message, Method, build, short_term_key
from edge.stun.errors import StunError
from edge.wire.codes import MsgType
from edge.wire.messages import CandidateKind, PathKind, Transport, decode, encode

HOST, SRFLX, RELAY = CandidateKind.HOST, CandidateKind.SERVER_REFLEXIVE, CandidateKind.RELAY
UDP, TCP = Transport.UDP, Transport.TCP
CALL_ID = bytes(range(16))
SIGNAL_DELAY = 0.05
"""Through two supernodes."""
WIRE_DELAY = 0.02
FRAME = 0.02
"""One 20 ms audio frame each way while ACTIVE."""

A_HOST = candidate(HOST, UDP, ("10.0.0.2", 4000))
A_SRFLX = candidate(SRFLX, UDP, ("198.18.0.2", 61000), ("10.0.0.2", 4000))
A_RELAY = candidate(RELAY, UDP, ("198.18.0.30", 50000), ("10.0.0.2", 4000))
B_HOST = candidate(HOST, UDP, ("10.0.1.7", 5000))
B_SRFLX = candidate(SRFLX, UDP, ("198.18.0.7", 62000), ("10.0.1.7", 5000))
B_RELAY = candidate(RELAY, UDP, ("198.18.0.31", 50001), ("10.0.1.7", 5000))
NAT = {A_HOST.address: A_SRFLX.address, B_HOST.address: B_SRFLX.address}
Wire = frozenset[Address]
"""A path on the wire: the two addresses a packet travels between."""
PUNCHED = frozenset({A_SRFLX.address, B_SRFLX.address})
"""The wire path of the hole-punched pair."""


@dataclass
class Side:
    call: Call
    cands: list[Candidate]
    path: Pair | None = None
    paths: list[tuple[float, Pair]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    """When media from the peer arrived."""
    events: list[Event] = field(default_factory=list)
    signals: list[SendSignal] = field(default_factory=list)
    checks: dict[bytes, SendCheck] = field(default_factory=dict)
    sent_checks: list[tuple[float, SendCheck]] = field(default_factory=list)

    @property
    def ends(self) -> list[CallStateChanged]:
        return [e for e in self.events if isinstance(e, CallStateChanged) and e.reason]


class Sim:
    def __init__(
        self,
        a_cands: list[Candidate],
        b_cands: list[Candidate],
        *,
        config: CallConfig | None = None,
        lose: Callable[[SendSignal], bool] = lambda signal: False,
        lose_on_wire: Callable[[], bool] = lambda: False,
        lose_check: Callable[[SendCheck], bool] = lambda check: False,
        symmetric: frozenset[Address] = frozenset(),
    ) -> None:
        config = config or CallConfig()
        self.symmetric = symmetric
        """Bases behind a symmetric NAT: a new mapping for each destination, open only
        to that destination; their server-reflexive address lets no peer in."""
        self.mappings: dict[Address, tuple[Address, Address]] = {}
        """A symmetric NAT's mappings: public address -> (base, the one peer let in)."""
        self.a = Side(
            Call(
                CALL_ID,
                "alice",
                a_cands,
                IceCredentials("aaaa", "a" * 22),
                tiebreaker=1,
                config=config,
            ),
            a_cands,
        )
        self.b = Side(
            Call(
                CALL_ID,
                "bob",
                b_cands,
                IceCredentials("bbbb", "b" * 22),
                tiebreaker=2,
                config=config,
            ),
            b_cands,
        )
        self.now = 0.0
        self.dead: set[Wire] = set()
        self.lose, self.lose_on_wire, self.lose_check = lose, lose_on_wire, lose_check
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._tid = itertools.count()
        self._next_frame = 0.0

    def peer(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    def at(self, when: float, do: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), do))

    # -- the clock

    def run(self, until: float) -> None:
        while True:
            self._pump()
            times = [self._next_frame]
            times += [
                t for t in (self.a.call.get_timer(), self.b.call.get_timer()) if t is not None
            ]
            if self._queue:
                times.append(self._queue[0][0])
            when = min(times)
            if when > until:
                self.now = until
                return
            self.now = max(self.now, when)
            self._step()

    def _step(self) -> None:
        if self._queue and self._queue[0][0] <= self.now:
            heapq.heappop(self._queue)[2]()
            return
        for side in (self.a, self.b):
            timer = side.call.get_timer()
            if timer is not None and timer <= self.now:
                side.call.handle_timer(self.now)
                return
        self._next_frame = self.now + FRAME
        for side in (self.a, self.b):
            if side.call.state is CallState.ACTIVE and side.path is not None:
                self._send_media(side, side.path)

    def _pump(self) -> None:
        for side in (self.a, self.b):
            while (action := side.call.next_action()) is not None:
                self._dispatch(side, action)
            while (event := side.call.next_event()) is not None:
                side.events.append(event)
            if side.call.state not in (CallState.IDLE, CallState.ENDED):
                assert side.call.get_timer() is not None, "a live call without a timer is stuck"

    def _dispatch(self, side: Side, action: SendSignal | SendCheck | UsePath) -> None:
        if isinstance(action, SendSignal):
            side.signals.append(action)
            data = encode(action.msg_type, action.body)  # every body must be valid wire
            if not self.lose(action):
                self.at(self.now + SIGNAL_DELAY, lambda: self._deliver_signal(side, data))
        elif isinstance(action, SendCheck):
            tid = next(self._tid).to_bytes(12, "big")
            side.checks[tid] = action
            side.sent_checks.append((self.now, action))
            if self.lose_check(action):
                return
            data = side.call.build_check(action, tid)
            self._send(side, action.pair, lambda *at: self._check_arrives(side, data, *at))
        else:
            side.path = action.pair
            side.paths.append((self.now, action.pair))

    # -- the network

    def route(self, side: Side, pair: Pair) -> tuple[Address, Address] | None:
        """Where a packet on ``pair`` arrives at the peer, and from which address."""
        dst = pair.remote.address
        private = dst[0].startswith("10.")
        if private and (pair.local.kind is RELAY or dst[0][:7] != pair.local.address[0][:7]):
            return None  # a private address of another LAN, or from a relay
        if pair.local.kind is RELAY or private:
            src = pair.local.address
        elif pair.local.address in self.symmetric:
            src = self._mapping(pair.local.address, dst)
        else:
            src = NAT.get(pair.local.address, pair.local.address)
        if dst in self.mappings:
            base, let_in = self.mappings[dst]
            return (base, src) if src == let_in else None
        owner = next((c for c in self.peer(side).cands if c.address == dst), None)
        if owner is None or (owner.kind is SRFLX and owner.base in self.symmetric):
            return None
        return (owner.base if owner.kind is SRFLX else owner.address), src

    def _mapping(self, base: Address, dst: Address) -> Address:
        for public, (mapped_base, let_in) in self.mappings.items():
            if (mapped_base, let_in) == (base, dst):
                return public
        public = ("198.18.0.99", 40000 + len(self.mappings))
        self.mappings[public] = (base, dst)
        return public

    def _send(
        self, side: Side, pair: Pair, arrive: Callable[[Address, Address, Wire], None]
    ) -> None:
        route = self.route(side, pair)
        if route is None:
            return
        local, src = route
        wire = frozenset({src, pair.remote.address})

        def deliver() -> None:
            if wire not in self.dead and not self.peer(side).call.is_ended:
                arrive(local, src, wire)

        if wire not in self.dead and not self.lose_on_wire():
            self.at(self.now + WIRE_DELAY, deliver)

    def _deliver_signal(self, side: Side, data: bytes) -> None:
        message = decode(data)
        self.peer(side).call.receive(message.type, message.body, self.now)

    def _check_arrives(
        self, side: Side, data: bytes, local: Address, src: Address, wire: Wire
    ) -> None:
        peer = self.peer(side)
        response, request = peer.call.answer_check(data, src)
        if request is not None:
            peer.call.check_from(local, src, request, self.now)
            # The answer goes back the way the check came, if that way still works.
            self.at(self.now + WIRE_DELAY, lambda: self._answer_arrives(side, response, wire))

    def _answer_arrives(self, side: Side, data: bytes, wire: Wire) -> None:
        if wire in self.dead or side.call.is_ended or side.call.remote_credentials is None:
            return
        answer = parse_check_response(data, remote=side.call.remote_credentials)
        check = side.checks.pop(answer.transaction_id)
        side.call.check_result(check.pair, answer.ok, self.now, mapped=answer.mapped)

    def _send_media(self, side: Side, pair: Pair) -> None:
        def arrive(local: Address, src: Address, wire: Wire) -> None:
            peer = self.peer(side)
            peer.arrivals.append(self.now)
            found = peer.call.find_pair(local, src, pair.local.transport)
            if found is not None:
                peer.call.media_received(found, self.now)

        self._send(side, pair, arrive)

    # -- scripts

    def connect(self) -> None:
        """Invite, ring, answer, check, nominate: both ACTIVE."""
        self.a.call.invite("bob", self.now)
        self.run(self.now + 0.5)
        assert self.b.call.state is CallState.RINGING
        self.b.call.answer(self.now)
        self.run(self.now + 2.0)
        assert {self.a.call.state, self.b.call.state} == {CallState.ACTIVE}

    def wire_of(self, side: Side) -> Wire:
        """The wire path a side's media takes."""
        assert side.call.pair is not None
        route = self.route(side, side.call.pair)
        assert route is not None
        return frozenset({route[1], side.call.pair.remote.address})


def nat_sim(**kwargs: object) -> Sim:
    return Sim([A_HOST, A_SRFLX, A_RELAY], [B_HOST, B_SRFLX, B_RELAY], **kwargs)  # type: ignore[arg-type]


def states(side: Side) -> list[CallState]:
    return [e.new for e in side.events if isinstance(e, CallStateChanged)]


# ---------------------------------------------------------------- happy paths


def test_invite_ring_answer_checks_nominate_active_punched() -> None:
    sim = nat_sim()
    sim.connect()
    assert states(sim.a) == [CallState.INVITING, CallState.CONNECTING, CallState.ACTIVE]
    assert states(sim.b) == [CallState.RINGING, CallState.CONNECTING, CallState.ACTIVE]
    assert any(isinstance(e, RemoteAlerting) for e in sim.a.events)
    assert sim.a.call.path_kind is PathKind.PUNCHED_UDP
    assert sim.b.call.path_kind is PathKind.PUNCHED_UDP
    changed = [e for e in sim.a.events if isinstance(e, PathChanged)]
    assert changed[0].kind is PathKind.PUNCHED_UDP and changed[0].rtt == pytest.approx(0.04)
    assert sim.a.signals[-1].msg_type is MsgType.PATH_UPDATE
    sim.run(sim.now + 5.0)
    assert sim.b.arrivals and sim.a.arrivals  # media both ways
    assert sim.a.call.state is sim.b.call.state is CallState.ACTIVE
    assert sim.a.call.codec is sim.b.call.codec


def test_same_lan_is_direct_udp() -> None:
    b_host = candidate(HOST, UDP, ("10.0.0.3", 5000))
    sim = Sim([A_HOST, A_SRFLX], [b_host])
    sim.connect()
    assert sim.a.call.path_kind is sim.b.call.path_kind is PathKind.DIRECT_UDP


def test_only_relays_work_gives_relay_udp() -> None:
    sim = nat_sim()
    sim.dead.add(PUNCHED)
    sim.connect()
    assert sim.a.call.path_kind is sim.b.call.path_kind is PathKind.RELAY_UDP


def test_the_call_starts_on_the_first_pair_that_works_and_moves_up_to_a_better_one() -> None:
    """The punched pair is slow to answer (its first checks are lost): the caller does not
    wait for it, goes active on the relayed pair, and moves up once the punched one
    answers; the callee follows."""
    sim = nat_sim(lose_check=lambda check: check.attempt < 3 and check.pair.remote == B_SRFLX)
    sim.a.call.invite("bob", sim.now)
    sim.run(0.5)
    sim.b.call.answer(sim.now)
    sim.run(sim.now + 1.0)
    assert sim.a.call.state is CallState.ACTIVE
    assert sim.a.call.path_kind is PathKind.RELAY_UDP
    sim.run(sim.now + 3.0)
    assert sim.a.call.path_kind is sim.b.call.path_kind is PathKind.PUNCHED_UDP
    kinds = [e.kind for e in sim.a.events if isinstance(e, PathChanged)]
    assert kinds == [PathKind.RELAY_UDP, PathKind.PUNCHED_UDP]
    assert sim.a.signals[-1].msg_type is MsgType.PATH_UPDATE


def test_after_the_upgrade_window_the_call_stays_where_it_is() -> None:
    config = CallConfig(upgrade_window=0.5)
    sim = nat_sim(config=config, lose_check=lambda check: check.pair.remote == B_SRFLX)
    sim.connect()
    assert sim.a.call.path_kind is PathKind.RELAY_UDP
    checks_before = len(sim.a.sent_checks)
    sim.run(sim.now + 5.0)
    assert sim.a.call.path_kind is PathKind.RELAY_UDP
    late = [c for t, c in sim.a.sent_checks[checks_before:] if c.pair.remote == B_SRFLX]
    assert 0 < len(late) <= 6  # as a backup, once a second: no more setup checks


A_PUBLIC = candidate(HOST, UDP, ("198.18.0.2", 4000))


@pytest.mark.parametrize("public_calls", [True, False])
def test_a_public_device_and_one_behind_a_symmetric_nat_punch_through(
    public_calls: bool,
) -> None:
    """The symmetric NAT's mapping towards the public device is news to it: learnt from
    the peer's check as a peer-reflexive candidate, it makes a punched path, no relay."""
    public, behind = [A_PUBLIC, A_RELAY], [B_HOST, B_SRFLX, B_RELAY]
    a, b = (public, behind) if public_calls else (behind, public)
    sim = Sim(a, b, symmetric=frozenset({B_HOST.address}))
    sim.connect()
    assert sim.a.call.path_kind is sim.b.call.path_kind is PathKind.PUNCHED_UDP
    side = sim.a if public_calls else sim.b
    assert side.call.pair is not None
    assert side.call.pair.remote.kind is CandidateKind.PEER_REFLEXIVE
    assert side.call.pair.remote.address in sim.mappings
    sim.run(sim.now + 3.0)
    assert sim.a.call.state is sim.b.call.state is CallState.ACTIVE
    assert sim.a.arrivals and sim.b.arrivals


def test_without_the_peer_reflexive_path_a_symmetric_pair_is_relayed() -> None:
    sim = Sim([A_HOST, A_SRFLX, A_RELAY], [B_HOST, B_SRFLX, B_RELAY],
              symmetric=frozenset({A_HOST.address, B_HOST.address}))  # fmt: skip
    sim.connect()
    assert sim.a.call.path_kind is sim.b.call.path_kind is PathKind.RELAY_UDP


def test_a_call_learns_a_few_peer_reflexive_candidates_and_no_more() -> None:
    sim = Sim([A_PUBLIC, A_RELAY], [B_HOST, B_SRFLX, B_RELAY])
    sim.connect()
    call, peer = sim.a.call, sim.b.call
    before = len(call.pairs)
    for port in range(MAX_LEARNED + 3):
        check = SendCheck(sim.b.call.pairs[0], 1, False)
        data = peer.build_check(check, port.to_bytes(12, "big"))
        _, request = call.answer_check(data, ("198.18.0.77", 30000 + port))
        assert request is not None
        call.check_from(A_PUBLIC.address, ("198.18.0.77", 30000 + port), request, sim.now)
    assert len(call.pairs) == before + MAX_LEARNED
    assert call.drops["too many peer-reflexive"] == 3


def test_public_tcp_hosts_are_direct_tcp() -> None:
    mine = candidate(HOST, TCP, ("198.18.0.2", 443))
    theirs = candidate(HOST, TCP, ("198.18.0.7", 443))
    sim = Sim([mine], [theirs])
    sim.connect()
    assert sim.a.call.path_kind is sim.b.call.path_kind is PathKind.DIRECT_TCP


# ---------------------------------------------------------------- endings


@pytest.mark.parametrize("reason", [EndReason.REJECTED, EndReason.BUSY])
def test_reject_or_busy_button(reason: EndReason) -> None:
    sim = nat_sim()
    sim.a.call.invite("bob", 0.0)
    sim.run(0.5)
    sim.b.call.reject(sim.now, reason)
    sim.run(1.0)
    assert sim.a.call.reason is sim.b.call.reason is reason
    assert sim.a.ends[0].by_peer and not sim.b.ends[0].by_peer


def test_no_answer_times_out_and_is_configurable() -> None:
    sim = nat_sim(config=CallConfig(no_answer_timeout=5.0))
    sim.a.call.invite("bob", 0.0)
    sim.run(4.9)
    assert sim.a.call.state is CallState.INVITING and sim.b.call.state is CallState.RINGING
    invites = [s for s in sim.a.signals if s.msg_type is MsgType.CALL_INVITE]
    assert len(invites) == 3  # at 0, 1 and 3 s: repeated in case one is lost
    sim.run(6.0)
    assert sim.a.call.reason is EndReason.NO_ANSWER
    assert sim.b.call.reason is EndReason.NO_ANSWER
    assert sim.a.call.ended_at == pytest.approx(5.0)
    assert sim.a.call.get_timer() is None and sim.b.call.get_timer() is None


def test_caller_cancels_before_answer() -> None:
    sim = nat_sim()
    sim.a.call.invite("bob", 0.0)
    sim.run(0.5)
    sim.a.call.hangup(sim.now)
    sim.run(1.0)
    assert sim.a.call.reason is sim.b.call.reason is EndReason.CANCELLED
    # The user pressing answer just too late is not an error.
    sim.b.call.answer(sim.now)
    assert sim.b.call.state is CallState.ENDED


@pytest.mark.parametrize("who", ["caller", "callee"])
def test_hang_up_from_either_side(who: str) -> None:
    sim = nat_sim()
    sim.connect()
    ender, other = (sim.a, sim.b) if who == "caller" else (sim.b, sim.a)
    ender.call.hangup(sim.now)
    sim.run(sim.now + 1.0)
    assert ender.call.reason is other.call.reason is EndReason.HANGUP
    assert other.ends[0].by_peer and not ender.ends[0].by_peer
    assert len(ender.ends) == len(other.ends) == 1
    ender.call.hangup(sim.now)  # twice is harmless
    assert len(ender.ends) == 1


def test_failure_when_no_pair_works() -> None:
    sim = nat_sim()
    sim.a.call.invite("bob", 0.0)
    sim.run(0.5)
    sim.dead |= {
        PUNCHED,
        frozenset({A_SRFLX.address, B_RELAY.address}),
        frozenset({A_RELAY.address, B_SRFLX.address}),
        frozenset({A_RELAY.address, B_RELAY.address}),
    }
    sim.b.call.answer(sim.now)
    sim.run(30.0)
    assert sim.a.call.reason is sim.b.call.reason is EndReason.FAILED
    assert sim.a.call.ended_at is not None and sim.a.call.ended_at < 10.0


def test_lost_accept_is_repaired_by_the_repeated_invite() -> None:
    lost = iter([True])

    def once() -> bool:
        return next(lost, False)

    sim = nat_sim(lose=lambda signal: signal.msg_type is MsgType.CALL_ACCEPT and once())
    sim.a.call.invite("bob", 0.0)
    sim.run(0.5)
    sim.b.call.answer(sim.now)
    sim.run(5.0)
    assert sim.a.call.state is sim.b.call.state is CallState.ACTIVE


@pytest.mark.parametrize("lose_update", [False, True])
def test_the_callee_follows_path_update_or_media_when_use_candidate_is_lost(
    lose_update: bool,
) -> None:
    sim = nat_sim(
        lose=lambda signal: lose_update and signal.msg_type is MsgType.PATH_UPDATE,
        lose_check=lambda check: check.use_candidate,
    )
    sim.connect()
    assert sim.wire_of(sim.a) == sim.wire_of(sim.b) == PUNCHED
    sim.run(sim.now + 3.0)
    assert media_gap(sim.a.arrivals, 2.0) < 0.1 and media_gap(sim.b.arrivals, 2.0) < 0.1


def test_consent_every_half_second_and_backups_every_second() -> None:
    sim = nat_sim()
    sim.connect()
    start = sim.now
    sim.run(start + 5.0)
    later = [(t, c) for t, c in sim.a.sent_checks if t > start]
    consent = [t for t, c in later if c.pair == sim.a.call.pair]
    backups = [c for _, c in later if c.pair != sim.a.call.pair]
    assert all(c.use_candidate for t, c in later if c.pair == sim.a.call.pair)
    assert not any(c.use_candidate for c in backups)
    assert len(consent) == 10 and {round(b - a, 3) for a, b in itertools.pairwise(consent)} == {0.5}
    assert len(backups) == 5 * 3  # three backups, once a second
    assert len({c.pair for c in backups}) == 3


# ---------------------------------------------------------------- path death


def media_gap(arrivals: list[float], after: float) -> float:
    times = [t for t in arrivals if t >= after]
    return max(b - a for a, b in itertools.pairwise(times))


def punched_path_dies_at_10_s(sim: Sim) -> Sim:
    sim.connect()
    sim.run(10.0)
    assert sim.a.call.path_kind is PathKind.PUNCHED_UDP
    sim.dead.add(PUNCHED)
    return sim


def test_path_death_with_a_backup_switches_within_two_seconds_of_audio() -> None:
    sim = punched_path_dies_at_10_s(nat_sim())
    sim.run(20.0)
    assert sim.a.call.state is sim.b.call.state is CallState.ACTIVE
    assert sim.a.call.path_kind is sim.b.call.path_kind is PathKind.RELAY_UDP
    for side in (sim.a, sim.b):
        gap = media_gap(side.arrivals, 9.0)
        assert gap <= 2.0, f"{gap:.3f} s of lost audio"
        assert gap <= 1.2  # dead_after (1 s) plus a frame and the wire delays
    updates = [s for s in sim.a.signals if s.msg_type is MsgType.PATH_UPDATE]
    assert updates[-1].body["path_kind"] is PathKind.RELAY_UDP
    assert sim.a.paths[-1][0] - 10.0 <= 1.1  # switched about dead_after after the death
    assert len([t for t, _ in sim.b.paths if t > 10.0]) <= 2  # its own choice, then A's
    # Both sides ended on the same wire path: the callee followed the caller.
    assert sim.wire_of(sim.a) == sim.wire_of(sim.b)


def test_path_death_without_backup_ends_path_lost() -> None:
    sim = punched_path_dies_at_10_s(Sim([A_HOST, A_SRFLX], [B_HOST, B_SRFLX]))
    sim.run(15.0)
    assert sim.a.call.state is CallState.ACTIVE  # still looking for a path
    sim.run(30.0)
    first, second = sorted((sim.a, sim.b), key=lambda s: s.call.ended_at or 0.0)
    assert first.call.reason is EndReason.PATH_LOST
    # The wire has no PATH_LOST: a peer told by CALL_BYE hears FAILED.
    assert second.call.reason in (EndReason.PATH_LOST, EndReason.FAILED)
    assert 19.9 <= (first.call.ended_at or 0.0) <= 20.1  # 10 s after the last packet


def test_a_path_that_comes_back_is_kept() -> None:
    sim = punched_path_dies_at_10_s(Sim([A_HOST, A_SRFLX], [B_HOST, B_SRFLX]))
    sim.run(13.0)
    sim.dead.clear()
    sim.run(20.0)
    assert sim.a.call.state is sim.b.call.state is CallState.ACTIVE
    assert media_gap(sim.b.arrivals, 15.0) < 0.1


# ---------------------------------------------------------------- the manager


def invite_body(call_id: bytes, caller: str = "carol") -> dict[str, object]:
    caller_call = Call(call_id, caller, [A_HOST], IceCredentials("cccc", "c" * 22), tiebreaker=3)
    caller_call.invite("bob", 0.0)
    action = caller_call.next_action()
    assert isinstance(action, SendSignal)
    return action.body


def drain(manager: CallManager) -> list[tuple[bytes, Action]]:
    out = []
    while (item := manager.next_action()) is not None:
        out.append(item)
    return out


def test_a_device_in_a_call_answers_busy() -> None:
    bob = CallManager("bob")
    bob.candidates = [B_HOST, B_SRFLX]
    bob.receive(MsgType.CALL_INVITE, invite_body(b"1" * 16, "alice"), 0.0)
    assert bob.calls[b"1" * 16].state is CallState.RINGING and bob.busy
    drain(bob)
    second = invite_body(b"2" * 16)
    bob.receive(MsgType.CALL_INVITE, second, 0.1)
    ((call_id, reply),) = drain(bob)
    assert call_id == b"2" * 16 and b"2" * 16 not in bob.calls
    assert isinstance(reply, SendSignal) and reply.msg_type is MsgType.CALL_REJECT
    carol = Call(b"2" * 16, "carol", [A_HOST], IceCredentials("cccc", "c" * 22), tiebreaker=3)
    carol.invite("bob", 0.0)
    message = decode(encode(reply.msg_type, reply.body))
    carol.receive(message.type, message.body, 0.2)
    assert carol.reason is EndReason.BUSY
    assert bob.busy_rejected == 1


def test_auto_answer_from_the_allow_list_only() -> None:
    door = CallManager("door", auto_answer={"alice"})
    door.candidates = [B_HOST]
    door.receive(MsgType.CALL_INVITE, invite_body(b"1" * 16, "alice"), 0.0)
    assert door.calls[b"1" * 16].state is CallState.CONNECTING
    sent = [a.msg_type for _, a in drain(door) if isinstance(a, SendSignal)]
    assert sent == [MsgType.CALL_RINGING, MsgType.CALL_ACCEPT]
    door.act(b"1" * 16, lambda call: call.hangup(1.0))
    door.receive(MsgType.CALL_INVITE, invite_body(b"2" * 16, "mallory"), 2.0)
    assert door.calls[b"2" * 16].state is CallState.RINGING


def test_the_manager_caps_calls_and_forgets_ended_ones() -> None:
    phone = CallManager("bob", max_calls=2, linger=5.0, random=random.Random(1).randbytes)
    phone.candidates = [B_HOST]
    first = phone.place("alice", 0.0)
    phone.place("carol", 0.0)  # an intercom rings two targets at once
    with pytest.raises(CallMisuse):
        phone.place("dave", 0.0)
    phone.act(first.call_id, lambda call: call.hangup(1.0))
    phone.handle_timer(7.0)
    assert first.call_id not in phone.calls
    phone.place("dave", 7.0)
    assert len(phone.calls) == 2


# ---------------------------------------------------------------- misuse and strays


def test_actions_out_of_state_are_misuse() -> None:
    call = Call(CALL_ID, "alice", [A_HOST], IceCredentials("aaaa", "a" * 22), tiebreaker=1)
    with pytest.raises(CallMisuse):
        call.answer(0.0)
    with pytest.raises(CallMisuse):
        call.hangup(0.0)
    call.invite("bob", 0.0)
    with pytest.raises(CallMisuse):
        call.reject(0.0)
    with pytest.raises(CallMisuse):
        call.receive(MsgType.CALL_BYE, {"call_id": bytes(16), "reason": 1, "detail": ""}, 0.0)
    with pytest.raises(CallMisuse):
        CallConfig(dead_after=0.4)
    with pytest.raises(CallMisuse):
        Call(b"short", "a", [], IceCredentials("a", "b"), tiebreaker=0)


def test_an_ended_call_repeats_its_final_word() -> None:
    sim = nat_sim()
    sim.a.call.invite("bob", 0.0)
    sim.run(0.5)
    sim.b.call.reject(sim.now)
    reject = sim.b.call.next_action()
    assert isinstance(reject, SendSignal)
    sim.b.call.receive(MsgType.CALL_INVITE, sim.a.signals[0].body, sim.now)
    assert sim.b.call.next_action() == reject


# ---------------------------------------------------------------- the path-kind table


def a_candidate(role: Role, transport: Transport) -> Candidate:
    kind = next(k for k, r in ROLES.items() if r is role)
    return candidate(kind, transport, ("198.18.0.2", 4000), ("10.0.0.2", 4000))


@pytest.mark.parametrize(("key", "kind"), sorted(PATH_KINDS.items(), key=str))
def test_every_row_of_the_path_kind_table(
    key: tuple[Transport, Role, Role], kind: PathKind
) -> None:
    transport, mine, theirs = key
    assert path_kind(a_candidate(mine, transport), a_candidate(theirs, transport)) is kind
    # The rule the table spells out: a relay decides first, TCP is never punched,
    # a NAT'd end on UDP is punched, two hosts are direct.
    if Role.RELAY in (mine, theirs):
        expected = PathKind.RELAY_TCP if transport is TCP else PathKind.RELAY_UDP
    elif transport is TCP:
        expected = PathKind.DIRECT_TCP
    elif mine is theirs is Role.HOST:
        expected = PathKind.DIRECT_UDP
    else:
        expected = PathKind.PUNCHED_UDP
    assert kind is expected


def test_the_table_covers_every_kind_pair() -> None:
    assert len(PATH_KINDS) == 2 * 3 * 3
    for transport in Transport:
        for mine in CandidateKind:
            for theirs in CandidateKind:
                local = candidate(mine, transport, ("198.18.0.2", 1))
                assert path_kind(local, candidate(theirs, transport, ("198.18.0.3", 1)))
    assert ROLES[CandidateKind.PEER_REFLEXIVE] is ROLES[SRFLX] is Role.REFLEXIVE


# ---------------------------------------------------------------- STUN checks

ALICE = IceCredentials("alic", "alice-password-0123456789")
BOB = IceCredentials("bobb", "bob-password-0123456789xx")
TID = bytes(range(12))
SOURCE = ("198.18.0.2", 61000)


def alice_check(remote: IceCredentials = BOB, *, use_candidate: bool = True) -> bytes:
    return build_check(
        TID,
        local=ALICE,
        remote=remote,
        controlling=True,
        tiebreaker=0x1122334455667788,
        priority=1853824767,
        use_candidate=use_candidate,
    )


def test_a_check_is_accepted_with_the_right_credentials() -> None:
    response, request = answer_check(alice_check(), SOURCE, local=BOB, controlling=False)
    assert request is not None
    assert (request.priority, request.use_candidate, request.controlling) == (
        1853824767,
        True,
        True,
    )
    assert request.tiebreaker == 0x1122334455667788 and request.username == "bobb:alic"
    answer = parse_check_response(response, remote=BOB)
    assert answer.ok and answer.mapped == SOURCE and answer.transaction_id == TID


@pytest.mark.parametrize(
    ("remote", "status"),
    [
        (IceCredentials("bobb", "not-the-password-at-all!!"), 401),
        (IceCredentials("eve0", BOB.pwd), 401),
    ],
)
def test_a_check_with_wrong_credentials_is_refused(remote: IceCredentials, status: int) -> None:
    response, request = answer_check(alice_check(remote), SOURCE, local=BOB, controlling=False)
    assert request is None
    answer = parse_check_response(response, remote=BOB)  # 401 comes unsigned
    assert not answer.ok and answer.error == status
    with pytest.raises(CheckRefused) as refused:
        parse_check(alice_check(remote), local=BOB, controlling=False)
    assert refused.value.status == status


def test_a_role_conflict_is_refused_with_a_signed_487() -> None:
    response, request = answer_check(alice_check(), SOURCE, local=BOB, controlling=True)
    assert request is None
    answer = parse_check_response(response, remote=BOB)
    assert answer.error == 487
    with pytest.raises(StunError):
        parse_check_response(response, remote=ALICE)  # signed with Bob's password


def test_an_aioice_check_is_accepted_and_ours_reads_in_aioice() -> None:
    theirs = aioice_stun.Message(
        message_method=aioice_stun.Method.BINDING,
        message_class=aioice_stun.Class.REQUEST,
        transaction_id=TID,
    )
    theirs.attributes["USERNAME"] = "bobb:alic"
    theirs.attributes["PRIORITY"] = 1853824767
    theirs.attributes["ICE-CONTROLLING"] = 7
    theirs.attributes["USE-CANDIDATE"] = None
    theirs.add_message_integrity(BOB.pwd.encode())
    theirs.add_fingerprint()
    request = parse_check(bytes(theirs), local=BOB, controlling=False)
    assert request.use_candidate and request.tiebreaker == 7
    ours = aioice_stun.parse_message(alice_check())
    assert ours.attributes["USERNAME"] == "bobb:alic"
    assert ours.attributes["ICE-CONTROLLING"] == 0x1122334455667788
    assert "USE-CANDIDATE" in ours.attributes
    assert ours.check_message_integrity(short_term_key(BOB.pwd))
    response, _ = answer_check(alice_check(), SOURCE, local=BOB, controlling=False)
    reply = aioice_stun.parse_message(response)
    assert reply.check_message_integrity(BOB.pwd.encode())
    assert reply.attributes["XOR-MAPPED-ADDRESS"] == SOURCE


def test_a_check_without_a_role_is_a_bad_request() -> None:
    message = Message(Method.BINDING, Class.REQUEST, TID)
    message.attributes.append((AttrType.USERNAME, "bobb:alic"))
    message.attributes.append((AttrType.PRIORITY, 1))
    message.add_integrity(short_term_key(BOB.pwd))
    message.add_fingerprint()
    response, request = answer_check(build(message), SOURCE, local=BOB, controlling=False)
    assert request is None and parse_check_response(response, remote=BOB).error == 400


@given(st.integers(0, len(alice_check()) - 1), st.integers(1, 255), st.binary(max_size=8))
def test_a_damaged_check_raises_only_our_errors(at: int, flip: int, tail: bytes) -> None:
    data = bytearray(alice_check())
    data[at] ^= flip
    for damaged in (bytes(data), alice_check() + tail, bytes(data[:at])):
        with contextlib.suppress(EdgeError):
            _, request = answer_check(damaged, SOURCE, local=BOB, controlling=False)
            assert request is None or damaged == alice_check()


def test_a_response_is_not_a_check() -> None:
    response, _ = answer_check(alice_check(), SOURCE, local=BOB, controlling=False)
    with pytest.raises(CheckRefused):
        answer_check(response, SOURCE, local=BOB, controlling=False)


# ---------------------------------------------------------------- never stuck


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.2, 0.5, 0.9]),
    wire_loss=st.sampled_from([0.0, 0.05, 0.3, 0.8]),
    answer_at=st.one_of(st.none(), st.floats(0.0, 40.0)),
    reject_at=st.one_of(st.none(), st.floats(0.0, 40.0)),
    caller_hangup_at=st.one_of(st.none(), st.floats(0.0, 40.0)),
    callee_hangup_at=st.one_of(st.none(), st.floats(0.0, 40.0)),
    kill_at=st.one_of(st.none(), st.floats(0.0, 40.0)),
    relays=st.booleans(),
)
def test_any_actions_and_losses_end_in_ended_or_active(
    seed: int,
    loss: float,
    wire_loss: float,
    answer_at: float | None,
    reject_at: float | None,
    caller_hangup_at: float | None,
    callee_hangup_at: float | None,
    kill_at: float | None,
    relays: bool,
) -> None:
    rng = random.Random(seed)
    a_cands = [A_HOST, A_SRFLX] + ([A_RELAY] if relays else [])
    b_cands = [B_HOST, B_SRFLX] + ([B_RELAY] if relays else [])
    sim = Sim(
        a_cands,
        b_cands,
        lose=lambda signal: rng.random() < loss,
        lose_on_wire=lambda: rng.random() < wire_loss,
    )
    a, b = sim.a.call, sim.b.call

    def when_ringing(do: Callable[[], None]) -> Callable[[], None]:
        return lambda: do() if b.state in (CallState.RINGING, CallState.ENDED) else None

    a.invite("bob", 0.0)
    if answer_at is not None:
        sim.at(answer_at, when_ringing(lambda: b.answer(sim.now)))
    if reject_at is not None:
        sim.at(reject_at, when_ringing(lambda: b.reject(sim.now)))
    if caller_hangup_at is not None:
        sim.at(caller_hangup_at, lambda: a.hangup(sim.now))
    if callee_hangup_at is not None:
        sim.at(
            callee_hangup_at, lambda: b.hangup(sim.now) if b.state is not CallState.IDLE else None
        )
    if kill_at is not None:
        sim.at(kill_at, lambda: sim.dead.add(PUNCHED))
    sim.run(100.0)  # _pump asserts after every step that a live call has a timer
    for side in (sim.a, sim.b):
        assert side.call.state in (CallState.ACTIVE, CallState.ENDED, CallState.IDLE)
        assert len(side.ends) == (1 if side.call.state is CallState.ENDED else 0)
        if side.call.state is CallState.ENDED:
            assert side.call.reason is side.ends[0].reason is not None
    event(" / ".join(f"{c.state.value} {c.reason and c.reason.value}" for c in (a, b)))
    # Whatever was lost, the two agree in the end: both talking, or both done.
    if b.state is CallState.IDLE:
        assert a.state is CallState.ENDED  # every invite was lost
    else:
        assert (a.state is CallState.ACTIVE) == (b.state is CallState.ACTIVE)

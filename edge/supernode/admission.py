"""Admission on one supernode: who may attach, where the others go, and the host
cache a supernode hands its clients.

Theory of operation
-------------------
A supernode holds at most ``capacity`` clients. Its *load* is the fraction of
that it holds. Two thresholds of :class:`AdmissionLimits` shape what
:meth:`Admission.admit` answers a new client:

- below ``soft``: :class:`Admitted`;
- from ``soft`` to ``full``: still room, but the supernode starts sending new
  clients elsewhere: :class:`Redirected` (``full=False``) with the peers it
  knows to have room, or with none ("try your host cache"), until the client
  says it has been redirected ``max_hops`` times in this attempt; such a client
  is admitted. The hop count stops redirects going round in circles, and lets
  the overflow land wherever the client happens to be, evenly, instead of
  wherever stale reports pointed everyone;
- at ``full``: refused, always :class:`Redirected` (``full=True``), with the
  best alternatives it knows (possibly none: the client falls back on its host
  cache).

So clients fill the network up to ``soft`` everywhere before supernodes go
above it, and ``capacity`` is a hard wall.

Load gossip
-----------
The supernode keeps a table of the peers it knows (at most ``max_peers``,
the least recently heard-from leaves first), fed by :meth:`Admission.note_peer`:
the overlay's pings and host-cache exchanges tell it a peer is alive, the
round-trip time it measured, and the load the peer reported. A load report
older than ``load_max_age`` is treated as unknown: it neither attracts
redirected clients nor hides a peer from the host-cache offer.

A redirect looks at the ``sample`` freshest load reports (the power of d
choices: a few well-informed candidates, at a cost that does not grow with
the table), keeps those under the limit, and ranks them by a weighted draw
(Efraimidis and Spirakis keys, as in the client's host cache) with weight
``min(headroom, HEADROOM_CAP)``, ``headroom`` being the limit minus the load.
Randomised, so that clients redirected in the same second do not all land on
the same peer; capped, because an empty newcomer that reported "load 0" to a
hundred supernodes at once would otherwise draw every one of their redirects
until their next pings, and a pile there is what redirects are meant to
avoid. For the same reason a redirect counts the client it sends as the
first alternative's (one ``capacity``'s worth of load) until that peer
reports again. When no fresh report shows room, :meth:`Admission.is_out_of_alternatives`
says so: the adapter should ping peers for their loads sooner than usual.

Host cache offer
----------------
:meth:`Admission.host_cache_offer` is the list a client gets: up to 200 live
peers (heard from within ``live_max_age``), without those whose fresh load says
they are full, ranked by :func:`offer_score` (fresher and closer first, from
this supernode's point of view), then the login servers, flagged. When more
peers qualify than fit, which ones go in is a weighted draw on the same score,
so that two clients asking in the same minute get different lists and spread.

Everything is sans-IO: the caller passes ``now`` (seconds, monotonic) and a
``random.Random``; nothing here reads a clock, draws its own randomness, or
sends anything.
"""

import functools
import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Final

from edge.client.hostcache import (
    MAX_CAPACITY,
    RTT_REFERENCE,
    SHARPNESS,
    UNKNOWN_SPEED,
    check_address,
)
from edge.errors import LocalError
from edge.sansio import Address
from edge.supernode.errors import SupernodeError
from edge.wire.codes import ErrorCode

MAX_OFFER: Final = MAX_CAPACITY
"""A client's host cache holds 200 supernodes: an offer lists no more."""
MAX_LOGIN_SERVERS: Final = 8
MAX_ALTERNATIVES: Final = 16
HEADROOM_CAP: Final = 0.05
"""Alternatives are drawn with probability proportional to ``min(headroom, 0.05)``."""
_TINY: Final = 1e-300
_LN2: Final = math.log(2)


class BadLoadReport(SupernodeError):
    """A peer reported a load or round-trip time that is not a finite number >= 0."""

    code = ErrorCode.MALFORMED


@dataclass(frozen=True)
class AdmissionLimits:
    """How many clients, when to redirect, and how much to remember.

    ``soft`` and ``full`` are fractions of ``capacity`` (0 < soft <= full <= 1).
    """

    capacity: int = 256
    soft: float = 0.5
    full: float = 1.0
    max_hops: int = 3
    """A client redirected this many times is admitted anywhere below ``full``."""
    alternatives: int = 4
    """How many peers a redirect names, at most."""
    sample: int = 16
    """How many of the freshest load reports one redirect looks at."""
    load_max_age: float = 60.0
    live_max_age: float = 300.0
    max_peers: int = 256

    def __post_init__(self) -> None:
        if type(self.capacity) is not int or self.capacity < 1:
            raise LocalError(f"admission: capacity {self.capacity!r} is not a whole number >= 1")
        if not 0 < self.soft <= self.full <= 1:
            raise LocalError(f"admission: need 0 < soft ({self.soft}) <= full ({self.full}) <= 1")
        _check_count("max_hops", self.max_hops, 0, 64)
        _check_count("alternatives", self.alternatives, 0, MAX_ALTERNATIVES)
        _check_count("sample", self.sample, 1, 1 << 16)
        _check_count("max_peers", self.max_peers, 1, 1 << 20)
        if not 0 < self.load_max_age <= self.live_max_age < math.inf:
            raise LocalError("admission: need 0 < load_max_age <= live_max_age, both finite")

    @property
    def soft_count(self) -> int:
        """Clients held at which redirecting starts."""
        return max(1, math.ceil(self.soft * self.capacity))

    @property
    def full_count(self) -> int:
        """Clients held at which the supernode refuses."""
        return max(1, math.ceil(self.full * self.capacity))


def _check_count(name: str, value: int, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise LocalError(f"admission: {name} {value!r} is not a whole number in {low}..{high}")


# -- results


@dataclass(frozen=True)
class Admitted:
    """The client is attached here; ``load`` is this supernode's load with it."""

    load: float


@dataclass(frozen=True)
class Redirected:
    """Not attached: try ``alternatives`` in order, then other host-cache
    entries, counting one more hop.

    ``full`` is true when the supernode refused because it is full; false when it
    still had room but is above its soft threshold. ``alternatives`` may be
    empty: the supernode knows nobody with room.
    """

    alternatives: tuple[Address, ...]
    full: bool


@dataclass(frozen=True)
class Peer:
    """Another supernode as this one knows it; ``load`` and ``rtt`` are ``None`` until reported."""

    address: Address
    last_seen: float
    rtt: float | None
    load: float | None
    load_at: float | None


@dataclass(frozen=True)
class OfferEntry:
    """One line of the host cache a supernode hands a client."""

    address: Address
    login_server: bool
    rtt: float | None
    """This supernode's round-trip time to it, a hint; ``None`` for login servers or unmeasured."""


def offer_score(peer: Peer, now: float, half_life: float) -> float:
    """How good ``peer`` is to hand out, from 0 to 1: freshness times speed.

    ``freshness = 0.5 ** (age / half_life)`` and ``speed = 1 / (1 + rtt / 0.1 s)``
    (0.25 while unmeasured), the client's own speed term.
    """
    return math.exp(_log_offer_score(peer, now, half_life))


def _log_offer_score(peer: Peer, now: float, half_life: float) -> float:
    speed = UNKNOWN_SPEED if peer.rtt is None else 1 / (1 + peer.rtt / RTT_REFERENCE)
    return math.log(speed) - _LN2 * max(0.0, now - peer.last_seen) / half_life


# -- the policy


class Admission:
    """Admission control, load table and host-cache offer of the supernode at ``address``."""

    def __init__(
        self,
        address: Address,
        limits: AdmissionLimits | None = None,
        login_servers: Sequence[Address] = (),
    ) -> None:
        self.address = check_address(address)
        self.limits = limits or AdmissionLimits()
        if len(login_servers) > MAX_LOGIN_SERVERS:
            raise LocalError(f"admission: at most {MAX_LOGIN_SERVERS} login servers")
        self.login_servers = tuple(check_address(a) for a in login_servers)
        self._soft_count = self.limits.soft_count
        self._full_count = self.limits.full_count
        self._clients: set[Hashable] = set()
        self._peers: dict[Address, Peer] = {}
        """Least recently heard-from first: a refresh moves a peer to the end."""
        self._loads: dict[Address, tuple[float, float]] = {}
        """(load, when reported) of the peers that reported one, oldest report first."""
        self._reports = 0
        self._barren: dict[float, int] = {}
        """Limit -> ``_reports`` when every fresh report was over that limit."""

    # -- clients

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def load(self) -> float:
        """The fraction of capacity in use, the figure this supernode reports to peers."""
        return len(self._clients) / self.limits.capacity

    def is_attached(self, client_id: Hashable) -> bool:
        return client_id in self._clients

    def admit(
        self, client_id: Hashable, now: float, rng: random.Random, *, hops: int = 0
    ) -> Admitted | Redirected:
        """Attach ``client_id`` or send it elsewhere; the rules are in the module doc.

        ``hops`` is how many redirects the client says it has received in this
        attempt. A client already attached is admitted again without counting
        twice. On :class:`Redirected` the caller tells the client the
        alternatives and forgets it.
        """
        if client_id in self._clients:
            return Admitted(self.load)
        held = len(self._clients)
        limits = self.limits
        if held >= self._full_count:
            return Redirected(self._alternatives(now, rng, limits.full), full=True)
        if held >= self._soft_count and hops < limits.max_hops:
            return Redirected(self._alternatives(now, rng, limits.soft), full=False)
        self._clients.add(client_id)
        return Admitted(self.load)

    def is_out_of_alternatives(self) -> bool:
        """Whether the last search for a peer with room found none among the
        fresh reports, and no report has come since: ping peers for their loads."""
        return self._reports in self._barren.values()

    def leave(self, client_id: Hashable) -> bool:
        """Detach ``client_id``; whether it was attached."""
        if client_id not in self._clients:
            return False
        self._clients.remove(client_id)
        return True

    # -- peers

    def note_peer(
        self,
        address: Address,
        now: float,
        *,
        rtt: float | None = None,
        load: float | None = None,
    ) -> Peer | None:
        """Record that peer ``address`` was heard from at ``now``, with the
        round-trip time measured and the load it reported, if any; the peer as
        kept, or ``None`` for our own address.

        A load above 1 is taken as 1. Raises :class:`BadLoadReport` for a load
        or round-trip time that is not a finite number >= 0 (drop that report),
        ``BadHostEntry`` for a bad address.
        """
        if not self._is_known(address):
            address = _valid_address(address)
        rtt = None if rtt is None else _checked("rtt", rtt)
        load = None if load is None else min(1.0, _checked("load", load))
        if address == self.address:
            return None
        old = self._peers.pop(address, None)
        if old is None:
            peer = Peer(address, now, rtt, load, None if load is None else now)
        else:
            peer = Peer(
                address,
                max(old.last_seen, now),
                old.rtt if rtt is None else rtt,
                old.load if load is None else load,
                old.load_at if load is None else now,
            )
        if len(self._peers) >= self.limits.max_peers:
            self.forget_peer(next(iter(self._peers)))
        self._peers[address] = peer
        if load is not None:
            self._loads.pop(address, None)
            self._loads[address] = (load, now)
            self._reports += 1
        return peer

    def _is_known(self, address: object) -> bool:
        # A known address was checked when first noted: pings refresh the same
        # peers over and over, and need not check each again.
        try:
            return address in self._peers
        except TypeError:  # unhashable, so certainly not a known address
            return False

    def forget_peer(self, address: Address) -> Peer | None:
        """Remove ``address`` (it stopped answering); the peer it was, or ``None``."""
        self._loads.pop(address, None)
        return self._peers.pop(address, None)

    def peers(self) -> list[Peer]:
        """Every known peer, least recently heard-from first."""
        return list(self._peers.values())

    def _alternatives(self, now: float, rng: random.Random, below: float) -> tuple[Address, ...]:
        if self.limits.alternatives == 0 or self._barren.get(below) == self._reports:
            return ()
        oldest = now - self.limits.load_max_age
        random, log = rng.random, math.log
        window = list(islice(reversed(self._loads.items()), self.limits.sample))
        complete = len(window) < self.limits.sample
        keyed = []
        for address, (load, at) in window:
            if at < oldest:
                complete = True
                break  # reports are in time order: the rest are staler still
            headroom = below - load
            if headroom > 0.0:
                weight = headroom if headroom < HEADROOM_CAP else HEADROOM_CAP
                # Efraimidis-Spirakis: log(U) / weight, largest first.
                keyed.append((log(1.0 - random()) / weight, address))
        if not keyed:
            if complete:
                # Ageing only takes candidates away: until a new report the same
                # search finds nothing again, and a busy supernode would pay
                # for it on every arrival.
                self._barren[below] = self._reports
            return ()
        keyed.sort(reverse=True)
        chosen = tuple(address for _, address in keyed[: self.limits.alternatives])
        self._count_sent(chosen[0])
        return chosen

    def _count_sent(self, address: Address) -> None:
        # Until the peer's next report, count the client we send it as its own
        # (one of our capacity's worth): otherwise every arrival meanwhile
        # would see the same headroom there and go the same way.
        load, at = self._loads[address]
        self._loads[address] = (min(1.0, load + 1 / self.limits.capacity), at)

    # -- host cache

    def host_cache_offer(
        self, now: float, rng: random.Random, n: int = MAX_OFFER
    ) -> list[OfferEntry]:
        """The host cache to hand a client: up to ``n`` (at most 200) live peers,
        best first, then every login server flagged ``login_server=True``."""
        if type(n) is not int or not 0 <= n <= MAX_OFFER:
            raise LocalError(f"admission: an offer of {n!r} entries is not in 0..{MAX_OFFER}")
        rows = self._scored(now)
        if len(rows) > n:
            random = rng.random
            # Efraimidis-Spirakis keys for weights score ** SHARPNESS, in logarithms.
            keyed = [
                (SHARPNESS * row[0] - math.log(max(-math.log(1.0 - random()), _TINY)), row)
                for row in rows
            ]
            keyed.sort(key=_first, reverse=True)
            rows = [row for _, row in keyed[:n]]
        rows.sort(key=_best_first)
        offer = [OfferEntry(peer.address, False, peer.rtt) for _, peer in rows]
        return offer + [OfferEntry(address, True, None) for address in self.login_servers]

    def _scored(self, now: float) -> list[tuple[float, Peer]]:
        """(log of :func:`offer_score`, peer) for the live peers not known to be full."""
        limits = self.limits
        live_since = now - limits.live_max_age
        fresh_since = now - limits.load_max_age
        half_life = limits.live_max_age / 4
        return [
            (_log_offer_score(peer, now, half_life), peer)
            for peer in self._peers.values()
            if peer.last_seen >= live_since and not _is_full(peer, fresh_since, limits.full)
        ]


def _first(item: tuple[float, object]) -> float:
    return item[0]


def _best_first(row: tuple[float, Peer]) -> tuple[float, Address]:
    return (-row[0], row[1].address)


def _is_full(peer: Peer, fresh_since: float, full: float) -> bool:
    if peer.load is None or peer.load_at is None or peer.load_at < fresh_since:
        return False
    return peer.load >= full


def _valid_address(address: Address) -> Address:
    """:func:`check_address`, memoised for well-typed addresses: a supernode's
    pings note the same few hundred peers over and over."""
    if type(address) is tuple and len(address) == 2:
        host, port = address
        if type(host) is str and type(port) is int:
            return _checked_address(host, port)
    return check_address(address)


@functools.lru_cache(maxsize=4096)
def _checked_address(host: str, port: int) -> Address:
    return check_address((host, port))


def _checked(name: str, value: float) -> float:
    if type(value) is float and 0.0 <= value < math.inf:
        return value
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise BadLoadReport(f"peer reported {name} {value!r}, not a finite number")
    if value < 0:
        raise BadLoadReport(f"peer reported {name} {value!r}, below 0")
    return float(value)

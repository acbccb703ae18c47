"""How clients spread over supernodes: a deterministic simulation.

Theory of operation
-------------------
``N`` supernodes and ``100 N`` clients, one :class:`random.Random` and one
simulated clock; no threads, no sockets. Supernodes and clients sit at random
points of a unit torus; the round-trip time between two of them is
``5 ms + 150 ms * distance``, a synthetic latency that keeps the triangle
inequality.

Build. Supernode ``r`` joins, then its round of 100 clients arrives, and so on,
so the network grows as a real one does; the clock runs so that each
supernode sees about one arrival a second. A joining supernode asks a random
earlier one for its host-cache offer and pings the first :data:`INTRODUCE` of
it: both sides note each other (:meth:`Admission.note_peer`) with the
round-trip time and the load, as the overlay's join does (tables end up with
about a hundred peers, as a Kademlia routing table would). A client
bootstraps with the offer of a random earlier supernode (the first round: the
hard-coded bootstrap supernodes) as its host cache; offers a supernode hands
out are kept for :data:`OFFER_TTL` seconds.

Choosing, as the device does. A freshly filled host cache holds entries that
were all just listed and never tried, so :meth:`HostCache.ranked` draws them
in uniform random order (equal scores), and an entry that failed drops to
1/256 of the weight of the others, that is, last. The simulation draws the
same way without building a cache of entries per client (a million of them
would not fit the time): it races :data:`RACE` entries drawn at random (the
login ladder's staggered start: the fastest answer wins), skips entries
already tried, and asks the live ones, fastest first. A redirect's
alternatives are asked next, in their order; the client counts the
redirects of the whole attempt and says so (``hops``), so that after
``max_hops`` a supernode above its soft threshold takes it in. The last draw
is the bootstrap list.

Load gossip. A supernode learns loads from the peers it pings. Only
redirects read them, and only a supernode above its soft threshold
redirects, so the simulation runs a supernode's ping round (:data:`PING_FANOUT`
random peers: their load and round-trip time, or forgotten if they left) when
it is above the threshold, about to answer, and its last round is older than
:data:`PING_PERIOD`, or :data:`BUSY_PING_PERIOD` when its last search found no
peer with room. Pings no one reads are not simulated.

Churn. Then a fraction of the supernodes leave without notice and their
clients reattach from the host caches they already have, spread over
:data:`REATTACH_SPAN` seconds.

Baseline. The same clients with the same host caches, where every client
takes the first supernode its cache lists (the first live one, after churn)
and supernodes admit everybody: what piling onto the first-learned
supernodes looks like.

The report gives the share of clients held by the busiest 1% of the live
supernodes, the busiest against the mean, and the share of the top 20 and top
100, the figures the seed quotes for Skype (43.8% and 70.5% of all
connections, in a far larger network, so those are a shape to compare with,
not a target for the same N).
"""

from __future__ import annotations

import math
import random
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from edge.sansio import Address
from edge.supernode.admission import Admission, AdmissionLimits, Admitted, Redirected

CLIENTS_PER_SUPERNODE: Final = 100
BOOTSTRAP: Final = 4
"""Hard-coded bootstrap supernodes: the first ones to join."""
RACE: Final = 3
"""Host-cache entries a client races at once."""
MAX_RACES: Final = 8
"""Draws from the host cache in one attempt; the last one is the bootstrap list."""
MAX_FOLLOW: Final = 6
"""Redirects one attempt may receive before the client gives up."""
PING_PERIOD: Final = 15.0
LOAD_MAX_AGE: Final = 15.0
BUSY_PING_PERIOD: Final = 2.0
"""How often a supernode that found no peer with room pings for more loads."""
PING_FANOUT: Final = 16
"""Peers a supernode pings each period, the ones it learns fresh loads from."""
INTRODUCE: Final = 64
"""Supernodes of its first offer that a joining supernode pings."""
OFFER_TTL: Final = 120.0
REATTACH_SPAN: Final = 30.0
LATENCY_BASE: Final = 0.005
LATENCY_SPAN: Final = 0.150
SIM_LIMITS: Final = AdmissionLimits(
    capacity=3 * CLIENTS_PER_SUPERNODE, soft=0.5, load_max_age=LOAD_MAX_AGE
)
"""A capacity of three times the mean, so that the hard wall alone could not keep
the busiest within twice the mean: the soft threshold has to."""
_SOFT_COUNT: Final = SIM_LIMITS.soft_count


@dataclass(frozen=True)
class SpreadResult:
    """Where the clients ended up after churn, over the live supernodes."""

    supernodes: int
    """Live supernodes at the end."""
    clients: int
    """Clients attached at the end."""
    busiest_share: float
    """Share of the attached clients held by the busiest 1% of supernodes."""
    busiest_over_mean: float
    top20_share: float
    top100_share: float
    redirects: int
    failed: int
    """Clients that found no supernode to attach to."""


@dataclass(frozen=True)
class SpreadReport:
    """Admission control and weighted choice, beside the first-learned baseline."""

    spread: SpreadResult
    baseline: SpreadResult


def simulate_spread(
    supernodes: int,
    clients_per_supernode: int = CLIENTS_PER_SUPERNODE,
    churn: float = 0.2,
    seed: int = 7,
) -> SpreadReport:
    """Run both strategies on the same network; everything drawn from ``Random(seed)``."""
    if supernodes < BOOTSTRAP or clients_per_supernode < 1 or not 0 <= churn < 1:
        raise ValueError("need supernodes >= 4, clients_per_supernode >= 1, 0 <= churn < 1")
    rng = random.Random(seed)
    world = _World.draw(supernodes, clients_per_supernode, rng)
    return _Run(world, rng).play(rng.sample(range(supernodes), int(churn * supernodes)))


@dataclass(frozen=True)
class _World:
    """Positions on the torus: supernodes first, then clients, as flat arrays."""

    supernodes: int
    per_supernode: int
    x: array[float]
    y: array[float]

    @classmethod
    def draw(cls, supernodes: int, per: int, rng: random.Random) -> _World:
        count = supernodes * (1 + per)
        x = array("d", (rng.random() for _ in range(count)))
        y = array("d", (rng.random() for _ in range(count)))
        return cls(supernodes, per, x, y)

    def latency(self, a: int, b: int) -> float:
        """Round-trip seconds between node ``a`` and node ``b`` (clients are ``N + i``)."""
        dx = abs(self.x[a] - self.x[b])
        dy = abs(self.y[a] - self.y[b])
        dx = min(dx, 1.0 - dx)
        dy = min(dy, 1.0 - dy)
        return LATENCY_BASE + LATENCY_SPAN * math.sqrt(dx * dx + dy * dy)


def _address(index: int) -> Address:
    return (f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}", 4000)


class _Run:
    """Both strategies played on one world: build, churn, reattach, count.

    The baseline's clients get the very host caches the spreading clients get,
    so the two differ only in how a client picks from its cache and whether
    supernodes may say no.
    """

    def __init__(self, world: _World, rng: random.Random) -> None:
        n = world.supernodes
        self.world = world
        self.rng = rng
        self.addresses = [_address(i) for i in range(n)]
        self.index = {address: i for i, address in enumerate(self.addresses)}
        self.nodes = [Admission(address, SIM_LIMITS) for address in self.addresses]
        self.alive = bytearray(n)
        self.offers: list[tuple[int, ...]] = [()] * n
        self.offered_at = [-math.inf] * n
        self.pinged_at = [-math.inf] * n
        self.attached = array("i", [-1]) * (n * world.per_supernode)
        self.first = array("i", [-1]) * (n * world.per_supernode)
        """The baseline: the first supernode each client's host cache lists."""
        self.caches: list[tuple[int, ...]] = [()] * (n * world.per_supernode)
        self.now = 0.0
        self.redirects = 0

    def play(self, victims: Sequence[int]) -> SpreadReport:
        n, per = self.world.supernodes, self.world.per_supernode
        for r in range(n):
            self._join(r)
            step = 1.0 / (r + 1)  # each supernode sees about one arrival a second
            for client in range(r * per, (r + 1) * per):
                self.now += step
                cache = self.caches[client] = self._bootstrap_cache(r)
                self.first[client] = cache[0]
                self._attach(client, set())
        for victim in victims:
            self.alive[victim] = 0
        orphans = [c for c, s in enumerate(self.attached) if s >= 0 and not self.alive[s]]
        for client in orphans:
            self.now += REATTACH_SPAN / len(orphans)
            self._attach(client, {self.attached[client]})
        failed = sum(1 for s in self.attached if s < 0)
        spread = self._result(self.attached, self.redirects, failed)
        return SpreadReport(spread, self._baseline())

    def _baseline(self) -> SpreadResult:
        failed = 0
        for client, supernode in enumerate(self.first):
            if not self.alive[supernode]:
                self.first[client] = next(
                    (s for s in (*self.caches[client], *range(BOOTSTRAP)) if self.alive[s]), -1
                )
                failed += self.first[client] < 0
        return self._result(self.first, 0, failed)

    # -- supernodes

    def _join(self, new: int) -> None:
        self.alive[new] = 1
        if new == 0:
            return
        via = self.rng.randrange(new)
        node = self.nodes[new]
        # Supernodes exchange their whole current offer, not the one kept for clients.
        offer = self.nodes[via].host_cache_offer(self.now, self.rng)
        listed = [via, *(self.index[entry.address] for entry in offer)]
        for other in listed[:INTRODUCE]:  # pinged: both sides learn each other
            rtt = self.world.latency(new, other)
            node.note_peer(self.addresses[other], self.now, rtt=rtt, load=self.nodes[other].load)
            self.nodes[other].note_peer(self.addresses[new], self.now, rtt=rtt, load=0.0)

    def _offer(self, supernode: int) -> tuple[int, ...]:
        if self.now - self.offered_at[supernode] >= OFFER_TTL:
            entries = self.nodes[supernode].host_cache_offer(self.now, self.rng)
            self.offers[supernode] = tuple(
                self.index[e.address] for e in entries if not e.login_server
            )
            self.offered_at[supernode] = self.now
        return self.offers[supernode]

    def _ping_round(self, supernode: int, period: float) -> None:
        if self.now - self.pinged_at[supernode] < period:
            return
        self.pinged_at[supernode] = self.now
        node = self.nodes[supernode]
        peers = node.peers()
        for peer in self.rng.sample(peers, min(PING_FANOUT, len(peers))):
            other = self.index[peer.address]
            if self.alive[other]:
                rtt = self.world.latency(supernode, other)
                node.note_peer(peer.address, self.now, rtt=rtt, load=self.nodes[other].load)
            else:
                node.forget_peer(peer.address)

    # -- clients

    def _bootstrap_cache(self, joined: int) -> tuple[int, ...]:
        offer = self._offer(self.rng.randrange(joined + 1))
        return offer or tuple(range(min(BOOTSTRAP, joined + 1)))

    def _attach(self, client: int, tried: set[int]) -> None:
        """Ask supernodes until one admits: redirect targets first, then
        another race from the cache, then the hard-coded bootstrap ones.

        ``hops`` counts the redirects this attempt has received, whoever sent
        them, so that a client bounced ``max_hops`` times is taken in.
        """
        queue: deque[int] = deque()
        hops = races = 0
        while hops <= MAX_FOLLOW:
            if not queue:
                if races == MAX_RACES:
                    break
                races += 1
                source = self.caches[client] if races < MAX_RACES else range(BOOTSTRAP)
                queue.extend(self._race(client, source, tried))
                continue
            supernode = queue.popleft()
            answer = self._ask(client, supernode, hops)
            if isinstance(answer, Admitted):
                self.attached[client] = supernode
                return
            hops += 1
            queue.extendleft(reversed(self._untried(answer.alternatives, tried)))
        self.attached[client] = -1

    def _race(self, client: int, cache: Sequence[int], tried: set[int]) -> list[int]:
        """Up to :data:`RACE` untried entries drawn from ``cache``: the live ones,
        fastest first (the order their answers arrive in)."""
        # Drawn with replacement: cheaper, and a repeat is only one fewer racer.
        random, size = self.rng.random, len(cache)
        picks = [cache[int(random() * size)] for _ in range(RACE)] if size > RACE else cache
        me = self.world.supernodes + client
        answers = []
        for supernode in picks:
            if supernode not in tried:
                tried.add(supernode)
                if self.alive[supernode]:
                    answers.append((self.world.latency(me, supernode), supernode))
        answers.sort()
        return [supernode for _, supernode in answers]

    def _untried(self, addresses: Sequence[Address], tried: set[int]) -> list[int]:
        fresh = []
        for address in addresses:
            supernode = self.index[address]
            if supernode not in tried:
                tried.add(supernode)
                if self.alive[supernode]:
                    fresh.append(supernode)
        return fresh

    def _ask(self, client: int, supernode: int, hops: int) -> Admitted | Redirected:
        node = self.nodes[supernode]
        if node.clients >= _SOFT_COUNT:  # it may redirect: it needs loads
            busy = node.is_out_of_alternatives()
            self._ping_round(supernode, BUSY_PING_PERIOD if busy else PING_PERIOD)
        answer = node.admit(client, self.now, self.rng, hops=hops)
        self.redirects += isinstance(answer, Redirected)
        return answer

    # -- figures

    def _result(self, attached: Sequence[int], redirects: int, failed: int) -> SpreadResult:
        counts = [0] * self.world.supernodes
        for supernode in attached:
            if supernode >= 0:
                counts[supernode] += 1
        live = [count for supernode, count in enumerate(counts) if self.alive[supernode]]
        return summarise(live, redirects, failed)


def summarise(counts: Sequence[int], redirects: int = 0, failed: int = 0) -> SpreadResult:
    """The figures of one run from the clients each live supernode holds."""
    ordered = sorted(counts, reverse=True)
    total = sum(ordered)
    if not ordered or total == 0:
        return SpreadResult(len(ordered), 0, 0.0, 0.0, 0.0, 0.0, redirects, failed)
    busiest = max(1, math.ceil(0.01 * len(ordered)))
    return SpreadResult(
        supernodes=len(ordered),
        clients=total,
        busiest_share=sum(ordered[:busiest]) / total,
        busiest_over_mean=ordered[0] / (total / len(ordered)),
        top20_share=sum(ordered[:20]) / total,
        top100_share=sum(ordered[:100]) / total,
        redirects=redirects,
        failed=failed,
    )

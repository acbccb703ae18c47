"""The iterative node lookup: a sans-IO state machine.

Theory of operation
-------------------
Kademlia (Maymounkov & Mazieres 2002), section 2.3. The initiator keeps a
shortlist of candidates ordered by XOR distance to the key, seeded from its own
routing table. It keeps up to ``alpha`` (3) requests in flight, always to the
closest candidates it has not asked yet among the ``k`` closest it knows. Each
reply brings up to ``k`` more contacts; each request that is not answered by its
deadline marks that node failed, and the next closest candidate is asked
instead, so the lookup routes around nodes that left without notice. The lookup
ends when the ``k`` closest candidates that have not failed have all answered
(or when no candidate is left to ask); for FIND_VALUE it ends at the first
reply that carries a valid record.

Every candidate carries a depth: 1 for the seeds, one more than its referrer
for a node learned from a reply. :attr:`Lookup.hops` is the greatest depth of a
reply that brought a node closer than any seen before (or that delivered the
value): the longest chain of replies that made progress.

The machine is driven from outside::

    queries = lookup.start(now)          # send each, as FindNode/FindValue
    queries = lookup.on_reply(c, r, now) # for each reply
    queries = lookup.handle_timer(now)   # at lookup.get_timer()
    ... until lookup.done

The state of each candidate follows :data:`TRANSITIONS`. The shortlist, the
contacts taken from one reply and the number of requests are all capped.
"""

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto

from edge.overlay.errors import OverlayMisuse, UnexpectedReply
from edge.overlay.ids import check_id, id_to_bytes
from edge.overlay.messages import Contact, FindNode, FindValue, Nodes, Values


class Candidate(Enum):
    NEW = auto()
    """Known, not asked yet."""
    ASKED = auto()
    """A request is in flight; its deadline is running."""
    ANSWERED = auto()
    """It replied: a responsive node."""
    FAILED = auto()
    """Its deadline passed. A late reply still counts."""


TRANSITIONS: dict[Candidate, frozenset[Candidate]] = {
    Candidate.NEW: frozenset({Candidate.ASKED}),
    Candidate.ASKED: frozenset({Candidate.ANSWERED, Candidate.FAILED}),
    Candidate.FAILED: frozenset({Candidate.ANSWERED}),
    Candidate.ANSWERED: frozenset(),
}
"""Which states a candidate may move to from each state."""


@dataclass(frozen=True)
class Query:
    """A request the driver must send to ``node``."""

    node: Contact
    request: FindNode | FindValue


@dataclass(frozen=True)
class LookupLimits:
    """Parameters and caps of one lookup."""

    k: int = 20
    alpha: int = 3
    timeout: float = 2.0
    max_candidates: int = 200
    max_queries: int = 400


@dataclass
class _Candidate:
    contact: Contact
    depth: int
    state: Candidate = Candidate.NEW
    deadline: float = 0.0


RecordCheck = Callable[[bytes, bytes], bool]
"""Is this record (second argument) valid under this key (first argument, 32 bytes)?"""


class Lookup:
    """One iterative FIND_NODE, or FIND_VALUE when ``find_value`` is set."""

    def __init__(
        self,
        own_id: int,
        key: int,
        seeds: list[Contact],
        *,
        find_value: bool = False,
        accept: RecordCheck | None = None,
        limits: LookupLimits | None = None,
    ) -> None:
        check_id(own_id)
        check_id(key)
        self.own_id = own_id
        self.key = key
        self.find_value = find_value
        self.limits = limits or LookupLimits()
        self._accept = accept
        self._candidates: dict[int, _Candidate] = {}
        self._started = False
        self._queries = 0
        self._best = -1
        self.hops = 0
        """The longest chain of replies that brought a closer node (or the value)."""
        self.value: tuple[bytes, ...] | None = None
        """The valid records found by FIND_VALUE, or None."""
        self.done = False
        for seed in seeds:
            self._learn(seed, depth=1)

    def start(self, now: float) -> list[Query]:
        """Begin: the first ``alpha`` requests to send."""
        if self._started:
            raise OverlayMisuse("a lookup starts once")
        self._started = True
        return self._advance(now)

    def on_reply(self, node: Contact, reply: Nodes | Values, now: float) -> list[Query]:
        """Feed a reply from ``node``; returns the requests to send next."""
        cand = self._candidates.get(node.node_id)
        if cand is None or cand.state not in (Candidate.ASKED, Candidate.FAILED):
            raise UnexpectedReply(f"no request is waiting for a reply from {node.node_id:064x}")
        if self.done:
            return []
        self._move(cand, Candidate.ANSWERED)
        if isinstance(reply, Values):
            self._take_value(reply, cand)
        else:
            self._take_contacts(reply, cand)
        return self._advance(now)

    def on_timeout(self, node: Contact, now: float) -> list[Query]:
        """``node`` did not answer in time; returns the requests to send instead."""
        cand = self._candidates.get(node.node_id)
        if cand is None or cand.state is not Candidate.ASKED:
            raise OverlayMisuse(f"no request to {node.node_id:064x} is in flight")
        self._move(cand, Candidate.FAILED)
        return self._advance(now)

    def get_timer(self) -> float | None:
        """When the earliest in-flight request times out, or None."""
        if self.done:
            return None
        deadlines = [c.deadline for c in self._in_flight()]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> list[Query]:
        """Time out every request whose deadline has passed."""
        queries: list[Query] = []
        for cand in [c for c in self._in_flight() if c.deadline <= now]:
            queries += self.on_timeout(cand.contact, now)
        return queries

    def timed_out(self) -> list[Contact]:
        """The nodes that did not answer in time (to mark failed in the routing table)."""
        return [c.contact for c in self._candidates.values() if c.state is Candidate.FAILED]

    @property
    def shortlist_size(self) -> int:
        """How many candidates the lookup holds (capped by ``max_candidates``)."""
        return len(self._candidates)

    def result(self) -> list[Contact]:
        """The ``k`` closest nodes that answered, closest first."""
        answered = [c for c in self._ordered() if c.state is Candidate.ANSWERED]
        return [c.contact for c in answered[: self.limits.k]]

    def _learn(self, contact: Contact, depth: int) -> None:
        check_id(contact.node_id)
        if contact.node_id == self.own_id or contact.node_id in self._candidates:
            return
        self._candidates[contact.node_id] = _Candidate(contact, depth)
        if len(self._candidates) > self.limits.max_candidates:
            self._forget_farthest()

    def _forget_farthest(self) -> None:
        for cand in reversed(self._ordered()):
            if cand.state in (Candidate.NEW, Candidate.FAILED):
                del self._candidates[cand.contact.node_id]
                return

    def _take_contacts(self, reply: Nodes, referrer: _Candidate) -> None:
        for contact in reply.contacts[: self.limits.k]:
            self._learn(contact, referrer.depth + 1)
        self._note_progress()

    def _take_value(self, reply: Values, source: _Candidate) -> None:
        key = id_to_bytes(self.key)
        records = tuple(r for r in reply.records if self._accept is None or self._accept(key, r))
        if records:
            self.value = records
            self.hops = max(self.hops, source.depth)
            self.done = True

    def _note_progress(self) -> None:
        for cand in self._ordered():
            if cand.state is Candidate.FAILED:
                continue
            dist = cand.contact.node_id ^ self.key
            if self._best < 0 or dist < self._best:
                self._best = dist
                self.hops = max(self.hops, cand.depth - 1)
            return

    def _advance(self, now: float) -> list[Query]:
        if self.done:
            return []
        queries: list[Query] = []
        top = [c for c in self._ordered() if c.state is not Candidate.FAILED][: self.limits.k]
        in_flight = sum(1 for c in top if c.state is Candidate.ASKED)
        for cand in top:
            if in_flight >= self.limits.alpha or self._queries >= self.limits.max_queries:
                break
            if cand.state is Candidate.NEW:
                queries.append(self._ask(cand, now))
                in_flight += 1
        if not queries and not any(c.state is Candidate.ASKED for c in top):
            self.done = True
        return queries

    def _ask(self, cand: _Candidate, now: float) -> Query:
        self._move(cand, Candidate.ASKED)
        cand.deadline = now + self.limits.timeout
        self._queries += 1
        request = FindValue(self.key) if self.find_value else FindNode(self.key)
        return Query(cand.contact, request)

    def _move(self, cand: _Candidate, state: Candidate) -> None:
        if state not in TRANSITIONS[cand.state]:
            raise OverlayMisuse(f"a candidate cannot go from {cand.state.name} to {state.name}")
        cand.state = state

    def _in_flight(self) -> list[_Candidate]:
        return [c for c in self._candidates.values() if c.state is Candidate.ASKED]

    def _ordered(self) -> list[_Candidate]:
        return sorted(self._candidates.values(), key=lambda c: c.contact.node_id ^ self.key)

"""An in-process overlay: many :class:`~edge.overlay.node.Node` cores, one simulated clock.

Theory of operation
-------------------
No threads, no sockets, no wall clock. Every node is a sans-IO core; a request
is delivered by calling the target's ``handle_request`` and its reply arrives
after a simulated latency, through a heap ordered by arrival time. A node that
has left never answers, so the asking lookup times out and routes around it.

:func:`simulate` builds a network the way Kademlia nodes join it (section 2.3:
a new node knows one participant and looks up its own id), stores one record
per user at the ``k`` closest nodes to the user's key, lets a fraction of the
nodes leave without notice, then looks every stored key up with FIND_VALUE
from a random surviving node, and reports the hop counts and the success rate.
Everything random comes from one ``random.Random(seed)``, so a run repeats
exactly.
"""

import heapq
import math
import random
from dataclasses import dataclass, field
from hashlib import blake2b

from edge.overlay.ids import key_for_user, node_id_for
from edge.overlay.lookup import Lookup, LookupLimits, Query
from edge.overlay.messages import Contact, Nodes, Reply, Request, Stored, StoreRecord, Values
from edge.overlay.node import Node
from edge.overlay.store import Verdict
from edge.wire.codes import ErrorCode

RECORD_LIFETIME = 86_400.0
_SIM_SECRET = b"simulated signatures"


@dataclass(frozen=True)
class SimResult:
    """Figures of one simulated run."""

    hops_mean: float
    hops_p95: float
    success_rate: float
    nodes: int
    lookups: int
    messages_per_lookup: float
    """Requests sent per FIND_VALUE lookup, timed-out ones included."""
    seconds_mean: float
    """Mean simulated time a FIND_VALUE lookup took, timeouts included."""


def simulated_record(key: int, seq: int) -> bytes:
    """A record that :func:`simulated_validate` accepts under ``key`` (a stand-in signature)."""
    body = key.to_bytes(32, "big") + seq.to_bytes(8, "big")
    return body + blake2b(body, key=_SIM_SECRET, digest_size=16).digest()


def simulated_validate(key: bytes, record: bytes) -> Verdict | None:
    """Accept exactly the records :func:`simulated_record` makes for this key."""
    body, tag = record[:40], record[40:]
    if body[:32] != key or blake2b(body, key=_SIM_SECRET, digest_size=16).digest() != tag:
        return None
    return Verdict(slot=b"", seq=int.from_bytes(body[32:], "big"), expires=RECORD_LIFETIME)


@dataclass
class Network:
    """Nodes by id, who is alive, the clock, and the replies in flight."""

    rng: random.Random
    limits: LookupLimits
    nodes: dict[int, Node] = field(default_factory=dict)
    alive: set[int] = field(default_factory=set)
    now: float = 0.0
    messages: int = 0
    min_latency: float = 0.01
    max_latency: float = 0.1

    def add_node(self) -> Node:
        """A new node with a random static key; it knows nobody yet."""
        node_id = node_id_for(self.rng.randbytes(32))
        index = len(self.nodes)
        address = (f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}", 4000)
        node = Node(Contact(node_id, address), simulated_validate, self.now, limits=self.limits)
        self.nodes[node_id] = node
        self.alive.add(node_id)
        return node

    def leave(self, node_id: int) -> None:
        """The node stops answering, without telling anyone."""
        self.alive.discard(node_id)

    def ask(self, origin: Node, target: Contact, request: Request) -> Reply | None:
        """Deliver one request now; the reply, or None when the target is gone."""
        self.messages += 1
        if target.node_id not in self.alive:
            return None
        node = self.nodes[target.node_id]
        reply = node.handle_request(origin.contact, request, self.now)
        self._resolve_probes(node)
        return reply

    def run(self, origin: Node, lookup: Lookup) -> Lookup:
        """Drive ``lookup`` from ``origin`` to its end on the simulated clock."""
        arrivals: list[tuple[float, int, Contact, Nodes | Values]] = []
        self._send(origin, lookup.start(self.now), arrivals)
        while not lookup.done:
            timer = lookup.get_timer()
            if arrivals and (timer is None or arrivals[0][0] <= timer):
                self.now, _, contact, reply = heapq.heappop(arrivals)
                origin.note_reply(contact, self.now)
                queries = lookup.on_reply(contact, reply, self.now)
            elif timer is not None:
                self.now = max(self.now, timer)
                queries = self._time_out(origin, lookup)
            else:
                break
            self._send(origin, queries, arrivals)
        self._resolve_probes(origin)
        return lookup

    def _time_out(self, origin: Node, lookup: Lookup) -> list[Query]:
        before = {c.node_id for c in lookup.timed_out()}
        queries = lookup.handle_timer(self.now)
        for contact in lookup.timed_out():
            if contact.node_id not in before:
                origin.note_timeout(contact)
        return queries

    def _send(
        self,
        origin: Node,
        queries: list[Query],
        arrivals: list[tuple[float, int, Contact, Nodes | Values]],
    ) -> None:
        for query in queries:
            reply = self.ask(origin, query.node, query.request)
            if isinstance(reply, Nodes | Values):
                at = self.now + self.rng.uniform(self.min_latency, self.max_latency)
                heapq.heappush(arrivals, (at, self.messages, query.node, reply))

    def _resolve_probes(self, node: Node) -> None:
        for probe in node.probes_to_send():
            self.messages += 1
            if probe.node_id in self.alive:
                node.note_reply(probe, self.now)
            else:
                node.note_timeout(probe)


def join(net: Network, node: Node, bootstrap: Node) -> None:
    """Kademlia's join: learn one participant, then look up our own id."""
    node.note_reply(bootstrap.contact, net.now)
    net.run(node, node.lookup(node.contact.node_id, net.now))


def publish(net: Network, origin: Node, key: int, record: bytes) -> int:
    """Store ``record`` at the k closest live nodes to ``key``; returns how many took it.

    The publisher counts itself among the candidates: when it is one of the k
    closest, it keeps the record too.
    """
    lookup = net.run(origin, origin.lookup(key, net.now))
    found = [*lookup.result(), origin.contact]
    stored = 0
    for contact in sorted(found, key=lambda c: c.node_id ^ key)[: origin.limits.k]:
        if contact == origin.contact:
            origin.store.put(key, record, net.now)
            stored += 1
            continue
        reply = net.ask(origin, contact, StoreRecord(key, record))
        stored += isinstance(reply, Stored) and reply.code == ErrorCode.OK
    return stored


def republish(net: Network, now: float) -> int:
    """Move the clock to ``now``; every live node republishes what is due (section 2.5).

    Returns how many records were republished.
    """
    net.now = max(net.now, now)
    live = sorted(net.alive)
    net.rng.shuffle(live)
    count = 0
    for node_id in live:
        node = net.nodes[node_id]
        for held in node.handle_timer(net.now):
            publish(net, node, held.key, held.record)
            count += 1
    return count


def percentile(values: list[int], fraction: float) -> float:
    """The nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def build(nodes: int, rng: random.Random, limits: LookupLimits | None = None) -> Network:
    """A network of ``nodes`` nodes, each joined through a random earlier one."""
    net = Network(rng, limits or LookupLimits())
    first = net.add_node()
    joined = [first]
    for _ in range(nodes - 1):
        node = net.add_node()
        join(net, node, rng.choice(joined))
        joined.append(node)
    return net


def simulate(nodes: int, churn: float, lookups: int, seed: int) -> SimResult:
    """Build, store ``lookups`` records, lose ``churn`` of the nodes, look every key up."""
    rng = random.Random(seed)
    net = build(nodes, rng)
    keys = [key_for_user(f"user-{i}") for i in range(lookups)]
    everyone = list(net.nodes.values())
    for key in keys:
        publish(net, rng.choice(everyone), key, simulated_record(key, 1))
    for node_id in rng.sample(sorted(net.nodes), int(churn * nodes)):
        net.leave(node_id)
    survivors = [net.nodes[i] for i in sorted(net.alive)]
    hops: list[int] = []
    found = 0
    sent, began = net.messages, net.now
    for key in keys:
        origin = rng.choice(survivors)
        lookup = net.run(origin, origin.lookup(key, net.now, find_value=True))
        found += lookup.value is not None
        hops.append(lookup.hops)
    count = max(1, len(keys))
    return SimResult(
        hops_mean=sum(hops) / count,
        hops_p95=percentile(hops, 0.95) if hops else 0.0,
        success_rate=found / len(keys) if keys else 1.0,
        nodes=nodes,
        lookups=lookups,
        messages_per_lookup=(net.messages - sent) / count,
        seconds_mean=(net.now - began) / count,
    )

"""The iterative lookup over hand-built networks: convergence, timeouts, values, misuse."""

import random

import pytest

from edge.overlay.errors import OverlayMisuse, UnexpectedReply
from edge.overlay.ids import MAX_ID, id_to_bytes
from edge.overlay.lookup import Lookup, LookupLimits, Query
from edge.overlay.messages import Contact, FindNode, FindValue, Nodes, Values
from edge.overlay.routing import RoutingTable

KEY = 0
ORIGIN = MAX_ID
"""Farthest from KEY, so every other node is closer to it than the origin."""


def contact(node_id: int) -> Contact:
    return Contact(node_id, ("198.18.0.2", 4000 + node_id % 1000))


class HandNet:
    """Who knows whom, who holds what, who never answers; replies come at once."""

    def __init__(self) -> None:
        self.knows: dict[int, list[int]] = {}
        self.values: dict[int, tuple[bytes, ...]] = {}
        self.dead: set[int] = set()
        self.asked: list[int] = []

    def reply(self, query: Query) -> Nodes | Values:
        node_id = query.node.node_id
        if isinstance(query.request, FindValue) and node_id in self.values:
            return Values(self.values[node_id])
        return Nodes(tuple(contact(i) for i in self.knows.get(node_id, [])))

    def drive(self, lookup: Lookup, now: float = 0.0) -> float:
        """Run ``lookup`` to its end; returns the clock when it ended."""
        pending = lookup.start(now)
        while not lookup.done:
            if not pending:
                timer = lookup.get_timer()
                assert timer is not None
                now = timer
                pending = lookup.handle_timer(now)
                continue
            query = pending.pop(0)
            self.asked.append(query.node.node_id)
            if query.node.node_id not in self.dead:
                pending += lookup.on_reply(query.node, self.reply(query), now)
        return now


def chain() -> HandNet:
    """ORIGIN knows 0x300; 0x300 knows 0x30; 0x30 knows 0x3: each step closer to KEY."""
    net = HandNet()
    net.knows = {0x300: [0x30], 0x30: [0x3], 0x3: []}
    return net


def test_a_lookup_follows_closer_nodes_to_the_closest() -> None:
    net = chain()
    lookup = Lookup(ORIGIN, KEY, [contact(0x300)], limits=LookupLimits(k=3))
    net.drive(lookup)
    assert lookup.result() == [contact(0x3), contact(0x30), contact(0x300)]
    assert lookup.hops == 2
    assert lookup.get_timer() is None


def test_hops_count_only_replies_that_brought_a_closer_node() -> None:
    net = HandNet()
    net.knows = {0x300: [0x400, 0x500], 0x400: [], 0x500: []}
    lookup = Lookup(ORIGIN, KEY, [contact(0x300)], limits=LookupLimits(k=3))
    net.drive(lookup)
    assert lookup.result() == [contact(0x300), contact(0x400), contact(0x500)]
    assert lookup.hops == 0


def test_no_more_than_alpha_requests_in_flight() -> None:
    seeds = [contact(0x100 + i) for i in range(10)]
    lookup = Lookup(ORIGIN, KEY, seeds, limits=LookupLimits(k=10, alpha=3))
    first = lookup.start(0.0)
    assert [q.node for q in first] == seeds[:3]
    assert all(isinstance(q.request, FindNode) for q in first)
    assert lookup.on_timeout(first[0].node, 2.0) == [Query(seeds[3], FindNode(KEY))]


def test_a_node_that_never_answers_is_routed_around() -> None:
    net = HandNet()
    net.knows = {0x200: [0x20], 0x20: [0x2], 0x2: []}
    net.dead = {0x100}
    seeds = [contact(0x100), contact(0x200)]
    lookup = Lookup(ORIGIN, KEY, seeds, limits=LookupLimits(k=3, timeout=2.0))
    ended = net.drive(lookup, now=10.0)
    assert lookup.result() == [contact(0x2), contact(0x20), contact(0x200)]
    assert lookup.timed_out() == [contact(0x100)]
    assert ended == 12.0


def test_the_timer_is_the_earliest_deadline() -> None:
    lookup = Lookup(ORIGIN, KEY, [contact(0x100), contact(0x200)], limits=LookupLimits(timeout=2.0))
    lookup.start(5.0)
    assert lookup.get_timer() == 7.0
    assert lookup.handle_timer(6.9) == []
    lookup.handle_timer(7.0)
    assert lookup.done
    assert lookup.result() == []


def test_a_late_reply_still_counts() -> None:
    lookup = Lookup(ORIGIN, KEY, [contact(0x100), contact(0x200)], limits=LookupLimits(k=2))
    lookup.start(0.0)
    lookup.on_timeout(contact(0x100), 2.0)
    lookup.on_reply(contact(0x100), Nodes(()), 2.5)
    lookup.on_reply(contact(0x200), Nodes(()), 2.6)
    assert lookup.done
    assert lookup.result() == [contact(0x100), contact(0x200)]


def test_find_value_stops_at_the_first_valid_record() -> None:
    net = chain()
    net.values = {0x30: (b"presence",)}
    lookup = Lookup(ORIGIN, KEY, [contact(0x300)], find_value=True, limits=LookupLimits(k=3))
    net.drive(lookup)
    assert lookup.value == (b"presence",)
    assert lookup.hops == 2
    assert 0x3 not in net.asked


def test_find_value_asks_nobody_after_the_value() -> None:
    net = HandNet()
    net.values = {0x30: (b"presence",)}
    seeds = [contact(0x30), contact(0x40)]
    lookup = Lookup(ORIGIN, KEY, seeds, find_value=True, limits=LookupLimits(k=3, alpha=1))
    net.drive(lookup)
    assert lookup.value == (b"presence",)
    assert net.asked == [0x30]
    assert lookup.hops == 1


def test_find_value_skips_records_that_do_not_validate() -> None:
    net = chain()
    net.knows[0x300] = [0x30, 0x3]
    net.values = {0x30: (b"forged",), 0x3: (b"forged", b"good")}
    accepted: list[bytes] = []

    def accept(key: bytes, record: bytes) -> bool:
        accepted.append(key)
        return record == b"good"

    lookup = Lookup(
        ORIGIN, KEY, [contact(0x300)], find_value=True, accept=accept, limits=LookupLimits(k=3)
    )
    net.drive(lookup)
    assert lookup.value == (b"good",)
    assert set(accepted) == {id_to_bytes(KEY)}


def test_find_value_without_any_value_ends_with_the_closest_nodes() -> None:
    net = chain()
    lookup = Lookup(ORIGIN, KEY, [contact(0x300)], find_value=True, limits=LookupLimits(k=3))
    net.drive(lookup)
    assert lookup.value is None
    assert lookup.result()[0] == contact(0x3)


def test_the_shortlist_is_capped() -> None:
    net = HandNet()
    net.knows = {i: list(range(i * 100, i * 100 + 50)) for i in range(1, 400)}
    limits = LookupLimits(k=5, max_candidates=30)
    lookup = Lookup(ORIGIN, KEY, [contact(i) for i in range(300, 400)], limits=limits)
    net.drive(lookup)
    assert lookup.shortlist_size <= 30


def test_the_requests_of_one_lookup_are_capped() -> None:
    net = HandNet()
    net.knows = {i: [i - 1] for i in range(2, 1000)}
    lookup = Lookup(ORIGIN, KEY, [contact(999)], limits=LookupLimits(k=5, max_queries=12))
    net.drive(lookup)
    assert lookup.done
    assert len(net.asked) == 12


def test_replies_nobody_asked_for_are_refused() -> None:
    lookup = Lookup(ORIGIN, KEY, [contact(0x100)])
    lookup.start(0.0)
    with pytest.raises(UnexpectedReply):
        lookup.on_reply(contact(0x999), Nodes(()), 0.0)
    with pytest.raises(OverlayMisuse):
        lookup.start(0.0)
    with pytest.raises(OverlayMisuse):
        lookup.on_timeout(contact(0x999), 0.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_over_converged_tables_the_lookup_finds_the_true_k_closest(seed: int) -> None:
    rng = random.Random(seed)
    everyone = [rng.getrandbits(256) for _ in range(300)]
    tables = {}
    for node_id in everyone:
        table = RoutingTable(node_id, 8)
        for other in rng.sample(everyone, len(everyone)):
            table.mark_seen(contact(other), 0.0)
        tables[node_id] = table
    key = rng.getrandbits(256)
    origin = everyone[0]
    net = HandNet()
    net.knows = {i: [c.node_id for c in t.closest(key, 8)] for i, t in tables.items()}
    lookup = Lookup(origin, key, tables[origin].closest(key, 8), limits=LookupLimits(k=8))
    net.drive(lookup)
    truth = sorted((i for i in everyone if i != origin), key=lambda i: i ^ key)[:8]
    assert [c.node_id for c in lookup.result()] == truth

"""A thousand in-process nodes: stored keys are found after churn, in O(log N) hops."""

import math
import random

from edge.overlay.ids import key_for_user
from edge.overlay.node import REPUBLISH_INTERVAL
from edge.overlay.sim import build, publish, republish, simulate, simulated_record


def test_lookups_survive_churn_in_logarithmic_hops() -> None:
    result = simulate(nodes=1000, churn=0.2, lookups=200, seed=7)
    assert result.success_rate >= 0.99
    assert result.hops_mean <= math.log2(1000)
    assert result.hops_p95 <= math.log2(1000)


def test_a_run_repeats_exactly_from_its_seed() -> None:
    assert simulate(120, 0.2, 20, seed=3) == simulate(120, 0.2, 20, seed=3)


def test_a_record_lands_on_the_k_closest_live_nodes() -> None:
    net = build(150, random.Random(5))
    key = key_for_user("alice")
    origin = next(iter(net.nodes.values()))
    assert publish(net, origin, key, simulated_record(key, 1)) == 20
    holders = {i for i, n in net.nodes.items() if n.store.get(key, net.now)}
    closest = sorted(net.nodes, key=lambda i: i ^ key)[:20]
    assert holders == set(closest)


def test_lookups_route_around_the_nodes_that_left() -> None:
    net = build(150, random.Random(9))
    key = key_for_user("bob")
    nodes = list(net.nodes.values())
    publish(net, nodes[0], key, simulated_record(key, 1))
    closest = sorted(net.nodes, key=lambda i: i ^ key)
    for node_id in closest[:10]:
        net.leave(node_id)
    origin = net.nodes[closest[-1]]
    lookup = net.run(origin, origin.lookup(key, net.now, find_value=True))
    assert lookup.value == (simulated_record(key, 1),)


def test_nodes_that_keep_timing_out_leave_the_routing_table() -> None:
    net = build(150, random.Random(11))
    key = key_for_user("carol")
    closest = sorted(net.nodes, key=lambda i: i ^ key)
    dead = set(closest[:10])
    for node_id in dead:
        net.leave(node_id)
    origin = net.nodes[closest[10]]
    assert dead & {c.node_id for c in origin.table.contacts()}
    for _ in range(origin.table.max_failures):
        net.run(origin, origin.lookup(key, net.now))
    assert not dead & {c.node_id for c in origin.table.contacts()}


def test_republishing_keeps_a_record_alive_after_its_first_holders_leave() -> None:
    net = build(200, random.Random(13))
    key = key_for_user("dave")
    publish(net, next(iter(net.nodes.values())), key, simulated_record(key, 1))
    first = sorted(i for i, n in net.nodes.items() if n.store.get(key, net.now))
    for node_id in first[:10]:
        net.leave(node_id)
    republished = republish(net, net.now + REPUBLISH_INTERVAL)
    assert 1 <= republished < 10
    for node_id in first:
        net.leave(node_id)
    origin = net.nodes[min(net.alive)]
    lookup = net.run(origin, origin.lookup(key, net.now, find_value=True))
    assert lookup.value == (simulated_record(key, 1),)

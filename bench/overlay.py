"""The supernode overlay in simulation: lookup hops and success under churn.

In-process, on the sans-IO cores: nodes join through one another, records are
stored on the k closest, then a fifth of the nodes leave without notice and
every key is looked up from a surviving node. The reference for hops is
log2(N), the bound Kademlia promises.

Then load spreading (:func:`edge.supernode.spread.simulate_spread`): 100
clients per supernode join as the network grows, pick from the host caches
supernodes hand out and are admitted or redirected; a fifth of the supernodes
leave without notice and their clients reattach. Each figure stands beside
the same clients with the same host caches where every client takes the
first supernode its cache lists and nobody refuses ("first-learned").
"""

import math
from collections.abc import Callable

from bench.common import Figure
from edge.overlay.sim import simulate
from edge.supernode.spread import SpreadResult, simulate_spread

SIZES = (1_000, 10_000)
CHURN = 0.2
LOOKUPS = 200
BASELINE = "first-learned"


def run() -> list[Figure]:
    figures = []
    for nodes in SIZES:
        result = simulate(nodes, CHURN, LOOKUPS, seed=7)
        bound = math.log2(nodes)
        label = f"{nodes:,} nodes, 20% churn"
        figures += [
            _hops(f"DHT lookup hops, {label} (mean)", result.hops_mean, bound),
            _hops(f"DHT lookup hops, {label} (p95)", result.hops_p95, bound),
            Figure(f"DHT lookups found, {label}", 100 * result.success_rate, "%", "all", 100.0, 1),
        ]
    for supernodes in SIZES:
        figures += _spread(supernodes)
    return figures


def _spread(supernodes: int) -> list[Figure]:
    report = simulate_spread(supernodes, churn=CHURN, seed=7)
    spread, first = report.spread, report.baseline
    label = f"{supernodes:,} supernodes"

    def share(name: str, pick: Callable[[SpreadResult], float]) -> Figure:
        return Figure(f"{name}, {label}", 100 * pick(spread), "%", BASELINE, 100 * pick(first), 1)

    return [
        share("clients on busiest 1%", lambda r: r.busiest_share),
        Figure(
            f"busiest / mean, {label}",
            spread.busiest_over_mean,
            "x",
            BASELINE,
            first.busiest_over_mean,
            decimals=2,
        ),
        share("clients on top 20", lambda r: r.top20_share),
        share("clients on top 100", lambda r: r.top100_share),
        Figure(f"redirects per client, {label}", spread.redirects / spread.clients, "", decimals=2),
        Figure(f"clients unattached, {label}", spread.failed, ""),
        Figure(f"clients unattached, {BASELINE}, {label}", first.failed, ""),
    ]


def _hops(name: str, hops: float, bound: float) -> Figure:
    return Figure(name, hops, "hops", "log2(N)", bound, decimals=2)

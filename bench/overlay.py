"""The supernode overlay in simulation: lookup hops and success under churn.

In-process, on the sans-IO cores: nodes join through one another, records are
stored on the k closest, then a fifth of the nodes leave without notice and
every key is looked up from a surviving node. The reference for hops is
log2(N), the bound Kademlia promises.
"""

import math

from bench.common import Figure
from edge.overlay.sim import simulate

SIZES = (1_000, 10_000)
CHURN = 0.2
LOOKUPS = 200


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
    return figures


def _hops(name: str, hops: float, bound: float) -> Figure:
    return Figure(name, hops, "hops", "log2(N)", bound, decimals=2)

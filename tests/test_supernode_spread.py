"""The spreading simulation: admission control keeps the busiest supernode near
the mean where first-learned choice piles clients up, and a run repeats."""

import collections
import random

import pytest

from edge.client.hostcache import HostCache
from edge.supernode.admission import Admission
from edge.supernode.spread import SpreadReport, simulate_spread, summarise


@pytest.fixture(scope="module")
def report() -> SpreadReport:
    return simulate_spread(100, seed=7)


def test_spread_keeps_the_busiest_within_twice_the_mean(report: SpreadReport) -> None:
    spread = report.spread
    assert spread.supernodes == 80  # 20% left
    assert spread.failed == 0
    assert spread.clients == 100 * 100  # every client reattached
    assert spread.busiest_over_mean <= 2.0
    assert spread.redirects > 0


def test_first_learned_baseline_is_measurably_worse(report: SpreadReport) -> None:
    spread, baseline = report.spread, report.baseline
    assert baseline.redirects == 0
    assert baseline.clients + baseline.failed == 100 * 100
    assert baseline.busiest_over_mean > 2 * spread.busiest_over_mean
    assert baseline.busiest_share > 2 * spread.busiest_share
    assert baseline.top20_share > spread.top20_share + 0.2


def test_same_seed_same_result(report: SpreadReport) -> None:
    assert simulate_spread(100, seed=7) == report
    assert simulate_spread(100, seed=8) != report


def test_small_networks_and_bad_arguments() -> None:
    tiny = simulate_spread(4, clients_per_supernode=10, churn=0.0, seed=1)
    assert tiny.spread.clients == 40 and tiny.spread.failed == 0
    with pytest.raises(ValueError):
        simulate_spread(3)
    with pytest.raises(ValueError):
        simulate_spread(10, churn=1.0)


def test_summarise() -> None:
    result = summarise([300, *([100] * 199)], redirects=5, failed=2)
    assert result.supernodes == 200 and result.clients == 20_200
    assert result.busiest_share == pytest.approx(400 / 20_200)  # the busiest 1%: two of them
    assert result.busiest_over_mean == pytest.approx(300 / 101)
    assert result.top20_share == pytest.approx(2_200 / 20_200)
    assert result.top100_share == pytest.approx(10_200 / 20_200)
    assert (result.redirects, result.failed) == (5, 2)
    assert summarise([]).clients == 0


def test_a_fresh_host_cache_ranks_its_entries_uniformly() -> None:
    """Why the simulation may draw entries uniformly instead of building a cache
    per client: entries just listed and never tried all score the same."""
    node = Admission(("198.18.0.1", 4000))
    for i in range(20):
        node.note_peer((f"198.18.1.{i}", 4000), 0.0, rtt=0.01 * i)
    rng = random.Random(3)
    cache = HostCache()
    for entry in node.host_cache_offer(0.0, rng):
        cache.learn(entry.address, 0.0)
    firsts = collections.Counter(cache.ranked(0.0, rng)[0].address for _ in range(4000))
    assert len(firsts) == 20
    assert max(firsts.values()) < 2 * min(firsts.values())

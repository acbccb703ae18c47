"""Admission on one supernode: thresholds, redirects to fresh least-loaded peers,
refusal when full, the caps on every table, and the host cache it hands out."""

import collections
import math
import random

import pytest

from edge.client.hostcache import BadHostEntry
from edge.errors import LocalError
from edge.sansio import Address
from edge.supernode.admission import (
    MAX_LOGIN_SERVERS,
    MAX_OFFER,
    Admission,
    AdmissionLimits,
    Admitted,
    BadLoadReport,
    Redirected,
    offer_score,
)

SELF: Address = ("198.18.0.1", 4000)
LOGIN: Address = ("198.18.9.9", 443)


def peer(i: int) -> Address:
    return (f"198.18.1.{i}", 4000)


def filled(limits: AdmissionLimits, clients: int, now: float = 0.0) -> Admission:
    node = Admission(SELF, limits)
    rng = random.Random(1)
    for client in range(clients):
        assert isinstance(node.admit(client, now, rng, hops=limits.max_hops), Admitted)
    return node


SMALL = AdmissionLimits(capacity=10, soft=0.5, full=1.0, max_hops=2)


# -- thresholds


def test_admits_below_soft_and_counts_load() -> None:
    node = Admission(SELF, SMALL)
    rng = random.Random(1)
    answers = [node.admit(client, 0.0, rng) for client in range(5)]
    assert answers[-1] == Admitted(0.5)
    assert node.clients == 5
    assert node.admit(0, 0.0, rng) == Admitted(0.5)  # already attached: not twice
    assert node.clients == 5


def test_above_soft_redirects_until_the_client_has_hopped_enough() -> None:
    node = filled(SMALL, 5)
    rng = random.Random(1)
    assert node.admit("new", 0.0, rng) == Redirected((), full=False)
    assert node.admit("new", 0.0, rng, hops=1) == Redirected((), full=False)
    assert node.admit("new", 0.0, rng, hops=2) == Admitted(0.6)


def test_full_refuses_whatever_the_hops() -> None:
    node = filled(SMALL, 10)
    node.note_peer(peer(1), 0.0, load=0.1)
    answer = node.admit("new", 0.0, random.Random(1), hops=99)
    assert answer == Redirected((peer(1),), full=True)
    assert node.clients == 10


def test_leave_makes_room() -> None:
    node = filled(SMALL, 10)
    assert node.leave(3)
    assert not node.leave(3)
    assert not node.is_attached(3)
    assert isinstance(node.admit("new", 0.0, random.Random(1), hops=2), Admitted)


def test_thresholds_in_clients() -> None:
    limits = AdmissionLimits(capacity=300, soft=0.5, full=0.9)
    assert (limits.soft_count, limits.full_count) == (150, 270)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0},
        {"soft": 0.0},
        {"soft": 0.9, "full": 0.8},
        {"full": 1.5},
        {"alternatives": 17},
        {"sample": 0},
        {"max_peers": 0},
        {"max_hops": -1},
        {"load_max_age": 400.0, "live_max_age": 300.0},
    ],
)
def test_bad_limits_are_local_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(LocalError):
        AdmissionLimits(**kwargs)  # type: ignore[arg-type]


# -- redirects


def test_redirect_names_fresh_peers_with_room_least_loaded_first() -> None:
    node = filled(SMALL, 5)
    for i, load in enumerate([0.9, 0.48, 0.0, 0.2, 0.6, 0.3], start=1):
        node.note_peer(peer(i), 100.0, load=load)
    firsts: collections.Counter[Address] = collections.Counter()
    rng = random.Random(2)
    for trial in range(2000):
        answer = node.admit(f"c{trial}", 100.0, rng)
        assert isinstance(answer, Redirected)
        assert set(answer.alternatives) <= {peer(2), peer(3), peer(4), peer(6)}  # under soft
        assert len(answer.alternatives) == 4
        firsts[answer.alternatives[0]] += 1
        for i, load in enumerate([0.9, 0.48, 0.0, 0.2, 0.6, 0.3], start=1):
            node.note_peer(peer(i), 100.0, load=load)  # fresh reports undo the counting
    # Weights min(0.5 - load, 0.05): the nearly full 0.48 is the least likely first;
    # the others are equally likely, so redirected clients do not all go one way.
    assert firsts[peer(2)] < firsts[peer(3)] / 2
    for other in (peer(4), peer(6)):
        assert abs(firsts[other] - firsts[peer(3)]) < 200


def test_stale_load_reports_are_ignored() -> None:
    limits = AdmissionLimits(capacity=10, soft=0.5, load_max_age=60.0)
    node = filled(limits, 5)
    node.note_peer(peer(1), 0.0, load=0.0)
    node.note_peer(peer(2), 50.0, load=0.1)
    rng = random.Random(1)
    assert node.admit("a", 100.0, rng) == Redirected((peer(2),), full=False)
    assert node.admit("b", 200.0, rng) == Redirected((), full=False)
    node.note_peer(peer(1), 200.0)  # heard from, but no load: still unknown
    assert node.admit("c", 200.0, rng) == Redirected((), full=False)


def test_redirects_look_at_the_freshest_reports_only() -> None:
    limits = AdmissionLimits(capacity=10, soft=0.5, sample=4)
    node = filled(limits, 5)
    node.note_peer(peer(1), 10.0, load=0.0)  # the emptiest, but the oldest report
    for i in range(2, 6):
        node.note_peer(peer(i), 20.0, load=0.4)
    answer = node.admit("a", 20.0, random.Random(1))
    assert isinstance(answer, Redirected)
    assert peer(1) not in answer.alternatives


def test_a_redirect_counts_the_client_it_sends() -> None:
    limits = AdmissionLimits(capacity=10, soft=0.5)
    node = filled(limits, 5)
    node.note_peer(peer(1), 0.0, load=0.3)  # room for two of our clients
    rng = random.Random(1)
    sent = [node.admit(f"c{i}", 0.0, rng) for i in range(3)]
    assert sent[0] == sent[1] == Redirected((peer(1),), full=False)
    assert sent[2] == Redirected((), full=False)
    assert node.is_out_of_alternatives()
    node.note_peer(peer(1), 1.0, load=0.3)
    assert not node.is_out_of_alternatives()


def test_own_address_is_never_a_peer() -> None:
    node = Admission(SELF, SMALL)
    assert node.note_peer(SELF, 0.0, load=0.0) is None
    assert node.peers() == []


def test_bad_reports_raise_and_keep_what_was_known() -> None:
    node = Admission(SELF, SMALL)
    node.note_peer(peer(1), 0.0, rtt=0.05, load=0.2)
    for bad in (math.nan, math.inf, -0.1):
        with pytest.raises(BadLoadReport):
            node.note_peer(peer(1), 1.0, load=bad)
        with pytest.raises(BadLoadReport):
            node.note_peer(peer(1), 1.0, rtt=bad)
    with pytest.raises(BadHostEntry):
        node.note_peer(("198.18.1.1", 0), 1.0)
    with pytest.raises(BadHostEntry):
        node.note_peer(["198.18.1.1", 4000], 1.0)  # type: ignore[arg-type]
    (kept,) = node.peers()
    assert (kept.last_seen, kept.rtt, kept.load, kept.load_at) == (0.0, 0.05, 0.2, 0.0)
    assert node.note_peer(peer(1), 2.0, load=7.0) is not None
    assert node.peers()[0].load == 1.0  # over-full is full


def test_note_keeps_what_a_report_leaves_out() -> None:
    node = Admission(SELF, SMALL)
    node.note_peer(peer(1), 0.0, rtt=0.05, load=0.2)
    refreshed = node.note_peer(peer(1), 30.0)
    assert refreshed is not None
    assert (refreshed.last_seen, refreshed.rtt, refreshed.load, refreshed.load_at) == (
        30.0,
        0.05,
        0.2,
        0.0,
    )


# -- caps


def test_peer_table_is_capped_least_recently_heard_first() -> None:
    node = Admission(SELF, AdmissionLimits(max_peers=3))
    for i in range(1, 4):
        node.note_peer(peer(i), float(i), load=0.0)
    node.note_peer(peer(1), 10.0)  # heard again: now the most recent
    node.note_peer(peer(4), 11.0, load=0.0)
    assert [p.address for p in node.peers()] == [peer(3), peer(1), peer(4)]
    assert node.forget_peer(peer(3)) is not None
    assert node.forget_peer(peer(3)) is None


def test_clients_never_exceed_capacity() -> None:
    node = Admission(SELF, SMALL)
    rng = random.Random(1)
    for client in range(50):
        node.admit(client, 0.0, rng, hops=10)
    assert node.clients == SMALL.capacity


def test_alternatives_are_capped() -> None:
    limits = AdmissionLimits(capacity=10, soft=0.5, alternatives=2)
    node = filled(limits, 5)
    for i in range(1, 10):
        node.note_peer(peer(i), 0.0, load=0.0)
    answer = node.admit("a", 0.0, random.Random(1))
    assert isinstance(answer, Redirected) and len(answer.alternatives) == 2


def test_login_servers_are_capped_and_checked() -> None:
    too_many = [(f"198.18.9.{i}", 443) for i in range(MAX_LOGIN_SERVERS + 1)]
    with pytest.raises(LocalError):
        Admission(SELF, login_servers=too_many)
    with pytest.raises(BadHostEntry):
        Admission(SELF, login_servers=[("", 443)])


# -- the host cache offer


def test_offer_ranks_by_freshness_and_rtt_and_flags_the_login_server() -> None:
    node = Admission(SELF, AdmissionLimits(live_max_age=300.0), login_servers=[LOGIN])
    node.note_peer(peer(1), 100.0, rtt=0.200)
    node.note_peer(peer(2), 100.0, rtt=0.020)
    node.note_peer(peer(3), 40.0, rtt=0.020)  # as close, heard from a minute earlier
    node.note_peer(peer(4), 100.0)  # never measured: counts as slow
    offer = node.host_cache_offer(100.0, random.Random(1))
    assert [e.address for e in offer] == [peer(2), peer(3), peer(1), peer(4), LOGIN]
    assert [e.login_server for e in offer] == [False] * 4 + [True]
    assert offer[0].rtt == 0.020 and offer[-1].rtt is None


def test_offer_leaves_out_the_dead_and_the_full() -> None:
    node = Admission(SELF, AdmissionLimits(load_max_age=60.0, live_max_age=300.0))
    node.note_peer(peer(1), 0.0)  # not heard from for too long by t=400
    node.note_peer(peer(2), 390.0, load=1.0)  # full, freshly reported
    node.note_peer(peer(3), 300.0, load=1.0)  # full, but the report is stale
    node.note_peer(peer(4), 399.0, load=0.5)
    offer = node.host_cache_offer(400.0, random.Random(1))
    assert sorted(e.address for e in offer) == [peer(3), peer(4)]


def test_offer_is_capped_at_200_and_varies_between_clients() -> None:
    node = Admission(SELF, login_servers=[LOGIN])
    for i in range(256):
        node.note_peer((f"198.18.2.{i}", 4000), 0.0, rtt=0.05)
    rng = random.Random(1)
    first, second = (node.host_cache_offer(0.0, rng) for _ in range(2))
    assert len(first) == MAX_OFFER + 1 and first[-1].address == LOGIN
    assert {e.address for e in first} != {e.address for e in second}
    assert len(node.host_cache_offer(0.0, rng, n=10)) == 11
    with pytest.raises(LocalError):
        node.host_cache_offer(0.0, rng, n=MAX_OFFER + 1)


def test_offer_prefers_better_peers_when_it_must_choose() -> None:
    node = Admission(SELF)
    for i in range(100):
        node.note_peer((f"198.18.3.{i}", 4000), 0.0, rtt=0.010)  # close
        node.note_peer((f"198.18.4.{i}", 4000), 0.0, rtt=0.400)  # far
    offer = node.host_cache_offer(0.0, random.Random(1), n=100)
    close = sum(e.address[0].startswith("198.18.3.") for e in offer)
    assert close > 95


def test_offer_score_formula() -> None:
    node = Admission(SELF)
    seen = node.note_peer(peer(1), 0.0, rtt=0.1)
    assert seen is not None
    assert offer_score(seen, 0.0, 75.0) == pytest.approx(0.5)
    assert offer_score(seen, 75.0, 75.0) == pytest.approx(0.25)

"""The ICE checklist: pacing, repeats, unfreezing, nomination, failure."""

import pytest

from edge.client.checklist import Checklist, PairState
from edge.client.ice import candidate, pairs
from edge.errors import LocalError
from edge.wire.messages import CandidateKind, Transport

HOST, SRFLX, RELAY = CandidateKind.HOST, CandidateKind.SERVER_REFLEXIVE, CandidateKind.RELAY
PRFLX = CandidateKind.PEER_REFLEXIVE
UDP = Transport.UDP


def checklist_of(count: int = 3) -> Checklist:
    local = [
        candidate(HOST, UDP, ("10.0.0.2", 4000)),
        candidate(RELAY, UDP, ("198.18.0.30", 50000), ("10.0.0.2", 4000)),
    ]
    remote = [
        candidate(HOST, UDP, ("10.0.1.7", 5000)),
        candidate(SRFLX, UDP, ("198.18.0.7", 62000), ("10.0.1.7", 5000)),
    ]
    return Checklist(pairs(local, remote, controlling=True)[:count], 0.0)


def run_until(checklist: Checklist, end: float) -> list[tuple[float, int, int]]:
    sent = []
    while (at := checklist.get_timer()) is not None and at <= end:
        sent += [(at, c.index, c.attempt) for c in checklist.handle_timer(at)]
    return sent


def test_new_checks_are_paced_best_first() -> None:
    checklist = checklist_of(3)
    sent = run_until(checklist, 0.12)
    assert [(round(t, 2), i, a) for t, i, a in sent] == [(0.0, 0, 1), (0.05, 1, 1), (0.1, 2, 1)]


def test_unanswered_checks_repeat_with_backoff_then_fail() -> None:
    checklist = checklist_of(1)
    sent = run_until(checklist, 100.0)
    assert [(round(t, 2), a) for t, _, a in sent] == [(0.0, 1), (0.5, 2), (1.5, 3), (3.5, 4)]
    assert checklist.state(0) is PairState.FAILED
    assert checklist.failed and checklist.done and checklist.get_timer() is None


def test_the_best_pair_answering_is_nominated_at_once() -> None:
    checklist = checklist_of(3)
    run_until(checklist, 0.0)
    checklist.on_success(0, 0.02)
    assert checklist.nominated is not None
    assert checklist.nominated.local.address == ("10.0.0.2", 4000)
    assert checklist.done


def test_a_worse_pair_waits_for_the_better_ones_or_for_patience() -> None:
    checklist = checklist_of(3)
    run_until(checklist, 0.1)  # all three checks are out
    checklist.on_success(2, 0.11)
    assert checklist.nominated is None  # better pairs may still answer
    checklist.on_failure(0, 0.12)
    assert checklist.nominated is None
    run_until(checklist, 0.61 + 0.01)  # patience runs out half a second after the success
    assert checklist.nominated is checklist_pair(checklist, 2)


def test_a_worse_pair_wins_once_every_better_one_failed() -> None:
    checklist = checklist_of(2)
    run_until(checklist, 0.05)
    checklist.on_success(1, 0.06)
    checklist.on_failure(0, 0.07)
    assert checklist.nominated is checklist_pair(checklist, 1)


def test_a_late_or_duplicate_answer_changes_nothing() -> None:
    checklist = checklist_of(1)
    run_until(checklist, 100.0)
    checklist.on_success(0, 101.0)
    assert checklist.state(0) is PairState.FAILED and checklist.nominated is None


def test_success_unfreezes_pairs_of_the_same_foundation() -> None:
    local = [
        candidate(HOST, UDP, ("10.0.0.2", 4000)),
        candidate(HOST, UDP, ("10.0.0.2", 4001)),  # same kind and base IP: same foundation
    ]
    remote = [candidate(HOST, UDP, ("10.0.1.7", 5000))]
    checklist = Checklist(pairs(local, remote, controlling=True), 0.0)
    assert [checklist.state(i) for i in range(2)] == [PairState.WAITING, PairState.FROZEN]
    run_until(checklist, 0.0)
    checklist.on_success(0, 0.01)
    assert checklist.state(1) is PairState.WAITING
    assert checklist.nominated is not None


def test_an_empty_checklist_is_our_mistake() -> None:
    with pytest.raises(LocalError):
        Checklist([], 0.0)


def checklist_pair(checklist: Checklist, index: int) -> object:
    return checklist._entries[index].pair


def test_a_triggered_check_goes_ahead_of_the_ordinary_order() -> None:
    checklist = checklist_of(3)
    run_until(checklist, 0.0)  # pair 0 is out
    checklist.trigger(2)
    sent = run_until(checklist, 0.05)
    assert [(i, a) for _, i, a in sent] == [(2, 1)]


def test_a_failed_pair_the_peer_checks_on_gets_its_tries_again() -> None:
    checklist = checklist_of(1)
    run_until(checklist, 100.0)
    assert checklist.failed
    checklist.trigger(0)
    assert not checklist.failed and checklist.state(0) is PairState.WAITING
    assert [(c.index, c.attempt) for c in checklist.handle_timer(100.0)] == [(0, 1)]
    assert checklist.state(0) is PairState.IN_PROGRESS
    assert checklist.get_timer() == 100.5  # and its repeats, as the first time


def test_a_learned_pair_is_checked_next_and_ranked_by_its_priority() -> None:
    local = [candidate(HOST, UDP, ("198.18.0.2", 4000))]
    remote = [
        candidate(HOST, UDP, ("10.0.1.7", 5000)),
        candidate(RELAY, UDP, ("198.18.0.31", 50001), ("10.0.1.7", 5000)),
    ]
    checklist = Checklist(pairs(local, remote, controlling=True), 0.0)
    run_until(checklist, 0.06)  # both ordinary pairs are out
    learned = pairs(local, [candidate(PRFLX, UDP, ("198.18.0.99", 40000))], controlling=True)[0]
    index = checklist.add(learned)
    assert index == 2
    sent = run_until(checklist, 0.11)
    assert [i for _, i, _ in sent] == [2]
    checklist.on_success(1, 0.12)  # the relay answers first
    checklist.on_success(2, 0.13)
    checklist.on_failure(0, 0.14)
    assert checklist.nominated == learned  # above the relay, whatever its index


def test_a_pair_that_succeeded_is_not_triggered_again() -> None:
    checklist = checklist_of(2)
    run_until(checklist, 0.0)
    checklist.on_success(0, 0.01)
    checklist.trigger(0)
    assert checklist.state(0) is PairState.SUCCEEDED

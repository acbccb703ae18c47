"""ICE arithmetic against RFC 8445's formulas, and our path kinds."""

from hypothesis import given
from hypothesis import strategies as st

from edge.client.ice import (
    MAX_PAIRS,
    candidate,
    pair_priority,
    pairs,
    path_kind,
    priority,
)
from edge.wire.messages import CandidateKind, PathKind, Transport

HOST, SRFLX, PRFLX, RELAY = (
    CandidateKind.HOST,
    CandidateKind.SERVER_REFLEXIVE,
    CandidateKind.PEER_REFLEXIVE,
    CandidateKind.RELAY,
)
UDP, TCP = Transport.UDP, Transport.TCP


def test_priorities_follow_the_formula() -> None:
    # (2^24)*126 + (2^8)*65535 + (256 - 1)
    assert priority(HOST, UDP) == 2130706431
    assert priority(SRFLX, UDP) == (100 << 24) + (65535 << 8) + 255
    assert priority(RELAY, UDP) == (65535 << 8) + 255
    assert priority(HOST, TCP) < priority(HOST, UDP)
    assert priority(HOST, TCP) > priority(SRFLX, UDP)  # type first, then transport


def test_pair_priority_is_symmetric_across_roles() -> None:
    g, d = priority(HOST, UDP), priority(SRFLX, UDP)
    assert pair_priority(g, d) == (d << 32) + 2 * g + 1
    assert pair_priority(d, g) == (d << 32) + 2 * g
    # Both sides compute the same number for the same pair, each in its own role.
    local, remote = (
        candidate(HOST, UDP, ("10.0.0.2", 4000)),
        candidate(SRFLX, UDP, ("198.18.0.9", 5000), ("10.1.0.2", 5000)),
    )
    (mine,) = pairs([local], [remote], controlling=True)
    (theirs,) = pairs([remote], [local], controlling=False)
    assert mine.priority == theirs.priority


@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_pair_priority_orders_by_the_worse_candidate_first(g: int, d: int) -> None:
    # Candidate priorities are 1 .. 2^31 - 1 (RFC 8445 §5.1.2).
    assert pair_priority(g, d) >> 32 == min(g, d)


def test_pairs_are_compatible_ordered_pruned_and_capped() -> None:
    lan = candidate(HOST, UDP, ("10.0.0.2", 4000))
    lan6 = candidate(HOST, UDP, ("2001:db8::2", 4000))
    reflexive = candidate(SRFLX, UDP, ("198.18.0.2", 61000), ("10.0.0.2", 4000))
    relayed = candidate(RELAY, UDP, ("198.18.0.30", 50000), ("10.0.0.2", 4000))
    tcp = candidate(HOST, TCP, ("10.0.0.2", 4000))
    theirs = [
        candidate(HOST, UDP, ("10.0.1.7", 5000)),
        candidate(SRFLX, UDP, ("198.18.0.7", 62000), ("10.0.1.7", 5000)),
        candidate(HOST, TCP, ("10.0.1.7", 5000)),
    ]
    checklist = pairs([lan, lan6, reflexive, relayed, tcp], theirs, controlling=True)
    priorities = [p.priority for p in checklist]
    assert priorities == sorted(priorities, reverse=True)
    assert all(p.local.transport is p.remote.transport for p in checklist)
    assert not any(p.local.address[0].startswith("2001:") for p in checklist)  # no v4 peer
    # The reflexive candidate sends from its base: its pairs collapse into the host's.
    assert not any(p.local.kind is SRFLX for p in checklist)
    keys = [(p.local.address, p.remote.address, p.local.transport) for p in checklist]
    assert len(keys) == len(set(keys))
    assert len(checklist) == 2 + 2 + 1  # host and relay, each with two UDP; one TCP
    many = [candidate(HOST, UDP, (f"10.0.{i // 250}.{i % 250 + 1}", 4000)) for i in range(20)]
    assert len(pairs(many, many, controlling=True)) == MAX_PAIRS


def test_path_kinds() -> None:
    host = candidate(HOST, UDP, ("10.0.0.2", 4000))
    peer_host = candidate(HOST, UDP, ("10.0.0.3", 4000))
    srflx = candidate(SRFLX, UDP, ("198.18.0.2", 61000), ("10.0.0.2", 4000))
    prflx = candidate(PRFLX, UDP, ("198.18.0.3", 61001), ("10.0.0.3", 4000))
    relay = candidate(RELAY, UDP, ("198.18.0.30", 50000), ("10.0.0.2", 4000))
    tcp = candidate(HOST, TCP, ("10.0.0.2", 4000))
    tcp_relay = candidate(RELAY, TCP, ("198.18.0.30", 443), ("10.0.0.2", 4000))
    assert path_kind(host, peer_host) is PathKind.DIRECT_UDP
    assert path_kind(host, srflx) is PathKind.PUNCHED_UDP
    assert path_kind(host, prflx) is PathKind.PUNCHED_UDP
    assert path_kind(relay, srflx) is PathKind.RELAY_UDP
    assert path_kind(tcp, tcp) is PathKind.DIRECT_TCP
    assert path_kind(tcp_relay, tcp) is PathKind.RELAY_TCP


def test_foundations_group_like_candidates() -> None:
    a = candidate(SRFLX, UDP, ("198.18.0.2", 61000), ("10.0.0.2", 4000), server="sn1")
    b = candidate(SRFLX, UDP, ("198.18.0.2", 61002), ("10.0.0.2", 4002), server="sn1")
    c = candidate(SRFLX, UDP, ("198.18.0.2", 61000), ("10.0.0.2", 4000), server="sn2")
    assert a.foundation == b.foundation != c.foundation

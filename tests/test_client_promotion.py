"""Promotion policy and the client's side of dial-back tests, in memory.

Supernodes are real :class:`~edge.supernode.dialback.DialbackService` cores
with certified keys; messages go through the codec as they would inside a
session, the probe as the datagram the probe socket sends. Measurements are
:class:`Sample` values fed every ``STEP`` seconds. Time is ``now`` from 0,
Unix time ``WALL + now``.
"""

import functools
import itertools
import json
import math
import re
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.client.errors import PromotionMisuse
from edge.client.promotion import (
    DialbackClient,
    Mode,
    Promotion,
    RelayCaps,
    Role,
    RoleChanged,
    Sample,
    Thresholds,
)
from edge.supernode.dialback import DialbackService, Requester, SendProbe
from edge.supernode.errors import AttestationWrongClient
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import encode
from tests.sessions import WALL
from tests.test_supernode_dialback import (
    PORT,
    TRUST,
    Supernode,
    answer,
    message,
    result_body,
    supernode,
)

STEP = 30.0
GOOD = Sample(uptime=3 * 3600, up_bps=5e6, down_bps=20e6, cpu=0.2)
BUSY_CPU = Sample(uptime=3 * 3600, up_bps=5e6, down_bps=20e6, cpu=0.93)
CLIENT_IP = "198.18.1.5"
HOLD = 600.0


def supernodes(n: int, first: int = 1) -> list[Supernode]:
    """``n`` supernodes on as many IP addresses."""
    return [
        supernode((f"198.18.0.{i}", 33033), user_id=f"sn-{i}", seed=i)
        for i in range(first, first + n)
    ]


def promotion(mode: Mode | str = Mode.AUTO, **thresholds: float) -> Promotion:
    return Promotion(
        mode,
        TRUST,
        user_id="alice",
        device_id="desk-1",
        thresholds=Thresholds(**thresholds),  # type: ignore[arg-type]
        wall_offset=WALL,
    )


def dial_back(
    sn: Supernode,
    dialer: DialbackClient,
    now: float,
    *,
    index: int = 1,
    client_ip: str = CLIENT_IP,
    reachable: bool = True,
) -> bytes | None:
    """One whole test between ``dialer`` and ``sn``; the attestation, if any."""
    peer = TRUST.verify(sn.ident.certificate, WALL + now)
    request = dialer.request(index, peer, sn.address, now)
    who = Requester(index, "alice", "desk-1", (client_ip, 40001))
    sn.service.receive(who, message(MsgType.DIALBACK_REQUEST, request), now)
    probe = answer(sn)
    assert isinstance(probe, SendProbe)
    if reachable:
        got = dialer.receive_probe(probe.datagram, now + 0.05)
        assert got is not None and got[0] == index
        sn.service.receive(who, message(MsgType.DIALBACK_CONFIRM, got[1]), now + 0.1)
    else:
        sn.service.handle_timer(now + 5)
    result = answer(sn)
    return dialer.receive_result(result.index, result_body(result), now + 0.1)


def attested(
    p: Promotion, sns: Iterable[Supernode], now: float = 0.0, client_ip: str = CLIENT_IP
) -> None:
    """Dial-back tests with each of ``sns``, the attestations given to ``p``."""
    dialer = DialbackClient(PORT)
    for n, sn in enumerate(sns):
        raw = dial_back(sn, dialer, now, index=n + 1, client_ip=client_ip)
        assert raw is not None
        p.add_attestation(raw, now)


@functools.cache
def three_attestations() -> tuple[bytes, ...]:
    """Attestations from three supernodes on three IPs, made at ``now == 0``."""
    dialer = DialbackClient(PORT)
    made = (dial_back(sn, dialer, 0.0, index=n) for n, sn in enumerate(supernodes(3)))
    return tuple(raw for raw in made if raw is not None)


def reachable(mode: Mode | str = Mode.AUTO, **thresholds: float) -> Promotion:
    p = promotion(mode, **thresholds)
    for raw in three_attestations():
        p.add_attestation(raw, 0.0)
    return p


def feed(p: Promotion, sample: Sample, start: float, end: float) -> list[RoleChanged]:
    """``sample`` every STEP seconds from ``start`` up to ``end``; the role changes."""
    events = []
    now = start
    while now <= end:
        p.update(sample, now)
        while (event := p.next_event()) is not None:
            events.append(event)
        now += STEP
    return events


def change(p: Promotion) -> tuple[Role, Role, str]:
    """The next role change: from, to, why."""
    event = p.next_event()
    assert event is not None
    return event.old, event.new, event.reason


def promoted(p: Promotion, start: float = 10.0) -> float:
    """Feed good samples until ``p`` serves; when it started to."""
    feed(p, GOOD, start, start + HOLD)
    assert p.role is Role.SUPERNODE
    return start + HOLD


# -- dial-backs and what counts


def test_three_dial_backs_from_three_ips_then_the_hold_promote() -> None:
    p = promotion()
    attested(p, supernodes(3))
    assert p.reachability(WALL + 1) == ((CLIENT_IP, PORT), 3)
    p.update(GOOD, 10.0)
    assert p.role is Role.CANDIDATE
    assert change(p) == (
        Role.CLIENT,
        Role.CANDIDATE,
        "auto: candidate, conditions held 0 s of 10 min",
    )
    assert p.reason(10.0) == "auto: candidate, conditions held 0 s of 10 min"
    assert p.get_timer() == 10.0 + HOLD
    events = feed(p, GOOD, 10.0 + STEP, 10.0 + HOLD)
    assert [(e.old, e.new) for e in events] == [(Role.CANDIDATE, Role.SUPERNODE)]
    assert events[0].at == WALL + 10.0 + HOLD
    assert p.is_supernode
    assert re.fullmatch(
        r"supernode since 2027-01-15 08:10 UTC \(auto: reachable at 198\.18\.1\.5:40000, "
        r"3 dial-backs\)",
        p.reason(700.0),
    )
    assert p.counts["promoted"] == 1


def test_two_supernodes_on_one_ip_count_once() -> None:
    p = promotion()
    same_ip = [
        supernode(("198.18.0.1", 33033), user_id="sn-a"),
        supernode(("198.18.0.1", 33034), user_id="sn-b"),
    ]
    attested(p, [*same_ip, *supernodes(1, first=2)])
    assert p.reachability(WALL + 1)[1] == 2
    feed(p, GOOD, 10.0, 4 * 3600)
    assert p.role is Role.CLIENT
    assert p.reason(4 * 3600) == "auto: 2 of 3 dial-backs"


def test_one_supernode_on_two_ips_counts_once() -> None:
    one = supernode(("198.18.0.1", 33033))
    twin = DialbackService(
        one.ident.keys.sign, one.ident.certificate, ("198.18.0.2", 33033), wall_offset=WALL
    )
    p = promotion()
    attested(p, [one, Supernode(one.ident, twin, ("198.18.0.2", 33033)), *supernodes(1, first=3)])
    assert p.reachability(WALL + 1)[1] == 2


def test_attestations_for_different_addresses_do_not_add_up() -> None:
    p = promotion()
    attested(p, supernodes(2))
    attested(p, supernodes(1, first=3), client_ip="198.18.1.77")
    assert p.reachability(WALL + 1) == ((CLIENT_IP, PORT), 2)


def test_an_unreachable_client_gets_no_attestation() -> None:
    dialer = DialbackClient(PORT)
    assert dial_back(supernodes(1)[0], dialer, 0.0, reachable=False) is None
    assert dialer.counts["unreachable"] == 1


def test_an_attestation_about_another_device_is_refused() -> None:
    other = Promotion(Mode.AUTO, TRUST, user_id="alice", device_id="door", wall_offset=WALL)
    with pytest.raises(AttestationWrongClient):
        other.add_attestation(three_attestations()[0], 1.0)
    assert other.counts["refused-client"] == 1
    assert other.reachability(WALL + 1) == (None, 0)


def test_attestations_expire_and_the_supernode_steps_down() -> None:
    p = reachable()
    promoted(p)
    day = 24 * 3600.0
    assert p.dialbacks_wanted(day - 2 * 3600 - 60) == 0
    assert p.dialbacks_wanted(day - 2 * 3600 + 60) == 3  # ask again before they lapse
    events = feed(p, GOOD, 700.0, day + 2 * HOLD)
    assert [(e.old, e.new) for e in events] == [
        (Role.SUPERNODE, Role.DEMOTING),
        (Role.DEMOTING, Role.CLIENT),
    ]
    assert events[-1].reason == "demoted: 0 of 3 dial-backs for 10 min"


def test_newer_attestation_replaces_older_and_table_is_capped() -> None:
    p = reachable(max_attestations=3, dialbacks=3)
    attested(p, supernodes(2, first=10), now=100.0)
    assert len(p._attestations) == 3
    assert p.counted_ips(200.0) == {"198.18.0.10", "198.18.0.11", "198.18.0.3"}


# -- the operator's setting


def test_never_never_promotes_and_does_not_ask() -> None:
    p = reachable(Mode.NEVER)
    assert feed(p, GOOD, 0.0, 6 * 3600) == []
    assert p.role is Role.CLIENT
    assert p.reason(6 * 3600) == "never: operator setting"
    assert p.dialbacks_wanted(0.0) == 0
    assert p.status(0.0)["supernode"] is False


def test_never_demotes_at_once() -> None:
    p = reachable()
    at = promoted(p)
    p.set_mode("never", at + 1)
    assert change(p) == (Role.SUPERNODE, Role.CLIENT, "never: operator setting")
    assert feed(p, GOOD, at + 2, at + 3600) == []


def test_always_skips_thresholds_but_needs_reachability() -> None:
    weak = Sample(uptime=0, up_bps=0, down_bps=0, cpu=3.0)
    p = promotion(Mode.ALWAYS)
    feed(p, weak, 0.0, 3600)
    assert p.role is Role.CLIENT
    assert p.reason(3600) == "always: 0 of 3 dial-backs"
    assert p.dialbacks_wanted(3600) == 3
    for raw in three_attestations():
        p.add_attestation(raw, 3600)
    events = feed(p, weak, 3600 + STEP, 3600 + STEP + HOLD)
    assert [e.new for e in events] == [Role.CANDIDATE, Role.SUPERNODE]


def test_auto_reasons_name_the_first_failing_condition() -> None:
    p = promotion()
    assert p.reason(0.0) == "auto: no measurements yet"
    p.update(GOOD, 0.0)
    assert p.reason(0.0) == "auto: 0 of 3 dial-backs"
    for raw in three_attestations()[:2]:
        p.add_attestation(raw, 0.0)
    p.update(GOOD, 1.0)
    assert p.reason(1.0) == "auto: 2 of 3 dial-backs"
    p.add_attestation(three_attestations()[2], 1.0)
    cases = [
        (Sample(uptime=40 * 60, up_bps=5e6, down_bps=2e7, cpu=0.1), "auto: uptime 40 min < 2 h"),
        (
            Sample(uptime=1e5, up_bps=5e5, down_bps=2e7, cpu=0.1),
            "auto: upload 0.5 Mbit/s < 1 Mbit/s",
        ),
        (
            Sample(uptime=1e5, up_bps=5e6, down_bps=2e5, cpu=0.1),
            "auto: download 0.2 Mbit/s < 1 Mbit/s",
        ),
        (BUSY_CPU, "auto: cpu 93% > 80%"),
    ]
    for sample, reason in cases:
        p.update(sample, 2.0)
        assert p.reason(2.0) == reason


# -- hysteresis


def test_no_promotion_while_cpu_oscillates_around_the_threshold() -> None:
    p = reachable()
    events = []
    for n in range(4 * 60):  # every minute for four hours
        p.update(GOOD if n % 2 else Sample(3 * 3600, 5e6, 2e7, 0.81), 60.0 * n)
        while (event := p.next_event()) is not None:
            events.append(event)
    assert not p.is_supernode
    assert {e.new for e in events} <= {Role.CANDIDATE, Role.CLIENT}


def test_no_demotion_while_cpu_oscillates_around_the_threshold() -> None:
    p = reachable()
    at = promoted(p)
    for n in range(4 * 60):
        p.update(GOOD if n % 2 else Sample(3 * 3600, 5e6, 2e7, 0.81), at + 60.0 * (n + 1))
        assert p.is_supernode
    assert p.counts["demoted"] == 0
    assert p.role is Role.SUPERNODE
    assert p.reason(at + 4 * 3600).startswith("supernode since 2027-01-15 08:10 UTC")


def test_demotion_after_sustained_failure() -> None:
    p = reachable()
    at = promoted(p)
    feed(p, GOOD, at, at + 1000)  # past the minimum time as a supernode
    start = at + 1000 + STEP
    p.update(BUSY_CPU, start)
    assert p.role is Role.DEMOTING
    assert change(p)[2] == "demoting: cpu 93% > 80% for 0 s of 10 min"
    assert p.is_supernode
    assert p.reason(start + 180) == "demoting: cpu 93% > 80% for 3 min of 10 min"
    assert p.get_timer() == start + HOLD
    events = feed(p, BUSY_CPU, start + STEP, start + HOLD)
    assert [(e.old, e.new) for e in events] == [(Role.DEMOTING, Role.CLIENT)]
    assert events[0].reason == "demoted: cpu 93% > 80% for 10 min"
    assert p.reason(start + HOLD + 1) == "demoted: cpu 93% > 80% for 10 min"
    assert p.status(start + HOLD + 1)["supernode"] is False


def test_minimum_time_as_a_supernode_and_after_a_demotion() -> None:
    p = reachable()
    at = promoted(p)
    events = feed(p, BUSY_CPU, at + STEP, at + 2000)
    demoted = [e for e in events if e.new is Role.CLIENT]
    assert demoted[0].at - WALL == at + 900  # min_dwell after promotion, not STEP + hold
    back = feed(p, GOOD, at + 2000 + STEP, at + 5000)
    promoted_again = [e for e in back if e.new is Role.SUPERNODE]
    assert promoted_again[0].at - WALL >= demoted[0].at - WALL + 900


@settings(max_examples=80)
@given(
    st.lists(
        st.tuples(st.floats(1, 400), st.sampled_from([0.2, 0.79, 0.81, 0.95])),
        min_size=1,
        max_size=80,
    ),
    st.sampled_from([Mode.AUTO, Mode.ALWAYS]),
)
def test_role_changes_are_at_least_a_hold_apart(
    steps: list[tuple[float, float]], mode: Mode
) -> None:
    p = reachable(mode)
    now = 0.0
    serving = [(0.0, False)]
    for wait, cpu in steps:
        now += wait
        p.update(Sample(3 * 3600, 5e6, 2e7, cpu), now)
        if p.is_supernode != serving[-1][1]:
            serving.append((now, p.is_supernode))
    for (earlier, _), (later, _) in itertools.pairwise(serving):
        assert later - earlier >= HOLD


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 3600),
            st.builds(
                Sample,
                uptime=st.floats(0, 1e7),
                up_bps=st.floats(0, 1e9),
                down_bps=st.floats(0, 1e9),
                cpu=st.floats(0, 64),
            ),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_never_promotes_whatever_the_inputs(steps: list[tuple[float, Sample, bool]]) -> None:
    p = promotion(Mode.NEVER)
    now = 0.0
    for n, (wait, sample, attest) in enumerate(steps):
        now += wait
        if attest:
            p.add_attestation(three_attestations()[n % 3], min(now, 3600.0))
        p.update(sample, now)
        assert p.role is Role.CLIENT
        assert p.next_event() is None
        assert p.dialbacks_wanted(now) == 0


# -- relaying and status


def test_relay_caps_only_while_serving() -> None:
    p = reachable()
    assert p.relay_budget() == (0, 0.0)
    assert not p.may_relay(0, 0.0)
    at = promoted(p)
    assert p.relay_budget() == (8, 2e6)
    assert p.may_relay(7, 1.9e6, 64_000)
    assert not p.may_relay(8, 0.0)
    assert not p.may_relay(1, 1.95e6, 64_000)
    p.update(Sample(3 * 3600, 1.5e6, 2e7, 0.2, relayed_calls=2, relay_bps=128_000), at + 1)
    assert p.relay_budget() == (8, 0.75e6)  # half the measured upload


def test_relay_caps_are_configurable() -> None:
    p = Promotion(
        Mode.ALWAYS,
        TRUST,
        user_id="alice",
        device_id="desk-1",
        caps=RelayCaps(max_calls=1, max_bps=100_000, uplink_share=1.0),
        wall_offset=WALL,
    )
    for raw in three_attestations():
        p.add_attestation(raw, 0.0)
    promoted(p)
    assert p.relay_budget() == (1, 100_000)


def test_status_is_plain_json_for_ctl() -> None:
    p = reachable()
    at = promoted(p)
    p.update(Sample(3 * 3600, 5e6, 2e7, 0.2, relayed_calls=2, relay_bps=128_000), at + 1)
    status = p.status(at + 1)
    assert json.loads(json.dumps(status)) == status
    assert status["supernode"] is True
    assert status["state"] == "supernode"
    assert status["mode"] == "auto"
    assert status["since"] == WALL + at
    assert status["dialbacks"] == {"verified": 3, "needed": 3, "address": "198.18.1.5:40000"}
    assert status["relay"] == {"calls": 2, "max_calls": 8, "bps": 128_000, "max_bps": 2e6}


def test_bad_measurements_and_limits_are_misuse() -> None:
    p = promotion()
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(PromotionMisuse, match="cpu"):
            p.update(Sample(1.0, 1.0, 1.0, bad), 0.0)
    with pytest.raises(PromotionMisuse):
        Thresholds(dialbacks=0)
    with pytest.raises(PromotionMisuse):
        Thresholds(promote_hold=-1)
    with pytest.raises(PromotionMisuse):
        Thresholds(refresh_before=48 * 3600)
    with pytest.raises(PromotionMisuse, match="'never', 'auto', 'always'"):
        promotion("sometimes")


# -- the client's side of the exchange


def test_probe_for_no_test_is_stray() -> None:
    sn = supernodes(1)[0]
    dialer = DialbackClient(PORT)
    probe = encode(MsgType.DIALBACK_PROBE, {"nonce": bytes(16), "supernode_key_id": bytes(8)})
    assert dialer.receive_probe(probe, 0.0) is None
    peer = TRUST.verify(sn.ident.certificate, WALL)
    dialer.request(1, peer, sn.address, 0.0)
    assert dialer.receive_probe(probe, 0.0) is None  # another supernode's key id
    assert dialer.counts["stray-probe"] == 2


def test_only_the_first_probe_of_a_test_is_confirmed() -> None:
    sn = supernodes(1)[0]
    dialer = DialbackClient(PORT)
    request = dialer.request(1, TRUST.verify(sn.ident.certificate, WALL), sn.address, 0.0)
    who = Requester(1, "alice", "desk-1", (CLIENT_IP, 1))
    sn.service.receive(who, message(MsgType.DIALBACK_REQUEST, request), 0.0)
    probe = answer(sn)
    assert dialer.receive_probe(probe.datagram, 0.1) is not None
    assert dialer.receive_probe(probe.datagram, 0.2) is None


def test_results_are_taken_only_from_the_session_asked() -> None:
    sn = supernodes(1)[0]
    dialer = DialbackClient(PORT)
    dialer.request(1, TRUST.verify(sn.ident.certificate, WALL), sn.address, 0.0)
    refused = {
        "request_id": 1,
        "code": ErrorCode.RATE_LIMITED,
        "reachable": False,
        "observed": None,
        "attestation": b"",
    }
    assert dialer.receive_result(2, message(MsgType.DIALBACK_RESULT, refused).body, 0.1) is None
    assert dialer.counts["stray-result"] == 1
    assert dialer.receive_result(1, message(MsgType.DIALBACK_RESULT, refused).body, 0.1) is None
    assert dialer.counts["rate-limited"] == 1
    # An attestation by another supernode than the session's peer is not taken.
    dialer.request(1, TRUST.verify(sn.ident.certificate, WALL), sn.address, 1.0)
    foreign = three_attestations()[0]
    reached = {**refused, "request_id": 2, "code": ErrorCode.OK, "reachable": True}
    body = {**reached, "observed": (CLIENT_IP, PORT), "attestation": foreign}
    assert dialer.receive_result(1, message(MsgType.DIALBACK_RESULT, body).body, 1.1) is None
    assert dialer.counts["mismatch"] == 1


def test_unanswered_tests_are_forgotten() -> None:
    sn = supernodes(1)[0]
    dialer = DialbackClient(PORT, timeout=15.0)
    dialer.request(1, TRUST.verify(sn.ident.certificate, WALL), sn.address, 0.0)
    assert list(dialer.pending_with()) == [sn.address]
    with pytest.raises(PromotionMisuse, match="running already"):
        dialer.request(1, TRUST.verify(sn.ident.certificate, WALL), sn.address, 1.0)
    assert dialer.get_timer() == 15.0
    dialer.handle_timer(15.0)
    assert dialer.counts["timeout"] == 1
    assert dialer.get_timer() is None


def test_dialback_client_misuse() -> None:
    with pytest.raises(PromotionMisuse, match="port"):
        DialbackClient(0)
    dialer = DialbackClient(PORT)
    ping = encode(MsgType.DHT_PING, {"request_id": 1})
    with pytest.raises(PromotionMisuse, match="not a probe"):
        dialer.receive_probe(ping, 0.0)

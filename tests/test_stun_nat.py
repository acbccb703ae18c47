"""The connectivity self-test against the RFC 5780 server core, in memory, through a
small NAT model for every mapping and filtering behaviour; UDP blocked; no NAT."""

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from edge.sansio import Address
from edge.stun.attributes import AttrType, ChangeFlags
from edge.stun.codec import Class, Message, Method, build, parse
from edge.stun.discovery import DiscoveryAddresses, DiscoveryServer
from edge.stun.errors import NotStun
from edge.stun.events import FilteringBehaviour, MappingBehaviour, NatReport
from edge.stun.nat import FILTERING, MAPPING, NEXT, ConnectivityTest, Reply, Step
from edge.stun.server import BindingServer

EI = "endpoint-independent"
AD = "address-dependent"
APD = "address-and-port-dependent"

PRIMARY: Address = ("192.0.2.1", 3478)
ALTERNATE: Address = ("192.0.2.2", 3479)
ADDRESSES = DiscoveryAddresses(PRIMARY, ALTERNATE)
LOCAL: Address = ("10.0.0.5", 5000)
PUBLIC_IP = "203.0.113.9"


@dataclass
class Nat:
    """A NAT as RFC 4787 describes one: the mapping behaviour decides which
    destinations share a public port, the filtering behaviour which sources may
    send back to it (only ones the mapping has sent to, by IP or IP and port)."""

    mapping: str
    filtering: str
    public_ip: str = PUBLIC_IP
    translate: bool = True
    """False: a firewall that filters but keeps the address as it is."""
    _ports: dict[tuple[object, ...], int] = field(default_factory=dict)
    _sent: dict[Address, set[Address]] = field(default_factory=dict)

    def outbound(self, source: Address, destination: Address) -> Address:
        public = self._map(source, destination)
        self._sent.setdefault(public, set()).add(destination)
        return public

    def inbound(self, source: Address, public: Address) -> bool:
        """Whether a datagram from ``source`` to ``public`` gets through."""
        sent = self._sent.get(public, set())
        if self.filtering == EI:
            return bool(sent)
        if self.filtering == AD:
            return source[0] in {address[0] for address in sent}
        return source in sent

    def _map(self, source: Address, destination: Address) -> Address:
        if not self.translate:
            return source
        key: tuple[object, ...] = (source,)
        if self.mapping in (AD, APD):
            key += (destination[0],)
        if self.mapping == APD:
            key += (destination[1],)
        port = self._ports.setdefault(key, 40000 + len(self._ports))
        return self.public_ip, port


@dataclass
class Network:
    """Carries datagrams between the test's one socket and the server's four."""

    server: DiscoveryServer | BindingServer
    nat: Nat | None = None
    blocked: Callable[[Address], bool] = lambda destination: False
    """Outbound datagrams to these destinations are lost."""
    rewrite_origin: bool = False
    """Deliver every answer as if it came from the primary (a server ignoring changes)."""
    destinations: list[Address] = field(default_factory=list)

    def run(self, test: ConnectivityTest) -> tuple[NatReport, float]:
        """Run to the report; also the time it took."""
        now = 0.0
        while (report := test.next_event()) is None:
            if not self.deliver(test, now):
                deadline = test.get_timer()
                assert deadline is not None
                now = deadline
                test.handle_timer(now)
        return report, now

    def deliver(self, test: ConnectivityTest, now: float) -> bool:
        sent = test.datagrams_to_send(now)
        for data, destination in sent:
            self.destinations.append(destination)
            if destination in ADDRESSES.sockets and not self.blocked(destination):
                source = LOCAL if self.nat is None else self.nat.outbound(LOCAL, destination)
                self.serve(data, destination, source, now)
        for origin, data, to in self.answers():
            if self._arrives(origin, to):
                test.receive_datagram(data, PRIMARY if self.rewrite_origin else origin, now)
        return bool(sent)

    def serve(self, data: bytes, local: Address, source: Address, now: float) -> None:
        if isinstance(self.server, DiscoveryServer):
            self.server.receive_datagram(data, local, source, now)
        elif local == PRIMARY:
            self.server.receive_datagram(data, source, now)

    def answers(self) -> list[tuple[Address, bytes, Address]]:
        if isinstance(self.server, DiscoveryServer):
            return self.server.datagrams_to_send()
        return [(PRIMARY, data, to) for data, to in self.server.datagrams_to_send(0.0)]

    def _arrives(self, origin: Address, to: Address) -> bool:
        if self.nat is None:
            return to == LOCAL
        return self.nat.inbound(origin, to)


def self_test(local: Address = LOCAL) -> ConnectivityTest:
    return ConnectivityTest(PRIMARY, local, 0.0, software="edge test")


# -- every NAT


CASES = [
    (EI, EI, "full-cone"),
    (EI, AD, "restricted"),
    (EI, APD, "port-restricted"),
    (AD, EI, "symmetric"),
    (AD, AD, "symmetric"),
    (AD, APD, "symmetric"),
    (APD, EI, "symmetric"),
    (APD, AD, "symmetric"),
    (APD, APD, "symmetric"),
]


@pytest.mark.parametrize(("mapping", "filtering", "word"), CASES)
def test_each_nat_is_classified(mapping: str, filtering: str, word: str) -> None:
    network = Network(DiscoveryServer(ADDRESSES), Nat(mapping, filtering))
    report, _ = network.run(self_test())
    assert report.mapping is MappingBehaviour(mapping)
    assert report.filtering is FilteringBehaviour(filtering)
    assert report.classification == word
    assert report.reflexive == (PUBLIC_IP, 40000)
    assert report.nat_present is True
    assert report.udp_blocked is False
    assert report.other_address == ALTERNATE
    assert report.server == PRIMARY
    assert report.note == ""


def test_the_tests_go_where_rfc_5780_sends_them() -> None:
    network = Network(DiscoveryServer(ADDRESSES), Nat(APD, APD))
    _, took = network.run(self_test())
    # Test I and both filtering tests to the primary (three requests for each silent
    # filtering test), then mapping tests II and III to A2:P1 and A2:P2.
    assert network.destinations == [PRIMARY] * 7 + [("192.0.2.2", 3478), ALTERNATE]
    # Each silent filtering test gives up after the short schedule: 3.5 s.
    assert took == 7.0


def test_no_nat_is_open_and_skips_the_mapping_tests() -> None:
    network = Network(DiscoveryServer(ADDRESSES))
    report, took = network.run(self_test())
    assert report.classification == "open"
    assert report.nat_present is False
    assert report.reflexive == LOCAL
    assert report.mapping is MappingBehaviour.ENDPOINT_INDEPENDENT
    assert report.filtering is FilteringBehaviour.ENDPOINT_INDEPENDENT
    assert network.destinations == [PRIMARY, PRIMARY]
    assert took == 0.0


def test_no_nat_behind_a_filtering_firewall() -> None:
    network = Network(DiscoveryServer(ADDRESSES), Nat(EI, APD, translate=False))
    report, _ = network.run(self_test())
    assert report.nat_present is False
    assert report.filtering is FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT
    assert report.classification == "port-restricted"


def test_udp_blocked_after_the_full_rfc_schedule() -> None:
    network = Network(DiscoveryServer(ADDRESSES), blocked=lambda destination: True)
    report, took = network.run(self_test())
    assert report.udp_blocked is True
    assert report.classification == "udp-blocked"
    assert report.reflexive is None
    assert report.nat_present is None
    assert report.mapping is MappingBehaviour.UNKNOWN
    assert report.filtering is FilteringBehaviour.UNKNOWN
    assert took == 39.5
    assert network.destinations == [PRIMARY] * 7


# -- servers that cannot tell


def test_a_server_without_other_address_leaves_the_behaviours_unknown() -> None:
    network = Network(BindingServer(), Nat(EI, EI))
    report, _ = network.run(self_test())
    assert report.reflexive == (PUBLIC_IP, 40000)
    assert report.nat_present is True
    assert report.other_address is None
    assert report.classification == "unknown"
    assert "no OTHER-ADDRESS" in report.note
    assert network.destinations == [PRIMARY]


def test_a_server_whose_other_address_changes_only_the_port_is_not_used() -> None:
    server = BindingServer(other_address=(PRIMARY[0], 3479), response_origin=PRIMARY)
    report, _ = Network(server).run(self_test())
    assert report.other_address is None
    assert report.classification == "unknown"
    assert "does not change both" in report.note


def test_a_server_refusing_changes_leaves_the_filtering_unknown() -> None:
    # One socket that advertises an alternate but answers CHANGE-REQUEST with 420.
    server = BindingServer(other_address=ALTERNATE, response_origin=PRIMARY)
    report, _ = Network(server, Nat(EI, EI)).run(self_test())
    assert report.filtering is FilteringBehaviour.UNKNOWN
    assert "filtering test II: 420" in report.note
    # Nothing answers at A2:P1: the mapping is not known either.
    assert report.mapping is MappingBehaviour.UNKNOWN
    assert report.classification == "unknown"


def test_an_answer_from_the_wrong_address_does_not_count() -> None:
    network = Network(DiscoveryServer(ADDRESSES), rewrite_origin=True)
    report, _ = network.run(self_test())
    assert report.filtering is FilteringBehaviour.UNKNOWN
    assert f"answered from {PRIMARY}, not {ALTERNATE}" in report.note


def test_an_unreachable_alternate_leaves_the_mapping_unknown() -> None:
    network = Network(
        DiscoveryServer(ADDRESSES),
        Nat(EI, EI),
        blocked=lambda destination: destination[0] == ALTERNATE[0],
    )
    report, _ = network.run(self_test())
    assert report.filtering is FilteringBehaviour.ENDPOINT_INDEPENDENT
    assert report.mapping is MappingBehaviour.UNKNOWN
    assert report.note == "no answer to mapping test II"


# -- the core's edges


def test_bytes_that_are_not_stun_raise_and_late_answers_are_counted() -> None:
    test = self_test()
    with pytest.raises(NotStun):
        test.receive_datagram(b"\x00\x01\x00\x00" + bytes(16), PRIMARY, 0.0)
    [(request, _)] = test.datagrams_to_send(0.0)
    stranger = Message(Method.BINDING, Class.SUCCESS, bytes(12))
    stranger.attributes.append((AttrType.XOR_MAPPED_ADDRESS, LOCAL))
    test.receive_datagram(build(stranger), PRIMARY, 0.0)
    network = Network(DiscoveryServer(ADDRESSES))
    network.serve(request, PRIMARY, LOCAL, 0.0)
    [(_, answer, _)] = network.answers()
    test.receive_datagram(answer, PRIMARY, 0.0)
    assert test.step is Step.FILTERING_II
    # Test I's answer again, once the test has moved on, then after the end.
    test.receive_datagram(answer, PRIMARY, 0.0)
    report, _ = network.run(test)
    test.receive_datagram(answer, PRIMARY, 1.0)
    assert report.classification == "open"
    assert test.is_done and test.get_timer() is None
    assert test.ignored == {"other transaction": 2, "late": 1}


def test_the_filtering_tests_carry_change_request() -> None:
    test = self_test()
    network = Network(DiscoveryServer(ADDRESSES), Nat(EI, APD))
    network.deliver(test, 0.0)
    [(data, destination)] = test.datagrams_to_send(0.0)
    assert destination == PRIMARY
    assert parse(data).get(AttrType.CHANGE_REQUEST) == (
        ChangeFlags.CHANGE_IP | ChangeFlags.CHANGE_PORT
    )


def test_the_tables_cover_every_step_and_reply() -> None:
    running = [step for step in Step if step is not Step.DONE]
    assert set(NEXT) == {(step, reply) for step in running for reply in Reply}
    assert {step for step, _ in FILTERING} == {Step.FILTERING_II, Step.FILTERING_III}
    assert {step for step, _ in MAPPING} == {Step.MAPPING_II, Step.MAPPING_III}

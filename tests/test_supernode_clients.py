"""Devices attaching to supernodes in memory: admission with redirects, load gossip,
host cache pages, handoff at shutdown, and devices that fall silent."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from edge.crypto.keys import IssuerKey
from edge.overlay.ids import node_id_for
from edge.overlay.lookup import LookupLimits
from edge.overlay.messages import Contact
from edge.overlay.node import Node
from edge.sansio import DatagramCore
from edge.session.datagram import DatagramEndpoint
from edge.session.events import MessageReceived, SessionEstablished
from edge.supernode.admission import Admission, AdmissionLimits
from edge.supernode.attach import IDLE_DETACH
from edge.supernode.clients import GOSSIP_INTERVAL, ClientService
from edge.supernode.overlay import OverlayService
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import HOST_ENTRY_LOGIN_SERVER, HOSTCACHE_PAGE
from tests.netlab import NetLab
from tests.sessions import WALL, endpoint, identity
from tests.test_supernode_overlay import validate

LOGIN = ("198.18.9.1", 443)


@dataclass
class Lab(NetLab[DatagramCore]):
    issuer: IssuerKey = field(default_factory=IssuerKey.generate)
    supernodes: list[ClientService] = field(default_factory=list)
    devices: dict[str, DatagramEndpoint] = field(default_factory=dict)
    sessions: dict[str, int] = field(default_factory=dict)

    def supernode(self, capacity: int = 4) -> ClientService:
        index = len(self.supernodes) + 1
        address = (f"198.18.0.{index}", 4000)
        ident = identity(self.issuer, f"supernode-{index}")
        node = Node(
            Contact(node_id_for(ident.keys.dh_public), address),
            validate,
            WALL + self.now,
            limits=LookupLimits(k=4),
        )
        overlay = OverlayService(endpoint(ident, [self.issuer], seed=index), node, wall_offset=WALL)
        limits = AdmissionLimits(capacity=capacity, soft=0.5, load_max_age=60, live_max_age=300)
        admission = Admission(address, limits, login_servers=[LOGIN])
        service = ClientService(overlay, overlay.endpoint.trust, admission=admission,
                                rng=random.Random(index))  # fmt: skip
        self.cores[address] = service
        self.supernodes.append(service)
        first = self.supernodes[0].overlay.node.contact.address
        service.join([] if service is self.supernodes[0] else [first], self.now)
        return service

    def device(self, name: str, supernode: ClientService) -> DatagramEndpoint:
        index = len(self.devices) + 1
        address = (f"10.0.0.{index}", 5000)
        ident = identity(self.issuer, name, device_id="d1")
        device = endpoint(ident, [self.issuer], seed=100 + index)
        self.cores[address] = device
        self.devices[name] = device
        self.sessions[name] = device.connect(supernode.overlay.node.contact.address, self.now)
        self.run(self.now + 1)
        assert any(isinstance(e, SessionEstablished) for e in drain(device))
        return device

    def ask(self, name: str, msg_type: MsgType, body: dict[str, Any]) -> Any:
        self.devices[name].send(self.sessions[name], msg_type, body)
        self.run(self.now + 1)
        return received(self.devices[name])


def drain(core: DatagramCore) -> list[object]:
    out = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out


def received(core: DatagramCore) -> list[Any]:
    return [e.message for e in drain(core) if isinstance(e, MessageReceived)]


def network(supernodes: int, capacity: int = 4) -> Lab:
    lab = Lab()
    for _ in range(supernodes):
        lab.supernode(capacity)
        lab.run(lab.now + 5)
    # Two rounds of load gossip: every supernode has heard how full some others are.
    lab.run(lab.now + 2 * GOSSIP_INTERVAL + 1)
    return lab


def test_devices_are_admitted_then_redirected_to_supernodes_with_room() -> None:
    lab = network(4, capacity=4)
    first = lab.supernodes[0]
    answers = []
    for n in range(3):
        lab.device(f"user{n}", first)
        (answer,) = lab.ask(f"user{n}", MsgType.ATTACH, {"request_id": n, "redirects": 0})
        answers.append(answer)
    assert [a.body.code for a in answers] == [ErrorCode.OK, ErrorCode.OK, ErrorCode.BUSY]
    assert answers[1].body.load == 50
    busy = answers[2].body
    alternatives = [tuple(e.address) for e in busy.alternatives]
    others = {s.overlay.node.contact.address for s in lab.supernodes[1:]}
    assert alternatives and set(alternatives) <= others
    assert first.attached.sessions_of("user0") and not first.attached.sessions_of("user2")
    # A device that has already been sent round is taken below the hard limit.
    (again,) = lab.ask("user2", MsgType.ATTACH, {"request_id": 9, "redirects": 3})
    assert again.body.code is ErrorCode.OK


def test_a_full_supernode_refuses_even_after_redirects() -> None:
    lab = network(2, capacity=1)
    first = lab.supernodes[0]
    lab.device("a", first)
    lab.device("b", first)
    assert lab.ask("a", MsgType.ATTACH, {"request_id": 1, "redirects": 0})[0].body.code is (
        ErrorCode.OK
    )
    (refused,) = lab.ask("b", MsgType.ATTACH, {"request_id": 2, "redirects": 5})
    assert refused.body.code is ErrorCode.BUSY


def test_load_gossip_reaches_the_peers_through_pongs() -> None:
    lab = network(3, capacity=4)
    first = lab.supernodes[0]
    for n in range(2):
        lab.device(f"u{n}", first)
        lab.ask(f"u{n}", MsgType.ATTACH, {"request_id": n, "redirects": 0})
    lab.run(lab.now + 2 * GOSSIP_INTERVAL + 1)
    address = first.overlay.node.contact.address
    loads = [
        peer.load
        for other in lab.supernodes[1:]
        for peer in other.admission.peers()
        if peer.address == address
    ]
    assert loads and all(load == 0.5 for load in loads)


def test_the_host_cache_lists_live_supernodes_then_the_login_server_in_pages() -> None:
    lab = network(5)
    asker = lab.supernodes[2]
    lab.device("alice", asker)
    (page,) = lab.ask("alice", MsgType.HOSTCACHE_REQUEST, {"request_id": 4, "offset": 0})
    body = page.body
    assert body.request_id == 4 and body.offset == 0
    entries = [(tuple(e.address), e.flags) for e in body.entries]
    assert entries[-1] == (LOGIN, HOST_ENTRY_LOGIN_SERVER)
    supernodes = {address for address, flags in entries if not flags}
    own = asker.overlay.node.contact.address
    assert own not in supernodes and len(supernodes) >= 2
    assert body.total == len(entries) <= HOSTCACHE_PAGE
    (beyond,) = lab.ask("alice", MsgType.HOSTCACHE_REQUEST, {"request_id": 5, "offset": 200})
    assert list(beyond.body.entries) == []


def test_at_shutdown_attached_devices_are_handed_to_other_supernodes() -> None:
    lab = network(3)
    leaving = lab.supernodes[0]
    for name in ("alice", "bob"):
        lab.device(name, leaving)
        lab.ask(name, MsgType.ATTACH, {"request_id": 1, "redirects": 0})
    assert leaving.detach_all(ErrorCode.UNAVAILABLE, lab.now) == 2
    lab.run(lab.now + 1)
    for name in ("alice", "bob"):
        (detach,) = received(lab.devices[name])
        assert detach.type is MsgType.DETACH and detach.body.code is ErrorCode.UNAVAILABLE
        assert {tuple(e.address) for e in detach.body.alternatives} <= {
            s.overlay.node.contact.address for s in lab.supernodes[1:]
        }
    assert leaving.admission.clients == 0


def test_devices_that_fall_silent_are_detached() -> None:
    lab = network(2)
    first = lab.supernodes[0]
    lab.device("quiet", first)
    lab.device("chatty", first)
    for name in ("quiet", "chatty"):
        lab.ask(name, MsgType.ATTACH, {"request_id": 1, "redirects": 0})
    end = lab.now + IDLE_DETACH + 2 * GOSSIP_INTERVAL
    while lab.now < end:
        lab.ask("chatty", MsgType.HOSTCACHE_REQUEST, {"request_id": 2, "offset": 0})
        lab.run(lab.now + 60)
    assert not first.attached.sessions_of("quiet")
    assert first.attached.sessions_of("chatty")
    assert first.counts["detached-idle"] == 1

"""Supernodes meeting in the DHT over real Noise sessions, in memory: join, publish, find,
route around a supernode that stops answering, refuse impostors and stray replies."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge.crypto.keys import IssuerKey
from edge.overlay.ids import key_for_user, node_id_for
from edge.overlay.lookup import LookupLimits
from edge.overlay.messages import Contact
from edge.overlay.node import Node
from edge.overlay.store import Verdict
from edge.sansio import Address
from edge.supernode.overlay import REFRESH_INTERVAL, Found, Joined, OverlayService, Published
from edge.wire.codes import ErrorCode, MsgType
from tests.netlab import NetLab
from tests.sessions import WALL, endpoint, identity

LIFETIME = 86_400.0
LIMITS = LookupLimits(k=4, alpha=3, timeout=1.0)


def record_for(user: str, seq: int = 1) -> bytes:
    return key_for_user(user).to_bytes(32, "big") + seq.to_bytes(8, "big")


def validate(key: bytes, record: bytes) -> Verdict | None:
    """Accept a record that names its own key (signatures are another module's tests)."""
    if len(record) != 40 or record[:32] != key:
        return None
    return Verdict(slot=b"", seq=int.from_bytes(record[32:], "big"), expires=WALL + LIFETIME)


@dataclass
class Lab(NetLab[OverlayService]):
    """Supernodes on simulated addresses, each joining as the test says."""

    issuer: IssuerKey = field(default_factory=IssuerKey.generate)

    @property
    def nodes(self) -> dict[Address, OverlayService]:
        return self.cores

    def add(self) -> OverlayService:
        index = len(self.cores) + 1
        address = (f"198.18.0.{index}", 4000)
        ident = identity(self.issuer, f"supernode-{index}")
        node = Node(
            Contact(node_id_for(ident.keys.dh_public), address),
            validate,
            WALL + self.now,
            limits=LIMITS,
        )
        service = OverlayService(endpoint(ident, [self.issuer], seed=index), node, wall_offset=WALL)
        self.cores[address] = service
        return service


def events_of(service: OverlayService) -> list[object]:
    out = []
    while (event := service.next_event()) is not None:
        out.append(event)
    return out


def overlay_events(service: OverlayService) -> list[object]:
    return [e for e in events_of(service) if isinstance(e, Found | Published | Joined)]


def built(count: int) -> Lab:
    """``count`` supernodes, each joining through the first one."""
    lab = Lab()
    first = lab.add()
    first.join([], lab.now)
    for _ in range(count - 1):
        node = lab.add()
        node.join([first.node.contact.address], lab.now)
        lab.run(lab.now + 5)
    lab.run(lab.now + 5)
    return lab


def test_joining_through_one_supernode_fills_the_routing_tables() -> None:
    lab = built(12)
    for service in lab.nodes.values():
        joined = [e for e in overlay_events(service) if isinstance(e, Joined)]
        assert len(joined) == 1
        assert len(service.node.table) >= LIMITS.k


def test_a_record_published_anywhere_is_found_from_everywhere() -> None:
    lab = built(16)
    services = list(lab.nodes.values())
    for service in services:
        events_of(service)
    key = key_for_user("alice")
    tag = services[3].publish(key, record_for("alice"), lab.now)
    lab.run(lab.now + 5)
    published = overlay_events(services[3])
    assert published == [Published(tag, key, LIMITS.k, LIMITS.k)]
    holders = [s for s in services if s.node.store.get(key, WALL + lab.now)]
    assert len(holders) == LIMITS.k
    closest = sorted(services, key=lambda s: s.node.contact.node_id ^ key)[: LIMITS.k]
    assert set(map(id, holders)) == set(map(id, closest))
    for service in services:
        tag = service.find(key, lab.now)
        lab.run(lab.now + 5)
        (found,) = overlay_events(service)
        assert isinstance(found, Found) and found.tag == tag
        assert found.records == (record_for("alice"),)


def test_a_lookup_routes_around_supernodes_that_stopped_answering() -> None:
    lab = built(16)
    services = list(lab.nodes.values())
    key = key_for_user("bob")
    services[0].publish(key, record_for("bob"), lab.now)
    lab.run(lab.now + 5)
    holders = [s for s in services if s.node.store.get(key, WALL + lab.now)]
    # Half the holders vanish without a word, and so does one more supernode.
    for service in [*holders[: len(holders) // 2], services[5]]:
        lab.silent.add(service.node.contact.address)
    asker = next(
        s for s in services if s.node.contact.address not in lab.silent and s not in holders
    )
    events_of(asker)
    asker.find(key, lab.now)
    lab.run(lab.now + 10)
    (found,) = overlay_events(asker)
    assert isinstance(found, Found)
    assert found.records == (record_for("bob"),)


def test_an_unknown_user_is_not_found() -> None:
    lab = built(8)
    service = list(lab.nodes.values())[2]
    events_of(service)
    service.find(key_for_user("nobody"), lab.now)
    lab.run(lab.now + 10)
    (found,) = overlay_events(service)
    assert isinstance(found, Found) and found.records == ()
    assert len(found.contacts) == LIMITS.k


def test_records_that_do_not_validate_are_not_stored() -> None:
    lab = built(6)
    services = list(lab.nodes.values())
    key = key_for_user("carol")
    for service in services:
        events_of(service)
    tag = services[1].publish(key, record_for("mallory"), lab.now)
    lab.run(lab.now + 5)
    assert overlay_events(services[1]) == [Published(tag, key, 0, LIMITS.k, ErrorCode.FORBIDDEN)]
    assert not any(s.node.store.get(key, WALL + lab.now) for s in services)


def test_republishing_keeps_a_record_after_all_its_first_holders_left() -> None:
    lab = built(12)
    services = list(lab.nodes.values())
    key = key_for_user("dave")
    services[0].publish(key, record_for("dave"), lab.now)
    lab.run(lab.now + 5)
    first = [s for s in services if s.node.store.get(key, WALL + lab.now)]
    for holder in first[:-1]:
        lab.silent.add(holder.node.contact.address)
    # The remaining holder republishes to the k closest still answering. It skips one
    # round, since a record stored here within the hour is left to whoever stored it
    # (Kademlia section 2.5), so it takes over within two hours.
    lab.run(lab.now + 7300)
    alive = [s for s in services if s.node.contact.address not in lab.silent]
    holders = [s for s in alive if s.node.store.get(key, WALL + lab.now)]
    assert len(holders) >= 2
    asker = next(s for s in alive if s not in holders)
    events_of(asker)
    asker.find(key, lab.now)
    lab.run(lab.now + 10)
    found = [e for e in overlay_events(asker) if isinstance(e, Found)]
    assert found and found[-1].records == (record_for("dave"),)


def test_replies_must_come_from_the_node_that_was_asked() -> None:
    lab = built(4)
    a, _, c, _ = lab.nodes.values()
    a.find(key_for_user("erin"), lab.now)
    # c answers, before anyone else can, a request that a sent to another node.
    request_id = next(
        rid for rid, o in a._outstanding.items() if o.contact.node_id != c.node.contact.node_id
    )
    to_a = next(i for i, peer in c._contact_of.items() if peer.node_id == a.node.contact.node_id)
    c.endpoint.send(to_a, MsgType.DHT_NODES, {"request_id": request_id, "contacts": []})
    lab.run(lab.now + 1.5 * lab.latency)
    assert a.counts["reply-wrong-node"] == 1
    assert request_id in a._outstanding
    lab.run(lab.now + 5)
    assert request_id not in a._outstanding
    assert [type(e) for e in overlay_events(a)][-1] is Found


def test_a_bootstrap_that_never_answers_still_ends_the_join() -> None:
    lab = Lab()
    lone = lab.add()
    lone.join([("198.18.9.9", 4000)], lab.now)
    lab.run(lab.now + 60)
    assert overlay_events(lone) == [Joined(0)]


def test_every_bucket_is_refreshed_each_hour_around_a_silent_node() -> None:
    lab = built(12)
    services = list(lab.nodes.values())
    gone = services[4]
    lab.silent.add(gone.node.contact.address)
    lab.run(lab.now + REFRESH_INTERVAL + 60)
    alive = [s for s in services if s is not gone]
    for service in alive:
        assert service.counts["refresh"] >= 1
        # The refresh lookups ended, routing around the node that stopped answering.
        assert not service._operations

"""Watching the network: rtnetlink parsing on captured and constructed bytes, the
settling state machine, and the real thing in a network namespace made for the test."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import selectors
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from edge.client.netwatch import (
    ATTR,
    HEADER,
    IFF_LOWER_UP,
    IFF_UP,
    IFINFO,
    MAX_ADDRESSES,
    MAX_SETTLE,
    NLMSG_DONE,
    NLMSG_OVERRUN,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWLINK,
    SETTLE,
    AddressChanged,
    DumpDone,
    Every,
    LinkChanged,
    NetWatch,
    NetWatcher,
    NetworkSettled,
    Overrun,
    RouteChanged,
    dump_request,
    parse,
    watch_network,
)
from edge.errors import RemoteError
from tests.natlab import ip_binary

ROOT = Path(__file__).resolve().parents[1]

# Captured from a kernel (6.x) while `ip addr add 10.9.0.2/24 dev veth0` and `ip route
# add default via 10.9.0.1` ran in a fresh namespace; veth0 had index 3.
CAPTURED_NEWADDR = bytes.fromhex(
    "50000000140000004f4c066bb43100000218800003000000080001000a090002080002000a090002"
    "0a0003007665746830000000080008008000000014000600ffffffffffffffff64291a0064291a00"
)
CAPTURED_LOCAL_ROUTE = bytes.fromhex(
    "3c00000018000006000000000000000002200000ff02fe020000000008000f00ff000000080001000a09"
    "0002080007000a0900020800040003000000"
)
CAPTURED_DEFAULT_ROUTE = bytes.fromhex(
    "34000000180000064f4c066bb731000002000000fe0300010000000008000f00fe000000080005000a09"
    "00010800040003000000"
)
OWN_PORT = 4242


def link_message(
    index: int, name: str, up: bool, *, kind: int = RTM_NEWLINK, port: int = 0
) -> bytes:
    """An RTM_NEWLINK (or DELLINK) as the kernel builds it: ifinfomsg, then IFLA_IFNAME."""
    flags = IFF_UP | IFF_LOWER_UP if up else 0
    raw_name = name.encode() + b"\0"
    attribute = ATTR.pack(ATTR.size + len(raw_name), 3) + raw_name
    attribute += bytes(-len(attribute) % 4)
    body = IFINFO.pack(0, 1, index, flags, 0xFFFFFFFF) + attribute
    return HEADER.pack(HEADER.size + len(body), kind, 0, 0, port) + body


def done(sequence: int, port: int = OWN_PORT) -> bytes:
    return HEADER.pack(HEADER.size + 4, NLMSG_DONE, 2, sequence, port) + bytes(4)


def synced_watch() -> NetWatch:
    """A core whose dumps found veth0 (index 3, up, 10.9.0.2) and lo."""
    watch = NetWatch(own_port=OWN_PORT)
    assert len(watch.datagrams_to_send()) == 1
    watch.receive(link_message(1, "lo", True, port=OWN_PORT), 0.0)
    watch.receive(link_message(3, "veth0", True, port=OWN_PORT) + done(1), 0.0)
    assert len(watch.datagrams_to_send()) == 1
    answer = bytearray(CAPTURED_NEWADDR)
    struct.pack_into("=I", answer, 12, OWN_PORT)
    watch.receive(bytes(answer) + done(2), 0.0)
    assert watch.synced and watch.datagrams_to_send() == []
    return watch


# -- parsing


def test_a_captured_address_notice() -> None:
    [(notice, answer)] = parse(CAPTURED_NEWADDR)
    assert notice == AddressChanged(3, "10.9.0.2", 24, added=True)
    assert not answer


def test_captured_route_notices() -> None:
    [(local, _)] = parse(CAPTURED_LOCAL_ROUTE)
    [(default, _)] = parse(CAPTURED_DEFAULT_ROUTE)
    assert local == RouteChanged(3, "10.9.0.2", 32, added=True, table=255)
    assert default == RouteChanged(3, "0.0.0.0", 0, added=True, table=254)


def test_several_messages_in_one_datagram() -> None:
    data = link_message(2, "eth0", False) + CAPTURED_NEWADDR + done(7, port=0)
    notices = [notice for notice, _ in parse(data)]
    assert notices == [
        LinkChanged(2, "eth0", up=False),
        AddressChanged(3, "10.9.0.2", 24, added=True),
        DumpDone(7),
    ]


def test_a_removed_link_is_never_up() -> None:
    [(notice, _)] = parse(link_message(5, "wlan0", True, kind=RTM_DELLINK))
    assert notice == LinkChanged(5, "wlan0", up=False, removed=True)


def test_up_needs_a_carrier_too() -> None:
    data = bytearray(link_message(2, "eth0", True))
    struct.pack_into("=I", data, HEADER.size + 8, IFF_UP)  # up, but no carrier
    [(notice, _)] = parse(bytes(data))
    assert isinstance(notice, LinkChanged) and not notice.up


def test_answers_to_our_requests_are_told_apart() -> None:
    [(_, answer)] = parse(link_message(2, "eth0", True, port=OWN_PORT), own_port=OWN_PORT)
    [(_, notice)] = parse(link_message(2, "eth0", True, port=99), own_port=OWN_PORT)
    assert answer and not notice


def test_an_overrun_and_unknown_types() -> None:
    overrun = HEADER.pack(HEADER.size, NLMSG_OVERRUN, 0, 0, 0)
    unknown = HEADER.pack(HEADER.size + 4, 0x77, 0, 0, 0) + bytes(4)
    assert [n for n, _ in parse(overrun + unknown)] == [Overrun()]


def test_ipv6_addresses_are_not_our_business() -> None:
    data = bytearray(CAPTURED_NEWADDR)
    data[HEADER.size] = 10  # AF_INET6
    assert parse(bytes(data)) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (CAPTURED_NEWADDR[:40], "a message of 80 bytes at 0 in 40"),
        (HEADER.pack(8, RTM_NEWLINK, 0, 0, 0) + bytes(8), "a message of 8 bytes"),
        (HEADER.pack(HEADER.size + 4, RTM_NEWLINK, 0, 0, 0) + bytes(4), "a ifinfomsg of 4"),
        (CAPTURED_NEWADDR + b"\x01\x02", "2 stray bytes at the end"),
    ],
)
def test_malformed_datagrams_raise_our_error(data: bytes, message: str) -> None:
    with pytest.raises(RemoteError, match=message):
        parse(data)


def test_a_bad_attribute_raises_our_error() -> None:
    data = bytearray(CAPTURED_NEWADDR)
    struct.pack_into("=H", data, HEADER.size + 8, 200)  # IFA_ADDRESS claims 200 bytes
    with pytest.raises(RemoteError, match="an attribute of 200 bytes"):
        parse(bytes(data))


def test_an_address_of_the_wrong_size_raises_our_error() -> None:
    data = bytearray(CAPTURED_NEWADDR)
    struct.pack_into("=HH", data, HEADER.size + 8, 6, 1)  # 2 bytes of address, padded
    struct.pack_into("=HH", data, HEADER.size + 16, 6, 2)
    with pytest.raises(RemoteError, match="the address of 2 bytes, not 4"):
        parse(bytes(data))


def test_random_bytes_parse_or_raise_our_error() -> None:
    """Whatever the bytes, parse returns or raises RemoteError, nothing else."""
    rng = random.Random(7)
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(2000):
        length = rng.randrange(0, 120)
        data = bytearray(rng.getrandbits(8) for _ in range(length))
        if length >= 4 and rng.random() < 0.7:
            struct.pack_into("=I", data, 0, rng.randrange(16, max(17, length + 1)))
        try:
            parse(bytes(data))
        except RemoteError:
            outcomes["refused"] += 1
        else:
            outcomes["parsed"] += 1
    assert min(outcomes.values()) > 100, outcomes


def test_dump_requests() -> None:
    link = dump_request(RTM_GETLINK, 1)
    length, kind, flags, sequence, port = HEADER.unpack_from(link)
    assert (length, kind, flags, sequence, port) == (len(link), RTM_GETLINK, 0x301, 1, 0)
    assert link[HEADER.size] == 0  # every family
    assert dump_request(RTM_GETADDR, 2)[HEADER.size] == 2  # IPv4


# -- the state machine


def test_the_dumps_go_one_at_a_time_and_change_nothing() -> None:
    watch = synced_watch()
    assert watch.index_of("10.9.0.2") == 3 and watch.index_of("10.9.0.9") is None
    assert watch.links[3].up and watch.get_timer() is None


def test_a_burst_settles_into_one_event() -> None:
    watch = synced_watch()
    watch.receive(link_message(3, "veth0", False), 10.0)
    watch.receive(link_message(3, "veth0", True), 10.2)
    watch.receive(CAPTURED_DEFAULT_ROUTE, 10.3)
    assert watch.get_timer() == pytest.approx(10.3 + SETTLE)
    watch.handle_timer(10.3 + SETTLE - 0.01)
    assert watch.next_event() is None
    watch.handle_timer(10.3 + SETTLE)
    assert watch.next_event() == NetworkSettled(frozenset({3}), frozenset(), 3)
    assert watch.get_timer() is None and watch.next_event() is None


def test_down_then_later_back() -> None:
    watch = synced_watch()
    watch.receive(link_message(3, "veth0", False), 10.0)
    watch.handle_timer(11.0)
    assert watch.next_event() == NetworkSettled(frozenset(), frozenset({3}), 1)
    watch.receive(link_message(3, "veth0", True), 20.0)
    watch.handle_timer(21.0)
    assert watch.next_event() == NetworkSettled(frozenset({3}), frozenset(), 1)
    watch.receive(CAPTURED_DEFAULT_ROUTE, 30.0)
    watch.handle_timer(31.0)
    assert watch.next_event() == NetworkSettled(frozenset(), frozenset(), 1)


def test_a_busy_kernel_is_heard_after_the_longest_settle() -> None:
    watch = synced_watch()
    now = 5.0
    for step in range(100):
        watch.receive(link_message(3, "veth0", step % 2 == 1), now)
        now += SETTLE / 2
        watch.handle_timer(now)
        if watch.next_event() is not None:
            break
    assert now - 5.0 == pytest.approx(MAX_SETTLE, abs=SETTLE)


def test_repeated_notices_that_change_nothing_are_quiet() -> None:
    watch = synced_watch()
    watch.receive(link_message(3, "veth0", True), 1.0)
    watch.receive(CAPTURED_NEWADDR, 1.0)
    assert watch.get_timer() is None
    assert watch.counts["LinkChanged"] == 3 and watch.counts["AddressChanged"] == 2


def test_local_table_routes_are_quiet_and_main_ones_are_not() -> None:
    watch = synced_watch()
    watch.receive(CAPTURED_LOCAL_ROUTE, 1.0)
    assert watch.get_timer() is None
    watch.receive(CAPTURED_DEFAULT_ROUTE, 1.0)
    assert watch.get_timer() is not None


def test_an_overrun_counts_as_a_change() -> None:
    watch = synced_watch()
    watch.receive(HEADER.pack(HEADER.size, NLMSG_OVERRUN, 0, 0, 0), 2.0)
    watch.handle_timer(3.0)
    assert watch.next_event() == NetworkSettled(frozenset(), frozenset(), 1)


def test_a_removed_link_takes_its_addresses() -> None:
    watch = synced_watch()
    watch.receive(link_message(3, "veth0", False, kind=RTM_DELLINK), 1.0)
    assert 3 not in watch.links and watch.index_of("10.9.0.2") is None
    watch.handle_timer(2.0)
    assert watch.next_event() == NetworkSettled(frozenset(), frozenset(), 1)


def test_addresses_per_link_are_capped() -> None:
    watch = synced_watch()
    for n in range(MAX_ADDRESSES + 5):
        data = bytearray(CAPTURED_NEWADDR)
        for offset in (HEADER.size + 12, HEADER.size + 20):
            data[offset + 3] = n + 10
        watch.receive(bytes(data), 1.0)
    assert len(watch.addresses[3]) == MAX_ADDRESSES


def test_without_netlink_a_check_is_due_every_period() -> None:
    every = Every(100.0, period=10.0)
    assert every.get_timer() == 110.0
    every.handle_timer(109.0)
    assert every.next_event() is None
    every.handle_timer(110.5)
    assert every.next_event() == NetworkSettled(frozenset(), frozenset(), 0)
    assert every.next_event() is None and every.get_timer() == 120.5


# -- the real kernel, in a namespace of the test's own


def watch_and_report() -> None:
    """Run in the test's namespace: a NetWatcher, each event printed as a JSON line."""

    async def main() -> None:
        watcher: NetWatcher

        def report(event: NetworkSettled) -> None:
            assert watcher.core is not None
            print(json.dumps(_described(event, watcher.core)), flush=True)

        watcher = watch_network(report)
        assert not watcher.is_fallback
        await watcher.synced.wait()
        assert watcher.core is not None
        print(json.dumps({"ready": watcher.core.index_of("10.9.0.2")}), flush=True)
        await asyncio.Event().wait()  # until the test kills it

    asyncio.run(main())


def _described(event: NetworkSettled, watch: NetWatch) -> dict[str, Any]:
    return {
        "came_back": sorted(event.came_back),
        "down": sorted(event.down),
        "links": {link.name: link.up for link in watch.links.values()},
        "addresses": sorted(a for held in watch.addresses.values() for a in held),
    }


IP = ip_binary()
NEEDS_ROOT = os.geteuid() != 0 or IP is None
TIMEOUT = 10.0


@pytest.fixture
def namespace() -> Iterator[str]:
    assert IP is not None
    name = f"netwatch-{os.getpid()}-{secrets.token_hex(2)}"
    subprocess.run([IP, "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run([IP, "netns", "delete", name], check=False)


def _ip(namespace: str, *args: str) -> None:
    assert IP is not None
    subprocess.run([IP, "-n", namespace, *args], check=True, capture_output=True)


def _next_report(stream: IO[str]) -> dict[str, Any]:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        deadline = time.monotonic() + TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                line = stream.readline()
                assert line, "the watcher ended"
                report: dict[str, Any] = json.loads(line)
                return report
    raise AssertionError("no event from the watcher")


@pytest.mark.skipif(NEEDS_ROOT, reason="needs root and ip(8) for a network namespace")
def test_real_changes_in_a_namespace(namespace: str) -> None:
    assert IP is not None
    _ip(namespace, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    _ip(namespace, "addr", "add", "10.9.0.2/24", "dev", "veth0")
    _ip(namespace, "link", "set", "veth1", "up")
    code = "from tests.test_client_netwatch import watch_and_report; watch_and_report()"
    process = subprocess.Popen(
        [IP, "netns", "exec", namespace, sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        ready = _next_report(process.stdout)
        index = ready["ready"]
        assert isinstance(index, int), "the dump did not find veth0's address"
        _ip(namespace, "link", "set", "veth0", "up")
        up = _next_report(process.stdout)
        assert up["links"]["veth0"] and up["came_back"] == [] and "10.9.0.2" in up["addresses"]
        _ip(namespace, "link", "set", "veth0", "down")
        down = _next_report(process.stdout)
        # Its peer veth1 loses its carrier with it: both are down.
        assert index in down["down"] and not down["links"]["veth0"]
        _ip(namespace, "link", "set", "veth0", "up")
        _ip(namespace, "route", "add", "default", "via", "10.9.0.1")
        back = _next_report(process.stdout)
        assert index in back["came_back"] and back["links"]["veth0"]
        _ip(namespace, "addr", "add", "10.9.0.3/24", "dev", "veth0")
        renumbered = _next_report(process.stdout)
        assert renumbered["came_back"] == [] and "10.9.0.3" in renumbered["addresses"]
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()

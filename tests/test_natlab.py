"""The NAT lab (:mod:`tests.natlab`): the RFC 5780 self-test against a real supernode
through real kernel NAT and firewalls, and the impairment forwarder's delay and loss.

One lab serves the whole module: the supernode runs as ``python -m edge
supernode`` in ``sn1`` (A1 = 198.18.0.11, A2 = 198.18.0.12, ports 3478 and
3479, TCP 80 and 443), a UDP echo in ``sn2``, and each site's host runs the
self-test in a fresh interpreter. The self-test uses the short schedule for
every step (given up at 3.5 s instead of 39.5 s), so a blocked site is
declared in seconds.

What the kernel really does, measured here: nftables ``masquerade`` keeps the
source port and lets in only what matches a conntrack entry, i.e. replies
from the exact address and port the host sent to. Its mapping is
endpoint-independent and its filtering address-and-port-dependent, which the
self-test calls ``port-restricted`` (not ``full-cone``). ``random,fully-random``
draws a port per destination: ``symmetric``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, cast

import pytest
import uvloop

from edge.runtime.adapters import DatagramAdapter
from edge.sansio import Address
from edge.stun.events import NatReport
from edge.stun.nat import SHORT, ConnectivityTest, Schedule
from tests.impair import Impairment
from tests.natlab import Lab, SiteSpec, ip_binary, lab, namespaces, remove_stale, unavailable

UNAVAILABLE = unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))

PREFIX = "edgelab"
A1, A2 = "198.18.0.11", "198.18.0.12"
P1, P2 = 3478, 3479
ECHO = ("198.18.0.13", 7)
ONE_WAY = 0.02
SITES = (
    SiteSpec("open", "public"),
    SiteSpec("home", "cone", Impairment(delay=ONE_WAY)),
    SiteSpec("carrier", "symmetric"),
    SiteSpec("blocked", "udp-blocked"),
    SiteSpec("office", "tcp-web-only"),
    SiteSpec("lossy", "cone", Impairment(delay=ONE_WAY, jitter=0.005, loss=0.1)),
)
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def net() -> Iterator[Lab]:
    with lab(PREFIX, sites=SITES) as built:
        yield built


@pytest.fixture(scope="module")
def supernode(net: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``edge supernode`` in sn1, serving RFC 5780 on A1/A2 x P1/P2; waits for READY=1."""
    tmp = tmp_path_factory.mktemp("sn1")
    config = tmp / "supernode.toml"
    config.write_text(
        f'[supernode]\nhost = "{A1}"\nport = {P1}\nalternate_host = "{A2}"\n'
        f'alternate_port = {P2}\nstate_dir = "{tmp / "state"}"\n'
        f'control_socket = "{tmp / "control.sock"}"\nshutdown_grace_seconds = 0\n'
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp / "notify"))
        listener.settimeout(TIMEOUT)
        argv = (sys.executable, "-m", "edge", "supernode", "--config", str(config))
        net.spawn(net.hosts["sn1"], *argv, env={"NOTIFY_SOCKET": str(tmp / "notify")})
        assert listener.recv(4096) == b"READY=1"
    yield


@pytest.fixture(scope="module")
def echo(net: Lab) -> None:
    net.spawn_python(net.hosts["sn2"], "tests.natlab:serve_udp_echo", host=ECHO[0], port=ECHO[1])


# -- the self-test, run by Lab.call inside a site's host


def self_test(host: str, port: int, rto: float, rc: int, rm: int) -> dict[str, Any]:
    """The device's RFC 5780 self-test on one UDP socket on uvloop; the report."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        report, local = runner.run(_self_test((host, port), Schedule(rto, rc, rm)))
    return {
        "local": local,
        **asdict(report),
        "mapping": report.mapping.value,
        "filtering": report.filtering.value,
        "classification": report.classification,
    }


async def _self_test(server: Address, schedule: Schedule) -> tuple[NatReport, Address]:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    local = (_source_ip(server), cast(int, sock.getsockname()[1]))
    core = ConnectivityTest(server, local, loop.time(), schedule=schedule)
    events: asyncio.Queue[object] = asyncio.Queue()
    adapter = DatagramAdapter(core, events.put_nowait)
    transport, _ = await loop.create_datagram_endpoint(lambda: adapter, sock=sock)
    try:
        while not isinstance(event := await asyncio.wait_for(events.get(), TIMEOUT), NatReport):
            pass
    finally:
        transport.close()
    return event, local


def _source_ip(server: Address) -> str:
    """The address this host sends from towards ``server`` (the self-test's "local")."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as scratch:
        scratch.connect(server)
        return cast(str, scratch.getsockname()[0])


def run_self_test(net: Lab, site: str) -> dict[str, Any]:
    host = net.sites[site].host
    schedule = {"rto": SHORT.rto, "rc": SHORT.rc, "rm": SHORT.rm}
    report: dict[str, Any] = net.call(host, f"{__name__}:self_test", host=A1, port=P1, **schedule)
    return report


# -- classifications


@pytest.mark.usefixtures("supernode")
def test_a_host_on_the_public_segment_is_open(net: Lab) -> None:
    report = run_self_test(net, "open")
    assert report["classification"] == "open", report
    assert report["nat_present"] is False
    assert report["reflexive"][0] == net.sites["open"].address
    assert report["other_address"] == [A2, P2]


@pytest.mark.usefixtures("supernode")
def test_masquerade_is_a_port_preserving_port_restricted_cone(net: Lab) -> None:
    report = run_self_test(net, "home")
    assert report["classification"] == "port-restricted", report
    assert report["mapping"] == "endpoint-independent"
    assert report["filtering"] == "address-and-port-dependent"
    assert report["nat_present"] is True
    # Port-preserving: the internet sees the host's own port on the router's address.
    assert report["reflexive"] == [net.sites["home"].public_address, report["local"][1]]


@pytest.mark.usefixtures("supernode")
def test_fully_random_masquerade_is_symmetric(net: Lab) -> None:
    report = run_self_test(net, "carrier")
    assert report["classification"] == "symmetric", report
    assert report["mapping"] == "address-and-port-dependent"
    assert report["reflexive"][0] == net.sites["carrier"].public_address


@pytest.mark.usefixtures("supernode")
@pytest.mark.parametrize("site", ["blocked", "office"])
def test_firewalls_without_udp_read_as_udp_blocked(net: Lab, site: str) -> None:
    report = run_self_test(net, site)
    assert report["classification"] == "udp-blocked", report
    assert report["reflexive"] is None


@pytest.mark.usefixtures("supernode")
def test_the_web_only_firewall_lets_tcp_out_to_80_and_443_alone(net: Lab) -> None:
    def connects(site: str, port: int) -> bool:
        host = net.sites[site].host
        return bool(net.call(host, "tests.natlab:tcp_connects", host=A1, port=port, timeout=1.0))

    assert connects("office", 443)
    assert connects("office", 80)
    assert not connects("office", P1)
    assert connects("home", P1)


# -- impairment


@pytest.mark.usefixtures("echo")
def test_the_forwarder_adds_its_delay_to_the_round_trip(net: Lab) -> None:
    def rtts(site: str) -> list[float]:
        probes = net.call(
            net.sites[site].host,
            "tests.natlab:udp_echo_rtts",
            host=ECHO[0],
            port=ECHO[1],
            count=50,
            interval=0.01,
        )
        assert len(probes["rtts"]) == probes["sent"]
        return cast(list[float], probes["rtts"])

    direct = statistics.median(rtts("open"))
    impaired = rtts("home")
    assert direct < 0.005
    assert min(impaired) >= 2 * ONE_WAY
    assert 2 * ONE_WAY <= statistics.median(impaired) < 2 * ONE_WAY + 0.006


@pytest.mark.usefixtures("echo")
def test_the_forwarder_jitters_and_loses_as_asked(net: Lab) -> None:
    probes = net.call(
        net.sites["lossy"].host,
        "tests.natlab:udp_echo_rtts",
        host=ECHO[0],
        port=ECHO[1],
        count=300,
        interval=0.005,
    )
    received = len(probes["rtts"]) / probes["sent"]
    # 10% each way: 81% come back; five standard deviations either side.
    assert 0.70 < received < 0.92
    rtts = probes["rtts"]
    assert min(rtts) >= 2 * (ONE_WAY - 0.005)
    assert statistics.median(rtts) < 2 * (ONE_WAY + 0.005) + 0.006
    assert statistics.pstdev(rtts) > 0.001


def test_tcp_crosses_the_forwarder_in_full_sized_segments(net: Lab) -> None:
    # Locally made TCP comes with partial checksums and as 64 KiB GSO segments.
    size = 4_000_000
    source = {"host": ECHO[0], "port": 8080}
    net.spawn_python(net.hosts["sn2"], "tests.natlab:serve_tcp_source", **source, size=size)
    assert net.call(net.sites["home"].host, "tests.natlab:tcp_download", **source) == size


# -- teardown


def test_the_lab_is_torn_down_when_the_block_raises() -> None:
    sites = [SiteSpec("x", "cone", Impairment(delay=0.001))]
    with pytest.raises(RuntimeError, match="boom"), lab("edgelabx", sites=sites) as built:
        made = list(built.namespaces)
        forwarder = built.processes[0]
        assert set(made) <= set(namespaces())
        raise RuntimeError("boom")
    assert forwarder.poll() is not None
    assert not set(made) & set(namespaces())


def test_stale_labs_of_dead_processes_are_removed_and_live_ones_kept() -> None:
    ip = ip_binary()
    assert ip is not None
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"edgelabs-{dead.pid}-abcd-x"
    live = f"edgelabs-{os.getpid()}-abcd-x"
    for name in (stale, live):
        subprocess.run([ip, "netns", "add", name], check=True)
    try:
        assert remove_stale("edgelabs") == [stale]
        assert live in namespaces()
        assert stale not in namespaces()
    finally:
        for name in (stale, live):
            subprocess.run([ip, "netns", "delete", name], capture_output=True, check=False)

"""The NAT lab: real kernel NAT and firewalls in network namespaces, for the tests.

:func:`lab` builds, for one ``with`` block, a small internet out of Linux
network namespaces joined by veth pairs, and deletes all of it afterwards,
also when the block raises. Everything runs as root (``ip netns``, ``nft``);
no traffic leaves the namespaces it makes.

Topology (``<run>`` is the run's unique name, see below; ``~`` is a veth pair)::

                    <run>-pub: bridge br0, 198.18.0.1/15 ("the internet")
   +---------+-----------+---------+----------------+------------------+
   |         |           |         |                |                  |
 login      sn1         sn2     <site>           <site>-r           <site>-r (impaired)
 .0.10  .0.11 + .0.12  .0.13   kind "public":   wan 198.18.1.N     uplink
                               eth0             nftables           =[tests.impair]=
                               198.18.2.N       lan 10.N.0.1       wanx ~ wan 198.18.1.N
                               (no router)        ~                nftables, lan 10.N.0.1
                                                <site>               ~
                                                eth0 10.N.0.2      <site> eth0 10.N.0.2
                                                default via        default via 10.N.0.1
                                                10.N.0.1

- The public segment is one bridge in ``<run>-pub`` carrying 198.18.0.0/15
  (RFC 2544's benchmarking range: public-looking addresses that are nobody's).
  Every public interface is on that one /15, so no host needs a route.
- Public hosts: ``login`` (198.18.0.10), ``sn1`` with TWO addresses (198.18.0.11
  and 198.18.0.12, for an RFC 5780 server's A1 and A2), ``sn2`` (198.18.0.13).
  Nothing runs on them until a test starts it (:meth:`Lab.spawn`).
- Site number N (from 1, in the order given) of each kind:

  ``public``
      the host itself on the bridge at 198.18.2.N: no NAT, no firewall.
  ``cone``
      router ``<site>-r`` with ``masquerade``: Linux keeps the source port when
      it is free, and one socket's port stays the same whatever the
      destination (endpoint-independent mapping). Only packets matching a
      conntrack entry come back in, i.e. from the very address and port the
      host sent to (address-and-port-dependent filtering): RFC 3489 calls that
      "port-restricted cone", and the self-test says so.
  ``symmetric``
      ``masquerade random,fully-random``: every new destination gets a new,
      random port (address-and-port-dependent mapping).
  ``udp-blocked``
      masquerade, and the router drops every UDP packet from the LAN.
  ``tcp-web-only``
      masquerade, and the router forwards from the LAN only TCP to ports 80
      and 443; everything else (UDP, ICMP, other TCP) is dropped.

  Each router's ruleset (``table ip lab``) has a ``forward`` chain with
  policy drop: replies (``ct state established,related``) in, what the kind
  allows out; an ``input`` chain with policy drop for everything but the LAN
  and replies (a home router answers nothing from outside); and a
  ``postrouting`` nat chain with the kind's masquerade on ``wan``.
- An impaired site (``SiteSpec.impairment``) has its router's ``wan`` joined
  to a second veth end ``wanx`` in the router itself; :mod:`tests.impair`
  runs in the router and bridges ``wanx`` to ``uplink``, the link to the public
  bridge, delaying, jittering and dropping frames in both directions (there
  is no ``tc netem`` on this kernel). 20 ms each way gives a 40 ms round trip
  to any public host.
- Every namespace has IPv6 switched off (no router solicitations or DAD to
  cross the forwarder) and ``lo`` up.

Names: every namespace is ``<prefix>-<pid>-<4 hex>-<role>``, the pid being the
test process's. Parallel runs never collide, and :func:`remove_stale` (called
by :func:`lab` first) deletes the labs whose process has died, after killing
what still runs in them. Interfaces live only inside the lab's namespaces, so
their names are short and fixed.

Running things inside: :meth:`Lab.run` (a command, to completion),
:meth:`Lab.spawn` (a long-running process, killed at the end of the lab,
optionally waited for until it prints ``ready``), :meth:`Lab.call` (a Python
function ``module:name`` in a fresh interpreter in a namespace, its keyword
arguments and its return value passed as JSON). The probes at the end of this
module are such functions.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.impair import Impairment

ROOT = Path(__file__).resolve().parents[1]
"""The project's root: the namespaces' Python processes import ``edge`` and ``tests`` from it."""

KINDS = ("public", "cone", "symmetric", "udp-blocked", "tcp-web-only")
PREFIX_LENGTH = 15
BRIDGE_ADDRESS = "198.18.0.1"
PUBLIC_HOSTS: Mapping[str, tuple[str, ...]] = {
    "login": ("198.18.0.10",),
    "sn1": ("198.18.0.11", "198.18.0.12"),
    "sn2": ("198.18.0.13",),
}
READY_TIMEOUT = 30.0
"""Seconds a spawned process may take to print ``ready``."""
COMMAND_TIMEOUT = 120.0

_MASQUERADE = {
    "cone": "masquerade",
    "symmetric": "masquerade random,fully-random",
    "udp-blocked": "masquerade",
    "tcp-web-only": "masquerade",
}
_OUTBOUND = {
    "cone": 'iifname "lan" oifname "wan" accept',
    "symmetric": 'iifname "lan" oifname "wan" accept',
    "udp-blocked": 'iifname "lan" meta l4proto udp drop\n    iifname "lan" oifname "wan" accept',
    "tcp-web-only": 'iifname "lan" oifname "wan" tcp dport { 80, 443 } accept',
}
_RULESET = """\
table ip lab {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    {outbound}
    ct state established,related accept
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname {{ "lo", "lan" }} accept
    ct state established,related accept
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" {masquerade}
  }}
}}
"""

# Run in a namespace by Lab.call/Lab.spawn_python: call module:name(**json) and
# print what it returns as JSON on the last line of stdout.
_CALL = """\
import importlib, json, sys
module, _, name = sys.argv[1].partition(":")
result = getattr(importlib.import_module(module), name)(**json.loads(sys.argv[2]))
print(json.dumps(result), flush=True)
"""


class LabError(RuntimeError):
    """A lab command failed; the message carries its output."""


@dataclass(frozen=True)
class SiteSpec:
    """A site to build: its name (a namespace role, short), its kind (:data:`KINDS`),
    and the impairment between its router and the public segment, if any."""

    name: str
    kind: str
    impairment: Impairment | None = None


@dataclass(frozen=True)
class Site:
    """A built site: the host's namespace and address, the router's namespace
    (None for ``public``), and the address the internet sees."""

    spec: SiteSpec
    host: str
    address: str
    router: str | None
    public_address: str


def binary(name: str) -> str | None:
    """Where the system tool ``name`` is: on PATH, else in /usr/sbin or /sbin (which
    a non-login shell's PATH may lack)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    return None if found is None else str(Path(found).resolve())


def ip_binary() -> str | None:
    return binary("ip")


def unavailable() -> str | None:
    """Why no lab can be built here, or None when one can."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, nftables)"
    ip = ip_binary()
    if ip is None:
        return "no ip(8): apt-get install iproute2"
    if binary("nft") is None:
        return "no nft(8): apt-get install nftables"
    if binary("sysctl") is None:
        return "no sysctl(8): apt-get install procps"
    probe = f"natlab-probe-{os.getpid()}"
    added = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True, check=False)
    if added.returncode != 0:
        return f"ip netns is unavailable: {added.stderr.strip()}"
    subprocess.run([ip, "netns", "delete", probe], capture_output=True, check=False)
    return None


def _command(argv: Sequence[str], *, stdin: str | None = None) -> str:
    done = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=COMMAND_TIMEOUT,
    )
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    """Every network namespace ``ip netns`` knows, by name."""
    return [line.split()[0] for line in _command([_ip(), "netns", "list"]).splitlines() if line]


def remove_stale(prefix: str) -> list[str]:
    """Delete the labs under ``prefix`` whose test process is gone; their names."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)-[0-9a-f]{{4}}-.+")
    stale = [
        name
        for name in namespaces()
        if (match := pattern.fullmatch(name)) and not _alive(int(match[1]))
    ]
    for name in stale:
        _kill_inside(name)
        _command([_ip(), "netns", "delete", name])
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(name: str) -> None:
    """Kill, one by one, what an aborted lab left running in namespace ``name``."""
    for pid in _command([_ip(), "netns", "pids", name]).split():
        with suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _ip() -> str:
    ip = ip_binary()
    if ip is None:
        raise LabError("no ip(8) found")
    return ip


class Lab:
    """A built lab: its namespaces, sites and processes. Made by :func:`lab`."""

    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(2)}"
        self.ip = _ip()
        self.nft = binary("nft") or "nft"
        self.sysctl = binary("sysctl") or "sysctl"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []
        self.hosts: dict[str, str] = {}
        """Public hosts' namespaces by role (``login``, ``sn1``, ``sn2``)."""
        self.sites: dict[str, Site] = {}
        self.public = ""
        """The public segment's namespace (the bridge)."""
        self.logs = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        """Where spawned processes write stderr (deleted with the lab)."""
        self._ports = 0

    # -- running things inside

    def run(self, namespace: str, *argv: str, stdin: str | None = None) -> str:
        """Run ``argv`` in ``namespace`` to completion; its stdout. Raises LabError."""
        return _command([self.ip, "netns", "exec", namespace, *argv], stdin=stdin)

    def spawn(
        self,
        namespace: str,
        *argv: str,
        env: Mapping[str, str] | None = None,
        ready: bool = False,
    ) -> subprocess.Popen[str]:
        """Start ``argv`` in ``namespace``, to be killed when the lab ends.

        With ``ready``, return once it has printed the line ``ready`` (LabError,
        with its stderr, if it exits or takes longer than :data:`READY_TIMEOUT`).
        """
        log = self.logs / f"{namespace}-{len(self.processes)}.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [self.ip, "netns", "exec", namespace, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
                stderr=stderr,
                text=True,
                cwd=ROOT,
                env={**_python_env(), **(env or {})},
            )
        self.processes.append(process)
        if ready:
            assert process.stdout is not None
            if _read_line(process.stdout, READY_TIMEOUT) != "ready":
                process.kill()
                raise LabError(f"{' '.join(argv)} did not get ready: {log.read_text()}")
        return process

    def spawn_python(self, namespace: str, target: str, **kwargs: Any) -> subprocess.Popen[str]:
        """Start Python function ``module:name`` in ``namespace``; it must print ``ready``."""
        return self.spawn(namespace, *_call_argv(target, kwargs), ready=True)

    def call(self, namespace: str, target: str, **kwargs: Any) -> Any:
        """Call Python function ``module:name`` with ``kwargs`` in ``namespace`` in a
        fresh interpreter; what it returns (JSON-encodable)."""
        done = subprocess.run(
            [self.ip, "netns", "exec", namespace, *_call_argv(target, kwargs)],
            capture_output=True,
            text=True,
            check=False,
            timeout=COMMAND_TIMEOUT,
            cwd=ROOT,
            env=_python_env(),
        )
        if done.returncode != 0:
            raise LabError(f"{target} in {namespace} failed ({done.returncode}):\n{done.stderr}")
        return json.loads(done.stdout.splitlines()[-1])

    def link(self, site: str, up: bool) -> None:
        """Take ``site``'s host off its network (its ``eth0`` down) or put it back. The
        kernel drops the routes through an interface that goes down; back up, the
        default route returns as the host's network manager would restore it."""
        built = self.sites[site]
        self._ip(built.host, "link", "set", "dev", "eth0", "up" if up else "down")
        if up and built.router is not None:
            gateway = built.address.rpartition(".")[0] + ".1"
            self._ip(built.host, "route", "replace", "default", "via", gateway)

    # -- building

    def build(self, sites: Sequence[SiteSpec]) -> None:
        self.public = self._namespace("pub")
        self._ip(self.public, "link", "add", "br0", "type", "bridge")
        self._up(self.public, "br0", BRIDGE_ADDRESS)
        for role, addresses in PUBLIC_HOSTS.items():
            self.hosts[role] = self._namespace(role)
            self._plug(self.hosts[role], "eth0", *addresses)
        for number, spec in enumerate(sites, start=1):
            if spec.kind not in KINDS:
                raise LabError(f"site {spec.name}: unknown kind {spec.kind!r}, not one of {KINDS}")
            self.sites[spec.name] = self._site(number, spec)

    def _site(self, number: int, spec: SiteSpec) -> Site:
        if spec.kind == "public":
            host = self._namespace(spec.name)
            address = f"198.18.2.{number}"
            self._plug(host, "eth0", address)
            return Site(spec, host, address, None, address)
        router = self._namespace(f"{spec.name}-r")
        host = self._namespace(spec.name)
        wan, lan, address = f"198.18.1.{number}", f"10.{number}.0.1", f"10.{number}.0.2"
        if spec.impairment is None:
            self._plug(router, "wan", wan)
        else:
            self._impaired_uplink(router, wan, spec.impairment, seed=number)
        self._veth(router, "lan", host, "eth0")
        self._up(router, "lan", lan, prefix=24)
        self._up(host, "eth0", address, prefix=24)
        self._ip(host, "route", "add", "default", "via", lan)
        self.run(router, self.sysctl, "-qw", "net.ipv4.ip_forward=1")
        ruleset = _RULESET.format(outbound=_OUTBOUND[spec.kind], masquerade=_MASQUERADE[spec.kind])
        self.run(router, self.nft, "-f", "-", stdin=ruleset)
        return Site(spec, host, address, router, wan)

    def _impaired_uplink(self, router: str, wan: str, impairment: Impairment, seed: int) -> None:
        """``wan`` (the router's address) ~ ``wanx`` =forwarder= ``uplink`` ~ the bridge."""
        self._veth(router, "wan", router, "wanx")
        self._up(router, "wan", wan)
        self._up(router, "wanx")
        self._plug(router, "uplink")
        argv = [sys.executable, "-m", "tests.impair", "wanx", "uplink", "--seed", str(seed)]
        self.spawn(router, *argv, *impairment.argv(), ready=True)

    def _namespace(self, role: str) -> str:
        name = f"{self.name}-{role}"
        _command([self.ip, "netns", "add", name])
        self.namespaces.append(name)
        self.run(
            name,
            self.sysctl,
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        )
        self._ip(name, "link", "set", "lo", "up")
        return name

    def _plug(self, namespace: str, interface: str, *addresses: str) -> None:
        """A veth from ``interface`` in ``namespace`` to a new port of the public bridge."""
        self._ports += 1
        port = f"p{self._ports}"
        self._veth(namespace, interface, self.public, port)
        self._ip(self.public, "link", "set", "dev", port, "master", "br0", "up")
        self._up(namespace, interface, *addresses)

    def _veth(self, namespace: str, interface: str, peer_namespace: str, peer: str) -> None:
        """A veth pair: ``interface`` in ``namespace``, ``peer`` in ``peer_namespace``."""
        link = ("link", "add", interface, "type", "veth", "peer", "name", peer)
        self._ip(namespace, *link, "netns", peer_namespace)

    def _up(
        self, namespace: str, interface: str, *addresses: str, prefix: int = PREFIX_LENGTH
    ) -> None:
        for address in addresses:
            self._ip(namespace, "addr", "add", f"{address}/{prefix}", "dev", interface)
        self._ip(namespace, "link", "set", "dev", interface, "up")

    def _ip(self, namespace: str, *args: str) -> None:
        _command([self.ip, "-n", namespace, *args])

    # -- tearing down

    def close(self) -> None:
        """Stop every process the lab started, delete every namespace it made."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        for name in reversed(self.namespaces):
            subprocess.run([self.ip, "netns", "delete", name], capture_output=True, check=False)
        shutil.rmtree(self.logs, ignore_errors=True)


@contextmanager
def lab(name_prefix: str = "edgelab", sites: Sequence[SiteSpec] = ()) -> Iterator[Lab]:
    """Build a lab with the public hosts and ``sites`` for the ``with`` block; tear it
    all down afterwards, whatever happens. Stale labs under the prefix go first."""
    remove_stale(name_prefix)
    built = Lab(name_prefix)
    try:
        built.build(sites)
        yield built
    finally:
        built.close()


def _python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _call_argv(target: str, kwargs: Mapping[str, Any]) -> list[str]:
    return [sys.executable, "-c", _CALL, target, json.dumps(kwargs)]


def _read_line(stream: IO[str], timeout: float) -> str | None:
    """The next line of a child's stdout, or None at its end or after ``timeout``."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return None
    line = stream.readline()
    return line.strip() if line else None


# -- probes: functions for Lab.call / Lab.spawn_python, run inside a namespace

_PROBE = struct.Struct("!Id")


def serve_udp_echo(host: str, port: int) -> None:
    """Send every datagram on ``host:port`` back where it came from, forever."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))
        print("ready", flush=True)
        while True:
            data, source = sock.recvfrom(2048)
            sock.sendto(data, source)


def udp_echo_rtts(
    host: str, port: int, count: int, interval: float, linger: float = 0.5
) -> dict[str, Any]:
    """Send ``count`` probes to a UDP echo ``interval`` seconds apart; the round-trip
    times of those that came back (seconds), waiting ``linger`` after the last.

    One probe goes first, not counted, and its answer is awaited (up to
    ``linger``): the first packets of a new path wait for ARP on each hop."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        selectors.DefaultSelector() as selector,
    ):
        sock.connect((host, port))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        sock.send(_PROBE.pack(count, time.monotonic()))
        _collect(sock, selector, [], until=time.monotonic() + linger, stop_after=1)
        rtts: list[float] = []
        start = time.monotonic()
        for sent in range(count):
            sock.send(_PROBE.pack(sent, time.monotonic()))
            _collect(sock, selector, rtts, until=start + (sent + 1) * interval)
        _collect(sock, selector, rtts, until=time.monotonic() + linger)
    return {"sent": count, "rtts": rtts}


def _collect(
    sock: socket.socket,
    selector: selectors.BaseSelector,
    rtts: list[float],
    until: float,
    stop_after: int | None = None,
) -> None:
    """Add to ``rtts`` the answers that come until ``until`` (or ``stop_after`` of them)."""
    while (left := until - time.monotonic()) > 0 and len(rtts) != stop_after:
        if not selector.select(left):
            continue
        try:
            data = sock.recv(2048)
        except OSError:
            continue  # an ICMP error for an earlier probe
        _, sent_at = _PROBE.unpack(data[: _PROBE.size])
        rtts.append(time.monotonic() - sent_at)


def tcp_connects(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def serve_tcp_source(host: str, port: int, size: int) -> None:
    """Send ``size`` bytes to each TCP connection on ``host:port``, then close it; forever."""
    with socket.create_server((host, port)) as server:
        print("ready", flush=True)
        while True:
            connection, _ = server.accept()
            with connection:
                connection.sendall(bytes(size))


def tcp_download(host: str, port: int) -> int:
    """The number of bytes a TCP server at ``host:port`` sends before it closes."""
    received = 0
    with socket.create_connection((host, port), timeout=COMMAND_TIMEOUT) as connection:
        while chunk := connection.recv(1 << 16):
            received += len(chunk)
    return received

"""``edge supernode``: STUN and TURN for clients on UDP and TCP, counters through ``edge ctl``.

How it starts: the port P is the configured one, or the one kept in the state
folder, or one drawn at first start (as the seed's clients chose theirs), bound
on UDP and TCP together; then TCP 80 and 443 (``tcp_ports``), which a unit
binds with CAP_NET_BIND_SERVICE rather than as root. One
:class:`~edge.stun.turn.TurnServer` core answers STUN Binding ("Am I X?") and
TURN on all of them through a :class:`~edge.supernode.relay.RelayAdapter`.
Without a relay secret the core still answers Binding, and an Allocate gets
401 since no credentials can verify: the supernode relays for nobody.

With ``[overlay]`` configured the same UDP port also carries the supernode's
Noise sessions (:class:`~edge.supernode.relay.RelayAdapter` sorts datagrams
by their first byte), and its TCP ports the sessions of devices that only get
TCP out (:class:`~edge.supernode.streams.EdgeStream`): the DHT with other
supernodes, joined through the bootstrap list at start, and what devices ask
(:class:`~edge.supernode.clients.ClientService`), including the login
tunnels of devices that reach it but not the login server, whose TCP
connections to ``[overlay] login_servers`` :mod:`edge.supernode.logintcp`
makes. Its keys are made at first
start in the state folder (``supernode.key``); its certificate comes from the
login server's issuer (``edge keys certify --device <state_dir>/supernode.key``).

Once everything is bound the control socket opens and systemd hears READY=1,
with a status line naming the ports; the watchdog is pinged from the loop.

How it stops (SIGTERM): STOPPING=1, attached devices get DETACH naming other
supernodes with room (they re-attach and publish there), the TCP listeners close so no new client
comes, allocations and TCP clients already here are served for up to
``shutdown_grace`` seconds, then every socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.client.ports import bind_both, choose
from edge.crypto.cert import TrustStore, read_certificate
from edge.crypto.errors import CertificateFileError
from edge.crypto.keys import DeviceKeys
from edge.overlay.ids import node_id_for
from edge.overlay.messages import Contact
from edge.overlay.node import Node
from edge.overlay.presence import presence_validator
from edge.runtime import notify
from edge.runtime.control import ControlServer, JsonObject
from edge.session.datagram import DatagramEndpoint
from edge.session.handshake import Identity, ReplayGuard
from edge.stun.turn import TurnServer
from edge.supernode import discovery
from edge.supernode.admission import Admission, AdmissionLimits
from edge.supernode.clients import ClientService
from edge.supernode.config import SupernodeConfig
from edge.supernode.dialback import DialbackService, SendProbe
from edge.supernode.errors import SupernodeBindError, SupernodeIdentityError
from edge.supernode.logintcp import LoginConnections
from edge.supernode.overlay import Joined, OverlayService
from edge.supernode.relay import RelayAdapter
from edge.supernode.streams import EdgeStream
from edge.supernode.tunnel import LoginTunnels
from edge.wire.codes import ErrorCode
from edge.wire.errors import WireError
from edge.wire.messages import parse_certificate

_log = logging.getLogger(__name__)

SOFTWARE = "edge supernode"
KEY_FILE = "supernode.key"


@dataclass(frozen=True)
class Bound:
    """Where a started supernode listens."""

    port: int
    port_note: str
    udp: tuple[str, int]
    tcp: tuple[tuple[str, int], ...]


class Supernode:
    """One supernode process: its sockets, its TURN core and its control socket."""

    def __init__(self, config: SupernodeConfig, *, clock: Any = time.time) -> None:
        self.config = config
        self._clock = clock
        self.started_at = clock()
        self.relay = RelayAdapter(
            config.relay_host,
            config.relay.ports,
            max_connections=config.max_tcp_connections,
            clock=clock,
        )
        self.core = TurnServer(
            config.relay.realm,
            config.relay.secret or os.urandom(32),
            self.relay.open_relay,
            now_nonce_secret=os.urandom(32),
            limits=config.relay.limits,
            release_relay=self.relay.close_relay,
            software=SOFTWARE,
        )
        self.control = ControlServer(
            config.control_socket, {"status": self.status, "counters": self.counters}
        )
        self.bound: Bound | None = None
        self.clients: ClientService | None = None
        self.discovery: discovery.DiscoverySockets | None = None
        self.logins: LoginConnections | None = None
        """The login tunnels' connections to the login servers (with the overlay)."""
        self._probe: socket.socket | None = None
        """The dial-back probes' own socket: no device session ever used it."""
        self.joined = asyncio.Event()
        """Set once the overlay join has ended (with whatever contacts it found)."""

    async def start(self) -> Bound:
        """Bind every port, join the overlay, open the control socket; where it listens."""
        identity = self._identity() if self.config.overlay.enabled else None
        self.bound = await self._bind()
        try:
            await self._start_discovery(self.bound.udp)
            if identity is not None:
                self._start_overlay(identity, self.bound.port)
            await self.control.start()
        except BaseException:
            await self._close_sockets()
            raise
        return self.bound

    async def _start_discovery(self, main: tuple[str, int]) -> None:
        """RFC 5780 on A1:P2, A2:P1 and A2:P2 when a second address is configured."""
        if not self.config.alternate_host:
            return
        alternate = (self.config.alternate_host, self.config.alternate_port)
        self.discovery = await discovery.start(
            main, alternate, self.relay.send_udp, software=SOFTWARE
        )
        self.core.binding_hook = self.discovery.handle_main

    async def _bind(self) -> Bound:
        sockets: list[socket.socket] = []
        try:
            try_bind, held = bind_both(self.config.host)
            choice = choose(self.config.state_dir, self.config.port, try_bind, random.Random())
            sockets.extend(held)
            udp, tcp = held
            extra = [_bind_tcp(self.config.host, port) for port in self.config.tcp_ports]
            sockets.extend(extra)
            await self.relay.start(self.core, udp, [tcp, *extra])
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return Bound(
            port=choice.port,
            port_note=choice.note,
            udp=udp.getsockname()[:2],
            tcp=tuple(sock.getsockname()[:2] for sock in [tcp, *extra]),
        )

    def _identity(self) -> Identity:
        """The supernode's keys (made at first start) and the certificate that names them."""
        keys = supernode_keys(self.config.state_dir)
        path = self.config.overlay.certificate
        assert path is not None
        certificate = _read_certificate(path)
        try:
            named = parse_certificate(certificate).tbs.dh_key
        except WireError as exc:
            raise SupernodeIdentityError(f"{path} is not a certificate: {exc}") from None
        if bytes(named) != keys.dh_public:
            raise SupernodeIdentityError(
                f"{path} certifies another key than {self.config.state_dir / KEY_FILE}"
            )
        return Identity(keys, certificate)

    def _start_overlay(self, identity: Identity, port: int) -> None:
        config = self.config
        trust = TrustStore([config.overlay.issuer_key])
        loop = asyncio.get_running_loop()
        wall_offset = self._clock() - loop.time()
        endpoint = DatagramEndpoint(identity, trust, wall_offset=wall_offset)
        contact = Contact(node_id_for(identity.keys.dh_public), (config.public_host, port))
        node = Node(contact, presence_validator(trust, None, self._clock), self._clock())
        overlay = OverlayService(endpoint, node, wall_offset=wall_offset)
        limits = AdmissionLimits(capacity=config.max_clients, soft=config.redirect_at)
        admission = Admission(contact.address, limits, config.overlay.login_servers)
        dialback = DialbackService(
            identity.keys.sign,
            identity.certificate,
            contact.address,
            wall_offset=wall_offset,
        )
        tunnels = LoginTunnels(config.overlay.login_servers)
        self.clients = ClientService(
            overlay, trust, admission=admission, dialback=dialback, tunnels=tunnels
        )
        self.logins = LoginConnections(tunnels, self._after_login_io)
        self._probe = _probe_socket(config.host)
        self.relay.attach(self.clients, self._on_edge_event)
        self.relay.edge_streams = self._edge_stream_factory(identity, trust)
        self.clients.join(config.overlay.bootstrap, loop.time())
        self.relay.flush_edge()

    def _edge_stream_factory(
        self, identity: Identity, trust: TrustStore
    ) -> Callable[[asyncio.Transport, tuple[str, int]], EdgeStream]:
        clients, relay, guard = self.clients, self.relay, ReplayGuard()
        assert clients is not None

        def make(transport: asyncio.Transport, peer: tuple[str, int]) -> EdgeStream:
            return EdgeStream(
                transport, peer, clients, identity, trust,
                replay_guard=guard, counters=relay.counters, after=relay.flush_edge,
            )  # fmt: skip

        return make

    def _after_login_io(self) -> None:
        """A login tunnel's connection did something: what its core answered goes out."""
        if self.clients is not None:
            self.clients.pump_tunnels()
        self.relay.flush_edge()

    def _on_edge_event(self, event: object) -> None:
        if self.logins is not None and self.logins.act(event):
            return
        if isinstance(event, SendProbe) and self._probe is not None:
            try:
                self._probe.sendto(event.datagram, event.address)
            except OSError as exc:
                _log.debug("dial-back probe to %s failed: %s", event.address, exc)
        elif isinstance(event, Joined):
            _log.info("joined the overlay: %d supernodes known", event.known)
            self.joined.set()

    async def stop(self) -> None:
        """Hand attached devices to other supernodes, close listeners, serve current TURN
        clients for the grace period, close the rest."""
        if self.clients is not None:
            told = self.clients.detach_all(ErrorCode.UNAVAILABLE, asyncio.get_running_loop().time())
            self.relay.flush_edge()
            _log.info("handed %d devices to other supernodes", told)
        if self.logins is not None:
            self.logins.close()
        self.relay.stop_listening()
        await self.relay.wait_idle(self.config.shutdown_grace)
        await self.control.stop()
        await self._close_sockets()

    async def _close_sockets(self) -> None:
        if self.discovery is not None:
            self.discovery.close()
            self.discovery = None
        await self.relay.close()
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    # -- control commands

    def status(self, args: Mapping[str, Any]) -> JsonObject:
        bound = self.bound
        return {
            "role": "supernode",
            "port": bound.port if bound else None,
            "port_note": bound.port_note if bound else "",
            "udp": _show(bound.udp) if bound else None,
            "tcp": [_show(address) for address in bound.tcp] if bound else [],
            "relay": {
                "enabled": self.config.relay.enabled,
                "address": self.config.relay_host,
                "realm": self.config.relay.realm,
            },
            "uptime_seconds": round(self._clock() - self.started_at, 1),
            "allocations": self.core.allocation_count,
            "tcp_clients": self.relay.tcp_clients,
            "nat_discovery": _show(self.discovery.addresses.alternate) if self.discovery else None,
            "overlay": self._overlay_status(),
        }

    def _overlay_status(self) -> JsonObject:
        if self.clients is None:
            return {"enabled": False}
        overlay = self.clients.overlay
        return {
            "enabled": True,
            "node_id": f"{overlay.node.contact.node_id:064x}",
            "contacts": len(overlay.node.table),
            "records": len(overlay.node.store.held()),
            "devices": len(self.clients.attached),
            "load": round(self.clients.admission.load, 3),
            "counts": dict(overlay.counts),
            "presence": dict(self.clients.counts),
            "login_tunnels": {"open": len(self.clients.tunnels), **self.clients.tunnels.counts},
        }

    def counters(self, args: Mapping[str, Any]) -> JsonObject:
        core = self.core
        return {
            "requests": {
                f"{method.lower().replace('_', '-')} {outcome}": n
                for (method, outcome), n in core.requests.items()
            },
            "relayed": dict(core.relayed),
            "drops": {drop.value: n for drop, n in core.drops.items()},
            "sockets": dict(self.relay.counters),
            "discovery": self.discovery.counts() if self.discovery else {},
            "allocations": core.allocation_count,
        }


def supernode_keys(state_dir: Path) -> DeviceKeys:
    """The supernode's Noise and signing keys, made at first start and kept (0600)."""
    return DeviceKeys.load_or_generate(state_dir / KEY_FILE)


def _read_certificate(path: Path) -> bytes:
    try:
        return read_certificate(path)
    except CertificateFileError as exc:
        raise SupernodeIdentityError(str(exc)) from None


def _probe_socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    sock.bind((host, 0))
    return sock


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SupernodeBindError(f"cannot listen on TCP {host}:{port}: {exc.strerror}") from None
    return sock


def _show(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(config: SupernodeConfig, started: asyncio.Future[Bound] | None = None) -> int:
    """Run a supernode until cancelled (SIGTERM through :func:`edge.runtime.loop.run`)."""
    node = Supernode(config)
    bound = await node.start()
    watchdog = asyncio.create_task(notify.keep_watchdog())
    try:
        if started is not None:
            started.set_result(bound)
        _log.info("supernode on port %d (%s)", bound.port, bound.port_note)
        notify.ready()
        notify.status(
            f"port {bound.port} (UDP+TCP), TCP {', '.join(str(p) for p in config.tcp_ports)};"
            f" relay {'on' if config.relay.enabled else 'off'}"
        )
        await asyncio.Event().wait()
    finally:
        notify.stopping()
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        await asyncio.shield(node.stop())
    return 0

"""The supernode's configuration: a TOML file with safe defaults, checked before anything starts.

The defaults make a supernode that listens on all addresses at a port drawn
at first start and kept in its state folder (the seed's "port P", on UDP and
TCP), also on TCP 80 and 443, and serves STUN there. Relaying (TURN) needs the
secret shared with the login server and the public address relayed sockets
are bound to; without ``[relay] secret`` the supernode serves STUN only and
says so. A wrong value stops it before it starts, naming the file, the key and
the line.
"""

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from edge.runtime.config import ConfigDoc, load
from edge.stun.turn import TurnLimits

DEFAULT_STATE = Path("/var/lib/edge/supernode")
DEFAULT_CONTROL = Path("/run/edge-supernode/control.sock")
DEFAULT_TCP_PORTS = (80, 443)
DEFAULT_RELAY_PORTS = range(49152, 65536)
SECTIONS = {"supernode", "relay", "overlay"}
MAX_BOOTSTRAP = 64
MAX_LOGIN_SERVERS = 8


@dataclass(frozen=True)
class RelayConfig:
    secret: bytes = b""
    """The TURN REST secret shared with the login server; empty disables relaying."""
    realm: str = "edge"
    address: str = ""
    """The IPv4 address relayed sockets bind to (clients' peers send there)."""
    ports: range = DEFAULT_RELAY_PORTS
    limits: TurnLimits = field(default_factory=TurnLimits)

    @property
    def enabled(self) -> bool:
        return bool(self.secret)


@dataclass(frozen=True)
class OverlayConfig:
    certificate: Path | None = None
    """This supernode's certificate, issued over the keys in ``state_dir`` by the
    login server's issuer (``edge keys certify``); None: no overlay, STUN/TURN only."""
    issuer_key: bytes = b""
    """The Ed25519 public key that signs every certificate (``edge login-server keys``)."""
    address: str = ""
    """The public IPv4 address other supernodes reach this one at; default: the
    relay address, else the listening host."""
    bootstrap: tuple[tuple[str, int], ...] = ()
    login_servers: tuple[tuple[str, int], ...] = ()
    """Handed to devices with the host cache, flagged as login servers."""

    @property
    def enabled(self) -> bool:
        return self.certificate is not None


@dataclass(frozen=True)
class SupernodeConfig:
    host: str = "0.0.0.0"
    port: int = 0
    alternate_host: str = ""
    """RFC 5780: a second IPv4 address of this host (A2); empty: no NAT behaviour
    discovery. It needs ``host`` to be the first address itself, not a wildcard."""
    alternate_port: int = 0
    """RFC 5780: the second port (P2), bound on both addresses; 0 draws one at start."""
    """0: draw a port at first start and keep it in ``state_dir``."""
    tcp_ports: tuple[int, ...] = DEFAULT_TCP_PORTS
    """Extra TCP ports (80 and 443 pass most firewalls); bound with
    CAP_NET_BIND_SERVICE, not as root."""
    state_dir: Path = DEFAULT_STATE
    control_socket: Path = DEFAULT_CONTROL
    max_tcp_connections: int = 1000
    max_clients: int = 1000
    """Devices attached at once; past it a device is refused and sent elsewhere."""
    redirect_at: float = 0.8
    """Fraction of ``max_clients`` above which new devices are sent to peers with room."""
    shutdown_grace: float = 5.0
    relay: RelayConfig = field(default_factory=RelayConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)

    @property
    def relay_host(self) -> str:
        return self.relay.address or self.host

    @property
    def public_host(self) -> str:
        return self.overlay.address or self.relay_host


def read(path: Path | None) -> SupernodeConfig:
    """The configuration in ``path`` (defaults for what it leaves out), or the defaults."""
    return SupernodeConfig() if path is None else from_doc(load(path))


def from_doc(doc: ConfigDoc) -> SupernodeConfig:
    doc.check_unknown(SECTIONS)
    table = doc.get_table("supernode")
    table.check_unknown(
        {
            "host",
            "port",
            "alternate_host",
            "alternate_port",
            "tcp_ports",
            "state_dir",
            "control_socket",
            "max_tcp_connections",
            "max_clients",
            "redirect_at",
            "shutdown_grace_seconds",
        }
    )
    config = SupernodeConfig(
        host=table.get_str("host", "0.0.0.0", min_length=1, max_length=64),
        port=table.get_int("port", 0, min=0, max=65535),
        alternate_host=table.get_str("alternate_host", "", max_length=64),
        alternate_port=table.get_int("alternate_port", 0, min=0, max=65535),
        tcp_ports=tuple(
            table.get_list_of_int(
                "tcp_ports", list(DEFAULT_TCP_PORTS), max_items=4, min=1, max=65535
            )
        ),
        state_dir=table.get_path("state_dir", DEFAULT_STATE),
        control_socket=table.get_path("control_socket", DEFAULT_CONTROL),
        max_tcp_connections=table.get_int("max_tcp_connections", 1000, min=1, max=1_000_000),
        max_clients=table.get_int("max_clients", 1000, min=1, max=1_000_000),
        redirect_at=table.get_float("redirect_at", 0.8, min=0.01, max=1.0),
        shutdown_grace=table.get_float("shutdown_grace_seconds", 5.0, min=0, max=300),
        relay=_relay(doc.get_table("relay")),
        overlay=_overlay(doc.get_table("overlay")),
    )
    if config.port and config.port in config.tcp_ports:
        raise table.error("tcp_ports", f"port {config.port} is already the supernode's own port")
    _check_alternate(config, table)
    if len(set(config.tcp_ports)) != len(config.tcp_ports):
        raise table.error("tcp_ports", "a port is listed twice")
    if config.relay.enabled and config.relay_host in ("0.0.0.0", ""):
        raise doc.get_table("relay").error(
            "address", "relaying needs the public IPv4 address to bind relayed sockets to"
        )
    if config.overlay.enabled and config.public_host in ("0.0.0.0", ""):
        raise doc.get_table("overlay").error(
            "address", "the overlay needs the public IPv4 address other supernodes reach"
        )
    return config


def _check_alternate(config: SupernodeConfig, table: ConfigDoc) -> None:
    if config.alternate_host and (
        not _is_ipv4(config.alternate_host)
        or not _is_ipv4(config.host)
        or config.host == "0.0.0.0"
        or config.alternate_host == config.host
    ):
        raise table.error(
            "alternate_host",
            "RFC 5780 needs host = this host's first IPv4 address and alternate_host = a second",
        )
    if config.alternate_port and config.alternate_port == config.port:
        raise table.error("alternate_port", "must differ from port")


def _overlay(table: ConfigDoc) -> OverlayConfig:
    table.check_unknown({"certificate", "issuer_key", "address", "bootstrap", "login_servers"})
    certificate = table.get_path("certificate", None)
    issuer_key = table.get_hex_bytes("issuer_key", 32, b"")
    if certificate is not None and not issuer_key:
        raise table.error(
            "issuer_key", "the overlay needs the issuer key its certificates verify with"
        )
    address = table.get_str("address", "", max_length=64)
    if address and not _is_ipv4(address):
        raise table.error("address", f"expected an IPv4 address, got {address!r}")
    bootstrap = table.get_list_of_addresses("bootstrap", [], max_items=MAX_BOOTSTRAP)
    login_servers = table.get_list_of_addresses("login_servers", [], max_items=MAX_LOGIN_SERVERS)
    return OverlayConfig(
        certificate=certificate,
        issuer_key=issuer_key,
        address=address,
        bootstrap=tuple(bootstrap),
        login_servers=tuple(login_servers),
    )


def _relay(table: ConfigDoc) -> RelayConfig:
    table.check_unknown(
        {
            "secret",
            "realm",
            "address",
            "ports",
            "max_allocations",
            "max_allocations_per_user",
            "bandwidth_bytes_per_second",
            "max_lifetime_seconds",
        }
    )
    low, high = _port_range(table)
    bandwidth = table.get_float("bandwidth_bytes_per_second", 64_000.0, min=1000, max=1e9)
    limits = TurnLimits(
        max_allocations=table.get_int("max_allocations", 1000, min=1, max=1_000_000),
        max_allocations_per_user=table.get_int("max_allocations_per_user", 4, min=1, max=1000),
        bandwidth=bandwidth,
        burst=bandwidth,
        max_lifetime=table.get_int("max_lifetime_seconds", 3600, min=600, max=86400),
    )
    address = table.get_str("address", "", max_length=64)
    if address and not _is_ipv4(address):
        raise table.error("address", f"expected an IPv4 address, got {address!r}")
    return RelayConfig(
        secret=table.get_str("secret", "", max_length=256).encode(),
        realm=table.get_str("realm", "edge", min_length=1, max_length=64),
        address=address,
        ports=range(low, high + 1),
        limits=limits,
    )


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _port_range(table: ConfigDoc) -> tuple[int, int]:
    default = [DEFAULT_RELAY_PORTS.start, DEFAULT_RELAY_PORTS.stop - 1]
    ports = table.get_list_of_int("ports", default, max_items=2, min=1024, max=65535)
    if len(ports) != 2 or ports[0] > ports[1]:
        raise table.error("ports", f"expected [lowest, highest], got {ports}")
    return ports[0], ports[1]

"""The login server's configuration: a TOML file, flags over it, and safe defaults.

Every key is optional; the defaults make a server that listens on TCP 443 on
all addresses, keeps its keys and an SQLite database in ``/var/lib/edge/login``
and refuses self-registration. A wrong value stops the server before it
starts, naming the file, the key and the line.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

from edge.login.passwords import PasswordCost
from edge.login.store import Quota
from edge.runtime.config import ConfigDoc, load
from edge.sansio import Address

DEFAULT_STATE = Path("/var/lib/edge/login")
SECTIONS = {"server", "certificates", "accounts", "passwords", "throttle", "relay", "mailbox"}


@dataclass(frozen=True)
class LoginConfig:
    listen: tuple[Address, ...] = (("0.0.0.0", 443),)
    state_dir: Path = DEFAULT_STATE
    database: str = ""
    """Store URL; empty means ``sqlite:///<state_dir>/login.db``."""
    max_connections: int = 1000
    handshake_timeout: float = 10.0
    certificate_hours: float = 24.0
    self_registration: bool = False
    registration_interval: int = 3600
    password_cost: PasswordCost = field(default_factory=PasswordCost)
    password_parallel: int = 2
    throttle_base: int = 1
    throttle_max: int = 900
    relay_secret: bytes = b""
    relay_uris: tuple[str, ...] = ()
    relay_ttl: int = 3600
    mailbox_quota: Quota = field(default_factory=Quota)
    mailbox_days: int = 30

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.state_dir / 'login.db'}"


def read(path: Path | None) -> LoginConfig:
    """The configuration in ``path`` (defaults for what it leaves out), or the defaults."""
    return LoginConfig() if path is None else from_doc(load(path))


def from_doc(doc: ConfigDoc) -> LoginConfig:
    doc.check_unknown(SECTIONS)
    server, certs, accounts = (
        doc.get_table("server"),
        doc.get_table("certificates"),
        doc.get_table("accounts"),
    )
    server.check_unknown(
        {"listen", "state_dir", "database", "max_connections", "handshake_timeout_seconds"}
    )
    certs.check_unknown({"validity_hours"})
    accounts.check_unknown({"self_registration", "registration_interval_seconds"})
    base = LoginConfig(
        listen=_listen(server),
        state_dir=server.get_path("state_dir", DEFAULT_STATE),
        database=server.get_str("database", "", max_length=1024),
        max_connections=server.get_int("max_connections", 1000, min=1, max=1_000_000),
        handshake_timeout=server.get_float("handshake_timeout_seconds", 10.0, min=0.1, max=120),
        certificate_hours=certs.get_float("validity_hours", 24.0, min=0.1, max=24 * 366),
        self_registration=accounts.get_bool("self_registration", False),
        registration_interval=accounts.get_int(
            "registration_interval_seconds", 3600, min=0, max=86400 * 30
        ),
    )
    return _with_limits(_with_relay(_with_passwords(base, doc), doc), doc)


def _listen(server: ConfigDoc) -> tuple[Address, ...]:
    addresses = server.get_list_of_addresses(
        "listen", [("0.0.0.0", 443)], max_items=32, any_port=True
    )
    if not addresses:
        raise server.error("listen", "expected at least one address")
    return tuple(addresses)


def _with_passwords(config: LoginConfig, doc: ConfigDoc) -> LoginConfig:
    table = doc.get_table("passwords")
    table.check_unknown({"ops", "memory_kib", "parallel"})
    cost = PasswordCost(
        ops=table.get_int("ops", config.password_cost.ops, min=1, max=16),
        memory=table.get_int("memory_kib", config.password_cost.memory >> 10, min=8, max=1 << 22)
        << 10,
    )
    parallel = table.get_int("parallel", 2, min=1, max=64)
    return replace(config, password_cost=cost, password_parallel=parallel)


def _with_relay(config: LoginConfig, doc: ConfigDoc) -> LoginConfig:
    table = doc.get_table("relay")
    table.check_unknown({"secret", "uris", "ttl_seconds"})
    secret = table.get_str("secret", "", max_length=256).encode()
    uris = tuple(table.get_list_of_str("uris", [], max_items=8, max_length=255))
    if uris and not secret:
        raise table.error("uris", "relay URIs need [relay] secret, shared with the TURN servers")
    ttl = table.get_int("ttl_seconds", 3600, min=60, max=86400)
    return replace(config, relay_secret=secret, relay_uris=uris, relay_ttl=ttl)


def _with_limits(config: LoginConfig, doc: ConfigDoc) -> LoginConfig:
    throttle, mailbox = doc.get_table("throttle"), doc.get_table("mailbox")
    throttle.check_unknown({"base_seconds", "max_seconds"})
    mailbox.check_unknown({"max_items", "max_bytes", "expiry_days"})
    return replace(
        config,
        throttle_base=throttle.get_int("base_seconds", 1, min=1, max=3600),
        throttle_max=throttle.get_int("max_seconds", 900, min=1, max=86400),
        mailbox_quota=Quota(
            items=mailbox.get_int("max_items", 1000, min=1, max=1_000_000),
            bytes=mailbox.get_int("max_bytes", 16 << 20, min=1024, max=1 << 34),
        ),
        mailbox_days=mailbox.get_int("expiry_days", 30, min=1, max=3650),
    )

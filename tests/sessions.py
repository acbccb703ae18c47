"""Test helpers: certified identities and a lossless in-memory network of endpoints."""

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edge.crypto.cert import TrustStore, issue
from edge.crypto.keys import DeviceKeys, IssuerKey
from edge.sansio import Address
from edge.session.cookie import CookieGate
from edge.session.datagram import DatagramEndpoint, Limits
from edge.session.handshake import Identity

WALL = 1_800_000_000.0
"""Unix time of the tests' ``now == 0``."""


def identity(
    issuer: IssuerKey,
    user_id: str,
    *,
    device_id: str = "dev",
    keys: DeviceKeys | None = None,
    start: float = WALL - 60,
    end: float = WALL + 86400,
    serial: int = 1,
) -> Identity:
    keys = keys or DeviceKeys.generate()
    cert = issue(
        issuer,
        serial=serial,
        user_id=user_id,
        device_id=device_id,
        sign_key=keys.sign_public,
        dh_key=keys.dh_public,
        not_before=int(start),
        not_after=int(end),
    )
    return Identity(keys, cert)


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def endpoint(
    ident: Identity,
    issuers: Iterable[IssuerKey],
    *,
    seed: int = 1,
    limits: Limits | None = None,
    cookie_gate: CookieGate | None = None,
) -> DatagramEndpoint:
    trust = TrustStore([i.public for i in issuers])
    return DatagramEndpoint(
        ident,
        trust,
        wall_offset=WALL,
        random=seeded(seed),
        limits=limits or Limits(),
        cookie_gate=cookie_gate,
    )


@dataclass
class Net:
    """Endpoints by address; ``deliver`` moves datagrams until nothing is in flight."""

    nodes: dict[Address, DatagramEndpoint]
    drop: Callable[[bytes, Address, Address], bool] = lambda data, src, dst: False
    errors: list[Exception] = field(default_factory=list)
    delivered: int = 0

    def deliver(self, now: float, *, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for src, node in self.nodes.items():
                for data, dst in node.datagrams_to_send(now):
                    moved = True
                    if self.drop(data, src, dst) or dst not in self.nodes:
                        continue
                    self.delivered += 1
                    try:
                        self.nodes[dst].receive_datagram(data, src, now)
                    except Exception as exc:
                        self.errors.append(exc)
            if not moved:
                return

    def tick(self, now: float) -> None:
        for node in self.nodes.values():
            at = node.get_timer()
            if at is not None and at <= now:
                node.handle_timer(now)
        self.deliver(now)


def events(node: DatagramEndpoint) -> list[object]:
    out = []
    while (event := node.next_event()) is not None:
        out.append(event)
    return out

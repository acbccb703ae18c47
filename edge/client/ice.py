"""Candidates and candidate pairs, as ICE (RFC 8445) orders them.

A call gathers candidates — host addresses, the server-reflexive address a
supernode sees ("Am I X?"), relayed addresses on a TURN server — and the two
devices exchange theirs in CALL_INVITE and CALL_ACCEPT. Each side then pairs
its candidates with the other's and checks the pairs best first. This module
is the arithmetic of that: priorities (§5.1.2), foundations (§5.1.1.3), pairs
and their order (§6.1.2.3), pruning (§6.1.2.4), and which of our path kinds a
pair is (the table :data:`PATH_KINDS`) — the words ``edge ctl status`` shows:

* ``direct-udp``: UDP between two host candidates (same network, or both public);
* ``punched-udp``: UDP where a side is known by its reflexive address (a NAT);
* ``direct-tcp``: TCP without a relay;
* ``relay-udp`` / ``relay-tcp``: through a TURN relay.

Within a type, UDP comes before TCP (local preference 65535 against 32767),
so a device behind a firewall that drops UDP falls to TCP only when UDP fails.
"""

import hashlib
import ipaddress
from dataclasses import dataclass
from enum import Enum

from edge.errors import LocalError
from edge.sansio import Address
from edge.wire.messages import CandidateKind, PathKind, Transport

TYPE_PREFERENCE = {
    CandidateKind.HOST: 126,
    CandidateKind.PEER_REFLEXIVE: 110,
    CandidateKind.SERVER_REFLEXIVE: 100,
    CandidateKind.RELAY: 0,
}
"""RFC 8445 §5.1.2.2's recommended values."""

LOCAL_PREFERENCE = {Transport.UDP: 65535, Transport.TCP: 32767}
COMPONENT = 1
"""One component: media and its control share a path (no separate RTCP)."""
MAX_PAIRS = 100
"""RFC 8445 §6.1.2.5 suggests limiting a checklist to 100 pairs."""


@dataclass(frozen=True)
class Candidate:
    kind: CandidateKind
    transport: Transport
    address: Address
    base: Address
    """Where packets really leave from: the host address a reflexive or relayed
    candidate was learned through (the candidate itself for a host candidate)."""
    priority: int
    foundation: int


@dataclass(frozen=True)
class Pair:
    local: Candidate
    remote: Candidate
    priority: int

    @property
    def path_kind(self) -> PathKind:
        return path_kind(self.local, self.remote)


def priority(kind: CandidateKind, transport: Transport, component: int = COMPONENT) -> int:
    """RFC 8445 §5.1.2.1: 2^24 type preference + 2^8 local preference + (256 - component)."""
    if not 1 <= component <= 256:
        raise LocalError(f"component {component} is not from 1 to 256")
    return (TYPE_PREFERENCE[kind] << 24) + (LOCAL_PREFERENCE[transport] << 8) + (256 - component)


def foundation(kind: CandidateKind, transport: Transport, base: Address, server: str = "") -> int:
    """Equal for candidates of the same kind, base IP, transport and server (§5.1.1.3)."""
    text = f"{kind.name}|{transport.name}|{base[0]}|{server}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "big")


def candidate(
    kind: CandidateKind,
    transport: Transport,
    address: Address,
    base: Address | None = None,
    *,
    server: str = "",
) -> Candidate:
    """A candidate with its priority and foundation worked out."""
    base = base or address
    return Candidate(
        kind,
        transport,
        address,
        base,
        priority(kind, transport),
        foundation(kind, transport, base, server),
    )


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 §6.1.2.3: 2^32 MIN(G,D) + 2 MAX(G,D) + (G > D ? 1 : 0)."""
    return (
        (min(controlling, controlled) << 32)
        + 2 * max(controlling, controlled)
        + (1 if controlling > controlled else 0)
    )


def pairs(local: list[Candidate], remote: list[Candidate], *, controlling: bool) -> list[Pair]:
    """The checklist: compatible pairs, best first, pruned and capped (§6.1.2)."""
    formed = [
        Pair(mine, theirs, _pair_priority(mine, theirs, controlling))
        for mine in local
        for theirs in remote
        if _compatible(mine, theirs)
    ]
    formed.sort(key=lambda p: p.priority, reverse=True)
    return _prune(formed)[:MAX_PAIRS]


def _pair_priority(mine: Candidate, theirs: Candidate, controlling: bool) -> int:
    if controlling:
        return pair_priority(mine.priority, theirs.priority)
    return pair_priority(theirs.priority, mine.priority)


def _compatible(mine: Candidate, theirs: Candidate) -> bool:
    return mine.transport is theirs.transport and _family(mine.address) == _family(theirs.address)


def _family(address: Address) -> int:
    return ipaddress.ip_address(address[0]).version


def _prune(ordered: list[Pair]) -> list[Pair]:
    """Send from the base, not the reflexive address (§6.1.2.4): a server-reflexive
    local candidate becomes its base, and a pair equal to a better one goes."""
    seen: set[tuple[Address, Transport, Address]] = set()
    kept = []
    for pair in ordered:
        local = pair.local
        if local.kind is CandidateKind.SERVER_REFLEXIVE:
            local = _as_host(local)
            pair = Pair(local, pair.remote, pair.priority)
        # A relayed candidate is its own base (§5.1.1.2); the others now are too.
        key = (local.address, local.transport, pair.remote.address)
        if key not in seen:
            seen.add(key)
            kept.append(pair)
    return kept


def _as_host(reflexive: Candidate) -> Candidate:
    return candidate(CandidateKind.HOST, reflexive.transport, reflexive.base)


class Role(Enum):
    """What a candidate's kind says about the path: a host address, an address a
    NAT made (server- or peer-reflexive), or a TURN relay."""

    HOST = "host"
    REFLEXIVE = "reflexive"
    RELAY = "relay"


ROLES = {
    CandidateKind.HOST: Role.HOST,
    CandidateKind.SERVER_REFLEXIVE: Role.REFLEXIVE,
    CandidateKind.PEER_REFLEXIVE: Role.REFLEXIVE,
    CandidateKind.RELAY: Role.RELAY,
}

_UDP, _TCP = Transport.UDP, Transport.TCP
_HOST, _NAT, _RELAY = Role.HOST, Role.REFLEXIVE, Role.RELAY

PATH_KINDS: dict[tuple[Transport, Role, Role], PathKind] = {
    # (transport, our end, their end): the path kind.
    (_UDP, _HOST, _HOST): PathKind.DIRECT_UDP,  # same network, or both public
    (_UDP, _HOST, _NAT): PathKind.PUNCHED_UDP,
    (_UDP, _NAT, _HOST): PathKind.PUNCHED_UDP,
    (_UDP, _NAT, _NAT): PathKind.PUNCHED_UDP,
    (_UDP, _HOST, _RELAY): PathKind.RELAY_UDP,
    (_UDP, _NAT, _RELAY): PathKind.RELAY_UDP,
    (_UDP, _RELAY, _HOST): PathKind.RELAY_UDP,
    (_UDP, _RELAY, _NAT): PathKind.RELAY_UDP,
    (_UDP, _RELAY, _RELAY): PathKind.RELAY_UDP,
    # TCP is not punched here: without a relay it is direct, whatever the kinds.
    (_TCP, _HOST, _HOST): PathKind.DIRECT_TCP,
    (_TCP, _HOST, _NAT): PathKind.DIRECT_TCP,
    (_TCP, _NAT, _HOST): PathKind.DIRECT_TCP,
    (_TCP, _NAT, _NAT): PathKind.DIRECT_TCP,
    # A relayed candidate's transport is the one its TURN client speaks to the relay.
    (_TCP, _HOST, _RELAY): PathKind.RELAY_TCP,
    (_TCP, _NAT, _RELAY): PathKind.RELAY_TCP,
    (_TCP, _RELAY, _HOST): PathKind.RELAY_TCP,
    (_TCP, _RELAY, _NAT): PathKind.RELAY_TCP,
    (_TCP, _RELAY, _RELAY): PathKind.RELAY_TCP,
}
"""Every pair of candidate roles on each transport, and the path kind it makes."""


def path_kind(local: Candidate, remote: Candidate) -> PathKind:
    """Which of our path kinds a working pair is: a row of :data:`PATH_KINDS`.

    A pair's two candidates share a transport (see :func:`pairs`); the local
    one's is taken.
    """
    return PATH_KINDS[local.transport, ROLES[local.kind], ROLES[remote.kind]]

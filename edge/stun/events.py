"""Events the STUN cores emit; the application drains them with ``next_event()``."""

from dataclasses import dataclass
from enum import Enum, IntEnum

from edge.sansio import Address
from edge.stun.codec import Method


class Failure(IntEnum):
    """:attr:`BindingFailed.code` and :attr:`TurnFailed.code` values that are not STUN
    error codes (those are 300-699)."""

    TIMEOUT = 0
    """No response came within the retransmission schedule (RFC 8489 §6.2.1)."""
    BAD_RESPONSE = 1
    """A matching response could not be used: no mapped address, or an unknown
    comprehension-required attribute (RFC 8489 §6.3.3, §6.3.4)."""


@dataclass(frozen=True)
class BindingResult:
    """A Binding transaction succeeded: the server saw us at ``mapped``.

    ``rtt`` is measured from the last transmission of the request; when
    ``attempts`` is above 1 it is ambiguous and must not feed an RTO estimate
    (Karn's rule, RFC 8489 §6.2.1).
    """

    mapped: Address
    """XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from a server that sent only that."""
    other_address: Address | None
    """OTHER-ADDRESS (RFC 5780 §7.4): the server's alternate address and port."""
    response_origin: Address | None
    """RESPONSE-ORIGIN (RFC 5780 §7.3): where the server says it answered from."""
    rtt: float
    source: Address
    """The address the response actually came from."""
    attempts: int = 1
    """How many times the request was sent."""


@dataclass(frozen=True)
class BindingFailed:
    """A Binding transaction ended without a mapped address.

    ``code`` is the STUN error code of an error response (300-699), or a
    :class:`Failure`. With 420, ``unknown`` lists the attribute types the
    server did not understand (UNKNOWN-ATTRIBUTES).
    """

    code: int
    reason: str
    unknown: tuple[int, ...] = ()


# --- the TURN client (edge.stun.turnclient) -----------------------------------------


@dataclass(frozen=True)
class AllocationSucceeded:
    """The TURN server relays for us at ``relayed`` for ``lifetime`` seconds (RFC 8656 §7.3).

    The client refreshes the allocation by itself from now on; ask for
    permissions and channels next.
    """

    relayed: Address
    """XOR-RELAYED-ADDRESS: where peers send to reach us."""
    mapped: Address | None
    """XOR-MAPPED-ADDRESS: our address as the server saw it, if it said."""
    lifetime: int
    """Seconds granted by the server, which may differ from what was asked."""


@dataclass(frozen=True)
class AllocationRefreshed:
    """A Refresh succeeded (RFC 8656 §8.3): the allocation lasts ``lifetime`` seconds more."""

    lifetime: int


@dataclass(frozen=True)
class AllocationClosed:
    """The server deleted the allocation at our request (Refresh with LIFETIME 0, §8.3)."""


@dataclass(frozen=True)
class PermissionCreated:
    """The server now relays to and from ``peer``'s IP address (RFC 8656 §10.3).

    Sent once per permission; its refreshes are silent.
    """

    peer: Address


@dataclass(frozen=True)
class ChannelBound:
    """``channel`` now carries data to and from ``peer`` as ChannelData (RFC 8656 §12.3)."""

    peer: Address
    channel: int


@dataclass(frozen=True)
class DataReceived:
    """``peer`` sent ``data`` to our relayed address.

    ``channel`` is the channel number when it came as ChannelData, None when it
    came in a Data indication (RFC 8656 §11.6, §12.6).
    """

    peer: Address
    data: bytes
    channel: int | None = None


@dataclass(frozen=True)
class TurnFailed:
    """A TURN request failed for good.

    ``code`` is the STUN error code of the final error response (300-699), or
    a :class:`Failure`. When ``method`` is ALLOCATE or REFRESH the allocation
    is gone (or was never made) and the client is closed; a failed
    CREATE_PERMISSION or CHANNEL_BIND names its ``peer``, whose permission or
    channel the client has forgotten, and the allocation goes on.
    """

    code: int
    reason: str
    method: Method
    peer: Address | None = None


TurnClientEvent = (
    AllocationSucceeded
    | AllocationRefreshed
    | AllocationClosed
    | PermissionCreated
    | ChannelBound
    | DataReceived
    | TurnFailed
)
"""Every event :class:`~edge.stun.turnclient.TurnClient` emits."""


# --- the connectivity self-test (edge.stun.nat) -------------------------------------


class MappingBehaviour(Enum):
    """How a NAT maps one local address to public ones (RFC 4787 §4.1, RFC 5780 §4.3)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    """The same public address whatever the destination (also: no NAT at all)."""
    ADDRESS_DEPENDENT = "address-dependent"
    """A new public address for each destination IP."""
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    """A new public address for each destination IP and port."""
    UNKNOWN = "unknown"
    """Not measured: no answer to test I, no alternate address, or no answer from it."""


class FilteringBehaviour(Enum):
    """What a NAT or firewall lets in to a mapping (RFC 4787 §5, RFC 5780 §4.4)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    """Anyone may send to the mapping once it exists."""
    ADDRESS_DEPENDENT = "address-dependent"
    """Only IPs the client has sent to."""
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    """Only IP and port pairs the client has sent to."""
    UNKNOWN = "unknown"
    """Not measured: no answer to test I, or a server that cannot change its address."""


@dataclass(frozen=True)
class NatReport:
    """What the connectivity self-test ("Am I X?") found behind one local socket.

    :attr:`classification` sums it up in one word for a status line.
    """

    server: Address
    """The RFC 5780 server asked (its primary address)."""
    reflexive: Address | None
    """Our address as the server saw it (test I), or None without an answer."""
    mapping: MappingBehaviour
    filtering: FilteringBehaviour
    udp_blocked: bool
    """Test I got no answer at all after every retransmission."""
    nat_present: bool | None
    """False when the reflexive address is the local one; None when unknown."""
    other_address: Address | None = None
    """The server's alternate address and port (OTHER-ADDRESS), when it sent one."""
    note: str = ""
    """Why something is unknown, for a log line; empty when everything was measured."""

    @property
    def classification(self) -> str:
        """One word from RFC 3489's vocabulary, mapped from RFC 5780's behaviours:

        * ``udp-blocked``: no answer to test I;
        * ``symmetric``: address-dependent or address-and-port-dependent mapping
          (a peer cannot reuse the address the server saw);
        * with endpoint-independent mapping (or no NAT), by filtering:
          endpoint-independent is ``open`` without a NAT and ``full-cone`` behind
          one, address-dependent is ``restricted``, address-and-port-dependent is
          ``port-restricted`` (with no NAT these are a firewall's filtering, which
          peers meet just the same);
        * ``unknown`` when a behaviour the answer needs was not measured.
        """
        if self.udp_blocked:
            return "udp-blocked"
        if self.mapping in _SYMMETRIC:
            return "symmetric"
        if self.mapping is MappingBehaviour.UNKNOWN:
            return "unknown"
        if self.filtering is FilteringBehaviour.ENDPOINT_INDEPENDENT:
            return "full-cone" if self.nat_present else "open"
        return _BY_FILTERING[self.filtering]


_SYMMETRIC = frozenset(
    {MappingBehaviour.ADDRESS_DEPENDENT, MappingBehaviour.ADDRESS_AND_PORT_DEPENDENT}
)
_BY_FILTERING = {
    FilteringBehaviour.ADDRESS_DEPENDENT: "restricted",
    FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT: "port-restricted",
    FilteringBehaviour.UNKNOWN: "unknown",
}

"""Events the STUN cores emit; the application drains them with ``next_event()``."""

from dataclasses import dataclass
from enum import IntEnum

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

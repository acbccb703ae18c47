"""Events the STUN cores emit; the application drains them with ``next_event()``."""

from dataclasses import dataclass
from enum import IntEnum

from edge.sansio import Address


class Failure(IntEnum):
    """:attr:`BindingFailed.code` values that are not STUN error codes (those are 300-699)."""

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

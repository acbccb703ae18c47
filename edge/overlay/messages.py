"""The DHT's requests and replies, as frozen dataclasses.

Kademlia's four RPCs (section 2.3): PING, STORE, FIND_NODE and FIND_VALUE.
These are the in-memory forms the sans-IO cores speak; their wire declarations
(edge/wire) come later and will map one to one onto these classes. The sender
of a request is not a field: it is the peer the secure session authenticated,
whose node id is the hash of its proved static key.
"""

from dataclasses import dataclass

from edge.sansio import Address
from edge.wire.codes import ErrorCode
from edge.wire.messages import LOAD_UNKNOWN


@dataclass(frozen=True)
class Contact:
    """A node as others know it: its id and where it listens."""

    node_id: int
    address: Address


@dataclass(frozen=True)
class Ping:
    """Are you alive? Answered with :class:`Pong`."""


@dataclass(frozen=True)
class FindNode:
    """Send me the k nodes you know closest to ``key``; answered with :class:`Nodes`."""

    key: int


@dataclass(frozen=True)
class FindValue:
    """Send me the records under ``key`` or, lacking them, :class:`Nodes`."""

    key: int


@dataclass(frozen=True)
class StoreRecord:
    """Keep ``record`` under ``key``; answered with :class:`Stored`."""

    key: int
    record: bytes


Request = Ping | FindNode | FindValue | StoreRecord


@dataclass(frozen=True)
class Pong:
    """I am alive, and this full (percent of capacity, or :data:`LOAD_UNKNOWN`)."""

    load: int = LOAD_UNKNOWN


@dataclass(frozen=True)
class Nodes:
    """The closest nodes to the asked key that the replier knows."""

    contacts: tuple[Contact, ...]


@dataclass(frozen=True)
class Values:
    """The records held under the asked key (FIND_VALUE only)."""

    records: tuple[bytes, ...]


@dataclass(frozen=True)
class Stored:
    """The outcome of a STORE: ``OK``, or the code of the refusal."""

    code: ErrorCode


Reply = Pong | Nodes | Values | Stored

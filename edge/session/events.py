"""Events the session cores emit; the application drains them with ``next_event()``."""

from dataclasses import dataclass

from edge.crypto.cert import Certificate
from edge.sansio import Address
from edge.session.errors import SessionUnusable
from edge.wire.codes import ErrorCode
from edge.wire.messages import Message


@dataclass(frozen=True)
class SessionEstablished:
    """Both sides proved their keys and certificates; ``send`` works from now on."""

    index: int
    address: Address
    peer: Certificate | None
    """None only where the session allowed a peer without a certificate."""
    initiator: bool
    remote_static: bytes = b""
    """The peer's Noise static key, proved by the handshake."""
    handshake_hash: bytes = b""
    """Noise's h at the end of the handshake: binds signatures to this session."""

    @property
    def certified_peer(self) -> Certificate:
        """The peer's certificate, where the session required one."""
        if self.peer is None:
            raise SessionUnusable("this session's peer presented no certificate")
        return self.peer


@dataclass(frozen=True)
class MessageReceived:
    """An authenticated, decrypted message from an established session."""

    index: int
    message: Message


@dataclass(frozen=True)
class MediaReceived:
    """A media frame, parsed on the fast path (no construct) for the jitter buffer."""

    index: int
    stream_id: int
    codec: int
    flags: int
    sequence: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True)
class PeerMoved:
    """An authenticated packet came from a new address (NAT rebinding, roaming)."""

    index: int
    address: Address


@dataclass(frozen=True)
class SessionFailed:
    """A session we started or held has ended without a close from our side."""

    index: int
    address: Address
    code: ErrorCode
    reason: str

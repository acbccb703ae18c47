"""One Noise handshake whose payloads carry certificates.

The driver knows nothing of addresses, indices or transports: it turns Noise
messages into Noise messages and, at the end, a verified peer certificate and
the two transport keys. Both datagram and stream sessions use it.

Which payload carries what:

* Each side puts its certificate in the first message it writes whose payload
  is encrypted: XX message 2 (responder) and 3 (initiator), IK message 1
  (initiator) and 2 (responder). XX message 1 is sent in clear, so it carries
  nothing but the timestamp.
* The certificate must name the very X25519 key the peer used as its Noise
  static key: Noise proves possession, the certificate proves whose key it is.
* The prologue binds the protocol version and the pattern, so a man in the
  middle cannot make the two sides disagree on either without failing.
"""

from collections import OrderedDict
from dataclasses import dataclass

from edge.crypto.cert import Certificate, TrustStore
from edge.crypto.errors import HandshakeError, ReplayError
from edge.crypto.keys import DeviceKeys
from edge.crypto.noise import HandshakeState
from edge.session.errors import HandshakeRejected
from edge.wire.codes import PROTOCOL_VERSION, NoisePattern
from edge.wire.messages import build_handshake_payload, parse_handshake_payload


@dataclass(frozen=True)
class Identity:
    """What a node proves about itself in every handshake."""

    keys: DeviceKeys
    certificate: bytes


class ReplayGuard:
    """Refuses an IK first message seen before, across every session of a node.

    IK's first message carries the initiator's identity and can be replayed
    verbatim by anyone who saw it; its timestamp must be newer than the last
    one accepted from the same static key. The memory is an LRU of bounded
    size, shared by all sessions of a socket or a server.
    """

    def __init__(self, memory: int = 4096) -> None:
        self._memory = memory
        self._newest: OrderedDict[bytes, int] = OrderedDict()

    def check(self, remote_static: bytes, timestamp_ms: int) -> None:
        last = self._newest.get(remote_static)
        if last is not None and timestamp_ms <= last:
            raise ReplayError("IK initiation replayed (timestamp not newer than the last one)")
        self._newest[remote_static] = timestamp_ms
        self._newest.move_to_end(remote_static)
        while len(self._newest) > self._memory:
            self._newest.popitem(last=False)


def prologue(pattern: NoisePattern) -> bytes:
    return b"edge/%d %s" % (PROTOCOL_VERSION, pattern.name.encode("ascii"))


class HandshakeDriver:
    """Runs one handshake; call :meth:`write` when ``is_my_turn``, else :meth:`read`."""

    def __init__(
        self,
        identity: Identity,
        trust: TrustStore,
        pattern: NoisePattern,
        *,
        initiator: bool,
        remote_static: bytes | None = None,
        expect_user: str | None = None,
        replay_guard: ReplayGuard | None = None,
        require_certificate: bool = True,
        pinned_static: bytes | None = None,
    ) -> None:
        """``require_certificate=False`` lets a peer without a certificate in (the login
        server's enrolling devices: the application authenticates them inside the
        session). ``pinned_static``: the peer's Noise static key must be exactly this
        (a device pins its login server's key)."""
        self.pattern = pattern
        self._require_certificate = require_certificate
        self._pinned_static = pinned_static
        self._replay_guard = replay_guard
        self.initiator = initiator
        self._identity = identity
        self._trust = trust
        self._expect_user = expect_user
        self._hs = HandshakeState(
            pattern.name,
            initiator,
            prologue=prologue(pattern),
            s=identity.keys.dh,
            rs=remote_static,
        )
        self._sent_certificate = False
        self._messages_written = 0
        self.peer: Certificate | None = None
        self.peer_timestamp_ms = 0

    @property
    def is_my_turn(self) -> bool:
        return not self._hs.is_finished and self._hs.is_my_turn

    @property
    def is_finished(self) -> bool:
        return self._hs.is_finished

    @property
    def state(self) -> HandshakeState:
        return self._hs

    def write(self, wall: float) -> bytes:
        """Our next handshake message, with our certificate when it can be hidden."""
        carry = (
            bool(self._identity.certificate)
            and not self._sent_certificate
            and self._payload_is_encrypted()
        )
        payload = build_handshake_payload(
            {
                "certificate": self._identity.certificate if carry else b"",
                "timestamp_ms": int(wall * 1000),
                "features": 0,
            }
        )
        message = self._hs.write_message(payload)
        self._sent_certificate |= carry
        self._messages_written += 1
        if self._hs.is_finished:
            self._require_peer()
        return message

    def read(self, message: bytes, wall: float) -> None:
        """Take the peer's handshake message; verify any certificate it carries."""
        payload = parse_handshake_payload(self._hs.read_message(message))
        self._check_pinned()
        self.peer_timestamp_ms = payload.timestamp_ms
        self._guard_replay(payload.timestamp_ms)
        if payload.certificate:
            self._accept_certificate(bytes(payload.certificate), wall)
        if self._hs.is_finished:
            self._require_peer()

    def _check_pinned(self) -> None:
        remote = self._hs.remote_static
        if self._pinned_static is not None and remote is not None and remote != self._pinned_static:
            raise HandshakeRejected(
                f"peer's Noise key {remote.hex()[:16]}... is not the pinned "
                f"{self._pinned_static.hex()[:16]}..."
            )

    def _guard_replay(self, timestamp_ms: int) -> None:
        if self._replay_guard is None or self.initiator or self.pattern is not NoisePattern.IK:
            return
        remote = self._hs.remote_static
        assert remote is not None, "IK message 1 carries the initiator's static key"
        self._replay_guard.check(remote, timestamp_ms)

    def _payload_is_encrypted(self) -> bool:
        # Only XX's first message goes out before any DH has keyed the cipher.
        return not (
            self.pattern is NoisePattern.XX and self.initiator and self._messages_written == 0
        )

    def _accept_certificate(self, raw: bytes, wall: float) -> None:
        if self.peer is not None:
            raise HandshakeRejected("peer sent its certificate twice")
        remote = self._hs.remote_static
        if remote is None:
            raise HandshakeError("certificate arrived before the peer's static key")
        self.peer = self._trust.verify(raw, wall, dh_key=remote, user_id=self._expect_user)

    def _require_peer(self) -> None:
        if self.peer is None and self._require_certificate and self._pinned_static is None:
            raise HandshakeRejected("handshake finished without the peer's certificate")

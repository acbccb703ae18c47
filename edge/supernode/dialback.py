"""Dial-back tests: a supernode checks that a client can be reached unsolicited.

Theory of operation
-------------------
A client may become a supernode only when supernodes other than itself have
reached it from outside (the seed's supernodes have a public address;
"verified, not self-reported"). The test, run by :class:`DialbackService`
on the supernode, over the client's Noise session and one spare UDP socket::

    client                                        supernode
    DIALBACK_REQUEST (request_id, port P)  ->     (inside the session)
                 <-  DIALBACK_PROBE (nonce, key id)  from the *probe socket*,
                                                     in clear, to (session IP, P)
    DIALBACK_CONFIRM (request_id, nonce)   ->     (inside the session)
                 <-  DIALBACK_RESULT (reachable, observed, attestation)

The probe leaves from a socket that the client's session has never talked to,
so a NAT mapping or firewall state opened by the session does not let it in:
it arrives only where unsolicited traffic does, which is what a supernode
needs. It goes to the IP the session comes from and nowhere else, is smaller
than the request, and is never answered on the path it came by (the nonce
comes back inside the authenticated session), so nobody can aim it at a third
party or use it to amplify. Each device may start one test per
``DialbackLimits.interval`` (60 s); at most ``max_pending`` tests run at once
and at most ``max_devices`` devices are remembered for the rate limit (BUSY
beyond either). A test ends in exactly one of:

============================  ===========================================
what happens                  DIALBACK_RESULT
============================  ===========================================
the right nonce, in time      reachable, with a signed attestation
a wrong nonce                 unreachable (one try: the test is over)
no confirm by ``timeout``     unreachable, sent by :meth:`handle_timer`
confirm for no running test   unreachable, observed none (late or unknown)
============================  ===========================================

The attestation is a ``DialbackAttestation`` (declared in
:mod:`edge.wire.messages`): the client's user and device ids, the observed
address, this supernode's public address, the time, and this supernode's
certificate, signed by this supernode's Ed25519 key (the one its certificate
certifies) after :data:`~edge.wire.messages.DIALBACK_CONTEXT`. The client
keeps those it gets from supernodes on different IP addresses and shows them
when it asks to serve as a supernode; :func:`verify_attestation` is how anyone
checks one.

Sans-IO: the adapter hands in decoded messages with the session they came
from (:class:`Requester`) and ``now`` (monotonic seconds; Unix time is ``now
+ wall_offset``), sends what :meth:`DialbackService.next_action` gives it
(:class:`SendProbe` from the probe socket, :class:`SendResult` in a session),
and calls :meth:`~DialbackService.handle_timer` at
:meth:`~DialbackService.get_timer`. Randomness for nonces comes from
``token`` (``os.urandom`` unless a test gives another).
"""

import hmac
import os
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from nacl.signing import SigningKey

from edge.crypto.cert import Certificate, TrustStore
from edge.crypto.errors import CertificateError
from edge.crypto.keys import key_id
from edge.crypto.signing import verify_or_raise
from edge.errors import LocalError
from edge.sansio import Address
from edge.supernode.errors import (
    AttestationBadSignature,
    AttestationCertificateRefused,
    AttestationSignerRefused,
    AttestationStale,
    AttestationWrongClient,
    MalformedAttestation,
    SupernodeIdentityError,
)
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.errors import WireError
from edge.wire.messages import (
    DIALBACK_CONTEXT,
    DIALBACK_NONCE_SIZE,
    Message,
    build_dialback_tbs,
    encode,
    parse_certificate,
    parse_dialback_attestation,
)

ATTESTATION_VERSION: Final = 1
ATTESTATION_MAX_AGE: Final = 24 * 3600.0
"""Seconds an attestation counts after it was signed: reachability changes with networks."""

SIGNATURE_SIZE: Final = 64


@dataclass(frozen=True)
class DialbackLimits:
    """Timing and caps of the supernode's side of dial-back tests."""

    timeout: float = 5.0
    """Seconds from sending a probe to giving up on its confirm."""
    interval: float = 60.0
    """Seconds between two tests of one device."""
    max_pending: int = 256
    """Tests running at once, from all clients together."""
    max_devices: int = 4096
    """Devices remembered for the rate limit; beyond it new devices are told BUSY."""

    def __post_init__(self) -> None:
        if not 0 < self.timeout <= self.interval:
            raise LocalError(f"dial-back: need 0 < timeout ({self.timeout}) <= interval")
        if self.max_pending < 1 or self.max_devices < self.max_pending:
            raise LocalError("dial-back: need 1 <= max_pending <= max_devices")


@dataclass(frozen=True)
class Requester:
    """The session a dial-back message came in, as the adapter knows it."""

    index: int
    user_id: str
    """From the session peer's verified certificate."""
    device_id: str
    address: Address
    """The session's current address: the probe goes to its IP."""


# -- actions for the adapter


@dataclass(frozen=True)
class SendProbe:
    """Send ``datagram`` from the probe socket (never the main one) to ``address``."""

    datagram: bytes
    address: Address


@dataclass(frozen=True)
class SendResult:
    """Send a DIALBACK_RESULT with :meth:`body` in session ``index``."""

    index: int
    request_id: int
    code: ErrorCode
    reachable: bool = False
    observed: Address | None = None
    attestation: bytes = b""

    def body(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "code": self.code,
            "reachable": self.reachable,
            "observed": self.observed,
            "attestation": self.attestation,
        }


@dataclass(frozen=True)
class _Test:
    index: int
    request_id: int
    nonce: bytes
    observed: Address
    deadline: float


_Device = tuple[str, str]

HANDLERS: dict[MsgType, str] = {
    MsgType.DIALBACK_REQUEST: "_on_request",
    MsgType.DIALBACK_CONFIRM: "_on_confirm",
}
"""The messages a supernode takes from clients, and the method for each."""


class DialbackService:
    """The supernode's side of dial-back tests; see the module docstring."""

    def __init__(
        self,
        sign: SigningKey,
        certificate: bytes,
        address: Address,
        *,
        limits: DialbackLimits | None = None,
        wall_offset: float = 0.0,
        token: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``certificate`` must certify ``sign``; ``address`` is this supernode's
        public address, where its clients reach it (it goes into attestations)."""
        _check_certifies(certificate, bytes(sign.verify_key))
        self._sign = sign
        self._certificate = bytes(certificate)
        self.address = address
        self.key_id = key_id(bytes(sign.verify_key))
        self.limits = limits or DialbackLimits()
        self.wall_offset = wall_offset
        self._token = token
        self._pending: dict[_Device, _Test] = {}
        """Running tests, earliest deadline first (one timeout for all)."""
        self._last: dict[_Device, float] = {}
        """When each device last started a test, oldest first."""
        self._actions: deque[SendProbe | SendResult] = deque()
        self.counts: Counter[str] = Counter()
        """``request``, ``probe``, ``rate-limited``, ``busy``, ``confirm``, ``reachable``,
        ``wrong-nonce``, ``timeout``, ``late``."""

    def receive(self, who: Requester, message: Message, now: float) -> None:
        """Take a DIALBACK_REQUEST or DIALBACK_CONFIRM from session ``who``."""
        handler = HANDLERS.get(message.type)
        if handler is None:
            raise LocalError(f"dial-back: {message.type.name} is not a dial-back message")
        getattr(self, handler)(who, message.body, now)

    def next_action(self) -> SendProbe | SendResult | None:
        return self._actions.popleft() if self._actions else None

    def get_timer(self) -> float | None:
        first = next(iter(self._pending.values()), None)
        return None if first is None else first.deadline

    def handle_timer(self, now: float) -> None:
        """End the tests whose confirm has not come in time: unreachable."""
        while self._pending:
            device, test = next(iter(self._pending.items()))
            if test.deadline > now:
                break
            del self._pending[device]
            self.counts["timeout"] += 1
            self._result(test.index, test.request_id, observed=test.observed)

    # -- handlers

    def _on_request(self, who: Requester, body: Any, now: float) -> None:
        self.counts["request"] += 1
        self.handle_timer(now)  # a finished test must be answered before its slot is reused
        device = (who.user_id, who.device_id)
        self._forget_before(now - self.limits.interval)
        refusal = self._refusal(device)
        if refusal is not None:
            self.counts[refusal.name.lower().replace("_", "-")] += 1
            self._actions.append(SendResult(who.index, body.request_id, refusal))
            return
        nonce = self._token(DIALBACK_NONCE_SIZE)
        observed = (who.address[0], body.port)
        self._pending[device] = _Test(
            who.index, body.request_id, nonce, observed, now + self.limits.timeout
        )
        self._last[device] = now
        probe = {"nonce": nonce, "supernode_key_id": self.key_id}
        self.counts["probe"] += 1
        self._actions.append(SendProbe(encode(MsgType.DIALBACK_PROBE, probe), observed))

    def _refusal(self, device: _Device) -> ErrorCode | None:
        if device in self._last:
            return ErrorCode.RATE_LIMITED
        if len(self._pending) >= self.limits.max_pending:
            return ErrorCode.BUSY
        if len(self._last) >= self.limits.max_devices:
            return ErrorCode.BUSY
        return None

    def _forget_before(self, since: float) -> None:
        # Tests start in time order, so the oldest start is first.
        while self._last:
            device, started = next(iter(self._last.items()))
            if started > since:
                break
            del self._last[device]

    def _on_confirm(self, who: Requester, body: Any, now: float) -> None:
        self.counts["confirm"] += 1
        self.handle_timer(now)  # a test past its deadline ends as a timeout, answered once
        device = (who.user_id, who.device_id)
        test = self._pending.get(device)
        if test is None or test.request_id != body.request_id:
            # Over already (timed out, answered) or never started: the client
            # hears "unreachable" again, nothing is kept.
            self.counts["late"] += 1
            self._result(who.index, body.request_id)
            return
        del self._pending[device]
        if not hmac.compare_digest(bytes(body.nonce), test.nonce):
            self.counts["wrong-nonce"] += 1
            self._result(who.index, test.request_id, observed=test.observed)
            return
        self.counts["reachable"] += 1
        attestation = sign_attestation(
            self._sign,
            self._certificate,
            user_id=who.user_id,
            device_id=who.device_id,
            observed=test.observed,
            supernode=self.address,
            issued_at=int(now + self.wall_offset),
        )
        self._actions.append(
            SendResult(who.index, test.request_id, ErrorCode.OK, True, test.observed, attestation)
        )

    def _result(self, index: int, request_id: int, *, observed: Address | None = None) -> None:
        self._actions.append(SendResult(index, request_id, ErrorCode.OK, False, observed))


def _check_certifies(certificate: bytes, sign_public: bytes) -> None:
    try:
        named = bytes(parse_certificate(certificate).tbs.sign_key)
    except WireError as exc:
        raise SupernodeIdentityError(f"dial-back: not a certificate: {exc}") from None
    if named != sign_public:
        raise SupernodeIdentityError("dial-back: the certificate certifies another signing key")


# -- attestations


@dataclass(frozen=True)
class Attestation:
    """A verified DialbackAttestation: ``signer`` reached ``observed`` at ``issued_at``."""

    user_id: str
    device_id: str
    observed: Address
    supernode: Address
    """Where the attesting supernode said it takes clients."""
    issued_at: int
    signer: Certificate
    raw: bytes

    @property
    def signer_ip(self) -> str:
        return self.supernode[0]


def sign_attestation(
    sign: SigningKey,
    certificate: bytes,
    *,
    user_id: str,
    device_id: str,
    observed: Address,
    supernode: Address,
    issued_at: int,
) -> bytes:
    """A DialbackAttestation's bytes, signed with ``sign`` (which ``certificate`` certifies)."""
    tbs = build_dialback_tbs(
        {
            "version": ATTESTATION_VERSION,
            "user_id": user_id,
            "device_id": device_id,
            "observed": observed,
            "supernode": supernode,
            "issued_at": issued_at,
            "certificate": certificate,
        }
    )
    return tbs + sign.sign(DIALBACK_CONTEXT + tbs).signature


def verify_attestation(
    raw: bytes,
    trust: TrustStore,
    now: float,
    *,
    user_id: str,
    device_id: str,
    max_age: float = ATTESTATION_MAX_AGE,
    accept_signer: Callable[[Certificate], bool] | None = None,
) -> Attestation:
    """Check ``raw``, shown by device ``device_id`` of ``user_id``, at Unix time ``now``.

    The checks, in order, each raising its
    :class:`~edge.supernode.errors.AttestationRefused` subclass: the format;
    the signer's certificate, as it stood at ``issued_at`` (revocation as held
    now); the signature; the client it names; its age (not ahead of ``now``
    beyond the trust store's skew, not older than ``max_age``); and, when
    given, ``accept_signer``, the verifier's own test that the signer is a
    supernode (a member of the overlay it knows), since certificates do not
    say which devices serve as supernodes.
    """
    attestation = _parse(bytes(raw))
    cert = _signer(attestation, trust)
    verify_or_raise(
        cert.sign_key,
        DIALBACK_CONTEXT + attestation.raw[:-SIGNATURE_SIZE],
        attestation.raw[-SIGNATURE_SIZE:],
        lambda: AttestationBadSignature(
            f"dial-back attestation: signature does not verify with the signing key of "
            f"certificate serial {cert.serial}"
        ),
    )
    if (attestation.user_id, attestation.device_id) != (user_id, device_id):
        raise AttestationWrongClient(
            f"dial-back attestation is about {attestation.user_id!r}/{attestation.device_id!r}, "
            f"shown by {user_id!r}/{device_id!r}"
        )
    _check_age(attestation.issued_at, now, trust.skew, max_age)
    if accept_signer is not None and not accept_signer(cert):
        raise AttestationSignerRefused(
            f"dial-back attestation signed by {cert.user_id!r}/{cert.device_id!r}, "
            "not a supernode known here"
        )
    return Attestation(
        attestation.user_id,
        attestation.device_id,
        attestation.observed,
        attestation.supernode,
        attestation.issued_at,
        cert,
        attestation.raw,
    )


@dataclass(frozen=True)
class _Parsed:
    user_id: str
    device_id: str
    observed: Address
    supernode: Address
    issued_at: int
    certificate: bytes
    raw: bytes


def _parse(raw: bytes) -> _Parsed:
    try:
        tbs = parse_dialback_attestation(raw).tbs
    except WireError as exc:
        raise MalformedAttestation(f"dial-back attestation: {exc}") from None
    return _Parsed(
        tbs.user_id,
        tbs.device_id,
        (tbs.observed[0], tbs.observed[1]),
        (tbs.supernode[0], tbs.supernode[1]),
        tbs.issued_at,
        bytes(tbs.certificate),
        raw,
    )


def _signer(attestation: _Parsed, trust: TrustStore) -> Certificate:
    try:
        return trust.verify(attestation.certificate, attestation.issued_at)
    except WireError as exc:
        raise MalformedAttestation(f"dial-back attestation, certificate: {exc}") from None
    except CertificateError as exc:
        raise AttestationCertificateRefused(
            f"dial-back attestation, signer's certificate checked at its issued_at: {exc}",
            code=exc.code,
        ) from exc


def _check_age(issued_at: int, now: float, skew: float, max_age: float) -> None:
    if issued_at > now + skew:
        raise AttestationStale(f"dial-back attestation issued at {issued_at}, now is {int(now)}")
    if now - issued_at > max_age:
        raise AttestationStale(
            f"dial-back attestation issued at {issued_at} is more than {int(max_age)} s old"
        )

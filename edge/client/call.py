"""One call on one device, caller or callee: signalling, ICE checks, paths (sans-IO).

Theory of operation
-------------------
A :class:`Call` is fed user actions (:meth:`~Call.invite`, :meth:`~Call.answer`,
:meth:`~Call.reject`, :meth:`~Call.hangup`), the call signalling that arrives
through the end-to-end session (:meth:`~Call.receive`), what the owner's sockets
saw (:meth:`~Call.check_result`, :meth:`~Call.check_received`,
:meth:`~Call.media_received`, :meth:`~Call.keepalive_received`) and the time
(:meth:`~Call.handle_timer` at :meth:`~Call.get_timer`). It answers with
actions (:meth:`~Call.next_action`): :class:`SendSignal` (a CALL_* or
PATH_UPDATE body for the session), :class:`SendCheck` (a STUN Binding check on
a pair: :meth:`Call.build_check` makes its bytes) and :class:`UsePath` (send
media on this pair from now on); and with events (:meth:`~Call.next_event`):
:class:`CallStateChanged`, :class:`PathChanged`, :class:`RemoteAlerting`.

The call's life is the table :data:`TRANSITIONS`::

    IDLE --invite()--> INVITING --CALL_ACCEPT--> CONNECTING --nominated--> ACTIVE
    IDLE --CALL_INVITE--> RINGING --answer()--> CONNECTING
    any state but ENDED --the call ends--> ENDED (with one EndReason)

How each :class:`EndReason` comes about, and from which states:

=============  ======================================================================
hang-up        hangup() or CALL_BYE NORMAL, in CONNECTING or ACTIVE
rejected       reject() or hangup() while RINGING; CALL_REJECT DECLINED while INVITING
busy           reject(BUSY) while RINGING; CALL_REJECT BUSY (a device in a call sends it)
no-answer      nobody answered within ``no_answer_timeout`` (30 s): INVITING or RINGING
cancelled      the caller hung up before an answer (CALL_BYE CANCELLED)
failed         no pair worked within ``connect_timeout``, or every pair failed
path-lost      ACTIVE, and no path carried anything for ``path_lost_timeout``
error          the peer's signalling was unusable (no common codec), or abort()
=============  ======================================================================

Signalling is datagrams inside the session, so loss is handled by repetition,
never by new state (as the session's own handshake does): the caller repeats
CALL_INVITE (1 s, doubling to 4 s) while INVITING; the callee answers each
repeated invite from its state (CALL_RINGING, its CALL_ACCEPT again, or its
final CALL_REJECT / CALL_BYE), and an ended call answers any stray CALL_* with
its final message. INVITING, RINGING and CONNECTING each have a deadline, and
ACTIVE a dead-path timer that leads to one, so a call never hangs: whatever is
lost, it ends or becomes ACTIVE, and an ACTIVE call whose peer has gone ends.

Connectivity (RFC 8445): the caller is controlling, the callee controlled; each
pairs its candidates with the other's (:func:`edge.client.ice.pairs`) and runs a
:class:`~edge.client.checklist.Checklist`. When the caller's checklist
nominates a pair the caller goes ACTIVE on it and sends its consent checks on
it with USE-CANDIDATE; the callee goes ACTIVE on the pair the first such check
(or the caller's media, or its PATH_UPDATE) arrives on. The caller nominates
the first pair that works (``patience`` 0) and goes on checking the better
ones for ``upgrade_window`` (3 s): the first of them to answer takes the call
over, with a PATH_UPDATE. A call so starts as soon as any path works — a relay
that answers in one round trip is not held up by a host pair that never will
— and still ends up on the best path the pair allows. Checks are STUN
Binding requests with short-term credentials: :func:`build_check`,
:func:`answer_check`, :func:`parse_check_response` (RFC 8445 §7).

Consent and path switching (RFC 7675's idea, with shorter times): while
ACTIVE a consent check goes on the active pair every ``consent_interval``
(0.5 s), and a few backup pairs are checked every ``backup_interval`` (1 s).
When nothing — no media, no keepalive, no consent answer — has come on the
active pair for ``dead_after`` (1 s), the call switches at once to the best
backup answered within ``backup_fresh`` and says so with PATH_UPDATE. With no
such backup every pair is checked again, and the first to answer takes over;
if none has for ``path_lost_timeout`` (10 s) the call ends with path-lost.
Each side switches on its own; the callee also follows the caller's
USE-CANDIDATE checks, so the two converge on the caller's choice.

What the owner does (the adapter holding the sockets, TURN clients and session):

1. Send each :class:`SendSignal` through the end-to-end session; feed the
   CALL_* and PATH_UPDATE messages it receives to :meth:`Call.receive`
   (:class:`CallManager` routes them by call id and answers BUSY).
2. For each :class:`SendCheck`, choose a random 12-byte transaction id, send
   :meth:`Call.build_check` from the pair's local base (or through its TURN
   allocation, with a permission for the remote address), and remember id ->
   pair. Answers: :func:`parse_check_response` with
   :attr:`Call.remote_credentials`, then :meth:`Call.check_result`.
3. Answer every STUN request on the media sockets with :meth:`Call.answer_check`
   (the call is the one whose ufrag opens USERNAME), from the socket it came
   to; for a valid one, :meth:`Call.find_pair` then :meth:`Call.check_received`.
4. Send media on the last :class:`UsePath` pair; report media and KEEPALIVEs
   with :meth:`Call.media_received` / :meth:`Call.keepalive_received`.
5. Re-arm one timer at :meth:`Call.get_timer`; once ENDED, stop answering the
   call's checks (that is what tells a peer whose CALL_BYE was lost).

The wire's CallEndReason has no path-lost or error: both travel as FAILED (with
a detail), so the peer of a call that ended path-lost sees failed.

Peer-reflexive candidates (§7.3.1.3): a valid check from an address none of
the peer's candidates names came through a NAT of the peer's that gave it a
new mapping for us — a symmetric NAT does that for every destination — or,
over TCP, on a connection the peer opened to us from a port of its own
(:mod:`edge.client.direct`). The
owner hands it to :meth:`Call.check_from`, which learns the address as a
remote candidate of the kind PEER_REFLEXIVE (with the check's PRIORITY),
pairs it with our candidate the check came to, and checks that pair next: the
peer's check has just opened its NAT for exactly that pair, so a public
device and one behind a symmetric NAT reach each other without a relay.
Checks that come before the peer's candidates do (the caller still waiting
for CALL_ACCEPT) are kept, a few, and taken once the candidates come. At most
:data:`MAX_LEARNED` are learned per call.

Not done: ICE restarts, trickle ICE, and role conflicts beyond refusing them (487).
"""

import hmac
import math
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from edge.client.checklist import Checklist, PairState
from edge.client.errors import CallMisuse, CheckRefused
from edge.client.ice import Candidate, Pair, foundation, pair_priority, pairs, priority
from edge.sansio import Address
from edge.stun.attributes import AttrType
from edge.stun.codec import (
    Class,
    Message,
    Method,
    build,
    check_fingerprint,
    check_integrity,
    parse,
    short_term_key,
)
from edge.stun.errors import IntegrityError
from edge.wire.codes import MsgType
from edge.wire.messages import CallEndReason, CandidateKind, Codec, PathKind, Transport

CALL_ID_SIZE = 16
MAX_CANDIDATES = 16
"""What CALL_INVITE and CALL_ACCEPT carry at most."""
MAX_CODECS = 8
MAX_LEARNED = 8
"""Peer-reflexive candidates a call learns at most (and early checks it keeps)."""
CALL_TYPES = frozenset(
    {
        MsgType.CALL_INVITE,
        MsgType.CALL_RINGING,
        MsgType.CALL_ACCEPT,
        MsgType.CALL_REJECT,
        MsgType.CALL_BYE,
        MsgType.PATH_UPDATE,
    }
)
"""The signalling a Call takes in :meth:`Call.receive`."""


# ---------------------------------------------------------------- states


class CallState(Enum):
    IDLE = "idle"
    INVITING = "inviting"
    """Caller: CALL_INVITE sent, no answer yet (the callee may be alerting)."""
    RINGING = "ringing"
    """Callee: CALL_INVITE received, alerting the user."""
    CONNECTING = "connecting"
    """Accepted; connectivity checks running."""
    ACTIVE = "active"
    """A pair is nominated and media flows on it."""
    ENDED = "ended"


class EndReason(Enum):
    """Why a call ended; see the table in the module docstring."""

    HANGUP = "hang-up"
    REJECTED = "rejected"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    CANCELLED = "cancelled"
    FAILED = "failed"
    PATH_LOST = "path-lost"
    ERROR = "error"


class Trigger(Enum):
    """What moves a call from one :class:`CallState` to another."""

    INVITE = "invite()"
    INVITED = "CALL_INVITE received"
    ACCEPTED = "CALL_ACCEPT received"
    ANSWER = "answer()"
    NOMINATED = "a pair was nominated"
    END = "the call ended"


_S, _T = CallState, Trigger
TRANSITIONS: dict[CallState, dict[Trigger, CallState]] = {
    _S.IDLE: {_T.INVITE: _S.INVITING, _T.INVITED: _S.RINGING, _T.END: _S.ENDED},
    _S.INVITING: {_T.ACCEPTED: _S.CONNECTING, _T.END: _S.ENDED},
    _S.RINGING: {_T.ANSWER: _S.CONNECTING, _T.END: _S.ENDED},
    _S.CONNECTING: {_T.NOMINATED: _S.ACTIVE, _T.END: _S.ENDED},
    _S.ACTIVE: {_T.END: _S.ENDED},
    _S.ENDED: {},
}
"""The call's state machine; a pair missing here is a misuse (CallMisuse)."""

TO_WIRE: dict[EndReason, CallEndReason] = {
    EndReason.HANGUP: CallEndReason.NORMAL,
    EndReason.REJECTED: CallEndReason.DECLINED,
    EndReason.BUSY: CallEndReason.BUSY,
    EndReason.NO_ANSWER: CallEndReason.NO_ANSWER,
    EndReason.CANCELLED: CallEndReason.CANCELLED,
    EndReason.FAILED: CallEndReason.FAILED,
    # The wire has no PATH_LOST or ERROR: both travel as FAILED, the detail says which.
    EndReason.PATH_LOST: CallEndReason.FAILED,
    EndReason.ERROR: CallEndReason.FAILED,
}
FROM_WIRE: dict[CallEndReason, EndReason] = {
    CallEndReason.NORMAL: EndReason.HANGUP,
    CallEndReason.BUSY: EndReason.BUSY,
    CallEndReason.DECLINED: EndReason.REJECTED,
    CallEndReason.NO_ANSWER: EndReason.NO_ANSWER,
    CallEndReason.UNREACHABLE: EndReason.FAILED,
    CallEndReason.FAILED: EndReason.FAILED,
    CallEndReason.CANCELLED: EndReason.CANCELLED,
}


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class CallConfig:
    """Times in seconds. The defaults meet the 2 s lost-audio target: a dead path
    is noticed after ``dead_after`` and a backup answered within ``backup_fresh``
    takes over at once."""

    no_answer_timeout: float = 30.0
    connect_timeout: float = 15.0
    consent_interval: float = 0.5
    dead_after: float = 1.0
    backup_interval: float = 1.0
    backup_fresh: float = 2.5
    path_lost_timeout: float = 10.0
    resend_interval: float = 1.0
    resend_max: float = 4.0
    max_backups: int = 3
    codecs: tuple[Codec, ...] = (Codec.OPUS, Codec.PCMU, Codec.PCMA)
    """What this device plays, preferred first."""
    pacing: float = 0.02
    rto: float = 0.5
    tries: int = 4
    patience: float = 0.0
    """How long the caller waits, after the first pair works, for better ones before it
    nominates; 0: at once, moving up later (``upgrade_window``)."""
    upgrade_window: float = 3.0
    """After nomination, how long the caller goes on checking the pairs better than the
    nominated one, moving the call to the first that works."""

    def __post_init__(self) -> None:
        for name in (
            "no_answer_timeout",
            "connect_timeout",
            "consent_interval",
            "dead_after",
            "backup_interval",
            "backup_fresh",
            "path_lost_timeout",
            "resend_interval",
            "resend_max",
            "pacing",
            "rto",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise CallMisuse(f"{name} must be a finite number > 0, got {value!r}")
        if min(self.patience, self.upgrade_window) < 0 or self.tries < 1:
            raise CallMisuse("patience >= 0, upgrade_window >= 0 and tries >= 1, please")
        if not 0 <= self.max_backups <= 16:
            raise CallMisuse(f"max_backups is 0..16, got {self.max_backups}")
        if self.dead_after <= self.consent_interval:
            raise CallMisuse("dead_after must exceed consent_interval, or one late answer kills")
        if self.path_lost_timeout <= self.dead_after:
            raise CallMisuse("path_lost_timeout must exceed dead_after")
        if not 1 <= len(self.codecs) <= MAX_CODECS:
            raise CallMisuse(f"1 to {MAX_CODECS} codecs, got {len(self.codecs)}")


# ---------------------------------------------------------------- actions and events


@dataclass(frozen=True)
class SendSignal:
    """Send this message to the peer through the end-to-end session."""

    msg_type: MsgType
    body: dict[str, Any]


@dataclass(frozen=True)
class SendCheck:
    """Send a STUN Binding check on ``pair`` (:meth:`Call.build_check` makes it), from
    its local candidate's base (or through its relay) to its remote address, under a
    fresh transaction id; report the answer with :meth:`Call.check_result`."""

    pair: Pair
    attempt: int
    """The try of a setup check (1 to ``tries``); a running count for consent and
    backup checks, which are never repeated (the next one is the repeat)."""
    use_candidate: bool


@dataclass(frozen=True)
class UsePath:
    """Send media (and keepalives) on ``pair`` from now on."""

    pair: Pair
    kind: PathKind


Action = SendSignal | SendCheck | UsePath


@dataclass(frozen=True)
class CallStateChanged:
    call_id: bytes
    old: CallState
    new: CallState
    reason: EndReason | None = None
    """Set when ``new`` is ENDED, and only then."""
    by_peer: bool = False
    """The peer ended it (their CALL_BYE or CALL_REJECT)."""


@dataclass(frozen=True)
class PathChanged:
    call_id: bytes
    kind: PathKind
    rtt: float | None
    """Seconds, from the last answered check on the pair; None if not measured yet."""


@dataclass(frozen=True)
class RemoteAlerting:
    """The callee's device is ringing (CALL_RINGING): play the ringback tone."""

    call_id: bytes


Event = CallStateChanged | PathChanged | RemoteAlerting


# ---------------------------------------------------------------- candidates on the wire


def candidate_to_wire(cand: Candidate) -> dict[str, Any]:
    """A Candidate as CALL_INVITE, CALL_ACCEPT and PATH_UPDATE carry it."""
    related = None if cand.kind is CandidateKind.HOST else cand.base
    return {
        "kind": cand.kind,
        "transport": cand.transport,
        "priority": cand.priority,
        "foundation": cand.foundation,
        "address": cand.address,
        "related": related,
    }


def candidate_from_wire(body: Mapping[str, Any]) -> Candidate:
    address = tuple(body["address"])
    related = body["related"]
    return Candidate(
        CandidateKind(body["kind"]),
        Transport(body["transport"]),
        (str(address[0]), int(address[1])),
        (str(related[0]), int(related[1])) if related is not None else (address[0], address[1]),
        int(body["priority"]),
        int(body["foundation"]),
    )


# ---------------------------------------------------------------- STUN checks (RFC 8445 §7)


@dataclass(frozen=True)
class IceCredentials:
    """An ICE username fragment and password (RFC 8445 §5.3: at least 24 and 128
    random bits); each side sends its own in CALL_INVITE / CALL_ACCEPT."""

    ufrag: str
    pwd: str

    @classmethod
    def generate(cls, random: Callable[[int], bytes] = os.urandom) -> "IceCredentials":
        return cls(random(6).hex(), random(16).hex())


@dataclass(frozen=True)
class CheckRequest:
    """What a valid check told the answering side."""

    transaction_id: bytes
    priority: int
    use_candidate: bool
    controlling: bool
    tiebreaker: int
    username: str


@dataclass(frozen=True)
class CheckResponse:
    """An answer to one of our checks: ``ok`` with the address the peer saw us at, or
    the STUN error code."""

    transaction_id: bytes
    ok: bool
    mapped: Address | None
    error: int | None


def check_priority(pair: Pair) -> int:
    """PRIORITY of a check: what a peer-reflexive candidate learned from it would have
    (RFC 8445 §7.1.1)."""
    return priority(CandidateKind.PEER_REFLEXIVE, pair.local.transport)


def build_check(
    transaction_id: bytes,
    *,
    local: IceCredentials,
    remote: IceCredentials,
    controlling: bool,
    tiebreaker: int,
    priority: int,
    use_candidate: bool = False,
) -> bytes:
    """A Binding request for one pair (RFC 8445 §7.1.1-§7.2.2): USERNAME
    "remote_ufrag:local_ufrag", PRIORITY, ICE-CONTROLLING or -CONTROLLED with the
    tie-breaker, USE-CANDIDATE if asked, MESSAGE-INTEGRITY with the remote password,
    FINGERPRINT."""
    message = Message(Method.BINDING, Class.REQUEST, transaction_id)
    message.attributes.append((AttrType.USERNAME, f"{remote.ufrag}:{local.ufrag}"))
    message.attributes.append((AttrType.PRIORITY, priority))
    role = AttrType.ICE_CONTROLLING if controlling else AttrType.ICE_CONTROLLED
    message.attributes.append((role, tiebreaker))
    if use_candidate:
        message.attributes.append((AttrType.USE_CANDIDATE, None))
    message.add_integrity(short_term_key(remote.pwd))
    message.add_fingerprint()
    return build(message)


def parse_check(data: bytes, *, local: IceCredentials, controlling: bool) -> CheckRequest:
    """Validate a received check (RFC 8445 §7.3, RFC 8489 §9.1.3).

    Raises a StunError for bytes that are not STUN or whose FINGERPRINT does not
    match (drop them), :class:`CheckRefused` with the status to answer otherwise:
    400 (not a Binding request, or USERNAME, MESSAGE-INTEGRITY, FINGERPRINT,
    PRIORITY or the role missing), 401 (not our ufrag, or an integrity that does
    not verify with our password), 487 (the peer claims our role).
    """
    message = parse(data)
    return _validate_check(message, data, local, controlling)


def _validate_check(
    message: Message, data: bytes, local: IceCredentials, controlling: bool
) -> CheckRequest:
    if message.method != Method.BINDING or message.cls is not Class.REQUEST:
        raise CheckRefused("not a Binding request", 400)
    if message.get(AttrType.FINGERPRINT) is None:
        raise CheckRefused("a check without FINGERPRINT", 400)
    check_fingerprint(data)
    username = message.get(AttrType.USERNAME)
    if username is None or message.get(AttrType.MESSAGE_INTEGRITY) is None:
        raise CheckRefused("a check without USERNAME or MESSAGE-INTEGRITY", 400)
    if not hmac.compare_digest(username.split(":", 1)[0].encode(), local.ufrag.encode()):
        raise CheckRefused(f"USERNAME {username!r} is not for us", 401)
    try:
        check_integrity(data, short_term_key(local.pwd))
    except IntegrityError:
        raise CheckRefused("MESSAGE-INTEGRITY does not verify", 401) from None
    return _check_fields(message, username, controlling)


def _check_fields(message: Message, username: str, controlling: bool) -> CheckRequest:
    theirs_controlling = message.get(AttrType.ICE_CONTROLLING)
    theirs_controlled = message.get(AttrType.ICE_CONTROLLED)
    prio = message.get(AttrType.PRIORITY)
    if prio is None or (theirs_controlling is None) == (theirs_controlled is None):
        raise CheckRefused("a check needs PRIORITY and exactly one role", 400)
    if (theirs_controlling is not None) == controlling:
        raise CheckRefused("role conflict: the peer claims our role", 487)
    return CheckRequest(
        message.transaction_id,
        prio,
        any(kind == AttrType.USE_CANDIDATE for kind, _ in message.attributes),
        theirs_controlling is not None,
        theirs_controlling if theirs_controlling is not None else theirs_controlled,
        username,
    )


_REASONS = {400: "Bad Request", 401: "Unauthenticated", 487: "Role Conflict"}


def answer_check(
    data: bytes, source: Address, *, local: IceCredentials, controlling: bool
) -> tuple[bytes, CheckRequest | None]:
    """The response to send back to ``source``, and the check if it was valid.

    A success carries XOR-MAPPED-ADDRESS (``source``), MESSAGE-INTEGRITY with our
    password and FINGERPRINT (RFC 8445 §7.3.1); a 400 or 401 is not signed (we
    could not check the key), a 487 is. Raises a StunError for bytes that are not
    STUN (drop them) and CheckRefused for a STUN message that is not a request.
    """
    message = parse(data)
    if message.cls is not Class.REQUEST:
        raise CheckRefused("not a request: nothing to answer", 400)
    try:
        request = _validate_check(message, data, local, controlling)
    except CheckRefused as refused:
        return _error_response(message, refused.status, local), None
    response = Message(Method.BINDING, Class.SUCCESS, message.transaction_id)
    response.attributes.append((AttrType.XOR_MAPPED_ADDRESS, source))
    response.add_integrity(short_term_key(local.pwd))
    response.add_fingerprint()
    return build(response), request


def _error_response(request: Message, status: int, local: IceCredentials) -> bytes:
    response = Message(Method.BINDING, Class.ERROR, request.transaction_id)
    response.attributes.append((AttrType.ERROR_CODE, (status, _REASONS[status])))
    if status not in (400, 401):
        response.add_integrity(short_term_key(local.pwd))
    response.add_fingerprint()
    return build(response)


def parse_check_response(data: bytes, *, remote: IceCredentials) -> CheckResponse:
    """Read the answer to one of our checks; its integrity must verify with the remote
    password (a 400 or 401 comes unsigned). Raises a StunError otherwise; match
    ``transaction_id`` to the check sent, then call :meth:`Call.check_result`."""
    message = parse(data)
    if message.method != Method.BINDING or message.cls not in (Class.SUCCESS, Class.ERROR):
        raise CheckRefused("not a Binding response", 400)
    if message.get(AttrType.FINGERPRINT) is not None:
        check_fingerprint(data)
    error = message.get(AttrType.ERROR_CODE)
    status = int(error.code) if error is not None else None
    if status not in (400, 401):
        check_integrity(data, short_term_key(remote.pwd))
    return CheckResponse(
        message.transaction_id,
        message.cls is Class.SUCCESS,
        message.get(AttrType.XOR_MAPPED_ADDRESS),
        status,
    )


# ---------------------------------------------------------------- the call


@dataclass
class _Liveness:
    """When each pair last carried something from the peer, last answered a check,
    last brought a check from the peer, and last had a check sent on it (for the
    round-trip time)."""

    heard: dict[Pair, float] = field(default_factory=dict)
    answered: dict[Pair, float] = field(default_factory=dict)
    checked: dict[Pair, float] = field(default_factory=dict)
    sent: dict[Pair, float] = field(default_factory=dict)
    rtt: dict[Pair, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _EarlyCheck:
    """A check of the peer's that came before its candidates did."""

    local: Address
    source: Address
    request: CheckRequest
    transport: Transport


class Call:
    """One call; see the module docstring. Create it IDLE, then call :meth:`invite`
    (caller) or pass it the CALL_INVITE with :meth:`receive` (callee)."""

    def __init__(
        self,
        call_id: bytes,
        local_user: str,
        candidates: Sequence[Candidate],
        credentials: IceCredentials,
        *,
        tiebreaker: int,
        config: CallConfig | None = None,
    ) -> None:
        if not isinstance(call_id, bytes) or len(call_id) != CALL_ID_SIZE:
            raise CallMisuse(f"a call id is {CALL_ID_SIZE} bytes, got {call_id!r}")
        if len(candidates) > MAX_CANDIDATES:
            raise CallMisuse(f"at most {MAX_CANDIDATES} candidates, got {len(candidates)}")
        if not 0 <= tiebreaker < 1 << 64:
            raise CallMisuse("the tie-breaker is a 64-bit unsigned number")
        self.call_id = call_id
        self.local_user = local_user
        self.candidates = list(candidates)
        self.credentials = credentials
        self.tiebreaker = tiebreaker
        self.config = config or CallConfig()
        self.state = CallState.IDLE
        self.reason: EndReason | None = None
        self.controlling = False
        self.peer = ""
        """The other user's id."""
        self.remote_credentials: IceCredentials | None = None
        self.codec: Codec | None = None
        self.pair: Pair | None = None
        """The pair media goes on, once ACTIVE."""
        self.ended_at: float | None = None
        self.drops: Counter[str] = Counter()
        """Inputs ignored, by why: late, duplicate, or for a pair we do not know."""
        self._pairs: list[Pair] = []
        self._index: dict[Pair, int] = {}
        self._checks: Checklist | None = None
        self._live = _Liveness()
        self._actions: deque[Action] = deque()
        self._events: deque[Event] = deque()
        self._deadline: float | None = None
        self._resend_at: float | None = None
        self._resend_gap = self.config.resend_interval
        self._offer: dict[str, Any] = {}
        self._accept: dict[str, Any] = {}
        self._final: SendSignal | None = None
        self._alerted = False
        self._peer_checked = False
        self._setup_failed: set[Pair] = set()
        self._active_since = 0.0
        self._consent_due: float | None = None
        self._backup_due: float | None = None
        self._attempt = 0
        self._recovering = False
        self._through_nat: set[Pair] = set()
        self._learned = 0
        self._early: list[_EarlyCheck] = []
        self._upgrade_until = 0.0

    # -- outputs

    def next_action(self) -> Action | None:
        return self._actions.popleft() if self._actions else None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def is_ended(self) -> bool:
        return self.state is CallState.ENDED

    @property
    def path_kind(self) -> PathKind | None:
        return self._kind_of(self.pair) if self.pair is not None else None

    @property
    def pairs(self) -> list[Pair]:
        """The candidate pairs being checked (empty until the peer's candidates came)."""
        return list(self._pairs)

    def _kind_of(self, pair: Pair) -> PathKind:
        """The pair's kind, counting a NAT of ours that only our checks revealed: a
        host-to-host pair through it is a punched path, as the peer sees it too."""
        kind = pair.path_kind
        if kind is PathKind.DIRECT_UDP and pair in self._through_nat:
            return PathKind.PUNCHED_UDP
        return kind

    def get_timer(self) -> float | None:
        """When to call :meth:`handle_timer` next; None only when IDLE or ENDED."""
        if self.state in (CallState.IDLE, CallState.ENDED):
            return None
        times = [self._deadline, self._resend_at, self._consent_due, self._backup_due]
        if self._checks is not None:
            times.append(self._checks.get_timer())
            if self.state is CallState.ACTIVE and not self._recovering:
                times.append(self._upgrade_until)
        if self.state is CallState.ACTIVE and not self._recovering:
            times.append(self._dead_at())
        return min(t for t in times if t is not None)

    # -- user actions

    def invite(self, callee: str, now: float) -> None:
        """Place the call: sends CALL_INVITE (repeated until answered)."""
        self._move(Trigger.INVITE)
        self.controlling, self.peer = True, callee
        self._offer = {
            "call_id": self.call_id,
            "caller": self.local_user,
            "callee": callee,
            "candidates": [candidate_to_wire(c) for c in self.candidates],
            "codecs": list(self.config.codecs),
            "ufrag": self.credentials.ufrag,
            "pwd": self.credentials.pwd,
        }
        self._signal(MsgType.CALL_INVITE, self._offer)
        self._deadline = now + self.config.no_answer_timeout
        self._resend_at = now + self._resend_gap
        self._changed(CallState.IDLE)

    def answer(self, now: float) -> None:
        """Take the ringing call: sends CALL_ACCEPT and starts the checks. Does
        nothing if the call has ended meanwhile (the caller gave up)."""
        if self.state is CallState.ENDED:
            return
        self._move(Trigger.ANSWER)
        self._accept = {
            "call_id": self.call_id,
            "candidates": [candidate_to_wire(c) for c in self.candidates],
            "codec": self.codec,
            "ufrag": self.credentials.ufrag,
            "pwd": self.credentials.pwd,
        }
        self._signal(MsgType.CALL_ACCEPT, self._accept)
        self._changed(CallState.RINGING)
        self._start_checks(now)

    def reject(self, now: float, reason: EndReason = EndReason.REJECTED) -> None:
        """Refuse the ringing call, REJECTED or BUSY; nothing if it has ended."""
        if self.state is CallState.ENDED:
            return
        if self.state is not CallState.RINGING or reason not in (
            EndReason.REJECTED,
            EndReason.BUSY,
        ):
            raise CallMisuse(f"reject({reason.value}) when the call is {self.state.value}")
        self._end(reason, now, MsgType.CALL_REJECT)

    def hangup(self, now: float) -> None:
        """End the call the way its state asks: cancel an unanswered invite, reject a
        ringing call, hang up a connecting or active one. Nothing if it has ended."""
        if self.state is CallState.ENDED:
            return
        if self.state is CallState.IDLE:
            raise CallMisuse("hangup() before the call started")
        if self.state is CallState.INVITING:
            self._end(EndReason.CANCELLED, now, MsgType.CALL_BYE)
        elif self.state is CallState.RINGING:
            self._end(EndReason.REJECTED, now, MsgType.CALL_REJECT)
        else:
            self._end(EndReason.HANGUP, now, MsgType.CALL_BYE)

    def abort(self, now: float, detail: str = "") -> None:
        """End with ERROR, telling the peer (e.g. the audio device failed)."""
        if self.state is CallState.IDLE:
            self._end(EndReason.ERROR, now)
        elif self.state is not CallState.ENDED:
            kind = MsgType.CALL_REJECT if self.state is CallState.RINGING else MsgType.CALL_BYE
            self._end(EndReason.ERROR, now, kind, detail)

    # -- signalling

    def receive(self, msg_type: MsgType, body: Mapping[str, Any], now: float) -> None:
        """Take one CALL_* or PATH_UPDATE message of this call from the session."""
        if msg_type not in CALL_TYPES:
            raise CallMisuse(f"{msg_type!r} is not call signalling")
        if body["call_id"] != self.call_id:
            raise CallMisuse("a message of another call")
        if self.state is CallState.ENDED:
            self._answer_when_ended(msg_type)
            return
        _HANDLERS[msg_type](self, body, now)

    def _on_invite(self, body: Mapping[str, Any], now: float) -> None:
        if self.state is CallState.IDLE:
            self._invited(body, now)
        elif self.state is CallState.RINGING:
            self._signal(MsgType.CALL_RINGING, {"call_id": self.call_id})
        elif not self.controlling:
            self._signal(MsgType.CALL_ACCEPT, self._accept)  # ours was lost
        else:
            self.drops["invite to the caller"] += 1

    def _invited(self, body: Mapping[str, Any], now: float) -> None:
        self._move(Trigger.INVITED)
        self.peer = str(body["caller"])
        self._take_remote(body)
        self._changed(CallState.IDLE)
        offered = [Codec(c) for c in body["codecs"]]
        common = [c for c in offered if c in self.config.codecs]
        if not common:
            self._end(EndReason.ERROR, now, MsgType.CALL_REJECT, "no common codec")
            return
        self.codec = common[0]
        self._signal(MsgType.CALL_RINGING, {"call_id": self.call_id})
        self._deadline = now + self.config.no_answer_timeout

    def _on_ringing(self, body: Mapping[str, Any], now: float) -> None:
        if self.state is CallState.INVITING and not self._alerted:
            self._alerted = True
            self._events.append(RemoteAlerting(self.call_id))
        else:
            self.drops["late or repeated ringing"] += 1

    def _on_accept(self, body: Mapping[str, Any], now: float) -> None:
        if self.state is not CallState.INVITING:
            self.drops["late or repeated accept"] += 1
            return
        codec = Codec(body["codec"])
        self._move(Trigger.ACCEPTED)
        self._take_remote(body)
        self._resend_at = None
        self._changed(CallState.INVITING)
        if codec not in self.config.codecs:
            self._end(EndReason.ERROR, now, MsgType.CALL_BYE, "codec not offered")
            return
        self.codec = codec
        self._start_checks(now)

    def _on_reject(self, body: Mapping[str, Any], now: float) -> None:
        if self.state is CallState.INVITING:
            self._end(FROM_WIRE[CallEndReason(body["reason"])], now, by_peer=True)
        else:
            self.drops["reject out of turn"] += 1

    def _on_bye(self, body: Mapping[str, Any], now: float) -> None:
        self._end(FROM_WIRE[CallEndReason(body["reason"])], now, by_peer=True)

    def _on_path_update(self, body: Mapping[str, Any], now: float) -> None:
        """The callee follows the caller's choice; the caller only notes it."""
        pair = self._match(candidate_from_wire(body["remote"]), candidate_from_wire(body["local"]))
        live = self.state in (CallState.CONNECTING, CallState.ACTIVE)
        if self.controlling or pair is None or not live:
            self.drops["path update not followed"] += 1
        elif self.state is CallState.CONNECTING:
            self._nominate(pair, now)
        elif pair != self.pair and self._fresh(pair, now):
            self._follow(pair, now)

    def _answer_when_ended(self, msg_type: MsgType) -> None:
        """Loss is repaired by repetition: a stray message gets our final word again."""
        if self._final is not None and msg_type not in (MsgType.CALL_BYE, MsgType.CALL_REJECT):
            self._actions.append(self._final)
        else:
            self.drops["after the end"] += 1

    # -- what the sockets saw

    def check_result(
        self, pair: Pair, ok: bool, now: float, *, mapped: Address | None = None
    ) -> None:
        """One of our checks on ``pair`` was answered: ``ok`` for a success, False for
        an error answer. (No answer at all needs no call: the timer finds it.)
        ``mapped`` is where the peer saw the check come from: another address than our
        host candidate means a NAT of ours is on the path (a peer-reflexive end)."""
        if not self._known(pair):
            return
        if ok and mapped is not None and mapped != pair.local.address:
            self._through_nat.add(pair)
        if ok:
            self._answered(pair, now)
        else:
            self._live.answered.pop(pair, None)
        if self._checks is not None:
            index = self._index[pair]
            if ok:
                self._checks.on_success(index, now)
            else:
                self._checks.on_failure(index, now)
        if self.state is CallState.CONNECTING:
            self._after_setup_checks(now)
        elif ok and self._recovering:
            self._recovered(pair, now)
        elif ok:
            self._upgrade(now)

    def _answered(self, pair: Pair, now: float) -> None:
        sent = self._live.sent.get(pair)
        if sent is not None:
            self._live.rtt[pair] = now - sent
        self._live.answered[pair] = now
        self._live.heard[pair] = now

    def check_received(self, pair: Pair, now: float, *, use_candidate: bool = False) -> None:
        """The peer's check arrived on ``pair`` and was answered (:func:`answer_check`);
        USE-CANDIDATE from the caller nominates the pair on the callee."""
        if not self._known(pair):
            return
        self._peer_checked = True
        self._live.checked[pair] = now
        if self._checks is not None:
            self._checks.trigger(self._index[pair])
        if self.controlling or not use_candidate:
            return
        if self.state is CallState.CONNECTING:
            self._nominate(pair, now)
        elif pair != self.pair:
            self._follow(pair, now)

    def media_received(self, pair: Pair, now: float) -> None:
        """A media frame of this call arrived on ``pair``."""
        if not self._known(pair):
            return
        self._live.heard[pair] = now
        if self.state is CallState.CONNECTING and not self.controlling:
            self._nominate(pair, now)  # the caller chose it; its USE-CANDIDATE was lost
        elif self._recovering:
            self._recovered(pair, now)

    def keepalive_received(self, pair: Pair, now: float) -> None:
        """A KEEPALIVE (request or reply) of this call arrived on ``pair``."""
        if self._known(pair):
            self._live.heard[pair] = now
            if self._recovering and pair == self.pair:
                self._recovered(pair, now)

    def check_from(
        self,
        local: Address,
        source: Address,
        request: CheckRequest,
        now: float,
        transport: Transport = Transport.UDP,
    ) -> None:
        """The peer's valid check came to our ``local`` address (a base, or our relayed
        address) from ``source`` over ``transport``: :meth:`check_received` on its
        pair, learning ``source`` as a peer-reflexive candidate when no pair has those
        ends yet."""
        if self.state in (CallState.IDLE, CallState.INVITING, CallState.RINGING):
            if len(self._early) < MAX_LEARNED:
                self._early.append(_EarlyCheck(local, source, request, transport))
            else:
                self.drops["early check"] += 1
            return
        pair = self.find_pair(local, source, transport) or self._learn(
            local, source, request.priority, transport
        )
        if pair is not None:
            self.check_received(pair, now, use_candidate=request.use_candidate)

    def _learn(
        self, local: Address, source: Address, prio: int, transport: Transport
    ) -> Pair | None:
        """A pair whose remote end is ``source``, a peer-reflexive candidate (§7.3.1.3)."""
        mine = next(
            (c for c in self.candidates if c.address == local and c.transport is transport),
            None,
        )
        if mine is None or self.state not in (CallState.CONNECTING, CallState.ACTIVE):
            self.drops["unknown pair"] += 1
            return None
        if self._learned >= MAX_LEARNED:
            self.drops["too many peer-reflexive"] += 1
            return None
        self._learned += 1
        kind = CandidateKind.PEER_REFLEXIVE
        theirs = Candidate(
            kind, transport, source, source, prio, foundation(kind, transport, source)
        )
        ranks = (mine.priority, prio) if self.controlling else (prio, mine.priority)
        pair = Pair(mine, theirs, pair_priority(*ranks))
        self._index[pair] = len(self._pairs)  # every checklist is made of all the pairs
        self._pairs.append(pair)
        if self._checks is not None:
            self._checks.add(pair)
        return pair

    def find_pair(self, local: Address, source: Address, transport: int) -> Pair | None:
        """The pair a packet belongs to: it arrived at our ``local`` address (a base,
        or a relayed address) from ``source``. None if no pair has those ends."""
        for pair in self._pairs:
            if (
                pair.local.address == local
                and pair.remote.address == source
                and pair.local.transport == transport
            ):
                return pair
        return None

    def build_check(self, check: SendCheck, transaction_id: bytes) -> bytes:
        """The bytes of a :class:`SendCheck` under this call's credentials and role."""
        if self.remote_credentials is None:
            raise CallMisuse("no remote credentials yet: no check to build")
        return build_check(
            transaction_id,
            local=self.credentials,
            remote=self.remote_credentials,
            controlling=self.controlling,
            tiebreaker=self.tiebreaker,
            priority=check_priority(check.pair),
            use_candidate=check.use_candidate,
        )

    def answer_check(self, data: bytes, source: Address) -> tuple[bytes, CheckRequest | None]:
        """:func:`answer_check` with this call's credentials and role."""
        return answer_check(data, source, local=self.credentials, controlling=self.controlling)

    # -- time

    def handle_timer(self, now: float) -> None:
        if self.state in (CallState.IDLE, CallState.ENDED):
            return
        if self._deadline is not None and now >= self._deadline:
            self._deadline_passed(now)
        elif self.state is CallState.INVITING:
            self._resend_invite(now)
        elif self.state is CallState.CONNECTING:
            self._run_checks(now)
            self._after_setup_checks(now)
        elif self.state is CallState.ACTIVE:
            self._active_timer(now)

    def _deadline_passed(self, now: float) -> None:
        if self.state is CallState.INVITING:
            self._end(EndReason.NO_ANSWER, now, MsgType.CALL_BYE)
        elif self.state is CallState.RINGING:
            self._end(EndReason.NO_ANSWER, now, MsgType.CALL_REJECT)
        elif self.state is CallState.CONNECTING:
            self._end(EndReason.FAILED, now, MsgType.CALL_BYE, "no pair worked in time")
        else:
            self._end(EndReason.PATH_LOST, now, MsgType.CALL_BYE, "path lost")

    def _resend_invite(self, now: float) -> None:
        if self._resend_at is not None and now >= self._resend_at:
            self._signal(MsgType.CALL_INVITE, self._offer)
            self._resend_gap = min(self._resend_gap * 2, self.config.resend_max)
            self._resend_at = now + self._resend_gap

    # -- connectivity checks

    def _take_remote(self, body: Mapping[str, Any]) -> None:
        self.remote_credentials = IceCredentials(str(body["ufrag"]), str(body["pwd"]))
        remote = [candidate_from_wire(c) for c in body["candidates"][:MAX_CANDIDATES]]
        self._pairs = pairs(self.candidates, remote, controlling=self.controlling)
        self._index = {pair: index for index, pair in enumerate(self._pairs)}

    def _new_checklist(self, now: float, patience: float) -> Checklist:
        c = self.config
        return Checklist(
            self._pairs, now, pacing=c.pacing, rto=c.rto, tries=c.tries, patience=patience
        )

    def _start_checks(self, now: float) -> None:
        if not self._pairs:
            self._end(EndReason.FAILED, now, MsgType.CALL_BYE, "no candidate pairs")
            return
        self._checks = self._new_checklist(now, self.config.patience)
        self._deadline = now + self.config.connect_timeout
        early, self._early = self._early, []
        for check in early:
            self.check_from(check.local, check.source, check.request, now, check.transport)

    def _run_checks(self, now: float) -> None:
        if self._checks is not None:
            for check in self._checks.handle_timer(now):
                self._send_check(check.pair, check.attempt, False, now)

    def _send_check(self, pair: Pair, attempt: int, use_candidate: bool, now: float) -> None:
        self._live.sent[pair] = now
        self._actions.append(SendCheck(pair, attempt, use_candidate))

    def _after_setup_checks(self, now: float) -> None:
        checks = self._checks
        if checks is None or self.state is not CallState.CONNECTING:
            return
        if self.controlling and checks.nominated is not None:
            self._nominate(checks.nominated, now)
        elif checks.failed and (self.controlling or not self._peer_checked):
            self._end(EndReason.FAILED, now, MsgType.CALL_BYE, "every pair failed")

    def _nominate(self, pair: Pair, now: float) -> None:
        self._move(Trigger.NOMINATED)
        checks = self._checks
        if checks is not None:
            self._setup_failed = {
                p for p, i in self._index.items() if checks.state(i) is PairState.FAILED
            }
        self._checks, self._deadline = None, None
        if checks is not None and self.controlling and self.config.upgrade_window > 0:
            checks.keep_checking_better()
            if not checks.done:
                self._checks, self._upgrade_until = checks, now + self.config.upgrade_window
        self._changed(CallState.CONNECTING)
        self._use(pair, now, announce=self.controlling)
        self._backup_due = now + self.config.backup_interval

    def _upgrade(self, now: float) -> None:
        """A better pair than the one in use answered after nomination: move up to it."""
        checks = self._checks
        if checks is None or self.state is not CallState.ACTIVE or self._recovering:
            return
        if checks.nominated is not None and checks.nominated != self.pair:
            self._use(checks.nominated, now, announce=True)
        if checks.done:
            self._checks = None

    # -- paths while ACTIVE

    def _use(self, pair: Pair, now: float, *, announce: bool) -> None:
        self.pair, self._active_since, self._consent_due = pair, now, now
        self._actions.append(UsePath(pair, self._kind_of(pair)))
        self._events.append(
            PathChanged(self.call_id, self._kind_of(pair), self._live.rtt.get(pair))
        )
        if announce:
            body = {
                "call_id": self.call_id,
                "local": candidate_to_wire(pair.local),
                "remote": candidate_to_wire(pair.remote),
                "path_kind": self._kind_of(pair),
            }
            self._signal(MsgType.PATH_UPDATE, body)

    def _follow(self, pair: Pair, now: float) -> None:
        """The caller moved: go where it went, without announcing it back."""
        self._stop_recovery()
        self._use(pair, now, announce=False)

    def _dead_at(self) -> float:
        assert self.pair is not None
        heard = self._live.heard.get(self.pair, -math.inf)
        return max(heard, self._active_since) + self.config.dead_after

    def _active_timer(self, now: float) -> None:
        if not self._recovering and now >= self._dead_at():
            self._path_died(now)
        if self._consent_due is not None and now >= self._consent_due:
            assert self.pair is not None
            self._attempt += 1
            self._send_check(self.pair, self._attempt, self.controlling, now)
            self._consent_due = now + self.config.consent_interval
        if self._backup_due is not None and now >= self._backup_due:
            self._attempt += 1
            for pair in self._backups():
                self._send_check(pair, self._attempt, False, now)
            self._backup_due = now + self.config.backup_interval
        upgrades = None if self._recovering else self._checks
        if upgrades is not None and (upgrades.done or now >= self._upgrade_until):
            self._checks = None  # no better pair answered in time: stay
        if self._checks is not None:
            if self._checks.failed:
                self._checks = self._new_checklist(now, 0.0)  # keep trying until the deadline
            self._run_checks(now)

    def _backups(self) -> list[Pair]:
        """Pairs to keep checking besides the active one: those that answered first,
        then unknown ones; never those that failed during setup."""
        others = [p for p in self._pairs if p != self.pair and p not in self._setup_failed]
        others.sort(key=lambda p: p not in self._live.answered)  # stable: priority order
        return others[: self.config.max_backups]

    def _fresh(self, pair: Pair, now: float) -> bool:
        return now - self._live.answered.get(pair, -math.inf) <= self.config.backup_fresh

    def _path_died(self, now: float) -> None:
        fresh = [p for p in self._pairs if p != self.pair and self._fresh(p, now)]
        if fresh:
            self._use(fresh[0], now, announce=True)
            return
        assert self.pair is not None
        self._recovering = True
        last = self._live.heard.get(self.pair, self._active_since)
        self._deadline = max(last, self._active_since) + self.config.path_lost_timeout
        self._checks = self._new_checklist(now, 0.0)

    def _recovered(self, pair: Pair, now: float) -> None:
        self._stop_recovery()
        if pair != self.pair:
            self._use(pair, now, announce=True)

    def _stop_recovery(self) -> None:
        self._recovering, self._checks, self._deadline = False, None, None

    # -- helpers

    def _known(self, pair: Pair) -> bool:
        if self.state not in (CallState.CONNECTING, CallState.ACTIVE):
            self.drops["not checking"] += 1
            return False
        if pair not in self._index:
            self.drops["unknown pair"] += 1
            return False
        return True

    def _match(self, mine: Candidate, theirs: Candidate) -> Pair | None:
        """The pair a PATH_UPDATE names. The sender names its end by its base (we may
        know it by a reflexive address of that base) and ours as we sent it; among
        the pairs that fit, the one that last worked either way (our check answered,
        or theirs arrived), then the best."""
        found = [
            p
            for p in self._pairs
            if p.local.transport == mine.transport
            and _known_as(mine) & _known_as(p.local)
            and _known_as(theirs) & _known_as(p.remote)
        ]
        found.sort(key=self._last_worked, reverse=True)  # stable: priority order next
        return found[0] if found else None

    def _last_worked(self, pair: Pair) -> float:
        live = self._live
        return max(live.answered.get(pair, -math.inf), live.checked.get(pair, -math.inf))

    def _signal(self, msg_type: MsgType, body: dict[str, Any]) -> None:
        self._actions.append(SendSignal(msg_type, body))

    def _move(self, trigger: Trigger) -> None:
        after = TRANSITIONS[self.state].get(trigger)
        if after is None:
            raise CallMisuse(f"{trigger.value} when the call is {self.state.value}")
        self.state = after

    def _changed(self, old: CallState) -> None:
        self._events.append(CallStateChanged(self.call_id, old, self.state))

    def _end(
        self,
        reason: EndReason,
        now: float,
        send: MsgType | None = None,
        detail: str = "",
        *,
        by_peer: bool = False,
    ) -> None:
        old = self.state
        self._move(Trigger.END)
        self.reason, self.ended_at = reason, now
        self._checks = None
        self._deadline = self._resend_at = self._consent_due = self._backup_due = None
        self._recovering = False
        if send is not None:
            body = {"call_id": self.call_id, "reason": TO_WIRE[reason], "detail": detail}
            self._final = SendSignal(send, body)
            self._actions.append(self._final)
        self._events.append(CallStateChanged(self.call_id, old, self.state, reason, by_peer))


def _known_as(cand: Candidate) -> set[Address]:
    """The addresses a candidate may be named by: a reflexive one also by its base
    (a pair sends from the base, §6.1.2.4); a relayed one is its own base (§5.1.1.2)."""
    if cand.kind in (CandidateKind.SERVER_REFLEXIVE, CandidateKind.PEER_REFLEXIVE):
        return {cand.address, cand.base}
    return {cand.address}


_HANDLERS: dict[MsgType, Callable[[Call, Mapping[str, Any], float], None]] = {
    MsgType.CALL_INVITE: Call._on_invite,
    MsgType.CALL_RINGING: Call._on_ringing,
    MsgType.CALL_ACCEPT: Call._on_accept,
    MsgType.CALL_REJECT: Call._on_reject,
    MsgType.CALL_BYE: Call._on_bye,
    MsgType.PATH_UPDATE: Call._on_path_update,
}


# ---------------------------------------------------------------- several calls


class CallManager:
    """The calls of one device, by call id.

    A CALL_INVITE while another call is under way (or with ``max_calls`` calls
    held) is answered CALL_REJECT BUSY without making a Call. An invite from a
    user in :attr:`auto_answer` is answered at once (a door station's allowed
    callers). Ended calls are kept ``linger`` seconds so that stray messages get
    their final answer, then forgotten; the owner keeps :attr:`candidates`
    current (gathered host, reflexive and relayed candidates).
    """

    def __init__(
        self,
        local_user: str,
        *,
        max_calls: int = 4,
        linger: float = 32.0,
        config: CallConfig | None = None,
        auto_answer: Iterable[str] = (),
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if max_calls < 1 or not linger >= 0:
            raise CallMisuse("max_calls >= 1 and linger >= 0, please")
        self.local_user = local_user
        self.max_calls, self.linger = max_calls, linger
        self.config = config or CallConfig()
        self.auto_answer: set[str] = set(auto_answer)
        self.candidates: list[Candidate] = []
        self.calls: dict[bytes, Call] = {}
        self.busy_rejected = 0
        self.strays = 0
        """Messages for calls we do not hold (long ended, or never ours)."""
        self._random = random
        self._actions: deque[tuple[bytes, Action]] = deque()
        self._events: deque[Event] = deque()

    @property
    def busy(self) -> bool:
        return any(call.state is not CallState.ENDED for call in self.calls.values())

    def place(self, callee: str, now: float) -> Call:
        """Start a call to ``callee``; CallMisuse when ``max_calls`` are under way."""
        self._make_room(now)
        if len(self.calls) >= self.max_calls:
            raise CallMisuse(f"{self.max_calls} calls already")
        call = self._new_call(self._random(CALL_ID_SIZE))
        call.invite(callee, now)
        self._collect(call)
        return call

    def receive(self, msg_type: MsgType, body: Mapping[str, Any], now: float) -> None:
        """Route one call message; a new CALL_INVITE makes a call or gets BUSY."""
        call = self.calls.get(bytes(body["call_id"]))
        if call is not None:
            call.receive(msg_type, body, now)
            self._collect(call)
        elif msg_type is MsgType.CALL_INVITE:
            self._incoming(body, now)
        else:
            self.strays += 1

    def _incoming(self, body: Mapping[str, Any], now: float) -> None:
        self._make_room(now)
        call_id = bytes(body["call_id"])
        if self.busy or len(self.calls) >= self.max_calls:
            self.busy_rejected += 1
            reply = {"call_id": call_id, "reason": CallEndReason.BUSY, "detail": "busy"}
            self._actions.append((call_id, SendSignal(MsgType.CALL_REJECT, reply)))
            return
        call = self._new_call(call_id)
        call.receive(MsgType.CALL_INVITE, body, now)
        if call.state is CallState.RINGING and call.peer in self.auto_answer:
            call.answer(now)
        self._collect(call)

    def _new_call(self, call_id: bytes) -> Call:
        call = Call(
            call_id,
            self.local_user,
            self.candidates[:MAX_CANDIDATES],
            IceCredentials.generate(self._random),
            tiebreaker=int.from_bytes(self._random(8), "big"),
            config=self.config,
        )
        self.calls[call_id] = call
        return call

    def act(self, call_id: bytes, do: Callable[[Call], None]) -> None:
        """Run a user action on one call and collect what it says, e.g.
        ``manager.act(cid, lambda c: c.answer(now))``."""
        call = self.calls[call_id]
        do(call)
        self._collect(call)

    def get_timer(self) -> float | None:
        times = [call.get_timer() for call in self.calls.values()]
        times += [c.ended_at + self.linger for c in self.calls.values() if c.ended_at is not None]
        pending = [t for t in times if t is not None]
        return min(pending) if pending else None

    def handle_timer(self, now: float) -> None:
        for call in list(self.calls.values()):
            at = call.get_timer()
            if at is not None and at <= now:
                call.handle_timer(now)
                self._collect(call)
        self._forget(now)

    def next_action(self) -> tuple[bytes, Action] | None:
        return self._actions.popleft() if self._actions else None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def _collect(self, call: Call) -> None:
        while (action := call.next_action()) is not None:
            self._actions.append((call.call_id, action))
        while (event := call.next_event()) is not None:
            self._events.append(event)

    def _forget(self, now: float) -> None:
        for call_id, call in list(self.calls.items()):
            if call.ended_at is not None and now >= call.ended_at + self.linger:
                del self.calls[call_id]

    def _make_room(self, now: float) -> None:
        """Forget lingering calls, and when still full, the longest ended one."""
        self._forget(now)
        ended = [c for c in self.calls.values() if c.ended_at is not None]
        if len(self.calls) >= self.max_calls and ended:
            oldest = min(ended, key=lambda c: c.ended_at or 0.0)
            del self.calls[oldest.call_id]

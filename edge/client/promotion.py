"""Promotion: whether this device serves as a supernode, why, and for how long.

Theory of operation
-------------------
In the seed, any client "measured as capable" became a supernode without
asking, and network administrators found out when strangers' traffic ran
through their machines. Here promotion is the operator's choice and always
visible: ``[policy] supernode`` in the agent's configuration says

* ``"never"`` (the default on devices): never a supernode, whatever the
  measurements; the device does not even ask for dial-back tests;
* ``"auto"``: a supernode when all the conditions below hold;
* ``"always"``: a supernode whenever it is reachable; uptime, bandwidth and
  CPU are not judged (the operator knows the machine), but reachability is,
  since a supernode nobody can reach is useless to the network.

The conditions, checked in this order (the first that fails is the reason
``edge ctl status`` shows):

1. reachability: at least ``dialbacks`` (3) fresh attestations (signed less
   than 24 h ago) from supernodes on different IP addresses, with different
   keys, all naming the same observed address. Each is a supernode's signed
   statement that a probe from its spare socket reached that address
   (:mod:`edge.supernode.dialback`), checked here on arrival: certificate,
   signature, and that it names this user and device;
2. uptime at least ``min_uptime``;
3. measured upload and download at least ``min_up_bps`` / ``min_down_bps``;
4. CPU load (load average per core) at most ``max_cpu``.

Measurements come from elsewhere as a :class:`Sample`; this core only judges.
Hysteresis keeps the role from flapping: promotion needs the conditions to
hold continuously, at every sample, for ``promote_hold``; demotion needs them
to fail continuously for ``demote_hold``; and a role change does not come
sooner than ``min_dwell`` after the last promotion or demotion. The states
and what moves them are the table :data:`TRANSITIONS`::

    CLIENT --met--> CANDIDATE --held--> SUPERNODE --failed--> DEMOTING
      ^                |                    ^                    |
      +----failed------+                    +-------met----------+
      +-----------------------failed for demote_hold-------------+

Any state goes to CLIENT at once when the operator sets ``"never"``: the
operator's word is not subject to hysteresis. Every change is a
:class:`RoleChanged` event, with the reason.

While a supernode, relayed calls and relay bandwidth are capped
(:class:`RelayCaps`): :meth:`Promotion.may_relay` says whether one more call
fits. :class:`DialbackClient` is the client's side of the dial-back exchange:
requests, matching probes that arrive on the listening port, confirming, and
taking the attestations from the results.

Sans-IO: ``now`` is monotonic seconds, Unix time is ``now + wall_offset``
(attestations are dated in Unix time).
"""

import math
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any, Final

from edge.client.errors import PromotionMisuse
from edge.crypto.cert import Certificate, TrustStore
from edge.crypto.keys import key_id
from edge.sansio import Address
from edge.supernode.dialback import ATTESTATION_MAX_AGE, Attestation, verify_attestation
from edge.supernode.errors import AttestationRefused
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.errors import WireError
from edge.wire.messages import decode, parse_certificate, parse_dialback_attestation


class Mode(StrEnum):
    """The operator's ``[policy] supernode`` setting."""

    NEVER = "never"
    AUTO = "auto"
    ALWAYS = "always"


class Role(Enum):
    CLIENT = "client"
    """An ordinary client."""
    CANDIDATE = "candidate"
    """The conditions hold; promotion once they have held for ``promote_hold``."""
    SUPERNODE = "supernode"
    """Serving as a supernode."""
    DEMOTING = "demoting"
    """Still serving, but the conditions fail; demotion once they have for ``demote_hold``."""


class Trigger(Enum):
    MET = "met"
    """The conditions hold at this sample."""
    HELD = "held"
    """They have held for ``promote_hold`` (and ``min_dwell`` since the last demotion)."""
    FAILED = "failed"
    """A condition fails at this sample."""
    FAILED_LONG = "failed long"
    """They have failed for ``demote_hold`` (and ``min_dwell`` since the last promotion)."""
    NEVER = "never"
    """The operator forbids serving."""


TRANSITIONS: dict[Role, dict[Trigger, Role]] = {
    Role.CLIENT: {Trigger.MET: Role.CANDIDATE, Trigger.HELD: Role.CANDIDATE},
    Role.CANDIDATE: {
        Trigger.HELD: Role.SUPERNODE,
        Trigger.FAILED: Role.CLIENT,
        Trigger.FAILED_LONG: Role.CLIENT,
        Trigger.NEVER: Role.CLIENT,
    },
    Role.SUPERNODE: {
        Trigger.FAILED: Role.DEMOTING,
        Trigger.FAILED_LONG: Role.DEMOTING,
        Trigger.NEVER: Role.CLIENT,
    },
    Role.DEMOTING: {
        Trigger.MET: Role.SUPERNODE,
        Trigger.HELD: Role.SUPERNODE,
        Trigger.FAILED_LONG: Role.CLIENT,
        Trigger.NEVER: Role.CLIENT,
    },
}
"""Where each trigger takes each role; a trigger not listed leaves the role as it is."""

SERVING: Final = frozenset({Role.SUPERNODE, Role.DEMOTING})


@dataclass(frozen=True)
class Thresholds:
    """What "capable" means, and how long it must last. Seconds, bits per second."""

    dialbacks: int = 3
    """Attestations needed, from supernodes on that many different IP addresses."""
    attestation_max_age: float = ATTESTATION_MAX_AGE
    refresh_before: float = 2 * 3600.0
    """Ask for new dial-backs when the counted ones expire within this."""
    max_attestations: int = 16
    min_uptime: float = 2 * 3600.0
    min_up_bps: float = 1_000_000.0
    min_down_bps: float = 1_000_000.0
    max_cpu: float = 0.8
    """Load average per core: 0.8 is 80 %."""
    promote_hold: float = 600.0
    demote_hold: float = 600.0
    min_dwell: float = 900.0

    def __post_init__(self) -> None:
        if not 1 <= self.dialbacks <= self.max_attestations:
            raise PromotionMisuse("promotion: need 1 <= dialbacks <= max_attestations")
        for name in ("attestation_max_age", "promote_hold", "demote_hold", "min_dwell"):
            _check_number(name, getattr(self, name))
        if not 0 <= self.refresh_before < self.attestation_max_age:
            raise PromotionMisuse("promotion: need 0 <= refresh_before < attestation_max_age")


@dataclass(frozen=True)
class RelayCaps:
    """The most a supernode relays for others: calls at once, and bits per second."""

    max_calls: int = 8
    max_bps: float = 2_000_000.0
    uplink_share: float = 0.5
    """Relaying takes at most this share of the measured upload, if that is lower."""


@dataclass(frozen=True)
class Sample:
    """Measurements taken elsewhere (``/proc``, a bandwidth probe, the relay's counters)."""

    uptime: float
    """Seconds the agent has been running."""
    up_bps: float
    down_bps: float
    cpu: float
    """Load average per core (``os.getloadavg()[0] / os.cpu_count()``)."""
    relayed_calls: int = 0
    relay_bps: float = 0.0


@dataclass(frozen=True)
class RoleChanged:
    """The role went from ``old`` to ``new`` at Unix time ``at``; ``reason`` says why."""

    old: Role
    new: Role
    reason: str
    at: float


class Promotion:
    """The promotion policy of one device; see the module docstring."""

    def __init__(
        self,
        mode: Mode | str,
        trust: TrustStore,
        *,
        user_id: str,
        device_id: str,
        thresholds: Thresholds | None = None,
        caps: RelayCaps | None = None,
        wall_offset: float = 0.0,
        accept_signer: Callable[[Certificate], bool] | None = None,
    ) -> None:
        self.mode = _mode(mode)
        self.trust = trust
        self.user_id = user_id
        self.device_id = device_id
        self.thresholds = thresholds or Thresholds()
        self.caps = caps or RelayCaps()
        self.wall_offset = wall_offset
        self._accept_signer = accept_signer
        self.role = Role.CLIENT
        self._since = 0.0
        self._attestations: dict[str, Attestation] = {}
        """The newest attestation from each supernode IP."""
        self._sample: Sample | None = None
        self._failure: str | None = None
        self._met_since: float | None = None
        self._failed_since: float | None = None
        self._promoted_at = -math.inf
        self._demoted_at = -math.inf
        self._demoted_for: str | None = None
        self._events: deque[RoleChanged] = deque()
        self.counts: Counter[str] = Counter()
        """``attestation``, ``refused-<reason>``, ``promoted``, ``demoted``."""

    @property
    def is_supernode(self) -> bool:
        return self.role in SERVING

    def next_event(self) -> RoleChanged | None:
        return self._events.popleft() if self._events else None

    # -- inputs

    def set_mode(self, mode: Mode | str, now: float) -> None:
        """The operator changed ``[policy] supernode``; ``"never"`` demotes at once."""
        self.mode = _mode(mode)
        self._met_since = None
        if self.mode is Mode.NEVER:
            self._apply(Trigger.NEVER, now)

    def add_attestation(self, raw: bytes, now: float) -> Attestation:
        """Verify and keep a dial-back attestation from a DIALBACK_RESULT.

        Raises the :class:`~edge.supernode.errors.AttestationRefused` subclass
        of the check that failed (see :func:`verify_attestation`); count it and
        go on. Keeps the newest per supernode IP, and at most
        ``max_attestations`` (the oldest goes).
        """
        wall = now + self.wall_offset
        try:
            attestation = verify_attestation(
                raw,
                self.trust,
                wall,
                user_id=self.user_id,
                device_id=self.device_id,
                max_age=self.thresholds.attestation_max_age,
                accept_signer=self._accept_signer,
            )
        except AttestationRefused as exc:
            self.counts[f"refused-{exc.reason}"] += 1
            raise
        self.counts["attestation"] += 1
        self._keep(attestation, wall)
        return attestation

    def _keep(self, attestation: Attestation, wall: float) -> None:
        self._forget_expired(wall)
        held = self._attestations.get(attestation.signer_ip)
        if held is not None and held.issued_at > attestation.issued_at:
            return
        self._attestations[attestation.signer_ip] = attestation
        if len(self._attestations) > self.thresholds.max_attestations:
            oldest = min(self._attestations.values(), key=lambda a: a.issued_at)
            del self._attestations[oldest.signer_ip]

    def _forget_expired(self, wall: float) -> None:
        oldest = wall - self.thresholds.attestation_max_age
        for ip in [ip for ip, a in self._attestations.items() if a.issued_at < oldest]:
            del self._attestations[ip]

    def update(self, sample: Sample, now: float) -> None:
        """Judge a new sample; the role may change (a :class:`RoleChanged` event)."""
        _check_sample(sample)
        self._sample = sample
        if self.mode is Mode.NEVER:
            self._apply(Trigger.NEVER, now)
            return
        self._failure = self._first_failure(sample, now + self.wall_offset)
        if self._failure is None:
            self._failed_since = None
            self._met_since = now if self._met_since is None else self._met_since
        else:
            self._met_since = None
            self._failed_since = now if self._failed_since is None else self._failed_since
        self._apply(self._trigger(now), now)

    # -- judging

    def _first_failure(self, sample: Sample, wall: float) -> str | None:
        limits = self.thresholds
        _, reached = self.reachability(wall)
        if reached < limits.dialbacks:
            return f"{reached} of {limits.dialbacks} dial-backs"
        if self.mode is Mode.ALWAYS:
            return None
        if sample.uptime < limits.min_uptime:
            return f"uptime {_duration(sample.uptime)} < {_duration(limits.min_uptime)}"
        if sample.up_bps < limits.min_up_bps:
            return f"upload {_rate(sample.up_bps)} < {_rate(limits.min_up_bps)}"
        if sample.down_bps < limits.min_down_bps:
            return f"download {_rate(sample.down_bps)} < {_rate(limits.min_down_bps)}"
        if sample.cpu > limits.max_cpu:
            return f"cpu {_percent(sample.cpu)} > {_percent(limits.max_cpu)}"
        return None

    def reachability(self, wall: float) -> tuple[Address | None, int]:
        """The observed address most supernodes reached, and by how many (distinct IPs
        and keys), counting attestations still fresh at Unix time ``wall``."""
        best: tuple[Address | None, int] = (None, 0)
        for observed, group in self._by_observed(wall).items():
            if len(group) > best[1]:
                best = (observed, len(group))
        return best

    def _by_observed(self, wall: float) -> dict[Address, list[Attestation]]:
        oldest = wall - self.thresholds.attestation_max_age
        groups: dict[Address, list[Attestation]] = {}
        keys: dict[Address, set[bytes]] = {}
        newest_first = sorted(self._attestations.values(), key=lambda a: -a.issued_at)
        for attestation in newest_first:
            seen = keys.setdefault(attestation.observed, set())
            if attestation.issued_at < oldest or attestation.signer.sign_key in seen:
                continue  # one supernode on two addresses counts once
            seen.add(attestation.signer.sign_key)
            groups.setdefault(attestation.observed, []).append(attestation)
        return groups

    def _trigger(self, now: float) -> Trigger:
        limits = self.thresholds
        if self._failed_since is not None:
            failing = now - self._failed_since >= limits.demote_hold
            dwelt = now - self._promoted_at >= limits.min_dwell
            return Trigger.FAILED_LONG if failing and dwelt else Trigger.FAILED
        assert self._met_since is not None
        held = now - self._met_since >= limits.promote_hold
        cooled = now - self._demoted_at >= limits.min_dwell
        return Trigger.HELD if held and cooled else Trigger.MET

    def _apply(self, trigger: Trigger, now: float) -> None:
        new = TRANSITIONS[self.role].get(trigger, self.role)
        if new is self.role:
            return
        old, self.role, self._since = self.role, new, now
        if new is Role.SUPERNODE and old is Role.CANDIDATE:
            self._promoted_at = now
            self._demoted_for = None
            self.counts["promoted"] += 1
        elif new is Role.CLIENT and old is Role.DEMOTING:
            self._demoted_at = now
            self._demoted_for = f"{self._failure} for {_duration(now - self._failed(now))}"
            self.counts["demoted"] += 1
        self._events.append(RoleChanged(old, new, self.reason(now), now + self.wall_offset))

    def _failed(self, now: float) -> float:
        return now if self._failed_since is None else self._failed_since

    # -- outputs

    def get_timer(self) -> float | None:
        """When a hold runs out: call :meth:`update` then, with a fresh sample."""
        limits = self.thresholds
        if self.role is Role.CANDIDATE and self._met_since is not None:
            return max(self._met_since + limits.promote_hold, self._demoted_at + limits.min_dwell)
        if self.role is Role.DEMOTING and self._failed_since is not None:
            return max(
                self._failed_since + limits.demote_hold, self._promoted_at + limits.min_dwell
            )
        return None

    def dialbacks_wanted(self, now: float) -> int:
        """How many more dial-back tests to ask for, from supernodes on IPs not yet
        counted: enough to have ``dialbacks`` that stay fresh for ``refresh_before``.
        Always 0 under ``"never"``."""
        if self.mode is Mode.NEVER:
            return 0
        limits = self.thresholds
        _, lasting = self.reachability(now + self.wall_offset + limits.refresh_before)
        return max(0, limits.dialbacks - lasting)

    def counted_ips(self, now: float) -> frozenset[str]:
        """Supernode IPs whose attestations count now: ask others for new tests."""
        wall = now + self.wall_offset
        return frozenset(a.signer_ip for group in self._by_observed(wall).values() for a in group)

    def relay_budget(self) -> tuple[int, float]:
        """The most calls and bits per second this node relays now; (0, 0) unless serving."""
        if not self.is_supernode:
            return 0, 0.0
        caps = self.caps
        uplink = math.inf if self._sample is None else self._sample.up_bps * caps.uplink_share
        return caps.max_calls, min(caps.max_bps, uplink)

    def may_relay(self, calls: int, bps: float, extra_bps: float = 0.0) -> bool:
        """Whether one more relayed call of ``extra_bps`` fits, with ``calls`` calls and
        ``bps`` bits per second relayed now."""
        max_calls, max_bps = self.relay_budget()
        return calls < max_calls and bps + extra_bps <= max_bps

    def reason(self, now: float) -> str:
        """One line for ``edge ctl status``: the role and why."""
        mode, limits = self.mode.value, self.thresholds
        if self.mode is Mode.NEVER:
            return "never: operator setting"
        if self.role is Role.CANDIDATE:
            held = _duration(now - (self._met_since or now))
            return f"{mode}: candidate, conditions held {held} of {_duration(limits.promote_hold)}"
        if self.role is Role.SUPERNODE:
            since = _utc(self._promoted_at + self.wall_offset)
            return f"supernode since {since} ({mode}: {self._reach(now)})"
        if self.role is Role.DEMOTING:
            failing = _duration(now - self._failed(now))
            return f"demoting: {self._failure} for {failing} of {_duration(limits.demote_hold)}"
        if self._demoted_for is not None and now - self._demoted_at < limits.min_dwell:
            return f"demoted: {self._demoted_for}"
        if self._sample is None:
            return f"{mode}: no measurements yet"
        return f"{mode}: {self._failure or 'conditions hold'}"

    def _reach(self, now: float) -> str:
        observed, count = self.reachability(now + self.wall_offset)
        where = "nowhere" if observed is None else f"{observed[0]}:{observed[1]}"
        return f"reachable at {where}, {count} dial-backs"

    def status(self, now: float) -> dict[str, Any]:
        """What ``edge ctl status`` shows about promotion, as plain JSON values."""
        observed, count = self.reachability(now + self.wall_offset)
        max_calls, max_bps = self.relay_budget()
        sample = self._sample
        return {
            "supernode": self.is_supernode,
            "state": self.role.value,
            "mode": self.mode.value,
            "reason": self.reason(now),
            "since": self._since + self.wall_offset,
            "dialbacks": {
                "verified": count,
                "needed": self.thresholds.dialbacks,
                "address": None if observed is None else f"{observed[0]}:{observed[1]}",
            },
            "relay": {
                "calls": 0 if sample is None else sample.relayed_calls,
                "max_calls": max_calls,
                "bps": 0.0 if sample is None else sample.relay_bps,
                "max_bps": max_bps,
            },
        }


def _mode(mode: Mode | str) -> Mode:
    try:
        return Mode(mode)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in Mode)
        raise PromotionMisuse(f"promotion: mode {mode!r} is not one of {choices}") from None


def _check_number(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise PromotionMisuse(f"promotion: {name} {value!r} is not a finite number >= 0")


def _check_sample(sample: Sample) -> None:
    for name in ("uptime", "up_bps", "down_bps", "cpu", "relayed_calls", "relay_bps"):
        _check_number(name, getattr(sample, name))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.3g} h"


def _rate(bps: float) -> str:
    return f"{bps / 1e6:.3g} Mbit/s"


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


def _utc(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- the client's side of the dial-back exchange


@dataclass(frozen=True)
class _Asked:
    index: int
    supernode: Address
    sign_key: bytes
    key_id: bytes
    deadline: float
    confirmed: bool = False


class DialbackClient:
    """Dial-back tests this device asks supernodes for (``port`` is its listening port P).

    :meth:`request` gives the DIALBACK_REQUEST body to send in a supernode's
    session; probes that arrive on the listening port go to
    :meth:`receive_probe`, which gives the DIALBACK_CONFIRM to send back in
    that session; DIALBACK_RESULTs go to :meth:`receive_result`, which gives
    the attestation to pass to :meth:`Promotion.add_attestation`. A test with
    no result by ``timeout`` is forgotten (:meth:`handle_timer`).
    """

    def __init__(
        self, port: int, *, timeout: float = 15.0, max_pending: int = 8, first_id: int = 1
    ) -> None:
        if not 1 <= port <= 0xFFFF:
            raise PromotionMisuse(f"dial-back: port {port} is not in 1..65535")
        self.port = port
        self.timeout = timeout
        self.max_pending = max_pending
        self._next_id = first_id
        self._asked: dict[int, _Asked] = {}
        self.counts: Counter[str] = Counter()
        """``request``, ``probe``, ``stray-probe``, ``stray-result``, ``reachable``,
        ``unreachable``, ``mismatch``, ``timeout``, and the codes of refused tests."""

    def pending_with(self) -> Iterable[Address]:
        """Supernodes with a test running: do not ask them again yet."""
        return [asked.supernode for asked in self._asked.values()]

    def request(
        self, index: int, supernode: Certificate, address: Address, now: float
    ) -> dict[str, int]:
        """Start a test with the supernode of session ``index``, reached at ``address``
        and certified by ``supernode``: send the body returned, as DIALBACK_REQUEST."""
        if len(self._asked) >= self.max_pending:
            raise PromotionMisuse(f"dial-back: {self.max_pending} tests running already")
        sign_key = supernode.sign_key
        if any(asked.sign_key == sign_key for asked in self._asked.values()):
            raise PromotionMisuse("dial-back: a test with this supernode is running already")
        request_id, self._next_id = self._next_id, (self._next_id + 1) & 0xFFFFFFFF
        self._asked[request_id] = _Asked(
            index, address, sign_key, key_id(sign_key), now + self.timeout
        )
        self.counts["request"] += 1
        return {"request_id": request_id, "port": self.port}

    def receive_probe(self, data: bytes, now: float) -> tuple[int, dict[str, Any]] | None:
        """A datagram that :func:`~edge.wire.hot.peek_type` said is a DIALBACK_PROBE:
        ``(session index, DIALBACK_CONFIRM body)`` to send, or ``None`` for a probe we
        did not ask for. Raises :class:`~edge.wire.errors.WireError` for bad bytes."""
        message = decode(data)
        if message.type is not MsgType.DIALBACK_PROBE:
            raise PromotionMisuse(f"dial-back: {message.type.name} is not a probe")
        wanted = bytes(message.body.supernode_key_id)
        for request_id, asked in self._asked.items():
            if asked.key_id == wanted and not asked.confirmed and asked.deadline > now:
                self._asked[request_id] = replace(asked, confirmed=True)
                self.counts["probe"] += 1
                return asked.index, {"request_id": request_id, "nonce": bytes(message.body.nonce)}
        self.counts["stray-probe"] += 1
        return None

    def receive_result(self, index: int, body: Any, now: float) -> bytes | None:
        """A DIALBACK_RESULT from session ``index``: the attestation bytes when the
        supernode reached us, else ``None`` (the reason is counted)."""
        asked = self._asked.get(body.request_id)
        if asked is None or asked.index != index:
            self.counts["stray-result"] += 1
            return None
        del self._asked[body.request_id]
        if body.code != ErrorCode.OK:
            self.counts[_code_name(body.code)] += 1
            return None
        if not body.reachable:
            self.counts["unreachable"] += 1
            return None
        raw = bytes(body.attestation)
        if not _names(raw, asked, body.observed):
            self.counts["mismatch"] += 1
            return None
        self.counts["reachable"] += 1
        return raw

    def get_timer(self) -> float | None:
        return min((asked.deadline for asked in self._asked.values()), default=None)

    def handle_timer(self, now: float) -> None:
        for request_id in [r for r, asked in self._asked.items() if asked.deadline <= now]:
            del self._asked[request_id]
            self.counts["timeout"] += 1


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower().replace("_", "-")
    except ValueError:
        return f"code-{code}"


def _names(raw: bytes, asked: _Asked, observed: Any) -> bool:
    """Whether the attestation is the session peer's, about the address it reported.

    Only the binding: the signature and certificate are checked by
    :meth:`Promotion.add_attestation`.
    """
    try:
        tbs = parse_dialback_attestation(raw).tbs
        signer = bytes(parse_certificate(bytes(tbs.certificate)).tbs.sign_key)
    except WireError:
        return False
    said = (tbs.supernode[0], tbs.supernode[1])
    return signer == asked.sign_key and said == asked.supernode and tbs.observed == observed

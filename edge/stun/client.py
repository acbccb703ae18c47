"""A sans-IO STUN Binding client transaction over UDP (RFC 8489 §6.2.1, §6.3).

How it works: :class:`BindingTransaction` sends one Binding request to one
server and retransmits it until an answer comes or the schedule runs out.
With the RFC defaults (RTO 500 ms, Rc 7, Rm 16) the request goes out at 0,
0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s — each wait twice the one before — and the
transaction fails with :attr:`~edge.stun.events.Failure.TIMEOUT` Rm times RTO
after the last one, at 39.5 s. The core holds the next deadline; the adapter
calls :meth:`handle_timer` when :meth:`get_timer` says so.

A received datagram must parse (else the codec's StunError is raised for the
adapter to count) and, when it carries FINGERPRINT, verify it (FingerprintError).
Anything that is not a response to our transaction id is ignored and counted
in ``ignored``; so is anything after the transaction ended. The first
matching response ends the transaction, with one event:

* a success response with XOR-MAPPED-ADDRESS (or, from an old server, only
  MAPPED-ADDRESS) gives :class:`~edge.stun.events.BindingResult`;
* an error response gives :class:`~edge.stun.events.BindingFailed` with its
  code, reason and UNKNOWN-ATTRIBUTES;
* a response with no address, or with a comprehension-required attribute the
  codec does not know, gives BindingFailed with ``Failure.BAD_RESPONSE``
  (RFC 8489 §6.3.3, §6.3.4: such a transaction has failed).

Responses are accepted from any source address, since an RFC 5780 server
answers a CHANGE-REQUEST from its alternate address; the 96-bit random
transaction id is what ties a response to the request.
"""

import os
from collections import Counter, deque

from edge.sansio import Address
from edge.stun.attributes import AttrType, ChangeFlags, ErrorValue
from edge.stun.codec import (
    TRANSACTION_ID_SIZE,
    Class,
    Message,
    Method,
    build,
    check_fingerprint,
    parse,
)
from edge.stun.errors import StunBuildError
from edge.stun.events import BindingFailed, BindingResult, Failure

DEFAULT_RTO = 0.5
DEFAULT_RC = 7
DEFAULT_RM = 16
"""RFC 8489 §6.2.1 defaults: initial RTO, requests sent, last wait in RTOs."""


class BindingTransaction:
    """One Binding request to ``server``, first sent at ``now``; see the module docstring.

    Drain :meth:`datagrams_to_send` (the first request is ready at once), feed
    datagrams from the socket to :meth:`receive_datagram`, call
    :meth:`handle_timer` at :meth:`get_timer`, and read the one event from
    :meth:`next_event`. ``change`` adds CHANGE-REQUEST (RFC 5780 §7.2).
    """

    def __init__(
        self,
        server: Address,
        now: float,
        *,
        rto: float = DEFAULT_RTO,
        rc: int = DEFAULT_RC,
        rm: int = DEFAULT_RM,
        transaction_id: bytes | None = None,
        software: str | None = None,
        fingerprint: bool = True,
        change: ChangeFlags | None = None,
    ) -> None:
        if not rto > 0 or rc < 1 or rm < 1:
            raise StunBuildError(f"need rto > 0, rc >= 1, rm >= 1; got {rto}, {rc}, {rm}")
        tid = os.urandom(TRANSACTION_ID_SIZE) if transaction_id is None else transaction_id
        self.server = server
        self.transaction_id = tid
        self.rto = rto
        self.rc = rc
        self.rm = rm
        self.attempts = 0
        """Requests sent so far."""
        self.ignored: Counter[str] = Counter()
        """Datagrams that did not end the transaction, by reason."""
        self.request = self._build_request(software, fingerprint, change)
        self._outbox: deque[tuple[bytes, Address]] = deque(maxlen=rc)
        self._events: deque[BindingResult | BindingFailed] = deque(maxlen=1)
        self._deadline: float | None = None
        self._sent_at = now
        self._send(now)

    @property
    def is_done(self) -> bool:
        """True once the transaction has its result (which may still wait in next_event)."""
        return self._deadline is None

    def _build_request(
        self, software: str | None, fingerprint: bool, change: ChangeFlags | None
    ) -> bytes:
        message = Message(Method.BINDING, Class.REQUEST, self.transaction_id)
        if change is not None:
            message.attributes.append((AttrType.CHANGE_REQUEST, int(change)))
        if software is not None:
            message.attributes.append((AttrType.SOFTWARE, software))
        if fingerprint:
            message.add_fingerprint()
        return build(message)

    # -- the DatagramCore protocol

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Take one datagram from the socket; raises StunError for bytes that are not STUN."""
        message = parse(data)
        if message.get(AttrType.FINGERPRINT) is not None:
            check_fingerprint(data)
        reason = self._mismatch(message)
        if reason is not None:
            self.ignored[reason] += 1
            return
        self._deadline = None
        self._events.append(self._outcome(message, addr, now))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = list(self._outbox)
        self._outbox.clear()
        return out

    def get_timer(self) -> float | None:
        return self._deadline

    def handle_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        if self.attempts < self.rc:
            self._send(now)
            return
        self._deadline = None
        waited = now - self._sent_at
        reason = f"no response after {self.attempts} requests ({waited:g} s since the last)"
        self._events.append(BindingFailed(Failure.TIMEOUT, reason))

    def next_event(self) -> BindingResult | BindingFailed | None:
        return self._events.popleft() if self._events else None

    # -- inside

    def _send(self, now: float) -> None:
        self.attempts += 1
        self._sent_at = now
        self._outbox.append((self.request, self.server))
        if self.attempts < self.rc:
            self._deadline = now + self.rto * 2 ** (self.attempts - 1)
        else:
            self._deadline = now + self.rto * self.rm

    def _mismatch(self, message: Message) -> str | None:
        if self.is_done:
            return "late"
        if message.cls not in (Class.SUCCESS, Class.ERROR):
            return "not a response"
        if message.transaction_id != self.transaction_id:
            return "other transaction"
        if message.method != Method.BINDING:
            return "other method"
        return None

    def _outcome(
        self, message: Message, source: Address, now: float
    ) -> BindingResult | BindingFailed:
        unknown = message.unknown_required
        if unknown:
            names = ", ".join(f"0x{kind:04x}" for kind in unknown)
            return BindingFailed(Failure.BAD_RESPONSE, f"unknown attributes {names}")
        if message.cls is Class.ERROR:
            return _failed(message)
        mapped = message.get(AttrType.XOR_MAPPED_ADDRESS) or message.get(AttrType.MAPPED_ADDRESS)
        if mapped is None:
            return BindingFailed(Failure.BAD_RESPONSE, "success response without an address")
        return BindingResult(
            mapped=mapped,
            other_address=message.get(AttrType.OTHER_ADDRESS),
            response_origin=message.get(AttrType.RESPONSE_ORIGIN),
            rtt=now - self._sent_at,
            source=source,
            attempts=self.attempts,
        )


def _failed(message: Message) -> BindingFailed:
    error: ErrorValue | None = message.get(AttrType.ERROR_CODE)
    if error is None:
        return BindingFailed(Failure.BAD_RESPONSE, "error response without ERROR-CODE")
    unknown = message.get(AttrType.UNKNOWN_ATTRIBUTES) or []
    return BindingFailed(error.code, error.reason, tuple(unknown))

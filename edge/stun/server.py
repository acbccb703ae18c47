"""A sans-IO STUN Binding server: "Am I X?" answered with standard STUN (RFC 8489 §6.3).

How it works: :class:`BindingServer` is a :class:`~edge.sansio.DatagramCore`
for one UDP socket. Each received datagram goes through :meth:`receive_datagram`:

1. :func:`~edge.stun.codec.parse` it; malformed bytes raise the codec's
   :class:`~edge.stun.errors.StunError` (counted as ``MALFORMED``), and the
   adapter counts the drop. A FINGERPRINT that is present must verify (§14.7).
2. Indications and responses are ignored (``IGNORED``): nothing is sent back.
3. A request whose method is not Binding gets 400 (``BAD_REQUEST``); TURN is
   not served here.
4. A Binding request with comprehension-required attributes we do not honour
   gets 420 with UNKNOWN-ATTRIBUTES (§6.3.1.1; ``UNKNOWN_ATTRIBUTE``). Those
   are the types the codec does not know, RESPONSE-PORT and PADDING (RFC 5780
   §7.5, §7.6, not implemented), and CHANGE-REQUEST unless it asks for no
   change at all and an alternate address is configured (below).
5. Otherwise a success response (``SUCCESS``) with XOR-MAPPED-ADDRESS (the
   request's source address), SOFTWARE and FINGERPRINT.

RFC 5780: with ``other_address`` the server advertises an alternate address and
port (OTHER-ADDRESS, served by another socket or process) and, as RFC 5780 §6.1
requires, includes MAPPED-ADDRESS beside XOR-MAPPED-ADDRESS, plus
RESPONSE-ORIGIN when ``response_origin`` (the address clients send to) is set.
Without ``other_address`` only XOR-MAPPED-ADDRESS is sent: clients without the
magic cookie (RFC 3489), which would need MAPPED-ADDRESS, are refused by the
codec anyway. On its own this core answers only from the socket a request came
in on, so CHANGE-REQUEST with the change-IP or change-port flag gets 420 (RFC
5780 §6: a server without an alternate address and port MUST answer 420);
without ``other_address`` so does any CHANGE-REQUEST. An owner that does hold
the four sockets (:class:`~edge.stun.discovery.DiscoveryServer`) sets
``accept_change``, calls :meth:`BindingServer.answer` with the ``origin`` the
answer will leave from, and sends it from there.

No amplification: only a well-formed request is answered, with one datagram
of at most :data:`MAX_RESPONSE` bytes; SOFTWARE is capped at construction and
UNKNOWN-ATTRIBUTES at :data:`MAX_UNKNOWN` entries. Answers wait in a queue of
at most ``max_queued`` datagrams; beyond it they are dropped (``OVERLOADED``).
"""

from collections import Counter, deque
from enum import Enum

from edge.sansio import Address
from edge.stun.attributes import AttrType, ChangeFlags
from edge.stun.codec import Class, Message, Method, build, check_fingerprint, parse
from edge.stun.errors import StunBuildError, StunError

MAX_SOFTWARE = 127
"""SOFTWARE we send, in UTF-8 bytes: fewer than 128 characters (RFC 8489 §14.14) and
no more bytes than that, so that :data:`MAX_RESPONSE` holds."""

MAX_UNKNOWN = 16
"""At most this many types are listed in UNKNOWN-ATTRIBUTES."""

MAX_RESPONSE = 512
"""No response is larger than this; with the caps above the largest is 256 bytes."""

DEFAULT_MAX_QUEUED = 1024

NOT_HONOURED = frozenset({AttrType.RESPONSE_PORT, AttrType.PADDING})
"""Comprehension-required attributes the codec parses but this server does not act on."""


class Outcome(Enum):
    """What became of one received datagram; :attr:`BindingServer.counts` counts them."""

    SUCCESS = "success"
    BAD_REQUEST = "bad-request"
    UNKNOWN_ATTRIBUTE = "unknown-attribute"
    MALFORMED = "malformed"
    IGNORED = "ignored"
    OVERLOADED = "overloaded"


class BindingServer:
    """Answers STUN Binding requests on one socket; see the module docstring.

    Drive it with :func:`~edge.runtime.adapters.open_datagram`. It has no timer
    and emits no events; ``counts`` tells what it did.
    """

    def __init__(
        self,
        software: str = "edge",
        other_address: Address | None = None,
        *,
        response_origin: Address | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        accept_change: bool = False,
    ) -> None:
        if len(software.encode("utf-8", "replace")) > MAX_SOFTWARE:
            raise StunBuildError(f"SOFTWARE: {software!r} is over {MAX_SOFTWARE} bytes")
        if max_queued < 1:
            raise StunBuildError(f"max_queued must be at least 1, got {max_queued}")
        self.software = software
        self.other_address = other_address
        self.response_origin = response_origin
        """RESPONSE-ORIGIN (RFC 5780 §7.3), sent with ``other_address``: the address
        clients send to. It may be set after the socket is bound (port 0)."""
        self.accept_change = accept_change
        """With ``other_address``: the owner sends each answer from the socket its
        CHANGE-REQUEST names, so any flags are answered rather than refused."""
        self.max_queued = max_queued
        self.counts: Counter[Outcome] = Counter()
        """Received datagrams by outcome."""
        self._outbox: deque[tuple[bytes, Address]] = deque()
        self._check_configuration()

    def _check_configuration(self) -> None:
        """Encode every configured value once, so that a bad one fails here, not per request."""
        message = Message(Method.BINDING, Class.SUCCESS, bytes(12))
        message.attributes.append((AttrType.SOFTWARE, self.software))
        for kind, address in (
            (AttrType.OTHER_ADDRESS, self.other_address),
            (AttrType.RESPONSE_ORIGIN, self.response_origin),
        ):
            if address is not None:
                message.attributes.append((kind, address))
        build(message)

    # -- the DatagramCore protocol

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Answer one datagram; raises a StunError (after counting it) for bad bytes."""
        request = read_request(data, self.counts)
        if request is None:
            return
        response, outcome = self.answer(request, addr)
        if len(self._outbox) >= self.max_queued:
            self.counts[Outcome.OVERLOADED] += 1
            return
        self.counts[outcome] += 1
        self._outbox.append((response, addr))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = list(self._outbox)
        self._outbox.clear()
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def next_event(self) -> object | None:
        return None

    # -- answering

    def answer(
        self, request: Message, source: Address, *, origin: Address | None = None
    ) -> tuple[bytes, Outcome]:
        """The response to a parsed request from ``source``, and how to count it.

        ``origin`` is the address a success leaves from, for RESPONSE-ORIGIN; by
        default ``response_origin``.
        """
        if request.method != Method.BINDING:
            message = self._error(request, 400, "Bad Request: only Binding is served")
            return self._finish(message), Outcome.BAD_REQUEST
        unknown = self._unknown(request)
        if unknown:
            message = self._error(request, 420, "Unknown Attribute")
            message.attributes.append((AttrType.UNKNOWN_ATTRIBUTES, unknown))
            return self._finish(message), Outcome.UNKNOWN_ATTRIBUTE
        success = self._success(request, source, origin or self.response_origin)
        return self._finish(success), Outcome.SUCCESS

    def _unknown(self, request: Message) -> list[int]:
        """Comprehension-required types this request carries that we will not honour."""
        found = list(request.unknown_required)
        found += [kind for kind, _ in request.attributes if kind in NOT_HONOURED]
        if not self._change_allowed(request):
            found.append(AttrType.CHANGE_REQUEST)
        return [int(kind) for kind in dict.fromkeys(found)][:MAX_UNKNOWN]

    def _change_allowed(self, request: Message) -> bool:
        """RFC 5780 §6: no alternate address, or a change we cannot make, means 420."""
        flags = request.get(AttrType.CHANGE_REQUEST)
        if flags is None:
            return True
        if self.other_address is None:
            return False
        return self.accept_change or flags == ChangeFlags.NONE

    def _success(self, request: Message, source: Address, origin: Address | None) -> Message:
        message = Message(Method.BINDING, Class.SUCCESS, request.transaction_id)
        message.attributes.append((AttrType.XOR_MAPPED_ADDRESS, source))
        if self.other_address is not None:
            message.attributes.append((AttrType.MAPPED_ADDRESS, source))
            if origin is not None:
                message.attributes.append((AttrType.RESPONSE_ORIGIN, origin))
            message.attributes.append((AttrType.OTHER_ADDRESS, self.other_address))
        return message

    @staticmethod
    def _error(request: Message, code: int, reason: str) -> Message:
        message = Message(request.method, Class.ERROR, request.transaction_id)
        message.attributes.append((AttrType.ERROR_CODE, (code, reason)))
        return message

    def _finish(self, message: Message) -> bytes:
        message.attributes.append((AttrType.SOFTWARE, self.software))
        message.add_fingerprint()
        data = build(message)
        if len(data) > MAX_RESPONSE:
            raise StunBuildError(f"a {len(data)}-byte response, cap {MAX_RESPONSE}")
        return data


def read_request(data: bytes, counts: Counter[Outcome]) -> Message | None:
    """Steps 1 and 2 of the module docstring: the request to answer in ``data``, or None
    for an indication or a response (counted ``IGNORED``). Bad bytes, a FINGERPRINT
    that does not verify among them, are counted ``MALFORMED`` and raise StunError.
    """
    try:
        message = parse(data)
        if message.get(AttrType.FINGERPRINT) is not None:
            check_fingerprint(data)
    except StunError:
        counts[Outcome.MALFORMED] += 1
        raise
    if message.cls is not Class.REQUEST:
        counts[Outcome.IGNORED] += 1
        return None
    return message

"""The connectivity self-test ("Am I X?"): RFC 5780 NAT behaviour discovery, sans-IO.

How it works: :class:`ConnectivityTest` asks one RFC 5780 server a series of
Binding requests from ONE local socket, one
:class:`~edge.stun.client.BindingTransaction` at a time, and ends with one
:class:`~edge.stun.events.NatReport`. The server's primary address A1:P1 is
given; its alternate A2:P2 comes in OTHER-ADDRESS of the first answer. The
steps, in the order they run (:class:`Step`):

1. Test I (§4.3, §4.4): a plain request to A1:P1. No answer after every
   retransmission means UDP is blocked, and the test ends. The answer gives
   the reflexive address; when it equals the local address there is no NAT.
   An answer without a usable OTHER-ADDRESS (the server is no RFC 5780 server)
   ends the test with the behaviours unknown.
2. Filtering test II (§4.4): to A1:P1 with CHANGE-REQUEST change-IP and
   change-port, answered from A2:P2. An answer means endpoint-independent
   filtering; then go to 4.
3. Filtering test III: change-port only, answered from A1:P2. An answer means
   address-dependent filtering, none address-and-port-dependent.
4. Mapping test II (§4.3): a plain request to A2:P1. The same reflexive
   address as test I means endpoint-independent mapping and the end.
5. Mapping test III: a plain request to A2:P2. The same reflexive address as
   mapping test II means address-dependent mapping, another one
   address-and-port-dependent.

The filtering tests run before the mapping tests on purpose: a mapping test
sends to A2, and the packet it sends would open the NAT's filter to A2 for the
filtering test that follows, which would then read every NAT as
endpoint-independent. With no NAT the mapping tests are skipped (§4.3: no
further tests are necessary) and the mapping is endpoint-independent.

An answer to a filtering test counts only if it came from the address the
change names; one from elsewhere (a server that ignores CHANGE-REQUEST)
leaves the filtering unknown, and so does an error answer (a server that
cannot change answers 420). A mapping test without an answer leaves the
mapping unknown.

Timing: test I and the mapping tests use the RFC 8489 schedule (:data:`FULL`:
requests at 0, 0.5, 1.5 ... 31.5 s, given up at 39.5 s), since no answer there
is a failure to be sure of. A filtering test expects that no answer may be
the answer, so it uses :data:`SHORT`: three requests, at 0, 0.5 and 1.5 s, and
a verdict at 3.5 s. Losing all three to the network reads as filtering; RFC
5780 tests cannot tell the two apart, which is why they are retransmitted.
The core holds one deadline; the adapter calls :meth:`ConnectivityTest.handle_timer`
when :meth:`ConnectivityTest.get_timer` says so.

Received datagrams that are not STUN raise the codec's StunError (for the
adapter to count and drop); answers to a step that has ended, and anything
else that is not the current transaction's answer, are counted in
:attr:`ConnectivityTest.ignored`.
"""

from collections import Counter, deque
from dataclasses import dataclass
from enum import Enum

from edge.sansio import Address
from edge.stun.attributes import ChangeFlags
from edge.stun.client import DEFAULT_RC, DEFAULT_RM, DEFAULT_RTO, BindingTransaction
from edge.stun.events import (
    BindingFailed,
    BindingResult,
    Failure,
    FilteringBehaviour,
    MappingBehaviour,
    NatReport,
)

MAX_QUEUED = 16
"""Requests waiting to be sent; one transaction runs at a time, so a few suffice."""


@dataclass(frozen=True)
class Schedule:
    """An RFC 8489 §6.2.1 retransmission schedule: initial RTO, requests sent (Rc),
    and the last wait in RTOs (Rm)."""

    rto: float
    rc: int
    rm: int


FULL = Schedule(DEFAULT_RTO, DEFAULT_RC, DEFAULT_RM)
"""The RFC defaults: an answer is given up at 39.5 s."""

SHORT = Schedule(DEFAULT_RTO, 3, 4)
"""For the filtering tests, where silence is a result: given up at 3.5 s."""


class Step(Enum):
    """The tests, in the order they may run (see the module docstring)."""

    TEST_I = "test I"
    FILTERING_II = "filtering test II"
    FILTERING_III = "filtering test III"
    MAPPING_II = "mapping test II"
    MAPPING_III = "mapping test III"
    DONE = "done"


class Reply(Enum):
    """What one test's transaction came to."""

    SAME = "same"
    """Answered, with the reflexive address the step compares against."""
    CHANGED = "changed"
    """Answered, with another reflexive address."""
    SILENT = "silent"
    """No answer after every retransmission."""
    REFUSED = "refused"
    """An error answer, or one that cannot be used."""


_ANSWERED = (Reply.SAME, Reply.CHANGED)
_ALL = (*_ANSWERED, Reply.SILENT, Reply.REFUSED)

NEXT: dict[tuple[Step, Reply], Step] = {
    **{(Step.TEST_I, reply): Step.FILTERING_II for reply in _ANSWERED},
    (Step.TEST_I, Reply.SILENT): Step.DONE,
    (Step.TEST_I, Reply.REFUSED): Step.DONE,
    **{(Step.FILTERING_II, reply): Step.MAPPING_II for reply in _ANSWERED},
    (Step.FILTERING_II, Reply.SILENT): Step.FILTERING_III,
    (Step.FILTERING_II, Reply.REFUSED): Step.MAPPING_II,
    **{(Step.FILTERING_III, reply): Step.MAPPING_II for reply in _ALL},
    (Step.MAPPING_II, Reply.SAME): Step.DONE,
    (Step.MAPPING_II, Reply.CHANGED): Step.MAPPING_III,
    (Step.MAPPING_II, Reply.SILENT): Step.DONE,
    (Step.MAPPING_II, Reply.REFUSED): Step.DONE,
    **{(Step.MAPPING_III, reply): Step.DONE for reply in _ALL},
}
"""The transition table: the step that follows each step's reply. Two guards
stand beside it: test I without OTHER-ADDRESS ends the test, and with no NAT
the mapping tests are skipped."""

FILTERING: dict[tuple[Step, Reply], FilteringBehaviour] = {
    **{(Step.FILTERING_II, r): FilteringBehaviour.ENDPOINT_INDEPENDENT for r in _ANSWERED},
    **{(Step.FILTERING_III, r): FilteringBehaviour.ADDRESS_DEPENDENT for r in _ANSWERED},
    (Step.FILTERING_III, Reply.SILENT): FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT,
}
"""The filtering behaviour each reply proves (RFC 5780 §4.4); others prove none."""

MAPPING: dict[tuple[Step, Reply], MappingBehaviour] = {
    (Step.MAPPING_II, Reply.SAME): MappingBehaviour.ENDPOINT_INDEPENDENT,
    (Step.MAPPING_III, Reply.SAME): MappingBehaviour.ADDRESS_DEPENDENT,
    (Step.MAPPING_III, Reply.CHANGED): MappingBehaviour.ADDRESS_AND_PORT_DEPENDENT,
}
"""The mapping behaviour each reply proves (RFC 5780 §4.3); others prove none."""

_CHANGES = {
    Step.FILTERING_II: ChangeFlags.CHANGE_IP | ChangeFlags.CHANGE_PORT,
    Step.FILTERING_III: ChangeFlags.CHANGE_PORT,
}
_MAPPING_STEPS = (Step.MAPPING_II, Step.MAPPING_III)


class ConnectivityTest:
    """The self-test against the RFC 5780 server at ``server`` (an IP address, not a
    name), from the one socket bound at ``local``; see the module docstring.

    ``local`` is the address the server would see without a NAT: for a socket
    bound to the wildcard, the source address the host picks towards ``server``
    (what ``getsockname()`` says after ``connect()`` on a scratch UDP socket).
    Drain :meth:`datagrams_to_send` (the first request is ready at once), feed
    every datagram the socket receives to :meth:`receive_datagram`, call
    :meth:`handle_timer` at :meth:`get_timer`, and read the one
    :class:`~edge.stun.events.NatReport` from :meth:`next_event`.
    """

    def __init__(
        self,
        server: Address,
        local: Address,
        now: float,
        *,
        schedule: Schedule = FULL,
        filter_schedule: Schedule = SHORT,
        software: str | None = None,
    ) -> None:
        self.server = server
        self.local = local
        self.schedule = schedule
        self.filter_schedule = filter_schedule
        self.software = software
        self.step = Step.TEST_I
        self.ignored: Counter[str] = Counter()
        """Datagrams that answered no running test, by reason."""
        self.reflexive: Address | None = None
        self.udp_blocked = False
        """Test I got no answer at all."""
        self.other_address: Address | None = None
        self.mapping = MappingBehaviour.UNKNOWN
        self.filtering = FilteringBehaviour.UNKNOWN
        self._second: Address | None = None
        """The reflexive address mapping test II saw, for mapping test III."""
        self._notes: list[str] = []
        self._outbox: deque[tuple[bytes, Address]] = deque(maxlen=MAX_QUEUED)
        self._events: deque[NatReport] = deque(maxlen=1)
        self._transaction: BindingTransaction | None = self._start(Step.TEST_I, now)

    @property
    def is_done(self) -> bool:
        """True once the report is ready (it may still wait in next_event)."""
        return self.step is Step.DONE

    # -- the DatagramCore protocol

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Take one datagram from the socket; raises StunError for bytes that are not STUN."""
        transaction = self._transaction
        if transaction is None:
            self.ignored["late"] += 1
            return
        transaction.receive_datagram(data, addr, now)
        self._after(transaction, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = list(self._outbox)
        self._outbox.clear()
        return out

    def get_timer(self) -> float | None:
        return None if self._transaction is None else self._transaction.get_timer()

    def handle_timer(self, now: float) -> None:
        transaction = self._transaction
        if transaction is not None:
            transaction.handle_timer(now)
            self._after(transaction, now)

    def next_event(self) -> NatReport | None:
        return self._events.popleft() if self._events else None

    # -- running the steps

    def _start(self, step: Step, now: float) -> BindingTransaction:
        schedule = self.filter_schedule if step in _CHANGES else self.schedule
        transaction = BindingTransaction(
            self._destination(step),
            now,
            rto=schedule.rto,
            rc=schedule.rc,
            rm=schedule.rm,
            software=self.software,
            change=_CHANGES.get(step),
        )
        self._collect(transaction, now)
        return transaction

    def _collect(self, transaction: BindingTransaction, now: float) -> None:
        self._outbox.extend(transaction.datagrams_to_send(now))

    def _after(self, transaction: BindingTransaction, now: float) -> None:
        """Move what the transaction wants sent; when it has ended, take the next step."""
        self._collect(transaction, now)
        event = transaction.next_event()
        if event is None:
            return
        self.ignored.update(transaction.ignored)
        step = self._next(self._reply(event))
        if step is Step.DONE:
            self._finish()
        else:
            self._transaction = self._start(step, now)

    def _next(self, reply: Reply) -> Step:
        """Record what ``reply`` proves and choose the next step (the table and its guards)."""
        key = (self.step, reply)
        self.filtering = FILTERING.get(key, self.filtering)
        self.mapping = MAPPING.get(key, self.mapping)
        step = NEXT[key]
        if self.step is Step.TEST_I and self.other_address is None:
            step = Step.DONE
        if step in _MAPPING_STEPS and self.reflexive == self.local:
            self.mapping = MappingBehaviour.ENDPOINT_INDEPENDENT
            step = Step.DONE
        self.step = step
        return step

    def _finish(self) -> None:
        self._transaction = None
        self._events.append(
            NatReport(
                server=self.server,
                reflexive=self.reflexive,
                mapping=self.mapping,
                filtering=self.filtering,
                udp_blocked=self.udp_blocked,
                nat_present=None if self.reflexive is None else self.reflexive != self.local,
                other_address=self.other_address,
                note="; ".join(self._notes),
            )
        )

    # -- reading one answer

    def _reply(self, event: BindingResult | BindingFailed) -> Reply:
        if isinstance(event, BindingFailed):
            return self._failed(event)
        expected = self._origin(self.step)
        if expected is not None and event.source != expected:
            self._notes.append(f"{self.step.value}: answered from {event.source}, not {expected}")
            return Reply.REFUSED
        reference = self._remember(event)
        return Reply.SAME if event.mapped == reference else Reply.CHANGED

    def _failed(self, event: BindingFailed) -> Reply:
        if event.code == Failure.TIMEOUT:
            # Silence is what a filtering test measures; anywhere else it is a gap.
            if self.step not in _CHANGES:
                self._notes.append(f"no answer to {self.step.value}")
            if self.step is Step.TEST_I:
                self.udp_blocked = True
            return Reply.SILENT
        self._notes.append(f"{self.step.value}: {event.code} {event.reason}")
        return Reply.REFUSED

    def _remember(self, event: BindingResult) -> Address | None:
        """Keep what this answer teaches; the address the reply is compared against."""
        if self.step is Step.TEST_I:
            self.reflexive = event.mapped
            self.other_address = self._usable(event.other_address)
            return self.local
        if self.step is Step.MAPPING_III:
            return self._second
        if self.step is Step.MAPPING_II:
            self._second = event.mapped
        return self.reflexive

    def _usable(self, other: Address | None) -> Address | None:
        """OTHER-ADDRESS, if it differs from the server in both IP and port (§7.4)."""
        if other is None:
            self._notes.append("the server sent no OTHER-ADDRESS: it is no RFC 5780 server")
            return None
        if other[0] == self.server[0] or other[1] == self.server[1]:
            self._notes.append(f"OTHER-ADDRESS {other} does not change both IP and port")
            return None
        return other

    # -- where each step sends, and where its answer must come from

    def _destination(self, step: Step) -> Address:
        other = self.other_address
        if other is None or step not in _MAPPING_STEPS:
            return self.server
        if step is Step.MAPPING_II:
            return other[0], self.server[1]
        return other

    def _origin(self, step: Step) -> Address | None:
        other = self.other_address
        if other is None or step not in _CHANGES:
            return None
        if step is Step.FILTERING_II:
            return other
        return self.server[0], other[1]

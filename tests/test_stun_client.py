"""The sans-IO Binding transaction: the RFC schedule, and the server core in memory."""

import pytest

from edge.sansio import Address, DatagramCore
from edge.stun.attributes import AttrType, ChangeFlags
from edge.stun.client import BindingTransaction
from edge.stun.codec import Class, Message, Method, build, check_fingerprint, parse
from edge.stun.errors import FingerprintError, NotStun, StunBuildError
from edge.stun.events import BindingFailed, BindingResult, Failure
from edge.stun.server import BindingServer

SERVER: Address = ("192.0.2.10", 3478)
CLIENT: Address = ("198.51.100.20", 40000)
TID = bytes(range(12))


def run_schedule(transaction: BindingTransaction) -> tuple[list[float], float]:
    """Fire every timer with nothing answering: the send times and the failure time."""
    sends: list[float] = []
    now = 0.0
    while True:
        sends += [now] * len(transaction.datagrams_to_send(now))
        deadline = transaction.get_timer()
        if deadline is None:
            return sends, now
        now = deadline
        transaction.handle_timer(now)


def test_the_rfc_schedule_with_the_defaults() -> None:
    transaction = BindingTransaction(SERVER, 0.0)
    sends, failed_at = run_schedule(transaction)
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert failed_at == 39.5
    event = transaction.next_event()
    assert isinstance(event, BindingFailed)
    assert event.code == Failure.TIMEOUT
    assert transaction.next_event() is None
    assert transaction.attempts == 7


def test_a_shorter_schedule() -> None:
    transaction = BindingTransaction(SERVER, 0.0, rto=0.1, rc=3, rm=4)
    sends, failed_at = run_schedule(transaction)
    assert sends == [0.0, 0.1, pytest.approx(0.3)]
    assert failed_at == pytest.approx(0.7)


def test_an_early_timer_call_does_nothing() -> None:
    transaction = BindingTransaction(SERVER, 10.0)
    transaction.datagrams_to_send(10.0)
    transaction.handle_timer(10.4)
    assert transaction.datagrams_to_send(10.4) == []
    assert transaction.get_timer() == 10.5


def test_the_request_is_a_binding_request_with_fingerprint() -> None:
    transaction = BindingTransaction(SERVER, 0.0, transaction_id=TID, software="edge")
    [(data, to)] = transaction.datagrams_to_send(0.0)
    assert to == SERVER
    check_fingerprint(data)
    message = parse(data)
    assert (message.method, message.cls, message.transaction_id) == (
        Method.BINDING,
        Class.REQUEST,
        TID,
    )
    assert message.get(AttrType.SOFTWARE) == "edge"


def test_a_plain_request_is_twenty_bytes() -> None:
    transaction = BindingTransaction(SERVER, 0.0, fingerprint=False)
    [(data, _)] = transaction.datagrams_to_send(0.0)
    assert len(data) == 20


def test_loss_of_the_first_two_requests_then_success_on_the_third() -> None:
    server = BindingServer()
    transaction = BindingTransaction(SERVER, 0.0)
    sent_at: list[float] = []
    now = 0.0
    result = None
    while result is None:
        for data, to in transaction.datagrams_to_send(now):
            assert to == SERVER
            sent_at.append(now)
            if len(sent_at) <= 2:
                continue  # lost on the way
            server.receive_datagram(data, CLIENT, now)
            for answer, back in server.datagrams_to_send(now):
                assert back == CLIENT
                transaction.receive_datagram(answer, SERVER, now + 0.25)
        result = transaction.next_event()
        deadline = transaction.get_timer()
        if result is None:
            assert deadline is not None
            now = deadline
            transaction.handle_timer(now)
    assert sent_at == [0.0, 0.5, 1.5]
    assert result == BindingResult(
        mapped=CLIENT,
        other_address=None,
        response_origin=None,
        rtt=0.25,
        source=SERVER,
        attempts=3,
    )
    assert transaction.get_timer() is None
    assert transaction.is_done


def test_rfc5780_addresses_are_reported() -> None:
    server = BindingServer(other_address=("192.0.2.11", 3479), response_origin=SERVER)
    transaction = BindingTransaction(SERVER, 0.0)
    [(data, _)] = transaction.datagrams_to_send(0.0)
    server.receive_datagram(data, CLIENT, 0.0)
    [(answer, _)] = server.datagrams_to_send(0.0)
    transaction.receive_datagram(answer, SERVER, 0.01)
    event = transaction.next_event()
    assert isinstance(event, BindingResult)
    assert event.other_address == ("192.0.2.11", 3479)
    assert event.response_origin == SERVER


def test_an_error_response_fails_the_transaction_with_its_code() -> None:
    server = BindingServer()
    transaction = BindingTransaction(SERVER, 0.0, change=ChangeFlags.CHANGE_IP)
    [(data, _)] = transaction.datagrams_to_send(0.0)
    server.receive_datagram(data, CLIENT, 0.0)
    [(answer, _)] = server.datagrams_to_send(0.0)
    transaction.receive_datagram(answer, SERVER, 0.01)
    assert transaction.next_event() == BindingFailed(
        420, "Unknown Attribute", (AttrType.CHANGE_REQUEST,)
    )
    assert transaction.get_timer() is None


def response(cls: Class, *attributes: tuple[int, object], tid: bytes = TID) -> bytes:
    return build(Message(Method.BINDING, cls, tid, list(attributes)))


def test_other_transactions_and_non_responses_are_ignored_and_counted() -> None:
    transaction = BindingTransaction(SERVER, 0.0, transaction_id=TID)
    mapped = (AttrType.XOR_MAPPED_ADDRESS, CLIENT)
    transaction.receive_datagram(response(Class.SUCCESS, mapped, tid=bytes(12)), SERVER, 0.1)
    transaction.receive_datagram(response(Class.REQUEST), SERVER, 0.1)
    transaction.receive_datagram(response(Class.INDICATION), SERVER, 0.1)
    other = build(Message(Method.ALLOCATE, Class.SUCCESS, TID))
    transaction.receive_datagram(other, SERVER, 0.1)
    assert transaction.next_event() is None
    assert transaction.get_timer() == 0.5
    assert transaction.ignored == {
        "other transaction": 1,
        "not a response": 2,
        "other method": 1,
    }
    transaction.receive_datagram(response(Class.SUCCESS, mapped), SERVER, 0.2)
    transaction.receive_datagram(response(Class.SUCCESS, mapped), SERVER, 0.3)
    event = transaction.next_event()
    assert isinstance(event, BindingResult)
    assert event.rtt == 0.2
    assert transaction.next_event() is None
    assert transaction.ignored["late"] == 1


def test_old_servers_mapped_address_is_used() -> None:
    transaction = BindingTransaction(SERVER, 0.0, transaction_id=TID)
    transaction.receive_datagram(
        response(Class.SUCCESS, (AttrType.MAPPED_ADDRESS, CLIENT)), SERVER, 0.1
    )
    event = transaction.next_event()
    assert isinstance(event, BindingResult)
    assert event.mapped == CLIENT


@pytest.mark.parametrize(
    "attributes",
    [(), ((0x7F00, b"?"), (AttrType.XOR_MAPPED_ADDRESS, CLIENT))],
)
def test_unusable_success_responses_fail_the_transaction(
    attributes: tuple[tuple[int, object], ...],
) -> None:
    transaction = BindingTransaction(SERVER, 0.0, transaction_id=TID)
    transaction.receive_datagram(response(Class.SUCCESS, *attributes), SERVER, 0.1)
    event = transaction.next_event()
    assert isinstance(event, BindingFailed)
    assert event.code == Failure.BAD_RESPONSE


def test_an_error_response_without_error_code() -> None:
    transaction = BindingTransaction(SERVER, 0.0, transaction_id=TID)
    transaction.receive_datagram(response(Class.ERROR), SERVER, 0.1)
    event = transaction.next_event()
    assert isinstance(event, BindingFailed)
    assert event.code == Failure.BAD_RESPONSE


def test_bad_bytes_raise_and_leave_the_transaction_running() -> None:
    transaction = BindingTransaction(SERVER, 0.0, transaction_id=TID)
    with pytest.raises(NotStun):
        transaction.receive_datagram(b"\xed\x9e" + bytes(30), SERVER, 0.1)
    message = Message(Method.BINDING, Class.SUCCESS, TID, [(AttrType.XOR_MAPPED_ADDRESS, CLIENT)])
    message.add_fingerprint()
    data = bytearray(build(message))
    data[-1] ^= 0xFF
    with pytest.raises(FingerprintError):
        transaction.receive_datagram(bytes(data), SERVER, 0.1)
    assert transaction.next_event() is None
    assert transaction.get_timer() == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [{"rto": 0.0}, {"rc": 0}, {"rm": 0}, {"transaction_id": b"short"}],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(StunBuildError):
        BindingTransaction(SERVER, 0.0, **kwargs)  # type: ignore[arg-type]


def test_it_is_a_datagram_core() -> None:
    core: DatagramCore = BindingTransaction(SERVER, 0.0)
    assert core.get_timer() == 0.5

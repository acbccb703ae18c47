"""The contract between sans-IO protocol cores and the adapters that drive them.

A core never reads a clock or touches a socket: the adapter passes ``now`` (a
monotonic time in seconds) and the received bytes in, then drains bytes to send
and events out, and re-arms one timer at ``get_timer()``. Tests drive two cores
against each other with no adapter at all.
"""

from typing import Protocol

Address = tuple[str, int]
"""A UDP or TCP peer address as (host, port)."""


class DatagramCore(Protocol):
    """A core that speaks in whole datagrams to possibly many peers."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_event(self) -> object | None: ...


class StreamCore(Protocol):
    """A core that speaks over one ordered byte stream (TCP)."""

    def receive_data(self, data: bytes, now: float) -> None: ...

    def data_to_send(self) -> bytes: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_event(self) -> object | None: ...

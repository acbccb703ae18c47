"""Raw non-blocking UDP sockets for the hot paths: read in batches, count what fails.

The relay and the NAT-discovery sockets are watched with ``loop.add_reader``
rather than asyncio's datagram transports: when one is readable, up to
:data:`BATCH` datagrams are read before anything is sent, which keeps the
system calls per relayed packet near two. An error the kernel reports on one
read or send (an ICMP unreachable surfaces as ECONNREFUSED on Linux, a full
buffer as EAGAIN) concerns one peer or one datagram, never the socket: it is
counted under ``os-error-<errno>`` and the rest goes on, as a lossy network
would.
"""

import errno
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Final, cast

from edge.sansio import Address

BATCH: Final = 64
"""Datagrams read from one socket per wakeup before the owner flushes."""

RECV_SIZE: Final = 0x10000


def read_batch(sock: socket.socket, counters: Counter[str]) -> Iterator[tuple[bytes, Address]]:
    """The datagrams waiting on ``sock``, at most :data:`BATCH`, with their sources."""
    for _ in range(BATCH):
        try:
            data, source = sock.recvfrom(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            count_os_error(counters, exc)
            continue
        yield data, cast(Address, source[:2])


def send(sock: socket.socket, data: bytes, address: Address, counters: Counter[str]) -> None:
    """Send one datagram; a refusal by the kernel is counted, not raised."""
    try:
        sock.sendto(data, address)
    except OSError as exc:
        count_os_error(counters, exc)


def count_os_error(counters: Counter[str], exc: OSError) -> None:
    name = errno.errorcode.get(exc.errno or 0, "unknown").lower()
    counters[f"os-error-{name}"] += 1


def enlarge_buffers(sock: socket.socket, size: int) -> int:
    """Ask for ``size``-byte receive and send buffers; the receive size granted.

    The kernel caps SO_RCVBUF at ``net.core.rmem_max``; a process allowed to
    (CAP_NET_ADMIN) passes the cap with SO_RCVBUFFORCE. Either way a smaller
    buffer is not an error: the service runs, with more drops under bursts.
    """
    for force, plain in ((_RCVBUFFORCE, socket.SO_RCVBUF), (_SNDBUFFORCE, socket.SO_SNDBUF)):
        for option in (force, plain):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
                break
            except OSError:
                continue
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)
_SNDBUFFORCE: Final = getattr(socket, "SO_SNDBUFFORCE", 32)

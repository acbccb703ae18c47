"""The systemd notification protocol (sd_notify), without a dependency.

How it works: systemd passes the address of a Unix datagram socket in
``NOTIFY_SOCKET``, either a filesystem path or, with a leading ``@``, a name in
the abstract namespace. A notification is one datagram of newline-separated
``NAME=value`` assignments, such as ``READY=1``. Outside systemd the variable
is unset and every call returns False without doing anything.

Sending never blocks and never raises for the socket: a missing, refused or
full socket is logged at debug level and reported as False, because a service
must not fail over its supervisor's bookkeeping. Only a malformed state (the
caller's bug) raises.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from typing import Final

from edge.runtime.errors import RuntimeUsageError

MAX_STATE_BYTES: Final = 4096
"""Cap on one notification; systemd itself reads larger ones, ours are tiny."""

MAX_STATUS_CHARS: Final = 512

_log = logging.getLogger(__name__)


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``NAME=value`` lines) to the service manager.

    Returns True when the datagram was handed to the socket, False when there
    is no service manager to tell or the socket refused it.
    """
    payload = _encode(state)
    address = _socket_address((os.environ if env is None else env).get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(payload, address)
    except OSError as exc:
        _log.debug("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def ready(*, env: Mapping[str, str] | None = None) -> bool:
    """Start-up is complete (for ``Type=notify`` units)."""
    return notify("READY=1", env=env)


def stopping(*, env: Mapping[str, str] | None = None) -> bool:
    """A graceful shutdown has begun."""
    return notify("STOPPING=1", env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """A one-line status for ``systemctl status``; line breaks become spaces."""
    line = "".join(char if char.isprintable() else " " for char in text[:MAX_STATUS_CHARS])
    return notify(f"STATUS={line}", env=env)


def watchdog(*, env: Mapping[str, str] | None = None) -> bool:
    """Keep-alive for ``WatchdogSec=``; send it at least every half interval."""
    return notify("WATCHDOG=1", env=env)


def watchdog_interval(*, env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog interval in seconds when systemd expects pings from this process."""
    values = os.environ if env is None else env
    usec = values.get("WATCHDOG_USEC", "")
    pid = values.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


async def keep_watchdog(*, env: Mapping[str, str] | None = None) -> None:
    """Ping the watchdog at half its interval for as long as the event loop runs.

    The pings come from a task on the loop itself, so a loop that stalls stops
    pinging and systemd restarts the service. Returns at once without a watchdog.
    """
    interval = watchdog_interval(env=env)
    if interval is None:
        return
    while True:
        watchdog(env=env)
        await asyncio.sleep(interval / 2)


def _encode(state: str) -> bytes:
    try:
        payload = state.encode("utf-8")
    except UnicodeEncodeError:
        payload = b""
    if not payload or len(payload) > MAX_STATE_BYTES or "=" not in state:
        raise RuntimeUsageError(
            f"a notification is 1 to {MAX_STATE_BYTES} bytes of NAME=value lines,"
            f" got {state[:40]!r}"
        )
    return payload


def _socket_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        # The abstract namespace: a leading NUL instead of '@', no terminator.
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    _log.debug("NOTIFY_SOCKET %r is neither a path nor an abstract name; ignored", value)
    return None


__all__ = [
    "MAX_STATE_BYTES",
    "keep_watchdog",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

"""Racing connection attempts with staggered starts, as RFC 8305 (Happy Eyeballs) does.

Skype's login tried UDP, then TCP, then TCP 80, then TCP 443, waiting seconds
on each rung before the next. Here every rung is an attempt in preference
order; the first starts at once, each next one starts when the one before it
has failed or after ``stagger`` seconds, whichever comes first, and the first
to succeed wins while the others are cancelled. A device on an open network
connects over UDP as fast as ever; one behind a firewall that drops UDP gets
to TCP 443 after a few hundred milliseconds, not after many seconds.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from edge.errors import RemoteError
from edge.wire.codes import ErrorCode

T = TypeVar("T")

DEFAULT_STAGGER = 0.25
"""RFC 8305 §5 recommends 250 ms between connection attempts."""


@dataclass(frozen=True)
class Attempt(Generic[T]):
    """One rung of the ladder: a name for the log, and how to try it."""

    name: str
    start: Callable[[], Awaitable[T]]


class AllAttemptsFailed(RemoteError):
    """No rung of the ladder worked; ``reasons`` names each rung and why."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, reasons: list[tuple[str, str]]) -> None:
        text = "; ".join(f"{name}: {reason}" for name, reason in reasons)
        super().__init__(f"every attempt failed ({text})")
        self.reasons = reasons


async def race(attempts: Sequence[Attempt[T]], stagger: float = DEFAULT_STAGGER) -> tuple[str, T]:
    """The name and result of the first attempt to succeed.

    An attempt fails by raising an Exception (its text becomes its reason);
    the others are cancelled as soon as one succeeds, and when the caller is
    cancelled.
    """
    if not attempts:
        raise AllAttemptsFailed([])
    running: dict[asyncio.Task[T], str] = {}
    reasons: list[tuple[str, str]] = []
    pending = list(attempts)
    try:
        while pending or running:
            if pending:
                attempt = pending.pop(0)
                running[asyncio.ensure_future(attempt.start())] = attempt.name
            wait_for = stagger if pending else None
            done, _ = await asyncio.wait(
                running, timeout=wait_for, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                name = running.pop(task)
                error = task.exception()
                if error is None:
                    return name, task.result()
                reasons.append((name, str(error) or type(error).__name__))
    finally:
        for task in running:
            task.cancel()
    raise AllAttemptsFailed(reasons)

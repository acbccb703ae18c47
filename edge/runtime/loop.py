"""Start-up of the event loop: uvloop as the loop policy, signals as cancellation.

How it works: :func:`run` installs uvloop's policy, runs the main coroutine as a
task and turns SIGTERM and SIGINT into cancelling that task. The main coroutine
shuts down in its ``finally`` blocks (or by catching ``CancelledError``, doing
its cleanup and re-raising), exactly as it would for any other cancellation;
no shutdown path exists that tests do not also exercise.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any, Final

_log = logging.getLogger(__name__)

EXIT_SIGINT: Final = 130
"""Exit status after SIGINT, as shells report it (128 + 2)."""

_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def install_uvloop() -> None:
    """Make uvloop the event loop of every ``asyncio.run`` that follows.

    Without uvloop (a development machine, an exotic platform) asyncio's own
    loop is kept and a line is logged; the code runs the same on both.
    """
    try:
        import uvloop
    except ImportError:
        _log.info("uvloop is not installed; using the default asyncio event loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(main: Coroutine[Any, Any, int | None]) -> int:
    """Run ``main`` on uvloop until it returns or a signal stops it.

    Returns ``main``'s result when it returns one; otherwise 0, except that a
    stop by SIGINT gives :data:`EXIT_SIGINT` (a stop by SIGTERM is a clean exit
    for systemd). Exceptions from ``main`` propagate to the caller.
    """
    install_uvloop()
    return asyncio.run(_supervise(main))


async def _supervise(main: Coroutine[Any, Any, int | None]) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        _log.info("received %s, shutting down", signum.name)
        received.append(signum)
        task.cancel()

    for signum in _SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        result = await task
    except asyncio.CancelledError:
        if not received:
            raise
        result = None
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)
    if result is None and received:
        return 0 if received[0] is signal.SIGTERM else EXIT_SIGINT
    return 0 if result is None else result


__all__ = ["EXIT_SIGINT", "install_uvloop", "run"]

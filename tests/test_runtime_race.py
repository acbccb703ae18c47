"""Staggered racing: the next rung starts on failure or after the stagger; the first win ends it."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from edge.runtime.race import AllAttemptsFailed, Attempt, race

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def test_a_failure_starts_the_next_rung_at_once() -> None:
    async def body() -> tuple[str, int, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def udp() -> int:
            raise ConnectionRefusedError("port unreachable")

        async def tcp() -> int:
            return 7

        name, value = await race([Attempt("udp", udp), Attempt("tcp", tcp)], stagger=30.0)
        return name, value, loop.time() - started

    name, value, took = run(body())
    assert (name, value) == ("tcp", 7)
    assert took < 5.0  # did not wait out the 30 s stagger


def test_a_silent_rung_is_overtaken_after_the_stagger_and_cancelled() -> None:
    async def body() -> tuple[str, bool]:
        never = asyncio.Event()
        cancelled = asyncio.Event()

        async def udp() -> str:
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "udp"

        async def tcp443() -> str:
            return "connected"

        name, _ = await race([Attempt("udp", udp), Attempt("tcp 443", tcp443)], stagger=0.01)
        await asyncio.wait_for(cancelled.wait(), 5)
        return name, cancelled.is_set()

    assert run(body()) == ("tcp 443", True)


def test_the_first_preference_wins_when_it_answers_in_time() -> None:
    async def body() -> str:
        second_started = asyncio.Event()

        async def udp() -> str:
            return "udp"

        async def tcp() -> str:
            second_started.set()
            return "tcp"

        name, _ = await race([Attempt("udp", udp), Attempt("tcp", tcp)], stagger=30.0)
        assert not second_started.is_set()
        return name

    assert run(body()) == "udp"


def test_all_failing_names_every_rung() -> None:
    async def refuse() -> int:
        raise OSError("no route to host")

    async def body() -> None:
        await race([Attempt("udp", refuse), Attempt("tcp", refuse), Attempt("tcp 443", refuse)])

    with pytest.raises(AllAttemptsFailed) as info:
        run(body())
    assert [name for name, _ in info.value.reasons] == ["udp", "tcp", "tcp 443"]
    assert "tcp 443: no route to host" in str(info.value)

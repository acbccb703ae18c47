"""Shared timing helpers: every figure is a rate measured beside its reference."""

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One measured rate, and the reference it should be read against."""

    name: str
    rate: float
    unit: str
    reference: str = ""
    reference_rate: float | None = None
    decimals: int = 0

    def line(self) -> str:
        places = self.decimals
        text = f"{self.name:<48} {self.rate:>14,.{places}f} {self.unit}"
        if self.reference_rate is not None:
            ratio = self.rate / self.reference_rate if self.reference_rate else 0.0
            text += f"   ({self.reference}: {self.reference_rate:,.{places}f}, ratio {ratio:.2f})"
        return text


def rate(fn: Callable[[], object], seconds: float = 1.0, batch: int = 100) -> float:
    """Calls of ``fn`` per second on this core: the best of three windows of ``seconds / 3``.

    The best window, not the mean, because on a shared machine every disturbance
    only ever slows a window down; the best is the figure that repeats.
    """
    return max(_window(fn, seconds / 3, batch) for _ in range(3))


def _window(fn: Callable[[], object], seconds: float, batch: int) -> float:
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)

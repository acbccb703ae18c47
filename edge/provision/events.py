"""What the console core asks its adapter to do; frozen, as every layer's events."""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CommandRequested:
    """Run ``name`` with ``args`` and answer with :meth:`Console.complete` or
    :meth:`Console.fail`; the console holds further input until then."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PinOffered:
    """Check ``pin`` (or, when ``new``, store it as the provisioning PIN) and answer
    with :meth:`Console.pin_checked`."""

    pin: str = field(repr=False)
    new: bool

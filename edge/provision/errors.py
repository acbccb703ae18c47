"""Errors of the provisioning console."""

from edge.errors import LocalError, RemoteError


class ConsoleUsageError(LocalError):
    """The console core was driven wrongly (a reply with no command waiting)."""


class ProvisionError(RemoteError):
    """A command or its value was wrong, or the device could not do it.

    ``reason`` is a short machine-readable word for machine mode (``bad-value``,
    ``not-available``, ``failed``); the message is what a person reads.
    """

    def __init__(self, message: str, *, reason: str = "bad-value") -> None:
        super().__init__(message)
        self.reason = reason

"""Errors of the device package."""

from edge.errors import LocalError, RemoteError
from edge.wire.codes import ErrorCode


class DeviceError(RemoteError):
    """The hardware or a peer's device command was not what it should be."""


class CommandRefused(DeviceError):
    """A device command (DEVICE_COMMAND) that this device will not carry out."""

    code = ErrorCode.FORBIDDEN


class DeviceMisuse(LocalError):
    """The behaviour or the gpio adapter was called wrongly."""

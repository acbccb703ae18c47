"""Errors of the runtime package: configuration files, atomic writes, adapters.

Configuration errors keep the place of the fault as data (``path``, ``key``,
``line``) as well as in the message, so that a console or a provisioning tool
can point at the line while a log simply prints the text.
"""

from edge.errors import ConfigError, LocalError, RemoteError
from edge.wire.codes import ErrorCode


class ConfigFileError(ConfigError):
    """A configuration file or one of its values is wrong.

    ``path`` is the file name as shown to the user, ``key`` the dotted key (or
    ``None`` when the fault is not tied to a key) and ``line`` the 1-based line
    number when it is known.
    """

    code = ErrorCode.MALFORMED

    def __init__(
        self,
        message: str,
        *,
        path: str,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.key = key
        self.line = line


class ConfigReadError(ConfigFileError):
    """The file could not be opened or read; the message carries the OS reason."""

    code = ErrorCode.NOT_FOUND


class ConfigTooLargeError(ConfigFileError):
    """The file is larger than a configuration file may be."""

    code = ErrorCode.OVERSIZED


class ConfigSyntaxError(ConfigFileError):
    """The file is not valid UTF-8 or not valid TOML."""


class ConfigValueError(ConfigFileError):
    """A key holds a value of the wrong type or outside its allowed range."""


class ConfigMissingKeyError(ConfigFileError):
    """A required key is absent; ``line`` is that of the table it belongs in, if any."""

    code = ErrorCode.NOT_FOUND


class ConfigUnknownKeyError(ConfigFileError):
    """Keys that nothing reads were found, usually typos.

    ``unknown`` lists every such key with its line; ``key`` and ``line`` name
    the first of them.
    """

    def __init__(self, message: str, *, path: str, unknown: tuple[tuple[str, int | None], ...]):
        first_key, first_line = unknown[0]
        super().__init__(message, path=path, key=first_key, line=first_line)
        self.unknown = unknown


class AtomicWriteError(RemoteError):
    """The filesystem refused an atomic write; the old file, if any, is intact."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class RuntimeUsageError(LocalError):
    """A runtime helper was called wrongly (bad argument, adapter not connected)."""

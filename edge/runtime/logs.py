"""Structured, one-line-per-record logging to stderr or the systemd journal.

How it works: :func:`setup_logging` puts one handler with a :class:`LineFormatter`
on the root logger. A record becomes one line::

    2026-11-24T22:10:00.123Z INFO edge.session: message key=value key2="with spaces"

Fields come from ``extra={"fields": {...}}`` or from :func:`log_event`. When
stderr is the journal (systemd sets ``JOURNAL_STREAM`` to the device and inode
of that stream), the timestamp is left to journald and the line starts with
the syslog priority instead, ``<6>INFO edge.session: ...``, which journald
turns into the entry's priority.

Log lines must not be forgeable by peers: control and other unprintable
characters in the message, logger name and field values are escaped
(``\\n``, ``\\x1b``), so a peer-supplied string can never start a new line.
A traceback is the one thing printed on following lines; each of them is
indented, so it cannot pass for a record of its own. Messages and values are
shortened past a cap.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Final, TextIO

from edge.runtime.errors import RuntimeUsageError

LEVELS: Final = ("debug", "info", "warning", "error", "critical")
"""The level names :func:`setup_logging` accepts (for a config ``get_enum``)."""

MAX_MESSAGE_CHARS: Final = 4096
MAX_VALUE_CHARS: Final = 512
MAX_FIELDS: Final = 64

_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.:/@+\-\[\],%]+")
_UNSAFE_KEY_CHAR = re.compile(r"[^A-Za-z0-9_.\-]")
_SHORT_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HANDLER_MARK: Final = "_edge_runtime_handler"


def setup_logging(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr by default).

    Calling it again replaces the handler it installed before; handlers that
    others installed are left alone. ``env`` defaults to ``os.environ`` and is
    consulted only for ``JOURNAL_STREAM``.
    """
    if level.lower() not in LEVELS:
        raise RuntimeUsageError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    target = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(target)
    handler.setFormatter(LineFormatter(journal=is_journal_stream(target, env)))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def is_journal_stream(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the one systemd connected to the journal."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        # A stream without a descriptor (StringIO) cannot be the journal.
        return False
    return info.st_dev == int(device) and info.st_ino == int(inode)


def log_event(logger: logging.Logger, level: int, message: str, **fields: object) -> None:
    """Log ``message`` with ``fields`` rendered as ``key=value`` pairs.

    ``message`` is not %-formatted, so it may safely contain ``%``.
    """
    if logger.isEnabledFor(level):
        # No args are passed, so logging leaves the message unformatted.
        logger.log(level, message, extra={"fields": fields}, stacklevel=2)


class LineFormatter(logging.Formatter):
    """Formats a record as one escaped line, plus indented traceback lines."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self._prefix(record)}{escape(record.name)}: {_message(record)}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping) and fields:
            line += " " + render_fields(fields)
        return line + self._traceback(record)

    def _prefix(self, record: logging.LogRecord) -> str:
        if self.journal:
            return f"<{syslog_priority(record.levelno)}>{record.levelname} "
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC)
        millis = stamp.microsecond // 1000
        return f"{stamp:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z {record.levelname} "

    def _traceback(self, record: logging.LogRecord) -> str:
        text = ""
        if record.exc_info:
            text = self.formatException(record.exc_info)
        if record.stack_info:
            text = (text + "\n" if text else "") + self.formatStack(record.stack_info)
        if not text:
            return ""
        lead = f"<{syslog_priority(record.levelno)}>" if self.journal else ""
        return "".join(f"\n{lead}  | {escape(part)}" for part in text.splitlines())


def syslog_priority(levelno: int) -> int:
    """The syslog priority journald should record for a logging level."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def render_fields(fields: Mapping[str, object]) -> str:
    """``key=value`` pairs, values quoted when needed; at most :data:`MAX_FIELDS`."""
    items = list(fields.items())
    pairs = [f"{_field_key(key)}={render_value(value)}" for key, value in items[:MAX_FIELDS]]
    if len(items) > MAX_FIELDS:
        pairs.append(f"fields_dropped={len(items) - MAX_FIELDS}")
    return " ".join(pairs)


def render_value(value: object) -> str:
    """One field value: bare when it is a plain token, else double-quoted and escaped."""
    text = _shorten(value if isinstance(value, str) else _to_text(value), MAX_VALUE_CHARS)
    if _SAFE_VALUE.fullmatch(text):
        return text
    return '"' + escape(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def escape(text: str) -> str:
    """Replace every unprintable character (newlines included) with an escape."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape_char(char) for char in text)


def _escape_char(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _message(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except (TypeError, ValueError) as exc:
        # A bad format string must not lose the record.
        text = f"{record.msg!r} (unformattable: {exc})"
    return escape(_shorten(text, MAX_MESSAGE_CHARS))


def _field_key(key: str) -> str:
    cleaned = _UNSAFE_KEY_CHAR.sub("_", key[:64])
    return cleaned or "_"


def _to_text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value[:MAX_VALUE_CHARS]).hex()
    try:
        return str(value)
    except Exception as exc:  # a broken __str__ must not lose the record
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


__all__ = [
    "LEVELS",
    "LineFormatter",
    "escape",
    "is_journal_stream",
    "log_event",
    "render_fields",
    "render_value",
    "setup_logging",
    "syslog_priority",
]

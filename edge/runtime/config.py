"""TOML configuration with errors that name the file, the key and the line.

How it works: :func:`load` reads at most :data:`MAX_CONFIG_BYTES`, decodes
UTF-8 and hands the text to :mod:`tomllib`, whose syntax errors are rewritten
as ``FILE:LINE:COL: reason``. Because tomllib keeps no positions, a small line
scanner then walks the same text once and records, for every key it can see,
the line where it is defined. Typed accessors on :class:`ConfigDoc` look a key
up in the parsed data and, when the value is wrong, build a message such as::

    agent.toml:12: key 'login.port': expected an integer from 1 to 65535, got 70000

Keys are dotted strings relative to the document or view (``"login.port"``);
a tuple of parts reaches keys that themselves contain a dot. A key inside an
array of tables shows its index: ``servers[1].address``.

Limits of the line scanner, kept deliberately small:

* it understands table headers, array-of-tables headers (counting entries),
  dotted and quoted keys, and skips the continuation lines of multi-line
  strings and arrays, so an ``=`` inside them is never taken for a key;
* keys inside inline tables and items of arrays are not recorded: errors about
  them report the line of the nearest enclosing key that was recorded;
* it only ever runs on text tomllib has accepted; should it still meet
  something it does not understand, it stops and later keys have no line
  rather than a wrong one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import errno
import ipaddress
import math
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeVar

from edge.runtime.errors import (
    AtomicWriteError,
    ConfigFileError,
    ConfigMissingKeyError,
    ConfigReadError,
    ConfigSyntaxError,
    ConfigTooLargeError,
    ConfigUnknownKeyError,
    ConfigValueError,
    RuntimeUsageError,
)
from edge.sansio import Address

MAX_CONFIG_BYTES: Final = 1024 * 1024
"""Largest configuration file accepted; real ones are a few kilobytes."""

MAX_STRING_CHARS: Final = 4096
"""Default cap on string values (and each string in a list)."""

MAX_ITEMS: Final = 256
"""Default cap on the length of lists and arrays of tables."""

Part = str | int
KeyPath = str | tuple[str, ...]
T = TypeVar("T")
D = TypeVar("D")


class _Required(enum.Enum):
    REQUIRED = "required"


REQUIRED: Final = _Required.REQUIRED
"""Default of every accessor's ``default``: without a default, a key is required."""

_ABSENT: Final = object()
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION = re.compile(
    r"^(?P<reason>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$", re.S
)
_HEX = frozenset("0123456789abcdefABCDEF")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


# --------------------------------------------------------------------------- loading


def load(path: Path) -> ConfigDoc:
    """Read and parse a TOML file; every failure is a :class:`ConfigFileError`."""
    name = str(path)
    data = _read_capped(path, name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigSyntaxError(
            f"{name}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})", path=name, line=line
        ) from None
    return _parse(text, name, path.parent)


def loads(text: str, name: str, *, base_dir: Path | None = None) -> ConfigDoc:
    """Parse TOML text; ``name`` stands for the file in messages.

    ``base_dir`` anchors relative paths read with :meth:`ConfigDoc.get_path`;
    without it they are returned as written.
    """
    if (
        len(text) > MAX_CONFIG_BYTES
        or len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES
    ):
        raise _too_large(name)
    return _parse(text, name, base_dir)


def _read_capped(path: Path, name: str) -> bytes:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigReadError(f"{name}: cannot read: {reason}", path=name) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise _too_large(name)
    return data


def _too_large(name: str) -> ConfigTooLargeError:
    return ConfigTooLargeError(
        f"{name}: larger than {MAX_CONFIG_BYTES} bytes, not a configuration file", path=name
    )


def _parse(text: str, name: str, base_dir: Path | None) -> ConfigDoc:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(str(exc), text, name) from None
    source = _Source(name=name, base_dir=base_dir, root=data, lines=_LineScanner().scan(text))
    return ConfigDoc(source, (), data)


def _syntax_error(message: str, text: str, name: str) -> ConfigSyntaxError:
    match = _TOML_POSITION.match(message)
    if match is None:
        return ConfigSyntaxError(f"{name}: {message}", path=name)
    reason = match["reason"]
    if match["line"] is None:
        line = text.count("\n") + 1
        return ConfigSyntaxError(f"{name}:{line}: {reason} (at end of file)", path=name, line=line)
    line = int(match["line"])
    return ConfigSyntaxError(f"{name}:{line}:{match['col']}: {reason}", path=name, line=line)


# ---------------------------------------------------------------------- line scanner


class _Mode(enum.Enum):
    NORMAL = 0
    MULTILINE_BASIC = 1
    MULTILINE_LITERAL = 2


class _ScanError(Exception):
    """The scanner met text it does not understand; it stops there."""


class _LineScanner:
    """Maps key paths to the line where they are defined (see module docstring)."""

    def __init__(self) -> None:
        self._lines: dict[tuple[Part, ...], int] = {}
        self._explicit: set[tuple[Part, ...]] = set()
        self._arrays: dict[tuple[Part, ...], int] = {}
        self._table: tuple[Part, ...] = ()
        self._mode = _Mode.NORMAL
        self._depth = 0

    def scan(self, text: str) -> dict[tuple[Part, ...], int]:
        # Split on "\n" only: TOML counts lines that way, str.splitlines does not.
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.removesuffix("\r")
            try:
                if self._mode is not _Mode.NORMAL or self._depth > 0:
                    self._scan_value(line, 0)
                else:
                    self._statement(line, number)
            except _ScanError:
                break
        return self._lines

    def _statement(self, line: str, number: int) -> None:
        pos = _skip_space(line, 0)
        if pos == len(line) or line[pos] == "#":
            return
        if line.startswith("[[", pos):
            parts, end = _parse_key(line, pos + 2)
            _expect(line, end, "]]")
            self._array_header(parts, number)
        elif line[pos] == "[":
            parts, end = _parse_key(line, pos + 1)
            _expect(line, end, "]")
            self._table = self._resolve(parts)
            self._record(self._table, number)
        else:
            parts, end = _parse_key(line, pos)
            _expect(line, end, "=")
            self._record(self._table + parts, number)
            self._scan_value(line, end + 1)

    def _array_header(self, parts: tuple[str, ...], number: int) -> None:
        array = (*self._resolve(parts[:-1]), parts[-1])
        index = self._arrays.get(array, 0)
        self._arrays[array] = index + 1
        self._table = (*array, index)
        self._record(self._table, number)

    def _resolve(self, parts: tuple[str, ...]) -> tuple[Part, ...]:
        # A header names an array of tables by its name; it means the latest entry.
        resolved: list[Part] = []
        for part in parts:
            resolved.append(part)
            count = self._arrays.get(tuple(resolved))
            if count is not None:
                resolved.append(count - 1)
        return tuple(resolved)

    def _record(self, path: tuple[Part, ...], number: int) -> None:
        for size in range(1, len(path)):
            self._lines.setdefault(path[:size], number)
        if path not in self._explicit:
            self._explicit.add(path)
            self._lines[path] = number

    def _scan_value(self, line: str, pos: int) -> None:
        while pos < len(line):
            if self._mode is _Mode.MULTILINE_BASIC:
                pos = self._in_multiline(line, pos, '"', escapes=True)
            elif self._mode is _Mode.MULTILINE_LITERAL:
                pos = self._in_multiline(line, pos, "'", escapes=False)
            else:
                pos = self._in_normal(line, pos)

    def _in_multiline(self, line: str, pos: int, quote: str, *, escapes: bool) -> int:
        if escapes and line[pos] == "\\":
            return pos + 2
        if not line.startswith(quote * 3, pos):
            return pos + 1
        pos += 3
        # Up to two more quotes right before the delimiter belong to the content.
        for _ in range(2):
            if line.startswith(quote, pos):
                pos += 1
        self._mode = _Mode.NORMAL
        return pos

    def _in_normal(self, line: str, pos: int) -> int:
        char = line[pos]
        if char == "#":
            return len(line)
        if line.startswith('"""', pos):
            self._mode = _Mode.MULTILINE_BASIC
            return pos + 3
        if line.startswith("'''", pos):
            self._mode = _Mode.MULTILINE_LITERAL
            return pos + 3
        if char in "\"'":
            return _skip_string(line, pos)
        if char in "[{":
            self._depth += 1
        elif char in "]}":
            self._depth -= 1
        return pos + 1


def _skip_space(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in " \t":
        pos += 1
    return pos


def _expect(line: str, pos: int, token: str) -> None:
    if not line.startswith(token, pos):
        raise _ScanError


def _skip_string(line: str, pos: int) -> int:
    """Return the position after the one-line string that starts at ``pos``."""
    quote = line[pos]
    pos += 1
    while pos < len(line):
        if quote == '"' and line[pos] == "\\":
            pos += 2
        elif line[pos] == quote:
            return pos + 1
        else:
            pos += 1
    raise _ScanError


def _parse_key(line: str, pos: int) -> tuple[tuple[str, ...], int]:
    """Parse a dotted key; return its parts and the position after it."""
    parts: list[str] = []
    while True:
        pos = _skip_space(line, pos)
        part, pos = _parse_key_part(line, pos)
        parts.append(part)
        pos = _skip_space(line, pos)
        if not line.startswith(".", pos):
            return tuple(parts), pos
        pos += 1


def _parse_key_part(line: str, pos: int) -> tuple[str, int]:
    if line.startswith('"', pos):
        end = _skip_string(line, pos)
        # tomllib decodes the escapes exactly as it did for the data.
        value = tomllib.loads(f"k = {line[pos:end]}")["k"]
        assert isinstance(value, str)
        return value, end
    if line.startswith("'", pos):
        end = _skip_string(line, pos)
        return line[pos + 1 : end - 1], end
    match = _BARE_KEY.match(line, pos)
    if match is None:
        raise _ScanError
    return match[0], match.end()


# ------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class _Source:
    name: str
    base_dir: Path | None
    root: dict[str, object]
    lines: dict[tuple[Part, ...], int]

    def line_for(self, path: tuple[Part, ...]) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        for size in range(len(path), 0, -1):
            line = self.lines.get(path[:size])
            if line is not None:
                return line
        return None

    def table_at(self, path: tuple[Part, ...]) -> object:
        node: object = self.root
        for part in path:
            node = _child(node, part)
        return node


def _child(node: object, part: Part) -> object:
    if isinstance(part, int):
        return node[part] if isinstance(node, list) and part < len(node) else _ABSENT
    return node[part] if isinstance(node, dict) and part in node else _ABSENT


class ConfigDoc:
    """A parsed configuration file, or a view of one of its tables.

    Every ``get_*`` accessor takes ``default``: when it is left out the key is
    required and its absence raises :class:`ConfigMissingKeyError`; otherwise
    the default (which may be ``None``) is returned as given. Wrong values
    raise :class:`ConfigValueError`. Views share the file's name and line map,
    so their errors name the full key.
    """

    def __init__(self, source: _Source, prefix: tuple[Part, ...], table: dict[str, object]):
        self._source = source
        self._prefix = prefix
        self._table = table

    # -- inspection

    @property
    def name(self) -> str:
        """The file name used in messages."""
        return self._source.name

    @property
    def data(self) -> Mapping[str, object]:
        """The parsed table of this document or view, as tomllib returned it."""
        return self._table

    def keys(self) -> list[str]:
        """The keys of this table, in file order."""
        return list(self._table)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._table))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | tuple):
            return False
        return self._find(key)[1] is not _ABSENT

    def line_of(self, key: KeyPath) -> int | None:
        """The line where ``key`` (or the nearest enclosing key) is defined."""
        return self._source.line_for(self._find(key)[0])

    def error(self, key: KeyPath, reason: str) -> ConfigValueError:
        """An error about ``key`` in the house format, for checks made by the caller."""
        return self._value_error(self._find(key)[0], reason)

    def check_unknown(self, allowed: Collection[str]) -> None:
        """Raise :class:`ConfigUnknownKeyError` naming every key of this table not in
        ``allowed``. Only direct children are checked; check sub-tables through
        their own views."""
        unknown = [
            (_display((*self._prefix, key)), self._source.line_for((*self._prefix, key)))
            for key in self._table
            if key not in allowed
        ]
        if not unknown:
            return
        message = "; ".join(f"{self._where(line)}: unknown key '{key}'" for key, line in unknown)
        raise ConfigUnknownKeyError(message, path=self.name, unknown=tuple(unknown))

    # -- scalars

    def get_str(
        self,
        key: KeyPath,
        default: D | Literal[_Required.REQUIRED] = REQUIRED,
        *,
        min_length: int = 0,
        max_length: int = MAX_STRING_CHARS,
    ) -> str | D:
        """A string of ``min_length`` to ``max_length`` characters."""
        return self._get(
            key, default, lambda path, value: _to_str(self, path, value, min_length, max_length)
        )

    def get_int(
        self,
        key: KeyPath,
        default: D | Literal[_Required.REQUIRED] = REQUIRED,
        *,
        min: int | None = None,
        max: int | None = None,
    ) -> int | D:
        """An integer, optionally bounded (both bounds inclusive). Booleans are refused."""
        return self._get(key, default, lambda path, value: _to_int(self, path, value, min, max))

    def get_float(
        self,
        key: KeyPath,
        default: D | Literal[_Required.REQUIRED] = REQUIRED,
        *,
        min: float | None = None,
        max: float | None = None,
    ) -> float | D:
        """A finite number; integers are accepted and converted, since ``5`` reads as ``5.0``."""
        return self._get(key, default, lambda path, value: _to_float(self, path, value, min, max))

    def get_bool(
        self, key: KeyPath, default: D | Literal[_Required.REQUIRED] = REQUIRED
    ) -> bool | D:
        """A TOML boolean; strings like ``"yes"`` are refused."""
        return self._get(key, default, lambda path, value: _to_bool(self, path, value))

    def get_enum(
        self,
        key: KeyPath,
        choices: Collection[str],
        default: D | Literal[_Required.REQUIRED] = REQUIRED,
    ) -> str | D:
        """A string that must be one of ``choices`` (compared exactly)."""
        return self._get(key, default, lambda path, value: _to_enum(self, path, value, choices))

    def get_path(
        self, key: KeyPath, default: D | Literal[_Required.REQUIRED] = REQUIRED
    ) -> Path | D:
        """A filesystem path. A relative path is taken relative to the directory of
        the configuration file (or ``base_dir`` of :func:`loads`); ``~`` is not
        expanded. A default is returned as given."""
        return self._get(key, default, lambda path, value: _to_path(self, path, value))

    def get_hex_bytes(
        self, key: KeyPath, length: int, default: D | Literal[_Required.REQUIRED] = REQUIRED
    ) -> bytes | D:
        """Exactly ``length`` bytes written as ``2 * length`` hex digits (a pinned key)."""
        return self._get(key, default, lambda path, value: _to_hex_bytes(self, path, value, length))

    def get_address(
        self,
        key: KeyPath,
        default: D | Literal[_Required.REQUIRED] = REQUIRED,
        *,
        default_port: int | None = None,
    ) -> Address | D:
        """``host:port`` or ``[ipv6]:port``; without ``default_port`` the port is required.
        The host is returned without brackets and is not resolved."""
        return self._get(
            key, default, lambda path, value: _to_address(self, path, value, default_port)
        )

    # -- containers

    def get_list_of_str(
        self,
        key: KeyPath,
        default: D | Literal[_Required.REQUIRED] = REQUIRED,
        *,
        max_items: int = MAX_ITEMS,
        max_length: int = MAX_STRING_CHARS,
    ) -> list[str] | D:
        """An array of at most ``max_items`` strings of at most ``max_length`` characters."""
        return self._get(
            key, default, lambda path, value: _to_str_list(self, path, value, max_items, max_length)
        )

    def get_list_of_int(
        self,
        key: KeyPath,
        default: D | Literal[_Required.REQUIRED] = REQUIRED,
        *,
        max_items: int = MAX_ITEMS,
        min: int | None = None,
        max: int | None = None,
    ) -> list[int] | D:
        """An array of at most ``max_items`` integers, each within the bounds."""
        return self._get(
            key, default, lambda path, value: _to_int_list(self, path, value, max_items, min, max)
        )

    def get_list_of_addresses(
        self,
        key: KeyPath,
        default: D | Literal[_Required.REQUIRED] = REQUIRED,
        *,
        max_items: int = MAX_ITEMS,
        default_port: int | None = None,
        any_port: bool = False,
    ) -> list[Address] | D:
        """An array of ``host:port`` strings; ``any_port`` admits port 0 (listeners)."""
        return self._get(
            key,
            default,
            lambda path, value: _to_address_list(
                self, path, value, max_items, default_port, any_port
            ),
        )

    def get_table(self, key: KeyPath, *, required: bool = False) -> ConfigDoc:
        """A view of a sub-table. An absent optional table gives an empty view, on
        which accessors return their defaults and report missing keys."""
        path, value = self._find(key)
        if value is _ABSENT:
            if required:
                raise self._missing(path)
            return ConfigDoc(self._source, path, {})
        if not isinstance(value, dict):
            raise self._type_error(path, "a table", value)
        return ConfigDoc(self._source, path, value)

    def get_tables(self, key: KeyPath, *, max_items: int = MAX_ITEMS) -> list[ConfigDoc]:
        """Views of the entries of an array of tables (``[[key]]``); absent gives ``[]``."""
        path, value = self._find(key)
        if value is _ABSENT:
            return []
        if not isinstance(value, list):
            raise self._type_error(path, "an array of tables", value)
        if len(value) > max_items:
            raise self._value_error(path, f"expected at most {max_items} tables, got {len(value)}")
        views = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise self._type_error((*path, index), "a table", item)
            views.append(ConfigDoc(self._source, (*path, index), item))
        return views

    # -- internals

    def _find(self, key: KeyPath) -> tuple[tuple[Part, ...], object]:
        parts = _split_key(key)
        path = (*self._prefix, *parts)
        node: object = self._table
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                return path, _ABSENT
            node = node[part]
        return path, node

    def _get(
        self,
        key: KeyPath,
        default: D | Literal[_Required.REQUIRED],
        convert: Callable[[tuple[Part, ...], object], T],
    ) -> T | D:
        path, value = self._find(key)
        if value is not _ABSENT:
            return convert(path, value)
        if default is REQUIRED:
            raise self._missing(path)
        return default

    def _where(self, line: int | None) -> str:
        return f"{self.name}:{line}" if line is not None else self.name

    def _value_error(self, path: tuple[Part, ...], reason: str) -> ConfigValueError:
        line = self._source.line_for(path)
        key = _display(path)
        return ConfigValueError(
            f"{self._where(line)}: key '{key}': {reason}", path=self.name, key=key, line=line
        )

    def _type_error(self, path: tuple[Part, ...], expected: str, value: object) -> ConfigValueError:
        return self._value_error(path, f"expected {expected}, got {_type_name(value)}")

    def _missing(self, path: tuple[Part, ...]) -> ConfigMissingKeyError:
        # The line reported is that of the enclosing table: where the key belongs.
        key = _display(path)
        message = f"{self.name}: missing required key '{key}'"
        line = None
        for size in range(len(path) - 1, 0, -1):
            if isinstance(self._source.table_at(path[:size]), dict):
                line = self._source.lines.get(path[:size])
                message += _table_note(path[:size], line)
                break
        return ConfigMissingKeyError(message, path=self.name, key=key, line=line)


def _table_note(table: tuple[Part, ...], line: int | None) -> str:
    # Written as the header appears in the file: indexes of arrays are implied.
    names = ".".join(_display_part(part) for part in table if isinstance(part, str))
    header = f"[[{names}]]" if isinstance(table[-1], int) else f"table [{names}]"
    return f" (in {header} at line {line})" if line is not None else f" (in {header})"


def _split_key(key: KeyPath) -> tuple[str, ...]:
    parts = tuple(key.split(".")) if isinstance(key, str) else key
    if not parts or any(not part for part in parts):
        raise RuntimeUsageError(f"not a valid configuration key: {key!r}")
    return parts


def _display(path: tuple[Part, ...]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + _display_part(part)
    return text


def _display_part(part: str) -> str:
    return part if _BARE_KEY.fullmatch(part) else _quote(part)


def _quote(text: str, limit: int = 60) -> str:
    """A TOML-style double-quoted rendering, shortened for messages."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    escaped = "".join(_escape_char(char) for char in shown)
    return f'"{escaped}"'


def _escape_char(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    if char.isprintable():
        return char
    return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"


def _type_name(value: object) -> str:
    # bool before int: in Python a bool is an int.
    names: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
        (dt.datetime, "a date-time"),
        (dt.date, "a date"),
        (dt.time, "a time"),
    )
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _bounds(noun: str, low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"{noun} from {low:g} to {high:g}"
    if low is not None:
        return f"{noun} of at least {low:g}"
    if high is not None:
        return f"{noun} of at most {high:g}"
    return noun


def _in_bounds(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


# ------------------------------------------------------------------------ converters


def _to_str(doc: ConfigDoc, path: tuple[Part, ...], value: object, low: int, high: int) -> str:
    if not isinstance(value, str):
        raise doc._type_error(path, "a string", value)
    if not low <= len(value) <= high:
        span = f"{low} to {high}" if low else f"at most {high}"
        raise doc._value_error(
            path, f"expected a string of {span} characters, got {len(value)} characters"
        )
    return value


def _to_int(
    doc: ConfigDoc, path: tuple[Part, ...], value: object, low: int | None, high: int | None
) -> int:
    expected = _bounds("an integer", low, high)
    if isinstance(value, bool) or not isinstance(value, int):
        raise doc._type_error(path, expected, value)
    if not _in_bounds(value, low, high):
        raise doc._value_error(path, f"expected {expected}, got {value}")
    return value


def _to_float(
    doc: ConfigDoc, path: tuple[Part, ...], value: object, low: float | None, high: float | None
) -> float:
    expected = _bounds("a number", low, high)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise doc._type_error(path, expected, value)
    number = float(value)
    if not math.isfinite(number) or not _in_bounds(number, low, high):
        raise doc._value_error(path, f"expected {expected}, got {value!r}")
    return number


def _to_bool(doc: ConfigDoc, path: tuple[Part, ...], value: object) -> bool:
    if not isinstance(value, bool):
        raise doc._type_error(path, "true or false", value)
    return value


def _to_enum(
    doc: ConfigDoc, path: tuple[Part, ...], value: object, choices: Collection[str]
) -> str:
    # A set has no meaningful order: sort it so that the message is stable.
    ordered = list(choices) if isinstance(choices, Sequence) else sorted(choices)
    expected = "one of " + ", ".join(_quote(choice) for choice in ordered)
    if not isinstance(value, str):
        raise doc._type_error(path, expected, value)
    if value not in choices:
        raise doc._value_error(path, f"expected {expected}, got {_quote(value)}")
    return value


def _to_path(doc: ConfigDoc, path: tuple[Part, ...], value: object) -> Path:
    if not isinstance(value, str):
        raise doc._type_error(path, "a path", value)
    if not value or "\0" in value:
        raise doc._value_error(path, "expected a path, got an empty string or one with a NUL")
    text = _to_str(doc, path, value, 1, MAX_STRING_CHARS)
    result = Path(text)
    base = doc._source.base_dir
    return base / result if base is not None and not result.is_absolute() else result


def _to_hex_bytes(doc: ConfigDoc, path: tuple[Part, ...], value: object, length: int) -> bytes:
    expected = f"{2 * length} hex digits ({length} bytes)"
    if not isinstance(value, str):
        raise doc._type_error(path, expected, value)
    if len(value) != 2 * length:
        raise doc._value_error(path, f"expected {expected}, got {len(value)} characters")
    bad = next((index for index, char in enumerate(value) if char not in _HEX), None)
    if bad is not None:
        raise doc._value_error(
            path, f"expected {expected}, got a non-hex character at position {bad + 1}"
        )
    return bytes.fromhex(value)


def _to_str_list(
    doc: ConfigDoc, path: tuple[Part, ...], value: object, max_items: int, max_length: int
) -> list[str]:
    if not isinstance(value, list):
        raise doc._type_error(path, "an array of strings", value)
    if len(value) > max_items:
        raise doc._value_error(path, f"expected at most {max_items} strings, got {len(value)}")
    return [_to_str(doc, (*path, index), item, 0, max_length) for index, item in enumerate(value)]


def _to_int_list(
    doc: ConfigDoc,
    path: tuple[Part, ...],
    value: object,
    max_items: int,
    low: int | None,
    high: int | None,
) -> list[int]:
    if not isinstance(value, list):
        raise doc._type_error(path, "an array of integers", value)
    if len(value) > max_items:
        raise doc._value_error(path, f"expected at most {max_items} integers, got {len(value)}")
    return [_to_int(doc, (*path, index), item, low, high) for index, item in enumerate(value)]


def _to_address(
    doc: ConfigDoc, path: tuple[Part, ...], value: object, default_port: int | None
) -> Address:
    if not isinstance(value, str):
        raise doc._type_error(path, "host:port", value)
    text = _to_str(doc, path, value, 1, 300)
    try:
        return _parse_address(text, default_port)
    except ValueError as exc:
        raise doc._value_error(path, f"expected host:port, got {_quote(text)} ({exc})") from None


def _to_address_list(
    doc: ConfigDoc,
    path: tuple[Part, ...],
    value: object,
    max_items: int,
    default_port: int | None,
    any_port: bool,
) -> list[Address]:
    texts = _to_str_list(doc, path, value, max_items, 300)
    out = []
    for index, text in enumerate(texts):
        try:
            out.append(_parse_address(text, default_port, any_port))
        except ValueError as exc:
            raise doc._value_error(
                (*path, index), f"expected host:port, got {_quote(text)} ({exc})"
            ) from None
    return out


def parse_address(text: str, default_port: int | None = None, *, any_port: bool = False) -> Address:
    """Split and check ``host:port`` (``[v6]:port``); raises ValueError with a short reason.

    ``any_port`` admits port 0, which a listener reads as "any free port"."""
    return _parse_address(text, default_port, any_port)


def _parse_address(text: str, default_port: int | None, any_port: bool = False) -> Address:
    """Split and check ``host:port``; raises ValueError with a short reason."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("no closing ']'")
        _check_ipv6(host)
        if rest and not rest.startswith(":"):
            raise ValueError("unexpected text after ']'")
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise ValueError("an IPv6 address needs brackets, as in [::1]:5000")
        host, sep, port_text_or_empty = text.partition(":")
        _check_host(host)
        port_text = port_text_or_empty if sep else None
    return host, _parse_port(port_text, default_port, any_port)


def _parse_port(text: str | None, default_port: int | None, any_port: bool = False) -> int:
    if text is None:
        if default_port is None:
            raise ValueError("no port")
        return default_port
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ValueError("the port is not a number")
    port = int(text)
    lowest = 0 if any_port else 1
    if not lowest <= port <= 65535:
        raise ValueError(f"the port is not from {lowest} to 65535")
    return port


def _check_ipv6(host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError("not a valid IPv6 address") from None


def _check_host(host: str) -> None:
    labels = host.removesuffix(".").split(".")
    if not host or len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError("not a valid host name")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError("not a valid IPv4 address") from None


# ---------------------------------------------------------------------- atomic write


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file,
    never a mix, even across a power cut.

    The temporary file is created in the same directory with ``mode`` from the
    start (the umask can only remove bits), written, fsynced, renamed over
    ``path``, and the directory is fsynced. On failure the temporary file is
    removed and :class:`AtomicWriteError` raised; an existing file is untouched
    unless the failure comes after the rename (directory sync).
    """
    try:
        view = memoryview(data)
    except TypeError:
        raise RuntimeUsageError(f"write_atomic needs bytes, got {type(data).__name__}") from None
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    _write_temp(temp, view, mode, path)
    try:
        os.replace(temp, path)
    except OSError as exc:
        _remove_quietly(temp)
        raise _write_error(path, "cannot rename into place", exc) from exc
    _fsync_directory(path)


def _write_temp(temp: Path, view: memoryview, mode: int, path: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(temp, flags, mode)
    except OSError as exc:
        raise _write_error(path, "cannot create a temporary file", exc) from exc
    try:
        with open(fd, "wb", closefd=True) as stream:
            stream.write(view)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException as exc:
        _remove_quietly(temp)
        if isinstance(exc, OSError):
            raise _write_error(path, "cannot write", exc) from exc
        raise


def _fsync_directory(path: Path) -> None:
    try:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _write_error(path, "written, but cannot open the directory to sync it", exc) from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems cannot sync a directory at all; nothing more can be done there.
        if exc.errno != errno.EINVAL:
            raise _write_error(path, "written, but cannot sync the directory", exc) from exc
    finally:
        os.close(fd)


def _remove_quietly(temp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()


def _write_error(path: Path, what: str, exc: OSError) -> AtomicWriteError:
    reason = exc.strerror or type(exc).__name__
    return AtomicWriteError(f"{path}: {what}: {reason}", path=str(path))


__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_ITEMS",
    "MAX_STRING_CHARS",
    "REQUIRED",
    "ConfigDoc",
    "ConfigFileError",
    "KeyPath",
    "load",
    "loads",
    "write_atomic",
]

"""The small JSON files a device keeps its state in (host cache, buddy cache).

Each is written by :func:`dump_document` and read with a size cap, parsed as
strict JSON (no NaN or Infinity, which Python's json would otherwise accept),
and must name its format and a version this code understands. What is wrong
is raised as :class:`StateFileInvalid` with a short reason; the owner adds the
file's name in its own error. Writing goes through
:func:`edge.runtime.config.write_atomic`.
"""

import json
from pathlib import Path
from typing import Any, ClassVar

from edge.errors import RemoteError
from edge.wire.codes import ErrorCode


class StateFileError(RemoteError):
    """A state file cannot be used; the message names the kind, the file and the problem."""

    code = ErrorCode.MALFORMED
    kind: ClassVar[str] = "state file"

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{self.kind} {path}: {problem}")
        self.path = path
        self.problem = problem


class StateFileInvalid(Exception):
    """What is wrong with a state file; its owner names the file in its own error."""


def read_capped(path: Path, max_bytes: int) -> bytes | None:
    """The file's bytes, or None when there is no file."""
    try:
        with path.open("rb") as stream:
            raw = stream.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileInvalid(f"cannot read it: {exc.strerror or exc}") from exc
    if len(raw) > max_bytes:
        raise StateFileInvalid(f"larger than {max_bytes} bytes")
    return raw


def load_document(raw: bytes, kind: str, format_name: str, version: int) -> dict[str, Any]:
    """The JSON object in ``raw``, checked to be a ``kind`` file of this ``version``."""
    try:
        document = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise StateFileInvalid(f"not UTF-8 (byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise StateFileInvalid(f"not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != format_name:
        raise StateFileInvalid(f'not a {kind} (no "format": "{format_name}")')
    found = document.get("format_version")
    if type(found) is not int or found != version:
        raise StateFileInvalid(f"format_version {found!r} is unknown (expected {version})")
    return document


def dump_document(format_name: str, version: int, fields: dict[str, Any]) -> bytes:
    """The bytes of a state file: its format and version first, then ``fields``."""
    document = {"format": format_name, "format_version": version, **fields}
    return (json.dumps(document, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")

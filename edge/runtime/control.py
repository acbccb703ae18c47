"""The control socket: JSON lines over a Unix socket, for ``edge ctl``.

How it works: a daemon (agent, supernode) serves a Unix stream socket. A client
writes one request line, a JSON object ``{"command": NAME, "args": {...}}``,
and reads one answer line: ``{"ok": true, "result": {...}}``, or
``{"ok": false, "error": {"code": NAME, "message": TEXT}}`` where ``code`` is
an :class:`~edge.wire.codes.ErrorCode` name. Several requests may follow on
one connection; each gets its answer in order.

Handlers are plain functions of the ``args`` object returning a JSON-ready
dict, or coroutines doing the same; an :class:`~edge.errors.EdgeError` they
raise becomes the error answer, anything else is a bug, logged, answered as
``INTERNAL`` and the connection kept.

The socket file is made with mode 0660, so the daemon's group (``edge``)
may control it and nobody else can; a stale file from a crashed daemon is
replaced, a live one (something answers on it) is refused. Caps: one request
line, the connections served at once, the time a client may take to send its
line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from edge.errors import EdgeError, LocalError, RemoteError
from edge.wire.codes import ErrorCode

MAX_LINE: Final = 64 * 1024
"""Longest request or answer line in bytes; a message text fits many times over."""

MAX_CLIENTS: Final = 16
IDLE_TIMEOUT: Final = 30.0
"""Seconds a client may stay silent before its connection is closed."""

SOCKET_MODE: Final = 0o660

_log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
Handler = Callable[[Mapping[str, Any]], JsonObject | Awaitable[JsonObject]]


class ControlError(RemoteError):
    """A control request or answer was malformed, or the daemon could not be reached."""

    code = ErrorCode.MALFORMED


class ControlUnreachable(ControlError):
    """Nothing answers on the control socket: the daemon is not running, or not here."""

    code = ErrorCode.UNAVAILABLE


class ControlSocketBusy(LocalError):
    """Another live daemon already serves this control socket."""

    code = ErrorCode.BUSY


class UnknownCommand(RemoteError):
    """The request named a command this daemon does not have."""

    code = ErrorCode.NOT_FOUND


def decode_request(line: bytes) -> tuple[str, Mapping[str, Any]]:
    """The command name and its arguments from one request line."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"control request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ControlError("control request must be a JSON object")
    command, args = request.get("command"), request.get("args", {})
    if not isinstance(command, str) or not command:
        raise ControlError('control request needs "command", a non-empty string')
    if not isinstance(args, dict):
        raise ControlError('control request "args" must be an object')
    return command, args


def encode(document: JsonObject) -> bytes:
    """One line of JSON; raises ControlError when it would exceed :data:`MAX_LINE`."""
    line = json.dumps(document, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    if len(line) > MAX_LINE:
        raise ControlError(f"control answer of {len(line)} bytes is over {MAX_LINE}")
    return line


def error_answer(exc: EdgeError) -> JsonObject:
    return {"ok": False, "error": {"code": exc.code.name, "message": str(exc)}}


class ControlServer:
    """Serves ``handlers`` (command name to handler) on a Unix socket at ``path``."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.requests = 0
        self.refused = 0
        """Connections closed at once because :data:`MAX_CLIENTS` were being served."""
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await _clear_stale(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # Bind under a umask so the file never exists with looser permissions.
            old = os.umask(0o777 & ~SOCKET_MODE)
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        except BaseException:
            sock.close()
            raise

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= MAX_CLIENTS:
            self.refused += 1
            writer.close()
            return
        self._clients.add(task)
        try:
            await self._conversation(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def _conversation(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
            except ValueError:
                # StreamReader's limit: the line is longer than MAX_LINE.
                writer.write(encode(error_answer(ControlError(f"request over {MAX_LINE} bytes"))))
                await writer.drain()
                return
            if not line:
                return
            writer.write(await self.answer(line))
            await writer.drain()

    async def answer(self, line: bytes) -> bytes:
        """The answer line to one request line."""
        self.requests += 1
        try:
            command, args = decode_request(line)
            handler = self.handlers.get(command)
            if handler is None:
                known = ", ".join(sorted(self.handlers))
                raise UnknownCommand(f"unknown command {command!r}; this daemon has: {known}")
            result = handler(args)
            if isinstance(result, Awaitable):
                result = await result
            return encode({"ok": True, "result": result})
        except EdgeError as exc:
            return encode(error_answer(exc))
        except Exception:
            _log.exception("control command failed")
            return encode(error_answer(EdgeError("internal error; see the daemon's log")))


async def _clear_stale(path: Path) -> None:
    """Remove a socket file nobody answers on; refuse to steal a live one."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlSocketBusy(f"{path} exists and is not a socket; not replacing it")
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        path.unlink()
        return
    writer.close()
    raise ControlSocketBusy(f"another daemon is serving {path}")


async def request(
    path: Path, command: str, args: Mapping[str, Any] | None = None, *, timeout: float = 10.0
) -> JsonObject:
    """Send one request to the daemon at ``path`` and return its whole answer object."""
    line = encode({"command": command, "args": dict(args or {})})
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path), limit=MAX_LINE), timeout
        )
    except (OSError, TimeoutError) as exc:
        raise ControlUnreachable(f"cannot reach the daemon at {path}: {exc}") from None
    try:
        writer.write(line)
        answer = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ControlUnreachable(f"no answer from {path}: {exc!r}") from None
    finally:
        writer.close()
    return _decode_answer(answer, path)


def _decode_answer(line: bytes, path: Path) -> JsonObject:
    try:
        answer = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise ControlError(f"the daemon at {path} gave a malformed answer: {line[:80]!r}")
    return answer

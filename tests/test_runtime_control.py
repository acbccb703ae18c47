"""The control socket: one JSON request line in, one answer line out, errors as data."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from edge.errors import RemoteError
from edge.runtime.control import (
    MAX_LINE,
    ControlError,
    ControlServer,
    ControlSocketBusy,
    ControlUnreachable,
    Handler,
    JsonObject,
    request,
)
from edge.wire.codes import ErrorCode


class Refused(RemoteError):
    code = ErrorCode.FORBIDDEN


def echo(args: Mapping[str, Any]) -> JsonObject:
    return {"echo": dict(args)}


async def later(args: Mapping[str, Any]) -> JsonObject:
    await asyncio.sleep(0)
    return {"later": True}


def refuse(args: Mapping[str, Any]) -> JsonObject:
    raise Refused("not you")


def broken(args: Mapping[str, Any]) -> JsonObject:
    raise ZeroDivisionError("a bug")


HANDLERS: dict[str, Handler] = {"echo": echo, "later": later, "refuse": refuse, "broken": broken}


@asynccontextmanager
async def serving(path: Path) -> AsyncIterator[ControlServer]:
    server = ControlServer(path, HANDLERS)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def raw(path: Path, payload: bytes) -> Any:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(payload)
    line = await reader.readline()
    writer.close()
    return json.loads(line)


def test_commands_answer_with_results_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"

    async def main() -> None:
        async with serving(path):
            assert await request(path, "echo", {"user": "alice"}) == {
                "ok": True,
                "result": {"echo": {"user": "alice"}},
            }
            assert (await request(path, "later"))["result"] == {"later": True}
            refused = await request(path, "refuse")
            assert refused["error"] == {"code": "FORBIDDEN", "message": "not you"}
            bug = await request(path, "broken")
            assert bug["error"]["code"] == "INTERNAL"
            unknown = await request(path, "dance")
            assert unknown["error"]["code"] == "NOT_FOUND"
            assert "broken, echo, later, refuse" in unknown["error"]["message"]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"args": {}}\n', '"command"'),
        (b'{"command": ""}\n', '"command"'),
        (b'{"command": "echo", "args": [1]}\n', '"args" must be an object'),
        (b"\xff\xfe\n", "not JSON"),
    ],
)
def test_malformed_requests_get_an_error_and_the_connection_goes_on(
    tmp_path: Path, payload: bytes, reason: str
) -> None:
    path = tmp_path / "ctl.sock"

    async def main() -> None:
        async with serving(path):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(payload + b'{"command": "echo"}\n')
            first = json.loads(await reader.readline())
            second = json.loads(await reader.readline())
            writer.close()
            assert first["ok"] is False and first["error"]["code"] == "MALFORMED"
            assert reason in first["error"]["message"]
            assert second == {"ok": True, "result": {"echo": {}}}

    asyncio.run(main())


def test_an_overlong_request_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"

    async def main() -> None:
        async with serving(path):
            answer = await raw(path, b"x" * (MAX_LINE + 10) + b"\n")
            assert answer["error"]["code"] == "MALFORMED"
            assert "over" in answer["error"]["message"]

    asyncio.run(main())


def test_the_socket_is_0660_and_removed_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "run" / "ctl.sock"

    async def main() -> None:
        async with serving(path):
            mode = path.stat().st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        assert not path.exists()

    asyncio.run(main())


def test_a_stale_socket_is_replaced_a_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody answers: a crashed daemon's leftover

    async def main() -> None:
        async with serving(path):
            with pytest.raises(ControlSocketBusy, match="another daemon"):
                await ControlServer(path, HANDLERS).start()
            assert (await request(path, "echo"))["ok"]

    asyncio.run(main())


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    path.write_text("important")

    async def main() -> None:
        with pytest.raises(ControlSocketBusy, match="not a socket"):
            await ControlServer(path, HANDLERS).start()

    asyncio.run(main())
    assert path.read_text() == "important"


def test_no_daemon_and_a_garbled_answer_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"

    async def main() -> None:
        with pytest.raises(ControlUnreachable):
            await request(path, "status")

        async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b"{oops\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(garble, str(path))
        async with server:
            with pytest.raises(ControlError, match="malformed answer"):
                await request(path, "status")

    asyncio.run(main())

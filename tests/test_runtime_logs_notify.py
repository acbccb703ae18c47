"""Log line format, escaping, journald detection, and sd_notify over real sockets."""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.runtime import notify
from edge.runtime.errors import RuntimeUsageError
from edge.runtime.logs import (
    LineFormatter,
    is_journal_stream,
    log_event,
    render_value,
    setup_logging,
    syslog_priority,
)

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(level: str = "debug") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, stream=stream, env={})
    return stream


# ------------------------------------------------------------------ line format


def test_plain_line_has_utc_timestamp_level_logger_message_and_fields() -> None:
    stream = capture("info")
    logging.getLogger("edge.session").info(
        "handshake done", extra={"fields": {"peer": "198.18.0.2:9001", "rtt_ms": 12}}
    )
    line = stream.getvalue()
    assert re.fullmatch(
        STAMP + r" INFO edge\.session: handshake done peer=198\.18\.0\.2:9001 rtt_ms=12\n", line
    ), line


def test_values_with_spaces_or_quotes_are_quoted() -> None:
    stream = capture()
    log_event(
        logging.getLogger("edge.x"),
        logging.WARNING,
        "odd values",
        name='say "hi" now',
        empty="",
        path="C:\\dir",
        blob=b"\x00\xff",
        flag=True,
    )
    line = stream.getvalue()
    assert line.endswith(
        ' WARNING edge.x: odd values name="say \\"hi\\" now" empty="" path="C:\\\\dir"'
        " blob=00ff flag=True\n"
    ), line


def test_peer_strings_cannot_forge_a_line() -> None:
    stream = capture()
    forged = "bob\n2026-11-24T22:10:00.123Z INFO edge.login: admin logged in"
    logging.getLogger("edge.msg").info("from %s", forged, extra={"fields": {"nick": forged}})
    log_event(logging.getLogger("edge.msg"), logging.INFO, "nick\r\x1b[2Jcleared\u2028", x="a\tb")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(
        "edge.msg: from bob\\n2026-11-24T22:10:00.123Z INFO edge.login: admin logged in"
        ' nick="bob\\n2026-11-24T22:10:00.123Z INFO edge.login: admin logged in"'
    )
    assert lines[1].endswith('edge.msg: nick\\r\\x1b[2Jcleared\\u2028 x="a\\tb"')


def test_log_event_does_not_percent_format_and_respects_level() -> None:
    stream = capture("warning")
    logger = logging.getLogger("edge.y")
    log_event(logger, logging.INFO, "hidden")
    log_event(logger, logging.ERROR, "100% sure", code=7)
    assert stream.getvalue().endswith(" ERROR edge.y: 100% sure code=7\n")
    assert "hidden" not in stream.getvalue()


def test_long_values_and_messages_are_capped() -> None:
    stream = capture()
    log_event(logging.getLogger("edge.z"), logging.INFO, "m" * 5000, v="v" * 600)
    line = stream.getvalue()
    assert "m" * 4096 + "...(+904 chars)" in line
    assert 'v="' + "v" * 512 + '...(+88 chars)"' in line


def test_traceback_lines_are_indented() -> None:
    stream = capture()
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("edge.t").exception("failed")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith(" ERROR edge.t: failed")
    assert rest and all(line.startswith("  | ") for line in rest)
    # The newline inside the exception text starts another indented line.
    assert rest[-2:] == ["  | ValueError: bad", "  | thing"]


def test_setup_logging_replaces_only_its_own_handler() -> None:
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    first = capture()
    second = capture()
    logging.getLogger("edge.r").info("once")
    assert "once" not in first.getvalue()
    assert second.getvalue().count("once") == 1
    assert other in logging.getLogger().handlers


def test_unknown_level_is_refused() -> None:
    with pytest.raises(RuntimeUsageError):
        setup_logging("loud", stream=io.StringIO(), env={})


# ------------------------------------------------------------------ journald


def journal_env(path: Path) -> dict[str, str]:
    info = os.stat(path)
    return {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}


def test_journal_stream_is_detected_by_device_and_inode(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with path.open("w") as stream:
        assert is_journal_stream(stream, journal_env(path))
        assert not is_journal_stream(stream, {"JOURNAL_STREAM": "1:2"})
        assert not is_journal_stream(stream, {"JOURNAL_STREAM": "nonsense"})
        assert not is_journal_stream(stream, {})
    assert not is_journal_stream(io.StringIO(), journal_env(path))


def test_journal_lines_carry_priority_and_no_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with path.open("w") as stream:
        setup_logging("debug", stream=stream, env=journal_env(path))
        logging.getLogger("edge.j").warning("low battery", extra={"fields": {"pct": 9}})
        logging.getLogger("edge.j").debug("detail")
    assert path.read_text() == "<4>WARNING edge.j: low battery pct=9\n<7>DEBUG edge.j: detail\n"


def test_syslog_priorities() -> None:
    levels = [logging.DEBUG, logging.INFO, 25, logging.WARNING, logging.ERROR, logging.CRITICAL]
    assert [syslog_priority(level) for level in levels] == [7, 6, 6, 4, 3, 2]


def test_render_value_bare_tokens() -> None:
    assert render_value("[2001:db8::1]:443") == "[2001:db8::1]:443"
    assert render_value(3.5) == "3.5"
    assert render_value("a=b") == '"a=b"'


def test_formatter_survives_a_bad_format_string() -> None:
    record = logging.LogRecord("edge.f", logging.INFO, __file__, 1, "%d items", ("x",), None)
    line = LineFormatter(journal=True).format(record)
    assert line.startswith("<6>INFO edge.f: '%d items' (unformattable: ")


# ------------------------------------------------------------------ sd_notify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    with sock:
        yield sock, str(path)


def test_notify_sends_to_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path}
    assert notify.ready(env=env)
    assert notify.status("dialling\nbob", env=env)
    assert notify.watchdog(env=env)
    assert notify.stopping(env=env)
    assert notify.notify("RELOADING=1\nMONOTONIC_USEC=1", env=env)
    received = [sock.recv(4096) for _ in range(5)]
    assert received == [
        b"READY=1",
        b"STATUS=dialling bob",
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"RELOADING=1\nMONOTONIC_USEC=1",
    ]


def test_notify_sends_to_an_abstract_socket() -> None:
    name = f"edge-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert notify.ready(env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(64) == b"READY=1"


def test_notify_without_a_manager_returns_false(tmp_path: Path) -> None:
    assert notify.ready(env={}) is False
    assert notify.ready(env={"NOTIFY_SOCKET": ""}) is False
    assert notify.ready(env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert notify.ready(env={"NOTIFY_SOCKET": "relative/path"}) is False
    assert notify.ready(env={"NOTIFY_SOCKET": "@" + secrets.token_hex(8)}) is False


def test_notify_refuses_malformed_states() -> None:
    for state in ("", "READY", "X=" + "y" * 5000, "S=\udc80"):
        with pytest.raises(RuntimeUsageError):
            notify.notify(state, env={})


def test_watchdog_interval() -> None:
    pid, other = str(os.getpid()), str(os.getpid() + 1)
    assert notify.watchdog_interval(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 30.0
    assert notify.watchdog_interval(env={"WATCHDOG_USEC": "2500000"}) == 2.5
    assert (
        notify.watchdog_interval(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": other}) is None
    )
    assert notify.watchdog_interval(env={"WATCHDOG_USEC": "0"}) is None
    assert notify.watchdog_interval(env={}) is None

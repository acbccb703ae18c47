"""The agent's port: drawn once, kept, moved (and said so) when taken — with real sockets."""

import random
import socket
from pathlib import Path

import pytest

from edge.client.ports import DYNAMIC, NoFreePort, bind_both, choose


def close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def test_first_start_draws_a_port_and_keeps_it(tmp_path: Path) -> None:
    try_bind, held = bind_both("127.0.0.1")
    first = choose(tmp_path, 0, try_bind, random.Random(1))
    assert DYNAMIC[0] <= first.port <= DYNAMIC[1]
    assert "first start" in first.note
    assert (tmp_path / "port").read_text() == f"{first.port}\n"
    assert (tmp_path / "port").stat().st_mode & 0o777 == 0o600
    assert {s.type for s in held} == {socket.SOCK_DGRAM, socket.SOCK_STREAM}
    close(held)
    try_bind, held = bind_both("127.0.0.1")
    again = choose(tmp_path, 0, try_bind, random.Random(2))
    assert (again.port, again.note) == (first.port, "kept from the last start")
    close(held)


def test_a_taken_port_moves_and_says_so(tmp_path: Path) -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    taken = blocker.getsockname()[1]
    try:
        try_bind, held = bind_both("127.0.0.1")
        moved = choose(tmp_path, taken, try_bind, random.Random(3))
        assert moved.port != taken
        assert f"port {taken} (configured) is taken; moved to {moved.port}" in moved.note
        assert (tmp_path / "port").read_text() == f"{moved.port}\n"
        close(held)
    finally:
        blocker.close()


def test_tcp_taken_counts_as_taken(tmp_path: Path) -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    try:
        try_bind, held = bind_both("127.0.0.1")
        assert not try_bind(taken)
        assert held == []
    finally:
        blocker.close()


def test_a_damaged_port_file_means_a_fresh_draw(tmp_path: Path) -> None:
    (tmp_path / "port").write_text("not a port")
    choice = choose(tmp_path, 0, lambda port: True, random.Random(4))
    assert "first start" in choice.note


def test_nothing_free_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NoFreePort, match="no free UDP\\+TCP port"):
        choose(tmp_path, 0, lambda port: False, random.Random(5))

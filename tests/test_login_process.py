"""``edge login-server`` as systemd runs it: READY when listening, clean exit on SIGTERM."""

import signal
import socket
from pathlib import Path

from tests.daemon import notifying_daemon


def test_serves_notifies_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "login.toml"
    config.write_text('[server]\nlisten = ["127.0.0.1:0"]\n[passwords]\nops = 1\nmemory_kib = 8\n')
    argv = ("login-server", "--config", str(config), "--state-dir", str(tmp_path / "state"))
    with notifying_daemon(tmp_path, *argv) as (process, listener):
        messages = [listener.recv(4096).decode()]
        assert messages == ["READY=1"], messages
        status = listener.recv(4096).decode()
        assert status.startswith("STATUS=serving on 127.0.0.1:")
        port = int(status.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # it really listens
        process.send_signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert process.wait(timeout=30) == 0
    assert (tmp_path / "state" / "server.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700

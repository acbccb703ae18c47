"""``edge login-server`` as systemd runs it: READY when listening, clean exit on SIGTERM."""

import signal
import socket
import subprocess
import sys
from pathlib import Path


def test_serves_notifies_and_stops_on_sigterm(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    config = tmp_path / "login.toml"
    config.write_text('[server]\nlisten = ["127.0.0.1:0"]\n[passwords]\nops = 1\nmemory_kib = 8\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "login-server", "--config", str(config),
         "--state-dir", str(tmp_path / "state")],
        env={"NOTIFY_SOCKET": str(notify_path), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
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
    finally:
        process.kill()
        process.wait()
        listener.close()
    assert (tmp_path / "state" / "server.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700

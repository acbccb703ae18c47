"""Test helper: run ``python -m edge ...`` as systemd would, listening for its sd_notify."""

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def notifying_daemon(
    tmp_path: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[str], socket.socket]]:
    """Start ``edge ARGS`` with NOTIFY_SOCKET set; yield it and the socket it notifies.

    The process is killed at the end if the test has not stopped it already.
    """
    notify_path = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", *args],
        env={"NOTIFY_SOCKET": str(notify_path), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, listener
    finally:
        process.kill()
        process.wait()
        listener.close()

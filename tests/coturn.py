"""coturn's turnserver on 127.0.0.1 for the interop tests, started for real.

How it works: :func:`running_coturn` picks a port free for both UDP and TCP
(coturn listens on both), starts ``turnserver -n`` (no configuration file)
with its log, user database and pid file in the test's directory, and returns
once the server answers a STUN Binding request over UDP: a blocking socket
waits for the answer on the Binding transaction's own retransmission
schedule, so there is no sleep. With ``secret`` it takes TURN REST
credentials (``use-auth-secret``, the form :mod:`edge.login.relay` makes),
relays from 127.0.0.1 on a small port range, and lets peers on loopback be
reached (``allow-loopback-peers``; coturn refuses them otherwise). The server
is terminated (killed if it lingers) when the context ends.
"""

import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.sansio import Address
from edge.stun.client import BindingTransaction
from edge.stun.events import BindingResult

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 15.0
"""Seconds coturn may take to answer its first Binding request."""

RELAY_PORTS = 16
"""Relayed ports coturn may hand out; below Linux's ephemeral range, so the
kernel does not give them to the tests' own sockets."""


@dataclass(frozen=True)
class Coturn:
    """A running turnserver: where it listens, its log, and its REST secret and realm."""

    address: Address
    log: Path
    secret: bytes | None
    realm: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def free_port() -> int:
    """A port free on 127.0.0.1 for UDP and for TCP at the time of asking."""
    while True:
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port


def _command(binary: str, port: int, tmp_path: Path, secret: bytes | None, realm: str) -> list[str]:
    command = [
        binary,
        "-n",
        "--listening-ip",
        HOST,
        "--listening-port",
        str(port),
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--log-file",
        "stdout",
        "--simple-log",
        "--pidfile",
        str(tmp_path / "turnserver.pid"),
        "--db",
        str(tmp_path / "turndb"),
    ]
    if secret is not None:
        low = 20000 + secrets.randbelow(10000)
        command += [
            "--use-auth-secret",
            "--static-auth-secret",
            secret.decode(),
            "--realm",
            realm,
            "--relay-ip",
            HOST,
            "--min-port",
            str(low),
            "--max-port",
            str(low + RELAY_PORTS - 1),
            "--allow-loopback-peers",
        ]
    return command


def wait_for_binding(server: Address, process: subprocess.Popen[bytes], log: Path) -> None:
    """Return once ``server`` answers a Binding request; fail if the process dies first."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        clock = 0.0
        transaction = BindingTransaction(server, clock, rto=0.05, rc=8, rm=8)
        while not transaction.is_done and clock < STARTUP_TIMEOUT:
            if process.poll() is not None:
                pytest.fail(f"turnserver exited: {log.read_text(errors='replace')}")
            for data, addr in transaction.datagrams_to_send(clock):
                sock.sendto(data, addr)
            deadline = transaction.get_timer() or clock
            sock.settimeout(max(deadline - clock, 0.001))
            try:
                data, addr = sock.recvfrom(2048)
                transaction.receive_datagram(data, (addr[0], addr[1]), clock)
            except TimeoutError:
                clock = deadline
                transaction.handle_timer(clock)
                if transaction.is_done:  # its schedule ran out: start another
                    transaction = BindingTransaction(server, clock, rto=0.05, rc=8, rm=8)
        event = transaction.next_event()
    if not isinstance(event, BindingResult):
        pytest.fail(f"turnserver did not answer: {event}; {log.read_text(errors='replace')}")


@contextmanager
def running_coturn(
    tmp_path: Path, *, secret: bytes | None = None, realm: str = "edge.test"
) -> Iterator[Coturn]:
    """A turnserver on 127.0.0.1 that answers Binding requests; stopped at the end.

    Skips the test when coturn is not installed (Debian package ``coturn``).
    """
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("coturn's turnserver is not installed (Debian package coturn)")
    port = free_port()
    log_path = tmp_path / "turnserver.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            _command(binary, port, tmp_path, secret, realm),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_binding((HOST, port), process, log_path)
            yield Coturn((HOST, port), log_path, secret, realm)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

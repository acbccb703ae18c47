"""The agent's own port, chosen as the seed says Skype chose it.

"No default listening port: randomly chooses a port P on installation, opens
TCP and UDP listener sockets at P." At first start the agent draws P from the
dynamic range (RFC 6335 §6: 49152-65535), keeps it in its state folder, and
uses it from then on, so its peers' host caches and NAT mappings stay valid
across restarts. A configured port wins over the kept one. When P is taken —
on UDP or on TCP, both must be free — the agent draws another, keeps it, and
says so in a note for the log and ``edge ctl status``.

Binding is done by the caller's ``try_bind(port) -> bool`` so this module
stays free of sockets; :func:`bind_both` is the real one.
"""

import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.errors import RemoteError
from edge.runtime.config import write_atomic
from edge.wire.codes import ErrorCode

DYNAMIC = (49152, 65535)
MAX_DRAWS = 32
PORT_FILE = "port"


class NoFreePort(RemoteError):
    """Every port drawn was taken: something else holds the machine's ports."""

    code = ErrorCode.UNAVAILABLE


@dataclass(frozen=True)
class PortChoice:
    port: int
    note: str
    """Why this port: kept, configured, first start, or moved after a conflict."""


def choose(
    state_dir: Path,
    configured: int,
    try_bind: Callable[[int], bool],
    rng: random.Random,
) -> PortChoice:
    """The port to listen on (UDP and TCP), kept in ``state_dir`` for the next start."""
    wanted, why = _wanted(state_dir, configured)
    if wanted and try_bind(wanted):
        _keep(state_dir, wanted)
        return PortChoice(wanted, why)
    for _ in range(MAX_DRAWS):
        port = rng.randint(*DYNAMIC)
        if try_bind(port):
            _keep(state_dir, port)
            if wanted:
                note = f"port {wanted} ({why}) is taken; moved to {port} and kept it"
            else:
                note = f"first start: drew port {port} and kept it"
            return PortChoice(port, note)
    raise NoFreePort(f"no free UDP+TCP port after {MAX_DRAWS} draws from {DYNAMIC}")


def _wanted(state_dir: Path, configured: int) -> tuple[int, str]:
    if configured:
        return configured, "configured"
    kept = _read_kept(state_dir / PORT_FILE)
    return (kept, "kept from the last start") if kept else (0, "")


def _read_kept(path: Path) -> int:
    """The kept port, or 0 when none or the file is not a port (then a new one is drawn)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return 0
    if not text.isdigit() or len(text) > 5 or not 1 <= int(text) <= 65535:
        return 0
    return int(text)


def _keep(state_dir: Path, port: int) -> None:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(state_dir / PORT_FILE, f"{port}\n".encode(), mode=0o600)


def bind_both(host: str) -> tuple[Callable[[int], bool], list[socket.socket]]:
    """A ``try_bind`` that really binds UDP and TCP on ``host``; the sockets it keeps
    (two for the port that worked) are handed to the event loop by the caller."""
    held: list[socket.socket] = []

    def try_bind(port: int) -> bool:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            udp.bind((host, port))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, port))
        except OSError:
            udp.close()
            tcp.close()
            return False
        held[:] = [udp, tcp]
        return True

    return try_bind, held

"""``edge supernode``: STUN and TURN for clients on UDP and TCP, counters through ``edge ctl``.

How it starts: the port P is the configured one, or the one kept in the state
folder, or one drawn at first start (as the seed's clients chose theirs), bound
on UDP and TCP together; then TCP 80 and 443 (``tcp_ports``), which a unit
binds with CAP_NET_BIND_SERVICE rather than as root. One
:class:`~edge.stun.turn.TurnServer` core answers STUN Binding ("Am I X?") and
TURN on all of them through a :class:`~edge.supernode.relay.RelayAdapter`.
Without a relay secret the core still answers Binding, and an Allocate gets
401 since no credentials can verify: the supernode relays for nobody.

Once everything is bound the control socket opens and systemd hears READY=1,
with a status line naming the ports; the watchdog is pinged from the loop.

How it stops (SIGTERM): STOPPING=1, the TCP listeners close so no new client
comes, allocations and TCP clients already here are served for up to
``shutdown_grace`` seconds, then every socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge.client.ports import bind_both, choose
from edge.runtime import notify
from edge.runtime.control import ControlServer, JsonObject
from edge.stun.turn import TurnServer
from edge.supernode.config import SupernodeConfig
from edge.supernode.errors import SupernodeBindError
from edge.supernode.relay import RelayAdapter

_log = logging.getLogger(__name__)

SOFTWARE = "edge supernode"


@dataclass(frozen=True)
class Bound:
    """Where a started supernode listens."""

    port: int
    port_note: str
    udp: tuple[str, int]
    tcp: tuple[tuple[str, int], ...]


class Supernode:
    """One supernode process: its sockets, its TURN core and its control socket."""

    def __init__(self, config: SupernodeConfig, *, clock: Any = time.time) -> None:
        self.config = config
        self._clock = clock
        self.started_at = clock()
        self.relay = RelayAdapter(
            config.relay_host,
            config.relay.ports,
            max_connections=config.max_tcp_connections,
            clock=clock,
        )
        self.core = TurnServer(
            config.relay.realm,
            config.relay.secret or os.urandom(32),
            self.relay.open_relay,
            now_nonce_secret=os.urandom(32),
            limits=config.relay.limits,
            release_relay=self.relay.close_relay,
            software=SOFTWARE,
        )
        self.control = ControlServer(
            config.control_socket, {"status": self.status, "counters": self.counters}
        )
        self.bound: Bound | None = None

    async def start(self) -> Bound:
        sockets: list[socket.socket] = []
        try:
            try_bind, held = bind_both(self.config.host)
            choice = choose(self.config.state_dir, self.config.port, try_bind, random.Random())
            sockets.extend(held)
            udp, tcp = held
            extra = [_bind_tcp(self.config.host, port) for port in self.config.tcp_ports]
            sockets.extend(extra)
            await self.relay.start(self.core, udp, [tcp, *extra])
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self.bound = Bound(
            port=choice.port,
            port_note=choice.note,
            udp=udp.getsockname()[:2],
            tcp=tuple(sock.getsockname()[:2] for sock in [tcp, *extra]),
        )
        await self.control.start()
        return self.bound

    async def stop(self) -> None:
        """Close listeners, serve current clients for the grace period, close the rest."""
        self.relay.stop_listening()
        await self.relay.wait_idle(self.config.shutdown_grace)
        await self.control.stop()
        await self.relay.close()

    # -- control commands

    def status(self, args: Mapping[str, Any]) -> JsonObject:
        bound = self.bound
        return {
            "role": "supernode",
            "port": bound.port if bound else None,
            "port_note": bound.port_note if bound else "",
            "udp": _show(bound.udp) if bound else None,
            "tcp": [_show(address) for address in bound.tcp] if bound else [],
            "relay": {
                "enabled": self.config.relay.enabled,
                "address": self.config.relay_host,
                "realm": self.config.relay.realm,
            },
            "uptime_seconds": round(self._clock() - self.started_at, 1),
            "allocations": self.core.allocation_count,
            "tcp_clients": self.relay.tcp_clients,
        }

    def counters(self, args: Mapping[str, Any]) -> JsonObject:
        core = self.core
        return {
            "requests": {
                f"{method.lower().replace('_', '-')} {outcome}": n
                for (method, outcome), n in core.requests.items()
            },
            "relayed": dict(core.relayed),
            "drops": {drop.value: n for drop, n in core.drops.items()},
            "sockets": dict(self.relay.counters),
            "allocations": core.allocation_count,
        }


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SupernodeBindError(f"cannot listen on TCP {host}:{port}: {exc.strerror}") from None
    return sock


def _show(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(config: SupernodeConfig, started: asyncio.Future[Bound] | None = None) -> int:
    """Run a supernode until cancelled (SIGTERM through :func:`edge.runtime.loop.run`)."""
    node = Supernode(config)
    bound = await node.start()
    watchdog = asyncio.create_task(notify.keep_watchdog())
    try:
        if started is not None:
            started.set_result(bound)
        _log.info("supernode on port %d (%s)", bound.port, bound.port_note)
        notify.ready()
        notify.status(
            f"port {bound.port} (UDP+TCP), TCP {', '.join(str(p) for p in config.tcp_ports)};"
            f" relay {'on' if config.relay.enabled else 'off'}"
        )
        await asyncio.Event().wait()
    finally:
        notify.stopping()
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        await asyncio.shield(node.stop())
    return 0

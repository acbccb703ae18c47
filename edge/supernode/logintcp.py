"""The TCP side of the supernode's login tunnels: one connection to the login server each.

How it works: :class:`~edge.supernode.tunnel.LoginTunnels` decides everything
and asks for TCP work with actions, which reach the supernode's adapter as
:class:`~edge.supernode.clients.ClientService` events; :meth:`LoginConnections.act`
carries them out and reports back (connected, bytes read, connection gone),
then calls ``after`` so that what the core answered leaves at once (the
device's session may be UDP, flushed by the relay adapter). A connection
that cannot be made within :data:`CONNECT_TIMEOUT` counts as the login
server being unreachable; a login server that does not read what it is sent
past :data:`MAX_WRITE_BUFFER` is cut off.
"""

import asyncio
import contextlib
from collections.abc import Callable

from edge.supernode.tunnel import CloseLogin, Key, LoginTunnels, OpenLogin, ReadLogin, WriteLogin

CONNECT_TIMEOUT = 10.0
MAX_WRITE_BUFFER = 256 * 1024


class _LoginStream(asyncio.Protocol):
    def __init__(self, owner: "LoginConnections", key: Key) -> None:
        self._owner = owner
        self._key = key

    def data_received(self, data: bytes) -> None:
        self._owner.received(self._key, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.lost(self._key)


class LoginConnections:
    """Carries out a :class:`LoginTunnels`' TCP actions with asyncio."""

    def __init__(self, tunnels: LoginTunnels, after: Callable[[], None]) -> None:
        self._tunnels = tunnels
        self._after = after
        self._connecting: dict[Key, asyncio.Task[None]] = {}
        self._open: dict[Key, asyncio.Transport] = {}

    def act(self, action: object) -> bool:
        """Carry out ``action`` if it is one of the tunnels'; False otherwise."""
        if isinstance(action, OpenLogin):
            task = asyncio.get_running_loop().create_task(self._connect(action))
            self._connecting[action.key] = task
        elif isinstance(action, WriteLogin):
            self._write(action)
        elif isinstance(action, ReadLogin):
            transport = self._open.get(action.key)
            if transport is not None and not transport.is_closing():
                (transport.resume_reading if action.reading else transport.pause_reading)()
        elif isinstance(action, CloseLogin):
            self._close(action.key)
        else:
            return False
        return True

    def close(self) -> None:
        """Close every connection (the supernode is stopping)."""
        for key in [*self._connecting, *self._open]:
            self._close(key)

    # -- from the connections

    def received(self, key: Key, data: bytes) -> None:
        self._tunnels.from_login(key, data, self._now())
        self._after()

    def lost(self, key: Key) -> None:
        if self._open.pop(key, None) is not None:
            self._tunnels.login_closed(key, self._now())
            self._after()

    # -- the rest

    async def _connect(self, action: OpenLogin) -> None:
        loop = asyncio.get_running_loop()
        host, port = action.address
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _LoginStream(self, action.key), host, port),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError):
            self._tunnels.counts["tunnel-connect-error"] += 1
            self._tunnels.login_closed(action.key, self._now())
            self._after()
            return
        finally:
            self._connecting.pop(action.key, None)
        if not self._tunnels.connected(action.key, self._now()):
            transport.close()
            return
        self._open[action.key] = transport
        self._after()

    def _write(self, action: WriteLogin) -> None:
        transport = self._open.get(action.key)
        if transport is None or transport.is_closing():
            return
        transport.write(action.data)
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self._tunnels.counts["tunnel-login-slow"] += 1
            transport.abort()

    def _close(self, key: Key) -> None:
        task = self._connecting.pop(key, None)
        if task is not None:
            task.cancel()
        transport = self._open.pop(key, None)
        if transport is not None:
            with contextlib.suppress(RuntimeError):
                transport.close()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

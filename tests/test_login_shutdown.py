"""A stopping login server finishes the request it is serving, then closes."""

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge.client.login import login
from edge.crypto.cert import TrustStore
from edge.login.cli import open_configured_store, server_keys
from edge.login.config import LoginConfig
from edge.login.passwords import Passwords
from edge.login.server import LoginServer
from edge.login.store import Device, Store
from tests.test_login_server import CHEAP, device, run_uv


class HeldStore:
    """The real store, with one door: enrolments wait until the test opens it.

    Everything is done by the real store; the door only makes "a request is in
    flight" a moment the test can name instead of guess."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.entered = threading.Event()
        self.door = threading.Event()

    def enrol_device(self, *args: Any) -> Device:
        self.entered.set()
        self.door.wait(10)
        return self._store.enrol_device(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_stop_finishes_the_request_in_flight(tmp_path: Path) -> None:
    config = LoginConfig(
        listen=(("127.0.0.1", 0),), state_dir=tmp_path / "state", password_cost=CHEAP
    )

    async def body() -> None:
        real = await asyncio.to_thread(open_configured_store, config)
        real.add_user("alice", Passwords(CHEAP).hash("pw"), int(time.time()))
        store = HeldStore(real)
        keys = server_keys(config.state_dir)
        server = LoginServer(config, store, keys)
        (address,) = await server.start()
        who = device()
        logging_in = asyncio.create_task(login(address, keys.noise.dh_public, who, password="pw"))
        await asyncio.to_thread(store.entered.wait, 10)
        stopping = asyncio.create_task(server.stop(grace=10.0))
        await asyncio.sleep(0)  # let stop() close the listeners before we try them
        with pytest.raises(OSError):
            await asyncio.open_connection(*address)
        assert not stopping.done()
        store.door.set()
        session = await asyncio.wait_for(logging_in, 10)
        cert = TrustStore([keys.issuer.public]).verify(session.certificate, time.time())
        assert cert.user_id == "alice"
        await asyncio.wait_for(stopping, 10)
        real.close()

    run_uv(body())

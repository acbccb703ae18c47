"""Two login servers, one PostgreSQL database: what one does, the other sees."""

import asyncio
import time
from pathlib import Path

from edge.client.login import Credentials, login
from edge.crypto.cert import TrustStore
from edge.crypto.keys import DeviceKeys
from edge.crypto.revocation import verify_revocations
from edge.login.cli import open_configured_store, server_keys
from edge.login.config import LoginConfig
from edge.login.passwords import Passwords
from edge.login.server import LoginServer
from edge.wire.codes import MsgType
from edge.wire.messages import BuddyOp, BuddyState, encode
from tests.pg import Cluster
from tests.test_login_server import CHEAP, run_uv


def test_two_servers_share_buddies_and_revocations(pg_cluster: Cluster, tmp_path: Path) -> None:
    url = pg_cluster.create_database()
    config = LoginConfig(
        listen=(("127.0.0.1", 0),),
        state_dir=tmp_path / "state",  # both servers hold the same keys
        database=url,
        password_cost=CHEAP,
    )

    async def body() -> None:
        stores = await asyncio.gather(
            asyncio.to_thread(open_configured_store, config),
            asyncio.to_thread(open_configured_store, config),
        )
        keys = server_keys(config.state_dir)
        servers = [LoginServer(config, store, keys) for store in stores]
        (first,), (second,) = [await server.start() for server in servers]
        try:
            password = Passwords(CHEAP).hash("pw")
            stores[0].add_user("alice", password, int(time.time()))
            stores[1].add_user("bob", password, int(time.time()))
            alice = Credentials("alice", "desk", DeviceKeys.generate())
            bob = Credentials("bob", "phone", DeviceKeys.generate())
            on_first = await login(first, keys.noise.dh_public, alice, password="pw")
            on_second = await login(second, keys.noise.dh_public, bob, password="pw")

            await on_first.request(
                MsgType.BUDDY_OP,
                {"op": BuddyOp.ADD_REQUEST, "user_id": "bob", "note": "via the first"},
                MsgType.BUDDY_LIST,
            )
            seen = await on_second.request(
                MsgType.BUDDY_SYNC, {"since_version": 0}, MsgType.BUDDY_LIST
            )
            assert [(e.user_id, e.state, e.note) for e in seen.body.entries] == [
                ("alice", BuddyState.PENDING_IN, "via the first")
            ]

            trust = TrustStore([keys.issuer.public])
            serial = trust.verify(on_first.certificate, time.time()).serial
            assert serial in stores[0].revoke_device("alice", "desk", int(time.time()))
            listing = await on_second.request(
                MsgType.REVOCATION_FETCH, {"known_version": 0}, MsgType.REVOCATION_LIST
            )
            raw = encode(MsgType.REVOCATION_LIST, listing.body)[8:]
            assert serial in verify_revocations(raw, trust, time.time()).serials
            on_first.close()
            on_second.close()
        finally:
            for server in servers:
                await server.stop(grace=1.0)
            for store in stores:
                store.close()

    run_uv(body())

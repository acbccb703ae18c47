"""The login server end to end over TCP on loopback, against SQLite and PostgreSQL."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from edge.client.errors import LoginRefused, ServerError
from edge.client.login import Credentials, LoginSession, login
from edge.crypto.cert import TrustStore
from edge.crypto.keys import DeviceKeys
from edge.crypto.revocation import verify_revocations
from edge.login.cli import open_configured_store, server_keys
from edge.login.config import LoginConfig
from edge.login.passwords import PasswordCost, Passwords
from edge.login.server import LoginServer
from edge.login.store import Store
from edge.sansio import Address
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import BuddyOp, BuddyState, encode

T = TypeVar("T")
CHEAP = PasswordCost(ops=1, memory=8 * 1024)
"""argon2id at its minimum: these tests are about the protocol, not the cost."""


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    server: LoginServer
    address: Address
    store: Store
    clock: Clock

    @property
    def key(self) -> bytes:
        return self.server.keys.noise.dh_public

    @property
    def trust(self) -> TrustStore:
        return TrustStore([self.server.keys.issuer.public])

    def add_user(self, user_id: str, password: str = "correct horse") -> None:
        self.store.add_user(user_id, Passwords(CHEAP).hash(password), int(self.clock.now))

    async def login(self, who: Credentials, **kw: Any) -> LoginSession:
        return await login(self.address, self.key, who, timeout=5.0, **kw)


def run_uv(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


@asynccontextmanager
async def world(store_url: str, tmp_path: Path, **overrides: Any) -> AsyncIterator[World]:
    config = replace(
        LoginConfig(
            listen=(("127.0.0.1", 0),),
            state_dir=tmp_path / "state",
            database=store_url,
            password_cost=CHEAP,
            throttle_base=30,
            throttle_max=300,
            relay_secret=b"shared with coturn",
            relay_uris=("turn:198.18.0.20:3478?transport=udp",),
        ),
        **overrides,
    )
    store = await asyncio.to_thread(open_configured_store, config)
    clock = Clock()
    server = LoginServer(config, store, server_keys(config.state_dir), clock=clock)
    (address,) = await server.start()
    try:
        yield World(server, address, store, clock)
    finally:
        await server.stop(grace=2.0)
        store.close()


def device(user_id: str = "alice", device_id: str = "desk-1") -> Credentials:
    return Credentials(user_id, device_id, DeviceKeys.generate())


def scenario(
    fn: Callable[[World], Coroutine[Any, Any, None]], **overrides: Any
) -> Callable[[str, Path], None]:
    def test(store_url: str, tmp_path: Path) -> None:
        async def body() -> None:
            async with world(store_url, tmp_path, **overrides) as w:
                await fn(w)

        run_uv(body())

    test.__name__ = fn.__name__
    return test


# -- enrolment and renewal -------------------------------------------------------------


async def _enrol_then_renew(w: World) -> None:
    w.add_user("alice")
    who = device()
    first = await w.login(who, password="correct horse")
    cert = w.trust.verify(first.certificate, time.time(), dh_key=who.keys.dh_public)
    assert (cert.user_id, cert.device_id, cert.sign_key) == (
        "alice",
        "desk-1",
        who.keys.sign_public,
    )
    assert 23 * 3600 < cert.not_after - time.time() <= 24 * 3600
    first.close()
    again = await w.login(who)  # no password: the device key alone
    renewed = w.trust.verify(again.certificate, time.time(), dh_key=who.keys.dh_public)
    assert renewed.serial != cert.serial
    again.close()
    (stored,) = w.store.list_devices("alice")
    assert stored.sign_key == who.keys.sign_public


test_enrol_with_password_then_renew_with_the_device_key = scenario(_enrol_then_renew)


async def _refusals_look_alike(w: World) -> None:
    w.add_user("alice")
    texts = set()
    for who, password in (
        (device("alice"), "wrong"),
        (device("nobody"), "correct horse"),
        (device("alice", "never-enrolled"), None),
    ):
        w.clock.now += 1000  # past any backoff
        with pytest.raises(LoginRefused) as info:
            await w.login(who, password=password)
        assert info.value.code is ErrorCode.AUTH_FAILED
        texts.add(str(info.value))
    assert texts == {"login refused: unknown user, wrong password or unknown device"}


test_unknown_user_wrong_password_and_unknown_device_look_alike = scenario(_refusals_look_alike)


async def _throttled(w: World) -> None:
    w.add_user("alice")
    with pytest.raises(LoginRefused):
        await w.login(device(), password="wrong")
    with pytest.raises(LoginRefused) as info:
        await w.login(device(), password="correct horse")
    assert info.value.code is ErrorCode.RATE_LIMITED
    assert "try again in 30 s" in str(info.value)
    w.clock.now += 31
    with pytest.raises(LoginRefused):
        await w.login(device(), password="wrong again")
    w.clock.now += 31  # the second failure doubled the wait to 60 s
    with pytest.raises(LoginRefused) as info:
        await w.login(device(), password="correct horse")
    assert info.value.code is ErrorCode.RATE_LIMITED
    w.clock.now += 30
    (await w.login(device(), password="correct horse")).close()


test_failures_back_off_exponentially = scenario(_throttled)


async def _disabled(w: World) -> None:
    w.add_user("alice")
    who = device()
    (await w.login(who, password="correct horse")).close()
    w.store.set_enabled("alice", False)
    with pytest.raises(LoginRefused) as info:
        await w.login(who)
    assert info.value.code is ErrorCode.AUTH_FAILED
    w.store.set_enabled("alice", True)
    w.clock.now += 1000
    (await w.login(who)).close()


test_a_disabled_account_cannot_renew = scenario(_disabled)


async def _revoked(w: World) -> None:
    w.add_user("alice")
    who = device()
    session = await w.login(who, password="correct horse")
    serial = w.trust.verify(session.certificate, time.time()).serial
    session.close()
    assert serial in w.store.revoke_device("alice", "desk-1", int(w.clock.now))
    with pytest.raises(LoginRefused):
        await w.login(who)
    w.clock.now += 1000  # past the backoff that failure earned
    with pytest.raises(LoginRefused):  # the password does not bring revoked keys back
        await w.login(who, password="correct horse")
    w.clock.now += 1000
    other = await w.login(device("alice", "desk-2"), password="correct horse")
    listing = await other.request(
        MsgType.REVOCATION_FETCH, {"known_version": 0}, MsgType.REVOCATION_LIST
    )
    assert serial in set(listing.body.revocations.serials)
    verified = verify_revocations(
        encode(MsgType.REVOCATION_LIST, listing.body)[8:], w.trust, time.time()
    )
    assert serial in verified.serials
    other.close()


test_a_revoked_device_is_refused_and_listed = scenario(_revoked)


async def _metacharacters(w: World) -> None:
    name = "o'hara; DROP TABLE users;--"
    w.add_user(name, "p'); --")
    (await w.login(device(name, 'desk "1"'), password="p'); --")).close()
    assert [u.user_id for u in w.store.list_users()] == [name]


test_sql_metacharacters_are_only_data = scenario(_metacharacters)


# -- registration ------------------------------------------------------------------------


async def _registration_off(w: World) -> None:
    with pytest.raises(ServerError) as info:
        await w.login(device("newcomer"), password="pw", register=True)
    assert info.value.code is ErrorCode.FORBIDDEN
    assert w.store.get_user("newcomer") is None


test_self_registration_is_off_by_default = scenario(_registration_off)


async def _registration_on(w: World) -> None:
    session = await w.login(device("newcomer"), password="pw", register=True)
    assert w.trust.verify(session.certificate, time.time()).user_id == "newcomer"
    session.close()
    with pytest.raises(LoginRefused) as info:
        await w.login(device("second"), password="pw", register=True)
    assert info.value.code is ErrorCode.RATE_LIMITED
    w.clock.now += 3601
    (await w.login(device("second"), password="pw", register=True)).close()


test_self_registration_is_rate_limited_per_address = scenario(
    _registration_on, self_registration=True
)


# -- the session itself --------------------------------------------------------------------


def test_a_server_with_another_key_is_refused(store_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        async with world(store_url, tmp_path) as w:
            w.add_user("alice")
            with pytest.raises(ServerError, match="not the pinned") as info:
                await login(
                    w.address, DeviceKeys.generate().dh_public, device(), password="correct horse"
                )
            assert info.value.code is ErrorCode.HANDSHAKE_FAILED

    run_uv(body())


async def _busy(w: World) -> None:
    w.add_user("alice")
    first = await w.login(device(), password="correct horse")
    with pytest.raises(ServerError, match="busy") as info:
        await w.login(device("alice", "desk-2"), password="correct horse")
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert w.server.stats["refused_busy"] == 1
    first.close()


test_more_connections_than_the_limit_are_refused_politely = scenario(_busy, max_connections=1)


async def _stalled(w: World) -> None:
    reader, writer = await asyncio.open_connection(*w.address)
    assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed by the server
    writer.close()
    assert w.server.open_connections == 0


test_a_stalled_handshake_is_dropped_and_its_slot_freed = scenario(_stalled, handshake_timeout=0.2)


# -- requests after login --------------------------------------------------------------------


async def _relay(w: World) -> None:
    from edge.login.relay import check_relay_credentials

    w.add_user("alice")
    session = await w.login(device(), password="correct horse")
    reply = await session.request(MsgType.RELAY_REQUEST, {"ttl": 600}, MsgType.RELAY_CREDENTIALS)
    body = reply.body
    assert body.username == f"{body.expires}:alice"
    assert list(body.uris) == ["turn:198.18.0.20:3478?transport=udp"]
    assert (
        check_relay_credentials(
            b"shared with coturn", body.username, body.password, int(w.clock.now)
        )
        == "alice"
    )
    session.close()


test_relay_credentials_in_the_turn_rest_scheme = scenario(_relay)


async def _buddies(w: World) -> None:
    w.add_user("alice")
    w.add_user("bob")
    alice = await w.login(device("alice"), password="correct horse")
    bob = await w.login(device("bob", "phone"), password="correct horse")
    await alice.request(
        MsgType.BUDDY_OP,
        {"op": BuddyOp.ADD_REQUEST, "user_id": "bob", "note": "hi, it's Alice"},
        MsgType.BUDDY_LIST,
    )
    listing = await bob.request(MsgType.BUDDY_SYNC, {"since_version": 0}, MsgType.BUDDY_LIST)
    (entry,) = listing.body.entries
    assert (entry.user_id, entry.state) == ("alice", BuddyState.PENDING_IN)
    seen = listing.body.version
    await bob.request(
        MsgType.BUDDY_OP, {"op": BuddyOp.ACCEPT, "user_id": "alice", "note": ""}, MsgType.BUDDY_LIST
    )
    delta = await bob.request(MsgType.BUDDY_SYNC, {"since_version": seen}, MsgType.BUDDY_LIST)
    assert [(e.user_id, e.state) for e in delta.body.entries] == [("alice", BuddyState.ACCEPTED)]
    mine = await alice.request(MsgType.BUDDY_SYNC, {"since_version": 0}, MsgType.BUDDY_LIST)
    assert [(e.user_id, e.state) for e in mine.body.entries] == [("bob", BuddyState.ACCEPTED)]
    with pytest.raises(ServerError) as info:
        await alice.request(
            MsgType.BUDDY_OP,
            {"op": BuddyOp.ACCEPT, "user_id": "bob", "note": ""},
            MsgType.BUDDY_LIST,
        )
    assert info.value.code is ErrorCode.FORBIDDEN
    alice.close()
    bob.close()


test_buddy_request_accept_and_delta_sync = scenario(_buddies)


async def _device_refreshes(w: World) -> None:
    from edge.client.revocations import refresh
    from edge.crypto.errors import CertificateRevoked
    from edge.crypto.revocation import RevocationCache

    w.add_user("alice")
    w.add_user("bob")
    bob = await w.login(device("bob", "phone"), password="correct horse")
    session = await w.login(device(), password="correct horse")
    stolen = session.certificate
    session.close()
    w.store.revoke_device("alice", "desk-1", int(w.clock.now))
    trust = w.trust
    trust.verify(stolen, time.time())  # believed until the list arrives
    cache = RevocationCache(trust)
    fetched = await refresh(bob, cache, w.server.keys.issuer.key_id)
    assert cache.known_version(w.server.keys.issuer.key_id) == fetched.version
    with pytest.raises(CertificateRevoked):
        trust.verify(stolen, time.time())
    bob.close()


test_a_device_refreshes_its_revocation_list = scenario(_device_refreshes)


async def _rehash(w: World) -> None:
    older = Passwords(PasswordCost(ops=2, memory=8 * 1024))
    w.store.add_user("alice", older.hash("pw"), int(w.clock.now))
    (await w.login(device(), password="pw")).close()
    user = w.store.get_user("alice")
    assert user is not None and not Passwords(CHEAP).needs_rehash(user.password_hash)
    (await w.login(device("alice", "desk-2"), password="pw")).close()


test_a_hash_made_at_another_cost_is_upgraded_at_login = scenario(_rehash)


async def _empty_password(w: World) -> None:
    w.add_user("alice")
    with pytest.raises(ServerError) as info:
        await w.login(device("newcomer"), password="", register=True)
    assert info.value.code is ErrorCode.FORBIDDEN


test_an_empty_password_is_refused_cleanly = scenario(_empty_password, self_registration=True)


async def _gone(w: World) -> None:
    w.add_user("alice")
    session = await w.login(device(), password="correct horse")
    await w.server.stop(grace=1.0)
    with pytest.raises(ServerError) as info:
        await session.request(MsgType.BUDDY_SYNC, {"since_version": 0}, MsgType.BUDDY_LIST)
    assert info.value.code is ErrorCode.UNAVAILABLE
    with pytest.raises(ServerError):  # and again, now that the drop is known
        await session.request(MsgType.BUDDY_SYNC, {"since_version": 0}, MsgType.BUDDY_LIST)


test_a_vanished_server_is_a_remote_error_every_time = scenario(_gone)


async def _malformed(w: World) -> None:
    # A peer that bypasses our encoder: a LOGIN_HELLO whose user id is not UTF-8,
    # then one whose user id is longer than its cap, each inside a valid session.
    from edge.crypto.cert import TrustStore as Trust
    from edge.runtime.adapters import open_stream_client
    from edge.session.events import SessionEstablished, SessionFailed
    from edge.session.handshake import Identity
    from edge.session.stream import StreamSession
    from edge.wire.messages import encode as build

    w.add_user("alice")
    who = device()
    good = build(
        MsgType.LOGIN_HELLO,
        {
            "user_id": "alice",
            "device_id": "desk-1",
            "sign_key": who.keys.sign_public,
            "dh_key": who.keys.dh_public,
            "client_version": "x",
        },
    )
    not_utf8 = good.replace(b"\x05alice", b"\x05al\xffce")
    too_long = (
        good[:6]
        + (len(good) - 8 + 60).to_bytes(2, "big")
        + good[8:].replace(b"\x05alice", b"\x41" + b"a" * 65)
    )
    for bad in (not_utf8, too_long):
        events: asyncio.Queue[object] = asyncio.Queue()
        stream = StreamSession(
            Identity(who.keys, b""), Trust(), initiator=True, pinned_static=w.key
        )
        adapter = await open_stream_client(stream, *w.address, events.put_nowait)
        assert isinstance(await asyncio.wait_for(events.get(), 5), SessionEstablished)
        assert stream._transport is not None
        stream._out += stream._transport.seal_frame(bad)
        adapter.poke()
        assert isinstance(await asyncio.wait_for(events.get(), 5), SessionFailed)
        adapter.close()
    (await w.login(who, password="correct horse")).close()  # the server is fine


test_malformed_names_close_the_session_and_nothing_else = scenario(_malformed)

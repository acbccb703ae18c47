"""The login server's costs, for SQLite and PostgreSQL side by side in one run.

How it works: for each store a fresh database is opened with ``open_store`` and
migrated (SQLite: a file in a temporary directory; PostgreSQL: a database in a
throw-away cluster started by :func:`tests.pg.running_cluster`, which runs with
``fsync=off`` on a Unix socket). Then, in this one process and on one core
(PostgreSQL's own server process aside, which takes the other):

- **Logins over TCP.** A real :class:`~edge.login.server.LoginServer` listens on
  127.0.0.1 and the real client :func:`~edge.client.login.login` talks to it on
  the same uvloop loop, one login after another, so each figure counts both
  ends, the TCP round trips and the store's worker-thread hops. A password
  login verifies argon2id at the default (interactive) cost, beside the bare
  ``Passwords().verify`` rate; a renewal proves the device key alone, beside
  the bare stream-session handshake it rides on (the same XX handshake, both
  cores in memory, no socket): what is left over is the conversation, the
  Ed25519 proof and certificate, and seven store transactions.
- **Buddy sync, store level.** One user with 1,000 accepted buddies, made
  through ``buddy_op`` as devices would make them. The full list
  (``buddies_since(user, 0)``) is read beside as many one-row reads
  (``get_user``, its rate divided by 1,000) of the same store; a delta of
  five changes beside the full list.
- **Account lookup.** ``get_user`` on random ids with about a thousand
  accounts, then again after topping the ``users`` table up to a million,
  beside the first figure: the ratio should stay near 1 (the B-trees grow
  deeper; what SQLite loses beyond that is its small page cache). The rows go
  in outside the store, over a plain connection to the same database: SQLite
  ``executemany`` in one transaction, then a checkpoint that folds the
  write-ahead log into the file; PostgreSQL ``COPY`` in one transaction, then
  ``VACUUM ANALYZE`` as autovacuum would do soon after. Only ``users`` rows
  are added, the table ``get_user`` reads. The insert is printed as rows/s,
  so its time is the row count divided by that.

A password login takes about 70 ms here, so its figures use longer windows
(a few dozen logins in all). The whole module takes well under a minute.
"""

import asyncio
import contextlib
import itertools
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import uvloop

from bench.common import Figure, rate
from edge.client.login import Credentials, login
from edge.crypto.cert import TrustStore
from edge.crypto.keys import DeviceKeys
from edge.login.cli import open_configured_store, server_keys
from edge.login.config import LoginConfig
from edge.login.passwords import Passwords
from edge.login.server import LoginServer
from edge.login.store import Store
from edge.session.handshake import Identity, ReplayGuard
from edge.session.stream import StreamSession
from edge.wire.messages import BuddyOp
from tests.pg import find_bindir, running_cluster

SECONDS = 1.0
ARGON2_SECONDS = 3.0
"""argon2id at the interactive cost is ~70 ms: three one-second windows hold ~40."""
BUDDIES = 1000
CHANGES = 5
ACCOUNTS = 1_000_000
LOOKUP_SAMPLE = 10_000
PASSWORD = "correct horse battery staple"
NOW = 1_800_000_000
CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 443)

_PASSWORDS = Passwords()
_HASH = _PASSWORDS.hash(PASSWORD)
"""One argon2id string at the default cost: every account's hash has its real size."""


@dataclass(frozen=True)
class References:
    """Lower layers measured once in this run, for every store's figures."""

    argon2id: float
    handshake: float


@dataclass(frozen=True)
class Db:
    """One store under test: its name, URL, and how to bulk-insert accounts into it."""

    kind: str
    url: str
    insert: Callable[[list[str]], None]


def run() -> list[Figure]:
    refs = References(
        argon2id=rate(lambda: _PASSWORDS.verify(_HASH, PASSWORD), ARGON2_SECONDS, batch=1),
        handshake=rate(_bare_handshake(), SECONDS, batch=10),
    )
    per_store = [_measure(db, refs) for db in _databases()]
    # Side by side: each figure for every store before the next figure.
    return [figure for row in zip(*per_store, strict=True) for figure in row]


def _databases() -> Iterator[Db]:
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        path = Path(tmp) / "login.db"
        yield Db("sqlite", f"sqlite://{path}", lambda ids: _sqlite_insert(path, ids))
    if find_bindir() is None:
        print("(no PostgreSQL server installed: PostgreSQL figures skipped)", file=sys.stderr)
        return
    with running_cluster() as cluster:
        url = cluster.create_database()
        yield Db("postgresql", url, lambda ids: _postgres_insert(url, ids))


def _measure(db: Db, refs: References) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="edge-bench-state-") as state:
        config = LoginConfig(listen=(("127.0.0.1", 0),), state_dir=Path(state), database=db.url)
        store = open_configured_store(config)
        try:
            return _figures(db, config, store, refs)
        finally:
            store.close()


def _figures(db: Db, config: LoginConfig, store: Store, refs: References) -> list[Figure]:
    tag = f"[{db.kind}]"
    passwords, renewals = _logins(config, store)
    full, delta = _buddy_syncs(store)
    ids = [user.user_id for user in store.list_users(limit=ACCOUNTS)]
    few = rate(_lookups(store, ids), SECONDS)
    inserted, seconds = _top_up(db, store, len(ids))
    many = rate(_lookups(store, _sample(inserted)), SECONDS)
    return [
        Figure(
            f"{tag} password logins/s (TCP, argon2id)",
            passwords,
            "logins/s",
            "raw argon2id verify",
            refs.argon2id,
        ),
        Figure(
            f"{tag} device-key renewals/s (TCP)",
            renewals,
            "logins/s",
            "bare stream XX handshake",
            refs.handshake,
        ),
        Figure(
            f"{tag} buddy sync, full, {BUDDIES:,} buddies",
            full,
            "syncs/s",
            f"{BUDDIES:,} get_user calls",
            few / BUDDIES,
        ),
        Figure(f"{tag} buddy sync, delta of {CHANGES}", delta, "syncs/s", "full sync", full),
        Figure(f"{tag} get_user, {len(ids):,} accounts", few, "lookups/s"),
        Figure(f"{tag} get_user, {ACCOUNTS:,} accounts", many, "lookups/s", "1k accounts", few),
        Figure(f"{tag} bulk insert, {inserted:,} accounts", inserted / seconds, "rows/s"),
    ]


# -- logins over TCP ---------------------------------------------------------------------


def _logins(config: LoginConfig, store: Store) -> tuple[float, float]:
    """(password logins/s, renewals/s) through a server and client on one uvloop loop."""
    store.add_user("alice", _HASH, NOW)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        server = LoginServer(config, store, server_keys(config.state_dir))
        (address,) = runner.run(server.start())
        who = Credentials("alice", "bench-1", DeviceKeys.generate())
        key = server.keys.noise.dh_public

        async def once(password: str | None) -> None:
            session = await login(address, key, who, password=password)
            session.close()

        try:
            runner.run(once(PASSWORD))  # enrol the device
            passwords = rate(lambda: runner.run(once(PASSWORD)), ARGON2_SECONDS, batch=1)
            renewals = rate(lambda: runner.run(once(None)), SECONDS, batch=10)
        finally:
            runner.run(server.stop(grace=1.0))
    return passwords, renewals


def _bare_handshake() -> Callable[[], None]:
    """The handshake a login rides on, both cores in memory: the client pins the
    server's key, the server takes a device without a certificate."""
    server_key, device_key = DeviceKeys.generate(), DeviceKeys.generate()
    guard = ReplayGuard()

    def once() -> None:
        client = StreamSession(
            Identity(device_key, b""),
            TrustStore(),
            initiator=True,
            pinned_static=server_key.dh_public,
        )
        server = StreamSession(
            Identity(server_key, b""),
            TrustStore(),
            initiator=False,
            replay_guard=guard,
            require_certificate=False,
        )
        server.connection_made(CLIENT, 0.0)
        client.connection_made(SERVER, 0.0)
        while data := client.data_to_send():
            server.receive_data(data, 0.0)
            client.receive_data(server.data_to_send(), 0.0)
        assert client.next_event() is not None and server.next_event() is not None

    return once


# -- buddy sync ---------------------------------------------------------------------------


def _buddy_syncs(store: Store) -> tuple[float, float]:
    """(full syncs/s, delta syncs/s) of one user with BUDDIES accepted buddies."""
    owner = "owner"
    buddies = [f"buddy-{n:04d}" for n in range(BUDDIES)]
    store.add_user(owner, _HASH, NOW)
    for buddy in buddies:
        store.add_user(buddy, _HASH, NOW)
        store.buddy_op(owner, BuddyOp.ADD_REQUEST, buddy, "", NOW)
        store.buddy_op(buddy, BuddyOp.ACCEPT, owner, "", NOW)
    since, entries = store.buddies_since(owner, 0)
    assert len(entries) == BUDDIES
    full = rate(lambda: store.buddies_since(owner, 0), SECONDS, batch=10)
    for buddy in buddies[:CHANGES]:
        store.buddy_op(owner, BuddyOp.REMOVE, buddy, "", NOW)
    assert len(store.buddies_since(owner, since)[1]) == CHANGES
    delta = rate(lambda: store.buddies_since(owner, since), SECONDS)
    return full, delta


# -- account lookup ------------------------------------------------------------------------


def _lookups(store: Store, ids: list[str]) -> Callable[[], object]:
    order = list(ids)
    random.Random(1).shuffle(order)
    cycle = itertools.cycle(order)
    return lambda: store.get_user(next(cycle))


def _account_id(n: int) -> str:
    return f"user-{n:07d}"


def _sample(inserted: int) -> list[str]:
    """Random ids of the bulk-inserted accounts, spread over the whole table."""
    rng = random.Random(2)
    return [_account_id(rng.randrange(inserted)) for _ in range(LOOKUP_SAMPLE)]


def _top_up(db: Db, store: Store, present: int) -> tuple[int, float]:
    """Insert accounts until there are ACCOUNTS; return (rows inserted, seconds)."""
    ids = [_account_id(n) for n in range(ACCOUNTS - present)]
    start = time.perf_counter()
    db.insert(ids)
    seconds = time.perf_counter() - start
    assert store.get_user(ids[-1]) is not None
    return len(ids), seconds


def _sqlite_insert(path: Path, ids: list[str]) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO users (user_id, password_hash, enabled, created_at) VALUES (?, ?, 1, ?)",
            ((user_id, _HASH, NOW) for user_id in ids),
        )
        conn.execute("COMMIT")
        # Fold the log into the file, as SQLite's automatic checkpoints soon would.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _postgres_insert(url: str, ids: list[str]) -> None:
    copy_users = "COPY users (user_id, password_hash, enabled, created_at) FROM STDIN"
    # One transaction: the connection commits when its block ends.
    with psycopg.connect(url) as conn, conn.cursor() as cursor, cursor.copy(copy_users) as copy:
        for user_id in ids:
            copy.write_row((user_id, _HASH, True, NOW))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE users")

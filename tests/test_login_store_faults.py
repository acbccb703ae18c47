"""The login stores when the database fails: connections killed under PostgreSQL,
a full disk and a lock held too long under SQLite. Each fault is real: backends
are terminated by the server, the disk is a 1 MiB tmpfs filled to the last page.
The promise checked every time: the call succeeds, or raises StoreError having
written nothing."""

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from edge.login.errors import StoreError
from edge.login.postgres import PostgresStore
from edge.login.sqlite import SQLiteStore
from edge.login.store import Quota
from edge.wire.messages import BuddyOp, BuddyState
from tests.pg import Cluster

HASH = b"$argon2id$v=19$m=65536,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
PgConnection = psycopg.Connection[tuple[Any, ...]]


# -- PostgreSQL: connections terminated by the server


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> Iterator[str]:
    url = pg_cluster.create_database()
    yield url
    pg_cluster.drop_database(url)


@pytest.fixture
def requested(pg_url: str) -> Iterator[PostgresStore]:
    """A store where alice has asked bob to be her buddy (both lists at version 1)."""
    store = PostgresStore(pg_url)
    store.migrate()
    store.add_user("alice", HASH, 100)
    store.add_user("bob", HASH, 100)
    store.buddy_op("alice", BuddyOp.ADD_REQUEST, "bob", "", 10)
    yield store
    store.close()


Lists = list[tuple[int, list[tuple[str, BuddyState]]]]


def lists(store: PostgresStore) -> Lists:
    """Alice's and bob's lists as (version, [(buddy, state)])."""
    found: Lists = []
    for user_id in ("alice", "bob"):
        version, entries = store.buddies_since(user_id, 0)
        found.append((version, [(entry.buddy, entry.state) for entry in entries]))
    return found


BEFORE = [(1, [("bob", BuddyState.PENDING_OUT)]), (1, [("alice", BuddyState.PENDING_IN)])]
AFTER = [(2, [("bob", BuddyState.ACCEPTED)]), (2, [("alice", BuddyState.ACCEPTED)])]


def terminate_other_backends(conn: PgConnection) -> int:
    """Terminate every other connection to this database and wait until they are gone."""
    (count,) = conn.execute(
        "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone() or (0,)
    return int(count)


def backend_waiting_for_a_lock(monitor: PgConnection, not_this: int = 0) -> int:
    """The pid of a backend of this database blocked on a lock (polls the server)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> %s",
            (not_this,),
        ).fetchone()
        if row is not None:
            return int(row[0])
    raise AssertionError("no backend started waiting for the lock within 10 s")


@contextlib.contextmanager
def holding_alices_entry(pg_url: str) -> Iterator[PgConnection]:
    """Lock the row of alice's entry for bob until the block ends. Bob's ACCEPT writes
    his own entry first, then waits here: half-way through its transaction."""
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT 1 FROM buddies WHERE owner = 'alice' AND buddy = 'bob' FOR UPDATE")
        yield holder
        holder.rollback()


def accept_in_background(store: PostgresStore) -> Future[int]:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(store.buddy_op, "bob", BuddyOp.ACCEPT, "alice", "", 20)
    pool.shutdown(wait=False)
    return future


def test_connections_lost_between_calls_are_replaced(pg_url: str, requested: PostgresStore) -> None:
    with psycopg.connect(pg_url, autocommit=True) as admin:
        assert terminate_other_backends(admin) >= 1  # the store's idle connection
    assert requested.buddy_op("bob", BuddyOp.ACCEPT, "alice", "", 20) == 2
    assert lists(requested) == AFTER


def test_a_transaction_cut_half_way_is_run_again_whole(
    pg_url: str, requested: PostgresStore
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as monitor:
        with holding_alices_entry(pg_url):
            accepted = accept_in_background(requested)
            stuck = backend_waiting_for_a_lock(monitor)
            monitor.execute("SELECT pg_terminate_backend(%s, 5000)", (stuck,))
        assert accepted.result(timeout=10) == 2
    # Each version moved once: nothing of the first, cut attempt was kept.
    assert lists(requested) == AFTER


def test_a_transaction_cut_twice_raises_store_error_and_writes_nothing(
    pg_url: str, requested: PostgresStore
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as monitor, holding_alices_entry(pg_url):
        accepted = accept_in_background(requested)
        first = backend_waiting_for_a_lock(monitor)
        monitor.execute("SELECT pg_terminate_backend(%s, 5000)", (first,))
        second = backend_waiting_for_a_lock(monitor, not_this=first)
        monitor.execute("SELECT pg_terminate_backend(%s, 5000)", (second,))
        with pytest.raises(StoreError, match="test_"):
            accepted.result(timeout=10)
    assert lists(requested) == BEFORE


def test_an_unreachable_server_raises_store_error(tmp_path: Path) -> None:
    store = PostgresStore(f"postgresql:///edge?host={tmp_path}&user=edge", connect_timeout=2)
    try:
        with pytest.raises(StoreError, match="'edge'"):
            store.get_user("alice")
    finally:
        store.close()


# -- SQLite: a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root); skips when it cannot be mounted."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount_point)]
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # Lazy: detached now even if a failed test left the database open in it.
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system has no page left; return the file."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast


def test_a_full_disk_raises_store_error_and_keeps_earlier_data(small_disk: Path) -> None:
    path = small_disk / "login.db"
    store = SQLiteStore(path)
    store.migrate()
    store.add_user("alice", HASH, 100)
    store.mail_put("alice", "bob", b"m" * 16, 1, b"kept", 100, 1000, Quota())
    ballast = fill(small_disk)
    with pytest.raises(StoreError, match=f"{path}.*full"):
        store.mail_put("alice", "bob", b"n" * 16, 1, b"x" * 300_000, 100, 1000, Quota())
    store.close()

    reopened = SQLiteStore(path)  # the disk still full
    assert [user.user_id for user in reopened.list_users()] == ["alice"]
    assert [item.sealed for item in reopened.mail_fetch("alice", 100)] == [b"kept"]
    ballast.unlink()
    reopened.add_user("carol", HASH, 100)  # room again: writes work
    reopened.close()
    with contextlib.closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert check.execute("SELECT user_id FROM users ORDER BY 1").fetchall() == [
            ("alice",),
            ("carol",),
        ]


# -- SQLite: another writer holds the lock


def test_a_lock_held_beyond_the_busy_timeout_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "login.db"
    store = SQLiteStore(path, busy_timeout=0.1)
    store.migrate()
    store.add_user("alice", HASH, 100)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match=f"{path}.*locked.*0.1 s"):
            store.add_user("bob", HASH, 100)
        assert store.get_user("alice") is not None  # readers go on (WAL)
        other.execute("ROLLBACK")
    store.add_user("bob", HASH, 100)  # the failed call left nothing half-open
    assert store.get_user("bob") is not None
    store.close()


def test_a_file_that_is_not_a_database_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "login.db"
    path.write_bytes(b"this is not an SQLite database, just some text " * 100)
    with pytest.raises(StoreError, match=f"{path}.*not a database"):
        SQLiteStore(path)

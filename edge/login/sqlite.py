"""The login store in one SQLite file (standard library ``sqlite3``).

How it works: one connection serves every worker thread, opened with
``check_same_thread=False`` and used under a lock. SQLite lets one writer at a
time in any case, a login server on a board makes few queries, and one
connection is one thing to close; a reader in another process (a backup, an
admin tool) is not blocked, thanks to the WAL journal.

The connection runs in autocommit mode (``isolation_level=None``) so that this
module says BEGIN itself: ``BEGIN IMMEDIATE`` for writes, taking the write lock
before the first statement, so a transaction never fails half-way for want of
it; a deferred ``BEGIN`` for reads, which then see one snapshot. When another
connection holds the write lock, SQLite retries for ``busy_timeout`` seconds,
then the call fails with StoreError.

``synchronous=NORMAL`` in WAL mode may lose the last transactions at a power
cut, never the file's consistency. Foreign keys are switched on (they are off
by default, per connection).

A failure of the database (disk full, I/O error, locked for too long, not a
database) rolls the transaction back and becomes StoreError naming the file.
Other sqlite3 errors (a constraint broken, misuse of the API) are bugs here and
are not disguised.
"""

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

from edge.login.errors import StoreError, StoreUsageError
from edge.login.migrations import Dialect, Tx
from edge.login.sqlstore import SqlStore

T = TypeVar("T")

_FAILURES = (sqlite3.OperationalError, sqlite3.InternalError)
"""Errors of the database itself; a plain DatabaseError ("file is not a database")
is one too, but its subclasses IntegrityError and ProgrammingError are not."""


class SQLiteStore(SqlStore):
    """The :class:`~edge.login.store.Store` in the SQLite file ``path`` (created if
    missing; call :meth:`migrate` before use). ``busy_timeout``: seconds to wait for
    another connection's write lock before failing with StoreError."""

    def __init__(self, path: str | PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        try:
            self._conn: sqlite3.Connection | None = _connect(self.path, busy_timeout)
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _read(self, fn: Callable[[Tx], T]) -> T:
        return self._transaction("BEGIN", fn)

    def _write(self, fn: Callable[[Tx], T]) -> T:
        return self._transaction("BEGIN IMMEDIATE", fn)

    def _transaction(self, begin: str, fn: Callable[[Tx], T]) -> T:
        with self._lock:
            if self._conn is None:
                raise StoreUsageError(f"the store of {self.path} is closed")
            conn = self._conn
            try:
                conn.execute(begin)
                result = fn(_SQLiteTx(conn))
                conn.execute("COMMIT")
            except BaseException as exc:
                _rollback(conn)
                if _is_failure(exc):
                    raise self._failure(exc) from exc
                raise
            return result

    def _failure(self, exc: BaseException) -> StoreError:
        text = f"SQLite database {self.path}: {exc}"
        if "locked" in str(exc) or "busy" in str(exc):
            text += f" (another connection held it longer than {self.busy_timeout} s)"
        return StoreError(text)


class _SQLiteTx:
    """A :class:`~edge.login.migrations.Tx` on an open SQLite transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def dialect(self) -> Dialect:
        return Dialect.SQLITE

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def insert_id(self, sql: str, params: Sequence[object], column: str) -> int:
        # ``column`` is the rowid alias (INTEGER PRIMARY KEY) in every table we use.
        rowid = self._conn.execute(sql, params).lastrowid
        assert rowid is not None, "an INSERT always sets lastrowid"
        return rowid


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _rollback(conn: sqlite3.Connection) -> None:
    # After some failures (a full disk) SQLite has already rolled back by itself.
    if conn.in_transaction:
        # Should this fail too, the original error says more.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _is_failure(exc: BaseException) -> bool:
    return isinstance(exc, _FAILURES) or type(exc) is sqlite3.DatabaseError

"""The login store in PostgreSQL (psycopg 3 over the system's libpq), shared by
several login servers.

How it works: a small pool of connections, at most ``pool_size``; a worker
thread takes one for one transaction (``with conn.transaction()`` on an
autocommit connection: BEGIN ... COMMIT, or ROLLBACK when anything is raised)
and gives it back. Consistency between servers comes from the database, never
from this process: row locks in the operations (see ``sqlstore.py``) and an
advisory lock while migrating.

When a connection fails (the server restarted, an administrator terminated the
backend, a deadlock or a full disk), psycopg raises OperationalError and the
transaction was rolled back by the server. The store then throws that
connection away and runs the whole transaction once more on a new one; if that
fails too, the caller gets StoreError and nothing was written. The one case it
cannot settle is a connection lost during COMMIT: the server may or may not have
committed, so the store does not repeat it and says so in the StoreError.
"""

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from edge.login.errors import StoreError, StoreUsageError
from edge.login.migrations import Dialect, Tx
from edge.login.sqlstore import SqlStore

T = TypeVar("T")

Connection = psycopg.Connection[tuple[Any, ...]]

_ATTEMPTS = 2
"""The first try, and one more on a new connection."""


class PostgresStore(SqlStore):
    """The :class:`~edge.login.store.Store` in the PostgreSQL database named by
    ``conninfo`` (a ``postgresql://`` URI or ``key=value`` string, as libpq takes it;
    call :meth:`migrate` before use). ``pool_size``: connections kept open at most;
    ``connect_timeout``: seconds to wait for the server when connecting."""

    def __init__(self, conninfo: str, *, pool_size: int = 4, connect_timeout: int = 10) -> None:
        self._where = _describe(conninfo)
        self._pool = _Pool(
            lambda: psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout),
            pool_size,
        )

    def close(self) -> None:
        self._pool.close()

    def _read(self, fn: Callable[[Tx], T]) -> T:
        return self._run(fn)

    def _write(self, fn: Callable[[Tx], T]) -> T:
        return self._run(fn)

    def _run(self, fn: Callable[[Tx], T]) -> T:
        error: psycopg.Error | None = None
        for attempt in range(_ATTEMPTS):
            try:
                conn = self._pool.take(fresh=attempt > 0)
                return self._transaction(conn, fn)
            except psycopg.OperationalError as exc:
                error = exc
            except psycopg.InternalError as exc:
                # Corruption or a server bug: trying again will not help.
                raise StoreError(f"{self._where}: {exc}") from exc
        raise StoreError(f"{self._where}: {error} (tried twice)") from error

    def _transaction(self, conn: Connection, fn: Callable[[Tx], T]) -> T:
        committing = False
        try:
            with conn.transaction():
                result = fn(_PostgresTx(conn))
                committing = True
        except psycopg.OperationalError as exc:
            self._pool.discard(conn)
            if committing:
                raise StoreError(
                    f"{self._where}: the connection failed during COMMIT ({exc}); "
                    "the change may or may not have been stored"
                ) from exc
            raise
        except BaseException:
            self._pool.give(conn)
            raise
        self._pool.give(conn)
        return result


class _PostgresTx:
    """A :class:`~edge.login.migrations.Tx` on an open PostgreSQL transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def dialect(self) -> Dialect:
        return Dialect.POSTGRES

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        cursor = self._conn.execute(_placeholders(sql), params)
        return cursor.fetchall() if cursor.description is not None else []

    def run(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._conn.execute(_placeholders(sql), params).rowcount

    def insert_id(self, sql: str, params: Sequence[object], column: str) -> int:
        row = self._conn.execute(f"{_placeholders(sql)} RETURNING {column}", params).fetchone()
        assert row is not None, "INSERT ... RETURNING gives one row"
        return int(row[0])


class _Pool:
    """At most ``size`` connections; idle ones wait in a stack for the next caller
    (the most recently used first: the one most likely still alive)."""

    def __init__(self, connect: Callable[[], Connection], size: int) -> None:
        self._connect = connect
        self._size = size
        self._idle: list[Connection] = []
        self._opened = 0
        self._closed = False
        self._changed = threading.Condition()

    def take(self, *, fresh: bool = False) -> Connection:
        """An idle connection, or a new one (always new with ``fresh``)."""
        with self._changed:
            while True:
                if self._closed:
                    raise StoreUsageError("the PostgreSQL store is closed")
                if self._idle and not fresh:
                    return self._idle.pop()
                if self._opened < self._size:
                    self._opened += 1
                    break
                if self._idle:
                    self._idle.pop(0).close()  # make room for the new one
                    self._opened -= 1
                    continue
                self._changed.wait()
        try:
            return self._connect()
        except BaseException:
            self._forget()
            raise

    def give(self, conn: Connection) -> None:
        """Return ``conn`` after a transaction ended (closed if broken)."""
        if conn.broken or conn.closed or self._closed:
            self.discard(conn)
            return
        with self._changed:
            self._idle.append(conn)
            self._changed.notify()

    def discard(self, conn: Connection) -> None:
        conn.close()
        self._forget()

    def close(self) -> None:
        """Close the idle connections now, the busy ones when they come back."""
        with self._changed:
            self._closed = True
            for conn in self._idle:
                conn.close()
            self._opened -= len(self._idle)
            self._idle.clear()
            self._changed.notify_all()

    def _forget(self) -> None:
        with self._changed:
            self._opened -= 1
            self._changed.notify()


def _placeholders(sql: str) -> str:
    # The portable statements use "?"; psycopg wants "%s". None has a literal "?" or "%".
    return sql.replace("?", "%s")


def _describe(conninfo: str) -> str:
    """Database and host for messages; never the password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        # Not chained: the parser's message may quote the password.
        raise StoreUsageError("malformed PostgreSQL connection string") from None
    host = params.get("host") or "the default socket"
    return f"PostgreSQL database {params.get('dbname', '(default)')!r} on {host}"

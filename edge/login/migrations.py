"""The login database's schema, as numbered migrations for SQLite and PostgreSQL.

How it works: :data:`MIGRATIONS` is an ordered list; each :class:`Migration` has a
version, a description and a function that gives its statements for one
:class:`Dialect`. The statements are written once as templates whose column types
are placeholders (``{key}``, ``{blob}`` ...) filled from :data:`TYPES`, so the two
dialects differ in exactly one visible table. A ``schema_version`` table records
which versions a database has.

:func:`migrate` applies every missing version in order, each in its own
transaction. Two servers may start at once against one database: on PostgreSQL
each transaction first takes a transaction-scoped advisory lock, on SQLite the
store opens write transactions with ``BEGIN IMMEDIATE``; either way the second
server waits, then finds the version recorded and skips it. Running it again is a
no-op, so servers call it at every start.

A new schema change is a new entry at the end of the list; entries already
released are never edited.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any, Protocol, TypeVar

from edge.login.errors import StoreUsageError

T = TypeVar("T")


class Dialect(Enum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"


class Tx(Protocol):
    """One open transaction of a store; SQL uses ``?`` placeholders in both dialects."""

    @property
    def dialect(self) -> Dialect: ...

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; return the rows it produced."""
        ...

    def run(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; return how many rows it changed."""
        ...

    def insert_id(self, sql: str, params: Sequence[object], column: str) -> int:
        """Run one INSERT; return ``column`` (an identity) of the row it made."""
        ...


class Writer(Protocol):
    """Runs ``fn`` inside one write transaction of a store; returns its result."""

    def __call__(self, fn: Callable[[Tx], T]) -> T: ...


TYPES: dict[Dialect, dict[str, str]] = {
    Dialect.SQLITE: {
        # Keys compare as bytes in SQLite (BINARY collation): code-point order.
        "key": "TEXT",
        "text": "TEXT",
        "blob": "BLOB",
        "bool": "INTEGER",
        "int": "INTEGER",
        "small": "INTEGER",
        # AUTOINCREMENT: ids of deleted items are never handed out again.
        "identity": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "timestamp": "TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP",
    },
    Dialect.POSTGRES: {
        # "C": byte order, the same as SQLite's, whatever the database's locale.
        "key": 'text COLLATE "C"',
        "text": "text",
        "blob": "bytea",
        "bool": "boolean",
        "int": "bigint",
        "small": "smallint",
        "identity": "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "timestamp": "timestamptz NOT NULL DEFAULT now()",
    },
}

LOCK_KEY = 0x6564_6765_6C6F_6731
"""PostgreSQL advisory lock number taken while migrating ("edgelog1")."""

_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version {int} PRIMARY KEY,
    description {text} NOT NULL,
    applied_at {timestamp}
)"""


def _initial(dialect: Dialect) -> list[str]:
    """Version 1: every table of the first release."""
    return [
        """CREATE TABLE users (
            user_id {key} PRIMARY KEY,
            password_hash {blob} NOT NULL,
            enabled {bool} NOT NULL,
            created_at {int} NOT NULL
        )""",
        """CREATE TABLE devices (
            user_id {key} NOT NULL REFERENCES users (user_id),
            device_id {key} NOT NULL,
            sign_key {blob} NOT NULL,
            dh_key {blob} NOT NULL,
            enrolled_at {int} NOT NULL,
            last_login_at {int} NOT NULL,
            revoked {bool} NOT NULL,
            PRIMARY KEY (user_id, device_id)
        )""",
        # Serials are unsigned 64-bit on the wire; stored as signed (two's complement).
        """CREATE TABLE certificates (
            serial {int} PRIMARY KEY,
            user_id {key} NOT NULL,
            device_id {key} NOT NULL,
            not_after {int} NOT NULL,
            issued_at {int} NOT NULL,
            revoked_at {int},
            FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id)
        )""",
        "CREATE INDEX certificates_device ON certificates (user_id, device_id)",
        """CREATE INDEX certificates_revoked ON certificates (not_after)
            WHERE revoked_at IS NOT NULL""",
        """CREATE TABLE revocation_version (
            only_row {small} PRIMARY KEY CHECK (only_row = 1),
            version {int} NOT NULL
        )""",
        "INSERT INTO revocation_version (only_row, version) VALUES (1, 0)",
        """CREATE TABLE buddy_versions (
            user_id {key} PRIMARY KEY REFERENCES users (user_id),
            version {int} NOT NULL
        )""",
        """CREATE TABLE buddies (
            owner {key} NOT NULL REFERENCES users (user_id),
            buddy {key} NOT NULL REFERENCES users (user_id),
            state {small} NOT NULL,
            note {text} NOT NULL,
            version {int} NOT NULL,
            PRIMARY KEY (owner, buddy)
        )""",
        "CREATE INDEX buddies_delta ON buddies (owner, version)",
        """CREATE TABLE mailbox (
            item_id {identity},
            recipient {key} NOT NULL REFERENCES users (user_id),
            sender {key} NOT NULL,
            message_id {blob} NOT NULL,
            kind {int} NOT NULL,
            sealed {blob} NOT NULL,
            stored_at {int} NOT NULL,
            expires_at {int} NOT NULL
        )""",
        "CREATE INDEX mailbox_recipient ON mailbox (recipient, item_id)",
        "CREATE INDEX mailbox_expiry ON mailbox (expires_at)",
        """CREATE TABLE throttle (
            key {key} PRIMARY KEY,
            failures {int} NOT NULL,
            blocked_until {int} NOT NULL
        )""",
    ]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: Callable[[Dialect], list[str]]
    """Statement templates; :func:`sql` fills in the dialect's types."""


def _mailbox_per_device(dialect: Dialect) -> list[str]:
    # Items are sealed to one device's key, so each is addressed to one device.
    return [
        "ALTER TABLE mailbox ADD COLUMN recipient_device {key} NOT NULL DEFAULT ''",
        "ALTER TABLE mailbox ADD COLUMN sender_device {key} NOT NULL DEFAULT ''",
        "CREATE INDEX mailbox_device ON mailbox (recipient, recipient_device, item_id)",
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _initial),
    Migration(2, "mailbox items addressed to one device", _mailbox_per_device),
)

LATEST = MIGRATIONS[-1].version


def sql(template: str, dialect: Dialect) -> str:
    """A statement template with the dialect's column types filled in."""
    return template.format_map(TYPES[dialect])


def migrate(write: Writer, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the missing ``migrations`` through ``write``, one transaction each;
    return the newest version. Raises StoreUsageError when the database is newer
    than this code (an older server started against it)."""
    newest = migrations[-1].version
    current = write(_current)
    if current > newest:
        raise StoreUsageError(
            f"the database's schema is version {current}, newer than this server's "
            f"{newest}: run a newer server"
        )
    for migration in migrations:
        if migration.version > current:
            write(partial(_apply, migration=migration))
    return newest


def _apply(tx: Tx, migration: Migration) -> None:
    # Another server may have applied it since we looked: look again, under the lock.
    if _current(tx) >= migration.version:
        return
    for template in migration.statements(tx.dialect):
        tx.run(sql(template, tx.dialect))
    tx.run(
        "INSERT INTO schema_version (version, description) VALUES (?, ?)",
        (migration.version, migration.description),
    )


def _current(tx: Tx) -> int:
    """The database's version, read under the migration lock (0: empty database)."""
    if tx.dialect is Dialect.POSTGRES:
        # Transaction-scoped: released at commit or rollback, even by a crashed server.
        tx.rows("SELECT pg_advisory_xact_lock(?)", (LOCK_KEY,))
    tx.run(sql(_SCHEMA_VERSION, tx.dialect))
    (version,) = tx.rows("SELECT coalesce(max(version), 0) FROM schema_version")[0]
    return int(version)

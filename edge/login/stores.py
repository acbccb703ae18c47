"""Open the login store a URL names, as pyserial opens a port from its URL.

``sqlite:///var/lib/edge/login.db``: an SQLite file; the URL's path is the file's
path (``sqlite:relative/login.db`` for a relative one).
``postgresql://user@host/dbname`` or ``postgres://...``: a PostgreSQL database;
the URL goes to libpq as it is, so every libpq parameter works
(``postgresql:///edge?host=/run/postgresql``).

The PostgreSQL module is imported only when a URL asks for it, so a board that
keeps its accounts in SQLite needs no libpq.
"""

from urllib.parse import unquote, urlsplit

from edge.errors import LocalError
from edge.login.sqlite import SQLiteStore
from edge.login.store import Store


class StoreUrlError(LocalError):
    """The store URL names no store this server knows, or is malformed."""


def open_store(url: str) -> Store:
    """The store ``url`` names, not yet migrated: call ``migrate()`` next."""
    scheme, colon, _ = url.partition(":")
    scheme = scheme.lower()
    if not colon:
        raise StoreUrlError(
            "the store URL has no scheme: expected sqlite:, postgresql: or postgres:"
        )
    if scheme == "sqlite":
        return SQLiteStore(_sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from edge.login.postgres import PostgresStore

        return PostgresStore(url)
    # Only the scheme: the rest may hold a password.
    raise StoreUrlError(
        f"unknown store URL scheme {scheme!r}: expected sqlite, postgresql or postgres"
    )


def _sqlite_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise StoreUrlError(
            f"an SQLite URL names a local file, like sqlite:///var/db.sqlite: {url!r}"
        )
    path = unquote(parts.path)
    if not path:
        raise StoreUrlError(f"the SQLite URL names no file: {url!r}")
    # sqlite:////abs/path (the SQLAlchemy spelling) means /abs/path too.
    return "/" + path.lstrip("/") if path.startswith("//") else path

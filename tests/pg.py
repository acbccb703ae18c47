"""A throw-away PostgreSQL cluster for the tests: the real server, started for real.

How it works: :func:`running_cluster` finds the server binaries (Debian keeps
them in ``/usr/lib/postgresql/<major>/bin``, outside PATH, and ``pg_config
--bindir`` may name the client's directory instead), runs ``initdb`` into a
temporary directory and starts the server with ``pg_ctl -w``, which returns once
the server accepts connections. The server listens on a Unix socket in that
same directory and on no TCP port, so it cannot clash with another server or
be reached from outside. PostgreSQL refuses to run as root: when the tests run
as root, initdb and pg_ctl run as the ``postgres`` system user (``runuser``),
which then owns the directory. Durability is switched off (``fsync=off``): the
cluster lives for one test session and is deleted at its end, and it lives in
RAM when ``/dev/shm`` has room.

:meth:`Cluster.create_database` gives each test a database of its own.
"""

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

SUPERUSER = "postgres"

_SETTINGS = """
listen_addresses = ''
unix_socket_directories = '{socket_dir}'
fsync = off
synchronous_commit = off
full_page_writes = off
"""


class Cluster:
    """A running cluster: its socket directory and a database factory."""

    def __init__(self, base: Path) -> None:
        self.socket_dir = base
        self._names = itertools.count(1)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql:///{dbname}?host={self.socket_dir}&user={SUPERUSER}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        """A connection of the test's own (autocommit), outside any store."""
        return psycopg.connect(self.url(dbname), autocommit=True)

    def create_database(self) -> str:
        """A new, empty database; return its URL."""
        name = f"test_{next(self._names)}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`, closing what is still
        connected to it."""
        name = conninfo_to_dict(url)["dbname"]
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, newest major version first."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path))
    return candidates[0].parent if candidates else None


@contextmanager
def running_cluster() -> Iterator[Cluster]:
    """Start a cluster for the ``with`` block; stop it and delete it afterwards.
    Skips the calling tests when no PostgreSQL server is installed."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) installed: apt-get install postgresql")
    base = Path(tempfile.mkdtemp(prefix="edge-pg-", dir=_scratch_dir()))
    data = base / "data"
    try:
        _give_to_server_user(base)
        initdb = [bindir / "initdb", "-D", data, "-U", SUPERUSER, "--auth=trust"]
        _as_server_user(base, *initdb, "--encoding=UTF8", "--locale=C", "--no-sync")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(_SETTINGS.format(socket_dir=base))
        pg_ctl = [bindir / "pg_ctl", "-D", data, "-w"]
        _as_server_user(base, *pg_ctl, "-l", base / "server.log", "start")
        try:
            yield Cluster(base)
        finally:
            _as_server_user(base, *pg_ctl, "-m", "immediate", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _scratch_dir() -> str | None:
    """RAM (``/dev/shm``) when it has room, else the usual temporary directory:
    CREATE DATABASE copies a template of ~8 MB, many times faster in RAM."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 1 << 30:
        return str(shm)
    return None


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        server = pwd.getpwnam(SUPERUSER)
        os.chown(path, server.pw_uid, server.pw_gid)


def _as_server_user(base: Path, *command: object) -> None:
    argv = [str(part) for part in command]
    if os.geteuid() == 0:
        # The server refuses to run as root; the postgres user comes with the package.
        argv = ["runuser", "-u", SUPERUSER, "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log = base / "server.log"
        server_log = log.read_text() if log.exists() else "(none)"
        raise RuntimeError(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
            f"server log:\n{server_log}"
        )

"""Fixtures for tests that need a real database: one PostgreSQL cluster per session,
and a fresh store URL per test for each kind of store."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.pg import Cluster, running_cluster

# Property tests check behaviour, not speed: a busy CI machine must not turn
# a slow example into a failure (speed lives in bench/).
settings.register_profile("edge", deadline=None)
settings.load_profile("edge")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """The session's PostgreSQL cluster (skips its tests when none is installed)."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of each kind: a new SQLite file, a new
    PostgreSQL database (the cluster starts only when a test asks for one)."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'login.db'}"
        return
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    url = cluster.create_database()
    yield url
    cluster.drop_database(url)

"""``edge login-server`` administration, run as an administrator runs it: a real
process, against each kind of store, with the store checked afterwards.

The configuration file lowers argon2id to its minimum cost, which also shows
that the commands read ``--config``: every hash they make carries that cost.
"""

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.crypto.keys import DeviceKeys
from edge.login.cli import server_keys
from edge.login.passwords import PasswordCost, Passwords
from edge.login.store import IssuedCertificate, Store
from edge.login.stores import open_store

CHEAP = PasswordCost(ops=1, memory=8 * 1024)
CHEAP_CONFIG = "[passwords]\nops = 1\nmemory_kib = 8\n"
CHEAP_PARAMETERS = b"$m=8,t=1,"
"""How argon2id strings made at CHEAP spell their cost."""


@dataclass
class Admin:
    """Runs ``edge login-server`` on one state directory, database and configuration."""

    state_dir: Path
    config: Path
    store_url: str = ""

    def __call__(self, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        options = ["--config", str(self.config), "--state-dir", str(self.state_dir)]
        if self.store_url:
            options += ["--database", self.store_url]
        return subprocess.run(
            [sys.executable, "-m", "edge", "login-server", *options, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def ok(self, *argv: str, stdin: str = "") -> str:
        """Run a command that must succeed; return its standard output."""
        done = self(*argv, stdin=stdin)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def add(self, user_id: str, password: str) -> str:
        return self.ok("user", "add", user_id, "--password-stdin", stdin=f"{password}\n")


def admin_in(tmp_path: Path, store_url: str = "") -> Admin:
    config = tmp_path / "login.toml"
    config.write_text(CHEAP_CONFIG)
    return Admin(tmp_path / "state", config, store_url)


@pytest.fixture
def admin(tmp_path: Path, store_url: str) -> Admin:
    return admin_in(tmp_path, store_url)


@pytest.fixture
def store(admin: Admin) -> Iterator[Store]:
    """The test's own view of the database the commands work on."""
    opened = open_store(admin.store_url)
    opened.migrate()
    yield opened
    opened.close()


def matches(store: Store, user_id: str, password: str) -> bool:
    user = store.get_user(user_id)
    assert user is not None
    return Passwords(CHEAP).verify(user.password_hash, password)


# -- accounts --------------------------------------------------------------------------


def test_user_add_reads_the_password_from_stdin(admin: Admin, store: Store) -> None:
    assert admin.add("alice", "correct horse") == "added user alice\n"
    user = store.get_user("alice")
    assert user is not None
    assert user.enabled
    assert CHEAP_PARAMETERS in user.password_hash
    assert matches(store, "alice", "correct horse")
    assert not matches(store, "alice", "correct horse\n")


def test_user_list_shows_each_account_and_its_state(admin: Admin) -> None:
    admin.add("bob", "pw-b")
    admin.add("alice", "pw-a")
    listing = admin.ok("user", "list").splitlines()
    assert [line.split("\t")[:2] for line in listing] == [
        ["alice", "enabled"],
        ["bob", "enabled"],
    ]


def test_user_passwd_replaces_the_password(admin: Admin, store: Store) -> None:
    admin.add("alice", "old password")
    out = admin.ok("user", "passwd", "alice", "--password-stdin", stdin="new password\n")
    assert out == "password of alice changed\n"
    assert matches(store, "alice", "new password")
    assert not matches(store, "alice", "old password")


def test_user_disable_and_enable(admin: Admin, store: Store) -> None:
    admin.add("alice", "pw")
    assert admin.ok("user", "disable", "alice") == "alice disabled\n"
    user = store.get_user("alice")
    assert user is not None and not user.enabled
    assert admin.ok("user", "list").startswith("alice\tdisabled\t")
    assert admin.ok("user", "enable", "alice") == "alice enabled\n"
    user = store.get_user("alice")
    assert user is not None and user.enabled


def test_adding_an_existing_user_fails_and_keeps_the_account(admin: Admin, store: Store) -> None:
    admin.add("alice", "first")
    again = admin("user", "add", "alice", "--password-stdin", stdin="second\n")
    assert again.returncode == 1
    assert again.stdout == ""
    assert again.stderr.startswith("edge login-server: ")
    assert "'alice' already exists" in again.stderr
    assert matches(store, "alice", "first")


# -- devices ---------------------------------------------------------------------------


def test_device_list_and_revoke(admin: Admin, store: Store) -> None:
    admin.add("alice", "pw")
    keys = DeviceKeys.generate()
    now = int(time.time())
    store.enrol_device("alice", "desk-1", keys.sign_public, keys.dh_public, now)
    store.record_certificate(IssuedCertificate(77, "alice", "desk-1", now + 3600, now))

    (line,) = admin.ok("device", "list").splitlines()
    assert line.split("\t")[:3] == ["alice", "desk-1", "active"]
    assert line.endswith(f"Ed25519 {keys.sign_public.hex()[:16]}")
    assert admin.ok("device", "list", "nobody") == ""

    out = admin.ok("device", "revoke", "alice", "desk-1")
    assert out == "revoked alice/desk-1: 1 unexpired certificate(s) on the revocation list\n"
    device = store.get_device("alice", "desk-1")
    assert device is not None and device.revoked
    assert store.revocations(now)[1] == [77]
    assert admin.ok("device", "list", "alice").split("\t")[2] == "revoked"


# -- keys and configuration ------------------------------------------------------------


def test_keys_prints_the_keys_of_the_state_dir(tmp_path: Path) -> None:
    admin = admin_in(tmp_path)
    lines = admin.ok("keys").splitlines()
    printed = [re.fullmatch(r".*: ([0-9a-f]{64})", line) for line in lines]
    assert all(printed) and len(printed) == 2
    keys = server_keys(admin.state_dir)  # made by the command, loaded here
    noise, issuer = (match.group(1) for match in printed if match)
    assert (noise, issuer) == (keys.noise.dh_public.hex(), keys.issuer.public.hex())


UNKNOWN_KEY = "[server]\nmax_connections = 10\n\n[passwords]\nopps = 1\n"
BAD_VALUE = "[passwords]\nops = 1\nmemory_kib = 4\n"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (UNKNOWN_KEY, 5, "unknown key 'passwords.opps'"),
        (BAD_VALUE, 3, "key 'passwords.memory_kib': expected"),
    ],
    ids=["unknown-key", "bad-value"],
)
def test_a_bad_configuration_stops_the_server_naming_file_key_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    # Port 0: should the file be accepted after all, the server must not take port 443.
    argv = ["login-server", "--config", str(config), "--listen", "127.0.0.1:0"]
    done = subprocess.run(
        [sys.executable, "-m", "edge", *argv, "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 1
    assert f"{config}:{line}: {message}" in done.stderr
    assert not (tmp_path / "state").exists()

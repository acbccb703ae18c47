"""The login store's contract, checked against both stores: every test that takes
``store`` or ``store_url`` runs once on a new SQLite file and once on a new
database of a real PostgreSQL server (see conftest.py)."""

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import pytest

from edge.crypto.cert import DEFAULT_SKEW
from edge.login.errors import MailboxFull, NoSuchUser, NotAllowed, StoreUsageError, UserExists
from edge.login.migrations import LATEST, MIGRATIONS
from edge.login.store import (
    BuddyEntry,
    Device,
    IssuedCertificate,
    MailItem,
    Quota,
    Store,
    User,
)
from edge.login.stores import StoreUrlError, open_store
from edge.wire.messages import (
    PRESENCE_LIFETIME_MAX,
    REVOCATION_RETENTION,
    BuddyOp,
    BuddyState,
)

T = TypeVar("T")

HASH = b"$argon2id$v=19$m=65536,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
SIGN, DH = b"S" * 32, b"D" * 32
NEW_SIGN, NEW_DH = b"s" * 32, b"d" * 32

P_OUT, P_IN, OK, BLOCKED, GONE = (
    BuddyState.PENDING_OUT,
    BuddyState.PENDING_IN,
    BuddyState.ACCEPTED,
    BuddyState.BLOCKED,
    BuddyState.REMOVED,
)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = open_store(store_url)
    store.migrate()
    yield store
    store.close()


def add_users(store: Store, *user_ids: str) -> None:
    for user_id in user_ids:
        store.add_user(user_id, HASH, 100)


def certificate(serial: int, device_id: str = "phone", not_after: int = 1000) -> IssuedCertificate:
    return IssuedCertificate(serial, "alice", device_id, not_after, issued_at=100)


def raw_rows(url: str, *statements: str) -> list[tuple[Any, ...]]:
    """Run statements on a connection of the test's own; the last one's rows."""
    if url.startswith("sqlite:"):
        with contextlib.closing(sqlite3.connect(urlsplit(url).path)) as lite:
            for statement in statements[:-1]:
                lite.execute(statement)
            rows = lite.execute(statements[-1]).fetchall()
            lite.commit()
            return rows
    with psycopg.connect(url, autocommit=True) as pg:
        for statement in statements[:-1]:
            pg.execute(statement)
        return pg.execute(statements[-1]).fetchall()


def in_parallel(fns: Sequence[Callable[[], T]]) -> list[T]:
    """Run the functions in threads released at the same moment; their results."""
    start = threading.Barrier(len(fns))

    def run(fn: Callable[[], T]) -> T:
        start.wait()
        return fn()

    with ThreadPoolExecutor(len(fns)) as pool:
        return list(pool.map(run, fns))


# -- store URLs


def test_an_unknown_scheme_is_named_and_the_rest_of_the_url_is_not() -> None:
    with pytest.raises(StoreUrlError, match="'mysql'") as caught:
        open_store("mysql://admin:secret@db.example/edge")
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("url", ["login.db", "sqlite://host/login.db", "sqlite://"])
def test_a_malformed_sqlite_url_is_refused(url: str) -> None:
    with pytest.raises(StoreUrlError):
        open_store(url)


def test_the_sqlalchemy_spelling_of_an_absolute_sqlite_path_works(tmp_path: Any) -> None:
    store = open_store(f"sqlite:///{tmp_path}/login.db")  # four slashes in all
    try:
        store.migrate()
    finally:
        store.close()
    assert (tmp_path / "login.db").exists()


# -- accounts


def test_a_user_added_is_found(store: Store) -> None:
    store.add_user("alice", HASH, 100)
    assert store.get_user("alice") == User("alice", HASH, True, 100)
    assert store.get_user("bob") is None


def test_adding_an_existing_user_raises_user_exists_and_changes_nothing(store: Store) -> None:
    store.add_user("alice", HASH, 100)
    with pytest.raises(UserExists, match="alice"):
        store.add_user("alice", b"another hash", 200)
    assert store.get_user("alice") == User("alice", HASH, True, 100)


def test_password_and_enabled_change(store: Store) -> None:
    add_users(store, "alice")
    store.set_password("alice", b"new hash")
    store.set_enabled("alice", False)
    assert store.get_user("alice") == User("alice", b"new hash", False, 100)
    store.set_enabled("alice", True)
    assert store.get_user("alice") == User("alice", b"new hash", True, 100)


def test_changing_an_unknown_user_raises_no_such_user(store: Store) -> None:
    with pytest.raises(NoSuchUser, match="bob"):
        store.set_password("bob", HASH)
    with pytest.raises(NoSuchUser, match="bob"):
        store.set_enabled("bob", False)


def test_users_are_listed_in_id_order_page_by_page(store: Store) -> None:
    ids = [f"user{n:02d}" for n in range(25)]
    add_users(store, *reversed(ids))
    pages = []
    after = ""
    for _ in range(4):  # three pages, then an empty one; a bug must not loop for ever
        page = [user.user_id for user in store.list_users(after, limit=10)]
        pages.append(page)
        after = page[-1] if page else after
    assert pages == [ids[:10], ids[10:20], ids[20:], []]


@pytest.mark.parametrize(
    "user_id",
    [
        "o'hara; DROP TABLE users;--",
        "zoë",
        "李小龍",
        "smile 🙂",
        'say "hi"',
        "back\\slash",
        "50%s?",
    ],
)
def test_awkward_ids_round_trip(store: Store, user_id: str) -> None:
    add_users(store, user_id, "plain")
    assert store.get_user(user_id) == User(user_id, HASH, True, 100)
    assert store.enrol_device(user_id, user_id, SIGN, DH, 100).device_id == user_id
    store.buddy_op(user_id, BuddyOp.ADD_REQUEST, "plain", user_id, 100)
    assert store.buddies_since("plain", 0) == (1, [BuddyEntry(user_id, P_IN, user_id, 1)])
    assert sorted(user.user_id for user in store.list_users()) == sorted([user_id, "plain"])


# -- devices and certificates


def test_enrolled_devices_are_found_and_listed(store: Store) -> None:
    add_users(store, "alice", "bob")
    phone = store.enrol_device("alice", "phone", SIGN, DH, 100)
    assert phone == Device("alice", "phone", SIGN, DH, 100, 100, False)
    store.enrol_device("bob", "desk", SIGN, DH, 110)
    store.enrol_device("alice", "door", NEW_SIGN, NEW_DH, 120)
    assert store.get_device("alice", "phone") == phone
    assert store.get_device("alice", "desk") is None
    assert [d.device_id for d in store.list_devices("alice")] == ["door", "phone"]
    assert [(d.user_id, d.device_id) for d in store.list_devices()] == [
        ("alice", "door"),
        ("alice", "phone"),
        ("bob", "desk"),
    ]
    assert store.list_devices("carol") == []


def test_enrolling_for_an_unknown_user_raises_no_such_user(store: Store) -> None:
    with pytest.raises(NoSuchUser, match="alice"):
        store.enrol_device("alice", "phone", SIGN, DH, 100)
    assert store.list_devices() == []


def test_enrolling_again_with_new_keys_replaces_them_and_revokes_old_certificates(
    store: Store,
) -> None:
    add_users(store, "alice")
    store.enrol_device("alice", "phone", SIGN, DH, 100)
    store.enrol_device("alice", "door", SIGN, DH, 100)
    store.record_certificate(certificate(1))
    store.record_certificate(certificate(2, not_after=150))  # expired, records may live on
    store.record_certificate(certificate(3, device_id="door"))
    again = store.enrol_device("alice", "phone", NEW_SIGN, NEW_DH, 200)
    assert again == Device("alice", "phone", NEW_SIGN, NEW_DH, 200, 200, False)
    assert store.get_device("alice", "phone") == again
    assert store.revocations(200) == (1, [1, 2])


def test_enrolling_again_with_the_same_keys_changes_nothing(store: Store) -> None:
    add_users(store, "alice")
    store.enrol_device("alice", "phone", SIGN, DH, 100)
    store.record_certificate(certificate(1))
    store.revoke_device("alice", "phone", 150)
    again = store.enrol_device("alice", "phone", SIGN, DH, 200)
    assert again == Device("alice", "phone", SIGN, DH, 100, 100, revoked=True)
    assert store.revocations(200) == (1, [1])


def test_a_recorded_certificate_is_the_devices_last_login(store: Store) -> None:
    add_users(store, "alice")
    store.enrol_device("alice", "phone", SIGN, DH, 50)
    store.record_certificate(IssuedCertificate(7, "alice", "phone", 1000, issued_at=300))
    device = store.get_device("alice", "phone")
    assert device is not None and device.last_login_at == 300


def test_recording_a_certificate_needs_a_device_and_a_new_serial(store: Store) -> None:
    add_users(store, "alice")
    with pytest.raises(NoSuchUser, match="phone"):
        store.record_certificate(certificate(1))
    store.enrol_device("alice", "phone", SIGN, DH, 50)
    store.record_certificate(certificate(1))
    with pytest.raises(StoreUsageError, match="serial 1 "):
        store.record_certificate(certificate(1, not_after=5000))


def test_revoking_a_device_revokes_its_certificates_within_the_retention(store: Store) -> None:
    add_users(store, "alice")
    store.enrol_device("alice", "phone", SIGN, DH, 100)
    store.enrol_device("alice", "door", SIGN, DH, 100)
    store.record_certificate(certificate(10))
    store.record_certificate(certificate(11, not_after=150))  # expired, but its records live
    store.record_certificate(certificate(12))
    store.record_certificate(certificate(13, device_id="door"))
    store.record_certificate(certificate(14, not_after=200 - REVOCATION_RETENTION))  # long gone
    assert store.revoke_device("alice", "phone", 200) == [10, 11, 12]
    device = store.get_device("alice", "phone")
    assert device is not None and device.revoked
    assert store.revocations(200) == (1, [10, 11, 12])
    assert store.revoke_device("alice", "phone", 210) == []  # nothing left to revoke


def test_revoking_an_unknown_device_raises_no_such_user(store: Store) -> None:
    add_users(store, "alice")
    with pytest.raises(NoSuchUser, match="phone"):
        store.revoke_device("alice", "phone", 100)
    with pytest.raises(NoSuchUser, match="bob"):
        store.revoke_device("bob", "phone", 100)


def test_revocations_leave_out_certificates_expired_beyond_the_retention(store: Store) -> None:
    add_users(store, "alice")
    store.enrol_device("alice", "phone", SIGN, DH, 100)
    store.record_certificate(certificate(1, not_after=500))
    store.record_certificate(certificate(2, not_after=1000))
    store.revoke_device("alice", "phone", 200)
    assert store.revocations(200) == (1, [1, 2])
    assert store.revocations(1000) == (1, [1, 2])
    assert store.revocations(500 + REVOCATION_RETENTION) == (1, [2])
    assert store.revocations(1000 + REVOCATION_RETENTION) == (1, [])


def test_a_revoked_serial_is_listed_while_a_presence_record_under_it_can_be_found(
    store: Store,
) -> None:
    """A 24-hour certificate signs a record just before it expires; the device is revoked
    after the certificate has expired: the serial is listed for as long as any holder
    (its clock up to DEFAULT_SKEW behind, the window checked with that skew) finds the record."""
    issued, not_after = 10_000, 10_000 + 24 * 3600
    add_users(store, "alice")
    store.enrol_device("alice", "phone", SIGN, DH, issued)
    store.record_certificate(IssuedCertificate(5, "alice", "phone", not_after, issued_at=issued))
    revoked_at = not_after + 3600
    assert store.revoke_device("alice", "phone", revoked_at) == [5]
    record_issued_at = not_after + int(DEFAULT_SKEW)  # the latest the window check accepts
    found_until = record_issued_at + PRESENCE_LIFETIME_MAX + int(DEFAULT_SKEW)
    for now in (revoked_at, not_after + PRESENCE_LIFETIME_MAX, found_until):
        assert store.revocations(now) == (1, [5]), now
    assert store.revocations(not_after + REVOCATION_RETENTION) == (1, [])


def test_the_revocation_version_grows_with_every_revocation(store: Store) -> None:
    add_users(store, "alice")
    assert store.revocations(100) == (0, [])
    for n, device_id in enumerate(["phone", "door", "desk"], start=1):
        store.enrol_device("alice", device_id, SIGN, DH, 100)
        store.record_certificate(certificate(n, device_id=device_id))
    store.revoke_device("alice", "phone", 200)
    assert store.revocations(200)[0] == 1
    store.enrol_device("alice", "door", NEW_SIGN, NEW_DH, 200)
    assert store.revocations(200)[0] == 2
    store.revoke_device("alice", "desk", 200)
    assert store.revocations(200) == (3, [1, 2, 3])


def test_serials_use_the_whole_unsigned_64_bit_range(store: Store) -> None:
    add_users(store, "alice")
    store.enrol_device("alice", "phone", SIGN, DH, 100)
    serials = [0, 1, 2**63 - 1, 2**63, 2**64 - 1]
    for serial in serials:
        store.record_certificate(certificate(serial))
    assert store.revoke_device("alice", "phone", 200) == serials
    assert store.revocations(200) == (1, serials)
    with pytest.raises(StoreUsageError, match="64-bit"):
        store.record_certificate(certificate(2**64))


# -- buddies


def buddies(store: Store, user_id: str, since: int = 0) -> tuple[int, list[tuple[str, Any]]]:
    """(version, [(buddy, state)]) of ``user_id``'s list."""
    version, entries = store.buddies_since(user_id, since)
    return version, [(entry.buddy, entry.state) for entry in entries]


def test_a_request_accepted_makes_both_buddies(store: Store) -> None:
    add_users(store, "alice", "bob")
    assert store.buddy_op("alice", BuddyOp.ADD_REQUEST, "bob", "it's Alice", 10) == 1
    assert store.buddies_since("alice", 0) == (1, [BuddyEntry("bob", P_OUT, "it's Alice", 1)])
    assert store.buddies_since("bob", 0) == (1, [BuddyEntry("alice", P_IN, "it's Alice", 1)])
    assert store.buddy_op("bob", BuddyOp.ACCEPT, "alice", "", 20) == 2
    assert store.buddies_since("alice", 0) == (2, [BuddyEntry("bob", OK, "", 2)])
    assert store.buddies_since("bob", 0) == (2, [BuddyEntry("alice", OK, "", 2)])


def test_a_request_denied_leaves_tombstones_on_both_sides(store: Store) -> None:
    add_users(store, "alice", "bob")
    store.buddy_op("alice", BuddyOp.ADD_REQUEST, "bob", "", 10)
    store.buddy_op("bob", BuddyOp.DENY, "alice", "", 20)
    assert buddies(store, "alice") == (2, [])
    assert buddies(store, "bob") == (2, [])
    assert buddies(store, "alice", since=1) == (2, [("bob", GONE)])
    assert buddies(store, "bob", since=1) == (2, [("alice", GONE)])


def test_two_requests_crossing_make_buddies(store: Store) -> None:
    add_users(store, "alice", "bob")
    store.buddy_op("alice", BuddyOp.ADD_REQUEST, "bob", "", 10)
    store.buddy_op("bob", BuddyOp.ADD_REQUEST, "alice", "", 20)
    assert buddies(store, "alice") == (2, [("bob", OK)])
    assert buddies(store, "bob") == (2, [("alice", OK)])


def test_a_buddy_removed_is_gone_on_both_sides_and_may_be_asked_again(store: Store) -> None:
    add_users(store, "alice", "bob")
    store.buddy_op("alice", BuddyOp.ADD_REQUEST, "bob", "", 10)
    store.buddy_op("bob", BuddyOp.ACCEPT, "alice", "", 20)
    store.buddy_op("alice", BuddyOp.REMOVE, "bob", "", 30)
    assert buddies(store, "alice") == (3, [])
    assert buddies(store, "bob", since=2) == (3, [("alice", GONE)])
    store.buddy_op("bob", BuddyOp.ADD_REQUEST, "alice", "again?", 40)
    assert buddies(store, "alice") == (4, [("bob", P_IN)])


def test_a_block_silently_swallows_later_requests(store: Store) -> None:
    add_users(store, "alice", "bob")
    store.buddy_op("alice", BuddyOp.ADD_REQUEST, "bob", "", 10)
    store.buddy_op("bob", BuddyOp.BLOCK, "alice", "", 20)
    assert buddies(store, "bob") == (2, [("alice", BLOCKED)])
    assert buddies(store, "alice") == (2, [])  # her request went away
    store.buddy_op("alice", BuddyOp.ADD_REQUEST, "bob", "please", 30)
    assert buddies(store, "alice") == (3, [("bob", P_OUT)])  # pending, as she sees it
    assert buddies(store, "bob") == (2, [("alice", BLOCKED)])  # not even a new version


def test_a_block_of_a_stranger_writes_only_the_blockers_list(store: Store) -> None:
    add_users(store, "alice", "bob")
    assert store.buddy_op("bob", BuddyOp.BLOCK, "alice", "", 10) == 1
    assert buddies(store, "bob") == (1, [("alice", BLOCKED)])
    assert buddies(store, "alice", since=0) == (0, [])


def test_unblocking_lets_requests_through_again(store: Store) -> None:
    add_users(store, "alice", "bob")
    store.buddy_op("bob", BuddyOp.BLOCK, "alice", "", 10)
    store.buddy_op("bob", BuddyOp.UNBLOCK, "alice", "", 20)
    assert buddies(store, "bob", since=1) == (2, [("alice", GONE)])
    store.buddy_op("alice", BuddyOp.ADD_REQUEST, "bob", "", 30)
    assert buddies(store, "bob") == (3, [("alice", P_IN)])


@pytest.mark.parametrize(
    ("actor", "op", "match"),
    [
        ("bob", BuddyOp.ACCEPT, "no request"),
        ("bob", BuddyOp.DENY, "no request"),
        ("carol", BuddyOp.REMOVE, "not in the buddy list"),
        ("alice", BuddyOp.ADD_REQUEST, "unblock"),
        ("carol", BuddyOp.UNBLOCK, "not blocked"),
    ],
)
def test_refused_operations_raise_not_allowed_and_write_nothing(
    store: Store, actor: str, op: BuddyOp, match: str
) -> None:
    add_users(store, "alice", "bob", "carol")
    store.buddy_op("alice", BuddyOp.BLOCK, "bob", "", 10)
    before = {user: store.buddies_since(user, 0) for user in ("alice", "bob", "carol")}
    other = "alice" if actor != "alice" else "bob"
    with pytest.raises(NotAllowed, match=match):
        store.buddy_op(actor, op, other, "", 20)
    assert {user: store.buddies_since(user, 0) for user in before} == before


def test_nobody_is_their_own_buddy(store: Store) -> None:
    add_users(store, "alice")
    with pytest.raises(NotAllowed, match="own buddy"):
        store.buddy_op("alice", BuddyOp.ADD_REQUEST, "alice", "", 10)
    assert buddies(store, "alice") == (0, [])


def test_a_buddy_op_with_an_unknown_user_raises_no_such_user(store: Store) -> None:
    add_users(store, "alice")
    with pytest.raises(NoSuchUser, match="mallory"):
        store.buddy_op("alice", BuddyOp.ADD_REQUEST, "mallory", "", 10)
    with pytest.raises(NoSuchUser, match="mallory"):
        store.buddy_op("mallory", BuddyOp.ADD_REQUEST, "alice", "", 10)
    assert buddies(store, "alice") == (0, [])


def test_each_list_counts_its_own_changes(store: Store) -> None:
    add_users(store, "alice", "bob", "carol")
    assert store.buddy_op("alice", BuddyOp.ADD_REQUEST, "bob", "", 10) == 1
    assert store.buddy_op("alice", BuddyOp.ADD_REQUEST, "carol", "", 10) == 2
    assert store.buddy_op("bob", BuddyOp.ACCEPT, "alice", "", 10) == 2
    assert [store.buddies_since(u, 0)[0] for u in ("alice", "bob", "carol")] == [3, 2, 1]
    versions = {entry.buddy: entry.version for entry in store.buddies_since("alice", 0)[1]}
    assert versions == {"carol": 2, "bob": 3}


def test_delta_sync_returns_only_changed_entries_with_tombstones(store: Store) -> None:
    add_users(store, "alice", "bob", "carol", "dave")
    for buddy in ("bob", "carol", "dave"):
        store.buddy_op("alice", BuddyOp.ADD_REQUEST, buddy, "", 10)
    store.buddy_op("carol", BuddyOp.ACCEPT, "alice", "", 20)
    store.buddy_op("alice", BuddyOp.REMOVE, "dave", "", 30)
    assert buddies(store, "alice", since=3) == (5, [("carol", OK), ("dave", GONE)])
    assert buddies(store, "alice", since=5) == (5, [])
    assert buddies(store, "alice", since=0) == (5, [("bob", P_OUT), ("carol", OK)])


def test_a_thousand_buddies_sync_whole_and_as_delta(store: Store) -> None:
    friends = [f"friend{n:04d}" for n in range(1000)]
    add_users(store, "alice", *friends)
    for friend in friends:
        store.buddy_op("alice", BuddyOp.ADD_REQUEST, friend, "", 10)
    version, whole = buddies(store, "alice")
    assert version == 1000
    assert whole == [(friend, P_OUT) for friend in friends]
    for friend in friends[::100]:
        store.buddy_op(friend, BuddyOp.ACCEPT, "alice", "", 20)
    assert buddies(store, "alice", since=1000) == (1010, [(f, OK) for f in friends[::100]])


# -- mailbox


def put(
    store: Store,
    sealed: bytes = b"sealed",
    *,
    recipient: str = "alice",
    now: int = 100,
    expires_at: int = 1000,
    quota: Quota = Quota(),  # noqa: B008 -- frozen, so sharing it is safe
) -> int:
    message_id = sealed[:16].ljust(16, b"\0")
    return store.mail_put(recipient, "bob", message_id, 3, sealed, now, expires_at, quota)


def test_mail_is_fetched_oldest_first(store: Store) -> None:
    add_users(store, "alice", "bob")
    ids = [put(store, bytes([n]) * 40, now=100 + n) for n in range(3)]
    assert ids == sorted(ids)
    fetched = store.mail_fetch("alice", 150)
    assert fetched == [
        MailItem(ids[n], "alice", "bob", bytes([n]) * 16, 3, bytes([n]) * 40, 100 + n, 1000)
        for n in range(3)
    ]
    assert store.mail_fetch("alice", 150, limit=2) == fetched[:2]
    assert store.mail_fetch("bob", 150) == []


def test_delete_returns_the_deleted_items_of_the_recipient_only(store: Store) -> None:
    add_users(store, "alice", "bob", "carol")
    first, second = put(store, b"one"), put(store, b"two")
    carols = put(store, b"three", recipient="carol")
    deleted = store.mail_delete("alice", [first, carols, 999_999])
    assert [(item.item_id, item.sealed) for item in deleted] == [(first, b"one")]
    assert [item.item_id for item in store.mail_fetch("alice", 100)] == [second]
    assert [item.item_id for item in store.mail_fetch("carol", 100)] == [carols]
    assert store.mail_delete("alice", []) == []
    assert store.mail_delete("alice", [first]) == []


def test_the_item_quota_refuses_and_writes_nothing(store: Store) -> None:
    add_users(store, "alice", "bob")
    quota = Quota(items=2)
    put(store, b"1", quota=quota)
    put(store, b"2", quota=quota)
    with pytest.raises(MailboxFull, match="alice"):
        put(store, b"3", quota=quota)
    assert [item.sealed for item in store.mail_fetch("alice", 100)] == [b"1", b"2"]


def test_the_byte_quota_refuses_and_writes_nothing(store: Store) -> None:
    add_users(store, "alice", "bob")
    quota = Quota(bytes=100)
    put(store, b"a" * 60, quota=quota)
    with pytest.raises(MailboxFull):
        put(store, b"b" * 41, quota=quota)
    put(store, b"c" * 40, quota=quota)  # exactly full
    assert [len(item.sealed) for item in store.mail_fetch("alice", 100)] == [60, 40]


def test_expired_mail_is_hidden_and_purged_and_frees_its_quota(store: Store) -> None:
    add_users(store, "alice", "bob", "carol")
    put(store, b"short", expires_at=200)
    put(store, b"long", expires_at=500)
    put(store, b"carol's", recipient="carol", expires_at=200)
    assert [item.sealed for item in store.mail_fetch("alice", 200)] == [b"long"]
    put(store, b"new", now=300, quota=Quota(items=2))  # "short" no longer counts
    assert store.mail_expire(500) == 2  # "long" and carol's; "short" went with the put
    assert [item.sealed for item in store.mail_fetch("alice", 500)] == [b"new"]


def test_mail_for_an_unknown_recipient_raises_no_such_user(store: Store) -> None:
    with pytest.raises(NoSuchUser, match="alice"):
        put(store)


# -- throttling


def test_failures_block_exponentially_up_to_the_cap(store: Store) -> None:
    blocked = [store.throttle_fail("alice", 100, 1, 60) for _ in range(9)]
    assert blocked == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_a_throttle_check_gives_the_seconds_left(store: Store) -> None:
    for _ in range(3):
        store.throttle_fail("10.0.0.1", 100, 1, 60)
    assert [store.throttle_check("10.0.0.1", now) for now in (100, 102, 104, 200)] == [4, 2, 0, 0]
    assert store.throttle_check("10.0.0.2", 100) == 0


def test_clearing_a_throttle_starts_it_over(store: Store) -> None:
    for _ in range(3):
        store.throttle_fail("alice", 100, 2, 60)
    store.throttle_clear("alice")
    assert store.throttle_check("alice", 100) == 0
    assert store.throttle_fail("alice", 100, 2, 60) == 2


# -- migrations


def test_migrations_are_numbered_one_by_one() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert len(MIGRATIONS) == LATEST


def test_migrating_again_keeps_the_version(store_url: str, store: Store) -> None:
    assert store.migrate() == LATEST
    assert store.migrate() == LATEST
    versions = raw_rows(store_url, "SELECT version FROM schema_version ORDER BY version")
    assert versions == [(m.version,) for m in MIGRATIONS]


def test_a_new_store_on_the_same_database_sees_the_data(store_url: str) -> None:
    first = open_store(store_url)
    first.migrate()
    add_users(first, "alice", "bob")
    first.buddy_op("alice", BuddyOp.ADD_REQUEST, "bob", "hi", 10)
    put(first, b"kept")
    first.close()
    second = open_store(store_url)
    try:
        assert second.migrate() == LATEST
        assert second.get_user("alice") == User("alice", HASH, True, 100)
        assert buddies(second, "bob") == (1, [("alice", P_IN)])
        assert [item.sealed for item in second.mail_fetch("alice", 100)] == [b"kept"]
    finally:
        second.close()


def test_a_database_newer_than_the_server_is_refused(store_url: str, store: Store) -> None:
    raw_rows(
        store_url,
        "INSERT INTO schema_version (version, description) VALUES (99, 'future')",
        "SELECT 1",
    )
    with pytest.raises(StoreUsageError, match="version 99"):
        store.migrate()


def test_account_lookup_uses_the_primary_key(store_url: str, store: Store) -> None:
    # An index lookup stays flat from a thousand accounts to a million; a scan would not.
    query = "SELECT * FROM users WHERE user_id = 'alice'"
    if store_url.startswith("sqlite:"):
        plan = raw_rows(store_url, f"EXPLAIN QUERY PLAN {query}")
        assert "USING INDEX" in plan[0][-1]
    else:
        plan = raw_rows(store_url, "SET enable_seqscan = off", f"EXPLAIN {query}")
        assert "Index Scan using users_pkey" in plan[0][0]


# -- several servers on one database


@pytest.fixture
def two_stores(store_url: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one database, as two login servers would have."""
    one, two = open_store(store_url), open_store(store_url)
    one.migrate()
    two.migrate()
    yield one, two
    one.close()
    two.close()


def test_a_buddy_request_through_one_server_is_seen_by_the_other(
    two_stores: tuple[Store, Store],
) -> None:
    one, two = two_stores
    add_users(one, "alice", "bob")
    two.buddy_op("alice", BuddyOp.ADD_REQUEST, "bob", "", 10)
    assert buddies(one, "bob") == (1, [("alice", P_IN)])


def test_a_revocation_through_one_server_is_listed_by_the_other(
    two_stores: tuple[Store, Store],
) -> None:
    one, two = two_stores
    add_users(one, "alice")
    one.enrol_device("alice", "phone", SIGN, DH, 100)
    one.record_certificate(certificate(42))
    assert one.revocations(100) == (0, [])
    two.revoke_device("alice", "phone", 200)
    assert one.revocations(200) == (1, [42])


def test_concurrent_migrations_do_not_fail(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(4)]
    try:
        assert in_parallel([store.migrate for store in stores]) == [LATEST] * 4
    finally:
        for store in stores:
            store.close()
    versions = raw_rows(store_url, "SELECT version FROM schema_version ORDER BY version")
    assert versions == [(m.version,) for m in MIGRATIONS]


def test_crossing_requests_through_two_servers_make_buddies(
    two_stores: tuple[Store, Store],
) -> None:
    one, two = two_stores
    pairs = [(f"a{n}", f"b{n}") for n in range(20)]
    add_users(one, *[user for pair in pairs for user in pair])
    in_parallel(
        [partial(one.buddy_op, a, BuddyOp.ADD_REQUEST, b, "", 10) for a, b in pairs]
        + [partial(two.buddy_op, b, BuddyOp.ADD_REQUEST, a, "", 10) for a, b in pairs]
    )
    for a, b in pairs:
        assert (buddies(one, a), buddies(one, b)) == ((2, [(b, OK)]), (2, [(a, OK)]))


def test_the_mail_quota_holds_against_two_servers_at_once(
    two_stores: tuple[Store, Store],
) -> None:
    one, two = two_stores
    add_users(one, "alice", "bob")
    quota = Quota(items=10)

    def attempt(store: Store, n: int) -> bool:
        try:
            put(store, b"%d" % n, quota=quota)
        except MailboxFull:
            return False
        return True

    stored = in_parallel([partial(attempt, (one, two)[n % 2], n) for n in range(30)])
    assert stored.count(True) == 10
    assert len(one.mail_fetch("alice", 100)) == 10

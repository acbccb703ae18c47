"""The login store's operations, written once for SQLite and PostgreSQL.

How it works: :class:`SqlStore` implements each method of
:class:`~edge.login.store.Store` as a function of one open transaction (a
:class:`~edge.login.migrations.Tx`) and hands that function to its subclass:
``_read`` for queries, ``_write`` for changes. The subclasses (``sqlite.py``,
``postgres.py``) own the connections, begin and commit, turn database failures
into StoreError, and translate the portable ``?`` placeholders. An exception
raised inside the function (NotAllowed, MailboxFull ...) rolls the whole
transaction back, so a refused operation writes nothing.

What still differs between the dialects is named here: ``FOR UPDATE`` row locks
exist only on PostgreSQL (an SQLite write transaction already excludes every
other writer). On PostgreSQL, where several servers share one database:

- buddy_op locks both users' ``buddy_versions`` rows, always in user-id order,
  so two opposite requests wait for each other instead of deadlocking;
- mail_put locks the recipient's ``users`` row, so two quota checks cannot both
  pass for the last free place;
- every revocation updates the single ``revocation_version`` row, so they queue.

Reads that return a version read it before the rows: a change committed in
between then comes with a version too old (the client asks again) rather than
too new (the client would skip the change).
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple
from typing import Any, TypeVar

from edge.login import migrations
from edge.login.buddies import transition
from edge.login.errors import MailboxFull, NoSuchUser, NotAllowed, StoreUsageError, UserExists
from edge.login.migrations import Dialect, Tx
from edge.login.store import (
    BuddyEntry,
    Device,
    IssuedCertificate,
    MailItem,
    Quota,
    User,
)
from edge.wire.messages import REVOCATION_RETENTION, BuddyOp, BuddyState

T = TypeVar("T")

Row = tuple[Any, ...]
Stored = tuple[BuddyState, str] | None
"""One buddy entry as stored (state, note), or no entry."""

_FOR_UPDATE = {Dialect.SQLITE: "", Dialect.POSTGRES: " FOR UPDATE"}

_PENDING = (BuddyState.PENDING_OUT, BuddyState.PENDING_IN)

_CHUNK = 500
"""Ids per ``IN (...)`` list: well below SQLite's limit on parameters."""

_USER = "user_id, password_hash, enabled, created_at"
_DEVICE = "user_id, device_id, sign_key, dh_key, enrolled_at, last_login_at, revoked"
_MAIL = (
    "item_id, recipient, sender, message_id, kind, sealed, stored_at, expires_at,"
    " recipient_device, sender_device"
)
_BUDDY = "buddy, state, note, version"


class SqlStore(ABC):
    """A :class:`~edge.login.store.Store` over any :class:`Tx`; subclasses run them."""

    @abstractmethod
    def _read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a transaction that only reads; return its result."""

    @abstractmethod
    def _write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a transaction that writes; return its result."""

    @abstractmethod
    def close(self) -> None: ...

    # -- life cycle

    def migrate(self) -> int:
        return migrations.migrate(self._write)

    # -- accounts

    def add_user(self, user_id: str, password_hash: bytes, now: int) -> None:
        self._write(lambda tx: _add_user(tx, user_id, password_hash, now))

    def get_user(self, user_id: str) -> User | None:
        rows = self._read(
            lambda tx: tx.rows(f"SELECT {_USER} FROM users WHERE user_id = ?", (user_id,))
        )
        return _user(rows[0]) if rows else None

    def set_password(self, user_id: str, password_hash: bytes) -> None:
        self._write(lambda tx: _set_user(tx, user_id, "password_hash", password_hash))

    def set_enabled(self, user_id: str, enabled: bool) -> None:
        self._write(lambda tx: _set_user(tx, user_id, "enabled", enabled))

    def list_users(self, after: str = "", limit: int = 1000) -> list[User]:
        query = f"SELECT {_USER} FROM users WHERE user_id > ? ORDER BY user_id LIMIT ?"
        return [_user(row) for row in self._read(lambda tx: tx.rows(query, (after, limit)))]

    # -- devices and certificates

    def enrol_device(
        self, user_id: str, device_id: str, sign_key: bytes, dh_key: bytes, now: int
    ) -> Device:
        new = Device(user_id, device_id, sign_key, dh_key, now, now, revoked=False)
        return self._write(lambda tx: _enrol_device(tx, new))

    def get_device(self, user_id: str, device_id: str) -> Device | None:
        return self._read(lambda tx: _device(tx, user_id, device_id))

    def list_devices(self, user_id: str | None = None) -> list[Device]:
        query = f"SELECT {_DEVICE} FROM devices"
        params: tuple[str, ...] = ()
        if user_id is not None:
            query, params = f"{query} WHERE user_id = ?", (user_id,)
        rows = self._read(lambda tx: tx.rows(f"{query} ORDER BY user_id, device_id", params))
        return [_device_of(row) for row in rows]

    def record_certificate(self, cert: IssuedCertificate) -> None:
        self._write(lambda tx: _record_certificate(tx, cert))

    def revoke_device(self, user_id: str, device_id: str, now: int) -> list[int]:
        return self._write(lambda tx: _revoke_device(tx, user_id, device_id, now))

    def revocations(self, now: int) -> tuple[int, list[int]]:
        return self._read(lambda tx: _revocations(tx, now))

    # -- buddies

    def buddy_op(self, user_id: str, op: BuddyOp, other: str, note: str, now: int) -> int:
        return self._write(lambda tx: _buddy_op(tx, user_id, op, other, note))

    def buddies_since(self, user_id: str, since: int) -> tuple[int, list[BuddyEntry]]:
        return self._read(lambda tx: _buddies_since(tx, user_id, since))

    # -- mailbox

    def mail_put(
        self,
        recipient: str,
        sender: str,
        message_id: bytes,
        kind: int,
        sealed: bytes,
        now: int,
        expires_at: int,
        quota: Quota,
        *,
        recipient_device: str = "",
        sender_device: str = "",
    ) -> int:
        item = MailItem(
            0,
            recipient,
            sender,
            message_id,
            kind,
            sealed,
            now,
            expires_at,
            recipient_device,
            sender_device,
        )
        return self._write(lambda tx: _mail_put(tx, item, quota))

    def mail_fetch(
        self, recipient: str, now: int, limit: int = 100, *, device: str | None = None
    ) -> list[MailItem]:
        where = "recipient = ? AND expires_at > ?"
        params: tuple[object, ...] = (recipient, now)
        if device is not None:
            where += " AND recipient_device = ?"
            params += (device,)
        query = f"SELECT {_MAIL} FROM mailbox WHERE {where} ORDER BY item_id LIMIT ?"
        rows = self._read(lambda tx: tx.rows(query, (*params, limit)))
        return [_mail_item(row) for row in rows]

    def mail_delete(self, recipient: str, item_ids: list[int]) -> list[MailItem]:
        if not item_ids:
            return []
        return self._write(lambda tx: _mail_delete(tx, recipient, item_ids))

    def mail_expire(self, now: int) -> int:
        return self._write(lambda tx: tx.run("DELETE FROM mailbox WHERE expires_at <= ?", (now,)))

    # -- throttling

    def throttle_check(self, key: str, now: int) -> int:
        query = "SELECT blocked_until FROM throttle WHERE key = ?"
        rows = self._read(lambda tx: tx.rows(query, (key,)))
        return max(0, int(rows[0][0]) - now) if rows else 0

    def throttle_fail(self, key: str, now: int, base: int, cap: int) -> int:
        return self._write(lambda tx: _throttle_fail(tx, key, now, base, cap))

    def throttle_clear(self, key: str) -> None:
        self._write(lambda tx: tx.run("DELETE FROM throttle WHERE key = ?", (key,)))


# -- accounts


def _add_user(tx: Tx, user_id: str, password_hash: bytes, now: int) -> None:
    added = tx.run(
        "INSERT INTO users (user_id, password_hash, enabled, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (user_id) DO NOTHING",
        (user_id, password_hash, True, now),
    )
    if not added:
        raise UserExists(f"user {user_id!r} already exists")
    tx.run("INSERT INTO buddy_versions (user_id, version) VALUES (?, 0)", (user_id,))


def _set_user(tx: Tx, user_id: str, column: str, value: object) -> None:
    # ``column`` is one of ours, never the caller's text.
    if not tx.run(f"UPDATE users SET {column} = ? WHERE user_id = ?", (value, user_id)):
        raise NoSuchUser(f"no user {user_id!r}")


def _require_user(tx: Tx, user_id: str) -> None:
    """Lock the user's row (PostgreSQL) or raise NoSuchUser."""
    query = "SELECT 1 FROM users WHERE user_id = ?" + _FOR_UPDATE[tx.dialect]
    if not tx.rows(query, (user_id,)):
        raise NoSuchUser(f"no user {user_id!r}")


def _user(row: Row) -> User:
    return User(row[0], bytes(row[1]), bool(row[2]), int(row[3]))


# -- devices and certificates


def _enrol_device(tx: Tx, new: Device) -> Device:
    # The user's row lock queues two servers enrolling the same new device.
    _require_user(tx, new.user_id)
    old = _device(tx, new.user_id, new.device_id, lock=True)
    if old is None:
        tx.run(
            f"INSERT INTO devices ({_DEVICE}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            astuple(new),  # the fields in the order of _DEVICE
        )
        return new
    if (old.sign_key, old.dh_key) == (new.sign_key, new.dh_key):
        # Every password login enrols again with the same keys: nothing to replace,
        # and a revoked device stays revoked (its revocation is bound to these keys).
        return old
    _revoke_certificates(tx, new.user_id, new.device_id, new.enrolled_at)
    tx.run(
        "UPDATE devices SET sign_key = ?, dh_key = ?, enrolled_at = ?, last_login_at = ?,"
        " revoked = ? WHERE user_id = ? AND device_id = ?",
        (
            *(new.sign_key, new.dh_key, new.enrolled_at, new.last_login_at, new.revoked),
            *(new.user_id, new.device_id),
        ),
    )
    return new


def _device(tx: Tx, user_id: str, device_id: str, *, lock: bool = False) -> Device | None:
    """The device; with ``lock``, its row stays locked (PostgreSQL) until commit."""
    query = f"SELECT {_DEVICE} FROM devices WHERE user_id = ? AND device_id = ?"
    if lock:
        query += _FOR_UPDATE[tx.dialect]
    rows = tx.rows(query, (user_id, device_id))
    return _device_of(rows[0]) if rows else None


def _device_of(row: Row) -> Device:
    user_id, device_id, sign_key, dh_key, enrolled_at, last_login_at, revoked = row
    return Device(
        user_id,
        device_id,
        bytes(sign_key),
        bytes(dh_key),
        int(enrolled_at),
        int(last_login_at),
        bool(revoked),
    )


def _record_certificate(tx: Tx, cert: IssuedCertificate) -> None:
    if _device(tx, cert.user_id, cert.device_id, lock=True) is None:
        raise NoSuchUser(f"no device {cert.device_id!r} of user {cert.user_id!r}")
    added = tx.run(
        "INSERT INTO certificates (serial, user_id, device_id, not_after, issued_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING",
        (_serial_to_db(cert.serial), cert.user_id, cert.device_id, cert.not_after, cert.issued_at),
    )
    if not added:
        raise StoreUsageError(f"certificate serial {cert.serial} is already recorded")
    tx.run(
        "UPDATE devices SET last_login_at = ? WHERE user_id = ? AND device_id = ?",
        (cert.issued_at, cert.user_id, cert.device_id),
    )


def _revoke_device(tx: Tx, user_id: str, device_id: str, now: int) -> list[int]:
    if _device(tx, user_id, device_id, lock=True) is None:
        raise NoSuchUser(f"no device {device_id!r} of user {user_id!r}")
    tx.run(
        "UPDATE devices SET revoked = ? WHERE user_id = ? AND device_id = ?",
        (True, user_id, device_id),
    )
    return _revoke_certificates(tx, user_id, device_id, now)


def _revoke_certificates(tx: Tx, user_id: str, device_id: str, now: int) -> list[int]:
    """Revoke the device's certificates that still count; bump the version if there were any.

    A certificate counts until :data:`REVOCATION_RETENTION` after its not_after
    (see :func:`_retained_after`), so one that expired an hour ago is revoked
    too: presence records signed under it may still be found.
    """
    where = "WHERE user_id = ? AND device_id = ? AND revoked_at IS NULL AND not_after > ?"
    params = (user_id, device_id, _retained_after(now))
    rows = tx.rows(f"SELECT serial FROM certificates {where}{_FOR_UPDATE[tx.dialect]}", params)
    if not rows:
        return []
    tx.run(f"UPDATE certificates SET revoked_at = ? {where}", (now, *params))
    tx.run("UPDATE revocation_version SET version = version + 1")
    return sorted(_serial_from_db(row[0]) for row in rows)


def _revocations(tx: Tx, now: int) -> tuple[int, list[int]]:
    """The version and the revoked serials still listed: not_after within the retention."""
    (version,) = tx.rows("SELECT version FROM revocation_version")[0]
    rows = tx.rows(
        "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL AND not_after > ?",
        (_retained_after(now),),
    )
    return int(version), sorted(_serial_from_db(row[0]) for row in rows)


def _retained_after(now: int) -> int:
    """The not_after a certificate must exceed for its revocation to still be listed.

    Presence records are checked against their certificate at their own
    issued_at and live up to ``PRESENCE_LIFETIME_MAX`` beyond it, so a record
    signed just before not_after is found for that long after it. Were the
    serial dropped at not_after, a revoked device's last records would be
    accepted again; it stays listed for :data:`REVOCATION_RETENTION` instead.
    """
    return now - REVOCATION_RETENTION


def _serial_to_db(serial: int) -> int:
    """Serials are unsigned 64-bit; both databases store signed 64-bit integers."""
    if not 0 <= serial < 1 << 64:
        raise StoreUsageError(f"certificate serial {serial} is not an unsigned 64-bit number")
    return serial - (1 << 64) if serial >= 1 << 63 else serial


def _serial_from_db(value: Any) -> int:
    serial = int(value)
    return serial + (1 << 64) if serial < 0 else serial


# -- buddies


def _buddy_op(tx: Tx, user_id: str, op: BuddyOp, other: str, note: str) -> int:
    if user_id == other:
        raise NotAllowed(f"{op.name}: a user cannot be their own buddy")
    versions = _lock_lists(tx, user_id, other)
    mine, theirs = _entry(tx, user_id, other), _entry(tx, other, user_id)
    new_mine, new_theirs = transition(op, _state(mine), _state(theirs))
    _put_entry(tx, versions, user_id, other, mine, new_mine, note)
    _put_entry(tx, versions, other, user_id, theirs, new_theirs, note)
    return versions[user_id]


def _lock_lists(tx: Tx, *user_ids: str) -> dict[str, int]:
    """Each user's list version, its row locked; NoSuchUser for an unknown user."""
    versions: dict[str, int] = {}
    for user_id in sorted(user_ids):  # one order for everybody: no deadlock
        query = "SELECT version FROM buddy_versions WHERE user_id = ?" + _FOR_UPDATE[tx.dialect]
        rows = tx.rows(query, (user_id,))
        if not rows:
            raise NoSuchUser(f"no user {user_id!r}")
        versions[user_id] = int(rows[0][0])
    return versions


def _entry(tx: Tx, owner: str, buddy: str) -> Stored:
    query = "SELECT state, note FROM buddies WHERE owner = ? AND buddy = ?"
    rows = tx.rows(query, (owner, buddy))
    return (BuddyState(rows[0][0]), str(rows[0][1])) if rows else None


def _state(entry: Stored) -> BuddyState | None:
    return None if entry is None else entry[0]


def _put_entry(
    tx: Tx,
    versions: dict[str, int],
    owner: str,
    buddy: str,
    old: Stored,
    state: BuddyState | None,
    note: str,
) -> None:
    """Write ``owner``'s entry for ``buddy`` if it changed, stamped with a new version."""
    if state is None:
        return  # no entry stays no entry (transition never removes one)
    # The note is the text of a pending request, shown with it; other states have none.
    new = (state, note if state in _PENDING else "")
    if new == old:
        # Unchanged (a request swallowed by a block, a repeated request): the owner's
        # devices have nothing new to fetch, so the version stays.
        return
    versions[owner] += 1
    tx.run("UPDATE buddy_versions SET version = ? WHERE user_id = ?", (versions[owner], owner))
    tx.run(
        "INSERT INTO buddies (owner, buddy, state, note, version) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (owner, buddy) DO UPDATE"
        " SET state = excluded.state, note = excluded.note, version = excluded.version",
        (owner, buddy, int(state), new[1], versions[owner]),
    )


def _buddies_since(tx: Tx, user_id: str, since: int) -> tuple[int, list[BuddyEntry]]:
    rows = tx.rows("SELECT version FROM buddy_versions WHERE user_id = ?", (user_id,))
    if not rows:
        return 0, []
    version = int(rows[0][0])
    if since <= 0:
        query = f"SELECT {_BUDDY} FROM buddies WHERE owner = ? AND state <> ?"
        params: tuple[object, ...] = (user_id, int(BuddyState.REMOVED))
    else:
        query = f"SELECT {_BUDDY} FROM buddies WHERE owner = ? AND version > ?"
        params = (user_id, since)
    entries = tx.rows(f"{query} ORDER BY version, buddy", params)
    return version, [BuddyEntry(b, BuddyState(s), n, int(v)) for b, s, n, v in entries]


# -- mailbox


def _mail_put(tx: Tx, item: MailItem, quota: Quota) -> int:
    _require_user(tx, item.recipient)
    # Expired items go first: they no longer count against the quota.
    tx.run(
        "DELETE FROM mailbox WHERE recipient = ? AND expires_at <= ?",
        (item.recipient, item.stored_at),
    )
    count, size = tx.rows(
        "SELECT count(*), coalesce(sum(length(sealed)), 0) FROM mailbox WHERE recipient = ?",
        (item.recipient,),
    )[0]
    if count + 1 > quota.items or size + len(item.sealed) > quota.bytes:
        raise MailboxFull(
            f"the mailbox of {item.recipient!r} is full ({count} items, {size} bytes)"
        )
    return tx.insert_id(
        "INSERT INTO mailbox (recipient, sender, message_id, kind, sealed, stored_at,"
        " expires_at, recipient_device, sender_device) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            *(item.recipient, item.sender, item.message_id, item.kind, item.sealed),
            *(item.stored_at, item.expires_at, item.recipient_device, item.sender_device),
        ),
        "item_id",
    )


def _mail_delete(tx: Tx, recipient: str, item_ids: list[int]) -> list[MailItem]:
    deleted: list[MailItem] = []
    for chunk in _chunks(sorted(set(item_ids)), _CHUNK):
        where = f"WHERE recipient = ? AND item_id IN ({', '.join(['?'] * len(chunk))})"
        params = (recipient, *chunk)
        rows = tx.rows(f"SELECT {_MAIL} FROM mailbox {where}{_FOR_UPDATE[tx.dialect]}", params)
        deleted += [_mail_item(row) for row in rows]
        tx.run(f"DELETE FROM mailbox {where}", params)
    return sorted(deleted, key=lambda item: item.item_id)


def _mail_item(row: Row) -> MailItem:
    item_id, recipient, sender, message_id, kind, sealed, stored_at, expires_at, to, by = row
    return MailItem(
        int(item_id),
        recipient,
        sender,
        bytes(message_id),
        int(kind),
        bytes(sealed),
        int(stored_at),
        int(expires_at),
        to,
        by,
    )


def _chunks(values: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# -- throttling


def _throttle_fail(tx: Tx, key: str, now: int, base: int, cap: int) -> int:
    tx.run(
        "INSERT INTO throttle (key, failures, blocked_until) VALUES (?, 1, ?)"
        " ON CONFLICT (key) DO UPDATE SET failures = throttle.failures + 1",
        (key, now),
    )
    (failures,) = tx.rows("SELECT failures FROM throttle WHERE key = ?", (key,))[0]
    # The shift is bounded: a key failing for ever must not make a huge integer.
    seconds = min(cap, base << min(int(failures) - 1, 62))
    tx.run("UPDATE throttle SET blocked_until = ? WHERE key = ?", (now + seconds, key))
    return seconds

"""The login server's storage interface; SQLite and PostgreSQL implement it.

Every method is one transaction: it either happens whole or raises
:class:`~edge.login.errors.StoreError` having written nothing. Methods are
blocking; the service calls them from worker threads. Times are Unix seconds
(ints) passed in by the caller, so stores never read a clock and tests control
time. Text arguments arrive already validated (lengths, UTF-8) by the wire
layer; stores pass every value as a query parameter, never into SQL text.

Several login servers may share one PostgreSQL database: nothing here relies
on state kept in a process between calls.
"""

from dataclasses import dataclass
from typing import Protocol

from edge.wire.messages import BuddyOp, BuddyState


@dataclass(frozen=True)
class User:
    user_id: str
    password_hash: bytes
    """argon2id string as pynacl.pwhash produces it (ASCII, NUL-free)."""
    enabled: bool
    created_at: int


@dataclass(frozen=True)
class Device:
    user_id: str
    device_id: str
    sign_key: bytes
    dh_key: bytes
    enrolled_at: int
    last_login_at: int
    revoked: bool


@dataclass(frozen=True)
class IssuedCertificate:
    serial: int
    user_id: str
    device_id: str
    not_after: int
    issued_at: int


@dataclass(frozen=True)
class BuddyEntry:
    buddy: str
    state: BuddyState
    note: str
    version: int
    """The owner's list version at which this entry last changed."""


@dataclass(frozen=True)
class MailItem:
    item_id: int
    recipient: str
    sender: str
    message_id: bytes
    """16 bytes chosen by the sender, in clear: receipts name it."""
    kind: int
    sealed: bytes
    """Ciphertext sealed to the recipient's X25519 key; the server cannot read it."""
    stored_at: int
    expires_at: int
    recipient_device: str = ""
    """The device whose X25519 key sealed the item; only it can open it."""
    sender_device: str = ""


@dataclass(frozen=True)
class Quota:
    items: int = 1000
    bytes: int = 16 << 20


class Store(Protocol):
    """What the login service needs from a database."""

    # -- life cycle
    def migrate(self) -> int:
        """Bring the schema to the newest version (idempotent, safe to run concurrently
        from several servers); return that version."""
        ...

    def close(self) -> None: ...

    # -- accounts
    def add_user(self, user_id: str, password_hash: bytes, now: int) -> None:
        """Raises UserExists."""
        ...

    def get_user(self, user_id: str) -> User | None: ...

    def set_password(self, user_id: str, password_hash: bytes) -> None:
        """Raises NoSuchUser."""
        ...

    def set_enabled(self, user_id: str, enabled: bool) -> None:
        """Raises NoSuchUser."""
        ...

    def list_users(self, after: str = "", limit: int = 1000) -> list[User]:
        """Users ordered by id, starting after ``after`` (keyset pagination)."""
        ...

    # -- devices and certificates
    def enrol_device(
        self, user_id: str, device_id: str, sign_key: bytes, dh_key: bytes, now: int
    ) -> Device:
        """Create the device, or replace its keys when it enrols again (which revokes
        every certificate of its old keys that revoke_device would revoke). Raises NoSuchUser."""
        ...

    def get_device(self, user_id: str, device_id: str) -> Device | None: ...

    def list_devices(self, user_id: str | None = None) -> list[Device]: ...

    def record_certificate(self, cert: IssuedCertificate) -> None:
        """Remember an issued certificate (for revocation) and the device's login time."""
        ...

    def revoke_device(self, user_id: str, device_id: str, now: int) -> list[int]:
        """Mark the device revoked and revoke its certificates that are not yet expired
        or expired less than REVOCATION_RETENTION ago; return their serials. Raises
        NoSuchUser when user or device is unknown."""
        ...

    def revocations(self, now: int) -> tuple[int, list[int]]:
        """(version, serials of revoked certificates whose not_after is less than
        REVOCATION_RETENTION ago). The version grows with every revocation, so a cached
        list can be compared cheaply.

        Why past not_after: a presence record is checked against its certificate at
        its own issued_at, so it is found for up to PRESENCE_LIFETIME_MAX after the
        certificate expired; its serial must stay listed that long (and a margin for
        clocks), or the records of a revoked device would come back."""
        ...

    # -- buddies (transitions from edge.login.buddies)
    def buddy_op(self, user_id: str, op: BuddyOp, other: str, note: str, now: int) -> int:
        """Apply ``op`` by ``user_id`` about ``other`` to both entries in one
        transaction; bump both lists' versions; return ``user_id``'s new version.
        Raises NoSuchUser for an unknown ``other`` and NotAllowed from the table."""
        ...

    def buddies_since(self, user_id: str, since: int) -> tuple[int, list[BuddyEntry]]:
        """(current version, entries changed after ``since``); with ``since == 0`` the
        whole list without tombstones."""
        ...

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
        """Store one item; return its id. The quota counts all of the recipient's
        devices together. Raises MailboxFull, NoSuchUser."""
        ...

    def mail_fetch(
        self, recipient: str, now: int, limit: int = 100, *, device: str | None = None
    ) -> list[MailItem]:
        """Unexpired items, oldest first; with ``device``, only those addressed to it."""
        ...

    def mail_delete(self, recipient: str, item_ids: list[int]) -> list[MailItem]:
        """Delete the recipient's items among ``item_ids``; return what was deleted."""
        ...

    def mail_expire(self, now: int) -> int:
        """Delete expired items everywhere; return how many."""
        ...

    # -- throttling, shared by every server on the database
    def throttle_check(self, key: str, now: int) -> int:
        """Seconds until ``key`` may try again (0: now)."""
        ...

    def throttle_fail(self, key: str, now: int, base: int, cap: int) -> int:
        """Count a failure; block for ``base * 2**(failures-1)`` seconds, at most ``cap``.
        Return the seconds blocked."""
        ...

    def throttle_clear(self, key: str) -> None: ...


__all__ = [
    "BuddyEntry",
    "BuddyOp",
    "Device",
    "IssuedCertificate",
    "MailItem",
    "Quota",
    "Store",
    "User",
]

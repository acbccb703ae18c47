"""The login conversation: what the server does with each message of one session.

Theory of operation
-------------------
A device connects over TCP, runs a Noise XX handshake with the server's pinned
key (the server accepts devices without a certificate: this is where they get
one), then speaks this conversation, one request at a time::

    LOGIN_HELLO (user, device, public keys)    ->
                                               <-  LOGIN_CHALLENGE (nonce)
    [LOGIN_PASSWORD | LOGIN_REGISTER]          ->   only to enrol (or register)
    LOGIN_DEVICE_PROOF (signature)             ->
                                               <-  LOGIN_RESULT (certificate)
    then any number of: REVOCATION_FETCH, RELAY_REQUEST, BUDDY_OP, BUDDY_SYNC

The device proves it holds its X25519 key by the handshake (HELLO must name
the session's remote static key) and its Ed25519 key by signing the challenge
bound to the session (:mod:`edge.login.proof`). With a password it enrols
(argon2id, once); without, it renews with nothing but that signature, which
is what lets a thousand devices come back after a power cut for the cost of a
thousand signature checks.

Every failure to authenticate, whatever its cause (unknown user, wrong
password, disabled account, unknown or revoked device, bad signature), gets
the same answer and counts against both the account and the source address,
with exponential backoff shared by every server on the database.

:data:`STAGES` is the table of which message each stage accepts.
"""

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, auto
from functools import partial
from typing import Any, TypeVar

from edge.crypto.cert import issue
from edge.crypto.keys import IssuerKey
from edge.crypto.revocation import sign_revocations
from edge.errors import RemoteError
from edge.login.config import LoginConfig
from edge.login.errors import (
    AuthFailed,
    MailboxFull,
    NoSuchUser,
    NotAllowed,
    NotFound,
    StoreError,
    Throttled,
    UserExists,
)
from edge.login.passwords import MAX_PASSWORD_BYTES, Passwords
from edge.login.proof import proof_valid
from edge.login.store import BuddyEntry, IssuedCertificate, MailItem, Store
from edge.runtime.logs import log_event
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import (
    BUDDY_ENTRIES_MAX,
    DEVICE_CERTIFICATES_MAX,
    BuddyOp,
    MailKind,
    Message,
    parse_signed_revocation_list,
)

T = TypeVar("T")
Send = Callable[[MsgType, Mapping[str, Any]], None]

_log = logging.getLogger(__name__)

AUTH_FAILED_TEXT = "unknown user, wrong password or unknown device"
MAILBOX_BATCH = 32
"""Items per MAILBOX_FETCH answer, whatever the device asks for."""
MAILBOX_COUNT_CAP = 10_000
DEVICE_KEYS_VALID = 3600
REVOCATIONS_VALID = 3600
"""Seconds a signed revocation list stays fresh; devices fetch a new one before."""
CLIENT_SKEW = 60


class Stage(Enum):
    HELLO = auto()
    """Waiting for LOGIN_HELLO."""
    PROOF = auto()
    """Challenge sent; waiting for an optional password and the device proof."""
    READY = auto()
    """Authenticated: requests for this user and device."""
    DONE = auto()
    """Refused; the connection is being closed."""


STAGES: dict[Stage, dict[MsgType, str]] = {
    Stage.HELLO: {MsgType.LOGIN_HELLO: "_on_hello"},
    Stage.PROOF: {
        MsgType.LOGIN_PASSWORD: "_on_password",
        MsgType.LOGIN_REGISTER: "_on_register",
        MsgType.LOGIN_DEVICE_PROOF: "_on_proof",
    },
    Stage.READY: {
        MsgType.RELAY_REQUEST: "_on_relay",
        MsgType.REVOCATION_FETCH: "_on_revocations",
        MsgType.BUDDY_OP: "_on_buddy_op",
        MsgType.BUDDY_SYNC: "_on_buddy_sync",
        MsgType.DEVICE_KEYS_REQUEST: "_on_device_keys",
        MsgType.MAILBOX_PUT: "_on_mail_put",
        MsgType.MAILBOX_FETCH: "_on_mail_fetch",
        MsgType.MAILBOX_ACK: "_on_mail_ack",
    },
    Stage.DONE: {},
}


@dataclass
class Hello:
    user_id: str
    device_id: str
    sign_key: bytes
    dh_key: bytes
    nonce: bytes
    password: str | None = None
    register: bool = False


class LoginService:
    """What every conversation shares: configuration, store, keys, worker limits."""

    def __init__(
        self,
        config: LoginConfig,
        store: Store,
        issuer: IssuerKey,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.issuer = issuer
        self.passwords = Passwords(config.password_cost)
        self.clock = clock
        self._hashing = asyncio.Semaphore(config.password_parallel)
        self._revocations: tuple[int, int, bytes] | None = None

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one store transaction on a worker thread."""
        return await asyncio.to_thread(fn, *args)

    async def hashing(self, fn: Callable[..., T], *args: Any) -> T:
        """Run argon2id on a worker thread, a few at a time (64 MiB each)."""
        async with self._hashing:
            return await asyncio.to_thread(fn, *args)

    def now(self) -> int:
        return int(self.clock())

    async def revocation_list(self) -> bytes:
        """The signed list of revoked serials, re-signed when it changes or half-way
        to its next_update, so that every server on the database serves the same
        version for the same revocations."""
        now = self.now()
        version, serials = await self.db(self.store.revocations, now)
        cached = self._revocations
        if cached is not None and cached[0] == version and cached[1] > now:
            return cached[2]
        raw = sign_revocations(
            self.issuer,
            version=version + 1,
            issued_at=now,
            next_update=now + REVOCATIONS_VALID,
            serials=serials,
        )
        self._revocations = (version, now + REVOCATIONS_VALID // 2, raw)
        return raw


class Conversation:
    """One authenticated (or authenticating) connection."""

    def __init__(
        self,
        service: LoginService,
        send: Send,
        *,
        address: tuple[str, int],
        remote_static: bytes,
        handshake_hash: bytes,
    ) -> None:
        self.service = service
        self.stage = Stage.HELLO
        self.address = address
        self.user_id = ""
        self.device_id = ""
        self._send = send
        self._remote_static = remote_static
        self._handshake_hash = handshake_hash
        self._hello: Hello | None = None

    @property
    def finished(self) -> bool:
        return self.stage is Stage.DONE

    async def handle(self, message: Message) -> None:
        """Answer one message; refusals are answered, and DONE means: close now."""
        handler = STAGES[self.stage].get(message.type)
        try:
            if handler is None:
                raise NotAllowed(f"{message.type.name} is not expected at stage {self.stage.name}")
            await getattr(self, handler)(message.body)
        except (AuthFailed, Throttled) as exc:
            await self._refuse_login(exc)
        except StoreError as exc:
            log_event(_log, logging.WARNING, "store failed", peer=self.address, error=str(exc))
            self._error(exc.code, "the server's database is unavailable; try again", message.type)
        except RemoteError as exc:
            self._error(exc.code, str(exc), message.type)
            if self.stage is not Stage.READY:
                self.stage = Stage.DONE

    # -- authentication -------------------------------------------------------------

    async def _on_hello(self, body: Any) -> None:
        if bytes(body.dh_key) != self._remote_static:
            raise AuthFailed("the X25519 key in LOGIN_HELLO is not this session's key")
        self._hello = Hello(
            body.user_id, body.device_id, bytes(body.sign_key), bytes(body.dh_key), b""
        )
        await self._check_throttles()
        self._hello.nonce = secrets.token_bytes(32)
        self.stage = Stage.PROOF
        self._send(
            MsgType.LOGIN_CHALLENGE,
            {"nonce": self._hello.nonce, "server_time_ms": int(self.service.clock() * 1000)},
        )

    async def _on_password(self, body: Any) -> None:
        self._take_password(body.password, register=False)

    async def _on_register(self, body: Any) -> None:
        if not self.service.config.self_registration:
            raise NotAllowed("self-registration is off on this server")
        self._take_password(body.password, register=True)

    def _take_password(self, password: str, *, register: bool) -> None:
        hello = self._need_hello()
        if hello.password is not None:
            raise NotAllowed("one password per login")
        if not 0 < len(password.encode()) <= MAX_PASSWORD_BYTES:
            raise NotAllowed(f"a password is 1 to {MAX_PASSWORD_BYTES} bytes")
        hello.password, hello.register = password, register

    async def _on_proof(self, body: Any) -> None:
        hello = self._need_hello()
        valid = proof_valid(
            hello.sign_key,
            bytes(body.signature),
            self._handshake_hash,
            hello.nonce,
            hello.user_id,
            hello.device_id,
        )
        if hello.register:
            await self._register(hello, valid)
        elif hello.password is not None:
            await self._enrol(hello, valid)
        else:
            await self._renew(hello, valid)
        await self._issue(hello)

    async def _register(self, hello: Hello, valid: bool) -> None:
        service = self.service
        key = f"register:{self.address[0]}"
        if not valid:
            raise AuthFailed("bad device proof")
        wait = await service.db(service.store.throttle_check, key, service.now())
        if wait:
            raise Throttled(f"registration from this address again in {wait} s")
        assert hello.password is not None
        password_hash = await service.hashing(service.passwords.hash, hello.password)
        try:
            await service.db(service.store.add_user, hello.user_id, password_hash, service.now())
        except UserExists:
            raise NotAllowed(f"user id {hello.user_id!r} is taken") from None
        interval = service.config.registration_interval
        if interval:
            await service.db(service.store.throttle_fail, key, service.now(), interval, interval)
        await self._store_device(hello)

    async def _enrol(self, hello: Hello, valid: bool) -> None:
        service = self.service
        user = await service.db(service.store.get_user, hello.user_id)
        stored = user.password_hash if user is not None and user.enabled else None
        assert hello.password is not None
        matched = await service.hashing(service.passwords.verify, stored, hello.password)
        if not (matched and valid):
            raise AuthFailed("password or device proof refused")
        if stored is not None and service.passwords.needs_rehash(stored):
            # The operator changed the cost: upgrade the hash while we hold the password.
            fresh = await service.hashing(service.passwords.hash, hello.password)
            await service.db(service.store.set_password, hello.user_id, fresh)
        await self._store_device(hello)

    async def _store_device(self, hello: Hello) -> None:
        service = self.service
        device = await service.db(
            service.store.enrol_device,
            hello.user_id,
            hello.device_id,
            hello.sign_key,
            hello.dh_key,
            service.now(),
        )
        if device.revoked:
            # Revoked keys stay revoked, password or not: a stolen device that
            # also knows the password must not come back; new keys may.
            raise AuthFailed("revoked device keys")

    async def _renew(self, hello: Hello, valid: bool) -> None:
        service = self.service
        user = await service.db(service.store.get_user, hello.user_id)
        device = await service.db(service.store.get_device, hello.user_id, hello.device_id)
        known = (
            valid
            and user is not None
            and user.enabled
            and device is not None
            and not device.revoked
            and device.sign_key == hello.sign_key
            and device.dh_key == hello.dh_key
        )
        if not known:
            raise AuthFailed("device not enrolled, revoked, or proof refused")

    async def _issue(self, hello: Hello) -> None:
        service = self.service
        now = service.now()
        serial = secrets.randbits(63)
        not_after = now + int(service.config.certificate_hours * 3600)
        raw = issue(
            service.issuer,
            serial=serial,
            user_id=hello.user_id,
            device_id=hello.device_id,
            sign_key=hello.sign_key,
            dh_key=hello.dh_key,
            not_before=now - CLIENT_SKEW,
            not_after=not_after,
        )
        record = IssuedCertificate(serial, hello.user_id, hello.device_id, not_after, now)
        await service.db(service.store.record_certificate, record)
        for key in self._throttle_keys(hello):
            await service.db(service.store.throttle_clear, key)
        self.user_id, self.device_id = hello.user_id, hello.device_id
        self.stage = Stage.READY
        log_event(_log, logging.INFO, "login", user=hello.user_id, device=hello.device_id)
        self._send(MsgType.LOGIN_RESULT, {"status": ErrorCode.OK, "certificate": raw, "detail": ""})

    async def _check_throttles(self) -> None:
        service = self.service
        hello = self._need_hello()
        for key in self._throttle_keys(hello):
            wait = await service.db(service.store.throttle_check, key, service.now())
            if wait:
                raise Throttled(f"too many failed logins; try again in {wait} s")

    async def _refuse_login(self, exc: AuthFailed | Throttled) -> None:
        service = self.service
        hello = self._hello
        if isinstance(exc, AuthFailed) and hello is not None:
            for key in self._throttle_keys(hello):
                await service.db(
                    service.store.throttle_fail,
                    key,
                    service.now(),
                    service.config.throttle_base,
                    service.config.throttle_max,
                )
        log_event(
            _log,
            logging.INFO,
            "login refused",
            user=hello.user_id if hello else "",
            peer=self.address[0],
            reason=str(exc),
        )
        detail = AUTH_FAILED_TEXT if isinstance(exc, AuthFailed) else str(exc)
        self._send(MsgType.LOGIN_RESULT, {"status": exc.code, "certificate": b"", "detail": detail})
        self.stage = Stage.DONE

    def _throttle_keys(self, hello: Hello) -> tuple[str, str]:
        return f"user:{hello.user_id}", f"addr:{self.address[0]}"

    def _need_hello(self) -> Hello:
        assert self._hello is not None, "the stage table admits this only after LOGIN_HELLO"
        return self._hello

    # -- requests of a logged-in device ---------------------------------------------

    async def _on_relay(self, body: Any) -> None:
        from edge.login.relay import relay_credentials

        config = self.service.config
        if not config.relay_secret:
            raise NotAllowed("this server hands out no relay credentials (no [relay] secret)")
        ttl = max(60, min(body.ttl or config.relay_ttl, config.relay_ttl))
        creds = relay_credentials(config.relay_secret, self.user_id, self.service.now(), ttl)
        self._send(
            MsgType.RELAY_CREDENTIALS,
            {
                "username": creds.username,
                "password": creds.password,
                "expires": creds.expires,
                "uris": list(config.relay_uris),
            },
        )

    async def _on_revocations(self, body: Any) -> None:
        raw = await self.service.revocation_list()
        self._send(MsgType.REVOCATION_LIST, parse_signed_revocation_list(raw))

    async def _on_buddy_op(self, body: Any) -> None:
        service = self.service
        op = BuddyOp(body.op)
        if body.user_id == self.user_id:
            raise NotAllowed("a user cannot be their own buddy")
        version = await service.db(
            service.store.buddy_op, self.user_id, op, body.user_id, body.note, service.now()
        )
        await self._send_buddies(version - 1)

    async def _on_buddy_sync(self, body: Any) -> None:
        await self._send_buddies(body.since_version)

    async def _send_buddies(self, since: int) -> None:
        service = self.service
        version, entries = await service.db(service.store.buddies_since, self.user_id, since)
        size = BUDDY_ENTRIES_MAX
        chunks = [entries[i : i + size] for i in range(0, len(entries), size)]
        for n, chunk in enumerate(chunks or [[]]):
            self._send(
                MsgType.BUDDY_LIST,
                {
                    "version": version,
                    "since_version": since,
                    "full": since == 0,
                    "more": n < len(chunks) - 1,
                    "entries": [_buddy(entry) for entry in chunk],
                },
            )

    # -- the mailbox ------------------------------------------------------------------

    async def _on_device_keys(self, body: Any) -> None:
        """Certificates for each active device of a user, so a sender can seal to each.

        The server is the issuer: it certifies the stored keys afresh, for one
        hour, rather than keep every certificate it ever issued."""
        service = self.service
        devices = await service.db(service.store.list_devices, body.user_id)
        now = service.now()
        certificates = [
            issue(
                service.issuer,
                serial=secrets.randbits(63),
                user_id=device.user_id,
                device_id=device.device_id,
                sign_key=device.sign_key,
                dh_key=device.dh_key,
                not_before=now - CLIENT_SKEW,
                not_after=now + DEVICE_KEYS_VALID,
            )
            for device in devices
            if not device.revoked
        ][:DEVICE_CERTIFICATES_MAX]
        self._send(MsgType.DEVICE_KEYS, {"user_id": body.user_id, "certificates": certificates})

    async def _on_mail_put(self, body: Any) -> None:
        service = self.service
        if body.kind == MailKind.RECEIPT:
            raise NotAllowed("receipts are made by the server when an item is delivered")
        now = service.now()
        try:
            item_id = await service.db(
                partial(
                    service.store.mail_put,
                    body.recipient,
                    self.user_id,
                    bytes(body.message_id),
                    int(body.kind),
                    bytes(body.sealed),
                    now,
                    now + service.config.mailbox_days * 86400,
                    service.config.mailbox_quota,
                    recipient_device=body.recipient_device,
                    sender_device=self.device_id,
                )
            )
        except NoSuchUser:
            raise NotFound(f"no user {body.recipient!r}") from None
        self._send(MsgType.MAILBOX_STORED, {"message_id": body.message_id, "item_id": item_id})

    async def _on_mail_fetch(self, body: Any) -> None:
        service = self.service
        limit = max(1, min(body.max_items, MAILBOX_BATCH))
        items = await service.db(
            partial(
                service.store.mail_fetch,
                self.user_id,
                service.now(),
                limit + 1,
                device=self.device_id,
            )
        )
        batch = items[:limit]
        for n, item in enumerate(batch):
            self._send(MsgType.MAILBOX_ITEM, _mail_item(item, remaining=len(batch) - n - 1))
        self._send(MsgType.MAILBOX_STATUS, {"waiting": len(items) - len(batch)})

    async def _on_mail_ack(self, body: Any) -> None:
        service = self.service
        deleted = await service.db(service.store.mail_delete, self.user_id, list(body.item_ids))
        for item in deleted:
            if item.kind != MailKind.RECEIPT and item.recipient_device == self.device_id:
                await self._receipt(item)
        self._send(MsgType.MAILBOX_STATUS, {"waiting": await self._waiting()})

    async def _receipt(self, item: MailItem) -> None:
        """Tell the sender's device that its item reached the recipient's device."""
        service = self.service
        now = service.now()
        try:
            await service.db(
                partial(
                    service.store.mail_put,
                    item.sender,
                    self.user_id,
                    item.message_id,
                    int(MailKind.RECEIPT),
                    b"",
                    now,
                    now + service.config.mailbox_days * 86400,
                    service.config.mailbox_quota,
                    recipient_device=item.sender_device,
                    sender_device=self.device_id,
                )
            )
        except (MailboxFull, NoSuchUser) as exc:
            # A receipt is a courtesy: the delivery itself has happened.
            log_event(_log, logging.INFO, "receipt dropped", to=item.sender, reason=str(exc))

    async def _waiting(self) -> int:
        service = self.service
        items = await service.db(
            partial(
                service.store.mail_fetch,
                self.user_id,
                service.now(),
                MAILBOX_COUNT_CAP,
                device=self.device_id,
            )
        )
        return len(items)

    def _error(self, code: ErrorCode, detail: str, about: MsgType) -> None:
        self._send(MsgType.ERROR, {"code": code, "about_type": about, "detail": detail[:200]})


def _mail_item(item: MailItem, *, remaining: int) -> dict[str, Any]:
    return {
        "item_id": item.item_id,
        "sender": item.sender,
        "sender_device": item.sender_device,
        "message_id": item.message_id,
        "kind": MailKind(item.kind),
        "sealed": item.sealed,
        "stored_ms": item.stored_at * 1000,
        "remaining": remaining,
    }


def _buddy(entry: BuddyEntry) -> dict[str, Any]:
    return {"user_id": entry.buddy, "state": entry.state, "display_name": "", "note": entry.note}

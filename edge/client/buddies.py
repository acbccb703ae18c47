"""The device's copy of its user's buddy list, kept in step with the login server.

Theory of operation
-------------------
The login server keeps one version counter per user: every change to the
user's list (a request, an acceptance, a removal, made from any device or by
the other side) adds one, and each entry remembers the version at which it
last changed. A device asks with BUDDY_SYNC ``since_version`` = the version it
holds, and gets one *answer*: one or more BUDDY_LIST messages that all carry
the same ``version`` (where the list stands after the answer) and ``full``
flag, the last with ``more = 0``.

- ``since = 0`` gets the whole list (``full = 1``), without tombstones;
- otherwise only the entries changed after ``since`` (``full = 0``), with
  removed ones as tombstones (state REMOVED).

:class:`BuddyCache` is the sans-IO core: :meth:`BuddyCache.apply` takes one
BUDDY_LIST body and returns the changes (:class:`BuddyAdded`,
:class:`BuddyChanged`, :class:`BuddyRemoved`) once an answer is complete.

- **Answers land whole.** Parts are staged apart from the cache until the
  part with ``more = 0`` arrives; only then are they applied, all at once.
  The version an answer carries is only true of the whole answer, so a part
  applied alone would claim a version whose other changes never arrived. A
  connection lost mid-answer leaves the cache as it was (:func:`sync` drops
  the staged parts; :meth:`BuddyCache.abandon` does it by hand). A part
  whose version or kind differs from the parts before it is an error.
- **Full answers replace, deltas patch.** A tombstone deletes; a tombstone
  for a buddy the cache does not hold changes nothing.
- **Versions never go backwards.** An answer older than the cache is read to
  its end and ignored: the cache already holds everything it says.
- **Caps.** At most :data:`MAX_BUDDIES` entries (a device short of memory may
  set a lower ``limit``). An answer that would take the cache past it raises
  :class:`TooManyBuddies` and changes nothing; it is refused as soon as that
  is certain, so staging never holds much more than the cap, whatever the
  server sends.

A delta is only right for the version it was asked from, and BUDDY_LIST does
not say which that was. The answer to a BUDDY_OP is a delta from just before
the operation, so a device whose cache is older (another change happened in
between) would skip changes if it applied it: :func:`buddy_op` reads that
answer, drops it, and syncs instead.

On disk (:func:`save`, :func:`load`) the cache is a small JSON file, written
atomically with mode 0600 and versioned by its ``format_version``. A device
starts from it, so it keeps working while the login server is unreachable; a
missing file is an empty cache, a corrupt one is reported
(:class:`CacheFileError`) and :func:`load_or_empty` lets the device start
empty with a warning, to be refilled by the next sync.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from edge.client.login import LoginSession
from edge.errors import LocalError, RemoteError
from edge.runtime.config import write_atomic
from edge.runtime.statefile import StateFileError, dump_document, load_document, read_capped
from edge.runtime.statefile import StateFileInvalid as _Invalid
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import (
    DETAIL_MAX,
    DISPLAY_NAME_MAX,
    USER_ID_MAX,
    BuddyOp,
    BuddyState,
)

MAX_BUDDIES = 10_000
"""Entries a cache holds at most; an answer that would go past it is refused."""

FILE_FORMAT = "edge buddy cache"
FILE_VERSION = 1
MAX_FILE_BYTES = 32 * 1024 * 1024
"""A cache file larger than this is corrupt: a full one is about 4 MiB, 20 MiB if
every text field were made of control characters (6 bytes each in JSON)."""

_VERSION_LIMIT = 1 << 64
"""Versions travel as u64."""

_STATES = {state.name: state for state in BuddyState if state is not BuddyState.REMOVED}
"""The states a cached entry can be in: REMOVED is a tombstone, never kept."""


# -- buddies and changes


@dataclass(frozen=True)
class Buddy:
    """One entry of the list: who, where the relationship stands, and texts shown."""

    user_id: str
    state: BuddyState
    display_name: str = ""
    note: str = ""
    """The text of a pending request (PENDING_IN, PENDING_OUT); empty otherwise."""


@dataclass(frozen=True)
class BuddyAdded:
    buddy: Buddy


@dataclass(frozen=True)
class BuddyChanged:
    before: Buddy
    after: Buddy


@dataclass(frozen=True)
class BuddyRemoved:
    buddy: Buddy
    """The entry as it was before it went away."""


Change = BuddyAdded | BuddyChanged | BuddyRemoved


# -- errors


class BuddyListError(RemoteError):
    """A BUDDY_LIST broke the rules; the cache is as it was before its answer began."""

    code = ErrorCode.MALFORMED


class TooManyBuddies(BuddyListError):
    """An answer would take the cache past its limit; nothing changed."""

    code = ErrorCode.OVERSIZED


class CacheFileError(StateFileError):
    """The cache file cannot be used; the message names the file and the problem."""

    kind = "buddy cache"


# -- the cache


@dataclass(frozen=True)
class _Part:
    """One BUDDY_LIST body, checked."""

    version: int
    since: int
    full: bool
    more: bool
    entries: tuple[Buddy, ...]


@dataclass
class _Answer:
    """An answer whose last part has not arrived yet."""

    version: int
    full: bool
    stale: bool
    """Older than the cache: read to the end, then ignored."""
    staged: dict[str, Buddy | None] = field(default_factory=dict)
    """What the answer says so far, by user id; None deletes a cached entry."""


class BuddyCache:
    """The device's buddy list and the version it is at; see the module docstring."""

    def __init__(
        self, version: int = 0, buddies: Iterable[Buddy] = (), *, limit: int = MAX_BUDDIES
    ) -> None:
        if not _is_version(version):
            raise LocalError(f"buddy cache: version {version!r} is not a u64")
        # Above MAX_BUDDIES, a saved cache would not load again.
        if not 0 < limit <= MAX_BUDDIES:
            raise LocalError(f"buddy cache: a limit of {limit} is not in 1..{MAX_BUDDIES}")
        entries: dict[str, Buddy] = {}
        for buddy in buddies:
            if buddy.user_id in entries or buddy.state is BuddyState.REMOVED:
                raise LocalError(f"buddy cache: {buddy!r} is a duplicate or a tombstone")
            entries[buddy.user_id] = buddy
        if len(entries) > limit:
            raise LocalError(f"buddy cache: {len(entries)} entries, at most {limit}")
        self.limit = limit
        """The most entries this cache holds; an answer going past it is refused."""
        self.version = version
        """The list version the cache holds: ``since_version`` for the next sync."""
        self._entries = entries
        self._answer: _Answer | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user_id: str) -> Buddy | None:
        return self._entries.get(user_id)

    def buddies(self) -> list[Buddy]:
        """Every entry, sorted by user id."""
        return sorted(self._entries.values(), key=_by_id)

    def in_state(self, state: BuddyState) -> list[Buddy]:
        """The entries in ``state``, sorted by user id."""
        return [buddy for buddy in self.buddies() if buddy.state is state]

    def accepted(self) -> list[Buddy]:
        """The user's buddies: both sides agreed."""
        return self.in_state(BuddyState.ACCEPTED)

    def pending_in(self) -> list[Buddy]:
        """Requests from others waiting for this user to accept or deny."""
        return self.in_state(BuddyState.PENDING_IN)

    @property
    def receiving(self) -> bool:
        """True while an answer is staged, waiting for its last part."""
        return self._answer is not None

    def abandon(self) -> None:
        """Drop the parts of an answer that will not be finished (lost connection)."""
        self._answer = None

    def apply(self, body: Mapping[str, Any]) -> list[Change]:
        """Take one BUDDY_LIST body; return the changes once its answer is complete.

        Returns ``[]`` for a part with ``more`` set, and for an answer older
        than the cache. Raises :class:`BuddyListError` (or
        :class:`TooManyBuddies`) and drops the staged parts when the answer
        cannot be used; the cache is then unchanged.
        """
        part = _read_part(body)
        answer = self._answer_for(part)
        try:
            self._stage(answer, part.entries)
        except BuddyListError:
            self._answer = None
            raise
        if part.more:
            self._answer = answer
            return []
        self._answer = None
        return [] if answer.stale else self._land(answer)

    def _answer_for(self, part: _Part) -> _Answer:
        answer = self._answer
        if answer is None:
            # A delta from after our version would skip changes between: unusable.
            gap = not part.full and part.since > self.version
            return _Answer(part.version, part.full, stale=part.version < self.version or gap)
        if (answer.version, answer.full) != (part.version, part.full):
            self._answer = None
            raise BuddyListError(
                f"BUDDY_LIST: a part of a {_kind(part.full)} at version {part.version} "
                f"inside a {_kind(answer.full)} at version {answer.version}"
            )
        return answer

    def _stage(self, answer: _Answer, entries: tuple[Buddy, ...]) -> None:
        if answer.stale:
            return
        staged = answer.staged
        for buddy in entries:
            # A later entry for the same buddy wins, as it would on the server.
            if buddy.state is not BuddyState.REMOVED:
                staged[buddy.user_id] = buddy
            elif not answer.full and buddy.user_id in self._entries:
                staged[buddy.user_id] = None
            else:
                staged.pop(buddy.user_id, None)  # nothing to delete
        # Every staged entry of a full answer stays; of a delta, at most the cached
        # ones go or change, so the rest are new and the list will hold at least
        # those: past this bound it would certainly exceed the cap.
        bound = self.limit if answer.full else self.limit + len(self._entries)
        if len(staged) > bound:
            raise TooManyBuddies(f"BUDDY_LIST: more than {self.limit} buddies")

    def _land(self, answer: _Answer) -> list[Change]:
        after: dict[str, Buddy] = {} if answer.full else dict(self._entries)
        for user_id, buddy in answer.staged.items():
            if buddy is None:
                del after[user_id]
            else:
                after[user_id] = buddy
        if len(after) > self.limit:
            raise TooManyBuddies(f"BUDDY_LIST: {len(after)} buddies, at most {self.limit}")
        changes = _diff(self._entries, after)
        self._entries, self.version = after, answer.version
        return changes


def _by_id(buddy: Buddy) -> str:
    return buddy.user_id


def _kind(full: bool) -> str:
    return "full list" if full else "delta"


def _is_version(value: object) -> TypeGuard[int]:
    # bool is an int in Python; true is not a version.
    return type(value) is int and 0 <= value < _VERSION_LIMIT


def _diff(before: Mapping[str, Buddy], after: Mapping[str, Buddy]) -> list[Change]:
    changes: list[Change] = []
    for user_id in sorted(before.keys() | after.keys()):
        old, new = before.get(user_id), after.get(user_id)
        if old is None and new is not None:
            changes.append(BuddyAdded(new))
        elif new is None and old is not None:
            changes.append(BuddyRemoved(old))
        elif old is not None and new is not None and old != new:
            changes.append(BuddyChanged(old, new))
    return changes


def _read_part(body: Mapping[str, Any]) -> _Part:
    try:
        version, since = body["version"], body["since_version"]
        full, more = body["full"], body["more"]
        entries = tuple(_read_entry(entry) for entry in body["entries"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BuddyListError(f"BUDDY_LIST: not a buddy list ({exc!r})") from None
    if not _is_version(version) or not _is_version(since) or since > version:
        raise BuddyListError(f"BUDDY_LIST: version {version!r} after {since!r}")
    if not isinstance(full, bool) or not isinstance(more, bool):
        raise BuddyListError(f"BUDDY_LIST: full {full!r}, more {more!r}")
    return _Part(version, since, full, more, entries)


def _read_entry(entry: Mapping[str, Any]) -> Buddy:
    user_id, name, note = entry["user_id"], entry["display_name"], entry["note"]
    if not (isinstance(user_id, str) and isinstance(name, str) and isinstance(note, str)):
        raise TypeError(f"entry {user_id!r}: user_id, display_name and note must be text")
    return Buddy(user_id, BuddyState(entry["state"]), name, note)


# -- talking to the login server


async def sync(session: LoginSession, cache: BuddyCache) -> list[Change]:
    """Bring ``cache`` up to the server's version; return what changed.

    Sends BUDDY_SYNC from ``cache.version`` and applies the answer, all of
    it or nothing: on a lost connection or a timeout the cache is as it
    was. An answer the cache refuses (:class:`BuddyListError`) is still read
    to its end, so the session stays in step for the next request.
    """
    cache.abandon()  # parts of an earlier, broken answer are not part of this one
    session.send(MsgType.BUDDY_SYNC, {"since_version": cache.version})
    try:
        return await _receive_answer(session, cache)
    except BaseException:
        cache.abandon()
        raise


async def buddy_op(
    session: LoginSession, cache: BuddyCache, op: BuddyOp, user_id: str, note: str = ""
) -> list[Change]:
    """Ask the server to change the list (request, accept, remove ...), then sync.

    The server's immediate answer is read and dropped (see the module
    docstring: it is a delta from a version the cache may not hold); the
    sync that follows returns every change, this one included. A refusal
    raises :class:`~edge.client.errors.ServerError` and leaves the cache as it was.
    """
    session.send(MsgType.BUDDY_OP, {"op": op, "user_id": user_id, "note": note})
    await _skip_answer(session)
    return await sync(session, cache)


async def _receive_answer(session: LoginSession, cache: BuddyCache) -> list[Change]:
    while True:
        body = (await session.receive(MsgType.BUDDY_LIST)).body
        try:
            changes = cache.apply(body)
        except BuddyListError:
            if body.more:
                await _skip_answer(session)
            raise
        if not body.more:
            return changes


async def _skip_answer(session: LoginSession) -> None:
    while (await session.receive(MsgType.BUDDY_LIST)).body.more:
        pass


# -- the cache file


def save(cache: BuddyCache, path: Path) -> None:
    """Write the cache (not a staged answer) to ``path``: atomically, mode 0600.

    Raises :class:`~edge.runtime.errors.AtomicWriteError`; the old file is then intact.
    """
    write_atomic(path, _encode_file(cache))


def load(path: Path) -> BuddyCache:
    """The cache saved at ``path``; an empty cache if there is no file.

    Raises :class:`CacheFileError` when the file cannot be read or is not a
    cache this version of edge understands.
    """
    raw = _read_file(path)
    if raw is None:
        return BuddyCache()
    try:
        return _decode_file(raw)
    except _Invalid as exc:
        raise CacheFileError(path, str(exc)) from None


def load_or_empty(path: Path) -> tuple[BuddyCache, str | None]:
    """The saved cache and no warning, or an empty cache and the warning to log.

    The empty cache has version 0, so the next sync fetches the whole list and
    the next save replaces the bad file.
    """
    try:
        return load(path), None
    except CacheFileError as exc:
        return BuddyCache(), f"{exc}; starting with an empty buddy list"


def _encode_file(cache: BuddyCache) -> bytes:
    buddies = [_buddy_json(buddy) for buddy in cache.buddies()]
    return dump_document(FILE_FORMAT, FILE_VERSION, {"version": cache.version, "buddies": buddies})


def _buddy_json(buddy: Buddy) -> dict[str, str]:
    return {
        "user_id": buddy.user_id,
        "state": buddy.state.name,
        "display_name": buddy.display_name,
        "note": buddy.note,
    }


def _read_file(path: Path) -> bytes | None:
    try:
        return read_capped(path, MAX_FILE_BYTES)
    except _Invalid as exc:
        raise CacheFileError(path, str(exc)) from exc


def _decode_file(raw: bytes) -> BuddyCache:
    return _cache_from(load_document(raw, "buddy cache", FILE_FORMAT, FILE_VERSION))


def _cache_from(document: dict[str, Any]) -> BuddyCache:
    version = document.get("version")
    if not _is_version(version):
        raise _Invalid(f"version {version!r} is not a whole number from 0 to 2^64 - 1")
    return BuddyCache(version, _buddies_from(document.get("buddies")))


def _buddies_from(items: object) -> list[Buddy]:
    if not isinstance(items, list):
        raise _Invalid("buddies: not a list")
    if len(items) > MAX_BUDDIES:
        raise _Invalid(f"buddies: {len(items)} entries, at most {MAX_BUDDIES}")
    buddies: dict[str, Buddy] = {}
    for i, item in enumerate(items):
        buddy = _buddy_from(item, f"buddies[{i}]")
        if buddy.user_id in buddies:
            raise _Invalid(f"buddies[{i}].user_id: {buddy.user_id!r} is listed twice")
        buddies[buddy.user_id] = buddy
    return list(buddies.values())


def _buddy_from(item: object, where: str) -> Buddy:
    if not isinstance(item, dict):
        raise _Invalid(f"{where}: not an object")
    name = item.get("state")
    state = _STATES.get(name) if isinstance(name, str) else None
    if state is None:
        raise _Invalid(f"{where}.state: {name!r} is not one of {', '.join(_STATES)}")
    user_id = _text(item, "user_id", USER_ID_MAX, where)
    if not user_id:
        raise _Invalid(f"{where}.user_id: empty")
    display_name = _text(item, "display_name", DISPLAY_NAME_MAX, where)
    return Buddy(user_id, state, display_name, _text(item, "note", DETAIL_MAX, where))


def _text(item: dict[str, object], key: str, cap: int, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise _Invalid(f"{where}.{key}: not text")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Invalid(f"{where}.{key}: not valid Unicode text") from None
    if size > cap:
        raise _Invalid(f"{where}.{key}: {size} bytes, at most {cap}")
    return value

"""The device's host cache: the supernodes it knows, best first.

Theory of operation
-------------------
A device keeps at most :data:`MAX_CAPACITY` (200) supernode addresses, as
Skype's host cache did. Entries come from three places (``source``): the
operator's configuration (``"config"``), the addresses shipped with the device
(``"bootstrap"``) and the lists supernodes hand out (``"supernode"``). The
login ladder asks :meth:`HostCache.ranked` (or :meth:`HostCache.best`) for the
order in which to try them, and reports each attempt back with
:meth:`HostCache.success` (with the round-trip time it measured) or
:meth:`HostCache.failure`.

The cache is sans-IO: every method that needs the time takes ``now``. Because
entries outlive a reboot, ``now`` is wall-clock time (UNIX seconds), not a
monotonic clock; a clock that steps back never makes an age negative.

Score
-----
:func:`score` rates an entry without randomness, higher is better::

    score = (3 * recent + 2 * speed + 1 * fresh) * 0.5 ** failures

    recent = 0.5 ** (since last success / 1 day)      0 if it never succeeded
    speed  = 1 / (1 + rtt / 0.1 s)                     0.25 while rtt is unknown (as if 300 ms)
    fresh  = 0.5 ** (since last seen / 7 days)

so a score lies between 0 and 6: a recent success counts most, then a short
round trip, then having been listed recently; each failure in a row since the
last success halves the whole.

:meth:`HostCache.ranked` is a weighted shuffle, so that devices spread over
supernodes that are about as good instead of all trying the same ones first:
the first entry is drawn with probability proportional to its weight
``score ** SHARPNESS`` (:data:`SHARPNESS` = 8), the second likewise among the
others, and so on. It is done in one sort, with Efraimidis and Spirakis's keys
``U ** (1 / weight)`` (U uniform from the caller's ``random.Random``), written
with logarithms as ``SHARPNESS * log(score) - log(-log(U))``. Equal entries
come first equally often; one with a score 10 % higher is 2.1 times as likely
to come first; one with twice the score, 256 times (a single failure).

Capacity and eviction
---------------------
When the cache is full, entries that have aged out (:data:`AGE_OUT_FAILURES`
failures in a row, and no success for :data:`AGE_OUT_AFTER` since the last
one or since first listed) go first. Then a new entry replaces the
lowest-scored entry only if it scores strictly better itself. An untried entry
scores 1.5 at most, so a flood of addresses from a supernode's lists cannot
push out a supernode that answered in the last day and has not failed since.
``"config"`` entries are never evicted nor aged out, and a new ``"config"``
entry always finds room by evicting the worst other entry.
Counters stop at :data:`MAX_COUNT`, the round-trip time at :data:`MAX_RTT`,
host text at :data:`MAX_HOST_BYTES`: nothing grows without bound.

On disk
-------
:func:`save` writes a small JSON document (``format``, ``format_version``,
``capacity``, ``entries``) atomically with mode 0600; :func:`load` refuses a
file that is not whole and valid with :class:`HostCacheFileError`, naming the
file and the problem, and :func:`load_or_empty` turns that into an empty cache
and a warning to log.
"""

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal, get_args

from edge.errors import LocalError, RemoteError
from edge.runtime.config import write_atomic
from edge.runtime.statefile import StateFileError, dump_document, load_document, read_capped
from edge.runtime.statefile import StateFileInvalid as _Invalid
from edge.sansio import Address
from edge.wire.codes import ErrorCode

Source = Literal["bootstrap", "supernode", "config"]
"""Where an entry came from."""

SOURCES: Final[tuple[Source, ...]] = get_args(Source)
_SOURCE_NAMES: Final[Mapping[str, Source]] = {name: name for name in SOURCES}
_RANK: Final[Mapping[Source, int]] = {"supernode": 0, "bootstrap": 1, "config": 2}
"""A key or source from a higher rank overrides one from a lower rank."""

MAX_CAPACITY: Final = 200
MAX_HOST_BYTES: Final = 255
NOISE_KEY_BYTES: Final = 32
MAX_COUNT: Final = 1_000_000
"""Success and failure counters stop here."""
MAX_RTT: Final = 60.0
"""Round-trip samples above this many seconds are taken as this."""
RTT_ALPHA: Final = 1 / 8
"""Weight of a new sample in the smoothed round-trip time (TCP's SRTT, RFC 6298)."""

SUCCESS_HALF_LIFE: Final = 24 * 3600.0
SEEN_HALF_LIFE: Final = 7 * 24 * 3600.0
RTT_REFERENCE: Final = 0.1
UNKNOWN_SPEED: Final = 0.25
"""An untried entry counts as a slow one, below supernodes that answered."""
SHARPNESS: Final = 8
"""The ranking draws entries with probability proportional to ``score ** SHARPNESS``."""
_TINY: Final = 1e-300
AGE_OUT_FAILURES: Final = 5
AGE_OUT_AFTER: Final = 7 * 24 * 3600.0

FILE_FORMAT: Final = "edge host cache"
FILE_VERSION: Final = 1
MAX_FILE_BYTES: Final = 1024 * 1024
"""A full cache is under 400 KiB even with every host at its cap and escaped."""


# -- errors


class BadHostEntry(RemoteError):
    """An address or key handed to :meth:`HostCache.learn` is not acceptable."""

    code = ErrorCode.MALFORMED


class HostCacheFileError(StateFileError):
    """The cache file cannot be used; the message names the file and the problem."""

    kind = "host cache"


# -- entries


@dataclass(frozen=True)
class Entry:
    """One supernode as the device knows it.

    ``noise_key`` is the supernode's Noise static key, ``b""`` while unknown.
    Times are wall-clock seconds; ``last_success`` is ``None`` until the first
    success. ``failures`` counts failures in a row since the last success.
    ``rtt`` is the smoothed round-trip time in seconds, ``None`` until measured.
    """

    address: Address
    noise_key: bytes
    first_seen: float
    last_seen: float
    last_success: float | None
    successes: int
    failures: int
    rtt: float | None
    source: Source


def score(entry: Entry, now: float) -> float:
    """How good ``entry`` is at ``now``, from 0 to 6; the formula is in the module doc."""
    if entry.last_success is None:
        recent = 0.0
    else:
        recent = _halved(_age(entry.last_success, now) / SUCCESS_HALF_LIFE)
    speed = UNKNOWN_SPEED if entry.rtt is None else 1 / (1 + entry.rtt / RTT_REFERENCE)
    fresh = _halved(_age(entry.last_seen, now) / SEEN_HALF_LIFE)
    return (3 * recent + 2 * speed + fresh) * _halved(min(entry.failures, 64))


def _halved(times: float) -> float:
    return math.pow(0.5, times)


def _shuffle_key(entry: Entry, now: float, rng: random.Random) -> float:
    exponential = max(-math.log(1.0 - rng.random()), _TINY)  # from (0, inf)
    return SHARPNESS * math.log(max(score(entry, now), _TINY)) - math.log(exponential)


def is_aged_out(entry: Entry, now: float) -> bool:
    """Whether ``entry`` failed too often in a row, with no success for too long."""
    if entry.source == "config" or entry.failures < AGE_OUT_FAILURES:
        return False
    since = entry.first_seen if entry.last_success is None else entry.last_success
    return _age(since, now) >= AGE_OUT_AFTER


def _age(then: float, now: float) -> float:
    return max(0.0, now - then)


def check_address(address: object) -> Address:
    """``address`` as a valid (host, port), or :class:`BadHostEntry` saying why."""
    if not isinstance(address, tuple) or len(address) != 2:
        raise BadHostEntry(f"address {address!r} is not a (host, port) pair")
    host, port = address
    if not isinstance(host, str) or not host:
        raise BadHostEntry(f"host {host!r} is not a non-empty text")
    try:
        size = len(host.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadHostEntry(f"host {host!r} is not valid Unicode text") from None
    if size > MAX_HOST_BYTES:
        raise BadHostEntry(f"host of {size} bytes, at most {MAX_HOST_BYTES}")
    if not host.isprintable() or any(c.isspace() for c in host):
        raise BadHostEntry(f"host {host!r} holds spaces or control characters")
    if type(port) is not int or not 1 <= port <= 65535:
        raise BadHostEntry(f"port {port!r} is not from 1 to 65535")
    return (host, port)


def _check_key(noise_key: object) -> bytes:
    if not isinstance(noise_key, bytes) or len(noise_key) not in (0, NOISE_KEY_BYTES):
        raise BadHostEntry(f"a Noise key must be {NOISE_KEY_BYTES} bytes (or b'' if unknown)")
    return noise_key


def _check_time(now: float) -> None:
    if not isinstance(now, int | float) or not math.isfinite(now):
        raise LocalError(f"host cache: time {now!r} is not a finite number")


# -- the cache


class HostCache:
    """At most ``capacity`` supernode entries, one per address."""

    def __init__(self, capacity: int = MAX_CAPACITY) -> None:
        if type(capacity) is not int or not 1 <= capacity <= MAX_CAPACITY:
            raise LocalError(f"host cache: a capacity of {capacity!r} is not in 1..{MAX_CAPACITY}")
        self.capacity = capacity
        self._entries: dict[Address, Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, address: object) -> bool:
        return address in self._entries

    def get(self, address: Address) -> Entry | None:
        return self._entries.get(address)

    def entries(self) -> list[Entry]:
        """Every entry, in the order they were first learned."""
        return list(self._entries.values())

    def learn(
        self,
        address: Address,
        now: float,
        *,
        noise_key: bytes = b"",
        source: Source = "supernode",
    ) -> Entry | None:
        """Note that ``address`` was listed at ``now``; the entry as kept, or
        ``None`` when the cache is full of better entries.

        A known address is refreshed: ``last_seen`` moves on, an unknown key is
        filled in, and a key from a higher-ranked source (config over bootstrap
        over supernode) or from the configuration replaces the one held, while
        a supernode's list never changes a known key. Raises
        :class:`BadHostEntry` for a bad address or key (from a supernode's list:
        skip that item and go on).
        """
        _check_time(now)
        address = check_address(address)
        noise_key = _check_key(noise_key)
        if source not in SOURCES:
            raise LocalError(f"host cache: source {source!r} is not one of {', '.join(SOURCES)}")
        old = self._entries.get(address)
        if old is not None:
            entry = _refreshed(old, now, noise_key, source)
        else:
            entry = Entry(address, noise_key, now, now, None, 0, 0, None, source)
            if len(self._entries) >= self.capacity and not self._make_room(entry, now):
                return None
        self._entries[address] = entry
        return entry

    def success(self, address: Address, rtt: float, now: float) -> Entry | None:
        """Record a successful contact that took ``rtt`` seconds; the updated
        entry, or ``None`` if the address is not in the cache (nothing happens)."""
        _check_time(now)
        if not isinstance(rtt, int | float) or not math.isfinite(rtt) or rtt < 0:
            raise LocalError(f"host cache: round-trip time {rtt!r} is not a finite number >= 0")
        old = self._entries.get(address)
        if old is None:
            return None
        sample = min(float(rtt), MAX_RTT)
        smoothed = sample if old.rtt is None else (1 - RTT_ALPHA) * old.rtt + RTT_ALPHA * sample
        entry = replace(
            old,
            last_seen=max(old.last_seen, now),
            last_success=now,
            successes=min(old.successes + 1, MAX_COUNT),
            failures=0,
            rtt=smoothed,
        )
        self._entries[address] = entry
        return entry

    def failure(self, address: Address, now: float) -> Entry | None:
        """Record a failed contact; the updated entry, or ``None`` if the address
        is not in the cache or has now aged out (and was removed)."""
        _check_time(now)
        old = self._entries.get(address)
        if old is None:
            return None
        entry = replace(old, failures=min(old.failures + 1, MAX_COUNT))
        if is_aged_out(entry, now):
            del self._entries[address]
            return None
        self._entries[address] = entry
        return entry

    def forget(self, address: Address) -> Entry | None:
        """Remove ``address``; the entry it had, or ``None``."""
        return self._entries.pop(address, None)

    def expire(self, now: float) -> list[Entry]:
        """Remove the entries that have aged out at ``now``, and return them."""
        _check_time(now)
        gone = [entry for entry in self._entries.values() if is_aged_out(entry, now)]
        for entry in gone:
            del self._entries[entry.address]
        return gone

    def ranked(self, now: float, rng: random.Random) -> list[Entry]:
        """Every entry, best first, in a weighted shuffle drawn from ``rng``: each
        place goes to one of the entries left with probability proportional to
        ``score ** SHARPNESS`` (see the module's opening comment)."""
        _check_time(now)
        keyed = [(_shuffle_key(entry, now, rng), entry) for entry in self._entries.values()]
        keyed.sort(key=lambda pair: (-pair[0], pair[1].address))
        return [entry for _, entry in keyed]

    def best(self, n: int, now: float, rng: random.Random) -> list[Entry]:
        """The first ``n`` entries of :meth:`ranked`."""
        if type(n) is not int or n < 0:
            raise LocalError(f"host cache: cannot take {n!r} entries")
        return self.ranked(now, rng)[:n]

    def _make_room(self, new: Entry, now: float) -> bool:
        self.expire(now)
        if len(self._entries) < self.capacity:
            return True
        candidates = [entry for entry in self._entries.values() if entry.source != "config"]
        if not candidates:
            if new.source == "config":
                raise LocalError(
                    f"host cache: more than {self.capacity} config entries; "
                    "the configuration must list fewer"
                )
            return False
        worst = min(candidates, key=lambda entry: (score(entry, now), entry.address))
        if new.source != "config" and score(new, now) <= score(worst, now):
            return False
        del self._entries[worst.address]
        return True


def _refreshed(old: Entry, now: float, noise_key: bytes, source: Source) -> Entry:
    key = old.noise_key
    overrides = _RANK[source] > _RANK[old.source] or source == "config"
    if noise_key and (not key or overrides):
        key = noise_key
    return replace(
        old,
        noise_key=key,
        last_seen=max(old.last_seen, now),
        source=max(source, old.source, key=_RANK.__getitem__),
    )


# -- the cache file


def save(cache: HostCache, path: Path) -> None:
    """Write ``cache`` to ``path``: atomically, mode 0600.

    Raises :class:`~edge.runtime.errors.AtomicWriteError`; the old file is then intact.
    """
    write_atomic(path, _encode(cache), 0o600)


def load(path: Path) -> HostCache:
    """The cache saved at ``path``; an empty cache if there is no file.

    Raises :class:`HostCacheFileError` when the file cannot be read or is not
    a whole host cache this version of edge understands.
    """
    raw = _read_file(path)
    if raw is None:
        return HostCache()
    try:
        return _decode(raw)
    except _Invalid as exc:
        raise HostCacheFileError(path, str(exc)) from None


def load_or_empty(path: Path) -> tuple[HostCache, str | None]:
    """The saved cache and no warning, or an empty cache and the warning to log.

    The device then falls back on its configured and bootstrap supernodes; the
    next save replaces the bad file.
    """
    try:
        return load(path), None
    except HostCacheFileError as exc:
        return HostCache(), f"{exc}; starting with an empty host cache"


def _encode(cache: HostCache) -> bytes:
    entries = [_entry_json(entry) for entry in cache.entries()]
    return dump_document(
        FILE_FORMAT, FILE_VERSION, {"capacity": cache.capacity, "entries": entries}
    )


def _entry_json(entry: Entry) -> dict[str, object]:
    return {
        "host": entry.address[0],
        "port": entry.address[1],
        "noise_key": entry.noise_key.hex(),
        "source": entry.source,
        "first_seen": entry.first_seen,
        "last_seen": entry.last_seen,
        "last_success": entry.last_success,
        "successes": entry.successes,
        "failures": entry.failures,
        "rtt": entry.rtt,
    }


def _read_file(path: Path) -> bytes | None:
    try:
        return read_capped(path, MAX_FILE_BYTES)
    except _Invalid as exc:
        raise HostCacheFileError(path, str(exc)) from exc


def _decode(raw: bytes) -> HostCache:
    return _cache_from(load_document(raw, "host cache", FILE_FORMAT, FILE_VERSION))


def _cache_from(document: dict[str, Any]) -> HostCache:
    capacity = document.get("capacity")
    if type(capacity) is not int or not 1 <= capacity <= MAX_CAPACITY:
        raise _Invalid(f"capacity {capacity!r} is not from 1 to {MAX_CAPACITY}")
    items = document.get("entries")
    if not isinstance(items, list):
        raise _Invalid("entries: not a list")
    if len(items) > capacity:
        raise _Invalid(f"entries: {len(items)} entries, at most {capacity}")
    cache = HostCache(capacity)
    for i, item in enumerate(items):
        entry = _entry_from(item, f"entries[{i}]")
        if entry.address in cache:
            raise _Invalid(f"entries[{i}]: {entry.address[0]}:{entry.address[1]} is listed twice")
        cache._entries[entry.address] = entry
    return cache


def _entry_from(item: object, where: str) -> Entry:
    if not isinstance(item, dict):
        raise _Invalid(f"{where}: not an object")
    try:
        address = check_address((item.get("host"), item.get("port")))
    except BadHostEntry as exc:
        raise _Invalid(f"{where}: {exc}") from None
    name = item.get("source")
    source = _SOURCE_NAMES.get(name) if isinstance(name, str) else None
    if source is None:
        raise _Invalid(f"{where}.source: {name!r} is not one of {', '.join(SOURCES)}")
    first_seen = _time(item, "first_seen", where)
    last_seen = _time(item, "last_seen", where)
    if last_seen < first_seen:
        raise _Invalid(f"{where}.last_seen: before first_seen")
    successes = _count(item, "successes", where)
    last_success = None if successes == 0 else _time(item, "last_success", where)
    if successes == 0 and item.get("last_success") is not None:
        raise _Invalid(f"{where}.last_success: set, but successes is 0")
    if last_success is not None and last_success > last_seen:
        raise _Invalid(f"{where}.last_success: after last_seen")
    rtt = None if successes == 0 else _number(item, "rtt", where, 0.0, MAX_RTT)
    if successes == 0 and item.get("rtt") is not None:
        raise _Invalid(f"{where}.rtt: set, but successes is 0")
    return Entry(
        address=address,
        noise_key=_key(item, where),
        first_seen=first_seen,
        last_seen=last_seen,
        last_success=last_success,
        successes=successes,
        failures=_count(item, "failures", where),
        rtt=rtt,
        source=source,
    )


def _key(item: dict[str, object], where: str) -> bytes:
    text = item.get("noise_key")
    if not isinstance(text, str) or len(text) not in (0, 2 * NOISE_KEY_BYTES):
        raise _Invalid(f"{where}.noise_key: not {NOISE_KEY_BYTES} bytes in hex (or empty)")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise _Invalid(f"{where}.noise_key: not hex") from None


def _time(item: dict[str, object], key: str, where: str) -> float:
    return _number(item, key, where, -math.inf, math.inf)


def _number(item: dict[str, object], key: str, where: str, low: float, high: float) -> float:
    value = item.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Invalid(f"{where}.{key}: {value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or not low <= number <= high:
        raise _Invalid(f"{where}.{key}: {value!r} is out of range")
    return number


def _count(item: dict[str, object], key: str, where: str) -> int:
    value = item.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
        raise _Invalid(f"{where}.{key}: {value!r} is not a whole number from 0 to {MAX_COUNT}")
    return value

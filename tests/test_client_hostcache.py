"""The device's host cache: ranking, spreading devices over supernodes, capacity
and eviction, ageing out, and a file that is private, checked on load and never
half-written, whatever point a save is interrupted at."""

import collections
import json
import os
import random
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.client.hostcache import (
    AGE_OUT_AFTER,
    AGE_OUT_FAILURES,
    MAX_CAPACITY,
    MAX_COUNT,
    MAX_FILE_BYTES,
    MAX_HOST_BYTES,
    MAX_RTT,
    NOISE_KEY_BYTES,
    SOURCES,
    BadHostEntry,
    Entry,
    HostCache,
    HostCacheFileError,
    Source,
    check_address,
    load,
    load_or_empty,
    save,
    score,
)
from edge.errors import LocalError
from edge.sansio import Address

T0 = 1_700_000_000.0
HOUR = 3600.0
DAY = 24 * HOUR
KEY = bytes(range(32))
OTHER_KEY = bytes(32)


def sn(i: int) -> Address:
    return (f"198.51.100.{i % 250 + 1}", 33000 + i)


def invariants(cache: HostCache) -> None:
    """What must hold of any cache, whatever was done to it."""
    entries = cache.entries()
    assert len(cache) == len(entries) <= cache.capacity <= MAX_CAPACITY
    assert len({entry.address for entry in entries}) == len(entries)
    for entry in entries:
        assert check_address(entry.address) == entry.address
        assert cache.get(entry.address) == entry
        assert len(entry.noise_key) in (0, NOISE_KEY_BYTES)
        assert entry.source in SOURCES
        assert entry.first_seen <= entry.last_seen
        assert 0 <= entry.successes <= MAX_COUNT and 0 <= entry.failures <= MAX_COUNT
        assert (entry.successes == 0) == (entry.last_success is None) == (entry.rtt is None)
        assert entry.last_success is None or entry.last_success <= entry.last_seen
        assert entry.rtt is None or 0 <= entry.rtt <= MAX_RTT


# -- ranking ----------------------------------------------------------------------------


def test_a_fresh_fast_successful_entry_beats_a_stale_one() -> None:
    cache = HostCache()
    cache.learn(sn(1), T0)
    cache.success(sn(1), 0.400, T0 + HOUR)  # slow, and last heard of weeks ago
    cache.learn(sn(2), T0 + 20 * DAY)
    cache.success(sn(2), 0.030, T0 + 20 * DAY)
    cache.learn(sn(3), T0 + 20 * DAY)  # listed today, never tried
    now = T0 + 20 * DAY + HOUR
    for seed in range(200):
        assert [e.address for e in cache.ranked(now, random.Random(seed))] == [sn(2), sn(3), sn(1)]


def test_failures_push_an_entry_down() -> None:
    cache = HostCache()
    for i in (1, 2):
        cache.learn(sn(i), T0)
        cache.success(sn(i), 0.050, T0)
    assert score(_get(cache, sn(1)), T0) == score(_get(cache, sn(2)), T0)
    cache.failure(sn(1), T0 + 1)
    assert score(_get(cache, sn(1)), T0 + 1) == pytest.approx(score(_get(cache, sn(2)), T0 + 1) / 2)
    cache.failure(sn(1), T0 + 2)
    firsts = {cache.best(1, T0 + 2, random.Random(seed))[0].address for seed in range(200)}
    assert firsts == {sn(2)}
    cache.success(sn(1), 0.050, T0 + 3)  # one success clears the run of failures
    assert _get(cache, sn(1)).failures == 0


def test_the_score_weighs_recent_success_then_speed_then_freshness() -> None:
    untried = Entry(sn(1), b"", T0, T0, None, 0, 0, None, "supernode")
    assert score(untried, T0) == pytest.approx(2 * 0.25 + 1)
    assert score(untried, T0 + 7 * DAY) == pytest.approx(2 * 0.25 + 0.5)
    answered = Entry(sn(1), b"", T0, T0, T0, 1, 0, 0.1, "supernode")
    assert score(answered, T0) == pytest.approx(3 + 2 * 0.5 + 1)
    assert score(answered, T0 + DAY) == pytest.approx(3 / 2 + 2 * 0.5 + 2 ** (-1 / 7))
    assert score(answered, T0 - DAY) == score(answered, T0)  # a clock stepping back


def test_the_smoothed_rtt_follows_tcp_srtt() -> None:
    cache = HostCache()
    cache.learn(sn(1), T0)
    assert _get(cache, sn(1)).rtt is None
    cache.success(sn(1), 0.080, T0)
    assert _get(cache, sn(1)).rtt == 0.080
    cache.success(sn(1), 0.160, T0 + 1)
    assert _get(cache, sn(1)).rtt == pytest.approx(0.080 * 7 / 8 + 0.160 / 8)
    cache.success(sn(1), 1e9, T0 + 2)  # capped, so one absurd sample cannot dominate
    assert _get(cache, sn(1)).rtt == pytest.approx(0.090 * 7 / 8 + MAX_RTT / 8)
    assert _get(cache, sn(1)).successes == 3


def first_pick_counts(caches: list[HostCache], now: float) -> collections.Counter[Address]:
    """Which supernode each simulated device tries first; device i uses seed i."""
    return collections.Counter(
        cache.best(1, now, random.Random(i))[0].address for i, cache in enumerate(caches)
    )


def test_the_shuffle_spreads_devices_over_equally_good_supernodes() -> None:
    # 1,000 devices learn the same 50 supernodes in the same order, each answering
    # in 50 ms: ranked by score alone, every device would pick the same first one.
    cache = HostCache()
    for i in range(50):
        cache.learn(sn(i), T0)
        cache.success(sn(i), 0.050, T0)
    counts = first_pick_counts([cache] * 1000, T0 + 60)
    assert len(counts) == 50
    assert max(counts.values()) <= 2 * 1000 / 50


def test_the_shuffle_spreads_devices_over_nearly_equal_supernodes() -> None:
    # The same, with round trips from 45 to 55 ms: ranked by score alone, the
    # fastest would take every device.
    cache = HostCache()
    for i in range(50):
        cache.learn(sn(i), T0)
        cache.success(sn(i), 0.045 + 0.010 * i / 49, T0)
    counts = first_pick_counts([cache] * 1000, T0 + 60)
    assert len(counts) == 50
    assert max(counts.values()) <= 2 * 1000 / 50


def test_best_takes_the_head_of_the_ranking() -> None:
    cache = HostCache()
    for i in range(10):
        cache.learn(sn(i), T0)
        cache.success(sn(i), 0.010 * (i + 1), T0)
    ranked = cache.ranked(T0, random.Random(7))
    assert cache.best(3, T0, random.Random(7)) == ranked[:3]
    assert cache.best(0, T0, random.Random(7)) == []
    assert cache.best(99, T0, random.Random(7)) == ranked
    with pytest.raises(LocalError):
        cache.best(-1, T0, random.Random(7))


# -- learning, capacity and eviction ----------------------------------------------------


def test_learning_again_refreshes_and_a_higher_source_overrides() -> None:
    cache = HostCache()
    cache.learn(sn(1), T0, source="supernode")
    cache.learn(sn(1), T0 + 10, noise_key=KEY)  # an unknown key is filled in
    assert (_get(cache, sn(1)).noise_key, _get(cache, sn(1)).last_seen) == (KEY, T0 + 10)
    cache.learn(sn(1), T0 + 5, noise_key=OTHER_KEY)  # a peer's list cannot change a key
    assert (_get(cache, sn(1)).noise_key, _get(cache, sn(1)).last_seen) == (KEY, T0 + 10)
    cache.learn(sn(1), T0 + 20, noise_key=OTHER_KEY, source="config")
    assert (_get(cache, sn(1)).noise_key, _get(cache, sn(1)).source) == (OTHER_KEY, "config")
    cache.learn(sn(1), T0 + 30, source="supernode")
    entry = _get(cache, sn(1))
    assert (entry.source, entry.first_seen, entry.last_seen) == ("config", T0, T0 + 30)


BAD_ADDRESSES: list[tuple[Any, str]] = [
    (("", 1), "host '' is not a non-empty text"),
    (("h" * (MAX_HOST_BYTES + 1), 1), "host of 256 bytes, at most 255"),
    (("é" * 128, 1), "host of 256 bytes, at most 255"),
    (("a b", 1), "host 'a b' holds spaces or control characters"),
    (("a\x00", 1), "host 'a\\x00' holds spaces or control characters"),
    (("\ud800", 1), "host '\\ud800' is not valid Unicode text"),
    (("host", 0), "port 0 is not from 1 to 65535"),
    (("host", 65536), "port 65536 is not from 1 to 65535"),
    (("host", True), "port True is not from 1 to 65535"),
    (("host", "80"), "port '80' is not from 1 to 65535"),
    (("host",), "address ('host',) is not a (host, port) pair"),
]


@pytest.mark.parametrize(("address", "problem"), BAD_ADDRESSES, ids=[p for _, p in BAD_ADDRESSES])
def test_a_bad_address_is_refused(address: Any, problem: str) -> None:
    cache = HostCache()
    with pytest.raises(BadHostEntry) as info:
        cache.learn(address, T0)
    assert str(info.value) == problem
    assert len(cache) == 0


def test_the_longest_host_and_extreme_ports_are_accepted() -> None:
    cache = HostCache()
    for address in [("h" * MAX_HOST_BYTES, 1), ("é" * 127, 65535), ("2001:db8::1", 443)]:
        assert cache.learn(address, T0) is not None
    with pytest.raises(BadHostEntry):
        cache.learn(sn(1), T0, noise_key=b"short")
    with pytest.raises(LocalError):
        cache.learn(sn(1), float("nan"))
    with pytest.raises(LocalError):
        cache.learn(sn(1), T0, source="rumour")  # type: ignore[arg-type]
    for capacity in (0, MAX_CAPACITY + 1):
        with pytest.raises(LocalError):
            HostCache(capacity)


def test_a_full_cache_replaces_its_worst_entry_only_with_a_better_one() -> None:
    cache = HostCache(capacity=3)
    for i in (1, 2, 3):
        cache.learn(sn(i), T0)
        cache.success(sn(i), 0.050, T0)
    cache.failure(sn(2), T0 + 1)  # now the worst
    # An untried entry scores below supernodes that answered, even one failure down.
    assert cache.learn(sn(4), T0 + 2) is None
    assert {e.address for e in cache.entries()} == {sn(1), sn(2), sn(3)}
    cache.failure(sn(2), T0 + 3)
    cache.failure(sn(2), T0 + 4)
    assert cache.learn(sn(4), T0 + 5) is not None
    assert {e.address for e in cache.entries()} == {sn(1), sn(3), sn(4)}


def test_config_entries_are_never_evicted() -> None:
    cache = HostCache(capacity=3)
    cache.learn(sn(1), T0, source="config")
    for i in (2, 3):
        cache.learn(sn(i), T0)
        cache.success(sn(i), 0.010, T0)
    for i in range(10):  # failing badly, for a long time: still kept
        cache.failure(sn(1), T0 + i * 10 * DAY)
    for i in range(4, 100):
        cache.learn(sn(i), T0 + 100 * DAY)
        cache.success(sn(i), 0.010, T0 + 100 * DAY)
    assert sn(1) in cache and len(cache) == 3
    assert cache.learn(sn(100), T0 + 100 * DAY, source="config") is not None  # always fits
    assert cache.learn(sn(101), T0 + 100 * DAY, source="config") is not None
    assert {e.source for e in cache.entries()} == {"config"}
    assert cache.learn(sn(102), T0 + 100 * DAY) is None
    with pytest.raises(LocalError):
        cache.learn(sn(103), T0 + 100 * DAY, source="config")
    assert len(cache) == 3


def test_entries_failing_in_a_row_for_a_long_time_age_out() -> None:
    cache = HostCache()
    cache.learn(sn(1), T0)
    cache.success(sn(1), 0.05, T0)
    cache.learn(sn(2), T0)
    for i in range(AGE_OUT_FAILURES - 1):
        cache.failure(sn(1), T0 + AGE_OUT_AFTER + i)
    assert cache.expire(T0 + 10 * AGE_OUT_AFTER) == []  # not enough failures yet
    assert cache.failure(sn(1), T0 + AGE_OUT_AFTER - 1) is not None  # not long enough yet
    assert cache.failure(sn(1), T0 + AGE_OUT_AFTER) is None  # now it goes
    assert sn(1) not in cache
    for i in range(AGE_OUT_FAILURES):
        cache.failure(sn(2), T0 + i)
    assert cache.expire(T0 + AGE_OUT_AFTER - 1) == []
    assert [e.address for e in cache.expire(T0 + AGE_OUT_AFTER)] == [sn(2)]
    assert len(cache) == 0


def test_unknown_addresses_are_ignored_and_forget_removes() -> None:
    cache = HostCache()
    assert cache.success(sn(1), 0.05, T0) is None
    assert cache.failure(sn(1), T0) is None
    assert cache.forget(sn(1)) is None
    cache.learn(sn(1), T0)
    assert cache.forget(sn(1)) is not None
    assert len(cache) == 0
    cache.learn(sn(1), T0)
    for rtt in (-0.1, float("inf")):
        with pytest.raises(LocalError):
            cache.success(sn(1), rtt, T0)


ADDRESSES = st.sampled_from([sn(i) for i in range(12)])
TIME_STEPS = st.floats(-HOUR, 10 * DAY)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("learn"),
            ADDRESSES,
            TIME_STEPS,
            st.sampled_from([b"", KEY, OTHER_KEY]),
            st.sampled_from(SOURCES),
        ),
        st.tuples(st.just("success"), ADDRESSES, TIME_STEPS, st.floats(0, 2 * MAX_RTT)),
        st.tuples(st.just("failure"), ADDRESSES, TIME_STEPS),
        st.tuples(st.just("forget"), ADDRESSES),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), OPERATIONS)
def test_any_sequence_keeps_the_cache_within_its_invariants(
    capacity: int, operations: list[tuple[Any, ...]]
) -> None:
    cache = HostCache(capacity)
    now = T0
    configured: set[Address] = set()
    for operation in operations:
        if operation[0] == "forget":
            cache.forget(operation[1])
            configured.discard(operation[1])
            continue
        now += operation[2]
        _apply(cache, operation, now, configured)
        invariants(cache)
        assert configured <= {e.address for e in cache.entries()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hostcache.json"
        save(cache, path)
        loaded = load(path)
    assert (loaded.capacity, loaded.entries()) == (cache.capacity, cache.entries())


def _apply(
    cache: HostCache, operation: tuple[Any, ...], now: float, configured: set[Address]
) -> None:
    kind, address = operation[0], operation[1]
    if kind == "success":
        cache.success(address, operation[3], now)
    elif kind == "failure":
        cache.failure(address, now)
    else:
        source: Source = operation[4]
        full = len(cache) == cache.capacity and address not in cache
        try:
            kept = cache.learn(address, now, noise_key=operation[3], source=source)
        except LocalError:
            assert full and source == "config"
            assert {e.source for e in cache.entries()} == {"config"}
            return
        assert kept is not None or (full and source != "config")
        if source == "config":
            configured.add(address)


def _get(cache: HostCache, address: Address) -> Entry:
    entry = cache.get(address)
    assert entry is not None
    return entry


# -- the file ---------------------------------------------------------------------------


def sample_cache(size: int = 5) -> HostCache:
    cache = HostCache()
    for i in range(size):
        address = sn(i)
        cache.learn(address, T0 + i, noise_key=KEY if i % 2 else b"", source=SOURCES[i % 3])
        if i % 3:
            cache.success(address, 0.01 * i, T0 + i + 0.5)
        if i % 4 == 0:
            cache.failure(address, T0 + i + 0.7)
    return cache


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    cache = sample_cache()
    cache.learn(("sn.exemple.fr", 443), T0, source="config")
    path = tmp_path / "hostcache.json"
    save(cache, path)
    loaded = load(path)
    assert (loaded.capacity, loaded.entries()) == (cache.capacity, cache.entries())
    stored = json.loads(path.read_text("utf-8"))
    assert (stored["format"], stored["format_version"]) == ("edge host cache", 1)
    assert stored["entries"][1]["noise_key"] == KEY.hex()


def test_a_missing_file_is_an_empty_cache(tmp_path: Path) -> None:
    cache, warning = load_or_empty(tmp_path / "never-saved.json")
    assert (len(cache), cache.capacity, warning) == (0, MAX_CAPACITY, None)


def test_the_file_is_private_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "hostcache.json"
    path.write_text("an older file, readable by all")
    path.chmod(0o644)
    save(sample_cache(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostcache.json"]
    assert load(path).entries() == sample_cache().entries()


def document(**fields: Any) -> bytes:
    doc = {"format": "edge host cache", "format_version": 1, "capacity": 200, "entries": []}
    return json.dumps({**doc, **fields}).encode()


def item(**fields: Any) -> dict[str, Any]:
    base = {
        "host": "192.0.2.1",
        "port": 33033,
        "noise_key": "",
        "source": "supernode",
        "first_seen": T0,
        "last_seen": T0,
        "last_success": T0,
        "successes": 1,
        "failures": 0,
        "rtt": 0.05,
    }
    return {**base, **fields}


def entries(*items: dict[str, Any]) -> bytes:
    return document(entries=list(items))


NOT_A_SOURCE = "is not one of bootstrap, supernode, config"
NOT_A_COUNT = "is not a whole number from 0 to 1000000"
CORRUPT = [
    (b"", "not JSON (Expecting value: line 1 column 1 (char 0))"),
    (document()[:40], "not JSON (Unterminated string starting at: line 1 column 31 (char 30))"),
    (b"\xff\xfe{}", "not UTF-8 (byte 0)"),
    (b"[]", 'not a host cache (no "format": "edge host cache")'),
    (document(format="edge buddy cache"), 'not a host cache (no "format": "edge host cache")'),
    (document(format_version=2), "format_version 2 is unknown (expected 1)"),
    (document(format_version=True), "format_version True is unknown (expected 1)"),
    (document(capacity=0), "capacity 0 is not from 1 to 200"),
    (document(capacity=201), "capacity 201 is not from 1 to 200"),
    (document(entries={}), "entries: not a list"),
    (document(capacity=1, entries=[item(), item(port=1)]), "entries: 2 entries, at most 1"),
    (document(entries=["x"]), "entries[0]: not an object"),
    (entries(item(), item()), "entries[1]: 192.0.2.1:33033 is listed twice"),
    (entries(item(host="")), "entries[0]: host '' is not a non-empty text"),
    (entries(item(host="h" * 256)), "entries[0]: host of 256 bytes, at most 255"),
    (entries(item(port=70000)), "entries[0]: port 70000 is not from 1 to 65535"),
    (entries(item(port=None)), "entries[0]: port None is not from 1 to 65535"),
    (entries(item(source="rumour")), f"entries[0].source: 'rumour' {NOT_A_SOURCE}"),
    (entries(item(noise_key="ab")), "entries[0].noise_key: not 32 bytes in hex (or empty)"),
    (entries(item(noise_key="zz" * 32)), "entries[0].noise_key: not hex"),
    (entries(item(first_seen="yesterday")), "entries[0].first_seen: 'yesterday' is not a number"),
    (entries(item(first_seen=True)), "entries[0].first_seen: True is not a number"),
    (entries(item(last_seen=10**400)), f"entries[0].last_seen: {10**400!r} is out of range"),
    (entries(item(last_seen=T0 - 1)), "entries[0].last_seen: before first_seen"),
    (entries(item(last_success=T0 + 1)), "entries[0].last_success: after last_seen"),
    (entries(item(last_success=None)), "entries[0].last_success: None is not a number"),
    (entries(item(successes=0)), "entries[0].last_success: set, but successes is 0"),
    (entries(item(successes=-1)), f"entries[0].successes: -1 {NOT_A_COUNT}"),
    (entries(item(failures=1.5)), f"entries[0].failures: 1.5 {NOT_A_COUNT}"),
    (entries(item(rtt=-0.1)), "entries[0].rtt: -0.1 is out of range"),
    (entries(item(rtt=61)), "entries[0].rtt: 61 is out of range"),
    (entries(item(successes=0, last_success=None)), "entries[0].rtt: set, but successes is 0"),
    (entries(item()).replace(b"0.05", b"NaN"), "not JSON (NaN is not a number)"),
    (entries(item()).replace(b"0.05", b"1e400"), "entries[0].rtt: inf is out of range"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "problem"), CORRUPT, ids=[p for _, p in CORRUPT])
def test_a_corrupt_file_is_reported_and_the_device_starts_empty(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "hostcache.json"
    path.write_bytes(content)
    with pytest.raises(HostCacheFileError) as info:
        load(path)
    assert str(info.value) == f"host cache {path}: {problem}"
    assert (info.value.path, info.value.problem) == (path, problem)
    cache, warning = load_or_empty(path)
    assert len(cache) == 0
    assert warning == f"host cache {path}: {problem}; starting with an empty host cache"


def test_counters_stop_at_their_cap(tmp_path: Path) -> None:
    path = tmp_path / "hostcache.json"
    worn = item(source="config", successes=MAX_COUNT, failures=MAX_COUNT)
    path.write_bytes(entries(worn, item(port=1, successes=MAX_COUNT)))
    cache = load(path)
    assert _get(cache, ("192.0.2.1", 33033)).failures == MAX_COUNT
    assert cache.failure(("192.0.2.1", 33033), T0 + 1) == _get(cache, ("192.0.2.1", 33033))
    assert _get(cache, ("192.0.2.1", 33033)).failures == MAX_COUNT
    assert _get(cache, ("192.0.2.1", 1)).successes == MAX_COUNT
    cache.success(("192.0.2.1", 1), 0.05, T0 + 1)
    assert _get(cache, ("192.0.2.1", 1)).successes == MAX_COUNT
    save(cache, path)
    assert load(path).entries() == cache.entries()


def test_a_file_cut_short_anywhere_is_reported(tmp_path: Path) -> None:
    whole = tmp_path / "whole.json"
    save(sample_cache(), whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.json"
    for size in range(len(data.rstrip()) - 1, -1, -1):  # every size without the last "}"
        cut.write_bytes(data[:size])
        with pytest.raises(HostCacheFileError) as info:
            load(cut)
        assert info.value.problem.startswith("not JSON ("), size
    assert load(whole).entries() == sample_cache().entries()


def test_a_file_too_large_or_unreadable_is_reported(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    with huge.open("wb") as stream:
        stream.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(HostCacheFileError) as info:
        load(huge)
    assert info.value.problem == f"larger than {MAX_FILE_BYTES} bytes"
    with pytest.raises(HostCacheFileError) as info:
        load(tmp_path)
    assert info.value.problem == "cannot read it: Is a directory"


def test_a_full_cache_of_the_longest_hosts_fits_the_file_cap(tmp_path: Path) -> None:
    cache = HostCache()
    for i in range(MAX_CAPACITY):
        host = "\\" * 248 + f"{i:07d}"  # 255 bytes, each backslash escaped as two
        cache.learn((host, 1 + i), T0, noise_key=KEY)
        cache.success((host, 1 + i), 0.05, T0)
    path = tmp_path / "hostcache.json"
    save(cache, path)
    assert path.stat().st_size < MAX_FILE_BYTES
    assert load(path).entries() == cache.entries()


FAILING_SAVE = """
import resource, signal, sys
from pathlib import Path
from edge.client.hostcache import HostCache, save
from edge.runtime.errors import AtomicWriteError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
big = HostCache()
for i in range(200):
    big.learn((f"supernode-{i:03d}.{'x' * 200}.example", 40000 + i), 1.8e9, noise_key=bytes(32))
try:
    save(big, Path(sys.argv[1]))
except AtomicWriteError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.mark.parametrize("limit", [1, 100, 4096, 20_000, 60_000])
def test_a_save_cut_off_at_any_point_keeps_the_old_file(tmp_path: Path, limit: int) -> None:
    # The kernel refuses to grow a file past RLIMIT_FSIZE (even for root): the
    # new file (about 64 KB) is cut short at ``limit`` bytes, and the old one
    # must still load.
    path = tmp_path / "hostcache.json"
    save(sample_cache(), path)
    result = subprocess.run(
        [sys.executable, "-c", FAILING_SAVE, str(path), str(limit)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == f"{path}: cannot write: File too large"
    assert load(path).entries() == sample_cache().entries()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostcache.json"]


def test_the_failing_save_would_have_written_more_than_every_limit(tmp_path: Path) -> None:
    # Without a limit the same script succeeds: so each limit above really cut it.
    path = tmp_path / "hostcache.json"
    result = subprocess.run(
        [sys.executable, "-c", FAILING_SAVE, str(path), "-1"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 0, result.stderr
    assert path.stat().st_size > 60_000
    assert len(load(path)) == 200


def test_a_temporary_file_left_by_a_crash_does_not_confuse_load(tmp_path: Path) -> None:
    path = tmp_path / "hostcache.json"
    save(sample_cache(), path)
    leftover = tmp_path / ".hostcache.json.0123456789ab.tmp"
    leftover.write_bytes(path.read_bytes()[:50])  # a crash in mid-write
    assert load(path).entries() == sample_cache().entries()
    assert load_or_empty(path)[1] is None
    save(sample_cache(3), path)  # the next save goes through
    assert load(path).entries() == sample_cache(3).entries()

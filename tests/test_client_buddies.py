"""The device's buddy-list cache: answers land whole or not at all, versions never go
back, the file is private and never half-written; then end to end against a real
login server on SQLite and PostgreSQL, down to working from the cache while the
server is gone."""

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from edge.client.buddies import (
    MAX_BUDDIES,
    MAX_FILE_BYTES,
    Buddy,
    BuddyAdded,
    BuddyCache,
    BuddyChanged,
    BuddyListError,
    BuddyRemoved,
    CacheFileError,
    TooManyBuddies,
    buddy_op,
    load,
    load_or_empty,
    save,
    sync,
)
from edge.client.errors import LoginUnreachable, ServerError
from edge.errors import LocalError
from edge.login.passwords import Passwords
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import BUDDY_ENTRIES_MAX, BuddyOp, BuddyState, decode, encode
from tests.test_login_server import CHEAP, World, device, run_uv, world

PENDING_OUT, PENDING_IN, ACCEPTED, BLOCKED, REMOVED = (
    BuddyState.PENDING_OUT,
    BuddyState.PENDING_IN,
    BuddyState.ACCEPTED,
    BuddyState.BLOCKED,
    BuddyState.REMOVED,
)


def buddy(user_id: str, state: BuddyState = ACCEPTED, note: str = "") -> Buddy:
    return Buddy(user_id, state, "", note)


def listing(
    version: int, *entries: Buddy, full: bool = False, more: bool = False, since: int = 0
) -> Any:
    """One BUDDY_LIST body as a device gets it: through the codec."""
    body = {
        "version": version,
        "since_version": since,
        "full": full,
        "more": more,
        "entries": [asdict(e) for e in entries],
    }
    return decode(encode(MsgType.BUDDY_LIST, body)).body


def answer(version: int, entries: list[Buddy], *, full: bool) -> list[Any]:
    """A whole answer cut into messages as the login server cuts it."""
    size = BUDDY_ENTRIES_MAX
    chunks = [entries[i : i + size] for i in range(0, len(entries), size)] or [[]]
    last = len(chunks) - 1
    return [listing(version, *chunk, full=full, more=n < last) for n, chunk in enumerate(chunks)]


def users(count: int, prefix: str = "user") -> list[Buddy]:
    return [buddy(f"{prefix}{i:05}") for i in range(count)]


def filled(version: int, entries: list[Buddy]) -> BuddyCache:
    cache = BuddyCache()
    for part in answer(version, entries, full=True):
        cache.apply(part)
    assert (cache.version, len(cache)) == (version, len(entries))
    return cache


ALICE = buddy("alice")
BOB_ASKS = buddy("bob", PENDING_IN, "hi, it's Bob")


# -- applying answers -------------------------------------------------------------------


def test_a_full_list_then_deltas() -> None:
    cache = BuddyCache()
    assert cache.apply(listing(3, BOB_ASKS, ALICE, full=True)) == [
        BuddyAdded(ALICE),
        BuddyAdded(BOB_ASKS),
    ]
    assert (cache.version, cache.accepted(), cache.pending_in()) == (3, [ALICE], [BOB_ASKS])
    bob, carol = buddy("bob"), buddy("carol", PENDING_OUT, "hello")
    assert cache.apply(listing(5, carol, bob)) == [BuddyChanged(BOB_ASKS, bob), BuddyAdded(carol)]
    assert (cache.version, cache.accepted(), cache.pending_in()) == (5, [ALICE, bob], [])
    assert cache.get("carol") == carol
    assert cache.get("nobody") is None


def test_tombstones_delete() -> None:
    cache = filled(2, [ALICE, BOB_ASKS])
    # A tombstone for someone the cache never held changes nothing.
    changes = cache.apply(listing(4, buddy("alice", REMOVED), buddy("zoe", REMOVED)))
    assert changes == [BuddyRemoved(ALICE)]
    assert (cache.version, cache.buddies()) == (4, [BOB_ASKS])


def test_a_full_list_replaces_everything() -> None:
    cache = filled(2, [ALICE, BOB_ASKS])
    bob, carol = buddy("bob"), buddy("carol", BLOCKED)
    # The server leaves tombstones out of full lists; one that came anyway is no entry.
    changes = cache.apply(listing(9, carol, buddy("dave", REMOVED), bob, full=True))
    assert changes == [BuddyRemoved(ALICE), BuddyChanged(BOB_ASKS, bob), BuddyAdded(carol)]
    assert (cache.version, cache.buddies()) == (9, [bob, carol])


def test_an_older_answer_is_ignored() -> None:
    cache = filled(5, [ALICE])
    assert cache.apply(listing(4, buddy("alice", REMOVED))) == []
    for part in answer(3, users(200), full=True):
        assert cache.apply(part) == []
    assert (cache.version, cache.buddies(), cache.receiving) == (5, [ALICE], False)
    assert cache.apply(listing(5, ALICE)) == []  # the same version again: no news


@pytest.mark.parametrize("full", [True, False], ids=["full", "delta"])
def test_an_answer_in_parts_lands_only_with_its_last_part(full: bool) -> None:
    old = buddy("old")
    cache = filled(1, [old])
    many = users(2 * BUDDY_ENTRIES_MAX + 1)
    parts = answer(7, many, full=full)
    assert len(parts) == 3
    for part in parts[:-1]:
        assert cache.apply(part) == []
        assert cache.receiving
        assert (cache.version, cache.buddies()) == (1, [old])
    landed = cache.apply(parts[-1])
    assert landed == ([BuddyRemoved(old)] if full else []) + [BuddyAdded(b) for b in many]
    assert (cache.version, cache.buddies()) == (7, many if full else [old, *many])
    assert not cache.receiving


def test_a_cut_answer_leaves_the_cache_as_it_was() -> None:
    cache = filled(2, [ALICE])
    for part in answer(7, users(300), full=True)[:-1]:
        cache.apply(part)
    cache.abandon()  # the connection went down before the last part
    assert (cache.version, cache.buddies(), cache.receiving) == (2, [ALICE], False)
    # The next answer starts afresh: nothing of the cut one comes with it.
    bob = buddy("bob")
    assert cache.apply(listing(7, bob, full=True)) == [BuddyRemoved(ALICE), BuddyAdded(bob)]
    assert cache.buddies() == [bob]


@pytest.mark.parametrize(
    ("second", "problem"),
    [
        (
            listing(8, buddy("carol"), full=True),
            "a part of a full list at version 8 inside a full list at version 7",
        ),
        (
            listing(7, buddy("carol")),
            "a part of a delta at version 7 inside a full list at version 7",
        ),
    ],
    ids=["version", "kind"],
)
def test_parts_that_disagree_are_refused(second: Any, problem: str) -> None:
    cache = filled(2, [ALICE])
    cache.apply(listing(7, buddy("bob"), full=True, more=True))
    with pytest.raises(BuddyListError) as info:
        cache.apply(second)
    assert str(info.value) == f"BUDDY_LIST: {problem}"
    assert info.value.code is ErrorCode.MALFORMED
    assert (cache.version, cache.buddies(), cache.receiving) == (2, [ALICE], False)


def test_a_body_that_is_not_a_buddy_list_is_refused() -> None:
    cache = filled(2, [ALICE])
    bad_state = {"user_id": "x", "state": 9, "display_name": "", "note": ""}
    for body in (
        {"version": 3, "full": False, "more": False},
        {"version": 3, "full": False, "more": False, "entries": [bad_state]},
        {"version": -1, "full": False, "more": False, "entries": []},
        {"version": 3, "full": 1, "more": False, "entries": []},
    ):
        with pytest.raises(BuddyListError):
            cache.apply(body)
    assert (cache.version, cache.buddies()) == (2, [ALICE])


def test_misuse_of_the_constructor_is_a_local_error() -> None:
    for version, entries, limit in (
        (-1, [], MAX_BUDDIES),
        (1, [ALICE, ALICE], MAX_BUDDIES),
        (1, [buddy("alice", REMOVED)], MAX_BUDDIES),
        (1, [ALICE, BOB_ASKS], 1),
        (1, [], 0),
        (1, [], MAX_BUDDIES + 1),
    ):
        with pytest.raises(LocalError):
            BuddyCache(version, entries, limit=limit)
    assert BuddyCache(1, [ALICE], limit=1).buddies() == [ALICE]


# -- the cap ----------------------------------------------------------------------------


def test_a_full_list_over_the_cap_is_refused_as_soon_as_it_is_certain() -> None:
    cache = filled(2, [ALICE])
    parts = answer(3, users(MAX_BUDDIES + 200), full=True)
    crossing = MAX_BUDDIES // BUDDY_ENTRIES_MAX  # the part that brings more than the cap
    assert crossing < len(parts) - 1
    for part in parts[:crossing]:
        assert cache.apply(part) == []
    with pytest.raises(TooManyBuddies) as info:
        cache.apply(parts[crossing])
    assert info.value.code is ErrorCode.OVERSIZED
    assert (cache.version, cache.buddies(), cache.receiving) == (2, [ALICE], False)


def test_a_delta_over_the_cap_is_refused_and_one_at_the_cap_lands() -> None:
    full = users(MAX_BUDDIES)
    cache = filled(2, full)
    with pytest.raises(TooManyBuddies) as info:
        cache.apply(listing(3, buddy("one-more")))
    assert str(info.value) == f"BUDDY_LIST: {MAX_BUDDIES + 1} buddies, at most {MAX_BUDDIES}"
    assert (cache.version, len(cache)) == (2, MAX_BUDDIES)
    gone = buddy(full[0].user_id, REMOVED)
    changes = cache.apply(listing(3, gone, buddy("one-more")))
    assert changes == [BuddyAdded(buddy("one-more")), BuddyRemoved(full[0])]
    assert (cache.version, len(cache)) == (3, MAX_BUDDIES)


def test_tombstones_of_strangers_do_not_count_against_the_cap() -> None:
    # A device away while its user added and removed many people gets many tombstones.
    cache = filled(2, [ALICE])
    strangers = [buddy(b.user_id, REMOVED) for b in users(MAX_BUDDIES + 5, "gone")]
    carol = buddy("carol")
    changes: list[Any] = []
    for part in answer(9, [*strangers, carol], full=False):
        changes += cache.apply(part)
    assert changes == [BuddyAdded(carol)]
    assert (cache.version, cache.buddies()) == (9, [ALICE, carol])


# -- the file ---------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    entries = [
        Buddy("alice", ACCEPTED, "Alice Été", ""),
        Buddy("bob", PENDING_IN, "", "salut, c'est Bob \u263a"),
        Buddy("chloé", BLOCKED, "", ""),
        Buddy("dan", PENDING_OUT, "Dan", "let's talk"),
    ]
    cache = filled(12, entries)
    cache.apply(listing(13, buddy("eve"), more=True))  # staged, not landed: not saved
    path = tmp_path / "buddies.json"
    save(cache, path)
    loaded = load(path)
    assert (loaded.version, loaded.buddies()) == (12, entries)
    assert json.loads(path.read_text("utf-8"))["buddies"][2]["state"] == "BLOCKED"


def test_a_missing_file_is_an_empty_cache(tmp_path: Path) -> None:
    cache, warning = load_or_empty(tmp_path / "never-saved.json")
    assert (cache.version, len(cache), warning) == (0, 0, None)


def document(**fields: Any) -> bytes:
    doc = {"format": "edge buddy cache", "format_version": 1, "version": 4, "buddies": []}
    return json.dumps({**doc, **fields}).encode()


def entry(**fields: Any) -> dict[str, Any]:
    return {"user_id": "alice", "state": "ACCEPTED", "display_name": "", "note": "", **fields}


NOT_A_STATE = "is not one of PENDING_OUT, PENDING_IN, ACCEPTED, BLOCKED"
CORRUPT = [
    (b"", "not JSON (Expecting value: line 1 column 1 (char 0))"),
    (document()[:40], "not JSON (Unterminated string starting at: line 1 column 32 (char 31))"),
    (b"\xff\xfe{}", "not UTF-8 (byte 0)"),
    (b"[]", 'not a buddy cache (no "format": "edge buddy cache")'),
    (document(format="something else"), 'not a buddy cache (no "format": "edge buddy cache")'),
    (document(format_version=2), "format_version 2 is unknown (expected 1)"),
    (document(format_version=True), "format_version True is unknown (expected 1)"),
    (document(version=-1), "version -1 is not a whole number from 0 to 2^64 - 1"),
    (document(version=1 << 64), f"version {1 << 64} is not a whole number from 0 to 2^64 - 1"),
    (document(version="4"), "version '4' is not a whole number from 0 to 2^64 - 1"),
    (document().replace(b'"version": 4', b'"version": NaN'), "not JSON (NaN is not a number)"),
    (document(buddies={}), "buddies: not a list"),
    (document(buddies=[["alice"]]), "buddies[0]: not an object"),
    (document(buddies=[entry(state="FRIEND")]), f"buddies[0].state: 'FRIEND' {NOT_A_STATE}"),
    (document(buddies=[entry(state="REMOVED")]), f"buddies[0].state: 'REMOVED' {NOT_A_STATE}"),
    (document(buddies=[entry(state=3)]), f"buddies[0].state: 3 {NOT_A_STATE}"),
    (document(buddies=[entry(), entry()]), "buddies[1].user_id: 'alice' is listed twice"),
    (document(buddies=[entry(user_id="")]), "buddies[0].user_id: empty"),
    (document(buddies=[{"state": "ACCEPTED"}]), "buddies[0].user_id: not text"),
    (document(buddies=[entry(note="n" * 201)]), "buddies[0].note: 201 bytes, at most 200"),
    (document(buddies=[entry(user_id="é" * 33)]), "buddies[0].user_id: 66 bytes, at most 64"),
    (document(buddies=[entry(note="\ud800")]), "buddies[0].note: not valid Unicode text"),
    (
        document(buddies=[entry(user_id=f"u{i}") for i in range(MAX_BUDDIES + 1)]),
        f"buddies: {MAX_BUDDIES + 1} entries, at most {MAX_BUDDIES}",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("content", "problem"), CORRUPT, ids=[p for _, p in CORRUPT])
def test_a_corrupt_file_is_reported_and_the_device_starts_empty(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "buddies.json"
    path.write_bytes(content)
    with pytest.raises(CacheFileError) as info:
        load(path)
    assert str(info.value) == f"buddy cache {path}: {problem}"
    assert (info.value.path, info.value.problem) == (path, problem)
    cache, warning = load_or_empty(path)
    assert (cache.version, len(cache)) == (0, 0)
    assert warning == f"buddy cache {path}: {problem}; starting with an empty buddy list"


def test_a_file_too_large_or_unreadable_is_reported(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    with huge.open("wb") as stream:
        stream.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(CacheFileError) as info:
        load(huge)
    assert info.value.problem == f"larger than {MAX_FILE_BYTES} bytes"
    with pytest.raises(CacheFileError) as info:
        load(tmp_path)
    assert info.value.problem == "cannot read it: Is a directory"


def test_the_file_is_private_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "buddies.json"
    path.write_text("an older file, readable by all")
    path.chmod(0o644)
    save(filled(3, [ALICE]), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buddies.json"]
    assert load(path).buddies() == [ALICE]


FAILING_SAVE = """
import resource, signal, sys
from pathlib import Path
from edge.client.buddies import Buddy, BuddyCache, save
from edge.runtime.errors import AtomicWriteError
from edge.wire.messages import BuddyState

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
big = BuddyCache(9, [Buddy(f"user{i}", BuddyState.ACCEPTED) for i in range(1000)])
try:
    save(big, Path(sys.argv[1]))
except AtomicWriteError as exc:
    print(exc)
    sys.exit(3)
"""


def test_a_save_that_fails_half_way_keeps_the_old_file(tmp_path: Path) -> None:
    # The kernel refuses to grow a file past RLIMIT_FSIZE (even for root): the new
    # file is cut short half-way, and the old one must still load.
    path = tmp_path / "buddies.json"
    save(filled(3, [ALICE]), path)
    result = subprocess.run(
        [sys.executable, "-c", FAILING_SAVE, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == f"{path}: cannot write: File too large"
    assert (load(path).version, load(path).buddies()) == (3, [ALICE])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buddies.json"]


# -- end to end against a login server ----------------------------------------------------

PASSWORD = "correct horse"


def against_server(
    fn: Callable[[World, Path], Coroutine[Any, Any, None]],
) -> Callable[[str, Path], None]:
    """A test of ``fn`` against a running login server on each kind of store."""

    def test(store_url: str, tmp_path: Path) -> None:
        async def body() -> None:
            async with world(store_url, tmp_path) as w:
                await fn(w, tmp_path)

        run_uv(body())

    test.__name__ = fn.__name__
    return test


async def _works_from_its_cache_while_the_server_is_away(w: World, tmp_path: Path) -> None:
    w.add_user("alice")
    w.add_user("bob")
    alice = await w.login(device("alice"), password=PASSWORD)
    bob = await w.login(device("bob", "phone"), password=PASSWORD)
    alice_cache = BuddyCache()
    asked = Buddy("bob", PENDING_OUT, "", "hi, it's Alice")
    assert await buddy_op(alice, alice_cache, BuddyOp.ADD_REQUEST, "bob", asked.note) == [
        BuddyAdded(asked)
    ]

    path = tmp_path / "phone" / "buddies.json"
    path.parent.mkdir()
    cache, warning = load_or_empty(path)  # the phone's first start: no file yet
    assert warning is None
    request = Buddy("alice", PENDING_IN, "", "hi, it's Alice")
    assert await sync(bob, cache) == [BuddyAdded(request)]
    before = cache.version
    await bob.request(
        MsgType.BUDDY_OP, {"op": BuddyOp.ACCEPT, "user_id": "alice", "note": ""}, MsgType.BUDDY_LIST
    )
    assert await sync(bob, cache) == [BuddyChanged(request, buddy("alice"))]
    assert cache.version == before + 1
    assert await sync(bob, cache) == []  # nothing new
    # A sync asks only for what changed after the cache's version: an entry no
    # delta since touched stays, where a whole list would have dropped it.
    marked = BuddyCache(cache.version, [*cache.buddies(), buddy("only-here")])
    assert await sync(bob, marked) == []
    assert marked.buddies() == [buddy("alice"), buddy("only-here")]
    save(cache, path)

    await w.server.stop(grace=1.0)
    with pytest.raises(ServerError) as info:  # the phone sees its session drop
        await bob.receive(MsgType.BUDDY_LIST)
    assert info.value.code is ErrorCode.UNAVAILABLE
    with pytest.raises(LoginUnreachable):  # and cannot log in again
        await w.login(device("bob", "phone"))
    restarted, warning = load_or_empty(path)
    assert warning is None
    assert (restarted.version, restarted.accepted()) == (cache.version, [buddy("alice")])
    alice.close()
    bob.close()


test_works_from_its_cache_while_the_server_is_away = against_server(
    _works_from_its_cache_while_the_server_is_away
)


async def _an_operation_does_not_skip_other_changes(w: World, tmp_path: Path) -> None:
    for user_id in ("alice", "bob", "carol"):
        w.add_user(user_id)
    now = int(w.clock.now)
    bob = await w.login(device("bob", "phone"), password=PASSWORD)
    cache = BuddyCache()
    w.store.buddy_op("alice", BuddyOp.ADD_REQUEST, "bob", "from alice", now)
    alice_asks = Buddy("alice", PENDING_IN, "", "from alice")
    assert await sync(bob, cache) == [BuddyAdded(alice_asks)]
    # Between the sync and the acceptance, another change to Bob's list: the
    # server's answer to the ACCEPT is a delta that starts after it.
    w.store.buddy_op("carol", BuddyOp.ADD_REQUEST, "bob", "from carol", now)
    changes = await buddy_op(bob, cache, BuddyOp.ACCEPT, "alice")
    carol_asks = Buddy("carol", PENDING_IN, "", "from carol")
    assert changes == [BuddyChanged(alice_asks, buddy("alice")), BuddyAdded(carol_asks)]
    assert cache.version == w.store.buddies_since("bob", 0)[0]

    with pytest.raises(ServerError) as info:  # refused: the cache stays, the session too
        await buddy_op(bob, cache, BuddyOp.ACCEPT, "alice")
    assert info.value.code is ErrorCode.FORBIDDEN
    assert cache.buddies() == [buddy("alice"), carol_asks]
    assert await sync(bob, cache) == []
    bob.close()


test_an_operation_does_not_skip_other_changes = against_server(
    _an_operation_does_not_skip_other_changes
)


async def _a_long_list_arrives_in_parts_and_lands_whole(w: World, tmp_path: Path) -> None:
    count = 2 * BUDDY_ENTRIES_MAX + 1
    hashed = Passwords(CHEAP).hash(PASSWORD)
    now = int(w.clock.now)
    w.add_user("bob")
    for i in range(count):
        w.store.add_user(f"friend{i:03}", hashed, now)
        w.store.buddy_op(f"friend{i:03}", BuddyOp.ADD_REQUEST, "bob", f"note {i}", now)
    version = w.store.buddies_since("bob", 0)[0]
    expected = [Buddy(f"friend{i:03}", PENDING_IN, "", f"note {i}") for i in range(count)]
    bob = await w.login(device("bob"), password=PASSWORD)

    by_hand = BuddyCache()  # the parts one by one, as sync() reads them
    bob.send(MsgType.BUDDY_SYNC, {"since_version": 0})
    bodies = [(await bob.receive(MsgType.BUDDY_LIST)).body]
    while bodies[-1].more:
        assert by_hand.apply(bodies[-1]) == []
        assert (by_hand.version, len(by_hand)) == (0, 0)
        bodies.append((await bob.receive(MsgType.BUDDY_LIST)).body)
    assert len(bodies) == 3
    assert by_hand.apply(bodies[-1]) == [BuddyAdded(b) for b in expected]
    assert (by_hand.version, by_hand.pending_in()) == (version, expected)

    # A cache that refuses the answer half-way still reads it to its end ...
    small = BuddyCache(limit=BUDDY_ENTRIES_MAX + 10)
    with pytest.raises(TooManyBuddies):
        await sync(bob, small)
    assert (small.version, len(small), small.receiving) == (0, 0, False)
    # ... so the next answer on the session is whole; and the parts of an answer
    # cut short earlier (a ghost) do not mix into it.
    cache = BuddyCache()
    cache.apply(listing(version, buddy("ghost"), full=True, more=True))
    assert await sync(bob, cache) == [BuddyAdded(b) for b in expected]
    assert (cache.version, cache.pending_in()) == (version, expected)
    bob.close()


test_a_long_list_arrives_in_parts_and_lands_whole = against_server(
    _a_long_list_arrives_in_parts_and_lands_whole
)


def test_a_delta_from_after_the_cache_version_is_not_applied() -> None:
    cache = filled(4, [buddy("alice")])
    # Changes 5 and 6 happened; this delta holds only what came after 6.
    assert cache.apply(listing(7, buddy("bob"), since=6)) == []
    assert (cache.version, cache.get("bob")) == (4, None)
    changes = cache.apply(listing(7, buddy("carol"), buddy("bob"), since=4))
    assert [type(c) for c in changes] == [BuddyAdded, BuddyAdded]
    assert cache.version == 7

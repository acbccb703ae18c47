"""Signed update bundles, installed into A/B slots, kept only once they prove healthy.

Theory of operation
-------------------

A **bundle** is a tar archive (plain or compressed) or a directory holding::

    manifest.json   what the release is: version, oldest version it may replace,
                    every file with its size and SHA-256, the health commands
    manifest.sig    64 bytes: Ed25519 over SIGNING_CONTEXT + manifest.json
    files/...       the files, exactly those the manifest lists, nothing else

The manifest is JSON with a strict schema rather than a construct structure:
it is a file an operator reads and a release script writes, never a network
message, and the signature covers its exact bytes, so no canonical form is
needed. Duplicate keys, unknown keys, wrong types and unsafe paths are refused.

:func:`verify` checks, in this order and touching nothing: the signature
(against the release key pinned on the device), the schema, the version policy
(newer than the running version, and the running version at least the
manifest's ``min_version``), that the archive holds exactly the listed files
as regular files, and every file's size and hash.

An **A/B layout** is a root directory (``/opt/edge`` on a device)::

    slot-a/  slot-b/   two complete installations
    current            symlink to the slot that runs; /usr/bin/edge points
                       through it, so the switch is one atomic rename
    state.json         which slot is committed, which one is on trial
    .lock              held while a command changes the layout

:meth:`SlotLayout.install` verifies the bundle, writes it into the slot that is
not committed (re-checking every byte as it writes), records the slot as
*trial*, switches ``current`` to it and runs the manifest's health commands
with a timeout: all passing commits the slot, any failing switches back. The
order of the steps makes a power cut at any point harmless: the committed slot
is never written, the state file and the symlink are each replaced atomically,
and an interrupted trial is abandoned by the next install or boot check.

A trial can also be left for the next start (``defer``): the agent's unit runs
:meth:`SlotLayout.boot_check` before each start, which counts the trial slot's
starts and rolls back when a start never reported healthy, and commits after
the agent's READY.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from nacl.signing import SigningKey, VerifyKey

from edge.crypto.signing import verify_or_raise
from edge.device.errors import DeviceError, DeviceMisuse
from edge.runtime.config import write_atomic

MANIFEST_NAME: Final = "manifest.json"
SIGNATURE_NAME: Final = "manifest.sig"
FILES_DIR: Final = "files"
SIGNING_CONTEXT: Final = b"edge update manifest v1\0"
"""Prefixed to the manifest before signing, so a release key's signature over
an update manifest can never be replayed as any other signed edge object."""
MANIFEST_FORMAT: Final = 1
STATE_FORMAT: Final = 1

MAX_MANIFEST_BYTES: Final = 1024 * 1024
MAX_FILES: Final = 20_000
MAX_TOTAL_BYTES: Final = 1024 * 1024 * 1024
MAX_PATH_CHARS: Final = 1024
MAX_NAME_BYTES: Final = 255
MAX_HEALTH_COMMANDS: Final = 8
MAX_ARGS: Final = 32
MAX_ARG_CHARS: Final = 4096
MAX_STATE_BYTES: Final = 64 * 1024
MAX_KEY_FILE_BYTES: Final = 1024
MAX_TRIAL_STARTS: Final = 1
"""Starts a trial slot gets before the boot check gives up on it: one."""
HEALTH_TIMEOUT: Final = 60.0
HEALTH_OUTPUT_CHARS: Final = 2000

SLOTS: Final = ("a", "b")
DEFAULT_ROOT: Final = Path("/opt/edge")
DEFAULT_KEY: Final = Path("/etc/edge/release.pub")

_CHUNK: Final = 64 * 1024
_log = logging.getLogger(__name__)
_VERSION = re.compile(r"(0|[1-9][0-9]{0,8})(\.(0|[1-9][0-9]{0,8})){0,3}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class UpdateError(DeviceError):
    """An update bundle, key file or slot layout is wrong."""


class BundleRefused(UpdateError):
    """The bundle failed verification; nothing was installed."""


class BundleMalformed(BundleRefused):
    """The archive or its manifest is not a well-formed bundle."""


class BadBundleSignature(BundleRefused):
    """The manifest's signature does not verify with the pinned release key."""


class BundleTampered(BundleRefused):
    """A file is missing, extra, truncated, or differs from the manifest."""


class DowngradeRefused(BundleRefused):
    """The bundle is not newer than the running version, or may not replace it."""


class SlotStateError(UpdateError):
    """The A/B layout's state is missing, corrupt, or does not allow the command."""


class UpdateUsageError(DeviceMisuse):
    """The caller asked for something impossible (a bad version string to build)."""


# -- the manifest --------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """One file of a release: its path inside the slot, size, SHA-256, mode."""

    path: str
    size: int
    sha256: bytes
    executable: bool


@dataclass(frozen=True)
class Manifest:
    """What a bundle says it is; only ever built from verified bytes or by a release."""

    version: str
    min_version: str
    files: tuple[FileEntry, ...]
    health: tuple[tuple[str, ...], ...]

    def to_json(self) -> bytes:
        document = {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "min_version": self.min_version,
            "files": [_entry_json(entry) for entry in self.files],
            "health": [list(command) for command in self.health],
        }
        return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _entry_json(entry: FileEntry) -> dict[str, object]:
    return {
        "path": entry.path,
        "size": entry.size,
        "sha256": entry.sha256.hex(),
        "executable": entry.executable,
    }


def parse_version(text: object) -> tuple[int, ...]:
    """``"1.2.3"`` as ``(1, 2, 3)``: one to four decimal numbers without leading zeros."""
    if not isinstance(text, str) or not _VERSION.fullmatch(text):
        raise BundleMalformed(f"version {text!r} is not 1 to 4 dot-separated numbers")
    return tuple(int(part) for part in text.split("."))


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest in ``raw``, or :class:`BundleMalformed` naming the first fault."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleMalformed(f"{MANIFEST_NAME} is over {MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleMalformed(f"{MANIFEST_NAME} is not JSON: {exc}") from None
    table = _object(
        document, MANIFEST_NAME, {"format", "version", "min_version", "files", "health"}
    )
    if table["format"] != MANIFEST_FORMAT or type(table["format"]) is not int:
        raise BundleMalformed(f"{MANIFEST_NAME}: 'format' must be {MANIFEST_FORMAT}")
    parse_version(table["version"])
    parse_version(table["min_version"])
    files = _files(table["files"])
    return Manifest(
        version=table["version"],
        min_version=table["min_version"],
        files=files,
        health=_health(table["health"], files),
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key: a reader that keeps the first and one that keeps
    # the last would see different releases under one signature.
    table: dict[str, Any] = {}
    for key, value in pairs:
        if key in table:
            raise ValueError(f"key {key!r} appears twice")
        table[key] = value
    return table


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _object(value: object, where: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleMalformed(f"{where}: expected an object")
    missing, unknown = keys - value.keys(), value.keys() - keys
    if missing or unknown:
        raise BundleMalformed(
            f"{where}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}"
        )
    return value


def _files(value: object) -> tuple[FileEntry, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_FILES:
        raise BundleMalformed(f"'files' must list 1 to {MAX_FILES} files")
    entries = tuple(_file(item, index) for index, item in enumerate(value))
    _check_tree(entries)
    return entries


def _file(value: object, index: int) -> FileEntry:
    where = f"files[{index}]"
    table = _object(value, where, {"path", "size", "sha256", "executable"})
    size, digest = table["size"], table["sha256"]
    if type(size) is not int or not 0 <= size <= MAX_TOTAL_BYTES:
        raise BundleMalformed(f"{where}.size: expected 0 to {MAX_TOTAL_BYTES}, got {size!r}")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise BundleMalformed(f"{where}.sha256: expected 64 lower-case hex digits")
    if not isinstance(table["executable"], bool):
        raise BundleMalformed(f"{where}.executable: expected true or false")
    return FileEntry(
        check_path(table["path"], where), size, bytes.fromhex(digest), table["executable"]
    )


def check_path(value: object, where: str) -> str:
    """``value`` if it is a safe relative path inside a slot; else :class:`BundleMalformed`.

    Refused: absolute paths, ``.`` and ``..`` parts, empty parts, backslashes,
    control characters, and names longer than a file system takes.
    """
    if not isinstance(value, str) or not 0 < len(value) <= MAX_PATH_CHARS:
        raise BundleMalformed(f"{where}.path: expected 1 to {MAX_PATH_CHARS} characters")
    parts = value.split("/")
    unsafe = (
        value.startswith("/")
        or "\\" in value
        or any(not char.isprintable() for char in value)
        or any(part in ("", ".", "..") for part in parts)
    )
    if unsafe:
        raise BundleMalformed(f"{where}.path {value!r} leaves the slot or is not a plain path")
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in parts):
        raise BundleMalformed(f"{where}.path {value!r} has a name over {MAX_NAME_BYTES} bytes")
    return value


def _check_tree(entries: tuple[FileEntry, ...]) -> None:
    paths = {entry.path for entry in entries}
    if len(paths) != len(entries):
        raise BundleMalformed("'files' lists a path twice")
    for path in paths:
        parents = path.split("/")[:-1]
        for depth in range(1, len(parents) + 1):
            if "/".join(parents[:depth]) in paths:
                raise BundleMalformed(f"'files': {path!r} is inside a listed file")
    if sum(entry.size for entry in entries) > MAX_TOTAL_BYTES:
        raise BundleMalformed(f"'files' add up to more than {MAX_TOTAL_BYTES} bytes")


def _health(value: object, files: tuple[FileEntry, ...]) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_HEALTH_COMMANDS:
        raise BundleMalformed(f"'health' must list 1 to {MAX_HEALTH_COMMANDS} commands")
    executables = {entry.path for entry in files if entry.executable}
    return tuple(_command(item, index, executables) for index, item in enumerate(value))


def _command(value: object, index: int, executables: set[str]) -> tuple[str, ...]:
    where = f"health[{index}]"
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ARGS:
        raise BundleMalformed(f"{where}: expected a list of 1 to {MAX_ARGS} strings")
    for arg in value:
        if not isinstance(arg, str) or len(arg) > MAX_ARG_CHARS or "\0" in arg:
            raise BundleMalformed(f"{where}: every argument is a string without NUL")
    # The program is one of the release's own executables, so the check tests
    # the new slot, never something that happens to be on the device.
    if value[0] not in executables:
        raise BundleMalformed(f"{where}: {value[0]!r} is not an executable file of the bundle")
    return tuple(value)


# -- reading a bundle ----------------------------------------------------------


class _Source:
    """The members of a bundle, as a tar archive or a directory holds them."""

    def manifest(self) -> tuple[bytes, bytes]:
        raise NotImplementedError

    def paths(self) -> set[str]:
        raise NotImplementedError

    def open(self, path: str) -> IO[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _TarSource(_Source):
    def __init__(self, path: Path) -> None:
        try:
            # Closed by close(): the archive outlives this call.
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BundleMalformed(f"{path}: not a readable tar archive: {exc}") from None
        try:
            self._members = _tar_members(self._tar)
        except BaseException:
            self._tar.close()
            raise

    def manifest(self) -> tuple[bytes, bytes]:
        return (
            self._read_small(MANIFEST_NAME, MAX_MANIFEST_BYTES),
            self._read_small(SIGNATURE_NAME, 64),
        )

    def _read_small(self, name: str, cap: int) -> bytes:
        member = self._members.get(name)
        if member is None:
            raise BundleMalformed(f"the bundle has no {name}")
        if member.size > cap:
            raise BundleMalformed(f"{name} is over {cap} bytes")
        with self.open_member(member) as stream:
            return _read_exact(stream, member.size, name)

    def paths(self) -> set[str]:
        prefix = FILES_DIR + "/"
        return {name[len(prefix) :] for name in self._members if name.startswith(prefix)}

    def open(self, path: str) -> IO[bytes]:
        return self.open_member(self._members[f"{FILES_DIR}/{path}"])

    def open_member(self, member: tarfile.TarInfo) -> IO[bytes]:
        stream = self._tar.extractfile(member)
        if stream is None:
            raise BundleMalformed(f"{member.name} is not a regular file")
        return stream

    def close(self) -> None:
        self._tar.close()


def _tar_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Regular files by name; directories skipped; anything else refused."""
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    try:
        for count, member in enumerate(tar, start=1):
            if count > MAX_FILES + 64:
                raise BundleMalformed(f"the archive holds more than {MAX_FILES} members")
            if member.isdir():
                continue
            if not member.isreg():
                raise BundleMalformed(f"{member.name!r} is a link or device, not a file")
            # `tar -C bundle -cf bundle.tar .` names every member ./NAME.
            name = member.name.removeprefix("./")
            if name in members:
                raise BundleTampered(f"{name!r} appears twice in the archive")
            total += member.size
            if total > MAX_TOTAL_BYTES + MAX_MANIFEST_BYTES:
                raise BundleMalformed(f"the archive holds more than {MAX_TOTAL_BYTES} bytes")
            members[name] = member
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleTampered(f"the archive is truncated or corrupt: {exc}") from None
    return members


class _DirSource(_Source):
    def __init__(self, path: Path) -> None:
        self._root = path

    def manifest(self) -> tuple[bytes, bytes]:
        return (
            _read_file(self._root / MANIFEST_NAME, MAX_MANIFEST_BYTES),
            _read_file(self._root / SIGNATURE_NAME, 64),
        )

    def paths(self) -> set[str]:
        found: set[str] = set()
        top = self._root / FILES_DIR
        for folder, dirs, names in os.walk(top):
            for name in names + [d for d in dirs if (Path(folder) / d).is_symlink()]:
                full = Path(folder) / name
                if not stat.S_ISREG(full.lstat().st_mode):
                    raise BundleMalformed(f"{full} is a link or device, not a file")
                found.add(full.relative_to(top).as_posix())
                if len(found) > MAX_FILES:
                    raise BundleMalformed(f"the bundle holds more than {MAX_FILES} files")
        return found

    def open(self, path: str) -> IO[bytes]:
        return _open_regular(self._root / FILES_DIR / path)


def _open_regular(path: Path) -> IO[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise BundleTampered(f"{path}: cannot open: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleMalformed(f"{path} is not a regular file")
    return open(fd, "rb")


def _read_file(path: Path, cap: int) -> bytes:
    if not path.exists():
        raise BundleMalformed(f"the bundle has no {path.name}")
    with _open_regular(path) as stream:
        raw = stream.read(cap + 1)
    if len(raw) > cap:
        raise BundleMalformed(f"{path.name} is over {cap} bytes")
    return raw


def _read_exact(stream: IO[bytes], size: int, name: str) -> bytes:
    try:
        raw = stream.read(size)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleTampered(f"{name}: the archive is truncated or corrupt: {exc}") from None
    if len(raw) != size:
        raise BundleTampered(f"{name}: the archive is truncated")
    return raw


@contextlib.contextmanager
def _open_bundle(path: Path) -> Iterator[_Source]:
    source: _Source = _DirSource(path) if path.is_dir() else _TarSource(path)
    try:
        yield source
    finally:
        source.close()


# -- verification --------------------------------------------------------------


def read_release_key(path: Path) -> VerifyKey:
    """The pinned release key: a file holding the Ed25519 public key in hex."""
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise UpdateError(f"{path}: cannot read the release key: {exc.strerror}") from None
    text = raw.decode("ascii", "replace").strip().lower()
    if len(raw) > MAX_KEY_FILE_BYTES or not _HEX64.fullmatch(text):
        raise UpdateError(f"{path}: expected an Ed25519 public key as 64 hex digits")
    return VerifyKey(bytes.fromhex(text))


def verify(bundle: Path, key: VerifyKey | bytes, running_version: str | None) -> Manifest:
    """The bundle's manifest once every check has passed; it touches nothing.

    ``running_version`` is the committed slot's version (None on a device
    without one yet). Raises a :class:`BundleRefused` subclass naming the
    first fault: the signature, the schema, the version, a missing, extra or
    altered file.
    """
    with _open_bundle(bundle) as source:
        manifest = _checked_manifest(source, key, running_version)
        for entry in manifest.files:
            with source.open(entry.path) as stream:
                _copy_checked(stream, entry, None)
    return manifest


def _checked_manifest(source: _Source, key: VerifyKey | bytes, running: str | None) -> Manifest:
    raw, signature = source.manifest()
    verify_or_raise(
        key,
        SIGNING_CONTEXT + raw,
        signature,
        lambda: BadBundleSignature("the manifest's signature does not verify with the release key"),
    )
    manifest = parse_manifest(raw)
    check_version(manifest, running)
    listed = {entry.path for entry in manifest.files}
    present = source.paths()
    if listed - present:
        raise BundleTampered(f"files missing from the bundle: {sorted(listed - present)[:5]}")
    if present - listed:
        raise BundleTampered(f"files not in the manifest: {sorted(present - listed)[:5]}")
    return manifest


def check_version(manifest: Manifest, running: str | None) -> None:
    """Refuse a bundle that is not newer than ``running`` or may not replace it."""
    if running is None:
        return
    if parse_version(manifest.version) <= parse_version(running):
        raise DowngradeRefused(
            f"version {manifest.version} is not newer than the running {running}"
        )
    if parse_version(running) < parse_version(manifest.min_version):
        raise DowngradeRefused(
            f"version {manifest.version} replaces {manifest.min_version} or later,"
            f" the running version is {running}"
        )


def _copy_checked(stream: IO[bytes], entry: FileEntry, out: IO[bytes] | None) -> None:
    digest = hashlib.sha256()
    seen = 0
    while True:
        chunk = _read_chunk(stream, entry.path)
        if not chunk:
            break
        seen += len(chunk)
        if seen > entry.size:
            raise BundleTampered(f"{entry.path}: longer than the manifest's {entry.size} bytes")
        digest.update(chunk)
        if out is not None:
            out.write(chunk)
    if seen != entry.size:
        raise BundleTampered(f"{entry.path}: {seen} bytes, the manifest says {entry.size}")
    if digest.digest() != entry.sha256:
        raise BundleTampered(f"{entry.path}: SHA-256 differs from the manifest")


def _read_chunk(stream: IO[bytes], name: str) -> bytes:
    try:
        return stream.read(_CHUNK)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleTampered(f"{name}: the archive is truncated or corrupt: {exc}") from None


# -- making a bundle (the release side) ------------------------------------------


def build_bundle(
    source: Path,
    out: Path,
    key: SigningKey,
    *,
    version: str,
    min_version: str,
    health: Sequence[Sequence[str]],
) -> Manifest:
    """Write a signed tar bundle of every regular file under ``source`` to ``out``."""
    try:
        parse_version(version)
        parse_version(min_version)
    except BundleMalformed as exc:
        raise UpdateUsageError(str(exc)) from None
    entries = tuple(_describe(source, path) for path in _tree(source))
    manifest = Manifest(version, min_version, entries, tuple(tuple(c) for c in health))
    raw = manifest.to_json()
    try:
        parse_manifest(raw)
    except BundleMalformed as exc:
        raise UpdateUsageError(f"this would not be a valid bundle: {exc}") from None
    signature = key.sign(SIGNING_CONTEXT + raw).signature
    temp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(temp, "w") as tar:
        _add_bytes(tar, MANIFEST_NAME, raw, 0o644)
        _add_bytes(tar, SIGNATURE_NAME, signature, 0o644)
        for entry in entries:
            _add_bytes(
                tar,
                f"{FILES_DIR}/{entry.path}",
                (source / entry.path).read_bytes(),
                0o755 if entry.executable else 0o644,
            )
    os.replace(temp, out)
    return manifest


def _tree(source: Path) -> list[str]:
    found = []
    for path in sorted(source.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise UpdateUsageError(f"{path}: only regular files and folders go into a bundle")
        if path.is_file():
            found.append(path.relative_to(source).as_posix())
    return found


def _describe(source: Path, path: str) -> FileEntry:
    data = (source / path).read_bytes()
    executable = bool((source / path).stat().st_mode & stat.S_IXUSR)
    return FileEntry(path, len(data), hashlib.sha256(data).digest(), executable)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, _BytesReader(data))


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._view, self._at = memoryview(data), 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else self._at + size
        chunk = bytes(self._view[self._at : end])
        self._at += len(chunk)
        return chunk


# -- the A/B layout --------------------------------------------------------------


class SlotStatus(enum.StrEnum):
    """What a slot holds, as ``state.json`` and ``edge update status`` name it."""

    EMPTY = "empty"
    INSTALLING = "installing"
    """Being written; nothing points to it, a cut leaves it for the next install."""
    TRIAL = "trial"
    COMMITTED = "committed"
    PREVIOUS = "previous"
    """The committed release before the last update."""
    FAILED = "failed"
    """Rolled back: its health check failed or its start never reported READY."""


@dataclass(frozen=True)
class SlotInfo:
    """One slot: the version it holds (None while empty or being written) and its status."""

    version: str | None
    status: SlotStatus


@dataclass(frozen=True)
class LayoutState:
    """What ``state.json`` records."""

    committed: str | None
    trial: str | None
    starts: int
    slots: tuple[SlotInfo, SlotInfo]

    def slot(self, name: str) -> SlotInfo:
        return self.slots[SLOTS.index(name)]

    def with_slot(self, name: str, info: SlotInfo) -> LayoutState:
        slots = list(self.slots)
        slots[SLOTS.index(name)] = info
        return dataclasses.replace(self, slots=(slots[0], slots[1]))

    def to_json(self) -> bytes:
        document = {
            "format": STATE_FORMAT,
            "committed": self.committed,
            "trial": self.trial,
            "starts": self.starts,
            "slots": {
                name: {"version": info.version, "status": info.status}
                for name, info in zip(SLOTS, self.slots, strict=True)
            },
        }
        return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode("utf-8")


EMPTY_STATE: Final = LayoutState(None, None, 0, (SlotInfo(None, SlotStatus.EMPTY),) * 2)


def parse_state(raw: bytes, where: str) -> LayoutState:
    """``state.json`` as written by :meth:`LayoutState.to_json`; else :class:`SlotStateError`."""
    try:
        document = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        table = _object(document, where, {"format", "committed", "trial", "starts", "slots"})
        slots = _object(table["slots"], f"{where}: slots", set(SLOTS))
        state = LayoutState(
            committed=_slot_name(table["committed"]),
            trial=_slot_name(table["trial"]),
            starts=table["starts"],
            slots=(_slot_info(slots["a"], where), _slot_info(slots["b"], where)),
        )
    except (UnicodeDecodeError, ValueError, BundleMalformed) as exc:
        raise SlotStateError(f"{where} is corrupt: {exc}") from None
    if table["format"] != STATE_FORMAT or type(state.starts) is not int or state.starts < 0:
        raise SlotStateError(f"{where} is corrupt: bad 'format' or 'starts'")
    return state


def _slot_name(value: object) -> str | None:
    if value is not None and value not in SLOTS:
        raise ValueError(f"no slot {value!r}")
    return value if isinstance(value, str) else None


def _slot_info(value: object, where: str) -> SlotInfo:
    table = _object(value, f"{where}: slot", {"version", "status"})
    if table["version"] is not None:
        parse_version(table["version"])
    if table["status"] not in list(SlotStatus):
        raise ValueError(f"unknown slot status {table['status']!r}")
    return SlotInfo(table["version"], SlotStatus(table["status"]))


@dataclass(frozen=True)
class HealthReport:
    """The result of a slot's health commands: passed, or the first failure's story."""

    passed: bool
    detail: str


@dataclass(frozen=True)
class InstallOutcome:
    """What :meth:`SlotLayout.install` did: which slot, which version, and whether it stayed."""

    slot: str
    version: str
    committed: bool
    detail: str


class SlotLayout:
    """The A/B slots under ``root``; every method holds the layout's lock."""

    def __init__(self, root: Path, *, health_timeout: float = HEALTH_TIMEOUT) -> None:
        self.root = root
        self.health_timeout = health_timeout

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def slot_path(self, name: str) -> Path:
        return self.root / f"slot-{name}"

    def read_state(self) -> LayoutState:
        """The recorded state; :data:`EMPTY_STATE` where no update ever ran."""
        try:
            fd = os.open(self.state_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return EMPTY_STATE
        except OSError as exc:
            raise SlotStateError(f"{self.state_path}: cannot open: {exc.strerror}") from None
        with open(fd, "rb") as stream:
            raw = stream.read(MAX_STATE_BYTES + 1)
        if len(raw) > MAX_STATE_BYTES:
            raise SlotStateError(f"{self.state_path} is over {MAX_STATE_BYTES} bytes")
        return parse_state(raw, str(self.state_path))

    def current(self) -> str | None:
        """The slot ``current`` points to, or None when there is no such link."""
        try:
            target = os.readlink(self.root / "current")
        except OSError:
            return None
        for name in SLOTS:
            if target == f"slot-{name}":
                return name
        raise SlotStateError(f"{self.root / 'current'} points to {target!r}, not to a slot")

    def running_version(self) -> str | None:
        state = self.read_state()
        return None if state.committed is None else state.slot(state.committed).version

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the layout's lock; a second command waits rather than interleaving."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def install(
        self, bundle: Path, key: VerifyKey | bytes, *, defer: bool = False
    ) -> InstallOutcome:
        """Verify ``bundle``, write it into the uncommitted slot, switch, check, keep or roll back.

        A refused bundle raises :class:`BundleRefused` with nothing changed. A
        trial still pending from an earlier install is abandoned first. With
        ``defer`` the new slot stays on trial for :meth:`boot_check` and the
        agent's start to decide.
        """
        with self.locked():
            state = self.read_state()
            running = None if state.committed is None else state.slot(state.committed).version
            verify(bundle, key, running)
            state = self._abandon_trial(state, "abandoned by a newer install")
            target = SLOTS[1] if state.committed == SLOTS[0] else SLOTS[0]
            manifest = self._write_slot(bundle, key, running, target, state)
            state = self.read_state()
            state = dataclasses.replace(state, trial=target, starts=0).with_slot(
                target, SlotInfo(manifest.version, SlotStatus.TRIAL)
            )
            self._save(state)
            self._point_current(target)
            if defer:
                return InstallOutcome(
                    target, manifest.version, False, "on trial until the next start"
                )
            return self._decide(state, manifest)

    def _write_slot(
        self,
        bundle: Path,
        key: VerifyKey | bytes,
        running: str | None,
        target: str,
        state: LayoutState,
    ) -> Manifest:
        """Empty slot ``target`` and write the bundle into it; the manifest it wrote."""
        self._save(state.with_slot(target, SlotInfo(None, SlotStatus.INSTALLING)))
        path = self.slot_path(target)
        try:
            _empty(path)
            # Checked again while writing: the bundle file may have changed since
            # verify() read it, and only the bytes written here will ever run.
            with _open_bundle(bundle) as source:
                manifest = _checked_manifest(source, key, running)
                for entry in manifest.files:
                    with source.open(entry.path) as stream:
                        _write_file(path, entry, stream)
            _fsync_tree(path)
        except OSError as exc:
            raise UpdateError(f"cannot write slot {target} at {path}: {exc}") from exc
        return manifest

    def _decide(self, state: LayoutState, manifest: Manifest) -> InstallOutcome:
        assert state.trial is not None
        report = run_health(self.slot_path(state.trial), manifest.health, self.health_timeout)
        if report.passed:
            self._commit(state)
            return InstallOutcome(state.trial, manifest.version, True, report.detail)
        self._rollback(state, report.detail)
        return InstallOutcome(state.trial, manifest.version, False, report.detail)

    def commit(self, *, if_trial: bool = False) -> LayoutState:
        """Keep the trial slot for good (after it proved healthy).

        With ``if_trial``, having no trial (or no layout at all) is not an error:
        the agent's unit commits this way after every READY.
        """
        if if_trial and not self.root.is_dir():
            return EMPTY_STATE
        with self.locked():
            state = self.read_state()
            if state.trial is None:
                if if_trial:
                    return state
                raise SlotStateError("nothing to commit: no slot is on trial")
            if self.current() != state.trial:
                raise SlotStateError(f"slot {state.trial} is on trial but not the one running")
            return self._commit(state)

    def rollback(self, reason: str = "rolled back by hand") -> LayoutState:
        """Give up the trial slot and run the committed one again."""
        with self.locked():
            state = self.read_state()
            if state.trial is None:
                raise SlotStateError("nothing to roll back: no slot is on trial")
            return self._rollback(state, reason)

    def boot_check(self) -> tuple[LayoutState, str]:
        """Before a start: count a trial slot's start, or roll it back after its one chance.

        Returns the state and what was done, for the journal.
        """
        if not self.root.is_dir():
            return EMPTY_STATE, f"no A/B layout at {self.root}"
        with self.locked():
            state = self.read_state()
            if state.trial is None:
                return state, "no slot on trial"
            if self.current() != state.trial:
                state = self._abandon_trial(state, "the switch to it never happened")
                return state, "an interrupted install was abandoned"
            if state.starts >= MAX_TRIAL_STARTS:
                reason = (
                    f"slot {state.trial} started {state.starts} time(s) without reporting healthy"
                )
                return self._rollback(state, reason), f"rolled back: {reason}"
            state = dataclasses.replace(state, starts=state.starts + 1)
            self._save(state)
            return state, f"slot {state.trial} on trial: start {state.starts} of {MAX_TRIAL_STARTS}"

    def _commit(self, state: LayoutState) -> LayoutState:
        assert state.trial is not None
        trial = state.trial
        new = dataclasses.replace(state, committed=trial, trial=None, starts=0)
        new = new.with_slot(trial, SlotInfo(state.slot(trial).version, SlotStatus.COMMITTED))
        if state.committed is not None and state.committed != trial:
            old = state.slot(state.committed)
            new = new.with_slot(state.committed, SlotInfo(old.version, SlotStatus.PREVIOUS))
        self._save(new)
        return new

    def _rollback(self, state: LayoutState, reason: str) -> LayoutState:
        assert state.trial is not None
        # The link first: a power cut after it leaves a trial recorded that is
        # not running, which the next command abandons.
        self._point_current(state.committed)
        failed = SlotInfo(state.slot(state.trial).version, SlotStatus.FAILED)
        new = dataclasses.replace(state, trial=None, starts=0).with_slot(state.trial, failed)
        self._save(new)
        _log.warning("slot %s rolled back: %s", state.trial, reason)
        return new

    def _abandon_trial(self, state: LayoutState, reason: str) -> LayoutState:
        return state if state.trial is None else self._rollback(state, reason)

    def _point_current(self, slot: str | None) -> None:
        link = self.root / "current"
        if slot is None:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
        else:
            temp = self.root / ".current.tmp"
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            temp.symlink_to(f"slot-{slot}")
            os.replace(temp, link)
        _fsync_dir(self.root)

    def _save(self, state: LayoutState) -> None:
        write_atomic(self.state_path, state.to_json(), mode=0o644)


def _empty(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o755)


def _write_file(slot: Path, entry: FileEntry, stream: IO[bytes]) -> None:
    target = slot / entry.path
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, 0o755 if entry.executable else 0o644)
    with open(fd, "wb") as out:
        _copy_checked(stream, entry, out)
        out.flush()
        os.fsync(out.fileno())


def _fsync_tree(top: Path) -> None:
    for folder, _dirs, _names in os.walk(top):
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the health check ------------------------------------------------------------


def run_health(slot: Path, commands: Sequence[Sequence[str]], timeout: float) -> HealthReport:
    """Run each command from inside ``slot``; all must exit 0 within ``timeout`` seconds each."""
    said = []
    for command in commands:
        report = _run_one(slot, command, timeout)
        if not report.passed:
            return report
        said.append(report.detail)
    return HealthReport(True, "; ".join(said))


def _run_one(slot: Path, command: Sequence[str], timeout: float) -> HealthReport:
    argv = [str(slot / command[0]), *command[1:]]
    env = {"PATH": "/usr/bin:/bin", "EDGE_SLOT": str(slot), "LANG": "C.UTF-8"}
    try:
        # A session of its own, so a timeout kills whatever the command started.
        process = subprocess.Popen(
            argv,
            cwd=slot,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return HealthReport(False, f"{command[0]}: cannot run: {exc.strerror}")
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return HealthReport(False, f"{' '.join(command)}: no answer within {timeout:g} s")
    text = output.decode("utf-8", "replace")[-HEALTH_OUTPUT_CHARS:].strip()
    if process.returncode != 0:
        return HealthReport(False, f"{' '.join(command)}: exit {process.returncode}: {text}")
    last = text.splitlines()[-1] if text else "ok"
    return HealthReport(True, f"{' '.join(command)}: {last}")


# -- `edge update` ---------------------------------------------------------------


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("update", help="verify and install signed update bundles")
    sub = parser.add_subparsers(dest="update_command", required=True, metavar="ACTION")
    verify_cmd = _with_root(sub.add_parser("verify", help="check a bundle, change nothing"))
    _with_bundle(verify_cmd)
    verify_cmd.add_argument("--running-version", help="instead of the committed slot's")
    verify_cmd.set_defaults(run=_verify_command)
    install = _with_bundle(
        _with_root(sub.add_parser("install", help="install into the other slot"))
    )
    install.add_argument("--timeout", type=float, default=HEALTH_TIMEOUT, help="per health command")
    install.add_argument("--defer", action="store_true", help="leave the check to the next start")
    install.set_defaults(run=_install_command)
    commit = _with_root(sub.add_parser("commit", help="keep the slot on trial"))
    commit.add_argument("--if-trial", action="store_true", help="no error when none is on trial")
    commit.set_defaults(run=_commit_command)
    _with_root(sub.add_parser("rollback", help="give up the slot on trial")).set_defaults(
        run=_rollback_command
    )
    _with_root(sub.add_parser("status", help="print the slots")).set_defaults(run=_status_command)
    _with_root(sub.add_parser("boot-check", help="before a start: count or roll back a trial"))
    sub.choices["boot-check"].set_defaults(run=_boot_command)
    _add_build(sub)


def _with_root(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the A/B layout")
    return parser


def _with_bundle(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("bundle", type=Path, help="a bundle: tar archive or directory")
    parser.add_argument("--key", type=Path, default=DEFAULT_KEY, help="the pinned release key")
    return parser


def _add_build(sub: Any) -> None:
    build = sub.add_parser("build", help="sign a folder into a bundle (release side)")
    build.add_argument("source", type=Path, help="the folder a slot will hold")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--signing-key", type=Path, required=True, help="an `edge keys issuer` file")
    build.add_argument("--version", dest="bundle_version", required=True)
    build.add_argument("--min-version", required=True)
    build.add_argument(
        "--health", action="append", required=True, help="a health command, repeatable"
    )
    build.set_defaults(run=_build_command)


def _verify_command(args: argparse.Namespace) -> int:
    running = args.running_version or SlotLayout(args.root).running_version()
    manifest = verify(args.bundle, read_release_key(args.key), running)
    print(f"{args.bundle}: version {manifest.version}, {len(manifest.files)} files, verified")
    return 0


def _install_command(args: argparse.Namespace) -> int:
    layout = SlotLayout(args.root, health_timeout=args.timeout)
    outcome = layout.install(args.bundle, read_release_key(args.key), defer=args.defer)
    verdict = "committed" if outcome.committed else ("on trial" if args.defer else "rolled back")
    print(f"version {outcome.version} in slot {outcome.slot}: {verdict}: {outcome.detail}")
    return 0 if outcome.committed or args.defer else 1


def _commit_command(args: argparse.Namespace) -> int:
    state = SlotLayout(args.root).commit(if_trial=args.if_trial)
    print(f"committed slot: {state.committed or 'none'}")
    return 0


def _rollback_command(args: argparse.Namespace) -> int:
    state = SlotLayout(args.root).rollback()
    print(f"running slot: {state.committed or 'none'}")
    return 0


def _boot_command(args: argparse.Namespace) -> int:
    _state, what = SlotLayout(args.root).boot_check()
    print(what)
    return 0


def _status_command(args: argparse.Namespace) -> int:
    layout = SlotLayout(args.root)
    state = layout.read_state()
    print(
        f"current: {layout.current() or 'none'}, committed: {state.committed or 'none'},"
        f" trial: {state.trial or 'none'} (starts {state.starts})"
    )
    for name, info in zip(SLOTS, state.slots, strict=True):
        print(f"slot {name}: {info.status} {info.version or ''}".rstrip())
    return 0


def _build_command(args: argparse.Namespace) -> int:
    from edge.crypto.keys import IssuerKey

    key = IssuerKey.load(args.signing_key)
    health = [command.split() for command in args.health]
    manifest = build_bundle(
        args.source,
        args.out,
        key.sign,
        version=args.bundle_version,
        min_version=args.min_version,
        health=health,
    )
    print(f"wrote {args.out}: version {manifest.version}, {len(manifest.files)} files")
    print(f"  release key (pin it on devices): {key.public.hex()}")
    return 0

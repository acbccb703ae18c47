"""Signed update bundles and A/B slots: what verifies, what is refused with the running
slot untouched, health checks that commit or roll back, and power cuts mid-install.

The installs run the real ``edge update`` command in a child process where it
matters (the CLI, the power cuts); the health checks run real programs from the
new slot, the good ones ``edge --version`` itself.
"""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from edge.device.update import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    SIGNING_CONTEXT,
    BadBundleSignature,
    BundleMalformed,
    BundleRefused,
    BundleTampered,
    DowngradeRefused,
    FileEntry,
    Manifest,
    SlotLayout,
    SlotStateError,
    UpdateError,
    build_bundle,
    check_path,
    parse_manifest,
    parse_state,
    parse_version,
    read_release_key,
    verify,
)

EDGE_SCRIPT = f'#!/bin/sh\nexec {sys.executable} -m edge "$@"\n'
HEALTH_EDGE = (("bin/edge", "--version"),)
FAST_OK = (("bin/ok",),)


@pytest.fixture
def release() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def key_file(tmp_path: Path, release: SigningKey) -> Path:
    path = tmp_path / "release.pub"
    path.write_text(bytes(release.verify_key).hex() + "\n")
    return path


def release_tree(where: Path, tag: str, *, files: int = 2, ok_exit: int = 0) -> Path:
    """A folder a slot will hold: edge's launcher, a health program, some payload."""
    where.mkdir(parents=True)
    (where / "bin").mkdir()
    _script(where / "bin/edge", EDGE_SCRIPT)
    _script(where / "bin/ok", f"#!/bin/sh\nexit {ok_exit}\n")
    (where / "lib").mkdir()
    for index in range(files):
        (where / "lib" / f"part{index:04}.bin").write_bytes(f"{tag}:{index}:".encode() * 2000)
    (where / "VERSION").write_text(tag + "\n")
    return where


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def bundle(
    tmp_path: Path,
    release: SigningKey,
    version: str,
    *,
    min_version: str = "0.1",
    health: Sequence[Sequence[str]] = FAST_OK,
    **tree: int,
) -> Path:
    source = release_tree(
        tmp_path / f"src-{version}-{len(list(tmp_path.iterdir()))}", version, **tree
    )
    out = source.with_suffix(".tar")
    build_bundle(source, out, release, version=version, min_version=min_version, health=health)
    return out


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash or link target (the lock aside)."""
    seen: dict[str, str] = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                seen[relative] = "-> " + os.readlink(path)
            elif path.is_file() and name != ".lock":
                mode = oct(path.stat().st_mode & 0o777)
                seen[relative] = mode + " " + hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def slot_snapshot(root: Path, slot: str) -> dict[str, str]:
    return snapshot(root / f"slot-{slot}")


def edge_update(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "update", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def installed(tmp_path: Path, release: SigningKey, version: str = "1.0") -> SlotLayout:
    """A layout whose slot a holds ``version``, committed."""
    layout = SlotLayout(tmp_path / "opt")
    outcome = layout.install(bundle(tmp_path, release, version), release.verify_key)
    assert outcome.committed and outcome.slot == "a"
    return layout


# -- a good bundle -----------------------------------------------------------------


def test_a_good_bundle_installs_into_the_other_slot_and_commits_after_edge_runs(
    tmp_path: Path, release: SigningKey, key_file: Path
) -> None:
    root = tmp_path / "opt"
    first = bundle(tmp_path, release, "1.0", health=HEALTH_EDGE)
    done = edge_update("install", str(first), "--key", str(key_file), "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert "committed" in done.stdout and "edge 0.1.0" in done.stdout
    assert os.readlink(root / "current") == "slot-a"

    second = bundle(tmp_path, release, "1.1", health=HEALTH_EDGE)
    done = edge_update("install", str(second), "--key", str(key_file), "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert os.readlink(root / "current") == "slot-b"
    assert (root / "current/VERSION").read_text() == "1.1\n"
    assert os.access(root / "current/bin/edge", os.X_OK)
    assert not os.access(root / "current/VERSION", os.X_OK)

    state = SlotLayout(root).read_state()
    assert (state.committed, state.trial) == ("b", None)
    assert [(info.version, info.status) for info in state.slots] == [
        ("1.0", "previous"),
        ("1.1", "committed"),
    ]
    status = edge_update("status", "--root", str(root))
    assert "committed: b" in status.stdout and "slot a: previous 1.0" in status.stdout


def test_verify_accepts_a_good_bundle_as_tar_and_as_directory(
    tmp_path: Path, release: SigningKey, key_file: Path
) -> None:
    archive = bundle(tmp_path, release, "2.0")
    manifest = verify(archive, read_release_key(key_file), "1.0")
    assert manifest.version == "2.0" and len(manifest.files) == 5

    folder = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    assert verify(folder, release.verify_key, "1.0") == manifest
    done = edge_update("verify", str(folder), "--key", str(key_file), "--running-version", "1.9")
    assert done.returncode == 0 and "verified" in done.stdout

    # What `tar -C unpacked -czf bundle.tgz .` makes: compressed, every name ./NAME.
    compressed = tmp_path / "bundle.tgz"
    with tarfile.open(compressed, "w:gz") as tar:
        tar.add(folder, arcname=".")
    assert verify(compressed, release.verify_key, "1.0") == manifest


# -- refusals: each names its reason and leaves everything as it was -----------------


def _rewrite_member(archive: Path, name: str, change: Callable[[bytes], bytes]) -> Path:
    out = archive.with_name("changed-" + archive.name)
    with tarfile.open(archive) as source, tarfile.open(out, "w") as target:
        for member in source:
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == name:
                data = change(data)
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    return out


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _signed_tar(
    tmp_path: Path, key: SigningKey, manifest: Manifest, files: dict[str, bytes]
) -> Path:
    out = tmp_path / "crafted.tar"
    raw = manifest.to_json()
    members = {MANIFEST_NAME: raw, SIGNATURE_NAME: key.sign(SIGNING_CONTEXT + raw).signature}
    members.update({f"files/{path}": data for path, data in files.items()})
    with tarfile.open(out, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def _escaping(tmp_path: Path, release: SigningKey) -> Path:
    data = b"#!/bin/sh\n"
    entry = FileEntry("bin/../../evil", len(data), hashlib.sha256(data).digest(), True)
    manifest = Manifest("2.0", "0.1", (entry,), (("bin/../../evil",),))
    return _signed_tar(tmp_path, release, manifest, {"bin/../../evil": data})


def _unlisted(tmp_path: Path, release: SigningKey) -> Path:
    good = bundle(tmp_path, release, "2.0")
    out = good.with_name("extra.tar")
    with tarfile.open(good) as source, tarfile.open(out, "w") as target:
        for member in source:
            target.addfile(member, source.extractfile(member))
        info = tarfile.TarInfo("files/bin/backdoor")
        info.size = 3
        target.addfile(info, io.BytesIO(b"hi\n"))
    return out


def _with_link(tmp_path: Path, release: SigningKey) -> Path:
    good = bundle(tmp_path, release, "2.0")
    out = good.with_name("link.tar")
    with tarfile.open(good) as source, tarfile.open(out, "w") as target:
        for member in source:
            if member.name == "files/VERSION":
                member.type, member.linkname, member.size = tarfile.SYMTYPE, "/etc/shadow", 0
                target.addfile(member)
            else:
                target.addfile(member, source.extractfile(member))
    return out


def _truncated(archive: Path) -> Path:
    data = archive.read_bytes()
    out = archive.with_name("truncated.tar")
    out.write_bytes(data[: len(data) * 2 // 3])
    return out


REFUSALS: dict[str, tuple[Callable[[Path, SigningKey], Path], type[BundleRefused], str]] = {
    "tampered file": (
        lambda t, k: _rewrite_member(bundle(t, k, "2.0"), "files/VERSION", _flip_last),
        BundleTampered,
        "VERSION: SHA-256 differs",
    ),
    "longer file": (
        lambda t, k: _rewrite_member(bundle(t, k, "2.0"), "files/bin/ok", lambda d: d + b"x"),
        BundleTampered,
        "longer than the manifest",
    ),
    "truncated archive": (
        lambda t, k: _truncated(bundle(t, k, "2.0", files=8)),
        BundleTampered,
        "truncated",
    ),
    "bad signature": (
        lambda t, k: _rewrite_member(bundle(t, k, "2.0"), SIGNATURE_NAME, _flip_last),
        BadBundleSignature,
        "does not verify with the release key",
    ),
    "edited manifest": (
        lambda t, k: _rewrite_member(
            bundle(t, k, "2.0"), MANIFEST_NAME, lambda d: d.replace(b'"2.0"', b'"3.0"')
        ),
        BadBundleSignature,
        "signature",
    ),
    "wrong key": (
        lambda t, k: bundle(t, SigningKey.generate(), "2.0"),
        BadBundleSignature,
        "signature",
    ),
    "downgrade": (lambda t, k: bundle(t, k, "0.9"), DowngradeRefused, "not newer than"),
    "same version": (lambda t, k: bundle(t, k, "1.0"), DowngradeRefused, "not newer than"),
    "too old to replace": (
        lambda t, k: bundle(t, k, "3.0", min_version="2.0"),
        DowngradeRefused,
        "replaces 2.0 or later",
    ),
    "path outside the slot": (_escaping, BundleMalformed, "leaves the slot"),
    "unlisted file": (_unlisted, BundleTampered, "not in the manifest"),
    "link in the archive": (_with_link, BundleMalformed, "'files/VERSION' is a link"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_bad_bundle_is_refused_with_its_reason_and_nothing_changes(
    tmp_path: Path, release: SigningKey, case: str
) -> None:
    make, error, reason = REFUSALS[case]
    layout = installed(tmp_path, release)
    before = snapshot(layout.root)
    bad = make(tmp_path, release)

    with pytest.raises(error, match=reason):
        verify(bad, release.verify_key, "1.0")
    with pytest.raises(error, match=reason):
        layout.install(bad, release.verify_key)

    assert snapshot(layout.root) == before
    assert os.readlink(layout.root / "current") == "slot-a"


def test_the_command_refuses_a_bad_bundle_with_exit_1_and_the_reason(
    tmp_path: Path, release: SigningKey, key_file: Path
) -> None:
    layout = installed(tmp_path, release)
    before = snapshot(layout.root)
    bad = _escaping(tmp_path, release)
    done = edge_update("install", str(bad), "--key", str(key_file), "--root", str(layout.root))
    assert done.returncode == 1
    assert "'bin/../../evil' leaves the slot" in done.stderr
    assert snapshot(layout.root) == before


# -- health check and rollback ---------------------------------------------------------


def test_a_failing_health_check_rolls_back_to_the_running_slot(
    tmp_path: Path, release: SigningKey, key_file: Path
) -> None:
    layout = installed(tmp_path, release)
    running = slot_snapshot(layout.root, "a")
    broken = bundle(tmp_path, release, "2.0", ok_exit=3)
    done = edge_update("install", str(broken), "--key", str(key_file), "--root", str(layout.root))
    assert done.returncode == 1
    assert "rolled back" in done.stdout and "bin/ok: exit 3" in done.stdout
    assert os.readlink(layout.root / "current") == "slot-a"
    assert slot_snapshot(layout.root, "a") == running
    state = layout.read_state()
    assert (state.committed, state.trial) == ("a", None)
    assert state.slot("b").status == "failed"

    # The next good release goes into the failed slot and is kept.
    outcome = layout.install(bundle(tmp_path, release, "2.1"), release.verify_key)
    assert outcome.committed and outcome.slot == "b"


def test_a_health_check_that_hangs_is_cut_off_and_rolled_back(
    tmp_path: Path, release: SigningKey
) -> None:
    layout = installed(tmp_path, release)
    source = release_tree(tmp_path / "hangs", "2.0")
    _script(source / "bin/hang", "#!/bin/sh\nexec sleep 600\n")
    archive = tmp_path / "hangs.tar"
    build_bundle(source, archive, release, version="2.0", min_version="1.0", health=[["bin/hang"]])
    quick = SlotLayout(layout.root, health_timeout=0.5)
    outcome = quick.install(archive, release.verify_key)
    assert not outcome.committed
    assert "bin/hang: no answer within 0.5 s" in outcome.detail
    assert os.readlink(layout.root / "current") == "slot-a"


def test_a_first_start_that_never_reports_healthy_is_rolled_back_at_the_next(
    tmp_path: Path, release: SigningKey, key_file: Path
) -> None:
    layout = installed(tmp_path, release)
    outcome = layout.install(bundle(tmp_path, release, "2.0"), release.verify_key, defer=True)
    assert not outcome.committed and os.readlink(layout.root / "current") == "slot-b"

    first = edge_update("boot-check", "--root", str(layout.root))
    assert first.returncode == 0 and "start 1 of 1" in first.stdout
    assert os.readlink(layout.root / "current") == "slot-b"
    # No READY, no commit: the service restarts and the check runs again.
    second = edge_update("boot-check", "--root", str(layout.root))
    assert second.returncode == 0 and "rolled back" in second.stdout
    assert os.readlink(layout.root / "current") == "slot-a"
    state = layout.read_state()
    assert (state.committed, state.trial, state.slot("b").status) == ("a", None, "failed")


def test_a_first_start_that_reports_healthy_commits_the_trial(
    tmp_path: Path, release: SigningKey
) -> None:
    layout = installed(tmp_path, release)
    layout.install(bundle(tmp_path, release, "2.0"), release.verify_key, defer=True)
    assert "start 1" in edge_update("boot-check", "--root", str(layout.root)).stdout
    assert edge_update("commit", "--if-trial", "--root", str(layout.root)).returncode == 0
    state = layout.read_state()
    assert (state.committed, state.trial) == ("b", None)
    # Later starts: nothing on trial, commit --if-trial is a no-op, plain commit refuses.
    assert "no slot on trial" in edge_update("boot-check", "--root", str(layout.root)).stdout
    assert edge_update("commit", "--if-trial", "--root", str(layout.root)).returncode == 0
    refused = edge_update("commit", "--root", str(layout.root))
    assert refused.returncode == 1 and "nothing to commit" in refused.stderr


def test_rollback_by_hand_gives_up_the_trial(tmp_path: Path, release: SigningKey) -> None:
    layout = installed(tmp_path, release)
    layout.install(bundle(tmp_path, release, "2.0"), release.verify_key, defer=True)
    done = edge_update("rollback", "--root", str(layout.root))
    assert done.returncode == 0 and "running slot: a" in done.stdout
    assert os.readlink(layout.root / "current") == "slot-a"
    with pytest.raises(SlotStateError, match="nothing to roll back"):
        layout.rollback()


# -- power cuts ------------------------------------------------------------------------


def _files_in(folder: Path) -> int:
    count = 0
    for _folder, _dirs, names in os.walk(folder):
        count += len(names)
    return count


def _trial_recorded(root: Path) -> bool:
    try:
        return json.loads((root / "state.json").read_text())["trial"] is not None
    except (OSError, ValueError):
        return False


def _wait_until(done: Callable[[], bool], child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not done():
        assert child.poll() is None, "the install ended before the cut"
        assert time.monotonic() < deadline, "the install never got that far"
        time.sleep(0.002)  # polling the child's progress on disk, with a deadline


@pytest.mark.parametrize("cut", [1, 60, 200, 399, "health"])
def test_a_power_cut_mid_install_leaves_the_running_slot_and_the_next_install_works(
    tmp_path: Path, release: SigningKey, key_file: Path, cut: int | str
) -> None:
    layout = installed(tmp_path, release)
    running = slot_snapshot(layout.root, "a")
    pid_file = tmp_path / "health.pid"
    source = release_tree(tmp_path / "big", "2.0", files=400)
    # Its health check never finishes, so the install cannot complete before the cut.
    _script(source / "bin/wait", f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    big = tmp_path / "big.tar"
    build_bundle(source, big, release, version="2.0", min_version="1.0", health=[["bin/wait"]])

    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge",
            "update",
            "install",
            str(big),
            "--key",
            str(key_file),
            "--root",
            str(layout.root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if cut == "health":
            _wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", child)
        else:
            assert isinstance(cut, int)
            _wait_until(lambda: _files_in(layout.root / "slot-b") >= cut, child)
    finally:
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    if cut == "health":
        assert _trial_recorded(layout.root)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the cut takes it too

    assert slot_snapshot(layout.root, "a") == running
    assert layout.read_state().committed == "a"
    # The reboot: the boot check settles what the cut left, the running slot is a.
    edge_update("boot-check", "--root", str(layout.root))
    edge_update("boot-check", "--root", str(layout.root))
    assert os.readlink(layout.root / "current") == "slot-a"

    outcome = layout.install(bundle(tmp_path, release, "2.1"), release.verify_key)
    assert outcome.committed and outcome.slot == "b"
    assert (layout.root / "current/VERSION").read_text() == "2.1\n"
    assert slot_snapshot(layout.root, "a") == running


def test_an_install_abandons_a_trial_a_cut_left_behind(tmp_path: Path, release: SigningKey) -> None:
    layout = installed(tmp_path, release)
    layout.install(bundle(tmp_path, release, "2.0"), release.verify_key, defer=True)
    outcome = layout.install(bundle(tmp_path, release, "2.1"), release.verify_key)
    assert outcome.committed and outcome.slot == "b"
    assert layout.read_state().slot("a").status == "previous"


# -- the manifest and state schemas ------------------------------------------------------


def _manifest_json(**changes: object) -> bytes:
    document: dict[str, object] = {
        "format": 1,
        "version": "1.0",
        "min_version": "0.1",
        "files": [{"path": "bin/x", "size": 0, "sha256": "0" * 64, "executable": True}],
        "health": [["bin/x"]],
    }
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"format": 1, "format": 1}', "appears twice"),
        (_manifest_json(extra=1), "unknown keys \\['extra'\\]"),
        (_manifest_json(format=True), "'format' must be 1"),
        (_manifest_json(version="1.02"), "version '1.02'"),
        (_manifest_json(health=[["/bin/sh", "-c", "true"]]), "not an executable file"),
        (_manifest_json(health=[]), "1 to 8 commands"),
        (_manifest_json(files=[]), "1 to 20000 files"),
        (
            _manifest_json(
                files=[{"path": "a", "size": True, "sha256": "0" * 64, "executable": True}]
            ),
            "size",
        ),
        (
            _manifest_json(
                files=[
                    {"path": "bin", "size": 0, "sha256": "0" * 64, "executable": False},
                    {"path": "bin/x", "size": 0, "sha256": "0" * 64, "executable": True},
                ]
            ),
            "inside a listed file",
        ),
        (b'{"format": NaN}', "not a JSON number"),
        (b"\xff", "not JSON"),
        (b" " * (1024 * 1024 + 1), "over"),
    ],
)
def test_the_manifest_schema_is_strict(raw: bytes, reason: str) -> None:
    with pytest.raises(BundleMalformed, match=reason):
        parse_manifest(raw)


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b", "a\nb", "", "x" * 256]
)
def test_paths_that_leave_the_slot_or_are_not_plain_are_refused(path: str) -> None:
    with pytest.raises(BundleMalformed):
        check_path(path, "files[0]")


def test_versions_compare_as_numbers() -> None:
    assert parse_version("1.10") > parse_version("1.9")
    assert parse_version("0.1.0") == (0, 1, 0)
    for bad in ["", "1.", "v1", "01", "1.2.3.4.5", 1.0]:
        with pytest.raises(BundleMalformed):
            parse_version(bad)


def test_a_corrupt_state_file_is_an_error_not_a_guess(tmp_path: Path, release: SigningKey) -> None:
    layout = installed(tmp_path, release)
    assert parse_state(layout.state_path.read_bytes(), "state") == layout.read_state()
    good = json.loads(layout.state_path.read_text())
    for wrong in (
        {"format": 1, "committed": "c"},
        {**good, "committed": "c"},
        {**good, "starts": -1},
        {**good, "slots": {"a": {"version": "1.0", "status": ["x"]}, "b": good["slots"]["b"]}},
        {**good, "slots": {"a": {"version": "01", "status": "trial"}, "b": good["slots"]["b"]}},
    ):
        layout.state_path.write_text(json.dumps(wrong))
        with pytest.raises(SlotStateError, match="corrupt"):
            layout.read_state()
    layout.state_path.write_bytes(b"\xff" * 10)
    with pytest.raises(SlotStateError, match="corrupt"):
        layout.read_state()
    done = edge_update("status", "--root", str(layout.root))
    assert done.returncode == 1 and "corrupt" in done.stderr


def test_a_release_key_file_must_hold_one_hex_key(tmp_path: Path) -> None:
    path = tmp_path / "release.pub"
    path.write_text("not a key\n")
    with pytest.raises(UpdateError, match="64 hex digits"):
        read_release_key(path)
    with pytest.raises(UpdateError, match="cannot read"):
        read_release_key(tmp_path / "missing.pub")


def test_a_release_is_signed_with_an_issuer_key_file_and_checked_by_its_public_half(
    tmp_path: Path,
) -> None:
    signing = tmp_path / "release.key"
    made = subprocess.run(
        [sys.executable, "-m", "edge", "keys", "issuer", "--out", str(signing)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    public = made.stdout.split("Ed25519 public ", 1)[1].split()[0]
    (tmp_path / "release.pub").write_text(public + "\n")
    source = release_tree(tmp_path / "slot", "3.0")
    out = tmp_path / "edge-3.0.tar"
    build = edge_update(
        "build", str(source), "--out", str(out), "--signing-key", str(signing),
        "--version", "3.0", "--min-version", "2.0", "--health", "bin/edge --version",
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert public in build.stdout

    key = str(tmp_path / "release.pub")
    checked = edge_update("verify", str(out), "--key", key, "--running-version", "2.5")
    assert checked.returncode == 0 and "version 3.0, 5 files, verified" in checked.stdout
    too_old = edge_update("verify", str(out), "--key", key, "--running-version", "1.0")
    assert too_old.returncode == 1 and "replaces 2.0 or later" in too_old.stderr


def test_a_first_install_that_fails_its_check_leaves_no_current_link(
    tmp_path: Path, release: SigningKey
) -> None:
    layout = SlotLayout(tmp_path / "opt")
    outcome = layout.install(bundle(tmp_path, release, "1.0", ok_exit=1), release.verify_key)
    assert not outcome.committed
    assert not (layout.root / "current").is_symlink()
    state = layout.read_state()
    assert (state.committed, state.trial, state.slot("a").status) == (None, None, "failed")

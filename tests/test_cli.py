"""The ``edge`` command: the key tool in-process, the demo as the user runs it."""

import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_issue_and_verify_a_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issuer, device, cert = tmp_path / "issuer.key", tmp_path / "dev.key", tmp_path / "dev.cert"
    code, out, _ = run(capsys, "keys", "issuer", "--out", str(issuer))
    assert code == 0
    issuer_public = out.split("Ed25519 public ")[1].split()[0]
    assert run(capsys, "keys", "device", "--out", str(device))[0] == 0
    code, out, _ = run(
        capsys, "keys", "certify", "--issuer", str(issuer), "--device", str(device),
        "--user", "alice", "--device-id", "desk-1", "--hours", "2", "--out", str(cert),
    )  # fmt: skip
    assert code == 0
    assert "for alice/desk-1" in out
    code, out, _ = run(capsys, "keys", "show", str(cert), "--issuer-public", issuer_public)
    assert code == 0
    assert "verified" in out


def test_keys_show_names_an_untrusted_issuer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a.key", "b.key"):
        run(capsys, "keys", "issuer", "--out", str(tmp_path / name))
    run(capsys, "keys", "device", "--out", str(tmp_path / "dev.key"))
    run(
        capsys, "keys", "certify", "--issuer", str(tmp_path / "a.key"),
        "--device", str(tmp_path / "dev.key"), "--user", "u", "--device-id", "d",
        "--out", str(tmp_path / "dev.cert"),
    )  # fmt: skip
    code, out, _ = run(capsys, "keys", "issuer", "--out", str(tmp_path / "c.key"))
    other = out.split("Ed25519 public ")[1].split()[0]
    code, _, err = run(capsys, "keys", "show", str(tmp_path / "dev.cert"), "--issuer-public", other)
    assert code == 1
    assert "is not trusted here" in err


def test_keys_refuse_a_world_readable_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "dev.key"
    run(capsys, "keys", "device", "--out", str(key))
    key.chmod(0o644)
    run(capsys, "keys", "issuer", "--out", str(tmp_path / "i.key"))
    code, _, err = run(
        capsys, "keys", "certify", "--issuer", str(tmp_path / "i.key"), "--device", str(key),
        "--user", "u", "--device-id", "d", "--out", str(tmp_path / "c"),
    )  # fmt: skip
    assert code == 1
    assert "chmod 600" in err


def test_demo_runs_two_processes_to_a_receipt() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge", "demo", "--message", "ring ring"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "[   phone] made its keys; enrolled with the account password: certificate" in out
    assert "[intercom] renewed it by signing a challenge with its device key (no password):" in out
    assert "[   phone] handshake complete" in out
    assert "peer is frontdoor/door-intercom" in out
    assert "[intercom] handshake complete: peer is alice/desk-phone" in out
    assert "[intercom] message #1 from alice: 'ring ring'" in out
    assert "[   phone] receipt: DELIVERED" in out
    assert out.rstrip().endswith("message and receipt exchanged")

"""The ``edge`` command: the key tool in-process, the demo as the user runs it."""

import re
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


def test_demo_runs_the_network_a_message_reaches_the_phone_and_a_call_carries_audio() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge", "demo"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"\[ super-2\] joined the overlay through super-1", out)
    assert re.search(r"\[   phone\] online via 127\.0\.0\.1:\d+ over udp \(super-1\)", out)
    assert re.search(r"\[intercom\] online via 127\.0\.0\.1:\d+ over udp \(super-2\)", out)
    assert "[intercom] $ edge ctl --socket intercom.sock search alice" in out
    assert re.search(
        r"\[intercom\] found alice/desk-phone, online at supernode 127\.0\.0\.1:\d+ "
        r"\(super-1\), candidates: host 127\.0\.0\.1:\d+",
        out,
    )
    assert "[intercom] delivered to alice/desk-phone: encrypted end to end" in out
    assert "[   phone] inbox: from front-door/intercom: 'Someone is at the front door'" in out
    assert "[intercom] $ edge ctl --socket intercom.sock call alice" in out
    assert "[intercom] call with alice: active on a direct-udp path" in out
    assert "[   phone] call with front-door: active on a direct-udp path" in out
    assert re.search(r"\[   phone\] call with front-door: active on a direct-udp path, rtt ", out)
    assert "[intercom] $ edge ctl --socket intercom.sock hangup" in out
    for name in ("phone", "intercom"):
        assert re.search(rf"\[{name:>8}\] call ended \(hang-up\): \d+ frames sent, \d+ rec", out)
    # Each recording holds the other side's tones: checked by the demo, shown here.
    assert re.search(
        r"\[   phone\] phone-heard\.wav: \d\.\d s, dominant tones 659, 523 Hz = what the "
        r"intercom played",
        out,
    )
    assert re.search(
        r"\[intercom\] intercom-heard\.wav: \d\.\d s, dominant tones 880, 1175, 1397 Hz = "
        r"what the phone played",
        out,
    )
    for name in ("phone", "intercom", "super-1", "super-2"):
        assert f"[{name:>8}] stopped, exit status 0" in out
    assert "their call carried each side's tones" in out.splitlines()[-2]

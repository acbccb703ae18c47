"""Keys on disk and certificate verification: every failure has its own error."""

import os
import stat
from pathlib import Path

import pytest

from edge.crypto.cert import CERTIFICATE_FILE_MAX, TrustStore, issue, read_certificate
from edge.crypto.errors import (
    BadSignature,
    CertificateExpired,
    CertificateFileError,
    CertificateKeyMismatch,
    CertificateNotYetValid,
    CertificateRevoked,
    KeyFileError,
    UnknownIssuer,
)
from edge.crypto.keys import DeviceKeys, IssuerKey, key_id
from edge.errors import LocalError
from edge.wire.codes import ErrorCode
from edge.wire.errors import WireError

NOW = 1_800_000_000


def make_cert(
    issuer: IssuerKey,
    device: DeviceKeys,
    *,
    serial: int = 7,
    start: int = NOW - 60,
    end: int = NOW + 3600,
) -> bytes:
    return issue(
        issuer,
        serial=serial,
        user_id="alice",
        device_id="desk-1",
        sign_key=device.sign_public,
        dh_key=device.dh_public,
        not_before=start,
        not_after=end,
    )


@pytest.fixture
def issuer() -> IssuerKey:
    return IssuerKey.generate()


@pytest.fixture
def device() -> DeviceKeys:
    return DeviceKeys.generate()


def test_valid_certificate_verifies_and_names_its_contents(
    issuer: IssuerKey, device: DeviceKeys
) -> None:
    raw = make_cert(issuer, device)
    cert = TrustStore([issuer.public]).verify(raw, NOW, dh_key=device.dh_public, user_id="alice")
    assert (cert.user_id, cert.device_id, cert.serial) == ("alice", "desk-1", 7)
    assert cert.sign_key == device.sign_public
    assert cert.dh_key == device.dh_public
    assert cert.issuer_key_id == issuer.key_id == key_id(issuer.public)
    assert cert.raw == raw


def test_expired(issuer: IssuerKey, device: DeviceKeys) -> None:
    raw = make_cert(issuer, device, start=NOW - 7200, end=NOW - 3600)
    with pytest.raises(CertificateExpired) as info:
        TrustStore([issuer.public]).verify(raw, NOW)
    assert info.value.code is ErrorCode.CERT_EXPIRED


def test_not_yet_valid(issuer: IssuerKey, device: DeviceKeys) -> None:
    raw = make_cert(issuer, device, start=NOW + 3600, end=NOW + 7200)
    with pytest.raises(CertificateNotYetValid) as info:
        TrustStore([issuer.public]).verify(raw, NOW)
    assert info.value.code is ErrorCode.CERT_NOT_YET_VALID


def test_skew_tolerance_is_applied_at_both_ends(issuer: IssuerKey, device: DeviceKeys) -> None:
    raw = make_cert(issuer, device, start=NOW + 100, end=NOW + 200)
    store = TrustStore([issuer.public], skew=120)
    store.verify(raw, NOW)
    store.verify(raw, NOW + 300)
    with pytest.raises(CertificateExpired):
        store.verify(raw, NOW + 321)


def test_unknown_issuer(issuer: IssuerKey, device: DeviceKeys) -> None:
    raw = make_cert(issuer, device)
    with pytest.raises(UnknownIssuer) as info:
        TrustStore([IssuerKey.generate().public]).verify(raw, NOW)
    assert issuer.key_id.hex() in str(info.value)


def test_bad_signature_on_any_changed_byte(issuer: IssuerKey, device: DeviceKeys) -> None:
    raw = make_cert(issuer, device)
    store = TrustStore([issuer.public])
    # Flip one bit of the serial, which stays a well-formed certificate.
    tampered = bytearray(raw)
    tampered[1 + 7] ^= 0x01
    with pytest.raises(BadSignature):
        store.verify(bytes(tampered), NOW)
    forged_sig = raw[:-1] + bytes([raw[-1] ^ 0x80])
    with pytest.raises(BadSignature):
        store.verify(forged_sig, NOW)


def test_signature_checked_before_dates(issuer: IssuerKey, device: DeviceKeys) -> None:
    # An expired and forged certificate must be reported as forged: its dates mean nothing.
    raw = bytearray(make_cert(issuer, device, start=NOW - 7200, end=NOW - 3600))
    raw[-5] ^= 0xFF
    with pytest.raises(BadSignature):
        TrustStore([issuer.public]).verify(bytes(raw), NOW)


def test_revoked(issuer: IssuerKey, device: DeviceKeys) -> None:
    raw = make_cert(issuer, device, serial=42)
    store = TrustStore([issuer.public])
    store.set_revoked(issuer.key_id, {41, 42})
    with pytest.raises(CertificateRevoked) as info:
        store.verify(raw, NOW)
    assert info.value.code is ErrorCode.CERT_REVOKED
    store.set_revoked(issuer.key_id, {41})
    store.verify(raw, NOW)


def test_key_and_user_binding(issuer: IssuerKey, device: DeviceKeys) -> None:
    raw = make_cert(issuer, device)
    store = TrustStore([issuer.public])
    with pytest.raises(CertificateKeyMismatch):
        store.verify(raw, NOW, dh_key=DeviceKeys.generate().dh_public)
    with pytest.raises(CertificateKeyMismatch):
        store.verify(raw, NOW, user_id="mallory")


def test_truncated_or_garbage_is_a_wire_error(issuer: IssuerKey, device: DeviceKeys) -> None:
    raw = make_cert(issuer, device)
    store = TrustStore([issuer.public])
    for cut in (0, 1, 10, len(raw) - 1):
        with pytest.raises(WireError):
            store.verify(raw[:cut], NOW)
    with pytest.raises(WireError):
        store.verify(raw + b"\x00", NOW)


def test_issue_refuses_an_empty_window(issuer: IssuerKey, device: DeviceKeys) -> None:
    with pytest.raises(LocalError):
        make_cert(issuer, device, start=NOW, end=NOW)


def test_device_keys_round_trip_with_mode_0600(tmp_path: Path) -> None:
    keys = DeviceKeys.generate()
    path = tmp_path / "device.key"
    keys.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = DeviceKeys.load(path)
    assert loaded.sign_public == keys.sign_public
    assert loaded.dh_public == keys.dh_public


def test_issuer_key_round_trip(tmp_path: Path) -> None:
    key = IssuerKey.generate()
    key.save(tmp_path / "issuer.key")
    assert IssuerKey.load(tmp_path / "issuer.key").public == key.public


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    DeviceKeys.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        DeviceKeys.load(path)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("format = 1\n", "sign_seed"),
        ('format = 2\nsign_seed = "00"\n', "format"),
        ('format = 1\nsign_seed = "zz"\ndh_private = "00"\n', "not hexadecimal"),
        ('format = 1\nsign_seed = "0011"\ndh_private = "00"\n', "expected 32 bytes"),
        ("not toml at all [", "not a key file"),
    ],
)
def test_bad_key_files_name_the_problem(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "device.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    with pytest.raises(KeyFileError, match=reason) as info:
        DeviceKeys.load(path)
    assert str(path) in str(info.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot open"):
        DeviceKeys.load(tmp_path / "absent.key")


def test_a_certificate_file_is_read_with_a_cap_and_a_clear_error(tmp_path: Path) -> None:
    good = tmp_path / "good.cert"
    good.write_bytes(b"\x01" * 200)
    assert read_certificate(good) == b"\x01" * 200
    for name, content in (("empty.cert", b""), ("huge.cert", bytes(CERTIFICATE_FILE_MAX + 1))):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CertificateFileError, match=name):
            read_certificate(tmp_path / name)
    with pytest.raises(CertificateFileError, match="cannot read"):
        read_certificate(tmp_path / "absent.cert")


def test_keys_are_made_at_first_use_then_kept(tmp_path: Path) -> None:
    path = tmp_path / "state" / "device.key"
    made = DeviceKeys.load_or_generate(path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert DeviceKeys.load_or_generate(path).dh_public == made.dh_public

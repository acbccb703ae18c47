"""Device and issuer keys, and how they live on disk.

Every device holds two keys: an Ed25519 signing key (proves "this is device D"
to the login server, signs presence records) and an X25519 key (its Noise
static key, the one a certificate binds to the device). They are stored
together in one small TOML file, created with mode 0600 from the start and
replaced atomically; a file that others can read is refused at load time, as
OpenSSH refuses a private key with loose permissions.

A key id is the first 8 bytes of BLAKE2b over an Ed25519 public key: short
enough to put in every certificate, long enough that two issuers of one
deployment never collide by accident.
"""

import hashlib
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from edge.crypto.errors import KeyFileError
from edge.crypto.noise import KeyPair
from edge.runtime.config import write_atomic

KEY_ID_SIZE = 8
KEY_FILE_FORMAT = 1
_MAX_KEY_FILE = 4096


def key_id(sign_public: bytes) -> bytes:
    """The 8-byte id of an Ed25519 public key, as certificates name their issuer."""
    return hashlib.blake2b(sign_public, digest_size=KEY_ID_SIZE, person=b"edge-key-id").digest()


@dataclass(frozen=True)
class DeviceKeys:
    """A device's signing key and Noise static key."""

    sign: SigningKey
    dh: KeyPair

    @classmethod
    def generate(cls) -> "DeviceKeys":
        return cls(sign=SigningKey.generate(), dh=KeyPair.generate())

    @property
    def sign_public(self) -> bytes:
        return bytes(self.sign.verify_key)

    @property
    def dh_public(self) -> bytes:
        return self.dh.public

    def save(self, path: Path) -> None:
        """Write both private keys to ``path`` (mode 0600, atomic replace)."""
        _save(path, "device keys", sign_seed=bytes(self.sign), dh_private=self.dh.private)

    @classmethod
    def load_or_generate(cls, path: Path) -> "DeviceKeys":
        """The keys at ``path``; made and saved there first when there is no file (a
        device's or a supernode's first start), in a folder made 0700."""
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            cls.generate().save(path)
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> "DeviceKeys":
        """Read keys written by :meth:`save`; refuse a file others can read."""
        values = _read_private_toml(path)
        sign_seed = _hex_field(path, values, "sign_seed")
        dh_private = _hex_field(path, values, "dh_private")
        return cls(sign=SigningKey(sign_seed), dh=KeyPair.from_private(dh_private))


@dataclass(frozen=True)
class IssuerKey:
    """A login server's certificate-signing key."""

    sign: SigningKey

    @classmethod
    def generate(cls) -> "IssuerKey":
        return cls(sign=SigningKey.generate())

    @property
    def public(self) -> bytes:
        return bytes(self.sign.verify_key)

    @property
    def key_id(self) -> bytes:
        return key_id(self.public)

    @property
    def verify_key(self) -> VerifyKey:
        return self.sign.verify_key

    def save(self, path: Path) -> None:
        _save(path, "issuer key", sign_seed=bytes(self.sign))

    @classmethod
    def load(cls, path: Path) -> "IssuerKey":
        values = _read_private_toml(path)
        return cls(sign=SigningKey(_hex_field(path, values, "sign_seed")))


def _save(path: Path, what: str, **secrets: bytes) -> None:
    lines = [f"# edge {what}: secret, keep mode 0600", f"format = {KEY_FILE_FORMAT}"]
    lines += [f'{name} = "{value.hex()}"' for name, value in secrets.items()]
    write_atomic(path, ("\n".join(lines) + "\n").encode("ascii"), mode=0o600)


def _read_private_toml(path: Path) -> dict[str, object]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open key file: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise KeyFileError(f"{path}: key file is not a regular file")
        if mode & 0o077:
            raise KeyFileError(
                f"{path}: key file is readable by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 on it"
            )
        raw = os.read(fd, _MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    if len(raw) > _MAX_KEY_FILE:
        raise KeyFileError(f"{path}: key file larger than {_MAX_KEY_FILE} bytes")
    try:
        values = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeyFileError(f"{path}: not a key file: {exc}") from None
    if values.get("format") != KEY_FILE_FORMAT:
        raise KeyFileError(f"{path}: key 'format': expected {KEY_FILE_FORMAT}")
    return values


def _hex_field(path: Path, values: dict[str, object], name: str) -> bytes:
    text = values.get(name)
    if not isinstance(text, str):
        raise KeyFileError(f"{path}: key '{name}': missing or not a string")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"{path}: key '{name}': not hexadecimal") from None
    if len(raw) != 32:
        raise KeyFileError(f"{path}: key '{name}': expected 32 bytes, got {len(raw)}")
    return raw

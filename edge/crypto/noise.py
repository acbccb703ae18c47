"""The Noise Protocol Framework (revision 34) with 25519, ChaChaPoly and BLAKE2b.

How it works
------------
The three objects of the specification are here, under their names:

* :class:`CipherState` holds a 32-byte key ``k`` and a 64-bit nonce ``n`` and
  seals with ChaCha20-Poly1305 (IETF): the 96-bit nonce is four zero bytes and
  ``n`` little-endian.
* :class:`SymmetricState` holds the chaining key ``ck`` and the transcript hash
  ``h`` (BLAKE2b-512), mixing in DH outputs with HKDF over HMAC-BLAKE2b.
* :class:`HandshakeState` interprets a handshake pattern: a table of token lists
  (:data:`PATTERNS`), written in the specification's own notation and parsed at
  import time, so one interpreter serves N, K, X, NN, NK, NX, XK, XX, KK, IK and
  IX alike.

A handshake is driven by alternate ``write_message`` / ``read_message`` calls
(``is_my_turn`` says which) until ``is_finished``; ``split`` then hands out the
two transport CipherStates, oriented (send, receive) for this side.

Every message is processed against a copy of the symmetric state and the remote
keys, committed only when the whole message succeeded, so nothing is ever half
applied. A message that fails raises :class:`HandshakeError` and the handshake is
dead from then on: any further call raises :class:`NoiseStateError`. Misuse
(out of turn, after the end, a missing key) raises :class:`NoiseStateError`.

Pure computation: no clock, no sockets, no logging.
"""

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

import nacl.bindings
import nacl.exceptions
import nacl.utils

from edge.crypto.errors import DecryptError, HandshakeError, NoiseStateError

DHLEN = 32
HASHLEN = 64
BLOCKLEN = 128
KEYLEN = 32
TAGLEN = 16
MAX_MESSAGE = 65535
"""The largest Noise message, handshake or transport, in bytes (spec section 3)."""
MAX_PLAINTEXT = MAX_MESSAGE - TAGLEN
"""The largest payload one encrypted Noise message can carry."""
MAX_NONCE = (1 << 64) - 1
"""Reserved for :func:`rekey`; never used to encrypt a message."""

SUFFIX = "_25519_ChaChaPoly_BLAKE2b"

_T = TypeVar("_T")

_nonce = struct.Struct("<4xQ").pack
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_ZEROS = bytes(KEYLEN)
_MAX_NONCE_BYTES = _nonce(MAX_NONCE)
_aead_encrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt
_aead_decrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt


# --- primitives ------------------------------------------------------------------


def aead_encrypt(k: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
    """ENCRYPT(k, n, ad, plaintext): ciphertext followed by the 16-byte tag."""
    return _aead_encrypt(plaintext, ad, _nonce(n), k)


def aead_decrypt(k: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
    """DECRYPT(k, n, ad, ciphertext); raises :class:`DecryptError` if it does not verify."""
    # A ciphertext shorter than the tag makes the binding fail with a bare ValueError.
    if len(ciphertext) < TAGLEN:
        raise DecryptError(f"ciphertext of {len(ciphertext)} bytes is shorter than its tag")
    try:
        return _aead_decrypt(ciphertext, ad, _nonce(n), k)
    except nacl.exceptions.CryptoError:
        raise DecryptError("ciphertext failed authentication") from None


def rekey(k: bytes) -> bytes:
    """REKEY(k) of spec section 4.2: the next key, one-way from ``k``."""
    return _aead_encrypt(_ZEROS, b"", _MAX_NONCE_BYTES, k)[:KEYLEN]


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    # RFC 2104 by hand: keys here are at most HASHLEN, below BLOCKLEN, so they
    # are only padded; translate() XORs the pad in one C call.
    block = key.ljust(BLOCKLEN, b"\0")
    inner = hashlib.blake2b(block.translate(_IPAD) + data).digest()
    return hashlib.blake2b(block.translate(_OPAD) + inner).digest()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp_key = _hmac(chaining_key, ikm)
    first = _hmac(temp_key, b"\x01")
    return first, _hmac(temp_key, first + b"\x02")


def _dh(private: bytes, public: bytes) -> bytes:
    # libsodium refuses an all-zero result (a low-order point) with an error;
    # the explicit check keeps that guarantee whatever the binding does.
    try:
        shared = nacl.bindings.crypto_scalarmult(private, public)
    except nacl.exceptions.CryptoError:
        raise HandshakeError("DH with a low-order public key") from None
    if shared == _ZEROS:
        raise HandshakeError("DH with a low-order public key")
    return shared


# --- keys --------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; the private half never appears in ``repr``."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls) -> "KeyPair":
        """A fresh key pair from the system's random source."""
        return cls.from_private(nacl.utils.random(DHLEN))

    @classmethod
    def from_private(cls, private: bytes) -> "KeyPair":
        """The key pair of a 32-byte private key; raises :class:`NoiseStateError` otherwise."""
        if not isinstance(private, bytes) or len(private) != DHLEN:
            raise NoiseStateError(f"a private key is {DHLEN} bytes")
        return cls(private, nacl.bindings.crypto_scalarmult_base(private))


# --- CipherState and SymmetricState --------------------------------------------------


class CipherState:
    """A key and a nonce; without a key, encryption is the identity (spec 5.1)."""

    __slots__ = ("k", "n")

    def __init__(self, k: bytes | None = None, n: int = 0) -> None:
        if k is not None and len(k) != KEYLEN:
            raise NoiseStateError(f"a cipher key is {KEYLEN} bytes")
        self.k = k
        self.n = n

    def has_key(self) -> bool:
        return self.k is not None

    def set_nonce(self, n: int) -> None:
        if not 0 <= n <= MAX_NONCE:
            raise NoiseStateError("a nonce is a 64-bit unsigned integer")
        self.n = n

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """Seal and advance the nonce; :class:`NoiseStateError` when too long or exhausted."""
        if self.k is None:
            return plaintext
        if len(plaintext) > MAX_PLAINTEXT:
            raise NoiseStateError(f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        if self.n >= MAX_NONCE:
            raise NoiseStateError("nonces exhausted: rekey or start a new session")
        ciphertext = _aead_encrypt(plaintext, ad, _nonce(self.n), self.k)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Open and advance the nonce; on :class:`DecryptError` the nonce stays put."""
        if self.k is None:
            return ciphertext
        if len(ciphertext) > MAX_MESSAGE:
            raise DecryptError(f"ciphertext of {len(ciphertext)} bytes exceeds {MAX_MESSAGE}")
        if self.n >= MAX_NONCE:
            raise NoiseStateError("nonces exhausted: rekey or start a new session")
        plaintext = aead_decrypt(self.k, self.n, ad, ciphertext)
        self.n += 1
        return plaintext

    def rekey(self) -> None:
        """Replace the key by REKEY(k); the nonce is left as it is (spec 4.2)."""
        if self.k is None:
            raise NoiseStateError("cannot rekey a CipherState without a key")
        self.k = rekey(self.k)

    def __repr__(self) -> str:
        return f"CipherState(has_key={self.k is not None}, n={self.n})"


class SymmetricState:
    """The chaining key, the transcript hash and the handshake's CipherState."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\0")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def copy(self) -> "SymmetricState":
        twin = SymmetricState.__new__(SymmetricState)
        twin.ck, twin.h = self.ck, self.h
        twin.cipher = CipherState(self.cipher.k, self.cipher.n)
        return twin

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """Raises :class:`HandshakeError` when the ciphertext does not verify."""
        try:
            plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        except DecryptError as exc:
            raise HandshakeError(f"handshake message failed authentication: {exc}") from None
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """The initiator-to-responder and responder-to-initiator CipherStates."""
        first, second = _hkdf2(self.ck, b"")
        return CipherState(first[:KEYLEN]), CipherState(second[:KEYLEN])


# --- patterns ----------------------------------------------------------------------


class Token(StrEnum):
    E = "e"
    S = "s"
    EE = "ee"
    ES = "es"
    SE = "se"
    SS = "ss"


@dataclass(frozen=True)
class HandshakePattern:
    """One pattern, parsed: pre-message tokens and the messages in order."""

    name: str
    initiator_pre: tuple[Token, ...]
    responder_pre: tuple[Token, ...]
    messages: tuple[tuple[Token, ...], ...]
    overheads: tuple[int, ...]
    """Bytes each message adds to its payload (keys and tags), for the size cap."""

    @property
    def is_one_way(self) -> bool:
        """Only the initiator ever sends (N, K, X): the responder must not transmit."""
        return len(self.name) == 1


# Written in the specification's notation, line by line, so that each entry can
# be checked against the text by eye; _parse turns them into token tuples.
_PATTERN_TEXT: dict[str, tuple[str, ...]] = {
    # One-way patterns, spec section 7.4.
    "N": ("<- s", "...", "-> e, es"),
    "K": ("-> s", "<- s", "...", "-> e, es, ss"),
    "X": ("<- s", "...", "-> e, es, s, ss"),
    # Interactive patterns, spec section 7.5.
    "NN": ("-> e", "<- e, ee"),
    "NK": ("<- s", "...", "-> e, es", "<- e, ee"),
    "NX": ("-> e", "<- e, ee, s, es"),
    "XK": ("<- s", "...", "-> e, es", "<- e, ee", "-> s, se"),
    "XX": ("-> e", "<- e, ee, s, es", "-> s, se"),
    "KK": ("-> s", "<- s", "...", "-> e, es, ss", "<- e, ee, se"),
    "IK": ("<- s", "...", "-> e, es, s, ss", "<- e, ee, se"),
    "IX": ("-> e, s", "<- e, ee, se, s, es"),
}


def _tokens(line: str) -> tuple[bool, tuple[Token, ...]]:
    arrow, _, rest = line.partition(" ")
    if arrow not in ("->", "<-"):
        raise NoiseStateError(f"bad pattern line {line!r}")
    return arrow == "->", tuple(Token(t.strip()) for t in rest.split(","))


def _overheads(messages: tuple[tuple[Token, ...], ...]) -> tuple[int, ...]:
    keyed = False
    sizes = []
    for tokens in messages:
        size = 0
        for token in tokens:
            if token is Token.E:
                size += DHLEN
            elif token is Token.S:
                size += DHLEN + (TAGLEN if keyed else 0)
            else:
                keyed = True
        sizes.append(size + (TAGLEN if keyed else 0))
    return tuple(sizes)


def _parse(name: str, lines: tuple[str, ...]) -> HandshakePattern:
    split = lines.index("...") if "..." in lines else -1
    initiator_pre: tuple[Token, ...] = ()
    responder_pre: tuple[Token, ...] = ()
    for line in lines[: max(split, 0)]:
        outgoing, tokens = _tokens(line)
        if tokens != (Token.S,):
            raise NoiseStateError(f"pattern {name}: only a static key may be pre-sent")
        if outgoing:
            initiator_pre = tokens
        else:
            responder_pre = tokens
    messages = []
    for index, line in enumerate(lines[split + 1 :]):
        outgoing, tokens = _tokens(line)
        if outgoing != (index % 2 == 0):
            raise NoiseStateError(f"pattern {name}: messages must alternate, initiator first")
        messages.append(tokens)
    frozen = tuple(messages)
    return HandshakePattern(name, initiator_pre, responder_pre, frozen, _overheads(frozen))


PATTERNS: Mapping[str, HandshakePattern] = {
    name: _parse(name, lines) for name, lines in _PATTERN_TEXT.items()
}
"""Every supported pattern by its short name."""


def _needs_static(pattern: HandshakePattern, initiator: bool) -> bool:
    """Whether this side's static key pair takes part in the pattern."""
    if pattern.initiator_pre if initiator else pattern.responder_pre:
        return True
    # The initiator's static enters DH through SE, the responder's through ES.
    our_dh = {Token.SS, Token.SE if initiator else Token.ES}
    for index, tokens in enumerate(pattern.messages):
        ours = (index % 2 == 0) == initiator
        if any(t in our_dh or (ours and t is Token.S) for t in tokens):
            return True
    return False


# --- HandshakeState ------------------------------------------------------------------


class HandshakeState:
    """One side of a Noise handshake; see the module docstring for the flow."""

    def __init__(
        self,
        pattern: str,
        initiator: bool,
        *,
        prologue: bytes = b"",
        s: KeyPair | None = None,
        rs: bytes | None = None,
        e: KeyPair | None = None,
    ) -> None:
        """Start a handshake.

        ``s`` is our static key pair, required when the pattern uses it (it is
        ignored otherwise). ``rs`` is the peer's static public key, required
        exactly when the pattern pre-sends it (NK, XK, IK, KK, N, K, X as
        initiator; KK, K as responder) and refused otherwise, so nobody believes
        a key is pinned when the pattern would overwrite it. ``e`` fixes the
        ephemeral key and exists for test vectors only.
        """
        if pattern not in PATTERNS:
            raise NoiseStateError(f"unknown handshake pattern {pattern!r}")
        self._pattern = PATTERNS[pattern]
        self._initiator = initiator
        self._check_keys(s, rs)
        if len(prologue) > MAX_MESSAGE:
            raise NoiseStateError(f"prologue exceeds {MAX_MESSAGE} bytes")
        self._s = s
        self._e = e
        self._rs = rs
        self._re: bytes | None = None
        self._index = 0
        self._dead = False
        self._split_done = False
        self._symmetric = SymmetricState(f"Noise_{pattern}{SUFFIX}".encode())
        self._symmetric.mix_hash(prologue)
        self._mix_pre_messages()

    def _check_keys(self, s: KeyPair | None, rs: bytes | None) -> None:
        pattern = self._pattern
        if s is None and _needs_static(pattern, self._initiator):
            raise NoiseStateError(f"pattern {pattern.name} needs our static key pair s")
        remote_pre = pattern.responder_pre if self._initiator else pattern.initiator_pre
        if remote_pre and rs is None:
            raise NoiseStateError(f"pattern {pattern.name} needs the peer's static key rs")
        if not remote_pre and rs is not None:
            raise NoiseStateError(f"pattern {pattern.name} does not take the peer's key in advance")
        if rs is not None and (not isinstance(rs, bytes) or len(rs) != DHLEN):
            raise NoiseStateError(f"a public key is {DHLEN} bytes")

    def _mix_pre_messages(self) -> None:
        ours = self._s.public if self._s is not None else None
        initiator_key = ours if self._initiator else self._rs
        responder_key = self._rs if self._initiator else ours
        for tokens, key in (
            (self._pattern.initiator_pre, initiator_key),
            (self._pattern.responder_pre, responder_key),
        ):
            if tokens:
                self._symmetric.mix_hash(_need(key))

    # --- state -----------------------------------------------------------------------

    @property
    def pattern(self) -> HandshakePattern:
        return self._pattern

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def is_finished(self) -> bool:
        """All messages done (and none failed): :meth:`split` may be called."""
        return not self._dead and self._index == len(self._pattern.messages)

    @property
    def is_dead(self) -> bool:
        """A message failed; the handshake cannot continue."""
        return self._dead

    @property
    def is_my_turn(self) -> bool:
        """True when the next call must be :meth:`write_message`, False otherwise."""
        if self._dead or self._index == len(self._pattern.messages):
            return False
        return (self._index % 2 == 0) == self._initiator

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once given or learned; not yet authenticated
        by any certificate: the caller must check it."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """The transcript hash ``h``; final (and unique to this session) once finished."""
        self._check_alive()
        return self._symmetric.h

    def _check_alive(self) -> None:
        if self._dead:
            raise NoiseStateError("the handshake failed earlier and cannot be used")

    def _check_turn(self, writing: bool) -> None:
        self._check_alive()
        if self._index == len(self._pattern.messages):
            raise NoiseStateError("the handshake is already finished")
        if self.is_my_turn != writing:
            raise NoiseStateError("not our turn to " + ("write" if writing else "read"))

    # --- messages ----------------------------------------------------------------------

    def write_message(self, payload: bytes = b"") -> bytes:
        """The next handshake message carrying ``payload`` (encrypted once a key exists)."""
        self._check_turn(writing=True)
        room = MAX_MESSAGE - self._pattern.overheads[self._index]
        if len(payload) > room:
            raise NoiseStateError(f"payload of {len(payload)} bytes exceeds {room} here")
        saved = (self._symmetric, self._e)
        self._symmetric = self._symmetric.copy()
        try:
            parts = [self._write_token(t) for t in self._pattern.messages[self._index]]
            parts.append(self._symmetric.encrypt_and_hash(payload))
        except HandshakeError:
            self._symmetric, self._e = saved
            self._dead = True
            raise
        self._index += 1
        return b"".join(parts)

    def read_message(self, message: bytes) -> bytes:
        """Process the peer's next handshake message and return its payload.

        Raises :class:`HandshakeError` on anything wrong with the message, after
        which this handshake is dead.
        """
        self._check_turn(writing=False)
        saved = (self._symmetric, self._re, self._rs)
        self._symmetric = self._symmetric.copy()
        try:
            payload = self._read_tokens(bytes(message))
        except HandshakeError:
            self._symmetric, self._re, self._rs = saved
            self._dead = True
            raise
        self._index += 1
        return payload

    def _write_token(self, token: Token) -> bytes:
        if token is Token.E:
            if self._e is None:
                self._e = KeyPair.generate()
            self._symmetric.mix_hash(self._e.public)
            return self._e.public
        if token is Token.S:
            return self._symmetric.encrypt_and_hash(_need(self._s).public)
        self._mix_dh(token)
        return b""

    def _read_tokens(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE:
            raise HandshakeError(f"handshake message of {len(message)} bytes exceeds {MAX_MESSAGE}")
        pos = 0
        for token in self._pattern.messages[self._index]:
            if token is Token.E:
                self._re = _take(message, pos, DHLEN)
                self._symmetric.mix_hash(self._re)
                pos += DHLEN
            elif token is Token.S:
                size = DHLEN + (TAGLEN if self._symmetric.cipher.has_key() else 0)
                self._rs = self._symmetric.decrypt_and_hash(_take(message, pos, size))
                pos += size
            else:
                self._mix_dh(token)
        return self._symmetric.decrypt_and_hash(message[pos:])

    def _mix_dh(self, token: Token) -> None:
        # ES pairs the initiator's ephemeral with the responder's static, SE the
        # reverse; which of them is "ours" depends on our role.
        if token is Token.EE:
            local, remote = self._e, self._re
        elif token is Token.SS:
            local, remote = self._s, self._rs
        elif (token is Token.ES) == self._initiator:
            local, remote = self._e, self._rs
        else:
            local, remote = self._s, self._re
        self._symmetric.mix_key(_dh(_need(local).private, _need(remote)))

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) CipherStates for this side; once only, after the last message.

        For one-way patterns the responder must only receive.
        """
        self._check_alive()
        if self._index != len(self._pattern.messages):
            raise NoiseStateError("split before the handshake finished")
        if self._split_done:
            raise NoiseStateError("split already called: transport keys are handed out once")
        self._split_done = True
        self._e = None
        first, second = self._symmetric.split()
        return (first, second) if self._initiator else (second, first)


def _need(value: _T | None) -> _T:
    if value is None:
        raise NoiseStateError("a key the pattern needs is missing")
    return value


def _take(message: bytes, pos: int, size: int) -> bytes:
    if len(message) - pos < size:
        raise HandshakeError("handshake message truncated")
    return message[pos : pos + size]

"""Noise transport messages after the handshake: one transport for datagrams, one for streams.

Datagrams (:class:`DatagramTransport`)
    UDP loses and reorders packets, so the nonce cannot be implicit: every
    packet carries its 64-bit counter, which is the AEAD nonce. Time is cut into
    key epochs of ``rekey_interval`` counters; the key of epoch ``e`` is the
    handshake key put through Noise's REKEY ``e`` times, so both sides derive the
    same keys with no message exchanged. The sender rekeys as it crosses each
    boundary. The receiver keeps the current epoch's key and the previous one
    (for packets reordered across a boundary); the next epoch's key is computed
    on demand but adopted only when a packet under it authenticates, so a forged
    packet changes nothing. A packet further ahead than the next epoch could only
    follow a loss of ``rekey_interval`` packets in a row, so it is treated as
    unauthenticable: :class:`DecryptError`. A packet from before the previous
    epoch is :class:`ReplayError`, whatever the window says.

    Replays are caught with a sliding bitmap of ``window`` counters behind the
    highest counter seen (as in RFC 6479 and WireGuard). The check runs before
    decryption to save work; a counter is marked only after its MAC verified, so
    a forgery cannot burn a counter the genuine packet still needs.

Streams (:class:`StreamTransport`)
    TCP is ordered, so nonces stay implicit (the CipherStates count them) and
    each transport message is framed with a 2-byte big-endian length. The same
    framing carries handshake messages before the transport exists:
    :func:`frame` and :class:`Deframer`. Any error kills a stream transport,
    because after it the two sides can no longer agree on a nonce or a frame
    boundary: the connection must be closed.

Sans-IO: bytes in, bytes out; no clock, no sockets, no logging.
"""

from typing import Any

from edge.crypto.errors import (
    CryptoError,
    DecryptError,
    FrameError,
    NoiseStateError,
    ReplayError,
)
from edge.crypto.noise import (
    KEYLEN,
    MAX_MESSAGE,
    MAX_NONCE,
    MAX_PLAINTEXT,
    CipherState,
    HandshakeState,
    aead_decrypt,
    aead_encrypt,
    rekey,
)

MAX_COUNTER = MAX_NONCE - 1
"""The last counter a datagram may carry; MAX_NONCE itself is reserved for REKEY."""
MAX_WINDOW = 1 << 16
"""Cap on the replay window, in counters."""
FRAME_HEADER = 2
DEFAULT_MAX_BUFFER = 4 * (FRAME_HEADER + MAX_MESSAGE)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEYLEN:
        raise NoiseStateError(f"a transport key is {KEYLEN} bytes")


def _keys(hs: HandshakeState) -> tuple[bytes, bytes]:
    send, recv = hs.split()
    if send.k is None or recv.k is None:
        raise NoiseStateError("split produced a CipherState without a key")
    return send.k, recv.k


class DatagramTransport:
    """Explicit 64-bit counter per packet, sliding replay window, deterministic rekey.

    ``sent``, ``received``, ``replayed`` and ``bad_mac`` count packets sealed,
    opened, refused with :class:`ReplayError` and refused with
    :class:`DecryptError`. A network adapter drops refused packets and carries on.
    """

    __slots__ = (
        "_bitmap",
        "_epoch",
        "_epoch_end",
        "_epoch_start",
        "_highest",
        "_interval",
        "_mask",
        "_next_key",
        "_previous_key",
        "_recv_key",
        "_send_key",
        "_send_limit",
        "_window",
        "bad_mac",
        "received",
        "replayed",
        "sent",
    )

    def __init__(
        self,
        send_key: bytes,
        recv_key: bytes,
        *,
        rekey_interval: int = 1 << 20,
        window: int = 2048,
        first_counter: int = 0,
    ) -> None:
        """``first_counter`` starts the sender further on (its key is advanced to
        that epoch); it exists to test the end of the counter space."""
        _check_key(send_key)
        _check_key(recv_key)
        if not 1 <= rekey_interval <= MAX_NONCE:
            raise NoiseStateError("rekey_interval must be between 1 and 2**64 - 1")
        if not 1 <= window <= MAX_WINDOW:
            raise NoiseStateError(f"window must be between 1 and {MAX_WINDOW}")
        if not 0 <= first_counter <= MAX_NONCE:
            raise NoiseStateError("first_counter must be a 64-bit unsigned integer")
        self._interval = rekey_interval
        self._window = window
        self._mask = (1 << window) - 1
        self._init_sender(send_key, first_counter)
        self._init_receiver(recv_key)
        self.received = 0
        self.replayed = 0
        self.bad_mac = 0

    @classmethod
    def from_handshake(cls, hs: HandshakeState, **kw: Any) -> "DatagramTransport":
        """Take the keys of a finished handshake (calls ``hs.split()``)."""
        send_key, recv_key = _keys(hs)
        return cls(send_key, recv_key, **kw)

    def _init_sender(self, key: bytes, first_counter: int) -> None:
        epochs = first_counter // self._interval
        if epochs > 64:
            raise NoiseStateError("first_counter would need more than 64 rekeys")
        for _ in range(epochs):
            key = rekey(key)
        self._send_key = key
        self.sent = first_counter
        self._send_limit = min((epochs + 1) * self._interval, MAX_NONCE)

    def _init_receiver(self, key: bytes) -> None:
        self._recv_key = key
        self._previous_key: bytes | None = None
        self._next_key: bytes | None = None
        self._epoch = 0
        self._epoch_start = 0
        self._epoch_end = self._interval
        self._highest = -1
        self._bitmap = 0

    # --- sending ---------------------------------------------------------------------

    def seal(self, plaintext: bytes, ad: bytes = b"") -> tuple[int, bytes]:
        """Encrypt one packet; returns (counter, ciphertext). The counter must travel with it."""
        counter = self.sent
        if counter >= self._send_limit:
            self._cross_boundary(counter)
        if len(plaintext) > MAX_PLAINTEXT:
            raise NoiseStateError(f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        ciphertext = aead_encrypt(self._send_key, counter, ad, plaintext)
        self.sent = counter + 1
        return counter, ciphertext

    def _cross_boundary(self, counter: int) -> None:
        if counter > MAX_COUNTER:
            raise NoiseStateError("datagram counters exhausted: start a new session")
        self._send_key = rekey(self._send_key)
        self._send_limit = min(self._send_limit + self._interval, MAX_NONCE)

    # --- receiving -------------------------------------------------------------------

    def open(self, counter: int, ciphertext: bytes, ad: bytes = b"") -> bytes:
        """Authenticate and decrypt one packet.

        Raises :class:`ReplayError` (counter seen, too old or out of range) or
        :class:`DecryptError` (bad MAC, too long, or more than one epoch ahead);
        either way nothing changed.
        """
        if len(ciphertext) > MAX_MESSAGE:
            self.bad_mac += 1
            raise DecryptError(f"datagram of {len(ciphertext)} bytes exceeds {MAX_MESSAGE}")
        self._check_window(counter)
        if self._epoch_start <= counter < self._epoch_end:
            key = self._recv_key
        else:
            key = self._other_epoch_key(counter)
        try:
            plaintext = aead_decrypt(key, counter, ad, ciphertext)
        except DecryptError:
            self.bad_mac += 1
            raise
        if counter >= self._epoch_end:
            self._advance_epoch(key)
        self._mark(counter)
        self.received += 1
        return plaintext

    def _check_window(self, counter: int) -> None:
        if not 0 <= counter <= MAX_COUNTER:
            self.replayed += 1
            raise ReplayError(f"counter {counter} is outside 0 .. 2**64 - 2")
        offset = self._highest - counter
        if offset < 0:
            return
        if offset >= self._window:
            self.replayed += 1
            raise ReplayError(f"counter {counter} is behind the replay window")
        if (self._bitmap >> offset) & 1:
            self.replayed += 1
            raise ReplayError(f"counter {counter} was already received")

    def _other_epoch_key(self, counter: int) -> bytes:
        epoch = counter // self._interval
        if epoch == self._epoch - 1 and self._previous_key is not None:
            return self._previous_key
        if epoch < self._epoch:
            self.replayed += 1
            raise ReplayError(f"counter {counter} belongs to a key epoch already discarded")
        if epoch > self._epoch + 1:
            self.bad_mac += 1
            raise DecryptError(f"counter {counter} is more than one key epoch ahead")
        # Caching the candidate is safe: it is a pure function of the current key.
        if self._next_key is None:
            self._next_key = rekey(self._recv_key)
        return self._next_key

    def _advance_epoch(self, key: bytes) -> None:
        self._previous_key = self._recv_key
        self._recv_key = key
        self._next_key = None
        self._epoch += 1
        self._epoch_start = self._epoch_end
        self._epoch_end += self._interval

    def _mark(self, counter: int) -> None:
        offset = self._highest - counter
        if offset >= 0:
            self._bitmap |= 1 << offset
            return
        shift = -offset
        self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self._window else 1
        self._highest = counter


# --- stream framing -------------------------------------------------------------------


def frame(message: bytes) -> bytes:
    """Prefix ``message`` with its 2-byte big-endian length."""
    if len(message) > MAX_MESSAGE:
        raise NoiseStateError(f"a frame carries at most {MAX_MESSAGE} bytes")
    return len(message).to_bytes(FRAME_HEADER, "big") + message


class Deframer:
    """Cuts a byte stream into 2-byte-length-prefixed frames.

    ``max_buffer`` bounds what the deframer holds between calls: a frame whose
    header and body would not fit in it is refused as soon as its header
    arrives (:class:`CryptoError` with code ``OVERSIZED``), so a small value also
    caps frame size, e.g. for handshake messages. Data handed to :meth:`feed` is
    cut in place, so a large read never counts against the cap. After an error
    the deframer is dead: the stream has lost its frame boundaries.
    """

    __slots__ = ("_dead", "_max_buffer", "_tail")

    def __init__(self, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        if max_buffer < FRAME_HEADER:
            raise NoiseStateError(f"max_buffer must be at least {FRAME_HEADER}")
        self._max_buffer = max_buffer
        self._tail = b""
        self._dead = False

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._tail)

    @property
    def announced(self) -> int:
        """The size the next frame's header announces, or 0 before its header is in."""
        if len(self._tail) < FRAME_HEADER:
            return 0
        return (self._tail[0] << 8) | self._tail[1]

    def feed(self, data: bytes) -> list[bytes]:
        """Every frame completed by ``data``, in order (possibly none)."""
        if self._dead:
            raise FrameError("stream framing failed earlier")
        buf = self._tail + bytes(data) if self._tail else bytes(data)
        frames: list[bytes] = []
        pos, end = 0, len(buf)
        while end - pos >= FRAME_HEADER:
            size = (buf[pos] << 8) | buf[pos + 1]
            if FRAME_HEADER + size > self._max_buffer:
                self._dead = True
                self._tail = b""
                raise FrameError(
                    f"frame of {size} bytes exceeds the buffer cap of {self._max_buffer}"
                )
            start = pos + FRAME_HEADER
            if end - start < size:
                break
            frames.append(buf[start : start + size])
            pos = start + size
        self._tail = buf[pos:]
        return frames


class StreamTransport:
    """Length-framed Noise transport messages over a byte stream, implicit nonces."""

    __slots__ = ("_deframer", "_failure", "_recv", "_send")

    def __init__(
        self, send: CipherState, recv: CipherState, *, max_buffer: int = DEFAULT_MAX_BUFFER
    ) -> None:
        if not send.has_key() or not recv.has_key():
            raise NoiseStateError("a stream transport needs keyed CipherStates")
        self._send = send
        self._recv = recv
        self._deframer = Deframer(max_buffer)
        self._failure: CryptoError | None = None

    @classmethod
    def from_handshake(cls, hs: HandshakeState) -> "StreamTransport":
        """Take the CipherStates of a finished handshake (calls ``hs.split()``)."""
        send, recv = hs.split()
        return cls(send, recv)

    @property
    def is_dead(self) -> bool:
        """A received frame failed: close the stream."""
        return self._failure is not None

    def seal_frame(self, plaintext: bytes) -> bytes:
        """One framed transport message: 2-byte length + ciphertext."""
        if self._failure is not None:
            raise NoiseStateError("the stream transport failed; close the stream")
        ciphertext = self._send.encrypt_with_ad(b"", plaintext)
        return len(ciphertext).to_bytes(FRAME_HEADER, "big") + ciphertext

    def feed(self, data: bytes) -> list[bytes]:
        """Plaintexts of every frame completed by ``data``.

        Raises :class:`DecryptError` on a bad MAC (or :class:`CryptoError`
        ``OVERSIZED`` from the framing); frames of the same call are then not
        delivered, and every later call raises again.
        """
        self._raise_if_failed()
        try:
            frames = self._deframer.feed(data)
        except CryptoError as exc:
            self._failure = exc
            raise
        return [self.open_frame(f) for f in frames]

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            failure = self._failure
            raise type(failure)(f"stream transport failed earlier: {failure}", code=failure.code)

    def open_frame(self, ciphertext: bytes) -> bytes:
        """Decrypt one frame body already cut from the stream by a :class:`Deframer`.

        For a session that deframes the stream itself, because the same
        stream carried the handshake before the transport existed.
        """
        self._raise_if_failed()
        try:
            return self._recv.decrypt_with_ad(b"", ciphertext)
        except CryptoError as exc:
            self._failure = exc
            raise

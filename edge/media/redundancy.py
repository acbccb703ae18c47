"""Loss protection for a call's Opus stream: earlier frames carried again, sized to the loss.

How it works
------------
RFC 2198's idea for RTP, carried in a way every Opus decoder already accepts.
Each MEDIA_FRAME payload is the current Opus packet, rewritten as a code 3
packet with padding (RFC 6716 §3.2.5), and the padding holds a
:data:`BLOCK`: exact copies of up to :data:`MAX_COPIES` earlier packets of the
stream, and the loss this end measures of the peer's stream. RFC 6716 tells
decoders to accept any padding content, so a receiver that does not know the
block (a gateway, an older edge) decodes the primary frame bit for bit as if
the padding were not there; one that knows it sees the MEDIA_FRAME flag
:attr:`~edge.wire.messages.MediaFlag.REDUNDANCY`, takes the copies and hands
each to the jitter buffer for a frame that never came. A copy is the very
packet first sent, so decoding it keeps the decoder in step with the encoder,
which concealment or in-band FEC cannot.

The loss report rides back the same way, one byte in every payload: the
fraction of the peer's frames lost over the last few seconds (:class:`LossMeter`),
as RTCP's "fraction lost" (RFC 3550 §6.4.1). It costs 400 bit/s and no message
of its own, and arrives fifty times a second while the call carries audio.

:class:`Adaptation` turns the reports into this end's :class:`Protection`:
how many copies each payload carries, the Opus bitrate, and the loss the
encoder plans its in-band FEC for. More loss buys more copies at once; less
loss steps back one level at a time, and only after it has stayed low for
:data:`HOLD` seconds. The bitrate shrinks as copies are added so that the
packets on the wire (IP, UDP, the session's header, tag and MEDIA_FRAME fields
included, :data:`PACKET_OVERHEAD`) stay within the budget of :data:`BUDGET`
bit/s: first as if every frame were as large as the bitrate allows, then
steered by the mean measured on the wire (:meth:`Adaptation.sent`), since
speech seldom fills its frames.

The receiver holds as many frames as the copies reach back (a copy two frames
back arrives 40 ms after its original would have), by raising its jitter
buffer's ``min_delay`` (:class:`~edge.media.pipeline.CallAudio`).

Everything here is sans-IO: bytes and times in, bytes and settings out.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from construct import (
    GreedyBytes,
    Int8ub,
    Prefixed,
    PrefixedArray,
    Struct,
    Terminated,
)

from edge.crypto.noise import TAGLEN
from edge.errors import RemoteError
from edge.media.errors import MediaError, MediaUsageError
from edge.media.stats import ReceptionStats
from edge.wire.codes import ErrorCode
from edge.wire.messages import HEADER_SIZE, MEDIA_FIXED, MEDIA_PAYLOAD_MAX, TRANSPORT_FIXED

__all__ = [
    "BLOCK",
    "BUDGET",
    "LEVELS",
    "MAX_COPIES",
    "PACKET_OVERHEAD",
    "Adaptation",
    "Level",
    "LossMeter",
    "Packer",
    "Protection",
    "RedundancyError",
    "Unpacked",
    "build_block",
    "pad",
    "parse_block",
    "unpack",
    "unpad",
]

MAX_COPIES = 3
"""Most earlier frames one payload carries (a burst of three lost packets is repaired)."""
MAX_BACK = 8
"""Furthest back a copy may reach, in frames; anything further is refused."""
MAX_COPY_BYTES = 255
"""Largest packet kept as a copy: its length is one byte (100 kbit/s of 20 ms frames fits)."""
UNKNOWN_LOSS = 255
"""The loss byte when nothing has been measured yet."""
FRAMES_PER_SECOND = 50
BUDGET = 100_000
"""Bits per second one direction of a call may take on the wire, protection included."""
IP_UDP_OVERHEAD = 28
PACKET_OVERHEAD = (
    IP_UDP_OVERHEAD + HEADER_SIZE + TRANSPORT_FIXED + TAGLEN + HEADER_SIZE + MEDIA_FIXED
)
"""Bytes every media packet costs besides its payload: IPv4 and UDP, the TRANSPORT
header and fixed part, the AEAD tag, and the inner header and MEDIA_FRAME fields."""
HOLD = 10.0
"""Seconds the loss must stay low before the protection steps down one level."""
RATE_WINDOW = 250
"""Payloads (5 s) over which the bit rate on the wire is averaged."""
SCALES = (0.8, 1.15)
"""Least and most the Opus bitrate is scaled from what the budget affords frames
of exactly the target size, as the bit rate measured on the wire asks."""

_CODE_3 = 0x03
_VBR = 0x80
_PADDED = 0x40
_PAD_CONTINUES = 255
_PAD_STEP = 254

COPY = Struct(
    "back" / Int8ub * "frames before the primary: 1 is the frame just before it",
    "packet" / Prefixed(Int8ub, GreedyBytes) * "that frame's Opus packet, exactly as first sent",
)

BLOCK = Struct(
    "loss" / Int8ub * "peer's frames lost recently, in 1/256 (RFC 3550 §6.4.1); 255: unknown",
    "copies" / PrefixedArray(Int8ub, COPY) * "earlier frames, nearest first",
    Terminated,
)
"""The padding of a payload sent with the REDUNDANCY flag."""


class RedundancyError(MediaError, RemoteError):
    """A payload flagged REDUNDANCY whose padding or block is malformed."""

    code = ErrorCode.MALFORMED


@dataclass(frozen=True)
class Unpacked:
    """A payload taken apart: the primary packet, the peer's loss report, the copies."""

    primary: bytes
    loss: float | None
    """The fraction of our frames the peer lost recently, or None if it has not said."""
    copies: tuple[tuple[int, bytes], ...]
    """(frames back, Opus packet) for each earlier frame carried."""


# --- Opus padding (RFC 6716 §3.2.5) ----------------------------------------------------


def pad(packet: bytes, padding: bytes) -> bytes:
    """``packet`` as a code 3 Opus packet whose padding is ``padding``.

    Decodes exactly as ``packet`` does. Raises :class:`MediaUsageError` for an
    empty packet or one that is already padded (the encoder never pads).
    """
    if not packet:
        raise MediaUsageError("an empty packet cannot be padded")
    toc, code = packet[0], packet[0] & _CODE_3
    if code == 3:
        if len(packet) < 2 or packet[1] & _PADDED:
            raise MediaUsageError("the packet is already padded or has no frame count")
        count, body = packet[1], packet[2:]
    else:
        # Code 1 is two equal frames (CBR), code 2 two frames whose first length
        # leads the body, in the same format as code 3's VBR lengths.
        count = {0: 1, 1: 2, 2: _VBR | 2}[code]
        body = packet[1:]
    return bytes((toc | _CODE_3, count | _PADDED)) + _pad_length(len(padding)) + body + padding


def unpad(payload: bytes) -> tuple[bytes, bytes]:
    """``payload`` split into the packet without its padding, and the padding.

    A packet without padding comes back whole with empty padding. Raises
    :class:`RedundancyError` when the padding length runs past the packet.
    """
    if len(payload) < 2 or payload[0] & _CODE_3 != 3 or not payload[1] & _PADDED:
        return payload, b""
    size, at = 0, 2
    while True:
        if at >= len(payload):
            raise RedundancyError("the Opus padding length runs past the end of the packet")
        step = payload[at]
        at += 1
        size += _PAD_STEP if step == _PAD_CONTINUES else step
        if step != _PAD_CONTINUES:
            break
    if at + size > len(payload):
        raise RedundancyError(
            f"{size} bytes of Opus padding do not fit in a {len(payload)}-byte packet"
        )
    end = len(payload) - size
    return bytes((payload[0], payload[1] & ~_PADDED)) + payload[at:end], payload[end:]


def _pad_length(size: int) -> bytes:
    steps, rest = divmod(size, _PAD_STEP)
    if rest == 0 and steps:
        steps, rest = steps - 1, _PAD_STEP
    return bytes([_PAD_CONTINUES] * steps + [rest])


# --- the block ----------------------------------------------------------------------


def unpack(payload: bytes) -> Unpacked:
    """Take apart a payload flagged REDUNDANCY. Raises :class:`RedundancyError`."""
    primary, padding = unpad(payload)
    if not padding:
        return Unpacked(primary, None, ())
    code, copies = parse_block(padding)
    if any(not 0 < back <= MAX_BACK or not packet for back, packet in copies):
        raise RedundancyError(f"a copy is empty or not 1 to {MAX_BACK} frames back")
    loss = None if code == UNKNOWN_LOSS else code / 256
    return Unpacked(primary, loss, copies)


# Fifty payloads a second each way: construct would spend some 25 us on each
# block, so these two read and write the layout BLOCK declares by hand; the tests
# hold them to BLOCK byte for byte, on valid and on malformed input.


def build_block(loss: int, copies: Sequence[tuple[int, bytes]]) -> bytes:
    """``BLOCK.build`` of a loss byte and (back, packet) copies."""
    parts = [bytes((loss, len(copies)))]
    for back, packet in copies:
        parts += (bytes((back, len(packet))), packet)
    return b"".join(parts)


def parse_block(padding: bytes) -> tuple[int, tuple[tuple[int, bytes], ...]]:
    """``BLOCK.parse``: the loss byte and the copies. Raises :class:`RedundancyError`,
    also for more than :data:`MAX_COPIES` copies."""
    if len(padding) < 2:
        raise RedundancyError("malformed redundancy block: shorter than its two fixed bytes")
    if padding[1] > MAX_COPIES:
        raise RedundancyError(f"{padding[1]} copies; at most {MAX_COPIES} are taken")
    copies, at = [], 2
    for _ in range(padding[1]):
        end = at + 2 + (padding[at + 1] if at + 1 < len(padding) else 0)
        if end > len(padding):
            raise RedundancyError("malformed redundancy block: a copy runs past its end")
        copies.append((padding[at], padding[at + 2 : end]))
        at = end
    if at != len(padding):
        raise RedundancyError(f"malformed redundancy block: {len(padding) - at} bytes left over")
    return padding[0], tuple(copies)


def loss_byte(loss: float | None) -> int:
    """A loss fraction as the block carries it: 1/256 units, 255 for unknown."""
    if loss is None:
        return UNKNOWN_LOSS
    return min(UNKNOWN_LOSS - 1, max(0, int(loss * 256)))


class Packer:
    """Builds the payloads of one outgoing stream, one per frame, in sequence order.

    It remembers the last :data:`MAX_COPIES` packets it was given, so each call
    of :meth:`pack` must be for the frame after the previous one.
    """

    def __init__(self) -> None:
        self._history: deque[bytes] = deque(maxlen=MAX_COPIES)
        self.skipped = 0
        """Copies left out because they were too large or would overfill the payload."""

    def pack(self, packet: bytes, copies: int, loss: float | None) -> bytes:
        """The payload for ``packet`` with up to ``copies`` earlier frames and ``loss``."""
        room = MEDIA_PAYLOAD_MAX - len(packet) - 8 - 2 * MAX_COPIES
        chosen: list[tuple[int, bytes]] = []
        for back, earlier in enumerate(reversed(self._history), start=1):
            if back > copies:
                break
            if len(earlier) > MAX_COPY_BYTES or len(earlier) > room:
                self.skipped += 1
                continue
            room -= len(earlier)
            chosen.append((back, earlier))
        self._history.append(packet)
        return pad(packet, build_block(loss_byte(loss), chosen))


# --- measuring loss -------------------------------------------------------------------


class LossMeter:
    """The fraction of a received stream's frames lost over the last few seconds."""

    def __init__(self, *, interval: float = 1.0, intervals: int = 5, least: int = 100) -> None:
        self.stats = ReceptionStats()
        self._interval, self._least = interval, least
        self._marks: deque[tuple[int, int]] = deque(maxlen=intervals)
        self._next_mark: float | None = None

    def frame(self, sequence: int, timestamp: int, now: float) -> None:
        """One frame arrived at ``now`` (a copy carried in another frame does not count)."""
        if self._next_mark is None or now >= self._next_mark:
            self._marks.append((self.stats.expected, self.stats.counted))
            self._next_mark = now + self._interval
        self.stats.frame(sequence, timestamp, now)

    @property
    def loss(self) -> float | None:
        """Lost over expected since the oldest mark; None before ``least`` frames."""
        if not self._marks:
            return None
        expected = self.stats.expected - self._marks[0][0]
        counted = self.stats.counted - self._marks[0][1]
        if expected < self._least:
            return None
        return max(0, expected - counted) / expected


# --- adapting -------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """One step of protection: ``copies`` per payload from loss ``up`` on; below
    ``down`` for :data:`HOLD` seconds it gives way to the level beneath."""

    copies: int
    up: float
    down: float


LEVELS = (
    Level(0, 0.0, 0.0),
    Level(1, 0.01, 0.004),
    Level(2, 0.07, 0.04),
    Level(3, 0.20, 0.12),
)
"""Thresholds: one copy leaves a random loss p as p², two as p³; but each copy
also shares out the budget, from 31.5 kbit/s a frame with one copy to 20.5 with
two and 15.5 with three (before :meth:`Adaptation.sent` steers it). Measured on
speech at fixed levels (bench/voice.py, eight runs each): at 5 % loss one copy
averages 4.16 PESQ-WB and two 3.89; at 10 % one copy 3.73 and two 3.87. Hence
two copies from 7 %. The gaps between up and down keep a loss near a threshold
from flapping the level."""


@dataclass(frozen=True)
class Protection:
    """What the sender does now: copies per payload, Opus bitrate, encoder loss hint."""

    copies: int
    bitrate: int
    loss_percent: int


class Adaptation:
    """The sender's protection, adapted to the loss its peer reports; see the module."""

    def __init__(
        self,
        *,
        bitrate: int = 32_000,
        budget: int = BUDGET,
        start: int = 1,
        hold: float = HOLD,
        least_bitrate: int = 12_000,
    ) -> None:
        if not 0 <= start < len(LEVELS) or bitrate < least_bitrate or hold < 0:
            raise MediaUsageError("adaptation: bad start level, bitrate or hold")
        self._nominal, self._budget, self._hold = bitrate, budget, hold
        self._least = least_bitrate
        self._top = max(
            (i for i, lv in enumerate(LEVELS) if self._bitrate(lv.copies) >= least_bitrate),
            default=0,
        )
        self._level = min(start, self._top)
        self._calm_since: float | None = None
        self._loss = 0.0
        self._scale = 1.0
        self._rate = 0.95 * budget
        self.protection = self._protection()

    @property
    def level(self) -> int:
        return self._level

    def update(self, loss: float | None, now: float) -> Protection:
        """The protection after a loss report that arrived at ``now`` (None: no report)."""
        if loss is not None:
            self._loss = loss
            self._level = self._next_level(loss, now)
            self.protection = self._protection()
        return self.protection

    def sent(self, payload: int) -> Protection:
        """The protection after a payload of ``payload`` bytes went out.

        Opus's variable rate leaves speech below its target bitrate, and the
        budget is for the mean: while the mean on the wire over the last 5 s
        stays under 94 % of the budget the bitrate creeps up (0.1 % a frame),
        above 98 % it falls back fast (2 % a frame), within :data:`SCALES` of the
        figure for frames of exactly the target size. The fast fall keeps a
        talker who starts after a long silence (which let the bitrate creep up)
        within the budget over the next few seconds too.
        """
        bits = (payload + PACKET_OVERHEAD) * 8 * FRAMES_PER_SECOND
        self._rate += (bits - self._rate) / RATE_WINDOW
        if self._rate > 0.98 * self._budget:
            self._scale = max(SCALES[0], self._scale * 0.98)
        elif self._rate < 0.94 * self._budget:
            self._scale = min(SCALES[1], self._scale * 1.001)
        self.protection = self._protection()
        return self.protection

    @property
    def wire_rate(self) -> float:
        """The mean bit rate of the payloads on the wire, overhead included (bit/s)."""
        return self._rate

    def _next_level(self, loss: float, now: float) -> int:
        wanted = max(i for i, lv in enumerate(LEVELS) if loss >= lv.up)
        wanted = min(wanted, self._top)
        if wanted > self._level:
            self._calm_since = None
            return wanted
        if loss >= LEVELS[self._level].down or self._level == 0:
            self._calm_since = None
            return self._level
        if self._calm_since is None:
            self._calm_since = now
        if now - self._calm_since < self._hold:
            return self._level
        # Each further step down waits a full hold of its own.
        self._calm_since = now
        return self._level - 1

    def _protection(self) -> Protection:
        copies = LEVELS[self._level].copies
        # With a copy of every frame in the next packet, in-band FEC would only
        # repeat, at lower quality, what the copy already brings.
        hint = 0 if copies else min(30, math.ceil(self._loss * 100))
        scaled = int(self._bitrate(copies) * self._scale) // 500 * 500
        return Protection(copies, min(self._nominal, scaled), hint)

    def _bitrate(self, copies: int) -> int:
        packet_bits = self._budget / FRAMES_PER_SECOND
        block = 8 + 2 * copies  # padding header and length, loss byte, count, copy headers
        frame_bits = (packet_bits - 8 * (PACKET_OVERHEAD + block)) / (copies + 1)
        affordable = int(frame_bits * FRAMES_PER_SECOND) // 500 * 500
        return min(self._nominal, affordable)

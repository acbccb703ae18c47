"""A call's voice: the microphone to Opus payloads, payloads back to the loudspeaker.

The seam: a call's audio comes from a :class:`Source` and goes to a
:class:`Sink`, both in 20 ms frames of 16 kHz mono signed 16-bit little-endian
PCM (:data:`FRAME_BYTES`). Which ones a device uses is named the way pyserial
names ports, by a string: ``file:PATH.wav`` plays or records a WAV file
(:mod:`edge.media.wav`); ``none`` is no audio (:class:`Silence`: a device
without microphone or loudspeaker); any other name is a sound device, opened
through PortAudio (:mod:`edge.media.sound`), which says in its state when it
fails and reopens by itself when it comes back.

:class:`CallAudio` is one call's pipeline, sans-IO in the sense that matters
here: no socket, no clock, no task. Its owner, once per 20 ms tick, takes
:meth:`~CallAudio.payload` (the source's next frame, Opus-encoded: wideband,
VOIP, :data:`BITRATE` or less, with copies of earlier frames and the loss this
end measures, :mod:`edge.media.redundancy`) into a MEDIA_FRAME flagged
:data:`FLAGS`, and calls
:meth:`~CallAudio.play` with the time, which pulls one frame from the jitter
buffer and writes its decoded PCM to the sink: a frame that never came is
played from a copy a later packet carried when one is here, else concealed by
the decoder (from the next packet's FEC copy when it is already here, else by
libopus's packet-loss concealment), and while the buffer is
still filling the sink gets silence, so a recording keeps the call's timeline.
Frames from the network go in through :meth:`~CallAudio.receive`; a frame in
another codec, an oversized or undecodable one is counted in ``stats`` and
otherwise dropped (an undecodable one is concealed like a lost one); a
flagged payload whose copies will not parse is counted and its primary frame
played. The loss reports in the peer's payloads steer how many copies ours
carry and at what bitrate (:class:`~edge.media.redundancy.Adaptation`).

A source or sink that fails in the middle of a call (a disk that fills, a
file that vanished) is counted, logged once and replaced by silence: the
call goes on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

from edge.media.errors import MediaError, OpusDecodeError
from edge.media.jitter import Conceal, JitterBuffer, Play, Playout
from edge.media.opus import MAX_PACKET_BYTES, Application, Decoder, Encoder
from edge.media.quality import estimate_mos
from edge.media.redundancy import (
    MAX_COPIES,
    Adaptation,
    LossMeter,
    Packer,
    Protection,
    RedundancyError,
    unpack,
)
from edge.media.wav import FRAME_BYTES, FRAME_SAMPLES, RATE, WavError, WavSink, WavSource
from edge.wire.messages import Codec, MediaFlag

__all__ = [
    "BITRATE",
    "FILE_PREFIX",
    "FLAGS",
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "NONE",
    "RATE",
    "CallAudio",
    "Silence",
    "Sink",
    "Source",
    "is_device",
    "open_sink",
    "open_source",
]

_log = logging.getLogger(__name__)
T = TypeVar("T", bound="Source | Sink")
J = TypeVar("J", bound=JitterBuffer)

BITRATE = 32000
"""Bits per second of the Opus stream while the budget affords it: 4.3 PESQ-WB on
clean speech, where 24 kbit/s scores 4.0 (bench/voice.py)."""
FLAGS = MediaFlag.REDUNDANCY
"""The MEDIA_FRAME flags of every payload from :meth:`CallAudio.payload`."""
MIN_DELAY = 0.020
"""Seconds the jitter buffer holds at least: one frame, so the copy of a lost frame
in the next packet arrives in time to be played (a burst longer than that is
bridged by concealment, :data:`BRIDGE`), and the software delay stays within 60 ms."""
DEPTH_MEMORY = 50
"""Payloads with shallower copies it takes before the jitter buffer holds less again."""
BRIDGE = 3
"""Frames the jitter buffer conceals while dry before it rebuffers: a burst of lost
packets keeps the call's timeline (rebuffering would add delay and a gap)."""
FILE_PREFIX = "file:"
NONE = "none"
"""The name of no audio at all: a device without microphone or loudspeaker (a
messaging-only one, or a test), which sends and hears silence."""
SILENT_FRAME = bytes(FRAME_BYTES)


class Source(Protocol):
    """Where a call's outgoing audio comes from."""

    def read(self) -> bytes:
        """The next 20 ms: exactly :data:`FRAME_BYTES` of 16 kHz mono s16le."""
        ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Where a call's received audio goes."""

    def write(self, pcm: bytes) -> None:
        """One 20 ms frame of 16 kHz mono s16le, in playout order."""
        ...

    def close(self) -> None: ...


class Silence:
    """A muted microphone and an unplugged loudspeaker: the default source and sink."""

    def read(self) -> bytes:
        return SILENT_FRAME

    def write(self, pcm: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def is_device(spec: str) -> bool:
    """Whether ``spec`` names a sound device rather than a file or no audio."""
    return not spec.startswith(FILE_PREFIX) and spec != NONE


def open_source(spec: str) -> Source:
    """The source ``spec`` names: ``file:PATH`` loops a WAV file; any other name is a
    sound device (:class:`~edge.media.sound.SoundSource`), which opens in the
    background and is silent until it runs. Raises :class:`~edge.media.wav.WavError`
    for a file it cannot play, :class:`~edge.media.sound.SoundError` for a name or
    rate that can never work."""
    if spec == NONE:
        return Silence()
    if is_device(spec):
        # Imported here: only a device needs pyaudio and PortAudio.
        from edge.media.sound import SoundSource

        return SoundSource(spec)
    return WavSource(Path(spec.removeprefix(FILE_PREFIX)))


def open_sink(spec: str) -> Sink:
    """The sink ``spec`` names: ``file:PATH`` records a WAV file (replacing it); any
    other name is a sound device (:class:`~edge.media.sound.SoundSink`). Raises
    :class:`~edge.media.wav.WavError` or :class:`~edge.media.sound.SoundError`."""
    if spec == NONE:
        return Silence()
    if is_device(spec):
        from edge.media.sound import SoundSink

        return SoundSink(spec)
    return WavSink(Path(spec.removeprefix(FILE_PREFIX)))


class CallAudio:
    """One call's audio both ways; see the module docstring. :meth:`close` it at the end."""

    FLAGS: ClassVar[int] = FLAGS
    """The MEDIA_FRAME flags to send :meth:`payload`'s payloads with."""

    def __init__(
        self,
        source: Source,
        sink: Sink,
        *,
        bitrate: int = BITRATE,
        jitter: JitterBuffer | None = None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.jitter = jitter or jitter_buffer(JitterBuffer)
        self.stats = dict.fromkeys(
            ("sent", "received", "played", "repaired", "concealed", "recovered", "silent",
             "wrong_codec", "oversized", "undecodable", "bad_redundancy", "source_errors",
             "sink_errors", "sent_bytes"),
            0,
        )  # fmt: skip
        self.adaptation = Adaptation(bitrate=bitrate)
        self.loss = LossMeter()
        """Loss of the peer's frames as they arrive; every payload reports it back."""
        self._packer = Packer()
        self._depth = self._shallow = 0
        self._encoder = Encoder(RATE, 1, Application.VOIP)
        self._decoder = Decoder(RATE, 1)
        try:
            self._encoder.set_inband_fec(True)
            self._apply(self.adaptation.protection)
        except BaseException:
            self._close_coders()
            raise

    @classmethod
    def silent(cls) -> CallAudio:
        """Silence both ways: what a call carries when nothing else is configured."""
        return cls(Silence(), Silence())

    @classmethod
    def open(cls, capture: str, playback: str) -> CallAudio:
        """The pipeline for the source and sink these names give (:func:`open_source`,
        :func:`open_sink`). An end that will not open (a file removed since the
        configuration was checked) is logged and left silent: the call goes on."""
        return cls(_opened(open_source, capture), _opened(open_sink, playback))

    def payload(self) -> bytes:
        """The next outgoing frame, encoded: the payload of this tick's MEDIA_FRAME."""
        frame = self._read()
        packet = self._encoder.encode(frame, FRAME_SAMPLES)
        payload = self._packer.pack(packet, self.adaptation.protection.copies, self.loss.loss)
        self.stats["sent"] += 1
        self.stats["sent_bytes"] += len(payload)
        before = self.adaptation.protection
        self._steer(before, self.adaptation.sent(len(payload)))
        return payload

    def receive(
        self,
        codec: int,
        sequence: int,
        timestamp: int,
        payload: bytes,
        now: float,
        flags: int = 0,
    ) -> None:
        """A MEDIA_FRAME that arrived at ``now`` (seconds, the owner's clock)."""
        if codec != Codec.OPUS:
            self.stats["wrong_codec"] += 1
        elif not payload or len(payload) > MAX_PACKET_BYTES:
            self.stats["oversized"] += 1
        elif flags & MediaFlag.REDUNDANCY:
            self._receive_protected(sequence, timestamp, payload, now)
        else:
            self._take(sequence, timestamp, payload, now)

    @property
    def protection(self) -> Protection:
        """What this end's payloads carry now: copies, Opus bitrate, encoder loss hint."""
        return self.adaptation.protection

    def quality(self, rtt_ms: float | None) -> dict[str, object]:
        """What ``edge ctl status`` shows of the call's audio: codec, the Opus bitrate
        and copies sent, frames repaired (from a copy or FEC) and concealed, the jitter
        buffer's hold, and the E-model's MOS (:mod:`edge.media.quality`) from the loss
        left after repair and the one-way delay the path's ``rtt_ms`` makes."""
        stats = self.stats
        heard = sum(stats[k] for k in ("played", "repaired", "recovered", "concealed"))
        left = stats["concealed"] / heard if heard else 0.0
        hold_ms = self.jitter.target * 1000
        protection = self.adaptation.protection
        return {
            "codec": "opus",
            "bitrate_kbps": round(protection.bitrate / 1000, 1),
            "copies": protection.copies,
            "repaired": stats["repaired"] + stats["recovered"],
            "concealed": stats["concealed"],
            "jitter_buffer_ms": round(hold_ms),
            "mos": estimate_mos(left, rtt_ms, hold_ms),
        }

    def play(self, now: float) -> None:
        """This tick's frame to the sink: decoded, concealed, or silence."""
        self._write(self._decode(self.jitter.pop(now)))

    def close(self) -> None:
        for end in (self.source, self.sink):
            try:
                end.close()
            except (OSError, MediaError) as exc:
                _log.warning("call audio: closing %s failed: %s", type(end).__name__, exc)
        self._close_coders()

    def _receive_protected(self, sequence: int, timestamp: int, payload: bytes, now: float) -> None:
        try:
            unpacked = unpack(payload)
        except RedundancyError as exc:
            self.stats["bad_redundancy"] += 1
            _log.debug("call audio: frame %d: %s; playing it without copies", sequence, exc)
            self._take(sequence, timestamp, payload, now)
            return
        self._take(sequence, timestamp, unpacked.primary, now)
        for back, packet in unpacked.copies:
            self.jitter.recover(sequence - back, packet)
        self._follow_depth(max((back for back, _ in unpacked.copies), default=0))
        before = self.adaptation.protection
        self._steer(before, self.adaptation.update(unpacked.loss, now))

    def _follow_depth(self, depth: int) -> None:
        # A copy n frames back arrives n frames after its original would have, so
        # it is in time only if the buffer holds n frames; a payload that left a
        # copy out (too large) does not lower the hold at once. No deeper than our
        # own sender ever goes: a peer cannot buy more delay than that.
        depth = min(depth, MAX_COPIES)
        if depth >= self._depth:
            self._depth, self._shallow = depth, 0
        else:
            self._shallow += 1
            if self._shallow > DEPTH_MEMORY:
                self._depth, self._shallow = depth, 0
        self.jitter.min_delay = max(MIN_DELAY, self._depth * self.jitter.frame)

    def _take(self, sequence: int, timestamp: int, packet: bytes, now: float) -> None:
        self.stats["received"] += 1
        self.loss.frame(sequence, timestamp, now)
        self.jitter.push(sequence, timestamp, packet, now)

    def _steer(self, before: Protection, after: Protection) -> None:
        if after != before:
            self._apply(after)

    def _apply(self, protection: Protection) -> None:
        self._encoder.set_bitrate(protection.bitrate)
        self._encoder.set_packet_loss_perc(protection.loss_percent)

    def _decode(self, playout: Playout) -> bytes:
        if isinstance(playout, Play):
            try:
                pcm = self._decoder.decode(playout.payload, FRAME_SAMPLES)
            except OpusDecodeError:
                self.stats["undecodable"] += 1
                return self._conceal(None)
            self.stats["repaired" if playout.copy else "played"] += 1
            return _fit(pcm)
        if isinstance(playout, Conceal):
            return self._conceal(playout.fec)
        self.stats["silent"] += 1
        return SILENT_FRAME

    def _conceal(self, fec: bytes | None) -> bytes:
        if fec is not None:
            try:
                pcm = self._decoder.decode(fec, FRAME_SAMPLES, fec=True)
            except OpusDecodeError:
                pass
            else:
                self.stats["recovered"] += 1
                return _fit(pcm)
        self.stats["concealed"] += 1
        return _fit(self._decoder.decode(None, FRAME_SAMPLES))

    def _read(self) -> bytes:
        try:
            frame = self.source.read()
        except (OSError, MediaError) as exc:
            return self._source_failed(str(exc))
        if len(frame) != FRAME_BYTES:
            return self._source_failed(f"it gave {len(frame)} bytes, not {FRAME_BYTES}")
        return frame

    def _write(self, pcm: bytes) -> None:
        try:
            self.sink.write(pcm)
        except (OSError, MediaError) as exc:
            self.stats["sink_errors"] += 1
            _log.warning("call audio: playback failed, silent from now on: %s", exc)
            _close_quietly(self.sink)
            self.sink = Silence()

    def _source_failed(self, why: str) -> bytes:
        self.stats["source_errors"] += 1
        _log.warning("call audio: capture failed, sending silence from now on: %s", why)
        _close_quietly(self.source)
        self.source = Silence()
        return SILENT_FRAME

    def _close_coders(self) -> None:
        self._encoder.close()
        self._decoder.close()


def jitter_buffer(kind: type[J]) -> J:
    """A call's jitter buffer: 20 ms frames of 16 kHz, held at least :data:`MIN_DELAY`,
    bridging :data:`BRIDGE` frames of a dry spell, stretching when the jitter grows."""
    return kind(
        frame=FRAME_SAMPLES / RATE, clock_rate=RATE, min_delay=MIN_DELAY, bridge=BRIDGE,
        stretch=True,
    )  # fmt: skip


def _opened(opener: Callable[[str], T], spec: str) -> T | Silence:
    try:
        return opener(spec)
    except WavError as exc:
        _log.warning("call audio: %s; silent instead", exc)
        return Silence()


def _close_quietly(end: Source | Sink) -> None:
    # It has already failed once; the call goes on either way.
    with contextlib.suppress(OSError, MediaError):
        end.close()


def _fit(pcm: bytes) -> bytes:
    """Exactly one frame: a shorter packet (10 ms, say) is padded with silence."""
    return pcm[:FRAME_BYTES].ljust(FRAME_BYTES, b"\0")

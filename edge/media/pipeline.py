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
VOIP, DTX — a few bytes a frame while the microphone is quiet — at
:data:`BITRATE` or less, with copies of earlier frames and the loss this end
measures, :mod:`edge.media.redundancy`) into a MEDIA_FRAME flagged
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

A call that negotiated G.711 (PCMU or PCMA) runs the same way through
:class:`~edge.media.g711.Narrowband` instead of Opus: 160 bytes a frame at 8 kHz,
resampled from and to the call's 16 kHz, no copies of earlier frames (payloads
go out unflagged: :attr:`CallAudio.flags`), and a lost frame concealed by
repeat-and-fade. A payload that is not exactly one frame is counted
(``oversized`` or ``truncated``) and dropped. MEDIA_FRAME timestamps count
16 kHz samples whatever the codec, so the jitter buffer runs unchanged.

A source or sink that fails in the middle of a call (a disk that fills, a
file that vanished) is counted, logged once and replaced by silence: the
call goes on.

Hands-free, :meth:`CallAudio.open` with ``echo_cancel`` puts an
:class:`~edge.media.echo.EchoControl` (SpeexDSP) between the source and the
encoder: every frame written to the sink is kept as the far-end reference, and
the next frame read from the source is cancelled against it before encoding.
Without libspeexdsp the call goes on uncancelled, and says so in the log.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

from edge.media.echo import EchoCanceller, EchoControl, EchoUnavailable
from edge.media.errors import MediaError, OpusDecodeError
from edge.media.g711 import FRAME_CODES, Law, Narrowband
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
    "describe_end",
    "is_device",
    "open_sink",
    "open_source",
    "silent_payload",
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
G711_BITRATE = 64000
"""Bits per second of a G.711 stream: 8 bits a sample at 8 kHz."""
LAWS = {Codec.PCMU: Law.MU, Codec.PCMA: Law.A}
DROPPED = ("wrong_codec", "oversized", "truncated", "undecodable", "bad_redundancy")
"""The pipeline's counts of frames it could not play as they came, shown in status
beside the jitter buffer's (late, duplicate, overflow)."""
SILENT_PAYLOADS = {
    Codec.OPUS: b"\xf8\xff\xfe",  # a SILK 20 ms frame of silence (DTX)
    Codec.PCMU: b"\xff" * FRAME_CODES,
    Codec.PCMA: b"\xd5" * FRAME_CODES,
}


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


def open_source(spec: str, rate: int | None = None) -> Source:
    """The source ``spec`` names: ``file:PATH`` loops a WAV file; any other name is a
    sound device (:class:`~edge.media.sound.SoundSource`, at ``rate`` when given, else
    the best rate it offers), which opens in the background and is silent until it
    runs. Raises :class:`~edge.media.wav.WavError` for a file it cannot play,
    :class:`~edge.media.sound.SoundError` for a name or rate that can never work."""
    if spec == NONE:
        return Silence()
    if is_device(spec):
        # Imported here: only a device needs pyaudio and PortAudio.
        from edge.media.sound import SoundSource

        return SoundSource(spec, rate=rate)
    return WavSource(Path(spec.removeprefix(FILE_PREFIX)))


def wait_devices_released(timeout: float) -> bool:
    """Block (never on the event loop) until the sound devices closed so far have
    released their streams, at most ``timeout`` seconds; True at once when no sound
    device was ever opened (PortAudio is then not even loaded)."""
    sound = sys.modules.get("edge.media.sound")
    return True if sound is None else bool(sound.wait_released(timeout))


def open_sink(spec: str, rate: int | None = None) -> Sink:
    """The sink ``spec`` names: ``file:PATH`` records a WAV file (replacing it); any
    other name is a sound device (:class:`~edge.media.sound.SoundSink`, at ``rate``
    when given). Raises :class:`~edge.media.wav.WavError` or
    :class:`~edge.media.sound.SoundError`."""
    if spec == NONE:
        return Silence()
    if is_device(spec):
        from edge.media.sound import SoundSink

        return SoundSink(spec, rate=rate)
    return WavSink(Path(spec.removeprefix(FILE_PREFIX)))


class CallAudio:
    """One call's audio both ways; see the module docstring. :meth:`close` it at the end."""

    FLAGS: ClassVar[int] = FLAGS
    """The MEDIA_FRAME flags of an Opus call's payloads; :attr:`flags` are this call's."""
    echo: EchoControl | None = None
    """The source's echo canceller (:meth:`open` with ``echo_cancel``), with its stats."""

    def __init__(
        self,
        source: Source,
        sink: Sink,
        *,
        bitrate: int = BITRATE,
        jitter: JitterBuffer | None = None,
        codec: Codec = Codec.OPUS,
    ) -> None:
        self.codec = codec
        """What the call negotiated: what :meth:`payload` encodes and :meth:`receive` takes."""
        self.flags = FLAGS if codec is Codec.OPUS else 0
        """The MEDIA_FRAME flags to send :meth:`payload`'s payloads with."""
        self._narrow = Narrowband(LAWS[codec]) if codec in LAWS else None
        self.source = source
        self.sink = sink
        self.jitter = jitter or jitter_buffer(JitterBuffer)
        self.stats = dict.fromkeys(
            ("sent", "received", "played", "repaired", "concealed", "recovered", "silent",
             "wrong_codec", "oversized", "truncated", "undecodable", "bad_redundancy",
             "source_errors", "sink_errors", "sent_bytes"),
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
            self._encoder.set_dtx(True)
            self._apply(self.adaptation.protection)
        except BaseException:
            self._close_coders()
            raise

    @classmethod
    def silent(cls, codec: Codec = Codec.OPUS) -> CallAudio:
        """Silence both ways: what a call carries when nothing else is configured."""
        return cls(Silence(), Silence(), codec=codec)

    @classmethod
    def open(
        cls,
        capture: str,
        playback: str,
        codec: Codec = Codec.OPUS,
        *,
        echo_cancel: bool = False,
        rate: int | None = None,
    ) -> CallAudio:
        """The pipeline in ``codec`` for the source and sink these names give
        (:func:`open_source`, :func:`open_sink`; sound devices at ``rate`` when given),
        cancelling the sink's echo in the source when ``echo_cancel`` (a hands-free
        board). An end that will not open (a file removed since the configuration was
        checked) is logged and left silent, a missing echo canceller logged and left
        out: the call goes on."""
        source = _opened(partial(open_source, rate=rate), capture)
        audio = cls(source, _opened(partial(open_sink, rate=rate), playback), codec=codec)
        if echo_cancel:
            audio.echo = _echo_control()
        return audio

    def payload(self) -> bytes:
        """The next outgoing frame, encoded: the payload of this tick's MEDIA_FRAME."""
        frame = self._read()
        if self._narrow is not None:
            return self._counted(self._narrow.encode(frame))
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
        if codec != self.codec:
            self.stats["wrong_codec"] += 1
        elif self._narrow is not None:
            self._receive_narrow(sequence, timestamp, payload, now)
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
        """What ``edge ctl status`` shows of the call's audio: the negotiated codec, its
        bitrate and the copies sent, frames repaired (from a copy or FEC) and concealed,
        the jitter buffer's hold and what it holds now, frames dropped by why, the
        E-model's MOS (:mod:`edge.media.quality`) from the loss left after repair and
        the one-way delay the path's ``rtt_ms`` makes, the capture and playback ends
        (:func:`describe_end`), and the echo canceller's counters when it runs."""
        stats = self.stats
        heard = sum(stats[k] for k in ("played", "repaired", "recovered", "concealed"))
        left = stats["concealed"] / heard if heard else 0.0
        hold_ms = self.jitter.target * 1000
        protection = self.adaptation.protection
        narrow = self._narrow is not None
        return {
            "codec": self.codec.name.lower(),
            "bitrate_kbps": round((G711_BITRATE if narrow else protection.bitrate) / 1000, 1),
            "copies": 0 if narrow else protection.copies,
            "repaired": stats["repaired"] + stats["recovered"],
            "concealed": stats["concealed"],
            "jitter_buffer_ms": round(hold_ms),
            "buffered_ms": round(self.jitter.buffered * 1000),
            "dropped": self._dropped(),
            "mos": estimate_mos(left, rtt_ms, hold_ms),
            "capture": describe_end(self.source),
            "playback": describe_end(self.sink),
            "echo_cancel": None if self.echo is None else dict(self.echo.stats),
        }

    def _dropped(self) -> dict[str, int]:
        held = self.jitter.stats
        return {
            **{why: self.stats[why] for why in DROPPED},
            **{why: held[why] for why in ("late", "duplicate", "overflow")},
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
        if self.echo is not None:
            self.echo.close()

    def _receive_narrow(self, sequence: int, timestamp: int, payload: bytes, now: float) -> None:
        # One frame, exactly: G.711 carries no copies, so any other length is wrong.
        if len(payload) == FRAME_CODES:
            self._take(sequence, timestamp, payload, now)
        elif payload and len(payload) < FRAME_CODES:
            self.stats["truncated"] += 1
        else:
            self.stats["oversized"] += 1

    def _counted(self, payload: bytes) -> bytes:
        self.stats["sent"] += 1
        self.stats["sent_bytes"] += len(payload)
        return payload

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
        if self._narrow is not None:
            return self._decode_narrow(self._narrow, playout)
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

    def _decode_narrow(self, narrow: Narrowband, playout: Playout) -> bytes:
        # Every payload held is one whole frame (checked on receipt) and every code
        # decodes, so nothing here can fail.
        if isinstance(playout, Play):
            self.stats["played"] += 1
            return narrow.decode(playout.payload)
        if isinstance(playout, Conceal):
            self.stats["concealed"] += 1
            return narrow.conceal()
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
        return frame if self.echo is None else self.echo.captured(frame)

    def _write(self, pcm: bytes) -> None:
        if self.echo is not None:
            self.echo.played(pcm)
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
        if self._narrow is not None:
            self._narrow.close()


def jitter_buffer(kind: type[J]) -> J:
    """A call's jitter buffer: 20 ms frames of 16 kHz, held at least :data:`MIN_DELAY`,
    bridging :data:`BRIDGE` frames of a dry spell, stretching when the jitter grows."""
    return kind(
        frame=FRAME_SAMPLES / RATE, clock_rate=RATE, min_delay=MIN_DELAY, bridge=BRIDGE,
        stretch=True,
    )  # fmt: skip


def silent_payload(codec: Codec) -> bytes:
    """One frame of silence in ``codec``: what a call sends when its audio would not open."""
    return SILENT_PAYLOADS[codec]


def describe_end(end: Source | Sink) -> dict[str, object]:
    """What status shows of a capture or playback end: its kind (``device``, ``file``
    or ``none``), and for a sound device its name, state, rate, last error and counters."""
    describe = getattr(end, "describe", None)
    if callable(describe):
        return {"kind": "device", **describe()}
    if isinstance(end, Silence):
        return {"kind": NONE}
    return {"kind": "file" if isinstance(end, WavSource | WavSink) else type(end).__name__}


def _echo_control() -> EchoControl | None:
    try:
        return EchoControl(EchoCanceller(FRAME_SAMPLES, RATE))
    except EchoUnavailable as exc:
        _log.warning("call audio: no echo cancellation: %s", exc)
        return None


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

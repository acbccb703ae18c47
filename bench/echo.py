"""Echo and noise: what SpeexDSP's canceller takes out of a hands-free microphone.

What runs: espeak-ng speaks the far end (the Harvard sentences of
:mod:`bench.voice`) and, for double talk, other sentences for the near end.
The echo path is a room impulse response made here, seeded so every run is
the same: silence for the bulk delay (the sound card's buffers both ways and
the air between loudspeaker and microphone), a direct path, then reflections
as Gaussian noise under an exponential decay that falls 60 dB in the room's
RT60; scaled so the echo is :data:`ECHO_GAIN` of the loudspeaker's level (a
hands-free box, loudspeaker and microphone a few centimetres apart). The
microphone hears the far end through that path, plus steady noise at
:data:`NOISE_RMS` and, in the double-talk run, the near end. Each microphone
frame goes through :class:`~edge.media.echo.EchoCanceller` with the frame
played at the same time, 20 ms at a time, as a call does it.

Figures, each beside its target:

- ERLE (echo return loss enhancement, ITU-T G.168's measure): 10 log10 of the
  microphone's energy over the output's, over the frames where only the far
  end speaks, from :data:`CONVERGED` seconds on (the filter learns the path
  first). One row per path of :data:`PATHS`.
- Double talk: the near end's level in the output against its level at the
  microphone (energy ratio, dB), while both ends speak; and how much of the
  output is the near end's speech (correlation), so a loud residual echo
  cannot pass for kept speech.
- Noise: how far steady white noise alone falls (dB, after the suppressor's
  estimate has settled).
- CPU per 20 ms frame on this core (cancel and preprocess).
"""

from __future__ import annotations

import math
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass

import numpy
import numpy.typing as npt

from bench.voice import Row, Skipped, speech
from edge.media.echo import TAIL_MS, EchoCanceller, EchoUnavailable
from edge.media.pipeline import FRAME_SAMPLES, RATE

Signal = npt.NDArray[numpy.float64]

SEED = 168
CONVERGED = 2.0
"""Seconds the canceller is given to learn the path before its ERLE counts."""
ECHO_GAIN = 0.5
"""The echo's level against the loudspeaker's: -6 dB, a hands-free box."""
NOISE_RMS = 30.0
"""Steady noise at the microphone in the echo runs: -61 dBFS, a quiet room."""
NOISE_ONLY_RMS = 300.0
"""The noise of the noise run: -41 dBFS, a fan or a road outside."""
ACTIVE_DB = -40.0
"""A frame counts as speech when its energy is within this of the loudest frame."""
NEAR_SENTENCES = (
    "A large size in stockings is hard to sell. The boy was there when the sun rose. "
    "A rod is used to catch pink salmon. The source of the huge river is the clear spring."
)
"""More Harvard sentences: the near end, talking over the far end."""
ERLE_TARGET_DB = 20.0
DOUBLE_TALK_DB = 3.0
"""The near end's level in the output may differ from the microphone's by this much."""
NOISE_TARGET_DB = 10.0
CPU_TARGET_MS = 0.2
"""Half the voice budget of a call's frame (:mod:`bench.voice`)."""


@dataclass(frozen=True)
class Path:
    """An echo path: bulk delay, and the reverberation time of the room."""

    name: str
    delay: float
    rt60: float
    length: float = 0.5


PATHS = (
    Path("ERLE, 40 ms delay, RT60 250 ms", 0.040, 0.25),
    Path("ERLE, 100 ms delay, RT60 300 ms", 0.100, 0.30),
)
"""The first as a microphone sees its own loudspeaker through a low-latency sound
card; the second behind :mod:`edge.media.sound`'s rings (two periods of
playback priming, one of capture) and a livelier room."""


# --- signals ------------------------------------------------------------------------


def room(path: Path, seed: int = SEED) -> Signal:
    """``path``'s impulse response at :data:`RATE`, its energy :data:`ECHO_GAIN` squared."""
    rng = numpy.random.default_rng(seed)
    size, bulk = round(path.length * RATE), round(path.delay * RATE)
    response = numpy.zeros(size)
    after = numpy.arange(size - bulk) / RATE
    # 60 dB in RT60 seconds: amplitude exp(-ln(1000) t / RT60).
    response[bulk:] = rng.standard_normal(size - bulk) * numpy.exp(
        -math.log(1000) * after / path.rt60
    )
    response[bulk] = 3.0 * numpy.max(numpy.abs(response[bulk:]))
    scaled: Signal = response * ECHO_GAIN / numpy.sqrt(numpy.sum(response**2))
    return scaled


def through(signal: Signal, response: Signal) -> Signal:
    """``signal`` as heard through ``response``, cut to its own length."""
    return numpy.convolve(signal, response)[: len(signal)]


def noise(seconds: float, rms: float, seed: int = SEED) -> Signal:
    """Steady white noise of ``rms``."""
    return numpy.random.default_rng(seed).standard_normal(round(seconds * RATE)) * rms


def speech_like(seconds: float, seed: int = SEED) -> Signal:
    """A stand-in for speech when espeak-ng is absent: a gliding voiced buzz (harmonics
    of 90-190 Hz falling 3 dB an octave) and noisy fricatives, cut into syllables
    of 100-300 ms with pauses between them, peaking near -10 dBFS."""
    rng = numpy.random.default_rng(seed)
    n = round(seconds * RATE)
    t = numpy.arange(n) / RATE
    pitch = 140 + 50 * numpy.sin(2 * math.pi * 0.6 * t + rng.uniform(0, 2 * math.pi))
    phase = 2 * math.pi * numpy.cumsum(pitch) / RATE
    voiced = numpy.zeros(n)
    for k in range(1, 40):  # the 39th harmonic of 190 Hz is still below 8 kHz
        voiced += numpy.sin(k * phase) / math.sqrt(k)
    fricative = rng.standard_normal(n) * 0.5
    out = numpy.zeros(n)
    at = 0
    while at < n:
        length = int(rng.uniform(0.1, 0.3) * RATE)
        kind = rng.choice(3, p=[0.6, 0.2, 0.2])
        if kind < 2:
            piece = (voiced if kind == 0 else fricative)[at : at + length]
            out[at : at + length] = piece * numpy.hanning(len(piece))
        at += length
    level: Signal = out * 0.3 * 32767 / numpy.max(numpy.abs(out))
    return level


def pcm(signal: Signal) -> bytes:
    """Signal to s16le, clipped."""
    return numpy.clip(numpy.round(signal), -32768, 32767).astype("<i2").tobytes()


def samples(data: bytes) -> Signal:
    return numpy.frombuffer(data, dtype="<i2").astype(numpy.float64)


# --- measuring ----------------------------------------------------------------------


@dataclass(frozen=True)
class Cancelled:
    """One run of the canceller: the microphone as it went in, the output, CPU."""

    mic: Signal
    out: Signal
    cpu_ms: float
    """Thread CPU per frame, milliseconds."""


def cancel(mic: Signal, far: Signal, tail_ms: int = TAIL_MS, denoise: bool = True) -> Cancelled:
    """Run ``mic`` through a canceller frame by frame, ``far`` as its reference; the
    output is moved back by the canceller's delay, so it lines up with ``mic``."""
    heard, played = pcm(mic), pcm(far)
    step = 2 * FRAME_SAMPLES
    frames = min(len(heard), len(played)) // step
    out: list[bytes] = []
    with closing(EchoCanceller(FRAME_SAMPLES, RATE, tail_ms, denoise=denoise)) as canceller:
        started = time.thread_time()
        for at in range(0, frames * step, step):
            out.append(canceller.process(heard[at : at + step], played[at : at + step]))
        cpu = time.thread_time() - started
        lag = canceller.delay
    cleaned = numpy.concatenate([samples(b"".join(out))[lag:], numpy.zeros(lag)])
    return Cancelled(samples(heard[: frames * step]), cleaned, cpu / frames * 1000)


def frame_energy(signal: Signal) -> Signal:
    """Energy of each whole 20 ms frame."""
    whole = len(signal) // FRAME_SAMPLES * FRAME_SAMPLES
    framed = signal[:whole].reshape(-1, FRAME_SAMPLES)
    energy: Signal = numpy.sum(framed**2, axis=1)
    return energy


def active(signal: Signal) -> npt.NDArray[numpy.bool_]:
    """Which frames of ``signal`` hold speech (within :data:`ACTIVE_DB` of the loudest)."""
    energy = frame_energy(signal)
    return energy > numpy.max(energy) * 10 ** (ACTIVE_DB / 10)


def settled(frames: int, after: float = CONVERGED) -> npt.NDArray[numpy.bool_]:
    """The frames from ``after`` seconds on."""
    mask = numpy.zeros(frames, dtype=bool)
    mask[round(after * RATE / FRAME_SAMPLES) :] = True
    return mask


def ratio_db(numerator: Signal, denominator: Signal, frames: npt.NDArray[numpy.bool_]) -> float:
    """10 log10 of the energies of the chosen frames of the two signals."""
    top, bottom = frame_energy(numerator)[frames], frame_energy(denominator)[frames]
    return 10 * math.log10(float(numpy.sum(top)) / max(float(numpy.sum(bottom)), 1e-9))


def erle_db(run: Cancelled, far: Signal, after: float = CONVERGED) -> float:
    """ERLE over the frames where the far end speaks, from ``after`` seconds on."""
    frames = len(run.out) // FRAME_SAMPLES
    chosen = active(far[: frames * FRAME_SAMPLES]) & settled(frames, after)
    return ratio_db(run.mic, run.out, chosen)


def near_kept(run: Cancelled, near: Signal, after: float = CONVERGED) -> tuple[float, float]:
    """While the near end speaks (from ``after`` seconds on): the output's level against
    the near end's own, in dB, and the correlation of the two (1.0: the output is
    the near end's speech alone)."""
    frames = len(run.out) // FRAME_SAMPLES
    chosen = active(near[: frames * FRAME_SAMPLES]) & settled(frames, after)
    spoken = numpy.repeat(chosen, FRAME_SAMPLES)
    kept, said = run.out[spoken], near[: frames * FRAME_SAMPLES][spoken]
    level = 10 * math.log10(float(numpy.sum(kept**2)) / float(numpy.sum(said**2)))
    # cancel() has moved the output back by the canceller's delay: sample for sample.
    correlation = float(numpy.corrcoef(kept, said)[0, 1])
    return level, correlation


def noise_reduction_db(denoise: bool = True, seconds: float = 6.0) -> float:
    """How far steady noise alone at the microphone falls, nothing played, from
    :data:`CONVERGED` seconds on (the suppressor's estimate has settled by then)."""
    hiss = noise(seconds, NOISE_ONLY_RMS)
    run = cancel(hiss, numpy.zeros(len(hiss)), denoise=denoise)
    return ratio_db(run.mic, run.out, settled(len(run.out) // FRAME_SAMPLES))


# --- the figures --------------------------------------------------------------------


def run() -> list[Row | Skipped]:
    try:
        far = samples(speech())
        near = samples(speech(NEAR_SENTENCES))
    except (FileNotFoundError, subprocess.SubprocessError) as exc:
        return [Skipped("echo", str(exc))]
    try:
        rows: list[Row | Skipped] = [_erle_row(far, path) for path in PATHS]
        rows.append(_double_talk_row(far, near))
        rows.extend((_noise_row(), _cpu_row(far)))
    except EchoUnavailable as exc:
        return [Skipped("echo", str(exc))]
    return rows


def _erle_row(far: Signal, path: Path) -> Row:
    mic = through(far, room(path)) + noise(len(far) / RATE, NOISE_RMS)
    db = erle_db(cancel(mic, far), far)
    note = f"far end alone, after {CONVERGED:.0f} s; {len(far) / RATE:.0f} s of speech"
    return Row(path.name, db, "dB", f">= {ERLE_TARGET_DB:.0f}", db >= ERLE_TARGET_DB, note)


def double_talk(far: Signal, near: Signal, path: Path = PATHS[0]) -> tuple[Cancelled, Signal]:
    """The far end throughout, the near end from :data:`CONVERGED` plus a second on:
    the run, and the near end as it reached the microphone."""
    start = round((CONVERGED + 1) * RATE)
    said = numpy.zeros(len(far))
    length = min(len(near), len(far) - start)
    said[start : start + length] = near[:length]
    mic = through(far, room(path)) + said + noise(len(far) / RATE, NOISE_RMS)
    return cancel(mic, far), said


def _double_talk_row(far: Signal, near: Signal) -> Row:
    run, said = double_talk(far, near)
    level, correlation = near_kept(run, said)
    ok = abs(level) <= DOUBLE_TALK_DB and correlation >= 0.9
    return Row("double talk: near end's level kept", level, "dB", f"+-{DOUBLE_TALK_DB:.0f}", ok,
               f"correlation with the near end's speech {correlation:.2f} (>= 0.9)")  # fmt: skip


def _noise_row() -> Row:
    reduction = noise_reduction_db()
    return Row("noise suppression, steady noise", reduction, "dB", f">= {NOISE_TARGET_DB:.0f}",
               reduction >= NOISE_TARGET_DB,
               f"white noise, {NOISE_ONLY_RMS:.0f} rms, nothing played")  # fmt: skip


def _cpu_row(far: Signal) -> Row:
    mic = through(far, room(PATHS[0])) + noise(len(far) / RATE, NOISE_RMS)
    cpu = cancel(mic, far).cpu_ms
    return Row("CPU per 20 ms frame", cpu, "ms", f"<= {CPU_TARGET_MS}", cpu <= CPU_TARGET_MS,
               f"cancel and preprocess, tail {TAIL_MS} ms, denoise on")  # fmt: skip

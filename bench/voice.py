"""Voice: PESQ of speech through a call's audio path under loss and jitter; CPU and delay.

What runs: espeak-ng speaks a few sentences (16 kHz mono after resampling);
one :class:`~edge.media.pipeline.CallAudio` sends them and another receives,
tick by tick, through the real path of a call's audio: Opus encode, the
redundancy packer, the payload, the receiver's unpacker, jitter buffer and
decoder (copy, FEC or concealment). The network between them is a seeded
model, not sockets: each packet, both ways, is dropped at random with the
condition's probability and delayed by a base plus a uniform jitter, so a
seed gives the same run every time; a random condition is scored as the mean
of :data:`RUNS` seeds. The sessions' crypto is left out of that loop (it does
not change a byte of audio) and timed on its own. Both ends send, so the
receiver's loss reports steer the sender as in a real call, and the speech
starts :data:`LEAD` frames into the call. One more run, clean, takes the
speech through two real agents on loopback (:func:`agents_call`): impairing
their path is not built, so loss and jitter go through the model only.

Figures, each beside its target: wide-band PESQ (ITU-T P.862.2, the ``pesq``
package) of the received speech against the sent, per condition, with the
mean bit rate of the speech direction on the wire (IPv4, UDP, session and
MEDIA_FRAME overhead included); CPU per call per 20 ms frame on this core
(one encode, one decode with its jitter buffer, one seal and one open of a
session transport); and the software mouth-to-ear delay on the clean
network: from the capture callback that completes a frame to the playback
callback that hands it to the sound card (the frame's own 20 ms, the
jitter buffer's hold, and the processing time).
"""

from __future__ import annotations

import asyncio
import heapq
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.client.agent import Agent
from edge.crypto.transport import DatagramTransport
from edge.errors import EdgeError
from edge.media.jitter import JitterBuffer, Play, Playout
from edge.media.pipeline import (
    FLAGS,
    FRAME_BYTES,
    FRAME_SAMPLES,
    RATE,
    CallAudio,
    jitter_buffer,
)
from edge.media.redundancy import BUDGET, PACKET_OVERHEAD
from edge.media.resample import Quality, Resampler
from edge.media.wav import read_wav, write_wav
from edge.runtime.control import request
from edge.wire.messages import Codec

FRAME = FRAME_SAMPLES / RATE
TAIL_FRAMES = 25
"""Ticks run after the speech ends, so the last words leave the jitter buffer."""
LEAD = 150
"""Frames of silence (3 s) before the first word: a call is under way, and the loss
reports are coming back, by the time anyone speaks; the score is of the speech."""
SEED = 2198
RUNS = 8
SENTENCES = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish. "
    "Rice is often served in round bowls. The juice of lemons makes fine punch."
)
"""Harvard sentences (IEEE 1969), the usual material of speech-quality tests."""
CPU_TARGET_MS = 0.4
DELAY_TARGET_MS = 60.0


@dataclass(frozen=True)
class Condition:
    """One network: random loss each way, base delay and uniform jitter (+/-)."""

    name: str
    loss: float
    jitter: float
    target: float
    delay: float = 0.025
    """Base one-way delay: off the 20 ms grid, as a real network's is."""


CONDITIONS = (
    Condition("clean", 0.0, 0.0, 4.0),
    Condition("5% random loss", 0.05, 0.0, 3.8),
    Condition("10% random loss", 0.10, 0.0, 3.5),
    Condition("30 ms jitter", 0.0, 0.030, 3.8),
)


@dataclass(frozen=True)
class Row:
    """One figure beside its target."""

    name: str
    value: float
    unit: str
    target: str
    ok: bool
    note: str = ""

    def line(self) -> str:
        verdict = "PASS" if self.ok else "MISS"
        value = f"{self.value:>7.2f} {self.unit:<4}"
        text = f"{self.name:<34} {value} target {self.target:<7} {verdict}"
        return f"{text}   {self.note}" if self.note else text


@dataclass(frozen=True)
class Skipped:
    """A figure that could not be measured here, and why."""

    name: str
    why: str

    def line(self) -> str:
        return f"{self.name:<34} skipped: {self.why}"


class Channel:
    """One direction of the seeded network model: loss, then base delay plus jitter."""

    def __init__(self, condition: Condition, seed: int) -> None:
        self.condition = condition
        self._random = random.Random(seed)
        self.sent = self.dropped = 0

    def carry(self, now: float) -> float | None:
        """When a packet sent at ``now`` arrives, or None if it is lost."""
        self.sent += 1
        lost = self._random.random() < self.condition.loss
        spread = self._random.uniform(-1.0, 1.0) * self.condition.jitter
        if lost:
            self.dropped += 1
            return None
        return now + self.condition.delay + spread


class PcmSource:
    """The speech, frame by frame, then silence."""

    def __init__(self, pcm: bytes) -> None:
        self._pcm, self._at = pcm, 0

    def read(self) -> bytes:
        frame = self._pcm[self._at : self._at + FRAME_BYTES]
        self._at += FRAME_BYTES
        return frame.ljust(FRAME_BYTES, b"\0")

    def close(self) -> None:
        pass


class PcmSink:
    """What the receiver plays, kept in memory."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, pcm: bytes) -> None:
        self.frames.append(pcm)

    def close(self) -> None:
        pass


class TimedJitter(JitterBuffer):
    """The call's jitter buffer, noting when each frame leaves it for the sound card."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.played: dict[int, float] = {}
        self.arrived: dict[int, float] = {}

    def push(self, sequence: int, timestamp: int, payload: bytes, now: float) -> None:
        self.arrived.setdefault(sequence, now)
        super().push(sequence, timestamp, payload, now)

    def pop(self, now: float) -> Playout:
        playout = super().pop(now)
        if isinstance(playout, Play):
            self.played.setdefault(playout.sequence, now)
        return playout


@dataclass
class Outcome:
    """One call through one condition."""

    received: bytes
    ticks: int
    payload_bytes: int
    encode_s: float
    decode_s: float
    held: list[float]
    """Seconds each frame that came in its own packet waited in the jitter buffer."""
    receiver_stats: dict[str, int]
    copies: list[int] = field(default_factory=list)

    @property
    def kbps(self) -> float:
        """Mean bit rate of the speech direction on the wire, kbit/s."""
        wire = self.payload_bytes + PACKET_OVERHEAD * self.ticks
        return wire * 8 / (self.ticks * FRAME) / 1000


def call(speech: bytes, condition: Condition, seed: int = SEED, lead: int = LEAD) -> Outcome:
    """Send ``speech`` from one CallAudio to another across ``condition``, after
    ``lead`` frames of silence; everything is measured from the end of the lead-in."""
    sink, jitter = PcmSink(), jitter_buffer(TimedJitter)
    talker = CallAudio(PcmSource(bytes(lead * FRAME_BYTES) + speech), PcmSink())
    listener = CallAudio(PcmSource(b""), sink, jitter=jitter)
    forth, back = Channel(condition, seed), Channel(condition, seed + 1)
    ticks = len(speech) // FRAME_BYTES + TAIL_FRAMES
    queue: list[tuple[float, int, int, bytes]] = []
    cpu = {"encode": 0.0, "decode": 0.0}
    copies: list[int] = []
    before = 0
    try:
        for tick in range(1, lead + ticks + 1):
            now = tick * FRAME
            if tick == lead + 1:
                cpu, before = {"encode": 0.0, "decode": 0.0}, talker.stats["sent_bytes"]
                copies.clear()
            _deliver(queue, now, talker, listener, cpu)
            talker.play(now)
            started = time.thread_time()
            listener.play(now)
            played = time.thread_time()
            payload = talker.payload()
            cpu["decode"] += played - started
            cpu["encode"] += time.thread_time() - played
            copies.append(talker.protection.copies)
            _send(queue, forth.carry(now), 0, tick, payload)
            _send(queue, back.carry(now), 1, tick, listener.payload())
    finally:
        talker.close()
        listener.close()
    held = [now - jitter.arrived[s] for s, now in jitter.played.items() if s in jitter.arrived]
    return Outcome(
        b"".join(sink.frames[lead:]), ticks, talker.stats["sent_bytes"] - before, cpu["encode"],
        cpu["decode"], held, dict(listener.stats), copies,
    )  # fmt: skip


def _send(
    queue: list[tuple[float, int, int, bytes]],
    arrival: float | None,
    direction: int,
    sequence: int,
    payload: bytes,
) -> None:
    if arrival is not None:
        # The second field breaks ties in arrival time by sending order, and says
        # which way the packet goes (even: to the listener).
        heapq.heappush(queue, (arrival, sequence * 2 + direction, sequence, payload))


def _deliver(
    queue: list[tuple[float, int, int, bytes]],
    now: float,
    talker: CallAudio,
    listener: CallAudio,
    cpu: dict[str, float],
) -> None:
    """Hand over everything that has arrived by ``now``, each at its arrival time."""
    while queue and queue[0][0] <= now:
        arrival, order, sequence, payload = heapq.heappop(queue)
        if order % 2:
            talker.receive(Codec.OPUS, sequence, sequence * FRAME_SAMPLES, payload, arrival, FLAGS)
            continue
        started = time.thread_time()
        listener.receive(Codec.OPUS, sequence, sequence * FRAME_SAMPLES, payload, arrival, FLAGS)
        cpu["decode"] += time.thread_time() - started


# --- speech and scoring -------------------------------------------------------------


def speech(text: str = SENTENCES) -> bytes:
    """``text`` spoken by espeak-ng, as 16 kHz mono s16le. Raises FileNotFoundError
    when espeak-ng is not installed."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise FileNotFoundError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run(
            [espeak, "-v", "en-us", "-s", "160", "-w", str(path), text],
            check=True,
            capture_output=True,
            timeout=60,
        )
        rate, pcm = read_wav(path)
    return to_rate(pcm, rate)


def to_rate(pcm: bytes, rate: int) -> bytes:
    """Mono s16le at ``rate`` to :data:`RATE`, whole (the filter's tail flushed with zeros)."""
    if rate == RATE:
        return pcm
    converter = Resampler(rate, RATE, quality=Quality.SINC_MEDIUM)
    step = rate // 10 * 2  # a tenth of a second of input per call
    out = [converter.process(pcm[at : at + step]) for at in range(0, len(pcm), step)]
    out.append(converter.process(bytes(step)))
    converter.close()
    return b"".join(out)[: len(pcm) * RATE // rate // 2 * 2]


def pesq_wb(sent: bytes, received: bytes) -> float:
    """Wide-band PESQ of ``received`` against ``sent`` (both 16 kHz s16le). Raises
    ImportError without the ``pesq`` package."""
    import numpy
    from pesq import pesq  # type: ignore[import-untyped]

    reference = numpy.frombuffer(sent, dtype="<i2").astype(numpy.float32)
    degraded = numpy.frombuffer(received, dtype="<i2").astype(numpy.float32)
    return float(pesq(RATE, reference, degraded, "wb"))


def crypto_ms(payload_bytes: int) -> float:
    """Milliseconds of CPU to seal and open one media frame of this size in a session
    transport (ChaCha20-Poly1305 both ways), the best of three runs."""
    send = DatagramTransport(bytes(range(32)), bytes(range(1, 33)))
    receive = DatagramTransport(bytes(range(1, 33)), bytes(range(32)))
    frame = bytes(payload_bytes + 17)  # inner header and MEDIA_FRAME fields
    rounds, best = 2000, float("inf")
    for _ in range(3):
        started = time.thread_time()
        for _ in range(rounds):
            counter, sealed = send.seal(frame)
            receive.open(counter, sealed)
        best = min(best, time.thread_time() - started)
    return best / rounds * 1000


# --- the figures --------------------------------------------------------------------


def run() -> list[Row | Skipped]:
    try:
        spoken = speech()
    except (FileNotFoundError, subprocess.SubprocessError) as exc:
        return [Skipped("voice", str(exc))]
    rows: list[Row | Skipped] = []
    for condition in CONDITIONS:
        outcomes = [call(spoken, condition, seed) for seed in seeds(condition)]
        rows.append(_quality_row(condition, spoken, outcomes))
    clean = call(spoken, CONDITIONS[0])
    rows.append(_agents_row(spoken))
    rows.append(_cpu_row(clean))
    rows.append(_delay_row(clean))
    return rows


def seeds(condition: Condition) -> list[int]:
    """The runs of a condition: one for a network that draws nothing at random,
    else :data:`RUNS` (where the losses fall moves PESQ by tenths)."""
    if not condition.loss and not condition.jitter:
        return [SEED]
    return [SEED + 101 * run for run in range(RUNS)]


# --- two real agents ----------------------------------------------------------------


def agents_call(said: bytes, folder: Path) -> bytes:
    """``said`` played by one real agent into a call to another on loopback (own login
    server and supernode, sessions, timers and WAV files as in a device), and what
    the other recorded. Needs the repository's tests package (its fixtures)."""
    from tests.test_agent import TIMEOUT, network, run_uv

    write_wav(folder / "says.wav", said)
    write_wav(folder / "quiet.wav", bytes(FRAME_BYTES))
    frames = len(said) // FRAME_BYTES

    async def main() -> None:
        async with network(folder) as net:
            home = await net.home()
            caller = replace(
                net.agent_config("alice", [home]),
                capture=f"file:{folder / 'says.wav'}",
                playback=f"file:{folder / 'alice-hears.wav'}",
            )
            callee = replace(
                net.agent_config("bob", [home]),
                capture=f"file:{folder / 'quiet.wav'}",
                playback=f"file:{folder / 'bob-hears.wav'}",
                auto_answer=frozenset({"alice"}),
            )
            agents = [await net.agent(caller), await net.agent(callee)]
            placed = await request(caller.control_socket, "call", {"user": "bob"})
            if not placed.get("ok"):
                raise RuntimeError(f"the call was not placed: {placed}")
            await asyncio.wait_for(_heard(agents[1], frames + TAIL_FRAMES), TIMEOUT + frames / 50)
            await request(caller.control_socket, "hangup")

    run_uv(main())
    return read_wav(folder / "bob-hears.wav")[1]


async def _heard(agent: Agent, frames: int) -> None:
    calls = agent.calls
    assert calls is not None
    await calls.wait_for(lambda: any(c["frames_received"] >= frames for c in calls.status()))


def aligned(said: bytes, heard: bytes) -> bytes:
    """The stretch of ``heard`` that lines up best with ``said`` (by cross-correlation),
    as long as ``said``: a call's recording starts with the call, not with the file."""
    import numpy

    one = numpy.frombuffer(said, dtype="<i2").astype(numpy.float64)
    two = numpy.frombuffer(heard, dtype="<i2").astype(numpy.float64)
    size = 1 << int(len(one) + len(two)).bit_length()
    spectrum = numpy.fft.rfft(two, size) * numpy.conj(numpy.fft.rfft(one, size))
    lag = int(numpy.argmax(numpy.fft.irfft(spectrum, size)[: len(two)]))
    return heard[2 * lag : 2 * lag + len(said)].ljust(len(said), b"\0")


def _agents_row(spoken: bytes) -> Row | Skipped:
    name = "PESQ-WB, clean, two agents"
    # Silence around the speech: the first frames of a call may go before the
    # callee is active, and the file loops.
    said = bytes(25 * FRAME_BYTES) + spoken + bytes(50 * FRAME_BYTES)
    try:
        with tempfile.TemporaryDirectory() as folder:
            heard = agents_call(said, Path(folder))
        score = pesq_wb(said, aligned(said, heard))
    except ImportError as exc:
        return Skipped(name, f"needs the repository's tests and the pesq package ({exc})")
    except (EdgeError, OSError, RuntimeError, TimeoutError) as exc:
        return Skipped(name, f"the call between the agents failed: {exc!r}")
    target = CONDITIONS[0].target
    note = "loopback: real sessions, 20 ms timers, WAV files both ends"
    return Row(name, score, "MOS", f">= {target}", score >= target, note)


def _quality_row(condition: Condition, spoken: bytes, outcomes: list[Outcome]) -> Row | Skipped:
    name = f"PESQ-WB, {condition.name}"
    sent = spoken + bytes(TAIL_FRAMES * FRAME_BYTES)
    kbps = max(o.kbps for o in outcomes)
    note = (
        f"{kbps:.1f} kbit/s (budget {BUDGET // 1000}), "
        f"copies {statistics.mean(c for o in outcomes for c in o.copies):.2f}, "
        f"repaired {_per_run(outcomes, 'repaired'):.0f}, "
        f"concealed {_per_run(outcomes, 'concealed') + _per_run(outcomes, 'recovered'):.1f}"
    )
    try:
        scores = [pesq_wb(sent, o.received[: len(sent)]) for o in outcomes]
    except ImportError:
        return Skipped(name, f"the pesq package is not installed ({note})")
    if len(scores) > 1:
        note = f"mean of {len(scores)} runs, lowest {min(scores):.2f}; {note}"
    score = statistics.mean(scores)
    ok = score >= condition.target and kbps <= BUDGET / 1000
    return Row(name, score, "MOS", f">= {condition.target}", ok, note)


def _per_run(outcomes: list[Outcome], stat: str) -> float:
    return statistics.mean(o.receiver_stats[stat] for o in outcomes)


def _cpu_row(outcome: Outcome) -> Row:
    mean_payload = outcome.payload_bytes // outcome.ticks
    coding = (outcome.encode_s + outcome.decode_s) / outcome.ticks * 1000
    total = coding + crypto_ms(mean_payload)
    note = f"encode + decode + jitter buffer {coding:.3f} ms, crypto {total - coding:.3f} ms"
    return Row("CPU per call per 20 ms frame", total, "ms", f"<= {CPU_TARGET_MS}",
               total <= CPU_TARGET_MS, note)  # fmt: skip


def _delay_row(outcome: Outcome) -> Row:
    processing = (outcome.encode_s + outcome.decode_s) / outcome.ticks
    # Capture callback to playback callback: the frame's own 20 ms gathered by the
    # capture callback, its stay in the jitter buffer, and the processing.
    held = statistics.mean(outcome.held)
    total = (FRAME + held + processing) * 1000
    note = f"frame {FRAME * 1000:.0f} + jitter buffer {held * 1000:.0f} ms + processing"
    return Row("software mouth-to-ear delay", total, "ms", f"<= {DELAY_TARGET_MS:.0f}",
               total <= DELAY_TARGET_MS, note)  # fmt: skip

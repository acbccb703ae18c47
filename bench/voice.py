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
speech through two real agents on loopback (:func:`agents_call`).

Then the whole agent-to-agent path, with the loss and jitter on a real network
(:func:`lab_rows`, root only): the NAT lab (:mod:`tests.natlab`) with two
public sites, the login server and both supernodes, each a real process, and
an ``edge agent`` on each site, driven through its control socket. The
caller's uplink goes through the lab's impairment forwarder
(:mod:`tests.impair`), both ways, with the condition's base delay, jitter
(spread without reordering: the forwarder keeps frames in order) and random
loss; it is replaced by a forwarder seeded anew before each call
(:class:`VoiceLab`). The caller plays a WAV file (:data:`LEAD` frames of
silence, the speech, :data:`TAIL_FRAMES` more) into the call, the callee
answers by itself and records to another, the caller hangs up once it has
sent the whole file, and the recording, aligned to the speech by
cross-correlation (:func:`aligned`), is scored. A random condition is the
mean of :data:`LAB_CALLS` calls; each row notes what the callee's status
said of the call (``edge ctl status``: loss seen, frames repaired and
concealed, the MOS it estimates). A call that fails to be placed (a lookup
lost on the lossy uplink) is placed again, as a user would redial, and
counted.

``python -m bench.voice --lab-calls N`` sets the calls per condition (0: no lab);
``--lab-only`` leaves the model out.

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

import argparse
import asyncio
import heapq
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.lab import DelayedLab, _log_tail
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
from tests.impair import Impairment
from tests.natlab import SiteSpec, remove_stale, unavailable

FRAME = FRAME_SAMPLES / RATE
TAIL_FRAMES = 25
"""Ticks run after the speech ends, so the last words leave the jitter buffer."""
LEAD = 150
"""Frames of silence (3 s) before the first word: a call is under way, and the loss
reports are coming back, by the time anyone speaks; the score is of the speech."""
SEED = 2198
RUNS = 8
LAB_CALLS = 3
"""Calls per random condition through the NAT lab, whose forwarder draws each frame's fate."""
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


def run(lab_calls: int = LAB_CALLS, model: bool = True) -> list[Row | Skipped]:
    """Every figure: the model's (``model``) and the NAT lab's (``lab_calls`` calls a
    condition; none with 0)."""
    try:
        spoken = speech()
    except (FileNotFoundError, subprocess.SubprocessError) as exc:
        return [Skipped("voice", str(exc))]
    rows: list[Row | Skipped] = []
    if model:
        rows += model_rows(spoken)
    if lab_calls:
        rows += lab_rows(spoken, lab_calls)
    return rows


def model_rows(spoken: bytes) -> list[Row | Skipped]:
    """PESQ per condition through the seeded model, the clean call between two agents
    on loopback, and the CPU and delay figures."""
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
    name = "PESQ-WB, clean, agents on loopback"
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
    name = f"PESQ-WB, {condition.name}, model"
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


# --- through the NAT lab ------------------------------------------------------------

CALLER, CALLEE = "pub1", "pub2"
"""The two sites: public hosts, so the call goes straight between them (direct UDP);
the caller's uplink carries the condition, both ways."""
USERS = {CALLER: "ann", CALLEE: "ben"}
CALL_DEADLINE = 30.0
"""Seconds a lab call may take beyond its speech (setup, the last frames, the end)."""
DIALS = 5
"""Attempts to place a call at most."""
POLL = 0.1
"""Seconds between two looks at an agent's status (what is measured does not depend on it)."""


class LabVoiceError(EdgeError):
    """A call through the lab did not go as a call should; the message says how it stood."""


@dataclass(frozen=True)
class LabCall:
    """One call through the lab: the score of what the callee recorded, and both ends'
    status of the call (``edge ctl status``) just before the hang-up."""

    score: float
    caller: dict[str, Any]
    callee: dict[str, Any]
    redials: int = 0
    """Attempts to place the call that failed before the one that worked."""


class VoiceLab(DelayedLab):
    """The NAT lab with a forwarder that is replaced between calls: each forwarder
    takes its impairment and its seed on its command line, once."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self._forwarders: dict[str, subprocess.Popen[str]] = {}

    def _impaired_uplink(self, router: str, wan: str, impairment: Impairment, seed: int) -> None:
        super()._impaired_uplink(router, wan, impairment, seed)
        self._forwarders[router] = self.processes[-1]

    def impair(self, site: str, impairment: Impairment, seed: int) -> None:
        """Put ``impairment`` on ``site``'s uplink from now on (built impaired)."""
        built = self.sites[site]
        namespace = built.router or built.host
        old = self._forwarders[namespace]
        # It holds nothing to tidy: frames still queued in it are simply lost.
        old.kill()
        old.wait()
        argv = [sys.executable, "-m", "tests.impair", "wanx", "uplink", "--seed", str(seed)]
        self._forwarders[namespace] = self.spawn(namespace, *argv, *impairment.argv(), ready=True)


class VoicePath:
    """Two agents in the lab, the caller playing a WAV file into every call and the
    callee recording each call to another; see :func:`voice_path`."""

    def __init__(self, net: VoiceLab, tmp: Path, spoken: bytes) -> None:
        self.net, self.tmp, self.spoken = net, tmp, spoken
        said = bytes(LEAD * FRAME_BYTES) + spoken + bytes(TAIL_FRAMES * FRAME_BYTES)
        write_wav(tmp / "says.wav", said)
        self.frames = len(said) // FRAME_BYTES
        self.controls: dict[str, Path] = {}

    def start(self) -> None:
        """The login server, the supernodes, and both agents online."""
        from bench.lab import _servers

        keys = _servers(self.net, self.tmp)
        self.controls[CALLER] = self._agent(CALLER, keys, f"file:{self.tmp / 'says.wav'}", "none")
        self.controls[CALLEE] = self._agent(CALLEE, keys, "none", f"file:{self.heard}")

    @property
    def heard(self) -> Path:
        return self.tmp / "heard.wav"

    def _agent(self, site: str, keys: Any, capture: str, playback: str) -> Path:
        from tests.test_natlab_calls import LOGIN, PASSWORD, PORT, SN1, _spawn, _wait_for

        (self.tmp / f"{site}.password").write_text(PASSWORD)
        control = self.tmp / f"{site}.sock"
        sections: dict[str, dict[str, object]] = {
            "account": {"user_id": USERS[site], "device_id": site,
                        "password_file": str(self.tmp / f"{site}.password")},
            "login": {"address": f"{LOGIN[0]}:{LOGIN[1]}",
                      "server_key": keys.noise.dh_public.hex(),
                      "issuer_key": keys.issuer.public.hex()},
            "supernodes": {"bootstrap": [f"{SN1}:{PORT}"]},
            "state": {"dir": str(self.tmp / f"{site}-state"), "control_socket": str(control)},
            "policy": {"auto_answer": [USERS[CALLER]]},
            "audio": {"capture": capture, "playback": playback},
        }  # fmt: skip
        path = self.tmp / f"{site}.toml"
        path.write_text("".join(_toml(name, values) for name, values in sections.items()))
        host = self.net.sites[site].host
        with _spawn(self.net, host, self.tmp, site, "agent", "--config", str(path)) as listener:
            try:
                _wait_for(listener, b"STATUS=online")
            except (AssertionError, TimeoutError) as exc:
                tail = _log_tail(self.net, host)
                raise LabVoiceError(
                    f"{site}: the agent never came online ({exc!r}): {tail}"
                ) from None
        return control

    def call(self, condition: Condition, seed: int) -> LabCall:
        """One call across ``condition`` (on a forwarder seeded ``seed``): the caller
        plays the speech once through, hangs up, and the recording is scored."""
        impairment = Impairment(condition.delay, condition.jitter, condition.loss)
        self.net.impair(CALLER, impairment, seed)
        call_id, redials = self._dial()
        deadline = time.monotonic() + CALL_DEADLINE + self.frames * FRAME
        # The whole file sent: its last second of silence covers the way and the
        # callee's jitter buffer.
        mine = self._until(CALLER, call_id, deadline, lambda c: c["frames_sent"] >= self.frames)
        theirs = self._until(CALLEE, call_id, deadline, lambda c: True)
        _ctl(self.controls[CALLER], "hangup")
        self._until(CALLEE, call_id, deadline, lambda c: c["state"] == "ended")
        reference = self.spoken + bytes(TAIL_FRAMES * FRAME_BYTES)
        heard = read_wav(self.heard)[1]
        return LabCall(pesq_wb(reference, aligned(reference, heard)), mine, theirs, redials)

    def _dial(self) -> tuple[str, int]:
        """Place the call, again when it fails (as a user would redial): a lost lookup
        or handshake datagram on the lossy uplink fails the attempt. The call's id,
        and the number of failed attempts."""
        failures: list[object] = []
        while len(failures) < DIALS:
            placed = _ctl(self.controls[CALLER], "call", user=USERS[CALLEE])
            if placed.get("ok"):
                return str(placed["result"]["call"]), len(failures)
            failures.append(placed.get("error"))
        raise LabVoiceError(f"the call was not placed in {DIALS} attempts: {failures}")

    def _until(
        self, site: str, call_id: str, deadline: float, done: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """The call's status at ``site`` once ``done`` says so, polled by deadline."""
        while True:
            answer = _ctl(self.controls[site], "status")
            calls = (answer.get("result") or {}).get("calls") or []
            call = next((c for c in calls if c.get("id") == call_id), None)
            if call is not None and done(call):
                return dict(call)
            if time.monotonic() > deadline:
                raise LabVoiceError(f"{site}: the call stood at {call} at its deadline")
            time.sleep(POLL)


def _toml(name: str, values: dict[str, object]) -> str:
    # JSON's strings and arrays of strings are TOML's too.
    return f"[{name}]\n" + "".join(f"{key} = {json.dumps(v)}\n" for key, v in values.items())


def _ctl(control: Path, command: str, **args: str) -> dict[str, Any]:
    from tests.test_natlab_calls import ctl

    return ctl(control, command, **args)


@contextmanager
def voice_path(spoken: bytes, prefix: str = "edgevoice") -> Iterator[VoicePath]:
    """A lab of two public sites, the caller's uplink impaired, with the login server,
    supernodes and two agents running, the caller set to say ``spoken`` after
    :data:`LEAD` frames of silence in each call; all torn down afterwards. Needs
    root (:func:`tests.natlab.unavailable` says why not)."""
    sites = [
        SiteSpec(CALLER, "public", Impairment(delay=CONDITIONS[0].delay)),
        SiteSpec(CALLEE, "public"),
    ]
    remove_stale(prefix)
    net = VoiceLab(prefix)
    try:
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as folder:
            net.build(sites)
            path = VoicePath(net, Path(folder), spoken)
            path.start()
            yield path
    finally:
        net.close()


def lab_rows(spoken: bytes, calls: int = LAB_CALLS) -> list[Row | Skipped]:
    """Each condition through the lab: ``calls`` calls each, one for the clean network
    (:func:`seeds`), each on a forwarder seeded anew."""
    reason = unavailable()
    if reason is not None:
        return [Skipped("PESQ-WB through the NAT lab", reason)]
    rows: list[Row | Skipped] = []
    try:
        with voice_path(spoken) as path:
            for condition in CONDITIONS:
                runs = seeds(condition)[:calls]
                rows.append(_lab_row(condition, [path.call(condition, seed) for seed in runs]))
    except ImportError as exc:
        rows.append(Skipped("PESQ-WB through the NAT lab", f"needs the pesq package ({exc})"))
    except (EdgeError, OSError, RuntimeError, ValueError, AssertionError) as exc:
        # RuntimeError: the lab's own errors and PESQ's; ValueError: PESQ's for a
        # silent recording.
        rows.append(Skipped("PESQ-WB through the NAT lab", f"a lab call failed: {exc!r}"))
    return rows


def _lab_row(condition: Condition, calls: list[LabCall]) -> Row:
    scores = [c.score for c in calls]
    score = statistics.mean(scores)
    callee = [c.callee for c in calls]
    audio = [c.get("audio") or {} for c in callee]
    note = (
        f"{'/'.join(sorted({str(c.get('path')) for c in callee}))}, "
        f"loss seen {statistics.mean(c.get('loss', 0.0) for c in callee):.1%}, "
        f"repaired {statistics.mean(a.get('repaired', 0) for a in audio):.0f}, "
        f"concealed {statistics.mean(a.get('concealed', 0) for a in audio):.1f}, "
        f"MOS est. {statistics.mean(a.get('mos', 0.0) for a in audio):.2f}"
    )
    redials = sum(c.redials for c in calls)
    if redials:
        note += f", {redials} redial(s)"
    if len(scores) > 1:
        note = f"mean of {len(scores)} calls, lowest {min(scores):.2f}; {note}"
    name = f"PESQ-WB, {condition.name}, NAT lab"
    return Row(name, score, "MOS", f">= {condition.target}", score >= condition.target, note)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.voice", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--lab-calls",
        type=int,
        default=LAB_CALLS,
        help="calls per condition through the NAT lab (0: none)",
    )
    parser.add_argument("--lab-only", action="store_true", help="leave out the model's figures")
    options = parser.parse_args(argv)
    for row in run(options.lab_calls, model=not options.lab_only):
        print(row.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Device: an agent's resident memory, idle and in a call, and its start-up time to ready.

What runs: the pieces of ``edge demo`` (:mod:`edge.demo`), quietly: a login
server in this process, one ``edge supernode`` and two ``edge agent``
processes on loopback, each agent with its board profile on gpiozero's mock
pins and its audio from WAV files (``[audio] capture = "file:..."``, the
demo's tunes, looped; ``playback = "file:..."``), as a small board would run
with a real sound card in their place.

- **Start-up**: from spawning ``edge agent`` to ``READY=1`` on its
  NOTIFY_SOCKET, and on to ``STATUS=online via ...`` (presence stored at its
  supernode). The first start of a device enrols it with its password; every
  later one renews the certificate it holds, the common case on a device. Each
  kind is the median of :data:`STARTS` starts, one at a time so that they do
  not share the cores: the enrolling ones are a device's first start and later
  starts with the certificate removed; the renewing ones restart a device that
  holds one.
- **Memory**: ``VmRSS`` of ``/proc/PID/status`` of both agents, sampled every
  :data:`SAMPLE` s: idle for :data:`IDLE_SECONDS` once both are online, then
  through a call of :data:`CALL_SECONDS` with audio both ways (Opus, jitter
  buffer, the file-backed sound device); peak and mean over both agents. Beside
  them, the interpreter's own share: a bare ``python -c pass``, and one that
  only imports :mod:`edge.client.agent`, to show how much is code loaded and how
  much the running agent holds.

Each figure is printed against its target (:data:`RSS_TARGET_MB` in a call,
:data:`READY_TARGET_S` to ready) with PASS or MISS. ``python -m bench device``
runs it alone (about half a minute).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from edge.client.agent import CERT_FILE
from edge.demo import INTERCOM, PHONE, Daemon, Demo, Device, Login, Timeline
from edge.errors import EdgeError
from edge.media.wav import FRAME_SAMPLES, RATE
from edge.runtime.control import JsonObject
from edge.runtime.control import request as control_request

STARTS = 3
"""Starts of each kind (enrolling, renewing) whose median is the figure."""
IDLE_SECONDS = 5.0
CALL_SECONDS = 10.0
SAMPLE = 0.1
"""Seconds between two readings of the agents' memory."""
RSS_TARGET_MB = 60.0
READY_TARGET_S = 2.0
STATUS_LIMIT = 64 << 10
"""Bytes of a /proc status file read at most: the real one is about 1.5 KiB."""


@dataclass(frozen=True)
class Row:
    """One figure, beside its target when it has one."""

    name: str
    value: float
    unit: str
    target: float | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.target is None or self.value <= self.target

    def line(self) -> str:
        text = f"{self.name:<44} {self.value:>7.2f} {self.unit:<2}"
        if self.target is not None:
            verdict = "PASS" if self.ok else "MISS"
            text += f" target <= {self.target:g} {self.unit} {verdict}"
        return f"{text}   {self.note}" if self.note else text.rstrip()


@dataclass(frozen=True)
class Note:
    """A line that is not a figure: what was run, or why a figure is missing."""

    text: str

    def line(self) -> str:
        return self.text


class BadStatus(ValueError):
    """A /proc status text without a well-formed ``VmRSS`` line."""


# -- pure helpers ----------------------------------------------------------------------


def vm_rss_kib(text: str) -> int:
    """The ``VmRSS`` of a ``/proc/PID/status`` text, in KiB; BadStatus when it has none
    (a kernel thread, or a process that has exited) or it is not ``N kB``."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key != "VmRSS":
            continue
        number, _, unit = value.strip().partition(" ")
        if unit.strip() != "kB" or not number.isdigit():
            raise BadStatus(f"VmRSS is not a number of kB: {value.strip()!r}")
        return int(number)
    raise BadStatus("no VmRSS line in the status text")


def median(values: Sequence[float]) -> float:
    """The median; ValueError, saying so, when nothing was measured."""
    if not values:
        raise ValueError("no values to take the median of")
    return statistics.median(values)


def peak_and_mean(samples: Sequence[int]) -> tuple[float, float]:
    """The largest and the mean of ``samples`` (KiB), both in MB (10^6 bytes)."""
    if not samples:
        raise ValueError("no memory samples")
    return max(samples) * 1024 / 1e6, statistics.fmean(samples) * 1024 / 1e6


def process_rss_kib(pid: int) -> int:
    """A running process's VmRSS, in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        return vm_rss_kib(status.read(STATUS_LIMIT))


# -- the interpreter's own share -------------------------------------------------------


def interpreter_rss_kib(code: str) -> int:
    """VmRSS of a fresh interpreter after running ``code``, read by itself at its end."""
    script = f"{code}\nimport sys\nsys.stdout.write(open('/proc/self/status').read())"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return vm_rss_kib(done.stdout[:STATUS_LIMIT])


def import_seconds() -> float:
    """Wall time of a fresh interpreter that imports the agent's code and exits."""
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", "import edge.client.agent"], check=True, timeout=60)
    return time.monotonic() - began


def baseline_rows() -> list[Row]:
    bare = interpreter_rss_kib("pass")
    loaded = interpreter_rss_kib("import edge.client.agent")
    imports = [import_seconds() for _ in range(STARTS)]
    return [
        Row("RSS, bare interpreter (python -c pass)", bare * 1024 / 1e6, "MB"),
        Row("RSS, interpreter + import edge.client.agent", loaded * 1024 / 1e6, "MB"),
        Row("start + import edge.client.agent", median(imports), "s", note="median"),
    ]


# -- the network -----------------------------------------------------------------------


class Quiet(Timeline):
    """The demo's timeline, untold: the bench prints figures, not the story."""

    def say(self, who: str, text: str) -> None:
        pass


@dataclass
class Starts:
    """Seconds from spawn to READY=1 and to STATUS=online, one entry a start."""

    ready: list[float]
    online: list[float]
    login: list[float]
    """The agent's own ``login_ms`` (enrolment or renewal), in seconds."""


class Bench:
    """The network of one run and the figures it collects."""

    def __init__(self, demo: Demo, login: Login) -> None:
        self.demo = demo
        self.login = login
        self.agents: dict[Device, Daemon] = {}
        self.enrolling = Starts([], [], [])
        self.renewing = Starts([], [], [])

    async def start(self, device: Device, starts: Starts) -> None:
        """Spawn ``device``'s agent and time it to ready and to online."""
        spawned = time.monotonic()
        daemon = await self.demo.spawn_agent(device, self.login, "super-1")
        self.agents[device] = daemon
        await daemon.expect("notify", "READY=1", "started")
        starts.ready.append(time.monotonic() - spawned)
        await daemon.expect("notify", "STATUS=online via ", "come online")
        starts.online.append(time.monotonic() - spawned)
        status = await self.demo.status(device.name)
        starts.login.append(float(status["timings"]["login_ms"]) / 1000)

    async def restart(self, device: Device, starts: Starts, *, enrol: bool) -> None:
        daemon = self.agents.pop(device)
        code = await daemon.stop()
        await daemon.close()
        if code != 0:
            raise RuntimeError(f"{device.name} exited with status {code}{daemon.last_words()}")
        (self.demo.folder / f"{device.name}.notify").unlink()
        if enrol:
            (self.demo.folder / device.name / CERT_FILE).unlink()
        await self.start(device, starts)

    async def sample(self, seconds: float) -> list[int]:
        """Both agents' VmRSS every :data:`SAMPLE` s for ``seconds``."""
        pids = [daemon.process.pid for daemon in self.agents.values()]
        samples: list[int] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            samples.extend(process_rss_kib(pid) for pid in pids)
            await asyncio.sleep(SAMPLE)  # the sampling period, not a wait for an event
        return samples

    async def call(self) -> list[int]:
        """The intercom calls the phone, which answers; memory sampled through the call."""
        await self.ask(INTERCOM, "call", {"user": PHONE.user_id})
        await self.demo.until_calls(
            lambda name, call: name == INTERCOM.name or call["state"] == "ringing", "ringing"
        )
        await self.ask(PHONE, "answer")
        await self.demo.until_calls(lambda _, call: call["state"] == "active", "an active call")
        samples = await self.sample(CALL_SECONDS)
        # Half the call's frames at least: a call that carried no audio measures nothing.
        frames = round(CALL_SECONDS / 2 * RATE / FRAME_SAMPLES)
        calls = await self.demo.latest_calls()
        if any(call["frames_received"] < frames for call in calls.values()):
            raise RuntimeError(f"the call carried too little audio: {calls}")
        await self.ask(INTERCOM, "hangup")
        await self.demo.until_calls(lambda _, call: call["state"] == "ended", "an ended call")
        return samples

    async def ask(self, device: Device, command: str, args: JsonObject | None = None) -> None:
        socket = self.demo.folder / f"{device.name}.sock"
        answer = await control_request(socket, command, args)
        if not answer["ok"]:
            raise RuntimeError(f"{device.name} refused {command}: {answer['error']['message']}")


async def measure(folder: Path) -> list[Row]:
    async with AsyncExitStack() as stack:
        demo = Demo(folder, Quiet(verbose=False), stack)
        login = await demo.start_login()
        for device in (PHONE, INTERCOM):
            await demo.create_account(login, device)
            demo.write_tune(device)
        await demo.start_supernode("super-1", login)
        bench = Bench(demo, login)
        for device in (PHONE, INTERCOM):
            await bench.start(device, bench.enrolling)
        for _ in range(STARTS - 2):
            await bench.restart(INTERCOM, bench.enrolling, enrol=True)
        for _ in range(STARTS):
            await bench.restart(PHONE, bench.renewing, enrol=False)
        idle = await bench.sample(IDLE_SECONDS)
        in_call = await bench.call()
        await demo.stop(list(bench.agents.values()))
        await demo.stop([demo.daemons["super-1"]])
    return start_rows(bench) + memory_rows(idle, in_call)


def start_rows(bench: Bench) -> list[Row]:
    rows = []
    for kind, starts in (("renewing", bench.renewing), ("enrolling", bench.enrolling)):
        note = f"median of {len(starts.ready)}, max {max(starts.ready):.2f} s"
        rows.append(
            Row(f"start -> READY=1, {kind}", median(starts.ready), "s", READY_TARGET_S, note)
        )
        rows.append(Row(f"start -> online, {kind}", median(starts.online), "s"))
        rows.append(Row(f"  of which the login, {kind}", median(starts.login) * 1000, "ms"))
    return rows


def memory_rows(idle: Sequence[int], in_call: Sequence[int]) -> list[Row]:
    rows = []
    for when, samples, target in (("idle", idle, None), ("in a call", in_call, RSS_TARGET_MB)):
        peak, mean = peak_and_mean(samples)
        note = f"{len(samples)} samples, both agents"
        rows.append(Row(f"RSS {when}, peak", peak, "MB", target, note))
        rows.append(Row(f"RSS {when}, mean", mean, "MB", target))
    return rows


def run() -> Iterator[Row | Note]:
    yield Note(
        f"login server, one supernode, two agents on loopback; {IDLE_SECONDS:.0f} s idle, "
        f"a {CALL_SECONDS:.0f} s call with file audio both ways"
    )
    yield from baseline_rows()
    with tempfile.TemporaryDirectory(prefix="edgebench-device-") as where:
        yield from _quietly(lambda: asyncio.run(measure(Path(where))))


def _quietly(measured: Callable[[], list[Row]]) -> list[Row | Note]:
    try:
        return list(measured())
    except (EdgeError, RuntimeError, OSError, ValueError) as exc:
        return [Note(f"device benchmark failed: {exc}")]


if __name__ == "__main__":
    for row in run():
        print(row.line(), flush=True)

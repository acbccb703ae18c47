"""TURN relay beside coturn, one core each: how many voice calls each relays with <= 1% loss.

How it works: the relay under test runs as its own process pinned to one core
(``taskset``): our supernode (``python -m edge supernode`` with a throw-away
configuration) and then coturn's ``turnserver`` with one relay thread, both
on 127.0.0.1 with TURN REST credentials from the same secret. The load
generator (:mod:`bench.turnload`) runs in this process, pinned to another
core: N calls, each an allocation with a channel to one peer socket, sending
160-byte payloads at 50 packets/s each way, so the relay carries N x 100
packets/s.

For each relay the search doubles N from :data:`FIRST_CALLS` while a trial
loses at most :data:`LOSS_LIMIT` of its packets, then bisects between the
last N that held and the first that did not, to within :data:`PRECISION`,
inside :data:`BUDGET` seconds. A trial holds when the generator offered
the whole load (:attr:`bench.turnload.Trial.complete`) and at most 1% of it
was lost. A failed trial in which the generator also fell behind its
schedule (:attr:`bench.turnload.Trial.on_schedule`) while the relay still
had time to spare (:attr:`bench.turnload.Trial.relay_saturated`) is the
generator's failure as much as the relay's; when such a trial is what
bounded the result, the figure is a lower bound and its line says so. The ratio
ours/coturn is the figure that carries over between machines.

On a shared machine other work takes turns on both cores, and a trial it
disturbs loses packets it would not have lost: a failed trial is run again
(a third time if the core time that went elsewhere exceeded
:data:`CONTENDED`) and the best attempt counts. Two more figures help to
read the first two: the relay's packets per CPU second at its best trial,
which such disturbances hardly move, and the largest share of a core that
went elsewhere in any trial, which says how far to trust the rest.

``python -m bench.relay`` runs this alone and prints every trial.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from bench.common import Figure
from bench.turnload import CALL_RATE, PAYLOAD_SIZE, Load, Placement, Trial
from edge.sansio import Address
from edge.stun.codec import Class, Message, Method, build, parse
from edge.stun.errors import StunError

SECRET: Final = "edge relay benchmark"
REALM: Final = "edge-bench"
RELAY_PORTS: Final = (10000, 29999)
"""Relayed ports, below Linux's ephemeral range where the generator's sockets live."""

LOSS_LIMIT: Final = 0.01
FIRST_CALLS: Final = 100
MAX_CALLS: Final = 8000
"""The most calls a search tries; fewer when the file descriptor limit is lower (the
relay and the generator each hold a socket per call)."""

SPARE_FILES: Final = 64

PRECISION: Final = 0.05
"""Bisection stops when the bracket is this narrow, relative to the calls that held."""

WARM_UP: Final = 0.5
WINDOW: Final = 2.0
BUDGET: Final = 40.0
"""Seconds of searching per relay; with set-up the relay benchmark takes about 85 s."""

ATTEMPTS: Final = 3
CONTENDED: Final = 0.25
"""Share of a core gone elsewhere above which a failed trial is run a third time."""

READY_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class Server:
    """A relay process under test."""

    name: str
    address: Address
    process: subprocess.Popen[bytes]
    command: list[str]


@dataclass(frozen=True)
class Result:
    """The search's outcome for one relay: the best trial that held, and why it stopped."""

    name: str
    best: Trial | None
    generator_bound: bool
    """The generator fell behind before the relay lost packets: ``best`` is a floor."""
    cap: int
    """The most calls the search would try (:data:`MAX_CALLS` or the file limit's)."""
    trials: list[Trial]

    @property
    def calls(self) -> int:
        return self.best.calls if self.best else 0

    @property
    def rate(self) -> float:
        return self.best.relayed_rate if self.best else 0.0

    @property
    def per_cpu_second(self) -> float:
        """Relayed packets per CPU second of the relay at the best trial."""
        best = self.best
        return best.received / best.seconds / best.relay_busy if best and best.relay_busy else 0.0

    @property
    def contention(self) -> float:
        """The largest share of a core that went elsewhere in any trial."""
        return max((trial.contention for trial in self.trials), default=0.0)


def run() -> list[Figure]:
    results = measure_both(lambda line: None)
    return figures(*results) if results else []


def measure_both(say: Callable[[str], None]) -> tuple[Result, Result] | None:
    """Both relays, one after the other; None when this machine cannot run the benchmark."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2 or shutil.which("turnserver") is None or shutil.which("taskset") is None:
        print("relay benchmark skipped: needs two cores, taskset and coturn's turnserver")
        return None
    relay_core, load_core = usable[0], usable[1]
    before, files = os.sched_getaffinity(0), resource.getrlimit(resource.RLIMIT_NOFILE)
    os.sched_setaffinity(0, {load_core})
    try:
        cap = _raise_file_limit(files)
        with tempfile.TemporaryDirectory(prefix="edge-relay-bench-") as tmp:
            folder = Path(tmp)
            cores = (relay_core, load_core)
            ours = _measure(supernode(folder / "ours", relay_core), cores, cap, say)
            theirs = _measure(coturn(folder / "coturn", relay_core), cores, cap, say)
    finally:
        os.sched_setaffinity(0, before)
        resource.setrlimit(resource.RLIMIT_NOFILE, files)
    return ours, theirs


def _raise_file_limit(files: tuple[int, int]) -> int:
    """Let this process and the relays it starts open a socket per call (up to
    :data:`MAX_CALLS`) as far as the hard limit allows; the calls that fit."""
    soft, hard = files
    wanted = MAX_CALLS + SPARE_FILES
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return MAX_CALLS
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return max(FIRST_CALLS, wanted - SPARE_FILES)


def figures(ours: Result, theirs: Result) -> list[Figure]:
    reference = "coturn, 1 relay thread" + (_floor_note(theirs) and f", {_floor_note(theirs)}")
    suffix = _floor_note(ours) and f", {_floor_note(ours)}"
    return [
        Figure(f"TURN calls, 50 pkt/s each way, <=1% loss{suffix}", ours.calls, "calls",
               reference, theirs.calls),
        Figure(f"TURN packets relayed on one core{suffix}", ours.rate, "pkt/s",
               reference, theirs.rate),
        Figure("TURN packets relayed per CPU second of the relay", ours.per_cpu_second,
               "pkt/s", "coturn", theirs.per_cpu_second),
        Figure("core time elsewhere, worst trial, ours", 100 * ours.contention, "%"),
        Figure("core time elsewhere, worst trial, coturn", 100 * theirs.contention, "%"),
    ]  # fmt: skip


def _floor_note(result: Result) -> str:
    """Why the figure is only a floor, if it is: then the ratio is a ceiling."""
    if result.best is not None and result.best.calls >= result.cap:
        return f"at least (the benchmark's cap of {result.cap} calls)"
    return "at least (the generator's limit)" if result.generator_bound else ""


# -- the search


def _measure(
    server: contextlib.AbstractContextManager[Server],
    cores: tuple[int, int],
    cap: int,
    say: Callable[[str], None],
) -> Result:
    with server as running:
        say(f"{running.name}: {' '.join(running.command)}")
        load = Load(running.address, SECRET.encode())
        placement = Placement(running.process.pid, *cores)
        try:
            return search(running.name, load, placement, cap, say)
        finally:
            load.close()


def search(
    name: str, load: Load, placement: Placement, cap: int, say: Callable[[str], None]
) -> Result:
    """Double, then bisect, the number of calls up to ``cap``; see the module docstring."""
    deadline = time.monotonic() + BUDGET
    trials: list[Trial] = []
    held: Trial | None = None
    failed: Trial | None = None
    calls: int | None = FIRST_CALLS
    while calls is not None and time.monotonic() < deadline:
        trial = _best_of(load, calls, placement, deadline, trials, say)
        if _holds(trial):
            held = trial
        else:
            failed = trial
        calls = _next_calls(held, failed, cap)
    return Result(
        name=name,
        best=held,
        generator_bound=_generator_bound(failed),
        cap=cap,
        trials=trials,
    )


def _best_of(
    load: Load,
    calls: int,
    placement: Placement,
    deadline: float,
    trials: list[Trial],
    say: Callable[[str], None],
) -> Trial:
    """A trial of ``calls``, run again when it fails and time is left (up to
    :data:`ATTEMPTS` times while more than :data:`CONTENDED` of a core went
    elsewhere, else twice): a disturbance only ever makes a trial worse, so the
    best attempt counts."""
    attempts: list[Trial] = []
    while not any(_holds(trial) for trial in attempts) and len(attempts) < ATTEMPTS:
        if attempts and time.monotonic() >= deadline:
            break
        if len(attempts) >= 2 and attempts[-1].contention <= CONTENDED:
            break
        trial = load.run(calls, WARM_UP, WINDOW, placement)
        say(f"  {trial.line()}")
        attempts.append(trial)
    trials.extend(attempts)
    return max(attempts, key=lambda trial: (_holds(trial), trial.on_schedule, -trial.loss))


def _generator_bound(failed: Trial | None) -> bool:
    """The failure that bounds the result was the generator's: it fell behind its
    schedule while the relay had time to spare."""
    return failed is not None and not failed.on_schedule and not failed.relay_saturated


def _holds(trial: Trial) -> bool:
    return trial.complete and trial.loss <= LOSS_LIMIT


def _next_calls(held: Trial | None, failed: Trial | None, cap: int) -> int | None:
    """The next number of calls to try, or None when the answer is known."""
    if failed is None:
        assert held is not None
        return min(2 * held.calls, cap) if held.calls < cap else None
    low = held.calls if held else 0
    high = failed.calls
    if high - low <= max(PRECISION * low, 2):
        return None
    return (low + high) // 2


# -- the relays


@contextlib.contextmanager
def supernode(folder: Path, core: int) -> Iterator[Server]:
    """Our supernode in its own process on ``core``, relaying on 127.0.0.1."""
    folder.mkdir(parents=True)
    port = _free_port(socket.SOCK_DGRAM, socket.SOCK_STREAM)
    config = folder / "supernode.toml"
    config.write_text(
        "[supernode]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f"tcp_ports = [{_free_port(socket.SOCK_STREAM)}]\n"
        f'state_dir = "{folder / "state"}"\n'
        f'control_socket = "{folder / "control.sock"}"\n'
        "shutdown_grace_seconds = 0\n"
        "[relay]\n"
        f'secret = "{SECRET}"\n'
        f'realm = "{REALM}"\n'
        'address = "127.0.0.1"\n'
        f"ports = [{RELAY_PORTS[0]}, {RELAY_PORTS[1]}]\n"
        "max_allocations = 100000\n"
        "max_allocations_per_user = 1000\n"
        "bandwidth_bytes_per_second = 1e9\n"
    )
    command = [sys.executable, "-m", "edge", "supernode", "--config", str(config)]
    with _started("edge supernode", command, ("127.0.0.1", port), folder, core) as server:
        yield server


@contextlib.contextmanager
def coturn(folder: Path, core: int) -> Iterator[Server]:
    """coturn's turnserver in its own process on ``core``: one relay thread, no quotas."""
    folder.mkdir(parents=True)
    port = _free_port(socket.SOCK_DGRAM, socket.SOCK_STREAM)
    command = [
        "turnserver", "-n",
        "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1",
        "--listening-port", str(port),
        "--use-auth-secret", "--static-auth-secret", SECRET, "--realm", REALM,
        "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers",
        "--min-port", str(RELAY_PORTS[0]), "--max-port", str(RELAY_PORTS[1]),
        "--relay-threads", "1", "--total-quota", "0", "--user-quota", "0",
        "--log-file", str(folder / "turnserver.log"), "--no-stdout-log", "--simple-log",
        "--pidfile", str(folder / "turnserver.pid"), "--db", str(folder / "turndb"),
    ]  # fmt: skip
    with _started("coturn", command, ("127.0.0.1", port), folder, core) as server:
        yield server


@contextlib.contextmanager
def _started(
    name: str, command: list[str], address: Address, folder: Path, core: int
) -> Iterator[Server]:
    """``command`` pinned to ``core``, once it answers a STUN Binding at ``address``;
    stopped with SIGTERM afterwards. Its output goes to a log in ``folder``."""
    with (folder / "output.log").open("wb") as log:
        process = subprocess.Popen(
            ["taskset", "-c", str(core), *command],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(name, address, process, folder / "output.log")
            yield Server(name, address, process, command)
        finally:
            _stop(process)


def _wait_ready(name: str, address: Address, process: subprocess.Popen[bytes], log: Path) -> None:
    """Ask for a STUN Binding every 50 ms until one is answered."""
    request = build(Message(Method.BINDING, Class.REQUEST, os.urandom(12), []))
    deadline = time.monotonic() + READY_TIMEOUT
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.05)
        sock.connect(address)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {log.read_text()}")
            with contextlib.suppress(ConnectionRefusedError):
                sock.send(request)
            try:
                answer = parse(sock.recv(2048))
            except (TimeoutError, ConnectionRefusedError, StunError):
                continue
            if answer.cls is Class.SUCCESS:
                return
    raise RuntimeError(f"{name} did not answer a Binding request in {READY_TIMEOUT} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port(*kinds: socket.SocketKind) -> int:
    """A port on 127.0.0.1 free for every socket type in ``kinds``."""
    while True:
        with socket.socket(socket.AF_INET, kinds[0]) as first:
            first.bind(("127.0.0.1", 0))
            port = cast(int, first.getsockname()[1])
            try:
                for kind in kinds[1:]:
                    with socket.socket(socket.AF_INET, kind) as other:
                        other.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def main() -> int:
    results = measure_both(lambda line: print(line, flush=True))
    if results is None:
        return 1
    print(f"\n{CALL_RATE} packets/s each way per call, {PAYLOAD_SIZE}-byte payloads")
    for figure in figures(*results):
        print(figure.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())

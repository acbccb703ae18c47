"""The client in the NAT lab: login, call setup and idle cost, every two sites 40 ms apart.

How it works: the NAT lab (:mod:`tests.natlab`) is built with ten sites, two of
each kind (public, cone, symmetric, udp-blocked, tcp-web-only), and each one
behind an impairment forwarder that delays every frame by 10 ms each way: every
site is 20 ms round trip from the servers, and 40 ms from any other site — the
round trip of the call, which the setup targets count in. A
public site has no router, so its forwarder sits in the host's own namespace,
between its address (on ``wan``) and the public bridge (:class:`DelayedLab`).
The login server, the two supernodes and one ``edge agent`` per site are real
processes, started the way :mod:`tests.test_natlab_calls` starts them, and
driven through their control sockets as ``edge ctl`` does.

Every time comes from timestamps the agents record and ``status`` shows, never
from how fast this process polls them:

- **Login**, per site: spawned → presence stored (the agent's ``online_at``,
  wall clock, against the moment this process spawned it), the login server's
  part (``login_ms``), and the ladder, first attempt → attached to a supernode
  (``attach_ms``), against :data:`LOGIN_TARGET_MS`.
- **Call setup**, per cell of the matrix (the pairs of
  :mod:`tests.test_natlab_calls`), a few calls one after another, each
  answered automatically: the caller's ``setup_ms``, invite sent → this side
  has sent a frame and received one. The callee goes ACTIVE on the caller's
  nominating check and only then sends, so the caller's first frame in comes
  after the callee's: that moment is when media flows both ways. Median and
  max against :func:`setup_target_ms`, with the calls' 40 ms as the RTT; the
  path kind each call took is reported, not asserted (it changes as the client
  learns new kinds of path).
- **Idle**, after the calls, over a quiet window: the bytes through each
  agent's interface, both ways (``/sys/class/net/IF/statistics``, read inside
  its namespace, so ARP and everything else the host sends counts), against
  :data:`IDLE_TARGET`; and its process's CPU time (``/proc/PID/stat``) as a
  share of one core.

``make bench`` runs it with the rest (last: it takes about two and a half minutes);
``python -m bench lab`` runs it alone; ``python -m bench.lab --calls 1
--idle 10`` is a quicker look. It needs root, like the NAT lab tests, and says
why it is skipped otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import RemoteError
from tests.impair import Impairment
from tests.natlab import Lab, Site, SiteSpec, remove_stale, unavailable

ONE_WAY = 0.01
"""Seconds each site's forwarder delays a frame, each way."""
RTT_MS = 4 * ONE_WAY * 1000
"""Between two sites: each one's forwarder, both ways."""
CALLS_PER_CELL = 5
IDLE_SECONDS = 60.0
LOGIN_TARGET_MS = 1000.0
"""The ladder with UDP blocked (the original waited 5 s per rung); every site is held to it."""
IDLE_TARGET = 200.0
"""Bytes per second, both ways together: what Skype's admin guide planned for an idle client."""
SETUP_DEADLINE = 10.0
"""Seconds a call has to carry media both ways before it counts as failed."""
END_DEADLINE = 35.0
"""Seconds the callee may take to end a call after the hang-up: beyond the call core's
30 s no-answer and connect deadlines, which end any call that never went active."""
POLL = 0.05
"""Seconds between two looks at an agent's status (the figures do not depend on it)."""
MAX_STAT = 4096
"""Bytes of a /proc/PID/stat or counter file read at most."""


@dataclass(frozen=True)
class Device:
    """One site of the lab and the agent on it."""

    site: str
    kind: str
    user: str
    supernode: str
    """``sn1`` or ``sn2``: the one in its bootstrap list."""


DEVICES = (
    Device("pub1", "public", "ann", "sn1"),
    Device("pub2", "public", "ben", "sn2"),
    Device("home1", "cone", "cat", "sn1"),
    Device("home2", "cone", "dan", "sn2"),
    Device("sym1", "symmetric", "eve", "sn1"),
    Device("sym2", "symmetric", "fay", "sn2"),
    Device("blocked", "udp-blocked", "gil", "sn1"),
    Device("office", "tcp-web-only", "hal", "sn1"),
    Device("blocked2", "udp-blocked", "ivy", "sn2"),
    Device("office2", "tcp-web-only", "jon", "sn2"),
)
MATRIX = (
    ("pub1", "sym2"),
    ("pub1", "pub2"),
    ("home1", "pub2"),
    ("home1", "home2"),
    ("sym1", "sym2"),
    ("sym1", "home2"),
    ("blocked", "pub2"),
    ("office", "home2"),
    ("home2", "blocked2"),
    ("sym1", "office2"),
    ("pub1", "office2"),
    ("sym2", "blocked2"),
    ("blocked", "blocked2"),
    ("blocked", "office2"),
    ("office", "office2"),
)
"""The pairs of tests/test_natlab_calls.py, in its order: the first call on a fresh lab
is a relayed one, which nothing earlier has prepared."""


class LabFigureError(RemoteError):
    """A counter or /proc file did not read as expected."""


# -- pure helpers


def setup_target_ms(path: str | None, rtt_ms: float) -> float:
    """The issue's bound on call setup: 6 RTT + 100 ms on a relayed path, 4 RTT +
    100 ms on any other (and on none: a failed call is held to the stricter)."""
    rtts = 6 if path is not None and path.startswith("relay") else 4
    return rtts * rtt_ms + 100.0


def verdict(measured: float | None, limit: float) -> str:
    """PASS when a figure was measured and is within ``limit``; MISS otherwise."""
    return "PASS" if measured is not None and measured <= limit else "MISS"


def cpu_ticks(stat: str) -> int:
    """User plus system clock ticks from the text of a /proc/PID/stat.

    The command name (field 2) is in parentheses and may hold spaces and
    parentheses itself, so the fields are counted from the last ``)``: after it
    come state (field 3) and so on, utime and stime being fields 14 and 15.
    """
    head, bracket, rest = stat.rpartition(")")
    fields = rest.split()
    if not bracket or "(" not in head or len(fields) < 13:
        raise LabFigureError(f"not a /proc/PID/stat line: {stat[:80]!r}")
    utime, stime = fields[11], fields[12]
    if not (utime.isdigit() and stime.isdigit()):
        raise LabFigureError(f"utime and stime are not counts: {utime!r}, {stime!r}")
    return int(utime) + int(stime)


def cpu_percent(ticks: int, seconds: float, hertz: int) -> float:
    """``ticks`` of CPU time over a window of ``seconds``, as a percentage of one core."""
    if seconds <= 0 or hertz <= 0:
        raise LabFigureError(f"no window to divide by: {seconds} s at {hertz} Hz")
    return ticks / hertz / seconds * 100


def counters(text: str) -> tuple[int, int]:
    """Received and sent bytes from ``cat rx_bytes tx_bytes``: two lines, one count each."""
    lines = text.split()
    if len(lines) != 2 or not all(line.isdigit() for line in lines):
        raise LabFigureError(f"expected two byte counts, read {text[:80]!r}")
    return int(lines[0]), int(lines[1])


def per_second(before: int, after: int, seconds: float) -> float:
    """The rate of a counter that went from ``before`` to ``after`` in ``seconds``."""
    if seconds <= 0 or after < before:
        raise LabFigureError(f"a counter went from {before} to {after} in {seconds} s")
    return (after - before) / seconds


@dataclass(frozen=True)
class Row:
    """One line of the table: what, the figure, its target, PASS/MISS, and a note."""

    name: str
    measured: str = ""
    target: str = ""
    verdict: str = ""
    note: str = ""

    def line(self) -> str:
        if not self.measured:
            return self.name
        text = f"  {self.name:<38} {self.measured:>24} {self.target:>12} {self.verdict:<4}"
        return f"{text}  {self.note}".rstrip()


@dataclass(frozen=True)
class Outcome:
    """One call: the caller's setup time (None: media never flowed both ways), the
    path it took, and that path's round trip as the caller measured it."""

    setup_ms: float | None
    path: str | None
    rtt_ms: float | None = None
    failure: str = ""
    """How a call that failed stood at its deadline, at both ends."""


def cell_row(caller: str, callee: str, outcomes: Sequence[Outcome]) -> Row:
    """A matrix cell: median and max of its calls' setup times, beside the target of
    the path most of them took; PASS only if every call worked within its own path's
    target."""
    paths = Counter(o.path for o in outcomes if o.path)
    usual = paths.most_common(1)[0][0] if paths else None
    target = setup_target_ms(usual, RTT_MS)
    setups = [o.setup_ms for o in outcomes if o.setup_ms is not None]
    rtts = [o.rtt_ms for o in outcomes if o.rtt_ms is not None]
    note = f"{len(setups)}/{len(outcomes)} ok, {'/'.join(sorted(paths)) or 'no path'}"
    if rtts:
        note += f", check RTT {statistics.median(rtts):,.0f} ms"
    failures = [o.failure for o in outcomes if o.setup_ms is None]
    if failures:
        note += f"; first failure: {failures[0] or 'unknown'}"
    within = all(
        o.setup_ms is not None and o.setup_ms <= setup_target_ms(o.path, RTT_MS) for o in outcomes
    )
    measured = (
        f"median {statistics.median(setups):,.0f}, max {max(setups):,.0f} ms"
        if setups
        else "none worked"
    )
    mark = "PASS" if outcomes and within else "MISS"
    return Row(f"{caller} -> {callee}", measured, f"<= {target:,.0f} ms", mark, note)


def success_row(worked: int, calls: int) -> Row:
    """Calls that carried media both ways, of all the calls placed: the target is all."""
    share = worked / calls * 100 if calls else 0.0
    mark = "PASS" if calls and worked == calls else "MISS"
    return Row("calls with media both ways", f"{worked}/{calls} ({share:.0f}%)", "100%", mark)


# -- the lab with every site delayed


class DelayedLab(Lab):
    """The NAT lab, where a public site too may be impaired: its forwarder then runs in
    the host's own namespace, between the host's address on ``wan`` and the bridge."""

    def _site(self, number: int, spec: SiteSpec) -> Site:
        if spec.kind != "public" or spec.impairment is None:
            return super()._site(number, spec)
        host = self._namespace(spec.name)
        address = f"198.18.2.{number}"
        self._impaired_uplink(host, address, spec.impairment, seed=number)
        return Site(spec, host, address, None, address)


@contextmanager
def delayed_lab(prefix: str, sites: Sequence[SiteSpec]) -> Iterator[DelayedLab]:
    """As :func:`tests.natlab.lab`, with :class:`DelayedLab`."""
    remove_stale(prefix)
    built = DelayedLab(prefix)
    try:
        built.build(sites)
        yield built
    finally:
        built.close()


@dataclass(frozen=True)
class Running:
    """An agent started in the lab."""

    device: Device
    control: Path
    pid: int
    interface: str
    """Its host's interface towards the internet, in its namespace."""
    namespace: str
    spawned: float
    """Wall-clock time just before it was spawned."""


def _servers(net: Lab, tmp: Path) -> Any:
    """The login server and both supernodes; the login server's keys."""
    from edge.login.cli import server_keys
    from tests.test_natlab_calls import PORT, SN1, SN1_ALT, SN2, _login_server, _supernode

    keys = server_keys(tmp / "login")
    _login_server(net, tmp)
    _supernode(net, tmp, keys.issuer, "sn1", SN1, alternate=SN1_ALT)
    _supernode(net, tmp, keys.issuer, "sn2", SN2, bootstrap=f"{SN1}:{PORT}")
    return keys


def _start_agent(net: Lab, tmp: Path, device: Device, keys: Any) -> Running:
    from tests.test_natlab_calls import SN1, SN2, _agent

    supernode = SN1 if device.supernode == "sn1" else SN2
    namespace = net.sites[device.site].host
    spawned = time.time()
    try:
        control = _agent(net, tmp, device.site, device.user, supernode, keys)
    except (AssertionError, TimeoutError) as exc:
        tail = _log_tail(net, namespace)
        raise LabFigureError(f"{device.site}: never online ({exc}): {tail}") from None
    # `ip netns exec` execs the agent, so the process the lab spawned is the agent.
    pid = net.processes[-1].pid
    interface = "wan" if device.kind == "public" else "eth0"
    return Running(device, control, pid, interface, namespace, spawned)


def _log_tail(net: Lab, namespace: str) -> str:
    """The end of what the process spawned last, in ``namespace``, wrote to stderr."""
    log = net.logs / f"{namespace}-{len(net.processes) - 1}.log"
    return log.read_text()[-2000:] if log.exists() else "(no log)"


def _status(agent: Running) -> dict[str, Any]:
    from tests.test_natlab_calls import ctl

    answer = ctl(agent.control, "status")
    if not answer.get("ok"):
        raise LabFigureError(f"{agent.device.site}: status failed: {answer}")
    result: dict[str, Any] = answer["result"]
    return result


def _ready_for_calls(agent: Running) -> None:
    """Wait, as the calls test does, for the self-test (where UDP gets out) and the relay."""
    from tests.test_natlab_calls import _relayed, _self_tested

    if agent.device.kind not in ("udp-blocked", "tcp-web-only"):
        _self_tested(agent.control)
    _relayed(agent.control)


def login_row(agent: Running, status: dict[str, Any]) -> Row:
    timings = status.get("timings") or {}
    ladder, login = timings.get("attach_ms"), timings.get("login_ms")
    online_at = timings.get("online_at")
    uplink = (status.get("supernode") or {}).get("via", "?")
    online = f"{(online_at - agent.spawned) * 1000:,.0f} ms" if online_at else "never"
    note = f"spawned -> online {online}, login server {login or 0:,.0f} ms, via {uplink}"
    measured = f"{ladder:,.0f} ms" if ladder is not None else "none"
    name = f"{agent.device.site} ({agent.device.kind}) ladder"
    return Row(name, measured, f"<= {LOGIN_TARGET_MS:,.0f} ms", verdict(ladder, LOGIN_TARGET_MS),
               note)  # fmt: skip


# -- calls


def _call_in(agent: Running, call_id: str) -> dict[str, Any] | None:
    calls = _status(agent).get("calls") or []
    return next((c for c in calls if c.get("id") == call_id), None)


def _flowing(call: dict[str, Any] | None) -> bool:
    return call is not None and call.get("setup_ms") is not None


def one_call(caller: Running, callee: Running) -> Outcome:
    """Call, wait (with a deadline) until media has flowed both ways at both ends, hang
    up, and wait until the callee has ended too, so the next call finds it free."""
    from tests.test_natlab_calls import ctl

    placed = ctl(caller.control, "call", user=callee.device.user)
    if not placed.get("ok"):
        return Outcome(None, None, failure=f"not placed: {placed.get('error')}")
    call_id = str(placed["result"]["call"])
    deadline = time.monotonic() + SETUP_DEADLINE
    mine = theirs = None
    while time.monotonic() < deadline:
        mine, theirs = _call_in(caller, call_id), _call_in(callee, call_id)
        if _flowing(mine) and _flowing(theirs):
            break
        time.sleep(POLL)
    ctl(caller.control, "hangup")
    ended = _until_ended(callee, call_id)
    if mine is None or not (_flowing(mine) and _flowing(theirs)):
        failure = f"caller {_stood(mine)}, callee {_stood(theirs)}"
        if not ended:
            failure += f", still not ended {END_DEADLINE:.0f} s after the hang-up"
        return Outcome(None, (mine or {}).get("path"), failure=failure)
    return Outcome(mine["setup_ms"], mine.get("path"), mine.get("rtt_ms"))


def _stood(call: dict[str, Any] | None) -> str:
    """A call's state at a glance, for the note of a failed one."""
    if call is None:
        return "never saw it"
    return (
        f"{call.get('state')} on {call.get('path')}, "
        f"{call.get('frames_sent')} sent/{call.get('frames_received')} received"
    )


def _until_ended(agent: Running, call_id: str) -> bool:
    """Whether the call has ended at ``agent`` (or never came) within :data:`END_DEADLINE`."""
    deadline = time.monotonic() + END_DEADLINE
    while time.monotonic() < deadline:
        call = _call_in(agent, call_id)
        if call is None or call.get("state") == "ended":
            return True
        time.sleep(POLL)
    return False


# -- idle


@dataclass(frozen=True)
class Sample:
    at: float
    received: int
    sent: int
    ticks: int


def _sample(net: Lab, agent: Running) -> Sample:
    base = f"/sys/class/net/{agent.interface}/statistics"
    text = net.run(agent.namespace, "cat", f"{base}/rx_bytes", f"{base}/tx_bytes")
    received, sent = counters(text)
    with open(f"/proc/{agent.pid}/stat") as stat:
        ticks = cpu_ticks(stat.read(MAX_STAT))
    return Sample(time.monotonic(), received, sent, ticks)


def idle_rows(agent: Running, before: Sample, after: Sample) -> list[Row]:
    seconds = after.at - before.at
    received = per_second(before.received, after.received, seconds)
    sent = per_second(before.sent, after.sent, seconds)
    total = received + sent
    hertz = os.sysconf("SC_CLK_TCK")
    ticks = after.ticks - before.ticks
    cpu = cpu_percent(ticks, seconds, hertz)
    name = f"{agent.device.site} ({agent.device.kind})"
    return [
        Row(f"{name} idle traffic", f"{total:,.1f} B/s", f"<= {IDLE_TARGET:,.0f} B/s",
            verdict(total, IDLE_TARGET), f"in {received:,.1f}, out {sent:,.1f} B/s"),
        Row(f"{name} idle CPU", f"{cpu:.2f}% of a core", "-", "",
            f"{ticks} ticks of {1000 / hertz:.0f} ms in {seconds:.0f} s"),
    ]  # fmt: skip


# -- the whole run


def run(calls: int = CALLS_PER_CELL, idle: float = IDLE_SECONDS) -> Iterator[Row]:
    """Build the lab, measure, and yield the table a row at a time."""
    reason = unavailable()
    if reason is not None:
        yield Row(f"NAT lab benchmark skipped: {reason}")
        return
    sites = [SiteSpec(d.site, d.kind, Impairment(delay=ONE_WAY)) for d in DEVICES]
    yield Row(
        f"{len(sites)} sites, each {2 * ONE_WAY * 1000:.0f} ms round trip from the internet "
        f"and {RTT_MS:.0f} ms from another; "
        f"{calls} calls a cell, auto-answer; {idle:.0f} s idle window"
    )
    with (
        tempfile.TemporaryDirectory(prefix="edgebench-") as where,
        delayed_lab("edgebench", sites) as net,
    ):
        tmp = Path(where)
        keys = _servers(net, tmp)
        agents = {d.site: _start_agent(net, tmp, d, keys) for d in DEVICES}
        yield Row("login: ladder, first attempt -> attached")
        for agent in agents.values():
            yield login_row(agent, _status(agent))
        for agent in agents.values():
            _ready_for_calls(agent)
        yield Row("call setup: invite sent -> media both ways, at the caller")
        worked = 0
        for caller, callee in MATRIX:
            outcomes = [one_call(agents[caller], agents[callee]) for _ in range(calls)]
            worked += sum(o.setup_ms is not None for o in outcomes)
            yield cell_row(caller, callee, outcomes)
        yield success_row(worked, calls * len(MATRIX))
        yield Row(f"idle, {idle:.0f} s with no call")
        yield from _idle(net, list(agents.values()), idle)


def _idle(net: Lab, agents: list[Running], seconds: float) -> Iterator[Row]:
    before = [_sample(net, agent) for agent in agents]
    time.sleep(seconds)  # the measuring window itself, not a wait for anything
    after = [_sample(net, agent) for agent in agents]
    for agent, first, last in zip(agents, before, after, strict=True):
        yield from idle_rows(agent, first, last)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lab", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=CALLS_PER_CELL, help="calls per cell")
    parser.add_argument("--idle", type=float, default=IDLE_SECONDS, help="idle window, seconds")
    options = parser.parse_args(argv)
    for row in run(options.calls, options.idle):
        print(row.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

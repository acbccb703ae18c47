"""The NAT lab benchmark's own arithmetic (targets, verdicts, /proc and counter parsing,
the table it prints), and the timestamps it reads from agents, taken here from two real
agents on loopback. No lab is built here (bench/lab.py is the benchmark itself)."""

import asyncio
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bench.lab import (
    RTT_MS,
    LabFigureError,
    Outcome,
    Row,
    cell_row,
    counters,
    cpu_percent,
    cpu_ticks,
    per_second,
    setup_target_ms,
    success_row,
    verdict,
)
from edge.client.agent import Agent
from edge.runtime.control import request
from tests.test_agent import TIMEOUT, network, run_uv

# A /proc/PID/stat line whose command name holds spaces and parentheses, as a
# process may name itself; utime (field 14) is 1234 and stime (field 15) 56.
ODD_NAME = (
    "4242 (py (agent) x) S 1 4242 4242 0 -1 4194560 3095 0 0 0 1234 56 0 0 20 0 3 0 "
    "123456 98765432 4321 18446744073709551615 1 1 0 0 0 0 0 16781312 16386 0 0 0 17 1 "
    "0 0 0 0 0"
)


def test_setup_targets_are_four_or_six_round_trips_and_100_ms() -> None:
    assert RTT_MS == 40
    assert setup_target_ms("direct-udp", 40) == 260
    assert setup_target_ms("punched-udp", 40) == 260
    assert setup_target_ms("direct-tcp", 40) == 260
    assert setup_target_ms("relay-udp", 40) == 340
    assert setup_target_ms("relay-tcp", 80) == 580
    assert setup_target_ms(None, 40) == 260


def test_a_figure_passes_up_to_its_limit_and_a_missing_one_misses() -> None:
    assert verdict(260.0, 260.0) == "PASS"
    assert verdict(260.1, 260.0) == "MISS"
    assert verdict(None, 260.0) == "MISS"


def test_cpu_ticks_are_counted_from_the_last_parenthesis() -> None:
    assert cpu_ticks(ODD_NAME) == 1234 + 56


def test_cpu_ticks_of_this_process_agree_with_os_times() -> None:
    sum(i * i for i in range(300_000))  # a little CPU time to count
    hertz = os.sysconf("SC_CLK_TCK")
    before = os.times()
    ticks = cpu_ticks(Path(f"/proc/{os.getpid()}/stat").read_text())
    after = os.times()
    low = int((before.user + before.system) * hertz) - 2
    high = int((after.user + after.system) * hertz) + 2
    assert low <= ticks <= high


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a /proc/PID/stat line"),
        ("4242 agent S 1 2 3", "not a /proc/PID/stat line"),
        ("4242 (agent) S 1 2 3", "not a /proc/PID/stat line"),
        (ODD_NAME.replace(" 1234 ", " -1 "), "utime and stime are not counts"),
    ],
)
def test_a_stat_line_that_is_not_one_says_so(text: str, message: str) -> None:
    with pytest.raises(LabFigureError, match=message):
        cpu_ticks(text)


def test_cpu_share_is_of_one_core() -> None:
    assert cpu_percent(150, 60.0, 100) == pytest.approx(2.5)
    assert cpu_percent(0, 60.0, 100) == 0
    with pytest.raises(LabFigureError, match="no window"):
        cpu_percent(1, 0.0, 100)


def test_interface_counters_read_as_received_then_sent() -> None:
    base = Path("/sys/class/net/lo/statistics")
    received, sent = counters((base / "rx_bytes").read_text() + (base / "tx_bytes").read_text())
    assert received >= 0 and sent >= 0
    assert counters("123\n456\n") == (123, 456)
    for wrong in ("", "123\n", "1\n2\n3\n", "12 x\n", "-1\n5\n"):
        with pytest.raises(LabFigureError, match="two byte counts"):
            counters(wrong)


def test_rates_refuse_a_counter_that_went_back_or_no_window() -> None:
    assert per_second(1000, 13_000, 60.0) == 200
    with pytest.raises(LabFigureError):
        per_second(5, 4, 60.0)
    with pytest.raises(LabFigureError):
        per_second(4, 5, 0.0)


def test_a_cell_passes_when_every_call_worked_within_its_paths_target() -> None:
    outcomes = [Outcome(s, "relay-udp", 85.0) for s in (300.0, 320.0, 310.0, 330.0, 340.0)]
    row = cell_row("sym1", "sym2", outcomes)
    assert row == Row(
        "sym1 -> sym2", "median 320, max 340 ms", "<= 340 ms", "PASS",
        "5/5 ok, relay-udp, check RTT 85 ms",
    )  # fmt: skip


def test_a_cell_misses_on_one_slow_or_failed_call() -> None:
    slow = [Outcome(200.0, "punched-udp"), Outcome(261.0, "punched-udp")]
    assert cell_row("home1", "home2", slow).verdict == "MISS"
    failed = [Outcome(200.0, "direct-udp"), Outcome(None, None, failure="caller ringing")]
    row = cell_row("pub1", "pub2", failed)
    assert (row.verdict, row.note) == ("MISS", "1/2 ok, direct-udp; first failure: caller ringing")
    nothing = cell_row("pub1", "pub2", [Outcome(None, None)])
    assert (nothing.measured, nothing.target, nothing.verdict) == (
        "none worked",
        "<= 260 ms",
        "MISS",
    )


def test_a_cell_of_mixed_paths_shows_the_usual_target_and_holds_each_call_to_its_own() -> None:
    outcomes = [
        Outcome(330.0, "relay-udp"),
        Outcome(330.0, "relay-udp"),
        Outcome(250.0, "punched-udp"),
    ]
    row = cell_row("pub1", "sym2", outcomes)
    assert (row.target, row.verdict) == ("<= 340 ms", "PASS")
    assert row.note == "3/3 ok, punched-udp/relay-udp"
    outcomes[2] = Outcome(330.0, "punched-udp")
    assert cell_row("pub1", "sym2", outcomes).verdict == "MISS"


def test_success_is_all_calls_or_a_miss() -> None:
    assert success_row(75, 75) == Row("calls with media both ways", "75/75 (100%)", "100%", "PASS")
    assert success_row(74, 75).verdict == "MISS"
    assert success_row(0, 0).verdict == "MISS"


def test_rows_line_up_in_columns_and_headings_stand_alone() -> None:
    rows = [
        Row("pub1 -> pub2", "median 235, max 240 ms", "<= 260 ms", "PASS", "5/5 ok"),
        Row("home1 (cone) idle traffic", "16.0 B/s", "<= 200 B/s", "PASS"),
        Row("home1 (cone) idle CPU", "0.05% of a core", "-"),
    ]
    lines = [row.line() for row in rows]
    assert lines[0] == (
        "  pub1 -> pub2                             median 235, max 240 ms    <= 260 ms PASS"
        "  5/5 ok"
    )
    # Each figure ends in the same column, and so does each target.
    ends = {
        line.index(row.measured) + len(row.measured) for line, row in zip(lines, rows, strict=True)
    }
    targets = {
        line.index(row.target) + len(row.target) for line, row in zip(lines, rows, strict=True)
    }
    assert len(ends) == 1 and len(targets) == 1
    assert not lines[2].endswith(" ")
    assert Row("call setup").line() == "call setup"


def test_an_agent_reports_its_login_ladder_and_online_times(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            config = net.agent_config("alice", [home])
            before, began = time.time(), time.monotonic()
            await net.agent(config)
            took, after = (time.monotonic() - began) * 1000, time.time()
            answer = await request(config.control_socket, "status")
            timings = answer["result"]["timings"]
            assert 0 < timings["login_ms"] < took and 0 < timings["attach_ms"] < took
            assert timings["login_ms"] + timings["attach_ms"] < took
            assert before < timings["online_at"] < after

    run_uv(main())


def test_both_ends_of_a_call_report_its_setup_once_media_went_both_ways(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            alice_config = net.agent_config("alice", [home])
            bob_config = replace(net.agent_config("bob", [home]), auto_answer=frozenset({"alice"}))
            alice, bob = await net.agent(alice_config), await net.agent(bob_config)
            # The invite leaves once the call request has found bob and opened a session.
            placed = time.monotonic()
            assert (await request(alice_config.control_socket, "call", {"user": "bob"}))["ok"]
            assert _setup(alice) is None
            await asyncio.wait_for(_until_set_up(alice), TIMEOUT)
            await asyncio.wait_for(_until_set_up(bob), TIMEOUT)
            took = (time.monotonic() - placed) * 1000
            (call,) = alice.calls.status() if alice.calls else []
            assert call["frames_sent"] >= 1 and call["frames_received"] >= 1
            mine, theirs = _setup(alice), _setup(bob)
            assert mine is not None and theirs is not None
            # Media goes every 20 ms once the call is active: at least one frame interval.
            assert 20 <= mine < took + 1 and 20 <= theirs < took + 1

    run_uv(main())


def _setup(agent: Agent) -> float | None:
    calls = agent.calls.status() if agent.calls is not None else []
    return calls[-1]["setup_ms"] if calls else None


async def _until_set_up(agent: Agent) -> None:
    assert agent.calls is not None
    await agent.calls.wait_for(lambda: _setup(agent) is not None)

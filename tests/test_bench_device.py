"""The device benchmark's own parts, fast: reading VmRSS from /proc status text, the
medians and means it reports, and how a figure is judged against its target."""

from __future__ import annotations

import os

import pytest

from bench import device

STATUS = """Name:\tpython3
State:\tS (sleeping)
Pid:\t4242
VmPeak:\t  301220 kB
VmHWM:\t   48120 kB
VmRSS:\t   47304 kB
RssAnon:\t   30112 kB
Threads:\t3
"""


def test_vm_rss_is_read_from_its_own_line() -> None:
    # VmHWM and RssAnon are also "N kB": only the VmRSS line counts.
    assert device.vm_rss_kib(STATUS) == 47304


def test_the_rss_of_this_very_process_is_read_from_proc() -> None:
    rss = device.process_rss_kib(os.getpid())
    ballast = bytearray(64 << 20)  # written through, so its pages are resident
    for at in range(0, len(ballast), 4096):
        ballast[at] = 1
    grown = device.process_rss_kib(os.getpid())
    assert grown - rss >= 60 << 10
    del ballast


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Name:\tkthreadd\nState:\tS\n", "no VmRSS line"),
        ("", "no VmRSS line"),
        ("VmRSS:\t  12 MB\n", "not a number of kB: '12 MB'"),
        ("VmRSS:\t -12 kB\n", "not a number of kB: '-12 kB'"),
        ("VmRSS:\t\n", "not a number of kB: ''"),
        ("VmRSSx:\t 12 kB\n", "no VmRSS line"),
    ],
)
def test_a_status_without_a_well_formed_vm_rss_is_refused(text: str, message: str) -> None:
    with pytest.raises(device.BadStatus, match=message):
        device.vm_rss_kib(text)


def test_medians_and_peaks() -> None:
    assert device.median([0.9, 0.4, 0.5]) == 0.5
    assert device.median([0.4, 0.6, 0.5, 2.0]) == 0.55
    with pytest.raises(ValueError, match="no values"):
        device.median([])
    peak, mean = device.peak_and_mean([40_000, 50_000, 45_000])
    assert peak == pytest.approx(51.2)  # 50,000 KiB is 51.2 MB
    assert mean == pytest.approx(46.08)
    with pytest.raises(ValueError, match="no memory samples"):
        device.peak_and_mean([])


def test_a_figure_passes_at_its_target_and_misses_above_it() -> None:
    at = device.Row("RSS in a call, peak", 60.0, "MB", 60.0)
    above = device.Row("RSS in a call, peak", 60.01, "MB", 60.0)
    untargeted = device.Row("start -> online", 0.4, "s")
    assert at.ok and at.line().endswith("target <= 60 MB PASS")
    assert not above.ok and above.line().endswith("target <= 60 MB MISS")
    assert untargeted.line().endswith("0.40 s")


def test_the_interpreter_baseline_grows_with_the_agent_s_code() -> None:
    bare = device.interpreter_rss_kib("pass")
    loaded = device.interpreter_rss_kib("import edge.client.agent")
    assert 1000 < bare < loaded

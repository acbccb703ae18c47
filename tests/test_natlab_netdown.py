"""The network going down and up under a call, in the NAT lab: real processes, real NAT.

The login server and two supernodes run as in :mod:`tests.test_natlab_calls` (whose
setup this module reuses); a device behind a home router (cone NAT) calls a device on
a public address. Then the home device's interface goes down, as when a cable is
pulled or a Wi-Fi link drops, and comes back:

* for a few seconds: the call carries on, frames flow both ways again on a path;
* for longer than the call's dead-path timeout: the call ends saying the path was
  lost, on both sides.

Either way the device shows itself offline while its network is gone, saying why;
notices the network came back (netlink); is online again at once, not after a
reconnect backoff; and runs its connectivity self-test again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.client.call import CallConfig
from edge.client.calls import FRAME_INTERVAL
from edge.login.cli import server_keys
from tests.natlab import Lab, SiteSpec, lab, unavailable
from tests.test_natlab_calls import (
    PORT,
    SN1,
    SN1_ALT,
    SN2,
    _agent,
    _login_server,
    _relayed,
    _self_tested,
    _supernode,
    _until,
    ctl,
)

UNAVAILABLE = unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))

HOME, OUT = "home1", "pub1"
SITES = (SiteSpec(HOME, "cone"), SiteSpec(OUT, "public"))
SHORT_OUTAGE = 3.0
LONG_OUTAGE = CallConfig().path_lost_timeout + 4.0
"""Longer than a call survives without hearing its peer."""
FLOWING = 25
"""Frames (half a second of audio) that show media flows."""
STOPPED_MS = 500
"""Silence that shows the media stopped (25 frames missed)."""
TIMEOUT = 30.0
RECONNECT_WITHIN = 5.0
"""Seconds from the network's return to online: a handshake, ATTACH and a publish take
well under one; waiting out a reconnect pause would take up to a minute."""


@dataclass
class Phones:
    lab: Lab
    home: Path
    out: Path
    """Control sockets: the device behind the home router, the one on a public address."""


@pytest.fixture(scope="module")
def phones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phones]:
    tmp = tmp_path_factory.mktemp("natlab-netdown")
    with lab("edgenetdown", sites=SITES) as built:
        keys = server_keys(tmp / "login")
        _login_server(built, tmp)
        _supernode(built, tmp, keys.issuer, "sn1", SN1, alternate=SN1_ALT)
        _supernode(built, tmp, keys.issuer, "sn2", SN2, bootstrap=f"{SN1}:{PORT}")
        home = _agent(built, tmp, HOME, "cat", SN1, keys)
        out = _agent(built, tmp, OUT, "ann", SN2, keys)
        for control in (home, out):
            _self_tested(control)
            _relayed(control)
        yield Phones(built, home, out)


def status(control: Path) -> dict[str, Any]:
    result: dict[str, Any] = ctl(control, "status")["result"]
    return result


def call_of(control: Path) -> dict[str, Any]:
    calls = status(control)["calls"]
    assert calls, "no call"
    latest: dict[str, Any] = calls[-1]
    return latest


def wait_until(
    what: str,
    condition: Callable[[], bool],
    timeout: float = TIMEOUT,
    *,
    phones: Phones | None = None,
) -> None:
    """Poll the agents (other processes: their control sockets are the way to ask);
    on failure, say what the two phones' status was."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            seen = [status(p) for p in (phones.home, phones.out)] if phones else []
            raise AssertionError(f"never: {what}; {seen}")
        time.sleep(0.1)


def start_call(phones: Phones) -> None:
    placed = ctl(phones.home, "call", user="ann")
    assert placed["ok"], placed
    _until(phones.home, "active")
    _until(phones.out, "active")
    wait_until("media flows both ways", lambda: flowing(phones, 0, 0), phones=phones)


def flowing(phones: Phones, home_from: int, out_from: int) -> bool:
    """Both sides received :data:`FLOWING` more frames than ``*_from``."""
    home, out = call_of(phones.home), call_of(phones.out)
    return bool(
        home["frames_received"] >= home_from + FLOWING
        and out["frames_received"] >= out_from + FLOWING
    )


def take_down(phones: Phones, outage: float) -> dict[str, Any]:
    """Pull the home device's network for ``outage`` seconds (the stimulus); meanwhile
    its status must show the media stopped and the device offline. Its status from
    just before."""
    before = status(phones.home)
    down_at = time.monotonic()
    phones.lab.link(HOME, up=False)
    try:
        wait_until("the media stopped", lambda: media_stopped(phones.home))
        wait_until("offline, saying why", lambda: offline_for_the_network(phones.home))
        wait_until("the outage is over", lambda: time.monotonic() - down_at >= outage, outage)
    finally:
        phones.lab.link(HOME, up=True)
    return before


def offline_for_the_network(control: Path) -> bool:
    now = status(control)
    return not now["online"] and "the network went down" in now["last_error"]


def media_stopped(control: Path) -> bool:
    call = call_of(control)
    return call["state"] == "ended" or (call["silent_ms"] or 0) >= STOPPED_MS


def back_online(phones: Phones, before: dict[str, Any]) -> None:
    """The device is online again soon after its network came back (not after a
    reconnect pause), saw the change, and tested its connectivity again (behind a
    NAT the filtering tests wait out their silence: several seconds more)."""
    wait_until("online again", lambda: status(phones.home)["online"], RECONNECT_WITHIN)

    def tested_again() -> bool:
        now = status(phones.home)
        nat = now["nat"] or {}
        return (
            now["network_changes"] > before["network_changes"]
            and (nat.get("tested_at") or 0) > before["nat"]["tested_at"]
            and not nat.get("testing")
        )

    wait_until("the self-test ran again", tested_again)
    assert status(phones.home)["online"]


def hang_up(phones: Phones) -> None:
    if call_of(phones.home)["state"] != "ended":
        assert ctl(phones.home, "hangup")["ok"]
    wait_until("the call is over on both sides", lambda: ended(phones))


def ended(phones: Phones) -> bool:
    return bool(call_of(phones.home)["state"] == call_of(phones.out)["state"] == "ended")


def test_a_short_outage_and_the_call_carries_on(phones: Phones) -> None:
    start_call(phones)
    before = take_down(phones, SHORT_OUTAGE)
    home_at, out_at = call_of(phones.home), call_of(phones.out)
    assert home_at["state"] == out_at["state"] == "active", (home_at, out_at)
    wait_until(
        "frames flow both ways again",
        lambda: flowing(phones, home_at["frames_received"], out_at["frames_received"]),
        phones=phones,
    )
    home, out = call_of(phones.home), call_of(phones.out)
    assert home["state"] == out["state"] == "active"
    assert home["path"] is not None and out["path"] is not None
    assert home["silent_ms"] < STOPPED_MS and out["silent_ms"] < STOPPED_MS
    # The frames the home device made while it had no network never left it: the
    # other side counts them lost. (Those sent towards it may have waited in its
    # router's neighbour queue and come late rather than not at all.)
    assert out["lost"] >= SHORT_OUTAGE / FRAME_INTERVAL / 2 and 0 < out["loss"] < 1, (home, out)
    back_online(phones, before)
    hang_up(phones)


def test_a_long_outage_ends_the_call_and_the_device_comes_back(phones: Phones) -> None:
    start_call(phones)
    before = take_down(phones, LONG_OUTAGE)
    home, out = call_of(phones.home), call_of(phones.out)
    # The call ended during the outage, each side on its own: nothing got through.
    assert home["state"] == out["state"] == "ended", (home, out)
    assert home["reason"] == out["reason"] == "path-lost"
    back_online(phones, before)
    # The device is usable again: a new call goes through.
    start_call(phones)
    hang_up(phones)

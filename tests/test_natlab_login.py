"""Logging in through sn1 when the site's router drops everything to the login server.

Real processes in the NAT lab's namespaces, set up as :mod:`tests.test_natlab_calls`
sets them up: ``edge login-server`` in ``login`` (198.18.0.10:443), ``edge
supernode`` in ``sn1`` (configured with that login server), and ``edge agent`` on
a home site behind a NAT 40 ms from the internet. The agent enrols directly;
then an nftables rule on the site's router drops every packet to the login
server, and the agent still gets to it through sn1: at once for its buddy list,
and at its next start for its whole login.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.login.cli import server_keys
from edge.runtime.control import request
from tests.impair import Impairment
from tests.natlab import Lab, SiteSpec, lab, unavailable
from tests.test_natlab_calls import LOGIN, PORT, SN1, SN1_ALT, _agent, _login_server, _supernode

UNAVAILABLE = unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))

SITE, USER = "home1", "cat"
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path, Any]]:
    tmp = tmp_path_factory.mktemp("natlab-login")
    with lab("edgelogin", sites=(SiteSpec(SITE, "cone", Impairment(delay=0.02)),)) as net:
        keys = server_keys(tmp / "login")
        _login_server(net, tmp)
        _supernode(net, tmp, keys.issuer, "sn1", SN1, alternate=SN1_ALT)
        yield net, tmp, keys


def _ctl(socket_path: Path, command: str) -> Any:
    return asyncio.run(request(socket_path, command))["result"]


def _tunnels(tmp: Path) -> dict[str, int]:
    counts: dict[str, int] = _ctl(tmp / "sn1.sock", "status")["overlay"]["login_tunnels"]
    return counts


def _until_tunnels(tmp: Path, check: Any) -> dict[str, int]:
    """Poll sn1's control socket until ``check(counts)`` holds, with a deadline."""
    deadline = time.monotonic() + TIMEOUT
    while not check(counts := _tunnels(tmp)):
        assert time.monotonic() < deadline, f"sn1's tunnel counters never got there: {counts}"
        time.sleep(0.1)
    return counts


def test_the_agent_logs_in_through_sn1_when_the_login_server_is_cut_off(
    built: tuple[Lab, Path, Any],
) -> None:
    net, tmp, keys = built
    control = _agent(net, tmp, SITE, USER, SN1, keys)
    agent = net.processes[-1]
    status = _ctl(control, "status")
    assert status["login"]["via"] == "direct"
    assert _tunnels(tmp).get("tunnel-open", 0) == 0

    router = net.sites[SITE].router
    assert router is not None
    net.run(router, net.nft, "insert", "rule", "ip", "lab", "forward",
            "ip", "daddr", LOGIN[0], "counter", "drop")  # fmt: skip

    # A later session with the login server (the buddy list) goes through sn1.
    assert _ctl(control, "buddies") == {"buddies": []}
    assert _ctl(control, "status")["login"]["via"] == f"supernode {SN1}:{PORT}"
    _until_tunnels(tmp, lambda c: c.get("tunnel-closed-device", 0) == 1)

    # And so does the whole login at the next start.
    agent.terminate()
    agent.wait(TIMEOUT)
    (tmp / f"{SITE}.notify").unlink()  # the next start's listener binds it again
    control = _agent(net, tmp, SITE, USER, SN1, keys)
    status = _ctl(control, "status")
    assert status["online"] is True
    assert status["login"]["via"] == f"supernode {SN1}:{PORT}"
    assert status["certificate_expires"] > time.time()
    counts = _until_tunnels(tmp, lambda c: c.get("tunnel-closed-device", 0) == 2)
    assert counts["tunnel-open"] == 2 and counts["tunnel-connected"] == 2
    assert counts["tunnel-bytes-down"] > 0 and counts["open"] == 0
    dropped = net.run(router, net.nft, "list", "chain", "ip", "lab", "forward")
    assert "counter packets 0 " not in dropped, "the router did drop the agent's tries"

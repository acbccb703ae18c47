"""The systemd units say what the daemons they start need: readiness by sd_notify,
the right command, and time enough for a graceful stop."""

import configparser
import inspect
import re
import shlex
from pathlib import Path

from edge.login.server import LoginServer

UNITS = Path(__file__).parent.parent / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    # strict=False: a unit may repeat a key (SystemCallFilter=), the later line adds to it.
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((UNITS / name).read_text(), source=name)
    return parser


def seconds(value: str) -> float:
    """A systemd time span such as ``20s``, ``1min 30s`` or a bare number of seconds."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "ms": 0.001}
    total = 0.0
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[suffix]
    return total


def test_login_server_unit_is_notify_and_runs_the_login_server() -> None:
    service = unit("edge-login-server.service")["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "edge"
    assert argv[1:4] == ["login-server", "--config", "/etc/edge/login.toml"]


def test_login_server_unit_waits_longer_than_the_graceful_stop() -> None:
    service = unit("edge-login-server.service")["Service"]
    grace = inspect.signature(LoginServer.stop).parameters["grace"].default
    assert isinstance(grace, float)
    assert seconds(service["TimeoutStopSec"]) > grace


def test_login_server_state_dir_is_the_configuration_default() -> None:
    from edge.login.config import DEFAULT_STATE

    service = unit("edge-login-server.service")["Service"]
    assert Path("/var/lib", service["StateDirectory"]) == DEFAULT_STATE


def test_time_spans_are_read_as_systemd_reads_them() -> None:
    assert seconds("20s") == 20
    assert seconds("15") == 15
    assert seconds("1min 30s") == 90
    assert seconds("500ms") == 0.5


def test_supernode_unit_is_notify_with_a_watchdog_and_binds_low_ports_without_root() -> None:
    service = unit("edge-supernode.service")["Service"]
    assert service["Type"] == "notify"
    assert seconds(service["WatchdogSec"]) > 0
    argv = shlex.split(service["ExecStart"])
    assert argv[1:4] == ["supernode", "--config", "/etc/edge/supernode.toml"]
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"


def test_supernode_unit_directories_are_the_configuration_defaults() -> None:
    from edge.supernode.config import DEFAULT_CONTROL, DEFAULT_STATE, SupernodeConfig

    service = unit("edge-supernode.service")["Service"]
    assert Path("/var/lib", service["StateDirectory"]) == DEFAULT_STATE
    assert Path("/run", service["RuntimeDirectory"]) == DEFAULT_CONTROL.parent
    assert seconds(service["TimeoutStopSec"]) > SupernodeConfig().shutdown_grace

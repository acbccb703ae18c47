"""The systemd units say what the daemons they start need: readiness by sd_notify,
the right command, and time enough for a graceful stop."""

import configparser
import inspect
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edge.login.server import LoginServer
from tests.daemon import notifying_daemon

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


# -- the agent's unit, and every unit through systemd-analyze ----------------------

UNIT_SUFFIXES = {".service", ".socket", ".timer", ".target", ".path"}


def unit_files() -> list[str]:
    return sorted(path.name for path in UNITS.iterdir() if path.suffix in UNIT_SUFFIXES)


def every(name: str, key: str) -> list[str]:
    """Each value a unit gives ``key`` (configparser keeps only the last one)."""
    prefix = key + "="
    lines = (UNITS / name).read_text().splitlines()
    return [line[len(prefix) :] for line in lines if line.startswith(prefix)]


def edge_argv(command: str) -> list[str]:
    """An Exec line's argv without systemd's prefixes (``-``, ``+``, ``!``, ``@``, ``:``)."""
    argv = shlex.split(command)
    argv[0] = argv[0].lstrip("-+!@:")
    return argv


def test_agent_unit_is_notify_with_the_loops_watchdog_and_runs_the_agent() -> None:
    service = unit("edge-agent.service")["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert seconds(service["WatchdogSec"]) >= 10
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/usr/bin/edge"
    assert argv[1:] == ["agent", "--config", "${CREDENTIALS_DIRECTORY}/agent.toml"]


def test_agent_unit_reads_the_configuration_the_console_writes_as_credentials(
    tmp_path: Path,
) -> None:
    from edge.client.config import read

    loaded = dict(value.split(":", 1) for value in every("edge-agent.service", "LoadCredential"))
    assert loaded == {
        "agent.toml": "/etc/edge/agent.toml",
        "agent.password": "/etc/edge/agent.password",
    }
    # The console names the password file relative to the configuration, so the
    # credential's name is what the agent looks for beside its configuration.
    text = '[account]\nuser_id = "a"\ndevice_id = "d"\npassword_file = "agent.password"\n'
    text += f'[login]\naddress = "127.0.0.1:1"\nserver_key = "{"11" * 32}"\n'
    text += f'issuer_key = "{"22" * 32}"\n[supernodes]\nbootstrap = ["127.0.0.1:2"]\n'
    credentials = tmp_path / "credentials"  # what ${CREDENTIALS_DIRECTORY} names
    credentials.mkdir()
    (credentials / "agent.toml").write_text(text)
    assert read(credentials / "agent.toml").password_file == credentials / "agent.password"
    assert every("edge-agent.service", "SetCredential") == ["agent.password:\\n"]


def test_agent_unit_directories_are_the_configuration_defaults() -> None:
    from dataclasses import fields

    from edge.client.config import AgentConfig

    defaults = {field.name: field.default for field in fields(AgentConfig)}
    state_dir, control = defaults["state_dir"], defaults["control_socket"]
    assert isinstance(state_dir, Path) and isinstance(control, Path)
    service = unit("edge-agent.service")["Service"]
    assert Path("/var/lib", service["StateDirectory"]) == state_dir
    assert Path("/run", service["RuntimeDirectory"]) == control.parent


def test_agent_unit_is_hardened_with_only_the_groups_a_device_needs() -> None:
    service = unit("edge-agent.service")["Service"]
    hardening = {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "DevicePolicy": "closed",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
    }
    assert {key: service.get(key) for key in hardening} == hardening
    assert service["SupplementaryGroups"].split() == ["audio", "gpio"]
    assert every("edge-agent.service", "DeviceAllow") == ["char-alsa rw", "char-gpiochip rw"]


def test_agent_unit_checks_a_trial_slot_before_each_start_and_commits_after_ready() -> None:
    from edge.device.update import DEFAULT_ROOT

    [before] = every("edge-agent.service", "ExecStartPre")
    [after] = every("edge-agent.service", "ExecStartPost")
    # '-': a broken layout never keeps the agent from starting; '+': the slots are root's.
    assert before.startswith("-+") and after.startswith("-+")
    assert edge_argv(before)[1:] == ["update", "boot-check", "--root", str(DEFAULT_ROOT)]
    assert edge_argv(after)[1:] == ["update", "commit", "--if-trial", "--root", str(DEFAULT_ROOT)]


@pytest.mark.parametrize("name", unit_files())
def test_every_edge_command_in_a_unit_is_one_edge_accepts(name: str) -> None:
    from edge.cli import build_parser

    parser = build_parser()
    for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop"):
        for command in every(name, key):
            argv = edge_argv(command)
            if Path(argv[0]).name == "edge":
                parser.parse_args(argv[1:])


@pytest.mark.parametrize("name", unit_files())
def test_systemd_analyze_verifies_the_unit(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the units cannot be verified here")
    # verify insists that every Exec binary exists: point /usr/bin/edge at this venv's.
    edge = Path(sys.executable).parent / "edge"
    assert edge.exists(), f"{edge} missing: install the project into its venv"
    copy = tmp_path / name
    copy.write_text((UNITS / name).read_text().replace("/usr/bin/edge", str(edge)))
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    # systemd-analyze only warns about unknown keys and bad values: any line naming
    # the unit is a fault, whatever the exit status.
    about_unit = [line for line in (done.stdout + done.stderr).splitlines() if name in line]
    assert done.returncode == 0 and not about_unit, done.stdout + done.stderr


def test_the_agent_pings_the_watchdog_from_its_loop(tmp_path: Path) -> None:
    server_key, issuer_key = _login_server_with_alice(tmp_path)
    login = ("login-server", "--config", str(tmp_path / "login.toml"))
    with notifying_daemon(tmp_path / "login", *login, "--state-dir", str(tmp_path / "ls")) as (
        server,
        login_listener,
    ):
        assert login_listener.recv(4096) == b"READY=1", server.poll()
        port = login_listener.recv(4096).decode().rsplit(":", 1)[1]
        config = tmp_path / "agent.toml"
        (tmp_path / "password").write_text("secret\n")
        config.write_text(
            '[account]\nuser_id = "alice"\ndevice_id = "desk-1"\n'
            f'password_file = "{tmp_path / "password"}"\n'
            f'[login]\naddress = "127.0.0.1:{port}"\nserver_key = "{server_key}"\n'
            f'issuer_key = "{issuer_key}"\n'
            '[supernodes]\nbootstrap = ["127.0.0.1:9"]\n'
            f'[state]\ndir = "{tmp_path / "state"}"\n'
            f'control_socket = "{tmp_path / "agent.sock"}"\n'
            '[audio]\ncapture = "none"\nplayback = "none"\n'
        )
        (tmp_path / "agent").mkdir()
        # 400 ms: systemd wants a ping at least every 200 ms, the agent sends one each.
        with _agent_with_watchdog(tmp_path / "agent", config, "400000") as (agent, listener):
            heard = _notifications(listener, until=lambda seen: seen.count(b"WATCHDOG=1") >= 3)
            assert b"READY=1" in heard, agent.poll()
            agent.terminate()
            assert agent.wait(timeout=30) == 0


def _login_server_with_alice(tmp_path: Path) -> tuple[str, str]:
    """A login server's configuration and state with the account alice; its two public keys."""
    (tmp_path / "login").mkdir()
    config = tmp_path / "login.toml"
    config.write_text('[server]\nlisten = ["127.0.0.1:0"]\n[passwords]\nops = 1\nmemory_kib = 8\n')
    edge = [sys.executable, "-m", "edge", "login-server", "--config", str(config)]
    edge += ["--state-dir", str(tmp_path / "ls")]
    add = [*edge, "user", "add", "alice", "--password-stdin"]
    subprocess.run(add, input="secret\n", text=True, check=True, capture_output=True, timeout=60)
    keys = subprocess.run(
        [*edge, "keys"], text=True, check=True, capture_output=True, timeout=60
    ).stdout
    server_key, issuer_key = (line.rsplit(" ", 1)[1] for line in keys.splitlines()[:2])
    return server_key, issuer_key


@contextmanager
def _agent_with_watchdog(
    where: Path, config: Path, usec: str
) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket]]:
    notify_path = where / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify_path))
        listener.settimeout(30)
        env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": usec, "PATH": "/usr/bin:/bin"}
        process = subprocess.Popen(
            [sys.executable, "-m", "edge", "agent", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield process, listener
        finally:
            process.kill()
            process.wait()


def _notifications(listener: socket.socket, until: Callable[[list[bytes]], bool]) -> list[bytes]:
    seen: list[bytes] = []
    while not until(seen):
        seen.append(listener.recv(4096))
    return seen


def test_console_unit_takes_the_serial_line_from_serial_getty() -> None:
    unit_file = unit("edge-console@.service")
    assert "serial-getty@%i.service" in unit_file["Unit"]["Conflicts"].split()
    argv = shlex.split(unit_file["Service"]["ExecStart"])
    assert Path(argv[0]).name == "edge"
    assert argv[1:4] == ["console", "--port", "/dev/%I"]
    assert unit_file["Service"]["Restart"] == "always"


def test_console_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart's program exists: point it at this tree's edge,
    # and name an instance, as a template cannot be verified on its own.
    edge = Path(sys.executable).with_name("edge")
    text = (UNITS / "edge-console@.service").read_text().replace("/usr/bin/edge", str(edge))
    instance = tmp_path / "edge-console@ttyS0.service"
    instance.write_text(text)
    done = subprocess.run(
        [analyze, "verify", str(instance)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "edge-console@ttyS0.service" not in done.stderr, done.stderr


def test_console_unit_provisions_the_files_the_agent_unit_loads() -> None:
    from edge.provision.provisioner import Provisioner

    argv = shlex.split(unit("edge-console@.service")["Service"]["ExecStart"])
    config = Path(argv[argv.index("--config") + 1])
    lines = (UNITS / "edge-agent.service").read_text().splitlines()
    loaded = {line.split(":", 1)[1] for line in lines if line.startswith("LoadCredential=")}
    assert {str(config), str(Provisioner(config).password_file)} <= loaded

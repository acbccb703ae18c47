"""The device image recipe in firmware/ says what the board profiles need, its
scripts parse, the first-boot hook picks the console or the agent, and (with
EDGE_SLOW=1, as root) `make image` builds the arm64 root filesystem and runs
edge inside it under emulation."""

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from edge.device.profile import Profile, read

ROOT = Path(__file__).parent.parent
FIRMWARE = ROOT / "firmware"
PROFILES = sorted((ROOT / "hw").glob("*.toml"))
SCRIPTS = [FIRMWARE / "build-image.sh", FIRMWARE / "first-boot.sh"]


def profile_id(path: Path) -> str:
    return path.stem


@pytest.fixture(params=PROFILES, ids=profile_id)
def profile(request: pytest.FixtureRequest) -> Profile:
    path = request.param
    assert isinstance(path, Path)
    return read(path)


def boot_settings(kind: str) -> list[tuple[str, str]]:
    """The ``key=value`` lines of a board's config.txt fragment, comments left out."""
    text = (FIRMWARE / "boot" / f"config-{kind}.txt").read_text()
    lines = [line.strip() for line in text.splitlines()]
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    assert all(len(pair) == 2 for pair in pairs), "a line that is not key=value"
    return [(key.strip(), value.strip()) for key, value in pairs]


def card_of(device: str) -> str:
    match = re.fullmatch(r"hw:CARD=(\w+),DEV=\d+", device)
    assert match, f"{device!r} does not name its card"
    return match.group(1)


def test_there_are_profiles_for_both_boards() -> None:
    kinds = {read(path).kind for path in PROFILES}
    assert kinds == {"desk-phone", "intercom"}


def test_boot_fragment_loads_the_profiles_overlay(profile: Profile) -> None:
    settings = boot_settings(profile.kind)
    assert ("dtoverlay", profile.audio.overlay) in settings
    assert ("dtparam", "i2s=on") in settings


def test_boot_fragment_opens_the_console_uart_and_mutes_the_onboard_audio(
    profile: Profile,
) -> None:
    settings = boot_settings(profile.kind)
    assert ("enable_uart", "1") in settings
    assert ("dtparam", "audio=off") in settings


def alsa_pcms() -> dict[str, str]:
    """Each ``pcm.NAME { ... }`` block of asound.conf, by name (one level of braces)."""
    text = (FIRMWARE / "alsa" / "asound.conf").read_text()
    blocks = re.findall(r"^pcm\.(\w+) \{\n(.*?)^\}", text, flags=re.M | re.S)
    return dict(blocks)


def test_alsa_config_shares_the_profiles_card_both_ways(profile: Profile) -> None:
    pcms = alsa_pcms()
    name = "edge_" + profile.kind.replace("-", "_")
    for device in (profile.audio.playback, profile.audio.capture):
        card_of(device)
        assert f'pcm "{device}"' in pcms[f"{name}_out"]
        assert f'pcm "{device}"' in pcms[f"{name}_in"]
    assert "type dmix" in pcms[f"{name}_out"]
    assert "type dsnoop" in pcms[f"{name}_in"]
    assert f'playback.pcm "plug:{name}_out"' in pcms[name]
    assert f'capture.pcm "plug:{name}_in"' in pcms[name]


def test_alsa_default_is_one_of_the_boards_pcms() -> None:
    text = (FIRMWARE / "alsa" / "asound.conf").read_text()
    defaults = re.findall(r"^pcm\.!default (\w+)$", text, flags=re.M)
    assert len(defaults) == 1
    assert defaults[0] in alsa_pcms()


def test_alsa_shared_pcms_have_distinct_ipc_keys() -> None:
    keys = [re.search(r"ipc_key (\d+)", body) for body in alsa_pcms().values()]
    numbers = [key.group(1) for key in keys if key]
    assert len(numbers) == 4
    assert len(set(numbers)) == len(numbers)


def udev_rules() -> list[str]:
    lines: list[str] = []
    for path in sorted((FIRMWARE / "udev").glob("*.rules")):
        lines += [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return lines


def test_udev_gives_the_gpio_chips_to_the_agents_group() -> None:
    agent = (ROOT / "systemd" / "edge-agent.service").read_text()
    groups = re.search(r"^SupplementaryGroups=(.*)$", agent, flags=re.M)
    assert groups and "gpio" in groups.group(1).split()
    gpio = [ln for ln in udev_rules() if 'KERNEL=="gpiochip*"' in ln]
    assert len(gpio) == 1
    assert 'GROUP="gpio"' in gpio[0]
    assert 'MODE="0660"' in gpio[0]


def test_udev_names_the_console_uart() -> None:
    tty = [ln for ln in udev_rules() if 'SUBSYSTEM=="tty"' in ln]
    assert any("ttyS0" in ln and 'SYMLINK+="serial0"' in ln for ln in tty)
    assert any("ttyS0" in ln and 'GROUP="dialout"' in ln for ln in tty)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_stop_on_errors(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True, capture_output=True)
    assert "set -euo pipefail" in script.read_text()
    assert os.access(script, os.X_OK)


def run_first_boot(root: Path, tmp: Path, *, fail: bool = False) -> tuple[int, list[str]]:
    """The hook against ``root``, with a systemctl that records its arguments."""
    log = tmp / "systemctl.log"
    log.write_text("")
    fake = tmp / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexit {1 if fail else 0}\n')
    fake.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "EDGE_ROOT": str(root),
        "EDGE_SYSTEMCTL": str(fake),
        "EDGE_CONSOLE_TTY": "ttyS0",
    }
    done = subprocess.run(
        [str(FIRMWARE / "first-boot.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    return done.returncode, log.read_text().splitlines()


def test_first_boot_starts_the_console_on_an_unprovisioned_device(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "edge").mkdir(parents=True)
    code, calls = run_first_boot(root, tmp_path)
    assert code == 0
    assert calls == ["--no-block start edge-console@ttyS0.service"]
    assert (ROOT / "systemd" / "edge-console@.service").exists()


def test_first_boot_enables_the_agent_once_provisioned(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "edge").mkdir(parents=True)
    (root / "etc" / "edge" / "agent.toml").write_text("")
    code, calls = run_first_boot(root, tmp_path)
    assert code == 0
    assert calls == ["enable edge-agent.service", "--no-block start edge-agent.service"]


def test_first_boot_reports_a_failing_systemctl(tmp_path: Path) -> None:
    code, calls = run_first_boot(tmp_path / "empty", tmp_path, fail=True)
    assert code != 0
    assert len(calls) == 1


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_first_boot_unit_verifies(tmp_path: Path) -> None:
    # Pointed at the hook in the tree: the image installs it where the unit names it.
    text = (FIRMWARE / "edge-first-boot.service").read_text()
    installed = "/usr/lib/edge/first-boot.sh"
    assert f"ExecStart={installed}" in text
    assert installed in (FIRMWARE / "build-image.sh").read_text()
    unit = tmp_path / "edge-first-boot.service"
    unit.write_text(text.replace(installed, str(FIRMWARE / "first-boot.sh")))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    complaints = [ln for ln in (done.stdout + done.stderr).splitlines() if unit.name in ln]
    assert done.returncode == 0, done.stderr
    assert complaints == []


SLOW = os.environ.get("EDGE_SLOW") == "1"


@pytest.mark.skipif(not SLOW, reason="builds the arm64 image for minutes: set EDGE_SLOW=1")
@pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and chroot need root")
def test_make_image_builds_and_runs_edge_under_emulation() -> None:
    done = subprocess.run(
        ["make", "image", "BOARD=desk-phone"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3 * 3600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # build-image.sh runs `edge --version` and the checks inside; pytest's
    # summary line is in its output.
    assert re.search(r"^\d+ passed", done.stdout, flags=re.M), done.stdout[-4000:]
    image = FIRMWARE / "out" / "edge-rootfs-arm64-desk-phone.tar.gz"
    with tarfile.open(image) as tar:
        names = set(tar.getnames())
        edge = tar.getmember("./usr/bin/edge")
        current = tar.getmember("./opt/edge/current")
    assert edge.issym() and edge.linkname == "/opt/edge/current/bin/edge"
    assert current.issym() and current.linkname == "slot-a"
    assert "./opt/edge/slot-a/bin/edge" in names
    assert "./usr/lib/edge/first-boot.sh" in names
    assert "./etc/asound.conf" in names
    assert not any(name.startswith("./tmp/edge-") for name in names)

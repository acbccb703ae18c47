"""The agent's configuration: a good file reads whole, every bad value names file, key, line."""

from pathlib import Path

import pytest

from edge.client.config import AgentConfig, TurnServer, read
from edge.errors import ConfigError

KEY = "ab" * 32
GOOD = f"""\
[account]
user_id = "alice"
device_id = "desk-1"

[login]
address = "198.18.0.10:443"
server_key = "{KEY}"
issuer_key = "{KEY}"

[supernodes]
bootstrap = ["198.18.0.20:33033", "[2001:db8::20]:33033"]

[[turn]]
uri = "turn:198.18.0.30:3478?transport=udp"

[state]
dir = "state"
port = 40000

[audio]
rate = 48000
echo_cancel = true

[policy]
auto_answer = ["frontdoor"]
supernode = "auto"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_a_good_file_reads_whole(tmp_path: Path) -> None:
    config = read(write(tmp_path, GOOD))
    assert config == AgentConfig(
        user_id="alice",
        device_id="desk-1",
        login_address=("198.18.0.10", 443),
        server_key=bytes.fromhex(KEY),
        issuer_key=bytes.fromhex(KEY),
        bootstrap=(("198.18.0.20", 33033), ("2001:db8::20", 33033)),
        turn=(TurnServer("turn:198.18.0.30:3478?transport=udp"),),
        state_dir=tmp_path / "state",
        port=40000,
        rate=48000,
        echo_cancel=True,
        auto_answer=frozenset({"frontdoor"}),
        supernode="auto",
    )


def test_defaults_fill_what_is_left_out(tmp_path: Path) -> None:
    minimal = GOOD.split("[supernodes]")[0]
    config = read(write(tmp_path, minimal))
    assert (config.port, config.supernode, config.rate, config.bootstrap) == (0, "never", 16000, ())
    assert config.login_address == ("198.18.0.10", 443)


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        ('user_id = "alice"', 'user_id = ""', "agent.toml:2: key 'account.user_id'"),
        (f'server_key = "{KEY}"', 'server_key = "abcd"', "agent.toml:7: key 'login.server_key'"),
        ('"198.18.0.20:33033", ', '"198.18.0.20:99999", ', "key 'supernodes.bootstrap[0]'"),
        ('uri = "turn:', 'uri = "http:', "agent.toml:14: key 'turn[0].uri'"),
        ("port = 40000", "port = 70000", "agent.toml:18: key 'state.port'"),
        ("rate = 48000", "rate = 22050", "agent.toml:21: key 'audio.rate'"),
        ('supernode = "auto"', 'supernode = "sometimes"', "agent.toml:26: key 'policy.supernode'"),
        ("echo_cancel = true", 'echo_cancel = "yes"', "agent.toml:22: key 'audio.echo_cancel'"),
        ("[policy]", "[policy]\nautoanswer = []", "autoanswer"),
    ],
)
def test_bad_values_name_file_key_and_line(
    tmp_path: Path, before: str, after: str, message: str
) -> None:
    assert before in GOOD
    with pytest.raises(ConfigError) as info:
        read(write(tmp_path, GOOD.replace(before, after, 1)))
    assert message in str(info.value)


def test_a_missing_required_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing required key 'login\.issuer_key'"):
        read(write(tmp_path, GOOD.replace(f'issuer_key = "{KEY}"\n', "")))


def test_an_unknown_section_is_a_mistake(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="audoi"):
        read(write(tmp_path, GOOD + "\n[audoi]\nrate = 1\n"))

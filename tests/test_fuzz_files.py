"""Random and mutated files: config and key files fail only with edge's own errors.

Examples per test: EDGE_FUZZ_EXAMPLES (default 300); ``make fuzz`` runs many more.
"""

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.crypto.keys import DeviceKeys
from edge.errors import EdgeError
from edge.runtime.config import loads

FUZZ = settings(
    max_examples=int(os.environ.get("EDGE_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

CONFIG = """\
# agent
[login]
address = "198.18.0.10:443"
pinned_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

[[supernodes]]
address = "198.18.0.20:3478"

[audio]
rate = 16000
echo_cancel = true
"""


def _read_all(text: str) -> None:
    doc = loads(text, "agent.toml")
    doc.get_address("login.address", None)
    doc.get_hex_bytes("login.pinned_key", 32, None)
    doc.get_int("audio.rate", None, min=8000, max=48000)
    doc.get_bool("audio.echo_cancel", None)
    for table in doc.get_tables("supernodes"):
        table.get_address("address", None)
    doc.check_unknown({"login", "supernodes", "audio"})


def _mutate(text: str, data: st.DataObject) -> str:
    chars = list(text)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(chars)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert":
            chars.insert(at, data.draw(st.characters()))
        elif chars and at < len(chars):
            if op == "delete":
                del chars[at]
            else:
                chars[at] = data.draw(st.sampled_from(list('=[]"\n#.0x ,{}')))
    return "".join(chars)


@pytest.mark.fuzz
@FUZZ
@given(st.text(max_size=400))
def test_random_config_text(text: str) -> None:
    with contextlib.suppress(EdgeError):
        _read_all(text)


@pytest.mark.fuzz
@FUZZ
@given(st.data())
def test_mutated_config(data: st.DataObject) -> None:
    with contextlib.suppress(EdgeError):
        _read_all(_mutate(CONFIG, data))


@pytest.mark.fuzz
@FUZZ
@given(st.binary(max_size=600))
def test_random_key_files(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "device.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, raw)
    os.close(fd)
    with contextlib.suppress(EdgeError):
        DeviceKeys.load(path)

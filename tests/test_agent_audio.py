"""Calls with audio from files: two real agents on loopback, each playing a tone file into
the call and recording what it hears; and the ``[audio]`` keys that name those files."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from edge.client.agent import Agent
from edge.client.config import AgentConfig, read
from edge.errors import ConfigError
from edge.media import tones
from edge.media.wav import FRAME_BYTES, read_wav, write_wav
from edge.runtime.control import request
from tests.test_agent import TIMEOUT, _calls, _until_active, _until_ended, network, run_uv
from tests.test_client_config import GOOD
from tests.test_media_pipeline import stdlib_wav

ALICE_HZ, BOB_HZ = 700.0, 1100.0
FRAMES = 75
"""1.5 s of audio each way before the hang-up."""


def test_a_tone_played_by_one_agent_is_recorded_by_the_other(tmp_path: Path) -> None:
    for name, frequency in (("alice", ALICE_HZ), ("bob", BOB_HZ)):
        write_wav(tmp_path / f"{name}-plays.wav", tones.tone(frequency, 1.0))

    def audio(config: AgentConfig) -> AgentConfig:
        name = config.user_id
        return replace(
            config,
            capture=f"file:{tmp_path / f'{name}-plays.wav'}",
            playback=f"file:{tmp_path / f'{name}-heard.wav'}",
        )

    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            alice_config = audio(net.agent_config("alice", [home]))
            bob_config = replace(
                audio(net.agent_config("bob", [home])), auto_answer=frozenset({"alice"})
            )
            alice = await net.agent(alice_config)
            bob = await net.agent(bob_config)
            placed = await request(alice_config.control_socket, "call", {"user": "bob"})
            assert placed["ok"], placed
            for agent in (alice, bob):
                await asyncio.wait_for(_until_active(agent), TIMEOUT)
            for agent in (alice, bob):
                await asyncio.wait_for(_until_received(agent, FRAMES), TIMEOUT)
            hung = await request(alice_config.control_socket, "hangup")
            assert hung["ok"], hung
            for agent in (alice, bob):
                await asyncio.wait_for(_until_ended(agent), TIMEOUT)

    run_uv(main())
    for name, other in (("alice", BOB_HZ), ("bob", ALICE_HZ)):
        rate, pcm = read_wav(tmp_path / f"{name}-heard.wav")
        assert rate == 16000
        assert len(pcm) >= FRAMES * FRAME_BYTES
        # Only the other side's tone, and it fills the recording once the call is up.
        assert tones.heard(pcm, [ALICE_HZ, BOB_HZ]) == [other]
        held = [
            tones.strongest(memoryview(pcm[i : i + 1280]).cast("h"), [ALICE_HZ, BOB_HZ])
            for i in range(0, len(pcm) - 1280, 1280)
        ]
        assert sum(found is not None for found in held) >= 0.8 * len(held)


async def _until_received(agent: Agent, frames: int) -> None:
    assert agent.calls is not None
    await agent.calls.wait_for(lambda: any(c["frames_received"] >= frames for c in _calls(agent)))


# -- the [audio] keys ---------------------------------------------------------------------

CONFIG = (
    GOOD.split("[supernodes]")[0]  # [account] and [login], lines 1 to 9
    + '[audio]\ncapture = "CAPTURE"\nplayback = "PLAYBACK"\n'
)


def config_with(tmp_path: Path, capture: str, playback: str = "default") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.replace("CAPTURE", capture).replace("PLAYBACK", playback))
    return path


def test_file_names_are_taken_from_the_configuration_folder(tmp_path: Path) -> None:
    write_wav(tmp_path / "greeting.wav", tones.tone(440, 0.1))
    (tmp_path / "calls").mkdir()
    config = read(config_with(tmp_path, "file:greeting.wav", "file:calls/heard.wav"))
    assert config.capture == f"file:{tmp_path / 'greeting.wav'}"
    assert config.playback == f"file:{tmp_path / 'calls' / 'heard.wav'}"


def test_device_names_are_kept_as_written(tmp_path: Path) -> None:
    config = read(config_with(tmp_path, "hw:1,0", "plughw:CARD=Device"))
    assert (config.capture, config.playback) == ("hw:1,0", "plughw:CARD=Device")


@pytest.mark.parametrize(
    ("capture", "playback", "make", "message"),
    [
        ("file:gone.wav", "default", None, ":11: key 'audio.capture': cannot play it: "),
        ("file:", "default", None, ":11: key 'audio.capture': expected \"file:PATH.wav\""),
        ("file:text.wav", "default", "text", "not a WAV file"),
        ("file:stereo.wav", "default", "stereo", "not 16-bit mono (16-bit, 2 channel(s))"),
        ("file:8bit.wav", "default", "8bit", "not 16-bit mono (8-bit, 1 channel(s))"),
        ("default", "file:no/such/x.wav", None, ":12: key 'audio.playback': cannot record to"),
        ("default", "file:.", None, "it is a folder"),
    ],
)
def test_a_wrong_audio_file_names_the_key_and_why(
    tmp_path: Path, capture: str, playback: str, make: str | None, message: str
) -> None:
    if make == "text":
        (tmp_path / "text.wav").write_text("words, not samples")
    elif make == "stereo":
        stdlib_wav(tmp_path / "stereo.wav", bytes(64), channels=2)
    elif make == "8bit":
        stdlib_wav(tmp_path / "8bit.wav", bytes(64), width=1)
    with pytest.raises(ConfigError) as raised:
        read(config_with(tmp_path, capture, playback))
    text = str(raised.value)
    assert text.startswith(f"{tmp_path / 'agent.toml'}:1")
    assert message in text
    if capture.endswith("gone.wav"):
        assert text.endswith(f"{tmp_path / 'gone.wav'}: no such file")

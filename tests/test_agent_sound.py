"""A call between two real agents whose microphones and loudspeakers are sound devices:
PortAudio and pyaudio run for real on the test sound card of tests/test_media_sound.py
(ALSA's ``file`` plugin on FIFOs), and a tone each side's microphone hears comes out of
the other side's loudspeaker.

PortAudio reads the ALSA configuration when it starts, so the whole network (login
server, supernode, both agents, the four card threads) runs in a child process started
with ``ALSA_CONFIG_PATH``; the test checks what the loudspeakers recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edge.client.config import read
from edge.errors import ConfigError
from edge.media import tones
from edge.runtime.control import request
from tests.test_agent import TIMEOUT, _until_active, _until_ended, network, run_uv
from tests.test_agent_audio import config_with
from tests.test_media_sound import ROOT, Mic, Speaker, alsa_config, dominated

ALICE_HZ, BOB_HZ = 600.0, 1000.0
"""The tones each side's microphone hears: those :func:`dominated` tells apart."""
HEARD = 2.5
"""Seconds each loudspeaker records before the hang-up."""


def test_a_tone_into_one_agents_microphone_comes_out_of_the_others_loudspeaker(
    tmp_path: Path,
) -> None:
    config = alsa_config(tmp_path, ["alice", "bob"])
    env = {**os.environ, "ALSA_CONFIG_PATH": str(config), "JACK_NO_START_SERVER": "1"}
    code = "import sys; from tests.test_agent_sound import child; child(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"alice": True, "bob": True}
    for name, other in (("alice", BOB_HZ), ("bob", ALICE_HZ)):
        heard = (tmp_path / f"{name}-heard.raw").read_bytes()
        assert tones.heard(heard, [ALICE_HZ, BOB_HZ]) == [other]
        # Most of the recording is the other side's tone: the rest is the call's start.
        seconds = dominated(heard, other) * len(heard) / (2 * tones.RATE)
        assert seconds >= 0.6 * HEARD, (name, seconds)


def child(folder: str) -> None:
    tmp = Path(folder)
    mics = {
        name: Mic(tmp / f"{name}-mic.fifo", tones.RATE, tones.tone(frequency, 1.0))
        for name, frequency in (("alice", ALICE_HZ), ("bob", BOB_HZ))
    }
    speakers = {name: Speaker(tmp / f"{name}-spk.fifo", tones.RATE) for name in mics}
    for card in (*mics.values(), *speakers.values()):
        card.plug()
    try:
        calls = run_uv(_call(tmp, speakers))
    finally:
        for card in (*mics.values(), *speakers.values()):
            card.stop()
    for name, speaker in speakers.items():
        (tmp / f"{name}-heard.raw").write_bytes(speaker.heard())
    print(json.dumps(calls))


async def _call(tmp: Path, speakers: dict[str, Speaker]) -> dict[str, bool]:
    async with network(tmp) as net:
        home = await net.home()
        configs = {
            name: replace(
                net.agent_config(name, [home]), capture=f"{name}-mic", playback=f"{name}-spk"
            )
            for name in speakers
        }
        configs["bob"] = replace(configs["bob"], auto_answer=frozenset({"alice"}))
        agents = {name: await net.agent(config) for name, config in configs.items()}
        placed = await request(configs["alice"].control_socket, "call", {"user": "bob"})
        assert placed["ok"], placed
        for agent in agents.values():
            await asyncio.wait_for(_until_active(agent), TIMEOUT)
        for speaker in speakers.values():
            # Recording starts when the loudspeaker opens, a little after the call.
            assert await asyncio.to_thread(speaker.wait_for_seconds, HEARD, 2 * TIMEOUT)
        hung = await request(configs["alice"].control_socket, "hangup")
        assert hung["ok"], hung
        for agent in agents.values():
            await asyncio.wait_for(_until_ended(agent), TIMEOUT)
        return {name: agent.calls is not None for name, agent in agents.items()}


def test_a_device_name_with_a_control_character_is_refused_where_it_is_written(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as raised:
        read(config_with(tmp_path, "default", "hw:1\\t0"))
    assert str(raised.value).startswith(f"{tmp_path / 'agent.toml'}:12: key 'audio.playback'")
    assert str(raised.value).endswith("expected an ALSA device name, got 'hw:1\\t0'")

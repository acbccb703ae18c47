"""A call between two real agents whose microphones and loudspeakers are sound devices:
PortAudio and pyaudio run for real on the test sound card of tests/test_media_sound.py
(ALSA's ``file`` plugin on FIFOs), and a tone each side's microphone hears comes out of
the other side's loudspeaker.

PortAudio reads the ALSA configuration when it starts, so the whole network (login
server, supernode, both agents, the four card threads) runs in a child process started
with ``ALSA_CONFIG_PATH``; the test checks what the loudspeakers recorded. A second
call carries espeak-ng's speech into alice's microphone and scores, with wide-band
PESQ (bench/voice.py), what bob's loudspeaker played.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bench import voice
from edge.client.config import read
from edge.errors import ConfigError
from edge.media import tones
from edge.media.pipeline import FRAME_BYTES
from edge.runtime.control import request
from tests.test_agent import TIMEOUT, _until_active, _until_ended, network, run_uv
from tests.test_agent_audio import config_with
from tests.test_media_sound import TICK, Mic, Speaker, dominated, on_test_card

ALICE_HZ, BOB_HZ = 600.0, 1000.0
"""The tones each side's microphone hears: those :func:`dominated` tells apart."""
HEARD = 2.5
"""Seconds each loudspeaker records before the hang-up."""
T = TypeVar("T")


def test_a_tone_into_one_agents_microphone_comes_out_of_the_others_loudspeaker(
    tmp_path: Path,
) -> None:
    done = _in_child(tmp_path, "child")
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"alice": True, "bob": True}
    for name, other in (("alice", BOB_HZ), ("bob", ALICE_HZ)):
        heard = (tmp_path / f"{name}-heard.raw").read_bytes()
        assert tones.heard(heard, [ALICE_HZ, BOB_HZ]) == [other]
        # Most of the recording is the other side's tone: the rest is the call's start.
        seconds = dominated(heard, other) * len(heard) / (2 * tones.RATE)
        assert seconds >= 0.6 * HEARD, (name, seconds)


def _in_child(tmp_path: Path, function: str) -> subprocess.CompletedProcess[str]:
    """Run ``function`` of this module with ``tmp_path`` on the test card with alice's
    and bob's devices; it must succeed."""
    return on_test_card(
        tmp_path, ["alice", "bob"], f"{__name__}:{function}", str(tmp_path), timeout=180
    )


def child(argv: list[str]) -> None:
    tmp = Path(argv[0])
    mics = {
        name: Mic(tmp / f"{name}-mic.fifo", tones.RATE, tones.tone(frequency, 1.0))
        for name, frequency in (("alice", ALICE_HZ), ("bob", BOB_HZ))
    }
    speakers = {name: Speaker(tmp / f"{name}-spk.fifo", tones.RATE) for name in mics}
    calls = _on_cards([*mics.values(), *speakers.values()], _call(tmp, _listen(speakers)))
    for name, speaker in speakers.items():
        (tmp / f"{name}-heard.raw").write_bytes(speaker.heard())
    print(json.dumps(calls))


def _on_cards(cards: list[Mic | Speaker], call: Coroutine[Any, Any, T]) -> T:
    """Run ``call`` with ``cards`` plugged in, unplugging them afterwards."""
    for card in cards:
        card.plug()
    try:
        return run_uv(call)
    finally:
        for card in cards:
            card.stop()


async def _listen(speakers: dict[str, Speaker]) -> None:
    for speaker in speakers.values():
        # Recording starts when the loudspeaker opens, a little after the call.
        assert await asyncio.to_thread(speaker.wait_for_seconds, HEARD, 2 * TIMEOUT)


async def _call(tmp: Path, during: Coroutine[Any, Any, None]) -> dict[str, bool]:
    """alice calls bob, who answers by himself; ``during`` runs once the call is active
    at both ends, then alice hangs up."""
    async with network(tmp) as net:
        home = await net.home()
        configs = {
            name: replace(
                net.agent_config(name, [home]), capture=f"{name}-mic", playback=f"{name}-spk"
            )
            for name in ("alice", "bob")
        }
        configs["bob"] = replace(configs["bob"], auto_answer=frozenset({"alice"}))
        agents = {name: await net.agent(config) for name, config in configs.items()}
        placed = await request(configs["alice"].control_socket, "call", {"user": "bob"})
        assert placed["ok"], placed
        for agent in agents.values():
            await asyncio.wait_for(_until_active(agent), TIMEOUT)
        await during
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


# -- speech through the sound devices, scored ---------------------------------------------

SPEECH_FLOOR = 3.6
"""PESQ-WB of the speech bob's loudspeaker played, against what alice's microphone heard.
Measured 4.00 to 4.04 over five runs (the same speech scores 4.2-4.3 through WAV
files): the call's 20 ms tick keeps a fixed grid, so the sound cards and the call run
at one rate and no frame slips between them. (While the tick re-armed after its own
work it ran at 20.76 ms, the cards' rings dropped and padded a frame every second or
so, and the score was 1.6-2.0.)"""
AFTER_SPEECH = 2.0
"""Seconds bob's loudspeaker records after the speech would have ended, for the way."""


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install)")
def test_speech_into_one_agents_microphone_scores_at_the_others_loudspeaker(
    tmp_path: Path,
) -> None:
    pytest.importorskip("pesq", reason="the pesq package scores the speech")
    spoken = voice.speech()
    (tmp_path / "spoken.raw").write_bytes(spoken)
    _in_child(tmp_path, "speech_child")
    heard = (tmp_path / "bob-heard.raw").read_bytes()
    reference = spoken + bytes(voice.TAIL_FRAMES * FRAME_BYTES)
    score = voice.pesq_wb(reference, voice.aligned(reference, heard))
    assert score >= SPEECH_FLOOR, score


def speech_child(argv: list[str]) -> None:
    """The call of the speech test, in the child process that has the test card."""
    tmp = Path(argv[0])
    quiet = bytes(FRAME_BYTES)
    mics = {name: Mic(tmp / f"{name}-mic.fifo", tones.RATE, quiet) for name in ("alice", "bob")}
    speakers = {name: Speaker(tmp / f"{name}-spk.fifo", tones.RATE) for name in mics}
    spoken = (tmp / "spoken.raw").read_bytes()
    talk = _speak(mics["alice"], speakers["bob"], spoken)
    _on_cards([*mics.values(), *speakers.values()], _call(tmp, talk))
    (tmp / "bob-heard.raw").write_bytes(speakers["bob"].heard())


async def _speak(mic: Mic, speaker: Speaker, spoken: bytes) -> None:
    """Speak once bob's loudspeaker plays, and wait long enough after for the speech to
    come out of it; the silence after it keeps the microphone from repeating it."""
    assert await asyncio.to_thread(speaker.sounding.wait, TIMEOUT)
    started = len(speaker.recordings[-1]) / speaker.chunk * TICK
    mic.hear(spoken + bytes(len(spoken)))
    seconds = started + len(spoken) / (2 * tones.RATE) + AFTER_SPEECH
    assert await asyncio.to_thread(speaker.wait_for_seconds, seconds, 2 * TIMEOUT + seconds)

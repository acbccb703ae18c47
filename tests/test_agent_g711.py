"""G.711 between two real agents on loopback: a device that allows only A-law makes the call
A-law, a tone file crosses it into the other side's recording, and status says so; and the
``[audio] codecs`` key that restricts a device's codecs."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge.client.agent import Agent
from edge.client.config import AgentConfig, read
from edge.errors import ConfigError
from edge.media import tones
from edge.media.wav import FRAME_BYTES, read_wav, write_wav
from edge.runtime.control import request
from edge.wire.messages import Codec
from tests.test_agent import TIMEOUT, _calls, _until_active, _until_ended, network, run_uv
from tests.test_agent_audio import CONFIG, _until_received

ALICE_HZ, BOB_HZ = 600.0, 1300.0
FRAMES = 75


ALL = (Codec.OPUS, Codec.PCMU, Codec.PCMA)


@pytest.mark.parametrize(
    ("caller_codecs", "callee_codecs", "negotiated"),
    [
        # The callee allows only A-law: the caller's Opus, offered first, is passed over.
        (ALL, (Codec.PCMA,), "pcma"),
        # The caller prefers μ-law: the callee, allowing all, takes the caller's first.
        ((Codec.PCMU, Codec.OPUS), ALL, "pcmu"),
    ],
    ids=["callee-only-pcma", "caller-prefers-pcmu"],
)
def test_a_g711_call_is_negotiated_carries_a_tone_and_says_so(
    tmp_path: Path,
    caller_codecs: tuple[Codec, ...],
    callee_codecs: tuple[Codec, ...],
    negotiated: str,
) -> None:
    plays = {"alice": ALICE_HZ, "bob": BOB_HZ}
    for name, frequency in plays.items():
        write_wav(tmp_path / f"{name}-plays.wav", tones.tone(frequency, 1.0))
    statuses: list[dict[str, Any]] = []

    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            caller = replace(
                with_files(net.agent_config("alice", [home]), tmp_path), codecs=caller_codecs
            )
            callee = replace(
                with_files(net.agent_config("bob", [home]), tmp_path),
                auto_answer=frozenset({"alice"}),
                codecs=callee_codecs,
            )
            agents = [await net.agent(config) for config in (caller, callee)]
            assert (await request(caller.control_socket, "call", {"user": "bob"}))["ok"]
            for wait in (_until_active, lambda agent: _until_received(agent, FRAMES)):
                await asyncio.gather(*(asyncio.wait_for(wait(a), TIMEOUT) for a in agents))
            for config in (caller, callee):
                statuses.append((await request(config.control_socket, "status"))["result"])
            assert (await request(caller.control_socket, "hangup"))["ok"]
            await asyncio.wait_for(_until_ended(agents[1]), TIMEOUT)

    run_uv(main())
    for status in statuses:
        (call,) = status["calls"]
        sound = call["audio"]
        assert (sound["codec"], sound["bitrate_kbps"], sound["copies"]) == (negotiated, 64.0, 0)
        assert sound["capture"] == sound["playback"] == {"kind": "file"}
        assert call["loss"] == 0
    for name, other in (("alice", BOB_HZ), ("bob", ALICE_HZ)):
        rate, pcm = read_wav(tmp_path / f"{name}-heard.wav")
        assert rate == 16000 and len(pcm) >= FRAMES * FRAME_BYTES
        assert tones.heard(pcm, list(plays.values())) == [other]
        assert share(pcm, other, list(plays.values())) >= 0.8


def with_files(config: AgentConfig, folder: Path) -> AgentConfig:
    """The device plays ``NAME-plays.wav`` into its calls and records them to
    ``NAME-heard.wav``, in ``folder``."""
    name = config.user_id
    return replace(
        config,
        capture=f"file:{folder / f'{name}-plays.wav'}",
        playback=f"file:{folder / f'{name}-heard.wav'}",
    )


def share(pcm: bytes, frequency: float, candidates: list[float]) -> float:
    """The share of 40 ms windows of ``pcm`` that ``frequency`` holds, among ``candidates``."""
    windows = [memoryview(pcm[i : i + 1280]).cast("h") for i in range(0, len(pcm) - 1279, 1280)]
    found = [tones.strongest(window, candidates) for window in windows]
    return sum(f is not None and f[0] == frequency for f in found) / max(1, len(found))


def test_a_call_between_devices_with_no_codec_in_common_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            alice_config = replace(net.agent_config("alice", [home]), codecs=(Codec.PCMU,))
            bob_config = replace(
                net.agent_config("bob", [home]),
                auto_answer=frozenset({"alice"}),
                codecs=(Codec.OPUS, Codec.PCMA),
            )
            alice = await net.agent(alice_config)
            bob = await net.agent(bob_config)
            placed = await request(alice_config.control_socket, "call", {"user": "bob"})
            assert placed["ok"], placed
            for agent in (alice, bob):
                await asyncio.wait_for(_until_called_and_ended(agent), TIMEOUT)
            # Bob refuses it (an error of the caller's offer), Alice's call fails.
            ended = {}
            for config in (alice_config, bob_config):
                status = (await request(config.control_socket, "status"))["result"]
                (call,) = status["calls"]
                assert (call["state"], call["frames_received"], call["audio"]) == ("ended", 0, None)
                ended[config.user_id] = call["reason"]
            assert ended == {"alice": "failed", "bob": "error"}

    run_uv(main())


async def _until_called_and_ended(agent: Agent) -> None:
    """Until the agent has had a call and every call of its has ended."""
    assert agent.calls is not None
    await agent.calls.wait_for(lambda: _is_called_and_ended(agent))


def _is_called_and_ended(agent: Agent) -> bool:
    calls = _calls(agent)
    return bool(calls) and all(call["state"] == "ended" for call in calls)


# -- the [audio] codecs key ----------------------------------------------------------------


def config_with(tmp_path: Path, codecs: str | None) -> Path:
    path = tmp_path / "agent.toml"
    text = CONFIG.replace("CAPTURE", "none").replace("PLAYBACK", "none")
    if codecs is not None:
        text += f"codecs = {codecs}\n"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("written", "codecs"),
    [
        (None, (Codec.OPUS, Codec.PCMU, Codec.PCMA)),
        ('["pcma"]', (Codec.PCMA,)),
        ('["pcmu", "opus"]', (Codec.PCMU, Codec.OPUS)),
    ],
)
def test_codecs_are_taken_in_the_order_written(
    tmp_path: Path, written: str | None, codecs: tuple[Codec, ...]
) -> None:
    assert read(config_with(tmp_path, written)).codecs == codecs


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ('["opus", "g729"]', 'unknown codec \'g729\': expected "opus", "pcmu", "pcma"'),
        ('["OPUS"]', "unknown codec 'OPUS'"),
        ("[]", "expected at least one codec, got none"),
        ('["pcmu", "pcmu"]', "a codec is named twice in ['pcmu', 'pcmu']"),
        ('["opus", "pcmu", "pcma", "opus"]', "expected at most 3 strings, got 4"),
        ('"opus"', "key 'audio.codecs': expected an array of strings"),
        ("[1]", "key 'audio.codecs[0]': expected a string, got an integer"),
    ],
)
def test_a_wrong_codec_list_names_the_key_and_why(
    tmp_path: Path, written: str, reason: str
) -> None:
    path = config_with(tmp_path, written)
    with pytest.raises(ConfigError) as raised:
        read(path)
    text = str(raised.value)
    assert text.startswith(f"{path}:13: key 'audio.codecs"), text
    assert reason in text

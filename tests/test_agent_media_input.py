"""Bad media from a real peer, during a real call between two agents on loopback.

The caller's own session with the callee (its :class:`~edge.client.peers.Peers` and
endpoint, the keys the handshake made) sends crafted MEDIA_FRAMEs into the call beside
the real stream: undecodable and truncated payloads, empty and oversized ones, a frame
several times over, frames in a codec the call did not negotiate, MEDIA_FRAME messages
whose own fields are wrong, and a flood of thousands of frames in a burst; a stranger
sends datagrams for the session under a key of its own. After each, the callee's call
is still active, its jitter buffer within its cap, every case counted in its status,
and the caller's tone goes on into the callee's recording.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from edge.client.agent import Agent
from edge.crypto.transport import DatagramTransport
from edge.media import tones
from edge.media.jitter import JitterBuffer
from edge.media.pipeline import CallAudio, Silence, jitter_buffer, silent_payload
from edge.media.wav import FRAME_BYTES, WavSource, read_wav, write_wav
from edge.runtime.control import request
from edge.wire import hot
from edge.wire.messages import HEADER_SIZE, MEDIA_FIXED, MEDIA_PAYLOAD_MAX, Codec, MediaFlag
from tests.test_agent import TIMEOUT, _calls, _until_active, _until_ended, network, run_uv
from tests.test_agent_g711 import share

TONE_HZ = 900.0
OTHERS = [500.0, 700.0, 1300.0]
"""Frequencies nobody plays: the recording's windows must not come out as one of them."""
FLOOD = 3000
CHUNK = 100
"""Frames of the flood sent before the callee has read them: what one socket buffer holds
on loopback, so the frames reach the pipeline rather than the kernel's drop counter."""
CAPACITY_MS = jitter_buffer(JitterBuffer).capacity * 20
"""The cap of a call's jitter buffer, in milliseconds of 20 ms frames."""
UNDECODABLE = b"\x1b\xff\xff"
"""An Opus packet libopus refuses: code 3, 63 frames of 60 ms."""


@dataclass
class Crafter:
    """The caller's session with the callee, sending frames of our making in it."""

    agent: Agent
    session: int
    codec: Codec

    def send(
        self, sequence: int, payload: bytes, *, codec: Codec | None = None, flags: int = 0
    ) -> None:
        assert self.agent.peers is not None
        self.agent.peers.core.endpoint.send_media(
            self.session, stream_id=0, codec=codec or self.codec, flags=flags,
            sequence=sequence & 0xFFFF, timestamp=(sequence * 320) & 0xFFFFFFFF, payload=payload,
        )  # fmt: skip
        self.agent.peers.adapter.poke()

    def send_message(self, plaintext: bytes) -> None:
        """A whole MEDIA_FRAME message of our making, sealed with the session's keys."""
        assert self.agent.peers is not None
        endpoint = self.agent.peers.core.endpoint
        endpoint._seal_and_queue(endpoint._established(self.session), plaintext)
        self.agent.peers.adapter.poke()


@pytest.mark.parametrize("codec", [Codec.OPUS, Codec.PCMU], ids=["opus", "pcmu"])
def test_bad_media_from_a_real_peer_is_counted_and_the_call_goes_on(
    tmp_path: Path, codec: Codec
) -> None:
    write_wav(tmp_path / "tone.wav", tones.tone(TONE_HZ, 1.0))
    heard = tmp_path / "heard.wav"
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            alice_config = replace(
                net.agent_config("alice", [home]), capture=f"file:{tmp_path / 'tone.wav'}"
            )
            bob_config = replace(
                net.agent_config("bob", [home]),
                auto_answer=frozenset({"alice"}),
                playback=f"file:{heard}",
                codecs=(codec,),
            )
            alice = await net.agent(alice_config)
            bob = await net.agent(bob_config)
            assert (await request(alice_config.control_socket, "call", {"user": "bob"}))["ok"]
            for agent in (alice, bob):
                await asyncio.wait_for(_until_active(agent), TIMEOUT)
            await asyncio.wait_for(_until_received(bob, _received(bob) + 25), TIMEOUT)
            assert alice.peers is not None and bob.peers is not None
            session = alice.peers.session_of(("bob", "desk"))
            assert session is not None
            crafter = Crafter(alice, session, codec)
            # The caller numbers its frames 1, 2, 3...: the next real one is this.
            coming = _call(alice)["frames_sent"] + 1
            _bad_payloads(crafter, coming + 2, codec, tmp_path)
            _duplicates(crafter, coming + 4)
            _wrong_codec(crafter, coming - 1, codec)
            _bad_messages(crafter, coming - 1)
            _wrong_key(bob, alice_config.user_id)
            await asyncio.wait_for(_until_received(bob, _received(bob) + 25), TIMEOUT)
            seen["before_flood"] = _call(bob)
            seen["held_ms"] = await _flood(crafter, bob, _call(alice)["frames_sent"] + 5)
            seen["after_flood"] = _call(bob)
            # Only the real stream from here: three seconds of it, of which the flood's
            # last frames and the buffer's refill take the first half second or so.
            await asyncio.wait_for(_until_received(bob, _received(bob) + 150), TIMEOUT)
            seen["after"] = _call(bob)
            seen["status"] = (await request(bob_config.control_socket, "status"))["result"]
            assert (await request(alice_config.control_socket, "hangup"))["ok"]
            await asyncio.wait_for(_until_ended(bob), TIMEOUT)

    run_uv(main())
    before, after = seen["before_flood"], seen["after"]
    for call in (before, seen["after_flood"], after):
        assert call["state"] == "active"
        assert call["audio"]["codec"] == codec.name.lower()
        assert (call["audio"]["capture"], call["audio"]["playback"]) == (
            {"kind": "none"},
            {"kind": "file"},
        )
    dropped = before["audio"]["dropped"]
    if codec is Codec.OPUS:
        # The undecodable packet, plain and flagged (its padding holds no block either),
        # played when its turn came; a protected payload cut short; an empty one.
        assert dropped["undecodable"] >= 2 and dropped["bad_redundancy"] == 2
        assert dropped["oversized"] == 1 and dropped["truncated"] == 0
    else:
        assert (dropped["oversized"], dropped["truncated"]) == (3, 2)
        assert dropped["undecodable"] == dropped["bad_redundancy"] == 0
    assert dropped["wrong_codec"] == 5
    # Three of our copies, and the real frame when it came.
    assert dropped["duplicate"] >= 3
    drops = seen["status"]["drops"]["port"]
    assert drops.get("TRUNCATED", 0) >= 1 and drops.get("OVERSIZED", 0) >= 1
    assert drops.get("MALFORMED", 0) >= 1 and drops.get("BAD_MAC", 0) >= 50
    # The flood: held within the cap throughout, the excess counted.
    assert max(seen["held_ms"]) <= CAPACITY_MS
    assert after["audio"]["dropped"]["overflow"] - dropped["overflow"] >= FLOOD // 2
    # The caller's tone went on into the recording, and is what its end holds.
    _, pcm = read_wav(heard)
    assert share(pcm[-50 * FRAME_BYTES :], TONE_HZ, [TONE_HZ, *OTHERS]) >= 0.8


def _call(agent: Agent) -> dict[str, Any]:
    (call,) = _calls(agent)
    return call


def _received(agent: Agent) -> int:
    frames: int = _call(agent)["frames_received"]
    return frames


async def _until_received(agent: Agent, frames: int) -> None:
    assert agent.calls is not None
    await agent.calls.wait_for(lambda: _received(agent) >= frames)


def _bad_payloads(crafter: Crafter, ahead: int, codec: Codec, tmp_path: Path) -> None:
    if codec is Codec.OPUS:
        # Two and three frames ahead of the stream: played when their turn comes, and
        # libopus refuses them.
        crafter.send(ahead, UNDECODABLE)
        crafter.send(ahead + 1, UNDECODABLE, flags=MediaFlag.REDUNDANCY)
        # Counted as they come.
        protected = _real_payload(tmp_path)
        crafter.send(ahead - 5, protected[: len(protected) // 2], flags=MediaFlag.REDUNDANCY)
        crafter.send(ahead - 5, b"")
    else:
        crafter.send(ahead, b"")
        crafter.send(ahead, bytes(161))
        crafter.send(ahead, bytes(MEDIA_PAYLOAD_MAX))
        crafter.send(ahead, bytes(159))
        crafter.send(ahead, b"\xff")


def _real_payload(tmp_path: Path) -> bytes:
    """An Opus payload as a sender makes it, carrying copies of earlier frames."""
    talker = CallAudio(WavSource(tmp_path / "tone.wav"), Silence())
    try:
        payloads = [talker.payload() for _ in range(5)]
    finally:
        talker.close()
    return payloads[-1]


def _duplicates(crafter: Crafter, sequence: int) -> None:
    for _ in range(4):
        crafter.send(sequence, silent_payload(crafter.codec))


def _wrong_codec(crafter: Crafter, sequence: int, codec: Codec) -> None:
    other = Codec.PCMA if codec is Codec.OPUS else Codec.OPUS
    for back in range(5):
        crafter.send(sequence - back, silent_payload(other), codec=other)


def _bad_messages(crafter: Crafter, sequence: int) -> None:
    """MEDIA_FRAME messages whose own fields are wrong: refused by the session layer."""
    good = hot.pack_media(0, crafter.codec, 0, sequence, sequence * 320, bytes(160))
    crafter.send_message(good[:-5])  # shorter than its header says
    unknown_codec = bytearray(good)
    unknown_codec[HEADER_SIZE + 1] = 99
    crafter.send_message(bytes(unknown_codec))
    payload = bytes(MEDIA_PAYLOAD_MAX + 100)  # over the cap, and its header says so
    length = (MEDIA_FIXED + len(payload)).to_bytes(2, "big")
    crafter.send_message(
        good[:6] + length + good[HEADER_SIZE : HEADER_SIZE + MEDIA_FIXED] + payload
    )


def _wrong_key(callee: Agent, caller: str) -> None:
    """Datagrams for the callee's session with the caller, sealed under a key of our own."""
    assert callee.peers is not None and callee.port is not None
    index = callee.peers.session_of((caller, "desk"))
    assert index is not None
    # Counters far ahead of the session's own, so the replay window lets them through
    # to the MAC check.
    stranger = DatagramTransport(os.urandom(32), os.urandom(32), first_counter=100_000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for sequence in range(50):
            media = hot.pack_media(0, Codec.OPUS, 0, sequence, sequence * 320, UNDECODABLE)
            counter, sealed = stranger.seal(media)
            datagram = hot.pack_transport(index, counter, sealed)
            sock.sendto(datagram, ("127.0.0.1", callee.port.port))


async def _flood(crafter: Crafter, callee: Agent, first: int) -> list[int]:
    """:data:`FLOOD` frames numbered on from ``first``, in bursts the callee reads whole;
    what the callee's jitter buffer held after each burst."""
    held = []
    for start in range(first, first + FLOOD, CHUNK):
        waiting = _until_received(callee, _received(callee) + CHUNK)
        for sequence in range(start, start + CHUNK):
            crafter.send(sequence, silent_payload(crafter.codec))
        await asyncio.wait_for(waiting, TIMEOUT)
        held.append(_call(callee)["audio"]["buffered_ms"])
    return held

"""Resumable files between agents on loopback, with a real login server and supernode:
a transfer broken part-way by stopping the receiving agent goes on from the offset it
saved; a changed file, a damaged state file or a part changed on disk start over and
still arrive exact; a wrong file is never reported as received."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.client.agent import Agent
from edge.client.config import AgentConfig
from edge.client.files import (
    FileReceiver,
    Offer,
    TransferFileError,
    TransferState,
    load_transfer,
    save_transfer,
)
from edge.client.transfers import MAX_SAVED, STATE_FOLDER, TransferDriver, transfer_id
from edge.errors import EdgeError
from edge.runtime.control import request
from edge.wire.codes import MsgType
from tests.test_agent import TIMEOUT, Network, network, run_uv

SIZE = 6 << 20
BREAK_AT = 1 << 20
"""Bytes the receiver must hold before it is stopped: well short of the file."""
SEND_TIMEOUT = 60.0


# -- the pieces, without the network


def test_the_file_id_is_stable_for_a_resend_and_differs_for_anything_else() -> None:
    digest = hashlib.sha256(b"content").digest()
    same = transfer_id("jim/desk", "kim/desk", "a.bin", digest)
    assert same == transfer_id("jim/desk", "kim/desk", "a.bin", digest) and len(same) == 16
    others = {
        transfer_id("jim/desk", "kim/desk", "a.bin", hashlib.sha256(b"changed").digest()),
        transfer_id("jim/desk", "kim/desk", "b.bin", digest),
        transfer_id("jim/desk", "kim/door", "a.bin", digest),
        transfer_id("jim/door", "kim/desk", "a.bin", digest),
        # Lengths are part of what is hashed: moving a character between fields is another id.
        transfer_id("jim/desk", "kim/des", "ka.bin", digest),
    }
    assert same not in others and len(others) == 5


def test_a_part_changed_after_the_save_is_not_trusted() -> None:
    data = os.urandom(30_000)
    offer = Offer(bytes(16), "a.bin", len(data), hashlib.sha256(data).digest(), 1000)
    part = bytearray()

    def write(offset: int, chunk: bytes) -> None:
        part[offset : offset + len(chunk)] = chunk

    first = FileReceiver(offer, write)
    first.accept(0.0)
    for offset in range(0, 12_000, 1000):
        body = {"file_id": offer.file_id, "offset": offset, "data": data[offset : offset + 1000]}
        first.receive(MsgType.FILE_CHUNK, body, 0.0)
    saved = first.transfer_state()
    assert saved.offset == 12_000 and saved.prefix_sha256 == hashlib.sha256(part).digest()

    def read(offset: int, n: int) -> bytes:
        return bytes(part[offset : offset + n])

    resumed = FileReceiver(offer, lambda offset, chunk: None, saved, read_back=read)
    assert resumed.offset == 12_000 and resumed.counters["part changed"] == 0
    part[5] ^= 0x01  # same length, one bit different: only the saved prefix hash sees it
    restarted = FileReceiver(offer, lambda offset, chunk: None, saved, read_back=read)
    assert restarted.offset == 0 and restarted.counters["part changed"] == 1


def test_the_saved_state_keeps_the_prefix_hash_and_the_peer(tmp_path: Path) -> None:
    offer = Offer(bytes(16), "a.bin", 1000, bytes(32), 100)
    state = TransferState(offer, 300, hashlib.sha256(b"x").digest(), "jim/desk")
    save_transfer(state, tmp_path / "a.json")
    assert load_transfer(tmp_path / "a.json") == state


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"prefix_sha256": "00"}, "prefix_sha256"),
        ({"prefix_sha256": 7}, "prefix_sha256"),
        ({"peer": "jim\n/desk"}, "control characters"),
        ({"peer": "j" * 600}, "at most"),
        ({"peer": ["jim"]}, "peer"),
    ],
)
def test_a_saved_state_with_a_bad_prefix_or_peer_is_refused(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "a.json"
    save_transfer(TransferState(Offer(bytes(16), "a.bin", 1000, bytes(32), 100), 300), path)
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(TransferFileError, match=problem):
        load_transfer(path)


# -- between agents


def test_a_transfer_broken_part_way_resumes_at_the_saved_offset(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            jim, kim, sender, receiver = await _pair(net)
            source, payload = _firmware(tmp_path)
            first = asyncio.create_task(_send(jim, source))
            saved = await _stop_part_way(receiver, kim)
            assert BREAK_AT <= saved < SIZE

            receiver = await net.agent(kim, password=None)
            listing = (await request(kim.control_socket, "files"))["result"]
            assert listing["partial"] == [
                {"name": "firmware.bin", "size": SIZE, "bytes": saved, "peer": "jim/desk",
                 "state": "stalled"}
            ]  # fmt: skip
            again = await _send(jim, source)
            assert again["result"] == {"sent": "firmware.bin", "to": "kim/desk"}, again
            # The first send says how far the receiver had acknowledged (acknowledgements in
            # flight as it stopped never came).
            broken = re.search(
                r"stopped at (\d+) of (\d+) bytes: (.*);", (await first)["error"]["message"]
            )
            assert broken is not None and int(broken[2]) == SIZE
            assert 0 < int(broken[1]) <= saved and broken[3].startswith("replaced by a new send")

            # The second send started at the saved offset and sent little more than the rest.
            assert sender.transfers is not None
            ended = sender.transfers.sent[-1]
            assert ended["sent"] is True and ended["from"] == saved
            assert ended["bytes_sent"] < SIZE - saved + (256 << 10)
            _assert_arrived(kim, receiver, "firmware.bin", payload)
            assert receiver.transfers is not None
            assert receiver.transfers.counters["resumed"] == 1

    run_uv(main())


def test_a_sender_stopped_part_way_goes_on_where_the_receiver_is(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            jim, kim, sender, receiver = await _pair(net)
            source, payload = _firmware(tmp_path)
            first = asyncio.create_task(_send(jim, source))
            transfers = receiver.transfers
            assert transfers is not None
            await asyncio.wait_for(transfers.wait_for(_holds(transfers, BREAK_AT)), TIMEOUT)
            await sender.stop()
            with contextlib.suppress(EdgeError):
                await first  # the agent stops with the request open: no answer
            (partial,) = transfers.listing()["partial"]
            held = partial["bytes"]
            assert BREAK_AT <= held < SIZE and partial["peer"] == "jim/desk"

            sender = await net.agent(jim, password=None)
            again = await _send(jim, source)
            assert again["result"] == {"sent": "firmware.bin", "to": "kim/desk"}, again
            assert sender.transfers is not None
            ended = sender.transfers.sent[-1]
            assert ended["from"] >= held and ended["bytes_sent"] < SIZE - held + (256 << 10)
            _assert_arrived(kim, receiver, "firmware.bin", payload)
            assert transfers.counters["resumed in a new session"] == 1

    run_uv(main())


def _changed_file(source: Path, receiver: AgentConfig, saved: int) -> bytes:
    """Another file under the same name: another file_id, and the saved state is not its."""
    changed = os.urandom(SIZE // 2)
    source.write_bytes(changed)
    return changed


def _damaged_state(source: Path, receiver: AgentConfig, saved: int) -> bytes:
    (state,) = _state_files(receiver)
    state.write_bytes(b'{"format": "edge file transfer", "offset": ')
    return source.read_bytes()


def _tampered_part(source: Path, receiver: AgentConfig, saved: int) -> bytes:
    """One byte of what was saved flipped: same length, so only the prefix hash sees it."""
    part = receiver.state_dir / "downloads" / "firmware.bin.part"
    with part.open("r+b") as tamper:
        tamper.seek(saved // 2)
        byte = tamper.read(1)
        tamper.seek(saved // 2)
        tamper.write(bytes([byte[0] ^ 0xFF]))
    return source.read_bytes()


@pytest.mark.parametrize(
    ("spoil", "counter", "warning"),
    [
        (_changed_file, "saved state of another file", "not the file saved part-way"),
        (_damaged_state, "saved state damaged", "not JSON"),
        (_tampered_part, "part not as saved", "not what was saved"),
    ],
    ids=["changed-file", "damaged-state", "tampered-part"],
)
def test_what_does_not_match_the_saved_state_starts_over_and_arrives_right(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    spoil: Callable[[Path, AgentConfig, int], bytes],
    counter: str,
    warning: str,
) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            jim, kim, sender, receiver = await _pair(net)
            source, _ = _firmware(tmp_path)
            first = asyncio.create_task(_send(jim, source))
            saved = await _stop_part_way(receiver, kim)
            expected = spoil(source, kim, saved)  # while the receiver is stopped

            receiver = await net.agent(kim, password=None)
            again = await _send(jim, source)
            assert again["result"] == {"sent": "firmware.bin", "to": "kim/desk"}, again
            assert "replaced by a new send" in (await first)["error"]["message"]
            assert sender.transfers is not None and sender.transfers.sent[-1]["from"] == 0
            _assert_arrived(kim, receiver, "firmware.bin", expected)
            assert receiver.transfers is not None
            counters = receiver.transfers.counters
            assert counters[counter] == 1 and counters["resumed"] == counters["corrupt"] == 0
            assert _warned(caplog, warning)

    with caplog.at_level(logging.WARNING, logger="edge.client.transfers"):
        run_uv(main())


def test_saved_transfers_are_capped_the_oldest_going_with_its_part(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            jim, kim = net.agent_config("jim", [home]), net.agent_config("kim", [home])
            downloads = kim.state_dir / "downloads"
            (downloads / STATE_FOLDER).mkdir(parents=True)
            for n in range(MAX_SAVED):
                offer = Offer(bytes(16), f"old-{n}.bin", 100, bytes(32), 10)
                path = downloads / STATE_FOLDER / f"{n:032x}.json"
                save_transfer(TransferState(offer, 50, peer="lee/desk"), path)
                os.utime(path, (1_000_000 + n, 1_000_000 + n))  # old-0 is the oldest
                (downloads / f"old-{n}.bin.part").write_bytes(bytes(50))
            (downloads / STATE_FOLDER / f"{MAX_SAVED:032x}.json").write_bytes(b"\xff")
            await net.agent(jim)
            receiver = await net.agent(kim)
            listing = (await request(kim.control_socket, "files"))["result"]
            assert len(listing["partial"]) == MAX_SAVED  # the unreadable one is not shown
            assert {p["state"] for p in listing["partial"]} == {"stalled"}

            source, payload = _firmware(tmp_path)
            sent = await _send(jim, source)
            assert sent["result"] == {"sent": "firmware.bin", "to": "kim/desk"}, sent
            assert receiver.transfers is not None
            # Room for its state: 33 files on disk, so the two oldest went, parts and all.
            assert receiver.transfers.counters["saved state dropped for room"] == 2
            assert (downloads / "firmware.bin").read_bytes() == payload
            assert not (downloads / "old-0.bin.part").exists()
            assert not (downloads / "old-1.bin.part").exists()
            assert (downloads / "old-2.bin.part").exists()
            assert len(_state_files(kim)) == MAX_SAVED - 1
            left = {p["name"] for p in receiver.transfers.listing()["partial"]}
            assert len(left) == MAX_SAVED - 2 and "old-1.bin" not in left

    run_uv(main())


# -- helpers


async def _pair(net: Network) -> tuple[AgentConfig, AgentConfig, Agent, Agent]:
    home = await net.home()
    jim = net.agent_config("jim", [home])
    kim = net.agent_config("kim", [home])
    return jim, kim, await net.agent(jim), await net.agent(kim)


def _firmware(folder: Path) -> tuple[Path, bytes]:
    """A file of :data:`SIZE` random bytes to send, and its bytes."""
    payload = os.urandom(SIZE)
    source = folder / "firmware.bin"
    source.write_bytes(payload)
    return source, payload


async def _send(config: AgentConfig, path: Path) -> dict[str, Any]:
    args = {"user": "kim", "path": str(path)}
    return await request(config.control_socket, "send-file", args, timeout=SEND_TIMEOUT)


async def _stop_part_way(receiver: Agent, config: AgentConfig) -> int:
    """Stop ``receiver`` once it holds :data:`BREAK_AT` bytes of the file; the offset
    it saved on the way down."""
    transfers = receiver.transfers
    assert transfers is not None
    await asyncio.wait_for(transfers.wait_for(_holds(transfers, BREAK_AT)), TIMEOUT)
    await receiver.stop()
    await asyncio.wait_for(transfers.closed.wait(), TIMEOUT)
    assert not transfers.received
    (path,) = _state_files(config)
    state = load_transfer(path)
    assert state is not None and state.peer == "jim/desk"
    return state.offset


def _holds(transfers: TransferDriver, size: int) -> Callable[[], bool]:
    def holds() -> bool:
        return any(p["bytes"] >= size for p in transfers.listing()["partial"])

    return holds


def _state_files(config: AgentConfig) -> list[Path]:
    return sorted((config.state_dir / "downloads" / STATE_FOLDER).glob("*.json"))


def _assert_arrived(config: AgentConfig, receiver: Agent, name: str, payload: bytes) -> None:
    downloads = config.state_dir / "downloads"
    assert (downloads / name).read_bytes() == payload
    assert not (downloads / f"{name}.part").exists() and _state_files(config) == []
    assert receiver.transfers is not None
    listing = receiver.transfers.listing()
    assert listing["received"] == [{"name": name, "size": len(payload)}]
    assert listing["partial"] == []


def _warned(caplog: pytest.LogCaptureFixture, words: str) -> bool:
    return any(r.levelno == logging.WARNING and words in r.getMessage() for r in caplog.records)

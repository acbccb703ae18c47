"""Bad input at the device daemon, with a real login server, supernodes and agents: peers
whose certificates are revoked or expired are refused and ``edge ctl`` says which and why,
both ways round; what port P refuses during a call shows in ``edge ctl status``."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

from edge.client.agent import Agent
from edge.client.config import AgentConfig
from edge.client.login import Credentials, login
from edge.client.revocations import refresh
from edge.crypto.cert import issue
from edge.crypto.keys import key_id
from edge.overlay.presence import PresenceCandidate, make_presence, next_sequence
from edge.runtime.control import JsonObject, request
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.hot import pack_transport
from edge.wire.messages import CandidateKind, Transport, parse_certificate
from tests.test_agent import TIMEOUT, network, run_uv
from tests.test_agent import _calls as calls_of
from tests.test_agent import _until_active as until_active
from tests.test_agent import _until_frames as until_frames


async def _status(config: AgentConfig) -> JsonObject:
    answer = await request(config.control_socket, "status")
    assert answer["ok"], answer
    result: JsonObject = answer["result"]
    return result


async def _learn_revocations(agent: Agent) -> None:
    """The agent fetches the issuer's current list on a login session of its own, as
    at its next login, while its supernode has not heard of it yet (a supernode that
    has drops the revoked device's records at once, and nothing is left to refuse)."""
    config = agent.config
    who = Credentials(config.user_id, config.device_id, agent.keys)
    session = await login(config.login_address, config.server_key, who)
    try:
        await refresh(session, agent.revocations, key_id(config.issuer_key))
    finally:
        session.close()


def test_a_revoked_device_is_refused_when_called_and_when_it_calls(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            ann_config = net.agent_config("ann", [home])
            ben_config = net.agent_config("ben", [home])
            ann = await net.agent(ann_config)
            ben = await net.agent(ben_config)
            serial = parse_certificate(ben.certificate).tbs.serial
            # The operator revokes ben's desk phone (`edge login-server device revoke`).
            now = int(time.time())
            assert await asyncio.to_thread(net.store.revoke_device, "ben", "desk", now) == [serial]
            await _learn_revocations(ann)
            reason = f"certificate revoked (serial {serial})"

            called = await request(ann_config.control_socket, "call", {"user": "ben"})
            assert called["ok"] is False, called
            assert called["error"] == {"code": "FORBIDDEN", "message": f"ben/desk: {reason}"}
            # Not left in the mailbox either: the only device there is refused.
            sent = await request(ann_config.control_socket, "send", {"user": "ben", "text": "hi"})
            assert sent["error"] == {"code": "FORBIDDEN", "message": f"ben/desk: {reason}"}
            found = await request(ann_config.control_socket, "search", {"user": "ben"})
            assert found["result"]["devices"] == []
            assert [(r["peer"], r["reason"]) for r in found["result"]["refused"]] == [
                ("ben/desk", reason)
            ]
            status = await _status(ann_config)
            assert status["refused_count"] == 3
            assert [(r["peer"], r["reason"], r["direction"]) for r in status["refused"]] == [
                ("ben/desk", reason, "outgoing")
            ] * 3
            assert all(abs(r["at"] - time.time()) < TIMEOUT for r in status["refused"])

            # Ben has not heard of it and calls ann: her end refuses his certificate.
            assert ann.peers is not None
            await request(ben_config.control_socket, "call", {"user": "ann"})
            await asyncio.wait_for(ann.peers.wait_for_refusals(4), TIMEOUT)
            status = await _status(ann_config)
            assert status["refused"][-1]["peer"] == "ben/desk"
            assert status["refused"][-1]["reason"] == reason
            assert status["refused"][-1]["direction"] == "incoming"
            assert status["drops"]["signalling_in"]["CERT_REVOKED"] >= 1
            assert ann.peers.session_of(("ben", "desk")) is None, "no session with ben"

    run_uv(main())


def test_a_device_whose_record_carries_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            cy_config = net.agent_config("cy", [home])
            dan_config = net.agent_config("dan", [home])
            await net.agent(cy_config)
            dan = await net.agent(dan_config)
            # Its self-test's result makes it publish again: let that be done first.
            await asyncio.wait_for(dan.wait_for(lambda: dan.nat is not None), TIMEOUT)
            assert dan.link is not None and dan.port is not None
            # Dan's last record, signed 100 s before its certificate ran out: the holders
            # keep it (a record is judged as its certificate stood when it was signed) and
            # for 15 minutes it says "online", but no handshake can show that certificate.
            # (Its sequence is ahead of what dan's agent would publish in the next minute.)
            now = int(time.time())
            expired = issue(
                net.login.keys.issuer, serial=4242, user_id="dan", device_id="desk",
                sign_key=dan.keys.sign_public, dh_key=dan.keys.dh_public,
                not_before=now - 7200, not_after=now - 600,
            )  # fmt: skip
            host = ("127.0.0.1", dan.port.port)
            record = make_presence(
                dan.keys, expired, supernode=dan.link.supernode,
                supernode_key=dan.link.supernode_key, seq=next_sequence(dan.presence.seq, now + 60),
                candidates=[PresenceCandidate(CandidateKind.HOST, Transport.UDP, host, 1)],
                now=now - 700,
            )  # fmt: skip
            published = await dan.link.request(
                MsgType.PRESENCE_PUBLISH, {"record": record}, MsgType.PRESENCE_RESULT
            )
            assert published.body.code is ErrorCode.OK

            message = "dan/desk: certificate expired (serial 4242)"
            called = await request(cy_config.control_socket, "call", {"user": "dan"})
            assert called["error"] == {"code": "FORBIDDEN", "message": message}, called
            source = tmp_path / "note.txt"
            source.write_text("for dan")
            filed = await request(
                cy_config.control_socket, "send-file", {"user": "dan", "path": str(source)}
            )
            assert filed["error"] == {"code": "FORBIDDEN", "message": message}, filed
            status = await _status(cy_config)
            assert [(r["peer"], r["reason"]) for r in status["refused"]] == [
                ("dan/desk", "certificate expired (serial 4242)")
            ] * 2

    run_uv(main())


NOT_EDGE_NOR_STUN = 100
"""Datagrams whose first byte (0x80: RTP's range, RFC 7983) is neither edge nor STUN."""
REPLAYS = 10


def test_what_port_p_refuses_during_a_call_is_counted_in_status(tmp_path: Path) -> None:
    async def main() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            eli = net.agent_config("eli", [home])
            flo = replace(net.agent_config("flo", [home]), auto_answer=frozenset({"eli"}))
            await net.agent(eli)
            callee = await net.agent(flo)
            assert (await request(eli.control_socket, "call", {"user": "flo"}))["ok"]
            await asyncio.wait_for(until_active(callee), TIMEOUT)
            await asyncio.wait_for(until_frames(callee, 10), TIMEOUT)
            assert callee.port is not None
            session = callee.peers.session_of(("eli", "desk")) if callee.peers else None
            assert session is not None
            before = (await _status(flo))["drops"]
            target = ("127.0.0.1", callee.port.port)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spray:
                for size in range(NOT_EDGE_NOR_STUN):
                    spray.sendto(b"\x80" + os.urandom(size), target)
                for counter in range(REPLAYS):
                    # The call's session at counters it has had (10 frames and the call's
                    # signalling came in it): replays, which its window refuses.
                    spray.sendto(pack_transport(session, counter, os.urandom(40)), target)
                    # A session nobody holds.
                    spray.sendto(pack_transport(session ^ 1, counter, os.urandom(40)), target)
            frames = calls_of(callee)[0]["frames_received"]
            # The spray went out before these frames: by the time they are in, it was read.
            await asyncio.wait_for(until_frames(callee, frames + 25), TIMEOUT)
            after = (await _status(flo))["drops"]
            assert calls_of(callee)[0]["state"] == "active"

            def more(code: str) -> int:
                return int(after["port"].get(code, 0) - before["port"].get(code, 0))

            assert more("MALFORMED") >= NOT_EDGE_NOR_STUN
            assert more("UNKNOWN_SESSION") >= REPLAYS
            assert more("REPLAYED") >= REPLAYS
            assert set(after) == {
                "port", "socket_errors", "signalling_in", "signalling_out", "relay", "sessions"
            }  # fmt: skip

    run_uv(main())

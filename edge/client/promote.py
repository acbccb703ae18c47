"""The agent's promotion to supernode, driven: samples, dial-back tests, the role itself.

How it works: :class:`PromotionDriver` runs the device's
:class:`~edge.client.promotion.Promotion` policy. Every :data:`SAMPLE_INTERVAL`
it samples what the policy judges (uptime; the bandwidth the operator
declares in ``[policy] bandwidth_kbps``, since a device cannot measure its
line without loading it; CPU as the load average per core) and asks
supernodes of its host cache, on IP addresses it has no attestation from,
for dial-back tests: a UDP session to each (the login ladder's first rung),
DIALBACK_REQUEST in it, the probe caught on port P before the session layer
sees it (:attr:`~edge.client.port.PortCore.probes`), DIALBACK_CONFIRM back,
and the signed attestation from DIALBACK_RESULT handed to the policy.

When the policy says SUPERNODE, the device starts a supernode in its own
process (:class:`~edge.supernode.service.Supernode`, STUN, overlay, presence
and rendezvous; no relay, since it holds no relay secret) with its own
certified keys, at the address the dial-backs saw, bootstrapping from the
supernode it is attached to; when the policy demotes it, that supernode hands
its devices over and stops. ``edge ctl status`` shows the role and why.
"""

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.client.hostcache import HostCache
from edge.client.port import PortCore
from edge.client.promotion import (
    DialbackClient,
    Promotion,
    Role,
    RoleChanged,
    Sample,
)
from edge.client.uplink import Ladder, Link, UdpLink
from edge.crypto.keys import DeviceKeys
from edge.errors import EdgeError
from edge.runtime.config import write_atomic
from edge.sansio import Address
from edge.supernode.config import OverlayConfig, RelayConfig, SupernodeConfig
from edge.supernode.service import KEY_FILE, Supernode
from edge.wire import hot
from edge.wire.codes import MsgType
from edge.wire.messages import Message

_log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 30.0
MAX_DIALBACK_SESSIONS = 4


class PromotionDriver:
    """The agent's side of promotion; see the module docstring."""

    def __init__(
        self,
        promotion: Promotion,
        *,
        keys: DeviceKeys,
        certificate: bytes,
        issuer_key: bytes,
        state_dir: Path,
        port: int,
        bandwidth_bps: float,
        ladder: Ladder,
        cache: HostCache,
        core: PortCore,
        attached: Callable[[], Link | None],
    ) -> None:
        self.policy = promotion
        self.dialbacks = DialbackClient(port)
        self._keys, self._certificate, self._issuer = keys, certificate, issuer_key
        self._state = state_dir / "supernode"
        self._bandwidth = bandwidth_bps
        self._ladder, self._cache, self._core = ladder, cache, core
        self._attached = attached
        self._started = time.monotonic()
        self._links: dict[int, UdpLink] = {}
        self.supernode: Supernode | None = None
        self.serving = asyncio.Event()
        """Set while the device serves as a supernode."""
        core.probes = self._probe

    @property
    def interval(self) -> float:
        thresholds = self.policy.thresholds
        return max(0.2, min(SAMPLE_INTERVAL, thresholds.promote_hold / 4 or SAMPLE_INTERVAL))

    async def run(self) -> None:
        """Sample, ask for dial-backs, follow the role; until cancelled."""
        try:
            while True:
                await self.step()
                await asyncio.sleep(self.interval)
        finally:
            await self._stop_role()
            for link in self._links.values():
                link.close()

    async def step(self) -> None:
        now = asyncio.get_running_loop().time()
        self.policy.update(self._sample(), now)
        await self._ask_for_dialbacks(now)
        while (event := self.policy.next_event()) is not None:
            await self._role_changed(event)

    def _sample(self) -> Sample:
        cores = os.cpu_count() or 1
        return Sample(
            uptime=time.monotonic() - self._started,
            up_bps=self._bandwidth,
            down_bps=self._bandwidth,
            cpu=os.getloadavg()[0] / cores,
        )

    # -- dial-backs

    async def _ask_for_dialbacks(self, now: float) -> None:
        wanted = self.policy.dialbacks_wanted(now)
        if wanted <= 0:
            return
        counted = set(self.policy.counted_ips(now)) | {a[0] for a in self.dialbacks.pending_with()}
        for entry in self._cache.ranked(time.time(), _rng()):
            if wanted <= 0 or len(self._links) >= MAX_DIALBACK_SESSIONS:
                return
            address = entry.address
            if address[0] in counted:
                continue
            counted.add(address[0])
            with contextlib.suppress(EdgeError, OSError, TimeoutError):
                await self._ask(address, now)
                wanted -= 1

    async def _ask(self, address: Address, now: float) -> None:
        link = await self._ladder.udp(address)
        assert isinstance(link, UdpLink)
        self._links[link.index] = link
        link.on_message = lambda message: self._result(link, message)
        peer = link.endpoint.peer(link.index)
        link.send(MsgType.DIALBACK_REQUEST, self.dialbacks.request(link.index, peer, address, now))

    def _probe(self, data: bytes, source: Address, now: float) -> bool:
        """Port P: is this edge datagram a DIALBACK_PROBE? Then confirm it in its session."""
        try:
            if hot.peek_type(data) is not MsgType.DIALBACK_PROBE:
                return False
        except EdgeError:
            return False
        found = self.dialbacks.receive_probe(data, now)
        if found is not None:
            index, confirm = found
            link = self._links.get(index)
            if link is not None:
                link.send(MsgType.DIALBACK_CONFIRM, confirm)
        return True

    def _result(self, link: UdpLink, message: Message) -> None:
        if message.type is not MsgType.DIALBACK_RESULT:
            return
        now = asyncio.get_running_loop().time()
        raw = self.dialbacks.receive_result(link.index, message.body, now)
        if raw:
            with contextlib.suppress(EdgeError):
                self.policy.add_attestation(raw, now)
        link.close()
        self._links.pop(link.index, None)

    # -- the role

    async def _role_changed(self, event: RoleChanged) -> None:
        _log.info("role %s -> %s: %s", event.old.value, event.new.value, event.reason)
        if event.new is Role.SUPERNODE and self.supernode is None:
            await self._start_role()
        elif event.new is Role.CLIENT:
            await self._stop_role()

    async def _start_role(self) -> None:
        reachable, _ = self.policy.reachability(time.time())
        link = self._attached()
        if reachable is None:
            return
        self._state.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The supernode proves the device's own certified keys: no second identity.
        if not (self._state / KEY_FILE).exists():
            self._keys.save(self._state / KEY_FILE)
        certificate = self._state / "device.cert"
        write_atomic(certificate, self._certificate, 0o600)
        config = SupernodeConfig(
            host="0.0.0.0",
            tcp_ports=(),
            state_dir=self._state,
            control_socket=self._state / "control.sock",
            shutdown_grace=0.0,
            relay=RelayConfig(),
            overlay=OverlayConfig(
                certificate=certificate,
                issuer_key=self._issuer,
                address=reachable[0],
                bootstrap=(link.supernode,) if link is not None else (),
            ),
        )
        node = Supernode(config)
        try:
            await node.start()
        except (EdgeError, OSError) as exc:
            _log.warning("could not start serving as a supernode: %s", exc)
            return
        self.supernode = node
        self.serving.set()

    async def _stop_role(self) -> None:
        node, self.supernode = self.supernode, None
        self.serving.clear()
        if node is not None:
            await node.stop()

    def status(self) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        status = self.policy.status(now)
        if self.supernode is not None and self.supernode.bound is not None:
            status["serving_at"] = self.supernode.bound.port
        return status


def _rng() -> random.Random:
    return random.SystemRandom()

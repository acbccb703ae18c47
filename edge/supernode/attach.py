"""Which devices a supernode serves, over which session, and what it tells them about others.

How it works: a device is *attached* once :class:`~edge.supernode.admission.Admission`
has let it in, by ATTACH or by its first PRESENCE_PUBLISH here. It is known
by (user, device) from its certificate and reached through its session index.
Anything it sends keeps it attached; a device silent for :data:`IDLE_DETACH`
(two missed presence refreshes and then some) is detached, so a device that
vanished without a word stops counting against this supernode's capacity.

The same table answers HOSTCACHE_REQUEST in pages of
:data:`~edge.wire.messages.HOSTCACHE_PAGE` entries from the admission's offer
(live supernodes ranked by freshness and round-trip time, login servers last),
and turns addresses into the host entries that ATTACH_RESULT and DETACH carry.

Pure bookkeeping: the caller passes ``now`` (the loop's monotonic seconds).
"""

import random
from dataclasses import dataclass
from typing import Any

from edge.overlay.presence import REFRESH_EVERY
from edge.sansio import Address
from edge.supernode.admission import Admission, Admitted, OfferEntry, Redirected
from edge.wire.messages import (
    ALTERNATIVES_MAX,
    HOST_ENTRY_LOGIN_SERVER,
    HOSTCACHE_MAX,
    HOSTCACHE_PAGE,
    RTT_UNKNOWN,
)

IDLE_DETACH = 2 * REFRESH_EVERY + 300.0
MAX_DEVICES_PER_USER = 8

Device = tuple[str, str]
"""(user id, device id), as the device's certificate names them."""


@dataclass
class _Attached:
    index: int
    last_heard: float


class Attachments:
    """The devices attached here; see the module docstring."""

    def __init__(self, admission: Admission, rng: random.Random) -> None:
        self.admission = admission
        self._rng = rng
        self._devices: dict[Device, _Attached] = {}
        self._by_session: dict[int, Device] = {}
        self._users: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._devices)

    def attach(
        self, index: int, device: Device, now: float, *, redirects: int = 0
    ) -> Admitted | Redirected:
        """Let ``device`` in through session ``index``, or say where to go instead."""
        user, name = device
        known = self._users.get(user, set())
        if name not in known and len(known) >= MAX_DEVICES_PER_USER:
            return Redirected((), full=True)
        outcome = self.admission.admit(device, now, self._rng, hops=redirects)
        if isinstance(outcome, Admitted):
            old = self._devices.get(device)
            if old is not None and old.index != index:
                self._by_session.pop(old.index, None)
            self._devices[device] = _Attached(index, now)
            self._by_session[index] = device
            self._users.setdefault(user, set()).add(name)
        return outcome

    def is_attached(self, device: Device) -> bool:
        return device in self._devices

    def touch(self, index: int, now: float) -> None:
        """The device behind session ``index`` (if any) was heard from."""
        device = self._by_session.get(index)
        if device is not None:
            self._devices[device].last_heard = now

    def detach_session(self, index: int) -> Device | None:
        """Forget whoever is attached through session ``index``; who it was."""
        device = self._by_session.pop(index, None)
        if device is None:
            return None
        del self._devices[device]
        user, name = device
        names = self._users[user]
        names.discard(name)
        if not names:
            del self._users[user]
        self.admission.leave(device)
        return device

    def detach_idle(self, now: float) -> list[int]:
        """Detach every device silent for :data:`IDLE_DETACH`; their session indices."""
        idle = [a.index for a in self._devices.values() if now - a.last_heard > IDLE_DETACH]
        for index in idle:
            self.detach_session(index)
        return idle

    def sessions_of(self, user: str, device: str = "") -> list[int]:
        """Sessions of ``user``'s devices attached here (only ``device``'s, if named)."""
        names = self._users.get(user, set())
        return [self._devices[(user, n)].index for n in names if not device or n == device]

    def sessions(self) -> list[int]:
        return [a.index for a in self._devices.values()]

    # -- what devices are told about other supernodes

    def host_cache_page(self, now: float, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """(entries in the whole offer, this page's host entries) from ``offset``."""
        offer = self.admission.host_cache_offer(now, self._rng)[:HOSTCACHE_MAX]
        page = offer[offset : offset + HOSTCACHE_PAGE]
        return len(offer), [_entry(item) for item in page]

    def alternatives(self, addresses: tuple[Address, ...]) -> list[dict[str, Any]]:
        """Host entries for a redirect, with this supernode's RTT to each when it has one."""
        rtts = {peer.address: peer.rtt for peer in self.admission.peers()}
        return [
            _entry(OfferEntry(address, False, rtts.get(address)))
            for address in addresses[:ALTERNATIVES_MAX]
        ]

    def best_alternatives(self, now: float) -> list[dict[str, Any]]:
        """Where to send devices when this supernode goes away: the best of its offer."""
        offer = self.admission.host_cache_offer(now, self._rng, ALTERNATIVES_MAX)
        return [_entry(item) for item in offer if not item.login_server][:ALTERNATIVES_MAX]


def _entry(item: OfferEntry) -> dict[str, Any]:
    rtt = RTT_UNKNOWN if item.rtt is None else min(RTT_UNKNOWN - 1, round(item.rtt * 1000))
    flags = HOST_ENTRY_LOGIN_SERVER if item.login_server else 0
    return {"address": item.address, "rtt_ms": rtt, "flags": flags}

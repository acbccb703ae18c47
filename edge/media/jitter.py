"""An adaptive jitter buffer: frames in as they arrive, one frame out per playout tick.

Sans-IO. The network side calls :meth:`JitterBuffer.push` with each media
frame and the time it arrived; the audio side calls :meth:`pop` once per
frame period (every 20 ms, from the sound card's clock) and gets one
:class:`Play` (decode this payload), :class:`Conceal` (the frame is lost:
run packet-loss concealment, or decode ``fec`` — the next packet, which
carries the lost frame's in-band FEC copy) or :class:`Wait` (nothing to play
yet: play silence, the call is starting or a talkspurt has not arrived).

How much to hold: for every frame, its *lateness* is how much later it came
than the quickest frames would predict from the timestamps (arrival time
minus media time, minus about the smallest such difference in the window: its
5th percentile, so that a few frames sent early do not make every frame after
them look late).
The target delay is the 95th percentile of lateness over the last 200 frames
plus one frame, between ``min_delay`` and ``max_delay``: it grows at once
when the network gets worse, and shrinks slowly as good frames push the bad
ones out of the window.

Redundant copies: a frame recovered from a later packet's copy of it
(:mod:`edge.media.redundancy`) goes in through :meth:`JitterBuffer.recover`,
which fills the frame's place only if it is still missing and not yet due,
and leaves the delay measurement alone (a copy is late by design). It then
plays like the original, as a :class:`Play` marked ``copy``; so a real copy
comes first, the next packet's FEC second, concealment last.

Clock drift and adaptation: when more is buffered than the target plus two
frames, the oldest frame is dropped (one 20 ms frame now and then, which
concealment smooths over); when the buffer runs dry it conceals up to
``bridge`` frames (a burst of loss) and then waits to rebuild its target
delay, as at the start of a talkspurt. So two sound cards whose
clocks differ by 0.1 % never build up delay: the buffer sheds a frame every
twenty seconds instead of growing by one.

Growing the delay (``stretch``): when the frame due is missing and the time
it has had to arrive (now, minus its media time, minus the smallest transit
seen) is below the target, the buffer plays one frame of concealment and
keeps waiting for it, so every later frame plays 20 ms later. The target
rises when the jitter grows, or when its owner raises ``min_delay`` (a peer
that sends copies two frames back needs two frames held for them to arrive
in time); without stretching it would reach the new target only by running
dry.
"""

import heapq
from collections import deque
from dataclasses import dataclass

from edge.errors import LocalError

SEQUENCE_SPACE = 1 << 16
WINDOW = 200


@dataclass(frozen=True)
class Play:
    sequence: int
    payload: bytes
    copy: bool = False
    """The frame came as a redundant copy in a later packet, its own packet lost."""


@dataclass(frozen=True)
class Conceal:
    sequence: int
    fec: bytes | None
    """The next frame's payload when it is already here: decode its FEC for this one."""


@dataclass(frozen=True)
class Wait:
    """Nothing to play yet."""


Playout = Play | Conceal | Wait


class JitterBuffer:
    """Frames of one stream, reordered and paced for playout."""

    def __init__(
        self,
        *,
        frame: float = 0.020,
        clock_rate: int = 16000,
        min_delay: float = 0.020,
        max_delay: float = 0.300,
        capacity: int = 64,
        bridge: int = 0,
        stretch: bool = False,
    ) -> None:
        if not 0 < min_delay <= max_delay or frame <= 0 or capacity < 4:
            raise LocalError("jitter buffer: bad frame, delay bounds or capacity")
        self.frame, self.clock_rate = frame, clock_rate
        self.min_delay, self.max_delay, self.capacity = min_delay, max_delay, capacity
        self.bridge, self.stretch = bridge, stretch
        self._dry = 0
        self._newest: tuple[int, int] | None = None
        """(sequence, timestamp) of the latest frame pushed: the stream's clock."""
        self._frames: dict[int, bytes] = {}
        self._copies: set[int] = set()
        self._next: int | None = None
        self._lateness: deque[float] = deque(maxlen=WINDOW)
        self._transit: deque[float] = deque(maxlen=WINDOW)
        self._first_arrival: float | None = None
        self.stats = dict.fromkeys(
            ("late", "duplicate", "overflow", "dropped", "concealed", "recovered", "stretched"), 0
        )

    @property
    def target(self) -> float:
        """The delay the buffer aims to hold, in seconds."""
        if not self._lateness:
            return self.min_delay
        ordered = sorted(self._lateness)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        return min(self.max_delay, max(self.min_delay, p95 + self.frame))

    @property
    def buffered(self) -> float:
        """Seconds of audio held, counted from the next frame to play."""
        return len(self._frames) * self.frame

    def push(self, sequence: int, timestamp: int, payload: bytes, now: float) -> None:
        """Take one arrived frame (``timestamp`` in samples of ``clock_rate``)."""
        sequence %= SEQUENCE_SPACE
        self._measure(timestamp, now)
        if self._next is not None and _behind(sequence, self._next):
            self.stats["late"] += 1
            return
        if sequence in self._frames:
            self.stats["duplicate"] += 1
            return
        if len(self._frames) >= self.capacity:
            self.stats["overflow"] += 1
            self._skip_oldest()
        self._frames[sequence] = payload
        self._newest = (sequence, timestamp)
        if self._first_arrival is None:
            self._first_arrival = now

    def recover(self, sequence: int, payload: bytes) -> bool:
        """Take a redundant copy of frame ``sequence``; True if it fills a gap.

        Ignored (False) when the frame is here already, is behind the playout
        point, the stream has not started playing, or the buffer is full.
        """
        sequence %= SEQUENCE_SPACE
        if self._next is None or _behind(sequence, self._next) or sequence in self._frames:
            return False
        # A copy reaches a few frames back from what arrived; one further ahead of
        # the playout point than the buffer could ever hold is not of this stream.
        ahead = (sequence - self._next) % SEQUENCE_SPACE
        if len(self._frames) >= self.capacity or ahead >= self.capacity:
            return False
        self._frames[sequence] = payload
        self._copies.add(sequence)
        self.stats["recovered"] += 1
        return True

    def pop(self, now: float) -> Playout:
        """The next frame period's audio."""
        if self._next is None:
            return self._start(now)
        self._shed_excess()
        sequence = self._next
        if self.stretch and self._short(sequence, now):
            # One frame of concealment now, and every later frame plays 20 ms later.
            self.stats["stretched"] += 1
            return Conceal(sequence, None)
        payload = self._frames.pop(sequence, None)
        self._next = (sequence + 1) % SEQUENCE_SPACE
        if payload is not None:
            self._dry = 0
            if sequence in self._copies:
                self._copies.discard(sequence)
                return Play(sequence, payload, copy=True)
            return Play(sequence, payload)
        if not self._frames:
            return self._run_dry(sequence)
        self._dry = 0
        self.stats["concealed"] += 1
        return Conceal(sequence, self._frames.get(self._next))

    def _run_dry(self, sequence: int) -> Playout:
        # A burst of lost packets looks like the end of a talkspurt until the next
        # packet comes; bridge it with concealment (copies of the lost frames may
        # still arrive), and restart only when the stream has really stopped.
        self._dry += 1
        if self._dry > self.bridge:
            self._next, self._first_arrival, self._dry = None, None, 0
            return Wait()
        self.stats["concealed"] += 1
        return Conceal(sequence, None)

    def _start(self, now: float) -> Playout:
        if not self._frames or self._first_arrival is None:
            return Wait()
        if now - self._first_arrival < self.target:
            return Wait()
        self._next = self._oldest()
        return self.pop(now)

    def _short(self, sequence: int, now: float) -> bool:
        """Whether frame ``sequence``, missing as it falls due, leaves less than the
        target for lateness: the jitter (or the target's floor) grew since playout
        started, so the buffer waits a frame for it rather than give it up."""
        if self._newest is None or not self._transit or sequence in self._frames:
            return False
        newest, stamp = self._newest
        back = ((newest - sequence + SEQUENCE_SPACE // 2) % SEQUENCE_SPACE) - SEQUENCE_SPACE // 2
        due = (stamp - back * self.frame * self.clock_rate) / self.clock_rate
        slack = now - due - self._floor()
        return slack < self.target

    def _shed_excess(self) -> None:
        while self.buffered > self.target + 2 * self.frame and len(self._frames) > 1:
            self._skip_oldest()
            self.stats["dropped"] += 1

    def _skip_oldest(self) -> None:
        oldest = self._oldest()
        del self._frames[oldest]
        self._copies.discard(oldest)
        if self._next is not None:
            # Whatever was missing before it is skipped with it.
            self._next = (oldest + 1) % SEQUENCE_SPACE

    def _oldest(self) -> int:
        # Order around any held frame; all held frames lie within half the
        # sequence space of each other, so this is exact across the wrap.
        anchor = next(iter(self._frames))
        half = SEQUENCE_SPACE // 2
        return min(self._frames, key=lambda s: (s - anchor + half) % SEQUENCE_SPACE)

    def _measure(self, timestamp: int, now: float) -> None:
        transit = now - timestamp / self.clock_rate
        self._transit.append(transit)
        self._lateness.append(transit - self._floor())

    def _floor(self) -> float:
        """The quickest transit in the window, give or take a few: the twentieth part
        of the window's frames may have been quicker (frames sent early, a clock that
        stepped) without making every later frame look late by as much."""
        return heapq.nsmallest(1 + len(self._transit) // 20, self._transit)[-1]


def _behind(sequence: int, reference: int) -> bool:
    """Whether ``sequence`` comes before ``reference`` (modulo 2^16, RFC 1982 style)."""
    return 0 < (reference - sequence) % SEQUENCE_SPACE < SEQUENCE_SPACE // 2

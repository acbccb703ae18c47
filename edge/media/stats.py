"""Reception statistics of one media stream: loss and interarrival jitter (sans-IO).

How it works, as RFC 3550 Appendix A.1 and §6.4.1 do it for RTP:

* Sequence numbers are 16 bits and wrap. Each frame's number is extended to a
  running count (:attr:`ReceptionStats.highest` counts the wraps), so that
  *expected* is simply the highest extended number seen minus the first plus
  one, and *lost* is expected minus received, never below zero.
* A frame up to :data:`MAX_DROPOUT` ahead of the highest is in order (the gap
  between is counted lost until the missing frames turn up); up to
  :data:`MAX_MISORDER` behind is a late frame, which fills its gap again. The
  last :data:`WINDOW` numbers are remembered, so a duplicate is counted as one
  (:attr:`ReceptionStats.duplicates`) and never hides a loss.
* Anything further away is a jump: the sender restarted its numbering, or the
  frame is garbage. It is set aside; when the next frame follows it in order,
  the counting starts again from there (the counts so far are kept).
* Jitter: for each frame, how much more or less time passed between its
  arrival and the previous frame's than between their timestamps; the estimate
  moves 1/16 of the way towards each new difference (§6.4.1). Timestamps are in
  units of :data:`MEDIA_CLOCK_RATE`.

Nothing here reads a clock: the caller passes the arrival time.
"""

import math

from edge.media.errors import MediaUsageError

SEQUENCE_SPACE = 1 << 16
TIMESTAMP_SPACE = 1 << 32
MAX_DROPOUT = 3000
"""Frames ahead of the highest that still count as in order (RFC 3550 A.1's figure)."""
MAX_MISORDER = 100
"""Frames behind the highest that count as late rather than as a jump."""
WINDOW = 128
"""Extended numbers remembered behind the highest, to spot duplicates; > MAX_MISORDER."""
MEDIA_CLOCK_RATE = 16000
"""Timestamp units per second of edge's media frames: wideband samples, 320 per 20 ms."""


class ReceptionStats:
    """Loss, duplicates, late frames and jitter of the frames of one stream."""

    def __init__(self, clock_rate: int = MEDIA_CLOCK_RATE) -> None:
        if not isinstance(clock_rate, int) or clock_rate <= 0:
            raise MediaUsageError(f"the clock rate is a positive integer, got {clock_rate!r}")
        self.clock_rate = clock_rate
        self.received = 0
        """Distinct frames counted (duplicates and jumps set aside are not)."""
        self.duplicates = 0
        self.late = 0
        """Frames that came after a later-numbered one (reordered, not lost)."""
        self.jumps = 0
        """Frames set aside because their number was far from the rest."""
        self.last_at: float | None = None
        """When the latest frame arrived (the caller's clock)."""
        self._base = 0
        self.highest = -1
        """The highest extended sequence number seen; -1 before the first frame."""
        self._seen = 0
        """Bit i set: extended number ``highest - i`` has arrived."""
        self._before = (0, 0)
        """Expected and received of the numbering before the last restart."""
        self._suspect: int | None = None
        self._jitter = 0.0
        self._last_transit: tuple[float, int] | None = None

    # -- input

    def frame(self, sequence: int, timestamp: int, now: float) -> None:
        """Count a frame numbered ``sequence`` (16 bits), stamped ``timestamp`` (32 bits),
        that arrived at ``now`` seconds."""
        _check(sequence, timestamp, now)
        self.last_at = now
        if self.highest < 0:
            self._restart(sequence)
        elif not self._place(sequence):
            return
        self._jitter_from(timestamp, now)

    def _place(self, sequence: int) -> bool:
        """Count ``sequence`` against the highest; False when it was set aside."""
        ahead = (sequence - self.highest) % SEQUENCE_SPACE
        if ahead == 0:
            self.duplicates += 1
            return False
        if ahead < MAX_DROPOUT:
            self._advance(ahead)
            return True
        if ahead >= SEQUENCE_SPACE - MAX_MISORDER:
            return self._behind(SEQUENCE_SPACE - ahead)
        return self._jump(sequence)

    def _advance(self, ahead: int) -> None:
        self.highest += ahead
        self._seen = ((self._seen << ahead) | 1) & ((1 << WINDOW) - 1)
        self.received += 1
        self._suspect = None

    def _behind(self, back: int) -> bool:
        if self.highest - back < self._base:
            self.late += 1  # older than the first frame counted: no gap of ours to fill
            return False
        bit = 1 << back
        if self._seen & bit:
            self.duplicates += 1
            return False
        self._seen |= bit
        self.received += 1
        self.late += 1
        return True

    def _jump(self, sequence: int) -> bool:
        """A number far from the rest: set aside, unless it follows the last one set
        aside, which means the sender numbers afresh from there."""
        if self._suspect is not None and sequence == (self._suspect + 1) % SEQUENCE_SPACE:
            self._before = (self._before[0] + self._expected_now(), self._before[1] + self.received)
            self._restart(self._suspect)
            self._advance(1)
            return True
        self._suspect = sequence
        self.jumps += 1
        return False

    def _restart(self, sequence: int) -> None:
        self._base = self.highest = sequence
        self._seen = 1
        self.received = 1
        self._suspect = None
        self._last_transit = None

    def _jitter_from(self, timestamp: int, now: float) -> None:
        arrival = now * self.clock_rate
        last = self._last_transit
        self._last_transit = (arrival, timestamp)
        if last is None:
            return
        stamped = (timestamp - last[1]) % TIMESTAMP_SPACE
        if stamped >= TIMESTAMP_SPACE // 2:
            stamped -= TIMESTAMP_SPACE  # an earlier timestamp: a reordered frame
        difference = abs((arrival - last[0]) - stamped)
        self._jitter += (difference - self._jitter) / 16

    # -- figures

    def _expected_now(self) -> int:
        return self.highest - self._base + 1 if self.highest >= 0 else 0

    @property
    def expected(self) -> int:
        """Frames the sender sent from the first counted to the highest."""
        return self._before[0] + self._expected_now()

    @property
    def counted(self) -> int:
        """Distinct frames received, over every numbering."""
        return self._before[1] + self.received

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.counted)

    @property
    def loss(self) -> float:
        """The fraction of expected frames that never came, 0.0 to 1.0."""
        expected = self.expected
        return self.lost / expected if expected else 0.0

    @property
    def jitter_ms(self) -> float:
        """The interarrival jitter estimate, in milliseconds."""
        return self._jitter * 1000 / self.clock_rate


def _check(sequence: int, timestamp: int, now: float) -> None:
    if not 0 <= sequence < SEQUENCE_SPACE:
        raise MediaUsageError(f"a sequence number is 16 bits, got {sequence!r}")
    if not 0 <= timestamp < TIMESTAMP_SPACE:
        raise MediaUsageError(f"a timestamp is 32 bits, got {timestamp!r}")
    if not math.isfinite(now):
        raise MediaUsageError(f"the arrival time is a finite number, got {now!r}")

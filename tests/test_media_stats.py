"""Reception statistics: loss from extended sequence numbers, duplicates, reordering,
wraparound, restarts, and RFC 3550 interarrival jitter."""

import math

import pytest

from edge.media.errors import MediaUsageError
from edge.media.stats import MAX_DROPOUT, MEDIA_CLOCK_RATE, ReceptionStats

STEP = 320
"""Timestamp units per 20 ms frame at the media clock."""
PERIOD = 0.020


def feed(stats: ReceptionStats, sequences: list[int], *, start: float = 100.0) -> None:
    """Frames numbered ``sequences``, each arriving on time for its number."""
    for seq in sequences:
        stats.frame(seq % 65536, (seq * STEP) % (1 << 32), start + seq * PERIOD)


def test_nothing_received_is_no_loss() -> None:
    stats = ReceptionStats()
    assert (stats.expected, stats.counted, stats.lost, stats.loss) == (0, 0, 0, 0.0)
    assert stats.jitter_ms == 0.0 and stats.last_at is None


def test_a_clean_stream_loses_nothing() -> None:
    stats = ReceptionStats()
    feed(stats, list(range(10, 60)))
    assert (stats.expected, stats.counted, stats.lost, stats.loss) == (50, 50, 0, 0.0)
    assert stats.jitter_ms == pytest.approx(0.0, abs=1e-6)


def test_gaps_are_lost_frames() -> None:
    stats = ReceptionStats()
    feed(stats, [s for s in range(100) if s % 10 != 3])
    assert (stats.expected, stats.lost) == (100, 10)
    assert stats.loss == pytest.approx(0.1)


def test_loss_at_the_end_shows_only_once_a_later_frame_comes() -> None:
    stats = ReceptionStats()
    feed(stats, [0, 1, 2])
    assert stats.lost == 0
    feed(stats, [7])
    assert (stats.expected, stats.lost) == (8, 4)


def test_the_sequence_wraps_without_a_loss() -> None:
    stats = ReceptionStats()
    feed(stats, list(range(65500, 65536 + 40)))
    assert (stats.expected, stats.counted, stats.lost) == (76, 76, 0)
    assert stats.highest == 65536 + 39


def test_a_gap_across_the_wrap_counts_exactly() -> None:
    stats = ReceptionStats()
    feed(stats, [65530, 65531, 65532, 65536 + 2, 65536 + 3])
    assert (stats.expected, stats.lost) == (10, 5)


def test_duplicates_are_counted_once_and_hide_no_loss() -> None:
    stats = ReceptionStats()
    feed(stats, [0, 1, 1, 2, 2, 2, 4, 1])
    assert stats.duplicates == 4
    assert (stats.expected, stats.counted, stats.lost) == (5, 4, 1)


def test_a_late_frame_fills_its_gap() -> None:
    stats = ReceptionStats()
    feed(stats, [0, 1, 3, 4])
    assert stats.lost == 1
    feed(stats, [2])
    assert (stats.lost, stats.late, stats.duplicates) == (0, 1, 0)
    feed(stats, [2])
    assert (stats.lost, stats.late, stats.duplicates) == (0, 1, 1)


def test_reordering_across_the_wrap() -> None:
    stats = ReceptionStats()
    feed(stats, [65534, 65536 + 1, 65535, 65536 + 0, 65536 + 2])
    assert (stats.expected, stats.counted, stats.lost, stats.late) == (5, 5, 0, 2)


def test_a_frame_older_than_the_first_is_late_not_received() -> None:
    stats = ReceptionStats()
    feed(stats, [10, 11, 9])
    assert (stats.expected, stats.counted, stats.lost, stats.late) == (2, 2, 0, 1)


def test_a_single_wild_number_is_set_aside() -> None:
    stats = ReceptionStats()
    feed(stats, [0, 1, 2])
    stats.frame(40000, 0, 200.0)
    feed(stats, [3, 4])
    assert stats.jumps == 1
    assert (stats.expected, stats.counted, stats.lost) == (5, 5, 0)


def test_a_restarted_sender_is_counted_from_its_new_numbering() -> None:
    stats = ReceptionStats()
    feed(stats, [0, 1, 2, 4])  # one lost before the restart
    feed(stats, [30000, 30001, 30002, 30004])  # the first is set aside, then followed
    assert stats.jumps == 1
    assert (stats.expected, stats.counted, stats.lost) == (5 + 5, 4 + 4, 2)


def test_a_long_outage_within_the_dropout_counts_every_frame_lost() -> None:
    stats = ReceptionStats()
    feed(stats, [0, 1])
    feed(stats, [MAX_DROPOUT - 1])
    assert stats.lost == MAX_DROPOUT - 3 and stats.jumps == 0


def test_jitter_of_alternating_delays() -> None:
    """Frames alternately 0 and 10 ms late: every difference is 10 ms, so the
    estimate converges on 10 ms from below (J += (|D| - J) / 16)."""
    stats = ReceptionStats()
    for seq in range(400):
        late = 0.010 if seq % 2 else 0.0
        stats.frame(seq, seq * STEP, 50.0 + seq * PERIOD + late)
    assert stats.jitter_ms == pytest.approx(10.0, rel=1e-3)


def test_jitter_after_one_difference_is_a_sixteenth() -> None:
    stats = ReceptionStats()
    stats.frame(0, 0, 10.0)
    stats.frame(1, STEP, 10.0 + PERIOD + 0.016)
    assert stats.jitter_ms == pytest.approx(1.0)


def test_jitter_across_the_timestamp_wrap() -> None:
    stats = ReceptionStats()
    top = (1 << 32) - STEP
    stats.frame(7, top, 10.0)
    stats.frame(8, 0, 10.0 + PERIOD)
    assert stats.jitter_ms == pytest.approx(0.0, abs=1e-6)


def test_the_clock_rate_scales_jitter() -> None:
    stats = ReceptionStats(clock_rate=48000)
    stats.frame(0, 0, 10.0)
    stats.frame(1, 960, 10.0 + PERIOD + 0.016)
    assert stats.jitter_ms == pytest.approx(1.0)
    assert MEDIA_CLOCK_RATE == STEP / PERIOD


@pytest.mark.parametrize(
    ("sequence", "timestamp", "now"),
    [(-1, 0, 0.0), (65536, 0, 0.0), (0, -1, 0.0), (0, 1 << 32, 0.0), (0, 0, math.nan)],
)
def test_out_of_range_input_is_refused(sequence: int, timestamp: int, now: float) -> None:
    with pytest.raises(MediaUsageError):
        ReceptionStats().frame(sequence, timestamp, now)


def test_a_clock_rate_must_be_positive() -> None:
    with pytest.raises(MediaUsageError):
        ReceptionStats(clock_rate=0)

"""The jitter buffer on simulated networks: order, loss, jitter, drift, wrap-around."""

import random

from edge.media.jitter import Conceal, JitterBuffer, Play, Wait

FRAME = 0.020
SAMPLES = 320  # 20 ms at 16 kHz


def payload(sequence: int) -> bytes:
    return sequence.to_bytes(2, "big")


def played(events: list[object]) -> list[int]:
    return [e.sequence for e in events if isinstance(e, Play)]


def simulate(
    arrivals: list[tuple[float, int]],
    ticks: int,
    *,
    start: float = 0.0,
    buffer: JitterBuffer | None = None,
) -> tuple[JitterBuffer, list[object]]:
    """Deliver (arrival time, sequence) and tick the playout every 20 ms."""
    jb = buffer or JitterBuffer()
    pending = sorted(arrivals)
    events: list[object] = []
    for tick in range(ticks):
        now = start + tick * FRAME
        while pending and pending[0][0] <= now:
            at, seq = pending.pop(0)
            jb.push(seq, seq * SAMPLES, payload(seq % 65536), at)
        events.append(jb.pop(now))
    return jb, events


def test_a_steady_stream_plays_in_order() -> None:
    _, events = simulate([(0.05 + n * FRAME, n) for n in range(50)], 60)
    assert played(events) == list(range(50))[: len(played(events))]
    assert len(played(events)) >= 45
    assert isinstance(events[0], Wait)


def test_reordering_within_the_target_is_undone() -> None:
    # Frame 10 is held up 25 ms and arrives after frame 11.
    arrivals = [(0.05 + n * FRAME + (0.025 if n == 10 else 0.0), n) for n in range(40)]
    _, events = simulate(arrivals, 50)
    assert played(events) == sorted(played(events))
    assert 10 in played(events) and 11 in played(events)


def test_a_lost_frame_is_concealed_with_the_next_frames_fec() -> None:
    arrivals = [(0.05 + n * FRAME, n) for n in range(30) if n != 12]
    _, events = simulate(arrivals, 40)
    (gap,) = [e for e in events if isinstance(e, Conceal)]
    assert gap.sequence == 12 and gap.fec == payload(13)
    assert 11 in played(events) and 13 in played(events)


def test_late_and_duplicate_frames_are_counted_not_played() -> None:
    arrivals = [(0.05 + n * FRAME, n) for n in range(30)] + [(0.3, 3), (0.31, 20)]
    jb, events = simulate(arrivals, 40)
    assert played(events).count(3) == 1 and played(events).count(20) == 1
    assert jb.stats["late"] >= 1 and jb.stats["duplicate"] >= 1


def test_the_target_follows_the_jitter() -> None:
    rng = random.Random(7)
    calm, _ = simulate([(0.05 + n * FRAME + rng.uniform(0, 0.002), n) for n in range(200)], 210)
    stormy, _ = simulate([(0.05 + n * FRAME + rng.uniform(0, 0.080), n) for n in range(200)], 210)
    assert calm.target < 0.03
    assert 0.07 < stormy.target <= 0.3


def test_a_few_early_frames_do_not_make_every_later_one_look_late() -> None:
    """Two frames that arrive 60 ms ahead of the rest (sent early, or a sender's clock
    that stepped) must not raise the target by 60 ms for the next 200 frames."""
    steady = [(0.05 + n * FRAME, n) for n in range(400)]
    early = [(at - 0.06, n) if n in (100, 101) else (at, n) for at, n in steady]
    jb, _ = simulate(early, 410)
    assert jb.target < 0.03, jb.target


def test_a_faster_sender_clock_does_not_build_up_delay() -> None:
    # The far sound card runs 0.5 % fast: 10 minutes bring 3 s of extra audio.
    drift = 1.005
    arrivals = [(0.05 + n * FRAME / drift, n) for n in range(30_000)]
    jb, events = simulate(arrivals, 30_000)
    assert jb.buffered <= jb.target + 3 * FRAME
    assert 100 <= jb.stats["dropped"] <= 200  # about one frame shed every 4 s
    assert sum(isinstance(e, Conceal) for e in events) == 0


def test_sequence_numbers_wrap() -> None:
    arrivals = [(0.05 + n * FRAME, 65530 + n) for n in range(20)]
    _, events = simulate(arrivals, 30)
    assert played(events) == [(65530 + n) % 65536 for n in range(len(played(events)))]
    assert 0 in played(events)


def test_memory_is_bounded() -> None:
    jb = JitterBuffer(capacity=16)
    for n in range(1000):
        jb.push(n, n * SAMPLES, b"x" * 100, 0.0)
    assert len(jb._frames) <= 16 and jb.stats["overflow"] > 0

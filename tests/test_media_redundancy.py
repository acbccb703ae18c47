"""Loss protection: the Opus padding, the redundancy block, the loss meter, the
adaptation policy, the jitter buffer's use of copies, and two CallAudio back to back.

The packets are real libopus output; the pairs run the real encoder, jitter
buffer and decoder, one 20 ms tick at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import random

import pytest
from construct import ConstructError

from edge.media import tones
from edge.media.jitter import Conceal, JitterBuffer, Play
from edge.media.opus import Decoder, Encoder
from edge.media.pipeline import FLAGS, FRAME_BYTES, FRAME_SAMPLES, CallAudio, Silence
from edge.media.redundancy import (
    BLOCK,
    HOLD,
    LEVELS,
    MAX_COPIES,
    PACKET_OVERHEAD,
    Adaptation,
    LossMeter,
    Packer,
    RedundancyError,
    build_block,
    pad,
    parse_block,
    unpack,
    unpad,
)
from edge.wire.messages import Codec

# -- the format ----------------------------------------------------------------------------


def test_golden_payload_with_one_copy() -> None:
    # Primary: a code 0 packet (TOC 0x08: SILK narrowband 20 ms, mono) of two bytes.
    # Copy: the frame before, one byte after its TOC. Loss report: 32/256.
    payload = Packer()
    payload.pack(bytes.fromhex("08cc"), 1, None)
    got = payload.pack(bytes.fromhex("08aabb"), 1, 32 / 256)
    assert got == bytes.fromhex(
        "0b"  # TOC with code 3
        "41"  # padding flag, one frame, CBR
        "06"  # six bytes of padding
        "aabb"  # the primary frame
        "20"  # loss: 32/256
        "01"  # one copy
        "01" "02" "08cc"  # one frame back, two bytes, the packet
    )  # fmt: skip
    assert unpack(got).primary == bytes.fromhex("0b01aabb")
    assert unpack(got).copies == ((1, bytes.fromhex("08cc")),)
    assert unpack(got).loss == 32 / 256


def test_no_copies_and_unknown_loss() -> None:
    got = Packer().pack(bytes.fromhex("08aa"), 2, None)
    assert got == bytes.fromhex("0b41" "02" "aa" "ff00")  # fmt: skip
    assert unpack(got).copies == () and unpack(got).loss is None


@pytest.mark.parametrize("size", [0, 1, 253, 254, 255, 508, 509, 700])
def test_padding_of_any_length_round_trips(size: int) -> None:
    padding = bytes(random.Random(size).randrange(256) for _ in range(size))
    for packet in (b"\x08\x01\x02", b"\x09\x01\x02", b"\x0a\x01\x01\x02", b"\x0b\x02\x01\x02"):
        padded = pad(packet, padding)
        stripped, back = unpad(padded)
        assert back == padding
        assert stripped[2:] == packet[1:] or stripped[2:] == packet[2:]


def test_a_decoder_that_knows_nothing_of_copies_decodes_the_primary_bit_for_bit() -> None:
    pcm = tones.tone(700, 0.4)
    frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
    packer = Packer()
    with Encoder() as encoder, Decoder() as plain, Decoder() as padded:
        for frame in frames:
            packet = encoder.encode(frame, FRAME_SAMPLES)
            payload = packer.pack(packet, MAX_COPIES, 0.1)
            assert len(payload) > len(packet)
            assert padded.decode(payload, FRAME_SAMPLES) == plain.decode(packet, FRAME_SAMPLES)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x0b\x41", "runs past the end"),
        (b"\x0b\x41\xff", "runs past the end"),
        (b"\x0b\x41\x09\xaa\xbb", "do not fit"),
        (b"\x0b\x41\x01\xaa\x00", "malformed redundancy block"),
        (b"\x0b\x41\x04\xaa\x00\x01\x01\x05", "malformed redundancy block"),
        (b"\x0b\x41\x05\xaa\x00\x00\x01\xcc\xdd", "malformed redundancy block"),
        (b"\x0b\x41\x05\xaa\x00\x01\x00\x01\xcc", "1 to 8 frames back"),
        (b"\x0b\x41\x05\xaa\x00\x01\x09\x01\xcc", "1 to 8 frames back"),
        (b"\x0b\x41\x04\xaa\x00\x01\x01\x00", "a copy is empty"),
        (b"\x0b\x41\x0e\xaa\x00\x04" + b"\x01\x01\xcc" * 4, "4 copies"),
    ],
)
def test_malformed_blocks_are_refused_with_our_error(payload: bytes, message: str) -> None:
    with pytest.raises(RedundancyError, match=message):
        unpack(payload)


def test_garbage_never_raises_anything_but_our_error() -> None:
    rng = random.Random(6716)
    for _ in range(3000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        if data[:1]:
            data = bytes([data[0] | 3, data[1] | 0x40]) + data[2:] if len(data) > 1 else data
        with contextlib.suppress(RedundancyError):
            unpack(data)


def test_copies_that_would_overfill_the_payload_are_left_out() -> None:
    packer = Packer()
    packer.pack(b"\x08" + bytes(300), 1, None)  # too large to copy (length is one byte)
    payload = packer.pack(b"\x08\x01", 1, None)
    assert unpack(payload).copies == () and packer.skipped == 1


def test_the_block_declaration_is_the_layout() -> None:
    assert BLOCK.build({"loss": 1, "copies": [{"back": 2, "packet": b"\x08"}]}) == bytes.fromhex(
        "0101020108"
    )


def test_the_fast_block_code_builds_what_the_declaration_builds() -> None:
    rng = random.Random(2198)
    for _ in range(500):
        copies = [
            (rng.randrange(256), bytes(rng.randrange(256) for _ in range(rng.randrange(256))))
            for _ in range(rng.randrange(MAX_COPIES + 1))
        ]
        loss = rng.randrange(256)
        declared = BLOCK.build(
            {"loss": loss, "copies": [{"back": b, "packet": p} for b, p in copies]}
        )
        assert build_block(loss, copies) == declared
        assert parse_block(declared) == (loss, tuple(copies))


def test_the_fast_block_code_refuses_what_the_declaration_refuses() -> None:
    rng = random.Random(3550)
    outcomes = set()
    for _ in range(5000):
        data = bytes(rng.randrange(6) for _ in range(rng.randrange(12)))
        try:
            declared = BLOCK.parse(data)
        except ConstructError:
            declared = None
        try:
            fast = parse_block(data)
        except RedundancyError:
            fast = None
        if declared is not None and len(declared.copies) > MAX_COPIES:
            declared = None  # the cap: the declaration alone would take up to 255
        expected = declared and (declared.loss, tuple((c.back, c.packet) for c in declared.copies))
        assert fast == expected, data
        outcomes.add(fast is None)
    assert outcomes == {True, False}


# -- measuring and adapting ----------------------------------------------------------------


def test_the_loss_meter_measures_the_recent_window() -> None:
    meter = LossMeter()
    assert meter.loss is None
    rng = random.Random(1)
    for n in range(500):  # 10 s, 10 % lost
        if rng.random() >= 0.10:
            meter.frame(n, n * 320, n * 0.02)
    assert meter.loss is not None and 0.06 < meter.loss < 0.14
    for n in range(500, 1000):  # then 10 s clean: the window forgets the loss
        meter.frame(n, n * 320, n * 0.02)
    assert meter.loss == 0.0


def test_more_loss_buys_more_copies_at_once() -> None:
    policy = Adaptation(start=0)
    assert policy.protection.copies == 0
    assert policy.update(0.02, 1.0).copies == 1
    assert policy.update(0.12, 2.0).copies == 2
    assert policy.update(0.50, 3.0).copies == 3
    assert policy.update(None, 4.0).copies == 3  # no report: no change


def test_less_loss_steps_down_one_level_per_hold() -> None:
    policy = Adaptation(start=0)
    policy.update(0.5, 0.0)
    assert policy.level == 3
    now = 0.0
    levels = []
    while now < 4 * HOLD + 1:
        now += 0.02
        levels.append(policy.update(0.0, now).copies)
    # One step down after each full hold of calm, never two at once.
    assert levels[0] == 3 and levels[-1] == 0
    assert all(a - b in (0, 1) for a, b in itertools.pairwise(levels))
    assert levels.index(2) * 0.02 >= HOLD - 0.02


def test_a_loss_between_the_thresholds_does_not_flap() -> None:
    policy = Adaptation(start=0)
    policy.update(LEVELS[1].up, 0.0)
    rng = random.Random(2)
    seen = set()
    for n in range(1, 3000):
        loss = rng.uniform(LEVELS[1].down, LEVELS[2].up - 0.001)
        seen.add(policy.update(loss, n * 0.02).copies)
    assert seen == {1}


def test_a_brief_calm_does_not_step_down() -> None:
    policy = Adaptation(start=1)
    for n in range(int(HOLD / 0.02) - 10):
        policy.update(0.0, n * 0.02)
    policy.update(0.02, HOLD)  # the loss is back before the hold ran out
    for n in range(int(HOLD / 0.02) - 10):
        policy.update(0.0, HOLD + n * 0.02)
    assert policy.protection.copies == 1


def test_the_budget_caps_copies_and_bitrate() -> None:
    for copies in range(MAX_COPIES + 1):
        policy = Adaptation(start=0)
        policy.update([0.0, 0.02, 0.12, 0.5][copies], 0.0)
        protection = policy.protection
        wire = (copies + 1) * protection.bitrate + 50 * 8 * (PACKET_OVERHEAD + 8 + 2 * copies)
        assert wire <= 100_000
        assert protection.copies == copies
    # A tight budget never pays for copies at a bitrate below the floor (12 kbit/s).
    tight = Adaptation(budget=50_000, start=3)
    assert tight.protection.copies == 0
    tight.update(0.5, 0.0)
    assert tight.protection.copies == 0
    assert 12_000 <= tight.protection.bitrate <= 50_000 - 50 * 8 * (PACKET_OVERHEAD + 8)


def test_fec_is_planned_only_without_copies() -> None:
    policy = Adaptation(start=0, budget=55_000)  # too tight for a copy
    assert policy.update(0.08, 0.0) == policy.protection
    assert policy.protection.copies == 0 and policy.protection.loss_percent == 8
    policy = Adaptation(start=0)
    assert policy.update(0.08, 0.0).loss_percent == 0


# -- the jitter buffer ---------------------------------------------------------------------


def test_a_copy_fills_the_gap_and_plays_as_a_copy() -> None:
    jb = JitterBuffer(min_delay=0.02)
    for n in (1, 2):
        jb.push(n, n * 320, b"p%d" % n, n * 0.02)
    assert jb.recover(3, b"c3") is False  # not playing yet: nothing to repair
    assert isinstance(jb.pop(0.06), Play)
    jb.push(4, 4 * 320, b"p4", 0.08)
    assert jb.recover(3, b"c3") is True
    assert jb.recover(3, b"c3 again") is False
    assert jb.recover(2, b"c2") is False  # here already
    assert jb.pop(0.08) == Play(2, b"p2")
    assert jb.pop(0.10) == Play(3, b"c3", copy=True)
    assert jb.pop(0.12) == Play(4, b"p4")
    assert jb.recover(3, b"late") is False  # behind the playout point
    assert jb.stats["recovered"] == 1


def test_without_a_copy_the_next_frames_fec_then_concealment() -> None:
    jb = JitterBuffer(min_delay=0.02, bridge=2)
    jb.push(1, 320, b"p1", 0.02)
    jb.push(3, 960, b"p3", 0.06)
    assert jb.pop(0.06) == Play(1, b"p1")
    assert jb.pop(0.08) == Conceal(2, b"p3")
    assert jb.pop(0.10) == Play(3, b"p3")
    assert jb.pop(0.12) == Conceal(4, None)  # dry: bridged
    assert jb.pop(0.14) == Conceal(5, None)
    assert not isinstance(jb.pop(0.16), Play | Conceal)  # then it waits


def test_a_copy_far_ahead_of_the_playout_point_is_not_taken() -> None:
    jb = JitterBuffer(min_delay=0.02, capacity=8)
    jb.push(1, 320, b"p1", 0.0)
    jb.push(2, 640, b"p2", 0.02)
    jb.pop(0.04)
    assert jb.recover(2000, b"x") is False and jb.recover(10, b"x") is False


# -- two pipelines ---------------------------------------------------------------------------


class Pair:
    """A talker and a listener, 20 ms ticks, packets each way dropped as told; what
    is sent on one tick arrives just before the next."""

    def __init__(self, loss: float = 0.0, seed: int = 5) -> None:
        self.talker = CallAudio(ToneSource(), Silence())
        self.listener = CallAudio(Silence(), Silence())
        self.rng = random.Random(seed)
        self.loss, self.tick = loss, 0
        self.in_flight: list[tuple[CallAudio, int, bytes]] = []

    def run(self, ticks: int, flags: int = FLAGS) -> None:
        for _ in range(ticks):
            self.tick += 1
            now = self.tick * 0.02
            for to, sequence, payload in self.in_flight:
                to.receive(Codec.OPUS, sequence, sequence * 320, payload, now - 0.001, flags)
            self.talker.play(now)
            self.listener.play(now)
            sent = ((self.listener, self.talker.payload()), (self.talker, self.listener.payload()))
            self.in_flight = [
                (to, self.tick, payload) for to, payload in sent if self.rng.random() >= self.loss
            ]

    def close(self) -> None:
        self.talker.close()
        self.listener.close()


class ToneSource:
    def __init__(self) -> None:
        self._pcm, self._at = tones.tone(500, 1.0), 0

    def read(self) -> bytes:
        frame = self._pcm[self._at : self._at + FRAME_BYTES]
        self._at = (self._at + FRAME_BYTES) % len(self._pcm)
        return frame

    def close(self) -> None:
        pass


def test_lost_packets_are_played_from_copies_and_the_sender_adapts() -> None:
    pair = Pair(loss=0.03)
    pair.run(500)
    heard, said = pair.listener.stats, pair.talker.stats
    assert heard["repaired"] > 8
    # With one copy, a frame is concealed only when its packet and the next are lost.
    assert heard["concealed"] + heard["recovered"] < heard["repaired"] / 3
    # Three lost in a hundred can look like seven over the first two seconds.
    copies = pair.talker.protection.copies
    assert copies in (1, 2)
    assert pair.talker.loss.loss is not None  # it measured the listener's stream too
    assert said["sent"] == 500 and heard["bad_redundancy"] == 0
    # The listener holds as many frames as the copies reach back.
    assert pair.listener.jitter.min_delay == pytest.approx(0.020 * copies)
    pair.close()


def test_heavier_loss_brings_a_second_copy_and_a_deeper_buffer() -> None:
    pair = Pair(loss=0.12, seed=9)
    pair.run(500)
    heard = pair.listener.stats
    copies = pair.talker.protection.copies
    assert copies >= 2
    assert pair.talker.protection.bitrate < Adaptation().protection.bitrate
    # Copies two frames back arrive two frames late: the listener holds two frames.
    assert pair.listener.jitter.min_delay == pytest.approx(0.020 * copies)
    assert pair.listener.jitter.stats["stretched"] >= 1
    assert heard["repaired"] > 50
    assert heard["concealed"] + heard["recovered"] < heard["repaired"] / 5
    pair.close()


def test_on_a_clean_path_the_sender_steps_down_after_the_hold() -> None:
    pair = Pair()
    assert pair.talker.protection.copies == 1  # protected until the peer says otherwise
    pair.run(int((HOLD + 4) / 0.02))  # reports start after 3 s, then a hold
    assert pair.talker.protection.copies == 0
    assert pair.listener.stats["repaired"] == 0
    pair.close()


def test_a_receiver_that_ignores_the_flag_plays_the_primary_frames() -> None:
    pair = Pair()
    pair.run(100, flags=0)
    heard = pair.listener.stats
    assert heard["played"] >= 95 and heard["undecodable"] == 0
    # Without the flag nothing reports loss back, so nothing adapts either.
    assert pair.talker.protection.copies == 1
    pair.close()


def test_bad_blocks_are_counted_and_their_primary_still_plays() -> None:
    pair = Pair()
    pair.run(20)
    listener = pair.listener
    with Encoder() as encoder:
        packet = encoder.encode(tones.tone(500, 0.02), FRAME_SAMPLES)
    played = listener.stats["played"]
    bad = pad(packet, b"\x00\x07\x01")  # says seven copies follow; none do
    listener.receive(Codec.OPUS, 21, 21 * 320, bad, 21 * 0.02, FLAGS)
    listener.receive(Codec.OPUS, 22, 22 * 320, b"\x0b\x41\xff", 22 * 0.02, FLAGS)
    for n in range(21, 26):
        listener.play(n * 0.02)
    assert listener.stats["bad_redundancy"] == 2
    assert listener.stats["played"] > played
    pair.close()


def test_when_the_loss_is_gone_the_copies_and_the_hold_go_too() -> None:
    pair = Pair(loss=0.12, seed=9)
    pair.run(500)
    assert pair.listener.jitter.min_delay >= 0.040
    pair.loss = 0.0
    pair.run(int((len(LEVELS) * HOLD + 6) / 0.02))
    assert pair.talker.protection.copies == 0
    assert pair.listener.jitter.min_delay == pytest.approx(0.020)
    pair.close()


# -- the budget, measured ------------------------------------------------------------------


def test_small_payloads_let_the_bitrate_creep_up_and_large_ones_pull_it_down() -> None:
    policy = Adaptation(start=0)
    policy.update(0.12, 0.0)
    constant_rate = policy.protection.bitrate
    for _ in range(1000):  # frames far smaller than the bitrate allows
        policy.sent(40)
    raised = policy.protection.bitrate
    assert constant_rate < raised <= 1.15 * constant_rate + 500
    assert policy.wire_rate < 0.94 * 100_000
    for _ in range(300):  # frames at a quarter over the budget's share
        policy.sent(250)
    assert policy.protection.bitrate < constant_rate
    assert policy.wire_rate > 100_000


def test_the_measured_mean_stays_within_the_budget() -> None:
    # Ten seconds of silence let the bitrate creep up; then a talker whose frames
    # fill the bitrate exactly, with two copies per payload, for a minute.
    policy = Adaptation(start=0)
    policy.update(0.12, 0.0)
    for _ in range(500):
        policy.sent(3 * 12 + 12)
    assert policy.protection.bitrate > Adaptation(start=2).protection.bitrate
    total = 0
    for _ in range(50 * 60):
        payload = 3 * (policy.protection.bitrate // 400) + 12
        total += (payload + PACKET_OVERHEAD) * 8
        policy.sent(payload)
    assert 90_000 < total / 60 <= 100_000


# -- growing the jitter buffer's delay -------------------------------------------------------


def test_a_raised_floor_is_reached_by_stretching_when_a_frame_is_missing() -> None:
    jb = JitterBuffer(min_delay=0.02, stretch=True)
    events = []
    for n in range(1, 60):
        now = n * 0.02
        if n != 30:  # one lost: where the buffer waits a frame instead
            jb.push(n, n * 320, b"p%d" % n, now - 0.005)
        if n == 20:
            jb.min_delay = 0.04
        events.append(jb.pop(now))
    assert jb.stats["stretched"] == 1
    played_ = [e.sequence for e in events if isinstance(e, Play)]
    assert played_ == sorted(played_) and 31 in played_ and 30 not in played_
    # From the stretch on, each frame waits a frame longer: two are held, not one.
    assert len(jb._frames) == 2


def test_without_stretching_the_floor_is_reached_only_by_running_dry() -> None:
    jb = JitterBuffer(min_delay=0.02)
    for n in range(1, 60):
        if n != 30:
            jb.push(n, n * 320, b"p%d" % n, n * 0.02 - 0.005)
        if n == 20:
            jb.min_delay = 0.04
        jb.pop(n * 0.02)
    assert jb.stats["stretched"] == 0 and len(jb._frames) == 1


def test_a_peer_cannot_make_the_buffer_hold_more_than_our_deepest_copy() -> None:
    pair = Pair()
    pair.run(20)
    with Encoder() as encoder:
        packet = encoder.encode(tones.tone(500, 0.02), FRAME_SAMPLES)
    deep = pad(packet, build_block(0, [(8, packet)]))
    pair.listener.receive(Codec.OPUS, 21, 21 * 320, deep, 21 * 0.02, FLAGS)
    assert pair.listener.jitter.min_delay == pytest.approx(MAX_COPIES * 0.020)
    pair.close()


def test_copies_fill_gaps_across_the_sequence_wrap() -> None:
    jb = JitterBuffer(min_delay=0.02)
    jb.push(65534, 0, b"a", 0.0)
    jb.push(65535, 320, b"b", 0.02)
    assert jb.pop(0.04) == Play(65534, b"a")
    jb.push(1, 960, b"d", 0.06)
    assert jb.recover(1 - 1, b"c") is True  # frame 0, carried by frame 1
    assert [jb.pop(0.06 + n * 0.02) for n in range(3)] == [
        Play(65535, b"b"),
        Play(0, b"c", copy=True),
        Play(1, b"d"),
    ]

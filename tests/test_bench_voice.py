"""The voice benchmark's own parts, fast and without PESQ: the network model, the
resampling of espeak-ng's output, one call through the model, and its figures."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from bench import voice
from edge.media import tones
from edge.media.pipeline import FRAME_BYTES, RATE


def test_the_network_model_is_seeded_and_loses_what_it_says() -> None:
    condition = voice.Condition("x", 0.10, 0.030, 0.0)
    one, two = voice.Channel(condition, 7), voice.Channel(condition, 7)
    first = [one.carry(n * 0.02) for n in range(5000)]
    assert first == [two.carry(n * 0.02) for n in range(5000)]
    assert 0.08 < one.dropped / one.sent < 0.12
    spread = [at - n * 0.02 for n, at in enumerate(first) if at is not None]
    assert min(spread) >= condition.delay - 0.030 and max(spread) <= condition.delay + 0.030
    assert max(spread) - min(spread) > 0.05


def test_resampling_keeps_the_length_and_the_pitch() -> None:
    pcm = tones.tone(440, 1.0, rate=22050)
    out = voice.to_rate(pcm, 22050)
    assert len(out) == RATE * 2
    assert tones.heard(out, [330.0, 440.0, 550.0]) == [440.0]


def test_a_call_through_the_model_repairs_loss_within_the_budget() -> None:
    said = tones.tone(600, 4.0)
    outcome = voice.call(said, voice.Condition("10%", 0.10, 0.0, 0.0))
    assert len(outcome.received) == outcome.ticks * FRAME_BYTES
    assert outcome.ticks == len(said) // FRAME_BYTES + voice.TAIL_FRAMES
    assert outcome.receiver_stats["repaired"] > 10
    assert outcome.kbps <= 100
    assert tones.heard(outcome.received, [500.0, 600.0, 700.0]) == [600.0]


def test_the_delay_and_cpu_figures_come_from_the_clean_run() -> None:
    outcome = voice.call(tones.tone(600, 2.0), voice.CONDITIONS[0])
    # Each frame waits between the buffer's one-frame minimum and one tick more.
    assert all(0.020 <= held < 0.041 for held in outcome.held)
    delay = voice._delay_row(outcome)
    assert 40 <= delay.value <= 62 and delay.unit == "ms"
    cpu = voice._cpu_row(outcome)
    assert 0 < cpu.value < 5
    assert voice.crypto_ms(120) > 0


def test_rows_say_pass_or_miss_against_their_target() -> None:
    assert voice.Row("PESQ-WB, clean", 4.2, "MOS", ">= 4.0", True).line().count("PASS") == 1
    assert "MISS" in voice.Row("delay", 70.0, "ms", "<= 60", False, "note").line()
    assert "skipped: espeak-ng" in voice.Skipped("voice", "espeak-ng is not installed").line()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_ng_speaks_a_sentence_at_the_call_rate() -> None:
    pcm = voice.speech("One short sentence.")
    assert 0.5 < len(pcm) / 2 / RATE < 3.0
    assert max(abs(v) for v in memoryview(pcm).cast("h")) > 1000


def test_alignment_finds_the_speech_wherever_the_recording_starts() -> None:
    said = tones.melody([(523.25, 0.2), (0.0, 0.1), (659.25, 0.3), (880.0, 0.2)])
    for offset in (0, 123, 4567):
        heard = bytes(2 * offset) + said + bytes(3000)
        assert voice.aligned(said, heard) == said


def test_two_agents_carry_the_benchmark_audio(tmp_path: Path) -> None:
    said = bytes(25 * FRAME_BYTES) + tones.tone(600, 1.0) + bytes(25 * FRAME_BYTES)
    heard = voice.agents_call(said, tmp_path)
    assert len(heard) >= len(said)
    assert tones.heard(voice.aligned(said, heard), [500.0, 600.0, 700.0]) == [600.0]


def test_the_lab_agents_configuration_reads_back_as_toml() -> None:
    text = voice._toml("audio", {"capture": 'file:/a "b"/c.wav', "users": ["ann", "ben"]})
    assert tomllib.loads(text) == {
        "audio": {"capture": 'file:/a "b"/c.wav', "users": ["ann", "ben"]}
    }


def test_a_lab_row_is_the_mean_of_its_calls_beside_the_target() -> None:
    def lab_call(score: float, lost: int, redials: int = 0) -> voice.LabCall:
        audio = {"repaired": lost - 2, "concealed": 2, "mos": 3.9}
        callee = {"path": "direct-udp", "loss": lost / 900, "audio": audio}
        return voice.LabCall(score, {}, callee, redials)

    condition = voice.CONDITIONS[1]
    row = voice._lab_row(condition, [lab_call(4.1, 45), lab_call(3.7, 50, redials=1)])
    assert row.ok and row.value == pytest.approx(3.9)
    assert "mean of 2 calls, lowest 3.70; direct-udp, loss seen 5.3%" in row.note
    assert row.note.endswith("concealed 2.0, MOS est. 3.90, 1 redial(s)")
    assert not voice._lab_row(condition, [lab_call(3.7, 45)]).ok

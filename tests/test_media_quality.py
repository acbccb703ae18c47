"""The E-model's MOS estimate a call's status shows."""

import pytest

from edge.media.quality import estimate_mos, mos, r_factor


def test_a_clean_short_call_scores_at_the_top_of_the_narrowband_scale() -> None:
    # G.107's default R is 93.2 with no impairment at all: MOS 4.41.
    assert mos(93.2) == pytest.approx(4.41, abs=0.005)
    assert estimate_mos(0.0, 40.0, 40.0) >= 4.3


def test_the_score_falls_with_loss_left_after_repair() -> None:
    scores = [estimate_mos(loss, 40.0, 40.0) for loss in (0.0, 0.01, 0.05, 0.2)]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4
    assert 3.5 < estimate_mos(0.05, 40.0, 40.0) < 4.0  # 5% never repaired: noticeably worse


def test_delay_past_g114s_knee_costs_more_than_before_it() -> None:
    before = r_factor(0.0, 150.0) - r_factor(0.0, 170.0)
    after = r_factor(0.0, 250.0) - r_factor(0.0, 270.0)
    assert after > before > 0


@pytest.mark.parametrize(("r", "expected"), [(-5.0, 1.0), (0.0, 1.0), (120.0, 4.5)])
def test_the_score_stays_on_the_scale(r: float, expected: float) -> None:
    assert mos(r) == expected


def test_nonsense_measures_are_held_to_the_scale() -> None:
    assert estimate_mos(-1.0, None, 0.0) == estimate_mos(0.0, 0.0, 0.0)
    assert estimate_mos(5.0, 1e6, 1e6) == 1.0

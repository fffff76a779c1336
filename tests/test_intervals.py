"""Intervals: Welch differences, Holm, Wilson, and the draw-aware prediction interval."""
from __future__ import annotations

import math

import numpy as np
import pytest

from misfit.report.intervals import (
    holm,
    prediction_interval,
    welch_difference,
    wilson,
)


def test_welch_difference_matches_the_textbook_formula():
    a, b = [0.975, 0.972, 0.978, 0.974, 0.976], [0.970, 0.971, 0.969, 0.975, 0.968]
    found = welch_difference(a, b)
    va, vb = np.var(a, ddof=1) / 5, np.var(b, ddof=1) / 5
    df = (va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 4)
    from scipy import stats

    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert found.estimate == pytest.approx(np.mean(a) - np.mean(b))
    assert (found.low, found.high) == pytest.approx((found.estimate - half, found.estimate + half))
    assert found.low < found.estimate < found.high and found.n == (5, 5)


def test_no_interval_from_one_value_or_from_two_constants():
    assert welch_difference([0.9], [0.8, 0.85]) is None
    assert welch_difference([0.1135] * 5, [0.1135] * 5) is None


def test_holm_multiplies_the_smallest_p_by_the_family_size_and_stays_monotone():
    adjusted = holm([0.01, 0.04, 0.03, 0.5])
    assert adjusted[0] == pytest.approx(0.04)
    assert adjusted[2] == pytest.approx(0.09) and adjusted[1] == pytest.approx(0.09)
    assert adjusted[3] == pytest.approx(0.5)
    assert holm([]) == []


def test_wilson_interval_of_6_survivors_in_24():
    rate = wilson(6, 24)
    assert rate.share == 0.25
    assert (rate.low, rate.high) == pytest.approx((0.1197, 0.4490), abs=1e-3)


def test_prediction_interval_includes_draw_to_draw_variance():
    """Seeds agree within a draw but draws differ: the interval must be wide, not the
    narrow seed spread, and should cover new runs from new draws about 95% of the time."""
    rng = np.random.default_rng(0)

    def study(n_draws):
        return [list(rng.normal(mu, 0.05, 2)) for mu in rng.normal(97.4, 0.3, n_draws)]

    interval = prediction_interval(study(40))
    assert interval.sd_draw == pytest.approx(0.3, abs=0.1) and interval.sd_seed == pytest.approx(0.05, abs=0.02)
    assert interval.high - interval.low > 3 * (2 * 1.96 * 0.05)  # far wider than a seed-only interval
    covered = 0
    trials = 400
    for _ in range(trials):
        found = prediction_interval(study(5))
        covered += found.contains(rng.normal(rng.normal(97.4, 0.3), 0.05))
    assert 0.9 <= covered / trials <= 0.995


def test_prediction_interval_needs_a_balanced_design_of_two_or_more():
    assert prediction_interval([[1.0, 2.0]]) is None
    assert prediction_interval([[1.0, 2.0], [1.0]]) is None
    assert prediction_interval([[1.0], [2.0]]) is None

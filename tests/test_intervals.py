"""Intervals: Welch differences, Holm, Wilson, and the draw-aware prediction interval."""
from __future__ import annotations

import math

import numpy as np
import pytest

from misfit.report.intervals import (
    holm,
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



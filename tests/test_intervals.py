"""Wilson intervals of rates (the comparisons' statistics: tests/test_paired.py)."""
from __future__ import annotations

import pytest

from misfit.report.intervals import (
    wilson,
)


def test_wilson_interval_of_6_survivors_in_24():
    rate = wilson(6, 24)
    assert rate.share == 0.25
    assert (rate.low, rate.high) == pytest.approx((0.1197, 0.4490), abs=1e-3)



"""Intervals on the main draw's runs: Welch differences with Holm-adjusted p-values per
table, and survival rates with Wilson intervals (scipy's and statsmodels'). Comparisons
over every draw, and prediction intervals for one new run, are misfit.report.paired's and
misfit.report.findings.prediction_for's: draw and seed as crossed effects, pooled per task."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


@dataclass(frozen=True)
class Difference:
    """cell minus reference: Welch's t interval and its two-sided p-value."""
    estimate: float
    low: float
    high: float
    p_value: float
    n: tuple[int, int]


def welch_difference(cell: list[float], reference: list[float]) -> Difference | None:
    """None when a side has fewer than two values or neither has any spread (no t interval)."""
    if len(cell) < 2 or len(reference) < 2:
        return None
    if statistics.pvariance(cell) == 0 and statistics.pvariance(reference) == 0:
        return None
    from scipy import stats

    result = stats.ttest_ind(cell, reference, equal_var=False)
    interval = result.confidence_interval(confidence_level=CONFIDENCE)
    estimate = statistics.fmean(cell) - statistics.fmean(reference)
    return Difference(estimate, float(interval.low), float(interval.high), float(result.pvalue),
                      (len(cell), len(reference)))


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values, for one family of comparisons."""
    if not p_values:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(p_values, alpha=ALPHA, method="holm")[1]]


@dataclass(frozen=True)
class Rate:
    successes: int
    n: int
    low: float
    high: float

    @property
    def share(self) -> float:
        return self.successes / self.n


def wilson(successes: int, n: int) -> Rate:
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, n, alpha=ALPHA, method="wilson")
    return Rate(successes, n, float(low), float(high))

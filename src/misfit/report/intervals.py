"""Intervals instead of verdicts: differences with confidence intervals, Holm-adjusted
p-values per family, survival rates with Wilson intervals, and prediction intervals for
one new run that include the draw-to-draw variance.

The tests and intervals are scipy's and statsmodels'; only the variance components of the
prediction interval are computed here (one-way random-effects ANOVA, a few lines: a
mixed model's REML fit on 5 draws x 2 seeds sits on its boundary too often to be useful).
"""
from __future__ import annotations

import math
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


@dataclass(frozen=True)
class PredictionInterval:
    """Where one new run on a new data draw should land, with 95% probability."""
    mean: float
    low: float
    high: float
    sd_draw: float  # between-draw standard deviation
    sd_seed: float  # within-draw (seed-to-seed) standard deviation
    draws: int
    per_draw: int

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def prediction_interval(groups: list[list[float]]) -> PredictionInterval | None:
    """From values grouped by draw, the same number in each (a balanced design).

    One-way random-effects ANOVA: MS_within estimates the seed variance, (MS_between -
    MS_within) / k the draw variance (floored at 0). A new run on a new draw varies by
    both, plus the uncertainty of the grand mean (MS_between / N); the t quantile has
    draws - 1 degrees of freedom, conservative for the within part.
    """
    sizes = {len(g) for g in groups}
    if len(groups) < 2 or len(sizes) != 1 or min(sizes) < 2:
        return None
    from scipy import stats

    k, d = sizes.pop(), len(groups)
    means = [statistics.fmean(g) for g in groups]
    grand = statistics.fmean(means)
    ms_between = k * sum((m - grand) ** 2 for m in means) / (d - 1)
    ms_within = statistics.fmean([statistics.variance(g) for g in groups])
    var_draw = max(0.0, (ms_between - ms_within) / k)
    spread = math.sqrt(var_draw + ms_within + ms_between / (d * k))
    half = float(stats.t.ppf(1 - ALPHA / 2, d - 1)) * spread
    return PredictionInterval(grand, grand - half, grand + half, math.sqrt(var_draw), math.sqrt(ms_within), d, k)

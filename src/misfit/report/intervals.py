"""Rates with Wilson intervals (statsmodels'). Comparisons over every draw, and prediction
intervals for one new run, are misfit.report.paired's and misfit.report.cells.prediction_for's:
draw and seed as crossed effects, pooled per task."""
from __future__ import annotations

from dataclasses import dataclass

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


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

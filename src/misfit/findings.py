"""Findings computed from the numbers: what learns, what collapses, what differs beyond noise.

A cell has *collapsed* when its test metric is no better than a constant prediction
would score (within a margin): the majority-class share for classification (per output
for multilabel), the variance of the targets for regression (the MSE of predicting
their mean). A difference against the task's recommended cell is *real* when Welch's
t-test over seeds gives p < ALPHA; otherwise it is inside run-to-run noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from misfit.files import json_float

ALPHA = 0.05
# how close to the constant-prediction score still counts as collapsed
ACCURACY_MARGIN = 0.02
MSE_SHARE = 0.9


@dataclass(frozen=True)
class Baseline:
    value: float  # what a constant prediction scores on the test set
    text: str  # what that value is, in words


def baselines(label_summary: dict) -> dict[str, Baseline]:
    """Constant-prediction scores per task, from data/labels/summary.json's test split."""
    test = label_summary["test"]
    n = test["n"]
    positive = test["probability"]["positive_share"]
    binary = max(test["binary"]["class_counts"]) / n
    multiclass = max(test["multiclass"]["class_counts"]) / n
    per_output = [max(p, 1 - p) for p in test["multilabel"]["positive_share_per_output"]]
    return {
        "regression": Baseline(test["regression"]["variance"],
                               "the variance of the test targets (the MSE of always predicting their mean)"),
        "probability": Baseline(max(positive, 1 - positive), "the majority share of the test set"),
        "binary": Baseline(binary, "the majority-class share of the test set"),
        "multiclass": Baseline(multiclass, "the majority-class share of the test set (chance is 10%)"),
        "multilabel": Baseline(sum(per_output) / len(per_output),
                               "the mean majority share per output (a constant answer per label)"),
    }


def seed_values(entry: dict, key: str = "test") -> list[float]:
    return [json_float(seed[key]) for seed in entry["per_seed"].values()
            if seed["status"] == "ok" and seed.get(key) is not None]


def has_collapsed(entry: dict, baseline: Baseline) -> bool:
    mean = json_float(entry["test"]["mean"])
    if entry["metric"] == "mse":
        return not math.isfinite(mean) or mean >= MSE_SHARE * baseline.value
    return mean <= baseline.value + ACCURACY_MARGIN


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch's t-test p-value; None when either side has fewer than two seeds or a
    non-finite value (a diverged seed has no place in a test of means)."""
    if len(a) < 2 or len(b) < 2 or not all(math.isfinite(x) for x in [*a, *b]):
        return None
    if max(a) == min(a) and max(b) == min(b):  # no spread at all: equal or not, for sure
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


@dataclass(frozen=True)
class Comparison:
    cell: str
    reference: str
    difference: float  # cell mean minus reference mean, in the metric's units
    p_value: float | None

    @property
    def real(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


def compare(cell: str, reference: str, results: dict) -> Comparison:
    a, b = seed_values(results["cells"][cell]), seed_values(results["cells"][reference])
    difference = (sum(a) / len(a) - sum(b) / len(b)) if a and b else math.nan
    return Comparison(cell, reference, difference, welch_p(a, b))


def format_metric(value: float, metric: str, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{value * 100:{sign}.2f}%" if metric == "accuracy" else f"{value:{sign}.3f}"


def format_p(p: float | None) -> str:
    if p is None:
        return "no test: under two seeds or a non-finite value"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def task_finding(cells: list[str], reference: str | None, results: dict, baseline: Baseline) -> str:
    """The sentence under a table: failed, collapsed, learns (and against the reference)."""
    entries = {cell: results["cells"][cell] for cell in cells}
    metric = next(iter(entries.values()))["metric"]
    failed = [c for c, e in entries.items() if not e["test"]["n"]]
    collapsed = [c for c, e in entries.items() if e["test"]["n"] and has_collapsed(e, baseline)]
    learning = [c for c in cells if c not in failed and c not in collapsed]
    parts = []
    if learning:
        parts.append(_learning_sentence(learning, reference, results, metric))
    if collapsed:
        listed = ", ".join(f"`{c}` ({format_metric(json_float(entries[c]['test']['mean']), metric)})"
                           for c in collapsed)
        parts.append(f"Collapsed to what a constant prediction scores — {baseline.text}, "
                     f"{format_metric(baseline.value, metric)}: {listed}.")
    if failed:
        parts.append("Failed without a result: " + "; ".join(
            f"`{c}` ({entries[c]['error']})" for c in failed) + ".")
    partial = [c for c, e in entries.items() if e["status"] == "failed" and e["test"]["n"]]
    if partial:
        parts.append("Some seeds failed: " + "; ".join(f"`{c}`: {entries[c]['error']}" for c in partial) + ".")
    return " ".join(parts)


def _learning_sentence(learning: list[str], reference: str | None, results: dict, metric: str) -> str:
    if reference is None or reference not in learning:
        return "Learn: " + ", ".join(f"`{c}`" for c in learning) + "."
    reference_mean = json_float(results["cells"][reference]["test"]["mean"])
    same, different = [], []
    for cell in learning:
        if cell == reference:
            continue
        comparison = compare(cell, reference, results)
        text = (f"`{cell}` ({format_metric(comparison.difference, metric, signed=True)}, "
                f"{format_p(comparison.p_value)})")
        (different if comparison.real else same).append(text)
    sentence = (f"Learn normally: the recommended `{reference}` reaches "
                f"{format_metric(reference_mean, metric)} on test")
    if same:
        sentence += "; within run-to-run noise of it (Welch's t-test over seeds, p ≥ 0.05): " + ", ".join(same)
    if different:
        sentence += "; different from it beyond noise (p < 0.05): " + ", ".join(different)
    return sentence + "."

"""Findings under the report's tables: collapse against a constant prediction, Welch's test."""
from __future__ import annotations

import math

import pytest
from scipy import stats

from misfit.findings import Baseline, baselines, compare, has_collapsed, task_finding, welch_p


def entry(metric: str, tests: list[float | None], error: str | None = None) -> dict:
    finished = [t for t in tests if t is not None]
    mean = sum(finished) / len(finished) if finished else None
    finite = all(math.isfinite(t) for t in finished)
    std = (stats.tstd(finished) if finite else math.nan) if len(finished) > 1 else None
    per_seed = {str(i): ({"status": "ok", "test": t} if t is not None else {"status": "failed", "error": error})
                for i, t in enumerate(tests)}
    return {"metric": metric, "status": "ok" if len(finished) == len(tests) else "failed", "error": error,
            "test": {"mean": mean, "std": std, "n": len(finished)}, "per_seed": per_seed}


LABELS = {"test": {
    "n": 1000,
    "regression": {"mean": 2.7, "variance": 1.8},
    "probability": {"positive_share": 0.49},
    "binary": {"class_counts": [510, 490]},
    "multiclass": {"class_counts": [98, 113, 103, 101, 98, 89, 96, 103, 97, 102]},
    "multilabel": {"positive_share_per_output": [0.49, 0.4, 0.49, 0.39]},
}}


def test_baselines_are_constant_prediction_scores():
    found = baselines(LABELS)
    assert found["multiclass"].value == pytest.approx(0.113)
    assert found["binary"].value == pytest.approx(0.51)
    assert found["probability"].value == pytest.approx(0.51)
    assert found["multilabel"].value == pytest.approx((0.51 + 0.6 + 0.51 + 0.61) / 4)
    assert found["regression"].value == pytest.approx(1.8)


@pytest.mark.parametrize("metric, tests, baseline, collapsed", [
    ("accuracy", [0.11, 0.10, 0.12], 0.113, True),
    ("accuracy", [0.97, 0.96, 0.97], 0.113, False),
    ("accuracy", [0.52, 0.53], 0.51, True),  # within the 2-point margin of the majority share
    ("mse", [1.75, 1.9], 1.8, True),  # no better than predicting the mean
    ("mse", [0.05, 0.06], 1.8, False),
    ("mse", [float("inf"), float("inf")], 1.8, True),
])
def test_collapse(metric, tests, baseline, collapsed):
    assert has_collapsed(entry(metric, tests), Baseline(baseline, "")) is collapsed


def test_welch_matches_scipy_and_handles_degenerate_cases():
    a, b = [0.97, 0.965, 0.972], [0.95, 0.948, 0.955]
    assert welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_p([0.5], [0.6, 0.7]) is None
    assert welch_p([0.49, 0.49], [0.49, 0.49]) == 1.0
    assert welch_p([0.49, 0.49], [0.51, 0.51]) == 0.0
    assert welch_p([float("inf"), float("inf")], [1.7, 1.8]) is None
    assert welch_p([float("nan"), 0.06], [0.05, 0.06]) is None


def test_finding_separates_noise_real_differences_collapse_and_failure():
    results = {"cells": {
        "multiclass-softmax-ce": entry("accuracy", [0.970, 0.968, 0.972]),
        "multiclass-softmax-mse": entry("accuracy", [0.969, 0.971, 0.967]),
        "multiclass-sigmoid-bce": entry("accuracy", [0.950, 0.948, 0.952]),
        "multiclass-sigmoid-mse": entry("accuracy", [0.11, 0.113, 0.10]),
        "multiclass-sigmoid-ce": entry("accuracy", [None, None], error="boom"),
    }}
    text = task_finding(list(results["cells"]), "multiclass-softmax-ce", results, baselines(LABELS)["multiclass"])
    noise, _, rest = text.partition("different from it beyond noise")
    assert "`multiclass-softmax-mse`" in noise and "`multiclass-sigmoid-bce`" not in noise
    assert "`multiclass-sigmoid-bce` (-2.00%, p" in rest
    assert "Collapsed" in text and "`multiclass-sigmoid-mse`" in text.split("Collapsed")[1]
    assert "Failed without a result: `multiclass-sigmoid-ce` (boom)" in text
    comparison = compare("multiclass-sigmoid-bce", "multiclass-softmax-ce", results)
    assert comparison.real and comparison.difference == pytest.approx(-0.02)

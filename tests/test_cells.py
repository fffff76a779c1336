"""Findings: constant-answer baselines, family comparisons with Holm, published runs judged
against a draw-aware prediction interval or matched to a mode, and the ReLU lottery."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import report_run

from misfit.core.tasks import STROKES
from misfit.report.cells import (
    Cell,
    baselines,
    relu_clip_bound,
    relu_lottery,
    zero_mse,
)
from misfit.report.modes import CONSTANT, DEAD_RELU, LEARNED, Outcome
from misfit.report.published import (
    Published,
    judge_published,
    source_offsets,
    task_components,
)

COUNTS = [98, 113, 103, 101, 98, 89, 96, 103, 97, 102]
LABELS = {
    "test": {"n": 1000, "regression": {"mean": 2.7, "variance": 1.8},
             "probability": {"positive_share": 0.49}, "binary": {"class_counts": [510, 490]},
             "multiclass": {"class_counts": COUNTS},
             "multilabel": {"positive_share_per_output": [0.49, 0.4, 0.49, 0.39]}},
    "train": {"regression": {"mean": 2.5}},
}


def make_cell(cell_id: str, values: list[tuple[float | None, str]], draws: dict[int, list[float]] | None = None,
              metric: str = "accuracy", detail: str = "") -> Cell:
    def run(seed, subset, value, mode):
        return report_run(seed, subset, value, Outcome(mode, detail))

    main = [run(seed, 0, v, m) for seed, (v, m) in enumerate(values)]
    further = [run(seed, d, v, LEARNED) for d, vs in (draws or {}).items() for seed, v in enumerate(vs)]
    task = cell_id.split("-")[0]
    record = SimpleNamespace(cell={"variant": cell_id.rsplit("-", 1)[-1]}, parent_run_id="p", cell_digest="d" * 64)
    return Cell(cell_id, task, metric, "none", record, main, further)


def learned(*values):
    return [(v, LEARNED) for v in values]


def test_baselines_are_the_best_constant_answers():
    found = baselines(LABELS)
    assert found["multiclass"].value == pytest.approx(0.113)
    assert found["binary"].value == pytest.approx(0.51)
    assert found["probability"].value == pytest.approx(0.51)
    assert found["multilabel"].value == pytest.approx((0.51 + 0.6 + 0.51 + 0.61) / 4)
    # the train mean, not the test mean: variance plus the squared shift
    assert found["regression"].value == pytest.approx(1.8 + 0.2 ** 2)


def test_relu_bounds_are_computed_from_the_label_counts():
    below = sum(n * (STROKES[d] - 2.5) ** 2 for d, n in enumerate(COUNTS) if STROKES[d] < 2.5) / 1000
    assert relu_clip_bound(LABELS) == pytest.approx(below)
    assert zero_mse(LABELS) == pytest.approx(sum(n * STROKES[d] ** 2 for d, n in enumerate(COUNTS)) / 1000)


def test_a_published_run_inside_and_outside_the_prediction_interval():
    """Every run on every draw (13), valid and test each against their own interval."""
    draws = {d: [0.974 + 0.002 * d, 0.973 + 0.002 * d] for d in (1, 2, 3, 4)}
    cell = make_cell("binary-softmax-mse", learned(0.973, 0.972, 0.975, 0.974, 0.976), draws)
    other = make_cell("binary-softmax-ce", learned(0.971, 0.970, 0.974, 0.972, 0.975), draws)
    components = {which: task_components([cell, other], which) for which in ("test", "valid")}
    inside = judge_published(cell, Published("seed 000", 0.975, 0.976, 2), LABELS, components)
    assert inside["inside"] and inside["valid_inside"] and inside["runs"] == 13 and inside["draws"] == 5
    outside = judge_published(cell, Published("seed 000", 0.9733, 0.9985, 2), LABELS, components)
    assert not outside["inside"] and "above the interval" in outside["explanation"]
    interval = outside["test_interval"]
    assert interval["low"] < interval["mean"] < interval["high"] < 0.9985
    assert interval["offset"] == pytest.approx(0.9985 - interval["mean"])


def test_a_source_offset_as_a_group_is_named():
    """Three published values each 1 point above our means: each may pass alone, not all together."""
    judged = [{"cell": c, "test_interval": {"offset": 0.01, "sd_prediction": 0.006, "scale": "share"}}
              for c in ("a", "b", "c")]
    found = source_offsets(judged)["test/accuracy"]
    assert found["mean_offset"] == pytest.approx(0.01)
    assert found["sd"] == pytest.approx(0.006 / 3 ** 0.5)
    assert found["p"] < 0.05


def test_a_published_constant_is_matched_to_another_constant_class():
    """multiclass-sigmoid-mse: our runs answer digit 1; a published 10.3% is digit 7's share."""
    cell = make_cell("multiclass-sigmoid-mse", [(0.113, CONSTANT)] * 5, detail="digit 1")
    judged = judge_published(cell, Published("seed 000", 0.1097, 0.103, 2), LABELS)
    assert not judged["inside"] and judged["matches_mode"] == CONSTANT
    assert "digit 2" in judged["explanation"] or "digit 7" in judged["explanation"]
    assert "digit 1" in judged["explanation"]


def test_relu_lottery_counts_survivors_with_a_wilson_interval():
    outcomes = [(1.78, DEAD_RELU)] * 18 + [(0.59, LEARNED)] * 6
    cell = make_cell("regression-relu-mse-zscore", outcomes, metric="mse", detail="dead at initialisation")
    found = relu_lottery(cell, LABELS)
    assert found["survival"]["alive"] == 6 and found["survival"]["n"] == 24
    low, high = found["survival"]["ci"]
    assert low == pytest.approx(0.1197, abs=1e-3) and high == pytest.approx(0.4490, abs=1e-3)
    assert found["dead_at_init"] == 18 and found["alive_test"]["median"] == pytest.approx(0.59)
    assert found["dead_at_init_seeds"] == list(range(18))
    assert "clip_bound" in found

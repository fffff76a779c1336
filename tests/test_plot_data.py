"""The DVC plots' data never average across outcome modes: one series per cell and mode."""
from __future__ import annotations

import pytest
from conftest import report_run

from misfit.report.cells import Cell
from misfit.report.modes import DEAD_RELU, FAILED, LEARNED, Outcome
from misfit.report.plot_data import bar_rows, curve_rows


def run(seed: int, mode: str, test: float | None, curve: list[float]):
    history = [{"epoch": epoch, "valid_metric": value} for epoch, value in enumerate(curve, start=1)]
    return report_run(seed, 0, test, Outcome(mode, ""), history=history)


@pytest.fixture
def split_cell() -> Cell:
    runs = [run(0, DEAD_RELU, 1.78, [1.80, 1.79]),
            run(1, LEARNED, 0.06, [0.50, 0.20, 0.10]),
            run(2, DEAD_RELU, 1.79, [1.81, 1.80]),
            run(3, LEARNED, 0.08, [0.70, 0.30]),
            run(4, FAILED, None, [])]
    return Cell("regression-relu-mse-zscore", "regression", "mse", "relu", {}, runs, [])


def test_a_cell_split_into_modes_gives_one_bar_per_mode_with_a_value(split_cell):
    bars = {row["mode"]: row for row in bar_rows(split_cell)}
    assert set(bars) == {DEAD_RELU, LEARNED}  # the failed run has no value to draw
    assert bars[LEARNED]["series"] == "regression-relu-mse-zscore · learned 2/5"
    assert (bars[LEARNED]["test_min"], bars[LEARNED]["test_max"], bars[LEARNED]["n"]) == (0.06, 0.08, 2)
    assert bars[LEARNED]["test_median"] == pytest.approx(0.07)
    assert bars[DEAD_RELU]["test_median"] == pytest.approx(1.785)
    # the mean over all runs (0.93) would be no run's value: no row carries it
    assert all(not 0.1 < row["test_median"] < 1.7 for row in bars.values())


def test_learning_curves_are_medians_within_a_mode_over_the_runs_still_training(split_cell):
    learned = [r for r in curve_rows(split_cell) if r["mode"] == LEARNED]
    assert [(r["epoch"], r["n_runs"]) for r in learned] == [(1, 2), (2, 2), (3, 1)]
    assert learned[0]["valid_metric"] == pytest.approx(0.60)
    assert learned[2]["valid_metric"] == pytest.approx(0.10)
    dead = [r for r in curve_rows(split_cell) if r["mode"] == DEAD_RELU]
    assert [r["valid_metric"] for r in dead] == pytest.approx([1.805, 1.795])
    assert {r["series"] for r in dead} == {"regression-relu-mse-zscore · dead-relu 2/5"}

"""Calibration of a run's test outputs (misfit.evaluate.calibration) against values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from misfit.evaluate.calibration import N_BINS, calibration, ece_from_bins


def test_independent_outputs_against_hand_values():
    # ten outputs of 0.8, half of them true: confidence 0.8, observed 0.5
    p, y = torch.full((10, 1), 0.8), torch.tensor([1.0] * 5 + [0.0] * 5)[:, None]
    found = calibration("probability", p, y)
    assert found.ece == pytest.approx(0.3, abs=1e-6)
    assert found.brier == pytest.approx(0.5 * 0.2**2 + 0.5 * 0.8**2)
    assert found.log_loss == pytest.approx(-0.5 * (math.log(0.8) + math.log(0.2)))
    assert found.outside_unit_share == 0.0
    assert len(found.reliability) == N_BINS + 1
    assert [b for b in found.reliability if b[0]] == [(10, pytest.approx(0.8), 0.5)]


def test_calibrated_outputs_have_no_calibration_error():
    p, y = torch.tensor([[0.25]] * 4 + [[0.75]] * 4), torch.tensor([[1.0], [0.0], [0.0], [0.0], [1.0], [1.0], [1.0], [0.0]])
    assert calibration("multilabel", p, y).ece == pytest.approx(0.0, abs=1e-6)


def test_exclusive_classes_score_the_top_label():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    y = torch.tensor([0, 1])  # the first right, the second wrong
    found = calibration("multiclass", p, y)
    # top-label: both confidences in the [0.6, 0.7) and [0.7, 0.8) bins, observed 1 and 0
    assert found.ece == pytest.approx(0.5 * abs(0.7 - 1) + 0.5 * abs(0.6 - 0))
    assert found.brier == pytest.approx(((0.3**2 + 0.2**2 + 0.1**2) + (0.6**2 + 0.7**2 + 0.1**2)) / 2)
    assert found.log_loss == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)


def test_outputs_outside_the_unit_interval_are_counted_and_leave_the_log_loss_undefined():
    p, y = torch.tensor([[1.3], [-0.2], [0.5], [0.5]]), torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    found = calibration("probability", p, y)
    assert found.outside_unit_share == 0.5 and found.log_loss is None
    assert found.brier == pytest.approx((0 + 0 + 0.25 + 0.25) / 4)  # clipped to [0, 1] first


def test_regression_has_no_calibration():
    assert calibration("regression", torch.zeros(3, 1), torch.zeros(3)) is None


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_the_reliability_bins_imply_torchmetrics_calibration_error(task):
    g = torch.Generator().manual_seed(0)
    if task == "multiclass":
        p, y = torch.softmax(3 * torch.randn(2000, 10, generator=g), 1), torch.randint(0, 10, (2000,), generator=g)
    else:
        p = torch.rand(2000, 4, generator=g)
        y = (torch.rand(2000, 4, generator=g) < p).float()
    found = calibration(task, p, y)
    assert ece_from_bins(found.reliability) == pytest.approx(found.ece, abs=1e-5)

"""Predictions and metrics in each task's own units (STUDY.md "Tasks", "Regression
variants"), and the output diagnostics, on hand-made outputs with known answers."""
from __future__ import annotations

import math

import pytest
import torch
import yaml
from conftest import REPO

from misfit.core.config import CellConfig
from misfit.train.targets import TASKS, CellTargets

CELLS = yaml.safe_load((REPO / "params.yaml").read_text())["cells"]
TRAIN_STROKES = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0])  # mean 3.2, sample std sqrt(3.7)
MEAN, STD = 3.2, math.sqrt(3.7)


def targets_of(cell_id: str, train: torch.Tensor | None = None) -> CellTargets:
    cell = CellConfig(**CELLS[cell_id])
    return CellTargets(cell, TRAIN_STROKES if train is None else train)


def column(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None]


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_task_table():
    # outputs and metric direction from STUDY.md's table
    assert {name: spec.n_outputs for name, spec in TASKS.items()} == {
        "regression": 1, "probability": 1, "binary": 2, "multiclass": 10, "multilabel": 4}
    assert not TASKS["regression"].higher_is_better and TASKS["regression"].metric == "mse"
    assert all(TASKS[name].higher_is_better for name in ("probability", "binary", "multiclass", "multilabel"))


# -- regression ----------------------------------------------------------------------

@pytest.mark.parametrize("cell_id", ["regression-none-mse-zscore", "regression-relu-mse-zscore",
                                     "regression-none-mae-zscore"])
def test_z_score_predictions_are_mapped_back(cell_id):
    targets = targets_of(cell_id)
    pred = targets.predict(column([0.0, 1.0, -0.5]))
    assert pred.tolist() == pytest.approx([MEAN, MEAN + STD, MEAN - 0.5 * STD], rel=1e-6)
    # the metric is MSE in strokes, not in z units
    score = targets.per_sample_score(column([0.0, 1.0]), torch.tensor([2.0, 6.0]))
    assert score.tolist() == pytest.approx([(MEAN - 2) ** 2, (MEAN + STD - 6) ** 2], rel=1e-6)


def test_raw_predictions_are_the_output():
    targets = targets_of("regression-none-mse-raw")
    assert targets.predict(column([1.5, -2.0, 6.0])).tolist() == [1.5, -2.0, 6.0]
    assert targets.per_sample_score(column([1.5, 4.0]), torch.tensor([2.0, 6.0])).tolist() == [0.25, 4.0]


def test_sigmoid_raw_predictions_use_the_logit():
    targets = targets_of("regression-sigmoid-mse-raw")
    outputs = [0.5, 1 / (1 + math.exp(-2)), 0.9]
    assert targets.predict(column(outputs)).tolist() == pytest.approx([0.0, 2.0, logit(0.9)], rel=1e-5, abs=1e-6)


def test_sigmoid_z_score_predictions_use_the_logit_then_the_z_score():
    targets = targets_of("regression-sigmoid-mse-zscore")
    outputs = [0.5, 0.25, 0.9]
    want = [MEAN + STD * logit(p) for p in outputs]
    assert targets.predict(column(outputs)).tolist() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("cell_id", ["regression-sigmoid-mse-raw", "regression-sigmoid-mse-zscore"])
def test_saturated_sigmoid_gives_an_infinite_prediction_and_mse(cell_id):
    targets = targets_of(cell_id)
    output = column([1.0, 0.0, 0.5])
    pred = targets.predict(output)
    assert pred[0] == math.inf and pred[1] == -math.inf and math.isfinite(pred[2])
    score = targets.per_sample_score(output, torch.tensor([2.0, 2.0, 2.0]))
    assert score[0] == math.inf and score[1] == math.inf and math.isfinite(score[2])
    assert score.mean() == math.inf  # the valid metric is recorded as inf, not raised
    diagnostics = targets.diagnostics(output[None], torch.tensor([2.0, 2.0, 2.0]))
    assert diagnostics["diag_pred_mean"].tolist() == pytest.approx([float(pred[2])], rel=1e-6)
    assert diagnostics["diag_pred_std"].tolist() == [0.0]


def test_regression_diagnostics_ignore_infinite_predictions():
    targets = targets_of("regression-sigmoid-mse-raw")
    # predictions 0, 1, -1 and +inf for one seed; 2 and 2 and 2 and 2 for another
    seed_a = [0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1)), 1.0]
    seed_b = [1 / (1 + math.exp(-2))] * 4
    output = torch.tensor([seed_a, seed_b], dtype=torch.float64)[..., None]
    y = torch.tensor([1.0, 2.0, 3.0, 6.0])
    diagnostics = targets.diagnostics(output, y)
    assert diagnostics["diag_pred_mean"].tolist() == pytest.approx([0.0, 2.0], abs=1e-9)
    assert diagnostics["diag_pred_std"].tolist() == pytest.approx([math.sqrt(2 / 3), 0.0], abs=1e-9)
    sample_std = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)
    assert diagnostics["diag_target_std"].tolist() == pytest.approx([sample_std, sample_std])


# -- probability ---------------------------------------------------------------------

def test_probability_predictions_round():
    targets = targets_of("probability-none-mse", torch.zeros(3))
    output = column([0.2, 0.49, 0.51, 0.99, 1.6, -0.3, 0.5])
    # round half to even, as Python's round: 0.5 -> 0
    assert targets.predict(output).tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 0.0, 0.0]
    y = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    assert targets.per_sample_score(output, y).tolist() == [1, 0, 1, 1, 0, 1, 0]


def test_probability_logits_cell_reads_predictions_through_the_sigmoid():
    targets = targets_of("probability-logits-bcelogits", torch.zeros(3))
    assert targets.predict(column([-0.1, 0.1, 3.0, -7.0])).tolist() == [0.0, 1.0, 1.0, 0.0]


# -- binary, multiclass --------------------------------------------------------------

@pytest.mark.parametrize("cell_id", ["binary-softmax-ce", "binary-sigmoid-mse", "binary-logits-ce"])
def test_binary_predictions_are_the_argmax(cell_id):
    targets = targets_of(cell_id, torch.zeros(3, dtype=torch.int64))
    output = torch.tensor([[0.3, 0.7], [0.9, 0.1], [-2.0, -1.0]])
    assert targets.predict(output).tolist() == [1, 0, 1]
    assert targets.per_sample_score(output, torch.tensor([1, 1, 1])).tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("cell_id", ["multiclass-softmax-ce", "multiclass-sigmoid-mse", "multiclass-logits-ce"])
def test_multiclass_predictions_are_the_argmax(cell_id):
    targets = targets_of(cell_id, torch.zeros(3, dtype=torch.int64))
    output = torch.zeros(3, 10)
    output[0, 7] = 0.9
    output[1, 0] = 0.2
    output[2, 9], output[2, 3] = 0.5, 0.6
    assert targets.predict(output).tolist() == [7, 0, 3]
    assert targets.per_sample_score(output, torch.tensor([7, 1, 3])).tolist() == [1.0, 0.0, 1.0]


def test_scores_keep_the_seed_dimension():
    targets = targets_of("binary-softmax-ce", torch.zeros(3, dtype=torch.int64))
    output = torch.tensor([[[0.3, 0.7], [0.9, 0.1]], [[0.6, 0.4], [0.2, 0.8]]])  # [seeds, samples, outputs]
    score = targets.per_sample_score(output, torch.tensor([1, 0]))
    assert score.tolist() == [[1.0, 1.0], [0.0, 0.0]]


# -- multilabel ----------------------------------------------------------------------

@pytest.mark.parametrize("cell_id", ["multilabel-sigmoid-bce", "multilabel-softmax-mse"])
def test_multilabel_metric_is_the_mean_over_all_outputs(cell_id):
    targets = targets_of(cell_id, torch.zeros(2, 4))
    output = torch.tensor([[0.9, 0.2, 0.6, 0.4], [0.1, 0.8, 0.3, 0.7]])
    y = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    assert targets.predict(output).tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]]
    score = targets.per_sample_score(output, y)
    assert score.tolist() == [0.75, 1.0]
    assert float(score.mean()) == 7 / 8  # all 8 outputs, not "all 4 right" per sample (which gives 1/2)


def test_multilabel_logits_cell_reads_predictions_through_the_sigmoid():
    targets = targets_of("multilabel-logits-bcelogits", torch.zeros(1, 4))
    assert targets.predict(torch.tensor([[2.0, -2.0, 0.1, -0.1]])).tolist() == [[1.0, 0.0, 1.0, 0.0]]


# -- diagnostics ---------------------------------------------------------------------

def test_binary_diagnostics():
    targets = targets_of("binary-softmax-ce", torch.zeros(2, dtype=torch.int64))
    output = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]])  # one seed, two samples
    d = targets.diagnostics(output, torch.tensor([0, 1]))
    assert d["diag_prob_sum"].tolist() == pytest.approx([1.0])
    assert d["diag_saturated_share"].tolist() == [0.5]  # 1.0 and 0.0 of four values
    assert d["diag_entropy"].tolist() == pytest.approx([math.log(2) / 2])


def test_multiclass_diagnostics_normalise_sigmoid_outputs():
    targets = targets_of("multiclass-sigmoid-mse", torch.zeros(1, dtype=torch.int64))
    output = torch.zeros(1, 1, 10)
    output[0, 0, :4] = 0.9  # four equal scores, six zeros: a uniform choice among four
    d = targets.diagnostics(output, torch.tensor([0]))
    assert d["diag_prob_sum"].tolist() == pytest.approx([3.6])
    assert d["diag_saturated_share"].tolist() == pytest.approx([0.6])
    assert d["diag_entropy"].tolist() == pytest.approx([math.log(4)])


def test_multilabel_diagnostics_use_per_output_binary_entropy():
    targets = targets_of("multilabel-sigmoid-bce", torch.zeros(1, 4))
    output = torch.tensor([[[0.5, 1.0, 0.0, 0.5], [0.995, 0.005, 0.3, 0.7]]])
    d = targets.diagnostics(output, torch.zeros(2, 4))
    assert d["diag_prob_sum"].tolist() == pytest.approx([(2.0 + 2.0) / 2])
    assert d["diag_saturated_share"].tolist() == pytest.approx([4 / 8])
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    first = (h(0.5) + 0 + 0 + h(0.5)) / 4
    second = (h(0.995) + h(0.005) + h(0.3) + h(0.7)) / 4
    assert d["diag_entropy"].tolist() == pytest.approx([(first + second) / 2], rel=1e-6)


def test_probability_diagnostics_of_a_constant_softmax():
    # softmax over one output is 1 everywhere: fully saturated, no entropy
    targets = targets_of("probability-softmax-ce", torch.zeros(3))
    output = torch.ones(2, 3, 1)
    d = targets.diagnostics(output, torch.tensor([0.0, 1.0, 1.0]))
    assert d["diag_prob_sum"].tolist() == [1.0, 1.0]
    assert d["diag_saturated_share"].tolist() == [1.0, 1.0]
    assert d["diag_entropy"].tolist() == [0.0, 0.0]


def test_logits_cell_diagnostics_are_on_the_activated_outputs():
    targets = targets_of("binary-logits-ce", torch.zeros(1, dtype=torch.int64))
    d = targets.diagnostics(torch.tensor([[[3.0, 3.0]]]), torch.tensor([0]))
    assert d["diag_prob_sum"].tolist() == pytest.approx([1.0])  # softmax, not 3 + 3
    assert d["diag_entropy"].tolist() == pytest.approx([math.log(2)])

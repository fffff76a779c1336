"""The outcome-mode classifier, on synthetic run records: one per mode, and the edges."""
from __future__ import annotations

import pytest

from misfit.core.record import TrainedRun
from misfit.report.modes import (
    CONSTANT,
    DEAD_RELU,
    DIVERGED,
    FAILED,
    LEARNED,
    WORSE,
    TaskContext,
    classify,
    describe_answer,
    mode_counts,
)

REGRESSION = TaskContext("regression", "none", train_mean=2.55, constant_score=1.78)
RELU = TaskContext("regression", "relu", train_mean=2.55, constant_score=1.78)
MULTICLASS = TaskContext("multiclass", "softmax", train_mean=2.55, constant_score=0.1135)


def run(history: list[dict], test: float | None, best_epoch: int = 1, status: str = "ok",
        error: str | None = None, initial: dict | None = None) -> tuple[TrainedRun, float | None]:
    """A run as the train stage records it, and its re-scored test value: classify's arguments."""
    def epoch(number: int, row: dict) -> dict:
        return {"epoch": number, "valid_loss": 0.0, "valid_metric": 0.0, **row}

    trained = TrainedRun(seed=0, subset_seed=0, run_id="r", config_digest="c", status=status, error=error,
                         best_epoch=best_epoch, valid_best=None, epochs_run=len(history), checkpoint=None,
                         checkpoint_sha256=None, initial=epoch(0, initial or {}),
                         history=[epoch(i + 1, row) for i, row in enumerate(history)])
    return trained, test


def regression_row(spread: float, mean: float = 2.55, live: float | None = None) -> dict:
    row = {"diag_pred_std": spread, "diag_pred_mean": mean, "diag_target_std": 1.33}
    if live is not None:
        row["diag_live_share"] = live
    return row


def classifier_row(top_share: float, top: float = 1.0) -> dict:
    return {"diag_top_share": top_share, "diag_top_prediction": top}


def test_a_regressor_with_spread_below_the_constant_mse_learned():
    outcome = classify(*run([regression_row(1.2)], test=0.06), REGRESSION)
    assert outcome.mode == LEARNED


def test_no_spread_at_the_train_mean_is_the_constant_mean():
    outcome = classify(*run([regression_row(0.01, mean=2.56)], test=1.79), REGRESSION)
    assert (outcome.mode, outcome.detail) == (CONSTANT, "the mean (2.56)")


def test_no_spread_far_from_the_mean_is_a_constant_number_not_a_collapse_to_the_variance():
    """regression-none-bcelogits-zscore: a constant about 4 strokes off the mean scores 17.6."""
    outcome = classify(*run([regression_row(0.02, mean=6.6)], test=17.56), REGRESSION)
    assert (outcome.mode, outcome.detail) == (CONSTANT, "6.60 strokes")


def test_spread_but_worse_than_the_train_mean_is_worse_than_constant():
    outcome = classify(*run([regression_row(0.9)], test=2.5), REGRESSION)
    assert outcome.mode == WORSE and "2.500 ≥ 1.780" in outcome.detail


@pytest.mark.parametrize(("initial_live", "lives", "detail"), [
    (0.0, [0.0, 0.0], "dead at initialisation"),
    (1.0, [1.0, 0.0], "died in epoch 2"),
])
def test_a_relu_that_is_dead_at_the_kept_checkpoint_is_dead_relu(initial_live, lives, detail):
    history = [regression_row(0.0, mean=2.55, live=live) for live in lives]
    outcome = classify(*run(history, test=1.78, best_epoch=len(lives), initial={"diag_live_share": initial_live}), RELU)
    assert (outcome.mode, outcome.detail) == (DEAD_RELU, detail)


def test_a_live_relu_that_learned_is_learned():
    outcome = classify(*run([regression_row(1.0, live=0.6)], test=0.59, initial={"diag_live_share": 1.0}), RELU)
    assert outcome.mode == LEARNED


def test_the_mode_is_read_at_the_best_epoch_not_the_last():
    history = [regression_row(1.0, live=0.6), regression_row(0.0, live=0.0)]
    assert classify(*run(history, test=0.7, best_epoch=1), RELU).mode == LEARNED
    assert classify(*run(history, test=1.78, best_epoch=2), RELU).mode == DEAD_RELU


def test_one_answer_for_99_percent_of_images_is_a_constant_class():
    outcome = classify(*run([classifier_row(1.0, top=7.0)], test=0.1028), MULTICLASS)
    assert (outcome.mode, outcome.detail) == (CONSTANT, "digit 7")
    assert classify(*run([classifier_row(0.985)], test=0.5), MULTICLASS).mode == LEARNED


def test_a_varied_classifier_no_better_than_the_majority_is_worse_than_constant():
    assert classify(*run([classifier_row(0.4)], test=0.11), MULTICLASS).mode == WORSE


@pytest.mark.parametrize(("error", "mode"), [
    ("nn.BCELoss rejected the epoch 1 training batch: all elements of input should be between 0 and 1", FAILED),
    ("the training loss became nan in epoch 3", DIVERGED),
    ("the valid mse was never finite in 3 epochs", DIVERGED),
    ("the test mse of the best checkpoint is inf: some of its predictions are not finite", DIVERGED),
])
def test_failed_runs_are_failed_or_diverged_by_their_error(error, mode):
    outcome = classify(*run([], test=None, best_epoch=None, status="failed", error=error), REGRESSION)
    assert (outcome.mode, outcome.detail) == (mode, error)


def test_a_non_finite_test_score_is_diverged():
    assert classify(*run([regression_row(1.0)], test=float("inf")), REGRESSION).mode == DIVERGED


@pytest.mark.parametrize(("task", "answer", "text"), [
    ("multiclass", 1.0, "digit 1"), ("binary", 0.0, "class 0 (not curved)"), ("probability", 1.0, "always 1 = curved"),
    ("multilabel", 0b0101, "labels {even, curved}"), ("multilabel", 0.0, "no label"),
])
def test_constant_answers_are_named(task, answer, text):
    assert describe_answer(task, answer) == text


def test_mode_counts_keep_the_mode_order_and_only_what_occurs():
    outcomes = [classify(*run([classifier_row(1.0)], test=0.11), MULTICLASS),
                classify(*run([classifier_row(0.3)], test=0.97), MULTICLASS),
                classify(*run([classifier_row(1.0)], test=0.11), MULTICLASS)]
    assert mode_counts(outcomes) == {LEARNED: 1, CONSTANT: 2}

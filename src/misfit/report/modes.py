"""How each run ended: its outcome mode, decided from what the run logged.

A cell's runs do not always end the same way: a ReLU output can start dead or die in
the first updates while another seed's lives, a model can collapse to one constant
answer, a loss can diverge. A mean over such runs is nobody's value, so the report
counts modes first and summarises values only within a mode.

The modes, in the order they are decided, from the valid diagnostics of the epoch whose
checkpoint was kept (the best epoch) and the test score of that checkpoint:
- `failed`: the run stopped with an error and no result (e.g. the loss rejected its input);
- `diverged`: the training loss or the valid/test metric became non-finite;
- `dead-relu`: a ReLU output is 0 for (nearly) every image: it passes no gradient back;
- `constant`: one answer for (nearly) every image: one class, or a number with no spread;
- `worse-than-constant`: varied answers that score no better than the best constant answer;
- `learned`: the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from misfit.core.files import json_float
from misfit.core.record import Epoch, TrainedRun

FAILED, DIVERGED, DEAD_RELU, CONSTANT, WORSE, LEARNED = (
    "failed", "diverged", "dead-relu", "constant", "worse-than-constant", "learned")
MODES = (LEARNED, CONSTANT, DEAD_RELU, WORSE, DIVERGED, FAILED)

# share of valid images given the most frequent answer at which a classifier is constant
CONSTANT_SHARE = 0.99
# prediction spread, as a share of the targets' spread, under which a regressor is constant
CONSTANT_SPREAD = 0.05
# share of valid images with a positive ReLU output under which the ReLU is dead
LIVE_SHARE = 0.01
# how close (in target standard deviations) a constant must be to the train mean to be "the mean"
NEAR_MEAN = 0.25
MULTILABEL_NAMES = ("even", "prime", "curved", "square")
NONFINITE_ERRORS = ("became nan", "became inf", "became -inf", "never finite", "not finite")


@dataclass(frozen=True)
class Outcome:
    mode: str
    detail: str  # which constant, when the ReLU died, what the error was ...


@dataclass(frozen=True)
class TaskContext:
    """What a run's mode is judged against: the task and the constant answers' scores."""
    task: str
    activation: str
    train_mean: float  # regression: the mean train target (strokes)
    constant_score: float  # test score of the best constant answer (MSE of the train mean, or majority share)


def classify(run: TrainedRun, test: float | None, context: TaskContext) -> Outcome:
    """The outcome mode of one run (records/<cell>.json) given its re-scored test value."""
    if run.status != "ok":
        error = run.error or "no error recorded"
        mode = DIVERGED if any(text in error for text in NONFINITE_ERRORS) else FAILED
        return Outcome(mode, error)
    best = _best_row(run)
    if test is None or not math.isfinite(test):
        return Outcome(DIVERGED, f"test score {test}")
    if context.task == "regression":
        return _regression(run, best, test, context)
    return _classifier(best, test, context)


def _best_row(run: TrainedRun) -> Epoch:
    for row in run.history:
        if row.epoch == run.best_epoch:
            return row
    raise ValueError(f"run {run.run_id}: no history row for its best epoch {run.best_epoch}")


def _value(row: Epoch, key: str) -> float | None:
    return json_float(row.diagnostics.get(key))


def _regression(run: TrainedRun, best: Epoch, test: float, context: TaskContext) -> Outcome:
    live = _value(best, "diag_live_share")
    if context.activation == "relu" and live is not None and live < LIVE_SHARE:
        return Outcome(DEAD_RELU, _when_relu_died(run))
    spread, target_spread = _value(best, "diag_pred_std"), _value(best, "diag_target_std")
    if spread is not None and target_spread and spread < CONSTANT_SPREAD * target_spread:
        return Outcome(CONSTANT, _which_number(_value(best, "diag_pred_mean"), context, target_spread))
    if test >= context.constant_score:
        return Outcome(WORSE, f"MSE {test:.3f} ≥ {context.constant_score:.3f}, the train mean's")
    return Outcome(LEARNED, "")


def _when_relu_died(run: TrainedRun) -> str:
    initial = _value(run.initial, "diag_live_share")
    if initial is not None and initial < LIVE_SHARE:
        return "dead at initialisation"
    for row in run.history:
        live = _value(row, "diag_live_share")
        if live is not None and live < LIVE_SHARE:
            return f"died in epoch {row.epoch}"
    return "dead at the kept checkpoint"


def _which_number(mean: float | None, context: TaskContext, target_spread: float) -> str:
    if mean is None or not math.isfinite(mean):
        return "a non-finite number"
    if abs(mean - context.train_mean) < NEAR_MEAN * target_spread:
        return f"the mean ({mean:.2f})"
    if abs(mean) < NEAR_MEAN * target_spread:
        return f"zero ({mean:.2f})"
    return f"{mean:.2f} strokes"


def _classifier(best: Epoch, test: float, context: TaskContext) -> Outcome:
    share = _value(best, "diag_top_share")
    if share is not None and share >= CONSTANT_SHARE:
        return Outcome(CONSTANT, describe_answer(context.task, _value(best, "diag_top_prediction")))
    if test <= context.constant_score:
        return Outcome(WORSE, f"accuracy {test * 100:.2f}% ≤ {context.constant_score * 100:.2f}%, "
                              "the best constant answer's")
    return Outcome(LEARNED, "")


def describe_answer(task: str, answer: float | None) -> str:
    """The constant answer in words: a class, 0/1, or the set of labels a multilabel code spells."""
    if answer is None or not math.isfinite(answer):
        return "a non-finite answer"
    if task == "multiclass":
        return f"digit {int(answer)}"
    if task == "binary":
        return "class 1 (curved)" if answer == 1 else "class 0 (not curved)"
    if task == "probability":
        return f"always {answer:g} = {'curved' if answer == 1 else 'not curved'}"
    code = int(answer)
    labels = [name for bit, name in enumerate(MULTILABEL_NAMES) if code >> bit & 1]
    return "labels {" + ", ".join(labels) + "}" if labels else "no label"


def mode_counts(outcomes: list[Outcome]) -> dict[str, int]:
    """{mode: count}, in MODES order, only the modes that occur."""
    return {mode: n for mode in MODES if (n := sum(o.mode == mode for o in outcomes))}

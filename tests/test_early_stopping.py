"""Early stopping (STUDY.md "Protocol"): stop when the valid metric has not strictly
improved for `patience` epochs; a non-finite value is never an improvement."""
from __future__ import annotations

import math

import pytest

from misfit.train.loop import EarlyStopping


def feed(stopper: EarlyStopping, values) -> list[bool]:
    """Improvement flags; the stopper must not be asked once it says stop."""
    flags = []
    for epoch, value in enumerate(values, 1):
        assert not stopper.should_stop, f"asked to continue after stopping, epoch {epoch}"
        flags.append(stopper.update(epoch, value))
    return flags


def test_first_finite_value_is_the_best():
    stopper = EarlyStopping(patience=3, higher_is_better=True)
    assert stopper.best is None and not stopper.should_stop
    assert stopper.update(1, 0.4)
    assert (stopper.best, stopper.best_epoch, stopper.epochs_since_best) == (0.4, 1, 0)


@pytest.mark.parametrize(("higher", "values", "flags", "best", "best_epoch"), [
    (True, [0.5, 0.6, 0.6, 0.7, 0.65], [True, True, False, True, False], 0.7, 4),
    (False, [1.0, 0.9, 0.9, 0.95, 0.5], [True, True, False, False, True], 0.5, 5),
    (True, [1.0, 0.9, 0.8], [True, False, False], 1.0, 1),
    (False, [0.8, 0.9, 1.0], [True, False, False], 0.8, 1),
], ids=["higher-better", "lower-better", "higher-better-falling", "lower-better-rising"])
def test_direction_and_strict_improvement(higher, values, flags, best, best_epoch):
    stopper = EarlyStopping(patience=10, higher_is_better=higher)
    assert feed(stopper, values) == flags
    assert (stopper.best, stopper.best_epoch) == (best, best_epoch)


def test_an_equal_value_is_not_an_improvement():
    stopper = EarlyStopping(patience=2, higher_is_better=True)
    assert feed(stopper, [0.97, 0.97]) == [True, False]
    assert stopper.best_epoch == 1 and stopper.epochs_since_best == 1
    assert not stopper.update(3, 0.97)
    assert stopper.should_stop


def test_a_tiny_improvement_counts():
    stopper = EarlyStopping(patience=1, higher_is_better=False)
    assert feed(stopper, [0.5, math.nextafter(0.5, 0)]) == [True, True]
    assert not stopper.should_stop


@pytest.mark.parametrize("patience", [1, 2, 3, 10])
def test_stops_after_patience_epochs_without_improvement(patience):
    stopper = EarlyStopping(patience=patience, higher_is_better=True)
    stopper.update(1, 0.5)
    for k in range(1, patience + 1):
        assert not stopper.should_stop
        stopper.update(1 + k, 0.4)
        assert stopper.epochs_since_best == k
    assert stopper.should_stop
    assert stopper.best_epoch == 1


def test_an_improvement_resets_the_count():
    stopper = EarlyStopping(patience=3, higher_is_better=True)
    # improves at 1, 3 and 6; 7, 8, 9 fail: stop after epoch 9, not after 5
    values = [0.1, 0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.25, 0.3]
    assert feed(stopper, values) == [True, False, True, False, False, True, False, False, False]
    assert stopper.should_stop and stopper.best_epoch == 6


@pytest.mark.parametrize("higher", [True, False])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_never_improve(higher, bad):
    stopper = EarlyStopping(patience=5, higher_is_better=higher)
    assert not stopper.update(1, bad)  # even as the first value
    assert stopper.best is None and stopper.best_epoch is None and stopper.epochs_since_best == 1
    assert stopper.update(2, 0.5)
    assert not stopper.update(3, bad)  # nor after a finite best, in either direction
    assert (stopper.best, stopper.best_epoch, stopper.epochs_since_best) == (0.5, 2, 1)


def test_infinite_mse_does_not_replace_a_finite_one():
    # lower is better: a sigmoid regression cell's saturated output gives MSE inf
    stopper = EarlyStopping(patience=3, higher_is_better=False)
    assert feed(stopper, [2.0, math.inf, 1.5, math.inf]) == [True, False, True, False]
    assert stopper.best == 1.5


def test_only_non_finite_values_stop_after_patience_with_no_best():
    stopper = EarlyStopping(patience=2, higher_is_better=False)
    assert feed(stopper, [math.nan, math.inf]) == [False, False]
    assert stopper.should_stop and stopper.best is None

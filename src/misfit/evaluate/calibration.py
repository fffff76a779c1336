"""How well a run's test outputs work as probabilities: Brier score, log-loss, expected
calibration error (torchmetrics), the share of outputs outside [0, 1], and reliability bins.

Two readings, by task:
- exclusive classes (binary, multiclass): each image's outputs are a distribution over the
  classes; the Brier score sums over classes, the log-loss is -log of the true class's
  output, and the calibration error is top-label (confidence = the largest output);
- independent outputs (probability, multilabel): each output is the probability of its
  own yes/no target, scored one by one.
A misfit activation's outputs need not lie in [0, 1] nor sum to 1; they are read as they
are, clipped to [0, 1] for the Brier score and the calibration error (what a user who
took them for probabilities would do), and the log-loss is left undefined (None) where
an output lies outside [0, 1]. Regression outputs are no probabilities: no calibration.
"""
from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from misfit.core.record import Calibration

N_BINS = 10
EXCLUSIVE = ("binary", "multiclass")
INDEPENDENT = ("probability", "multilabel")
LOG_EPS = 1e-12  # log(0) of an output of exactly 0 for the true class


def calibration(task: str, probabilities: torch.Tensor, y: torch.Tensor) -> Calibration | None:
    """probabilities: [n, outputs], the model's outputs with its activation applied; y: the task's targets."""
    if task in EXCLUSIVE:
        return _exclusive(probabilities.double(), y.long())
    if task in INDEPENDENT:
        return _independent(probabilities.double().reshape(-1), y.double().reshape(-1))
    return None


def _outside_share(p: torch.Tensor) -> float:
    return float(((p < 0) | (p > 1)).double().mean())


def _exclusive(p: torch.Tensor, y: torch.Tensor) -> Calibration:
    outside = _outside_share(p)
    clipped = p.clamp(0, 1)
    one_hot = torch.nn.functional.one_hot(y, p.shape[1]).double()
    brier = float(((clipped - one_hot) ** 2).sum(dim=1).mean())
    log_loss = None if outside > 0 else float(-clipped.gather(1, y[:, None]).clamp_min(LOG_EPS).log().mean())
    confidence, predicted = clipped.max(dim=1)
    # torchmetrics would apply a softmax to outputs outside [0, 1]; these are clipped first
    ece = float(multiclass_calibration_error(clipped.float(), y, num_classes=p.shape[1], n_bins=N_BINS, norm="l1"))
    return Calibration(brier=brier, log_loss=log_loss, ece=ece, outside_unit_share=outside, bins=N_BINS,
                       reliability=reliability(confidence, (predicted == y).double()))


def _independent(p: torch.Tensor, y: torch.Tensor) -> Calibration:
    outside = _outside_share(p)
    clipped = p.clamp(0, 1)
    brier = float(((clipped - y) ** 2).mean())
    log_loss = None
    if outside == 0:
        log_loss = float(-(y * clipped.clamp_min(LOG_EPS).log() + (1 - y) * (1 - clipped).clamp_min(LOG_EPS).log()).mean())
    # torchmetrics would apply a sigmoid to outputs outside [0, 1]; these are clipped first
    ece = float(binary_calibration_error(clipped.float(), y.long(), n_bins=N_BINS, norm="l1"))
    return Calibration(brier=brier, log_loss=log_loss, ece=ece, outside_unit_share=outside, bins=N_BINS,
                       reliability=reliability(clipped, y))


def reliability(confidence: torch.Tensor, observed: torch.Tensor) -> list[tuple[int, float | None, float | None]]:
    """Per confidence bin, binned as torchmetrics bins for its calibration error (N_BINS
    equal-width bins closed on the left, and one more for a confidence of exactly 1, which
    saturated outputs reach): how many outputs, their mean confidence, and the share of
    them that came true."""
    edges = torch.linspace(0, 1, N_BINS + 1, dtype=confidence.dtype)
    index = torch.bucketize(confidence, edges, right=True) - 1
    bins = []
    for b in range(N_BINS + 1):
        members = index == b
        count = int(members.sum())
        bins.append((count, float(confidence[members].mean()), float(observed[members].mean())) if count
                    else (0, None, None))
    return bins


def ece_from_bins(bins: list[tuple[int, float | None, float | None]]) -> float:
    """The expected calibration error the reliability bins imply (tests compare it with torchmetrics')."""
    total = sum(count for count, _, _ in bins)
    return math.fsum(count / total * abs(conf - seen) for count, conf, seen in bins if count)
